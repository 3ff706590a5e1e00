"""Exact matching on the FHIR the bridge emits, table-driven (pure): dates by FHIR R5's range rules, tokens."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.search.match import instance_matches, series_matches, study_matches
from bridge.search.query import Criterion, parse_search


def criterion(query: str) -> Criterion:
    name, _, value = query.partition("=")
    return parse_search([(name, value)]).criteria[0]


# (search, the study's started, matches?) — search value and target are both ranges (search.html#prefix)
DATES = [
    ("started=2024-03-05", "2024-03-05", True),
    ("started=2024-03-05", "2024-03-05T14:30:00+00:00", True),
    ("started=2024-03", "2024-03-05T14:30:00+00:00", True),
    ("started=2024", "2024-12-31", True),
    ("started=2024-03-05", "2024-03-06", False),
    ("started=2024-03-05T14:30:00Z", "2024-03-05T15:30:00+01:00", True),  # the same instant in another zone
    ("started=2024-03-05T14:30:00Z", "2024-03-05", False),  # a whole day is not within one second
    ("started=ne2024-03-05", "2024-03-06", True),
    ("started=ne2024-03-05", "2024-03-05T08:00:00+00:00", False),
    ("started=gt2024-03-05", "2024-03-06", True),
    ("started=gt2024-03-05", "2024-03-05T23:00:00+00:00", False),
    ("started=ge2024-03-05", "2024-03-05T00:00:00+00:00", True),
    ("started=ge2024-03-05", "2024-03-04", False),
    ("started=lt2024-03-05", "2024-03-04T23:59:59+00:00", True),
    ("started=lt2024-03-05", "2024-03-05", False),
    ("started=le2024-03-05", "2024-03-05", True),
    ("started=le2024-03-05", "2024-03-06", False),
    ("started=sa2024-03-05", "2024-03-06", True),
    ("started=sa2024-03-05", "2024-03-05T23:00:00+00:00", False),
    ("started=eb2024-03-05", "2024-03-04", True),
    ("started=eb2024-03-05", "2024-03-05", False),
    # Midnight in Berlin is still the previous day in UTC: instants decide, not local dates.
    ("started=2024-03-04", "2024-03-05T00:30:00+01:00", True),
    ("started=2024-03-05", "2024-03-05T00:30:00+01:00", False),
]


@pytest.mark.parametrize(("search", "started", "expected"), DATES)
def test_started(search: str, started: str, expected: bool) -> None:
    assert study_matches(criterion(search), {"started": started}) is expected


def test_a_study_without_a_date_matches_no_date_search_but_missing() -> None:
    for search in ("started=2024", "started=ne2024", "started=ge1900"):
        assert not study_matches(criterion(search), {})
    assert study_matches(criterion("started:missing=true"), {})
    assert not study_matches(criterion("started:missing=false"), {})


STUDY: dict[str, Any] = {
    "id": "1.2.3",
    "status": "available",
    "identifier": [
        {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"},
        {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
         "system": "https://ris.example/acc", "value": "ACC-7"},
    ],
    "subject": {"type": "Patient", "identifier": {"system": "urn:oid:9.9", "value": "PAT 01/ä"}},
    "modality": [{"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}]}],
    "basedOn": [{"identifier": {"system": "https://ris.example/acc", "value": "ACC-7"}}],
    "endpoint": [{"reference": "Endpoint/wado-rs-1"}],
}  # fmt: skip

# (search, matches STUDY?)
TOKENS = [
    ("_id=1.2.3", True),
    ("_id=1.2.30", False),
    ("identifier=urn:oid:1.2.3", True),
    ("identifier=urn:dicom:uid|urn:oid:1.2.3", True),
    ("identifier=ACC-7", True),
    ("identifier=acc-7", False),  # exact: a PACS matching case-insensitively must not decide
    ("identifier=https://ris.example/acc|ACC-7", True),
    ("identifier=https://other.example|ACC-7", False),
    ("identifier=|ACC-7", False),  # explicitly no system, but it has one
    ("identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|ACSN|ACC-7", True),
    ("patient:identifier=PAT 01/ä", True),
    ("patient:identifier=urn:oid:9.9|PAT 01/ä", True),
    ("patient:identifier=urn:oid:9.8|PAT 01/ä", False),
    ("patient:identifier=pat 01/ä", False),
    ("modality=CT", True),
    ("modality=MR,CT", True),
    ("modality=ct", False),
    ("modality=http://dicom.nema.org/resources/ontology/DCM|CT", True),
    ("based-on:identifier=ACC-7", True),
    ("based-on:missing=false", True),
    ("status=available", True),
    ("status=cancelled", False),
    ("endpoint=Endpoint/wado-rs-1", True),
    ("endpoint=Endpoint/other", False),
]


@pytest.mark.parametrize(("search", "expected"), TOKENS)
def test_study_tokens(search: str, expected: bool) -> None:
    assert study_matches(criterion(search), STUDY) is expected


def test_patient_reference_is_the_patient_id() -> None:
    study = {**STUDY, "subject": {"identifier": {"value": "PAT-1"}}}
    assert study_matches(criterion("patient=Patient/PAT-1"), study)
    assert study_matches(criterion("patient=PAT-1"), study)
    assert not study_matches(criterion("patient=Patient/pat-1"), study)
    assert not study_matches(criterion("subject=Device/PAT-1"), study)
    assert not study_matches(criterion("patient=PAT-1"), {**study, "subject": {"display": "no identifier"}})


def test_series_and_instance_criteria() -> None:
    series = {"uid": "1.2.3.4", "bodySite": {"concept": {"coding": [{"system": "http://snomed.info/sct",
                                                                      "code": "816094009"}]}}}  # fmt: skip
    assert series_matches(criterion("series=1.2.3.4"), series)
    assert not series_matches(criterion("series=1.2.3.5"), series)
    assert series_matches(criterion("body-site=816094009"), series)
    assert series_matches(criterion("body-site=http://snomed.info/sct|816094009"), series)
    assert not series_matches(criterion("body-site=http://loinc.org|816094009"), series)
    instance = {"uid": "1.2.3.4.5", "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.1"}}
    assert instance_matches(criterion("instance=1.2.3.4.5"), instance)
    assert instance_matches(criterion("dicom-class=1.2.840.1"), instance)
    assert instance_matches(criterion("dicom-class=urn:oid:1.2.840.1"), instance)
    assert instance_matches(criterion("dicom-class=urn:ietf:rfc:3986|urn:oid:1.2.840.1"), instance)
    assert not instance_matches(criterion("dicom-class=1.2.840.10"), instance)
