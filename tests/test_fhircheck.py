"""The test-side checks must refuse what they are there to refuse: a narrative check that passes anything would
make every narrative test pass."""

from __future__ import annotations

import pytest

from tests.support.fhircheck import XHTML, empty_elements, narrative_errors

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
