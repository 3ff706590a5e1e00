"""``RowTrimmer``: rows cut to the attributes asked for, with the attributes they repeat held once."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bridge.mapping import tags
from bridge.mapping.dicomjson import DicomJson
from bridge.qido.paging import RowTrimmer

WANTED = (tags.SOP_INSTANCE_UID, tags.SOP_CLASS_UID, tags.INSTANCE_NUMBER, tags.SERIES_INSTANCE_UID, tags.PATIENT_ID)
CT = "1.2.840.10008.5.1.4.1.1.2"


def element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


def row(uid: str, number: Any = 1, series: str = "4.5", patient: Any = "P1", **extra: Any) -> DicomJson:
    return {
        tags.SOP_INSTANCE_UID: element("UI", uid),
        tags.SOP_CLASS_UID: element("UI", CT),
        tags.INSTANCE_NUMBER: element("IS", number),
        tags.SERIES_INSTANCE_UID: element("UI", series),
        tags.PATIENT_ID: element("LO", patient),
        "00081190": element("UR", f"http://pacs/instances/{uid}"),  # a PACS default nobody asked for
        **extra,
    }


def trim(rows: list[DicomJson], *pages: int) -> list[DicomJson]:
    """``rows`` through one trimmer, in pages of the given sizes (one page by default)."""
    trimmer = RowTrimmer(WANTED, unique=(tags.SOP_INSTANCE_UID,))
    sizes = pages or (len(rows),)
    out, start = [], 0
    for size in sizes:
        out += trimmer.trim(rows[start : start + size])
        start += size
    return out


def test_rows_keep_the_asked_for_attributes_and_are_otherwise_unchanged() -> None:
    rows = [row("1.1"), row("1.2", number=2), {tags.SOP_INSTANCE_UID: element("UI", "1.3"), "00081190": {}}]
    given = copy.deepcopy(rows)

    trimmed = trim(rows)

    assert trimmed == [{tag: r[tag] for tag in WANTED if tag in r} for r in given]
    assert rows == given  # the rows given are not changed


@pytest.mark.parametrize("pages", [(), (1, 1, 1), (2, 1)], ids=["one-page", "page-by-page", "two-pages"])
def test_attributes_the_rows_repeat_are_held_once_across_pages(pages: tuple[int, ...]) -> None:
    trimmed = trim([row("1.1", number=1), row("1.2", number=2), row("1.3", number=3)], *pages)

    for tag in (tags.SOP_CLASS_UID, tags.SERIES_INSTANCE_UID, tags.PATIENT_ID):
        assert len({id(r[tag]) for r in trimmed}) == 1, tag
    assert len({id(r[tags.SOP_INSTANCE_UID]) for r in trimmed}) == 3


def test_a_value_that_changes_is_shared_from_where_it_changed() -> None:
    trimmed = trim([row("1.1"), row("1.2"), row("1.3", series="4.6"), row("1.4", series="4.6")])

    series = [r[tags.SERIES_INSTANCE_UID] for r in trimmed]
    assert [s["Value"] for s in series] == [["4.5"], ["4.5"], ["4.6"], ["4.6"]]
    assert series[0] is series[1]
    assert series[2] is series[3]
    assert series[1] is not series[2]


@pytest.mark.parametrize(
    ("first", "then"),
    [
        pytest.param(1, 1.0, id="int-then-float"),
        pytest.param(1, True, id="int-then-bool"),
        pytest.param(1.0, 1, id="float-then-int"),
        pytest.param("1", 1, id="string-then-number"),
    ],
)
def test_values_python_finds_equal_are_never_swapped(first: Any, then: Any) -> None:
    # A PatientID sent as a number is an identity (bridge.mapping.identity): 1, 1.0 and True are three answers.
    trimmed = trim([row("1.1", patient=first, number=first), row("1.2", patient=then, number=then)])

    for tag in (tags.PATIENT_ID, tags.INSTANCE_NUMBER):
        assert trimmed[1][tag] is not trimmed[0][tag]
        assert type(trimmed[1][tag]["Value"][0]) is type(then)


@pytest.mark.parametrize(
    "odd",
    [
        pytest.param({"vr": "LO", "Value": ["P1"], "InlineBinary": "AA=="}, id="more-than-a-value"),
        pytest.param({"vr": "LO", "Value": ["P1", "P2"]}, id="two-values"),
        pytest.param({"vr": "LO"}, id="no-value"),
        pytest.param(["P1"], id="not-an-object"),
        pytest.param(None, id="null"),
    ],
)
def test_odd_attributes_are_kept_as_they_are(odd: Any) -> None:
    trimmed = trim([row("1.1"), {**row("1.2"), tags.PATIENT_ID: odd}, row("1.3")])

    assert trimmed[1][tags.PATIENT_ID] == odd
    assert trimmed[2][tags.PATIENT_ID] == element("LO", "P1")


def test_a_deeply_nested_attribute_is_compared_without_recursing_into_it() -> None:
    deep: Any = ["P1"]
    for _ in range(5_000):  # far past Python's recursion limit
        deep = [deep]

    trimmed = trim([row("1.1"), {**row("1.2"), tags.PATIENT_ID: {"vr": "LO", "Value": deep}}])

    assert trimmed[1][tags.PATIENT_ID]["Value"] is deep
