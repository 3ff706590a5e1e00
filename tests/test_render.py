"""One set of facts, two FHIR versions: every golden case rendered as R4 is valid R4 and matches
``tests/data/mapping/<case>.r4.json``; R4 and R5 renderings state the same facts (a version-neutral projection),
for every case and for any rows; the narrative stays valid XHTML whatever the PACS sends.

``UPDATE_GOLDEN=1 pytest tests/test_render.py`` rewrites the R4 files after a deliberate change: review the diff.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.fhirversion import FhirVersion
from bridge.mapping import tags
from bridge.mapping.endpoint import wado_endpoint
from bridge.mapping.imagingstudy import MappingOptions, SeriesRows, StudyRows, study_facts
from bridge.render import imaging_study
from bridge.render.narrative import escaped
from tests.support.fhircheck import XHTML, narrative_errors, validate, validate_r4
from tests.test_mapping import CASES, load_case
from tests.test_properties import SERIES, STUDY

R4, R5 = FhirVersion.R4, FhirVersion.R5
NAMES = sorted(p.name.removesuffix(".qido.json") for p in CASES.glob("*.qido.json"))


@pytest.mark.parametrize("name", NAMES)
def test_case_renders_as_valid_r4(name: str) -> None:
    rows, options = load_case(name)
    resource = imaging_study(study_facts(rows, options), R4)
    validate_r4(resource)
    expected_file = CASES / f"{name}.r4.json"
    if os.environ.get("UPDATE_GOLDEN"):
        expected_file.write_bytes(orjson.dumps(resource, option=orjson.OPT_INDENT_2) + b"\n")
    assert resource == orjson.loads(expected_file.read_bytes())


def neutral(concept: dict[str, Any] | None) -> tuple[str | None, ...] | None:
    """A Coding (R4) or CodeableConcept (R5) as (system, code), or ("text", words) for a concept only named."""
    if concept is None:
        return None
    if "coding" in concept:
        return (concept["coding"][0]["system"], concept["coding"][0]["code"])
    if "code" in concept:
        return (concept["system"], concept["code"])
    return ("text", concept.get("text", concept.get("display")))


def projection(resource: dict[str, Any], version: FhirVersion) -> dict[str, Any]:
    """What a rendering says, in no version's shape."""
    r4 = version is R4
    procedures = resource.get("procedureCode") if r4 else [p["concept"] for p in resource.get("procedure", [])]
    reasons = resource.get("reasonCode") if r4 else [r["concept"] for r in resource.get("reason", [])]

    def body_site(series: dict[str, Any]) -> Any:
        site = series.get("bodySite")
        return neutral(site if r4 or site is None else site["concept"])

    return {
        "id": resource["id"],
        "identifier": resource["identifier"],
        "subject": resource["subject"],
        "started": resource.get("started"),
        "counts": (resource.get("numberOfSeries"), resource.get("numberOfInstances")),
        "modalities": [neutral(m) for m in resource.get("modality", [])],
        "procedures": procedures or [],
        "reasons": reasons or [],
        "endpoint": resource.get("endpoint"),
        "narrative": resource["text"],
        "subsetted": resource.get("meta"),
        "series": [
            {
                "uid": s["uid"],
                "number": s.get("number"),
                "modality": neutral(s["modality"]),
                "count": s.get("numberOfInstances"),
                "bodySite": body_site(s),
                "laterality": neutral(s.get("laterality")),
                "started": s.get("started"),
                "performers": s.get("performer"),
                "instances": s.get("instance"),
            }
            for s in resource.get("series", [])
        ],
    }


def assert_same_facts(rows: StudyRows, options: MappingOptions) -> None:
    facts = study_facts(rows, options)
    r4, r5 = imaging_study(facts, R4), imaging_study(facts, R5)
    assert projection(r4, R4) == projection(r5, R5)


@pytest.mark.parametrize("name", NAMES)
def test_r4_and_r5_state_the_same_facts(name: str) -> None:
    assert_same_facts(*load_case(name))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STUDY, st.one_of(st.none(), st.lists(SERIES, max_size=3)))
def test_any_rows_give_valid_r4_stating_what_r5_states(study: dict[str, Any], series: list[SeriesRows] | None) -> None:
    if series is not None:
        uids = [s.series[tags.SERIES_INSTANCE_UID]["Value"][0] for s in series]
        if len(set(uids)) != len(uids):
            return  # the source merges duplicate series before the mapper sees them
    rows = StudyRows(study, series)
    validate_r4(imaging_study(study_facts(rows, MappingOptions()), R4))
    assert_same_facts(rows, MappingOptions())


def test_r4_writes_procedure_reason_and_readers_as_r4_does() -> None:
    rows, options = load_case("procedure_reason_reader")
    r4 = imaging_study(study_facts(rows, options), R4)
    procedures = [c["text"] for c in r4["procedureCode"]]
    assert procedures == ["CT ABDOMEN PELVIS WITH CONTRAST", "High resolution CT of abdomen"]
    assert r4["reasonCode"][0]["coding"][0]["code"] == "21522001"
    assert [i["display"] for i in r4["interpreter"]] == ["Rita Reader", "Dr Sam Second"]
    assert r4["series"][1]["bodySite"] == {"display": "Tummy"}  # a term with no SNOMED code: a display alone
    assert r4["series"][0]["laterality"]["code"] == "24028007"


def test_reason_in_words_when_no_code_says_it() -> None:
    rows, options = load_case("procedure_reason_reader")
    study = {k: v for k, v in rows.study.items() if k != tags.REASON_FOR_REQUESTED_PROCEDURE_CODE_SEQUENCE}
    r5 = imaging_study(study_facts(StudyRows(study, rows.series), options), R5)
    assert r5["reason"] == [{"concept": {"text": "abdominal pain, rule out appendicitis"}}]


def text_of(div: str) -> str:
    return "".join(ET.fromstring(div).itertext())


HOSTILE = "<script>alert('x')</script> & \"Ω\" \x01\x0b\x1f\ufffe\ud800]]>"


def test_narrative_escapes_what_the_pacs_sends() -> None:
    study = {
        tags.STUDY_INSTANCE_UID: {"vr": "UI", "Value": ["2.25.1"]},
        tags.PATIENT_NAME: {"vr": "PN", "Value": [{"Alphabetic": HOSTILE}]},
        tags.STUDY_DESCRIPTION: {"vr": "LO", "Value": [HOSTILE]},
        tags.PATIENT_ID: {"vr": "LO", "Value": ["<b>P&1</b>"]},
    }
    for version in FhirVersion:
        div = imaging_study(study_facts(StudyRows(study), MappingOptions()), version)["text"]["div"]
        assert not narrative_errors(div)
        assert "<script" not in div
        assert "<b>P" not in div
        assert "<b>P&1</b>" in text_of(div)
        assert "<script>alert('x')</script> & \"Ω\"" in text_of(div)


@pytest.mark.parametrize(
    ("value", "shown"),
    [("a<b", "a&lt;b"), ("x&y", "x&amp;y"), ("'\"", "&#x27;&quot;"), ("bell\x07", "bell"), ("\ud800\uffff", "")],
)
def test_escaped_is_xml_text(value: str, shown: str) -> None:
    assert escaped(value) == shown
    assert not narrative_errors(f'<div xmlns="{XHTML}"><p>x{escaped(value)}</p></div>')


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_text_escaped_is_well_formed_xhtml(value: str) -> None:
    div = f'<div xmlns="{XHTML}"><p>x{escaped(value)}</p></div>'
    assert not narrative_errors(div)


def test_narrative_says_patient_date_description_modalities_and_counts() -> None:
    rows, options = load_case("procedure_reason_reader")
    div = imaging_study(study_facts(rows, options), R5)["text"]["div"]
    said = text_of(div)
    for part in ("Dr Seán O'Brien", "PAT-8001", "2024-06-11", 'CT <abdomen> & "pelvis"', "CT, XA", "2 series",
                 "3 instances"):  # fmt: skip
        assert part in said


@pytest.mark.parametrize("requires_token", [False, True])
def test_endpoint_renders_valid_in_each_version(requires_token: bool) -> None:
    r4 = wado_endpoint("https://pacs.example/dicom-web", requires_token=requires_token, version=R4)
    validate_r4(r4)
    assert r4["connectionType"]["code"] == "dicom-wado-rs"
    assert r4["payloadType"] == [{"text": "DICOM"}]
    r5 = wado_endpoint("https://pacs.example/dicom-web", requires_token=requires_token)
    validate(r5)
    assert (r4["id"], r4["address"]) == (r5["id"], r5["address"])
    assert r4.get("extension") == r5.get("extension")


@pytest.mark.parametrize("name", ["orthanc_full", "procedure_reason_reader", "study_level_only"])
def test_the_r4_check_refuses_r5(name: str) -> None:
    rows, options = load_case(name)
    with pytest.raises((AssertionError, ValueError)):  # pydantic's ValidationError is a ValueError
        validate_r4(imaging_study(study_facts(rows, options), R5))
