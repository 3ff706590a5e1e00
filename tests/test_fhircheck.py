"""The test-side checks must refuse what they are there to refuse: a narrative check that passes anything would
make every narrative test pass."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.fhircheck import XHTML, empty_elements, narrative_errors, validate_r4

GOOD = f'<div xmlns="{XHTML}"><p>Imaging study <b>CT</b></p></div>'


@pytest.mark.parametrize(
    ("div", "error"),
    [
        ("<div>x</div>", "not a div in"),
        (f'<div xmlns="{XHTML}"><script>x</script></div>', "<script> is not allowed"),
        (f'<div xmlns="{XHTML}"><p onclick="x()">y</p></div>', "event attribute onclick"),
        (f'<div xmlns="{XHTML}">&nbsp;</div>', "not well-formed"),
        (f'<div xmlns="{XHTML}"><p> </p></div>', "txt-2"),
        (f'<div xmlns="{XHTML}"><p>a</div>', "not well-formed"),
        (f'<p xmlns="{XHTML}">x</p>', "not a div in"),
    ],
)
def test_narrative_check_refuses(div: str, error: str) -> None:
    assert any(error in found for found in narrative_errors(div))


def test_narrative_check_admits_basic_xhtml() -> None:
    assert narrative_errors(GOOD) == []


def test_ele_1_finds_empty_elements() -> None:
    assert empty_elements({"a": {}, "b": [], "c": "", "d": None, "e": [{"x": 1}, {}], "f": 0}) == [
        "a",
        "b",
        "c",
        "d",
        "e[1]",
    ]


R4_STUDY = {
    "resourceType": "ImagingStudy",
    "id": "2.25.1",
    "text": {"status": "generated", "div": GOOD},
    "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:2.25.1"}],
    "status": "available",
    "subject": {"display": "Doe^Jane"},
    "numberOfSeries": 1,
    "numberOfInstances": 1,
    "series": [{"uid": "2.25.1.1", "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM",
                "code": "CT"}, "numberOfInstances": 1, "instance": [{"uid": "2.25.1.1.1",
                "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"}}]}],
}  # fmt: skip


def test_r4_check_admits_a_valid_r4_study() -> None:
    validate_r4(R4_STUDY)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"procedureCode": [{}]}, "ele-1"),
        ({"referrer": {"reference": "#nowhere"}}, "ref-1"),
        ({"text": None}, "dom-6"),
        ({"numberOfSeries": 2}, "ist-"),
    ],
    ids=["ele-1", "ref-1", "dom-6", "counts"],
)
def test_r4_check_refuses(change: dict[str, Any], error: str) -> None:
    changed = {key: value for key, value in {**R4_STUDY, **change}.items() if value is not None}
    with pytest.raises(AssertionError, match=error):
        validate_r4(changed)
