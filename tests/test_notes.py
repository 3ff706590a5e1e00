"""The mapper's notes on what it repaired are logged once, however often their study is read."""

from __future__ import annotations

import logging

import pytest

from bridge.logs import Once
from bridge.qido.memory import MemoryQidoSource
from bridge.settings import load_settings
from tests.conftest import start_client

# UIDs of this file alone: which notes were logged is remembered for the whole process.
STUDY, SERIES = "2.25.91001", "2.25.91001.1"


def test_once_remembers_the_latest_messages_only() -> None:
    said = Once(2)
    assert [said.first(m) for m in ("a", "b", "a", "a")] == [True, True, False, False]
    assert said.first("c")  # forgets b, repeated least recently
    assert not said.first("a")
    assert said.first("b")


async def test_a_series_without_modality_is_logged_once_per_study(caplog: pytest.LogCaptureFixture) -> None:
    source = MemoryQidoSource(
        studies=[{"0020000D": {"vr": "UI", "Value": [STUDY]}, "00100020": {"vr": "LO", "Value": ["P1"]}}],
        series={STUDY: [{"0020000E": {"vr": "UI", "Value": [SERIES]}}]},  # no Modality (0008,0060)
        instances={(STUDY, SERIES): [{"00080018": {"vr": "UI", "Value": [f"{SERIES}.1"]},
                                      "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.7"]}}]},
    )  # fmt: skip
    # Nothing kept: every read and every search maps the study from the PACS again.
    settings = load_settings(
        {"BRIDGE_QIDO_URL": "http://pacs.internal/dicom-web", "BRIDGE_CACHE_TTL": "0",
         "BRIDGE_CACHE_STALE_WHILE_REVALIDATE": "0", "BRIDGE_CACHE_MIN_REREAD": "0"}
    )  # fmt: skip
    caplog.set_level(logging.WARNING, logger="bridge.studies")
    client = await start_client(settings, source)
    try:
        for path in (f"/fhir/ImagingStudy/{STUDY}", "/fhir/ImagingStudy?patient=P1") * 2:
            response = await client.get(path, headers={"Cache-Control": "no-cache"})
            assert response.status == 200, await response.text()
            assert (await response.json())["resourceType"] in ("ImagingStudy", "Bundle")
    finally:
        await client.close()
    assert source.calls.count(f"instances {SERIES}") == 4  # the study was read and mapped four times
    warned = [r.getMessage() for r in caplog.records if SERIES in r.getMessage() and "Modality" in r.getMessage()]
    assert warned == [f"series {SERIES}: no Modality, given OT"]
