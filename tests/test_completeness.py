"""A study is complete or refused: against a PACS that caps its answers silently (no Warning header, no counts),
the bridge proves the end of every list, and never presents a shorter study as the whole one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.qido.memory import MemoryQidoSource
from bridge.settings import load_settings
from tests.conftest import start_client
from tests.support.fhircheck import validate
from tests.support.pacs_double import PacsDouble, serving

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY = "2.25.700"


def el(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


def archive(series_sizes: list[int]) -> MemoryQidoSource:
    """One study of patient P1 with series of the given sizes, and the PACS's counts on every row."""
    rows = MemoryQidoSource()
    rows.studies.append({
        "0020000D": el("UI", STUDY), "00100020": el("LO", "P1"), "00080061": el("CS", "CT"),
        "00201206": el("IS", len(series_sizes)), "00201208": el("IS", sum(series_sizes)),
    })  # fmt: skip
    rows.series[STUDY] = []
    for n, size in enumerate(series_sizes, 1):
        series_uid = f"{STUDY}.{n}"
        rows.series[STUDY].append({
            "0020000E": el("UI", series_uid), "00080060": el("CS", "CT"), "00100020": el("LO", "P1"),
            "00200011": el("IS", n), "00201209": el("IS", size),
        })  # fmt: skip
        rows.instances[(STUDY, series_uid)] = [
            {"00080018": el("UI", f"{series_uid}.{i}"), "00080016": el("UI", CT), "00100020": el("LO", "P1")}
            for i in range(1, size + 1)
        ]
    return rows


@pytest.fixture
def double() -> PacsDouble:
    return PacsDouble(archive([1200, 3]), cap=1000, counts=False)


@pytest.fixture
async def client(double: PacsDouble) -> AsyncIterator[TestClient]:
    async with serving(double) as url:
        client = await start_client(load_settings({"BRIDGE_QIDO_URL": url, "BRIDGE_QIDO_RETRIES": "0"}))
        yield client
        await client.close()


async def test_a_silently_capped_series_without_counts_is_read_whole(client: TestClient, double: PacsDouble) -> None:
    response = await client.get(f"/fhir/ImagingStudy/{STUDY}")
    resource = await response.json()
    assert response.status == 200, resource
    validate(resource)
    assert [s["numberOfInstances"] for s in resource["series"]] == [1200, 3]
    assert len(resource["series"][0]["instance"]) == 1200
    assert resource["numberOfInstances"] == 1203


async def test_a_silently_capped_pacs_that_ignores_offset_is_a_502(client: TestClient, double: PacsDouble) -> None:
    double.honours_offset = False
    response = await client.get(f"/fhir/ImagingStudy/{STUDY}")
    body = await response.json()
    assert response.status == 502
    assert "cannot tell whether it capped its answer" in body["issue"][0]["diagnostics"]


async def test_a_pacs_that_gives_counts_costs_no_extra_query(client: TestClient, double: PacsDouble) -> None:
    double.cap, double.counts = None, True
    response = await client.get(f"/fhir/ImagingStudy/{STUDY}")
    assert response.status == 200
    # The study row, the series list, one instance list per series: nothing asked twice, no proof needed.
    assert len(double.requests) == 4, double.requests
