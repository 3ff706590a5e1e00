"""The mapper, table-driven: each ``tests/data/mapping/<case>.qido.json`` maps to ``<case>.fhir.json``.

The ``orthanc_*`` inputs were recorded from a real Orthanc (``python -m tests.support.record_qido``); the
others are written by hand to hold what real PACSes send at their worst. After a deliberate change of the
mapping, ``UPDATE_GOLDEN=1 pytest tests/test_mapping.py`` rewrites the expected files: review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from bridge import terminology
from bridge.mapping.imagingstudy import MappingOptions, SeriesRows, StudyRows, imaging_study
from tests.support.fhircheck import validate

CASES = Path(__file__).parent / "data" / "mapping"


def load_case(name: str) -> tuple[StudyRows, MappingOptions]:
    case = orjson.loads((CASES / f"{name}.qido.json").read_bytes())
    options: dict[str, Any] = dict(case["options"])
    if "zone" in options:
        options["zone"] = ZoneInfo(options["zone"])
    series = None
    if case["series"] is not None:
        series = [SeriesRows(s["series"], s["instances"]) for s in case["series"]]
    return StudyRows(case["study"], series), MappingOptions(**options)


@pytest.mark.parametrize("name", sorted(p.name.removesuffix(".qido.json") for p in CASES.glob("*.qido.json")))
def test_case_maps_to_expected_fhir(name: str) -> None:
    rows, options = load_case(name)
    resource = imaging_study(rows, options).resource
    validate(resource)
    expected_file = CASES / f"{name}.fhir.json"
    if os.environ.get("UPDATE_GOLDEN"):
        expected_file.write_bytes(orjson.dumps(resource, option=orjson.OPT_INDENT_2) + b"\n")
    assert resource == orjson.loads(expected_file.read_bytes())


def test_disagreeing_counts_are_reported_and_lists_win() -> None:
    rows, options = load_case("hostile_values")
    mapped = imaging_study(rows, options)
    assert mapped.resource["numberOfSeries"] == 2
    assert mapped.resource["numberOfInstances"] == 4
    assert any("PACS counts 7 series, listed 2" in note for note in mapped.notes)
    assert any("PACS counts 5 instances, listed 2" in note for note in mapped.notes)


def test_mapping_is_deterministic_whatever_the_row_order() -> None:
    rows, options = load_case("orthanc_full")
    assert rows.series is not None
    shuffled = StudyRows(rows.study, [SeriesRows(s.series, s.instances[::-1]) for s in rows.series[::-1]])
    assert imaging_study(shuffled, options).resource == imaging_study(rows, options).resource


def test_a_row_without_a_study_uid_is_refused() -> None:
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        imaging_study(StudyRows({"0020000D": {"vr": "UI", "Value": ["not a uid"]}}), MappingOptions())


def test_uid_names_are_pydicoms() -> None:
    # Read from pydicom's data module without importing pydicom (bridge.terminology): the same names.
    from pydicom.uid import UID, UID_dictionary

    for uid in UID_dictionary:
        assert terminology.uid_name(uid) == UID(uid).name
    assert terminology.uid_name("1.2.840.10008.5.1.4.1.1.2") == "CT Image Storage"
    assert terminology.uid_name("1.2.3.4") is None
