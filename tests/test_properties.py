"""Property-based tests (hypothesis): arbitrary client input and arbitrary PACS rows never crash the core.

The search translation turns any parameters into a plan or an ``InvalidRequest`` (a 400), and the mapper turns
any DICOM JSON with a valid StudyInstanceUID into valid FHIR: never another exception, never invalid output.
That the plan finds what a search matches is test_plan_properties.py's.
"""

from __future__ import annotations

import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.errors import InvalidRequest
from bridge.mapping import tags
from bridge.mapping.imagingstudy import MappingOptions, SeriesRows, StudyRows, imaging_study
from bridge.search.bundle import page_links, shape
from bridge.search.parameters import BY_NAME, RESULT_PARAMETERS
from bridge.search.plan import plan_search
from bridge.search.query import parse_search
from tests.support.fhircheck import validate

NAMES = [*BY_NAME, *RESULT_PARAMETERS, "patient.identifier", "subject.identifier", "_format", "junk"]
MODIFIERS = ["", ":missing", ":identifier", ":of-type", ":exact", ":Patient", ":not"]
TOKENS = st.text(alphabet=string.printable + "äÄ\u00a0\u0301*?\\,|/:", max_size=40)
DATE = r"(eq|ne|gt|lt|ge|le|sa|eb|ap)?\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([+\- ]\d{2}:\d{2}|Z)?)?)?)?"
DATES = st.from_regex(DATE, fullmatch=True)
PARAM = st.tuples(st.sampled_from(NAMES), st.sampled_from(MODIFIERS), st.one_of(TOKENS, DATES))


@settings(max_examples=300, deadline=None)
@given(st.lists(PARAM, max_size=6), st.booleans())
def test_any_search_is_a_plan_or_a_400(params: list[tuple[str, str, str]], strict: bool) -> None:
    try:
        query = parse_search([(name + modifier, value) for name, modifier, value in params], strict=strict)
        plan = plan_search(query)
    except InvalidRequest:
        return
    assert query.count <= 100
    assert plan.unsatisfiable or plan.study_queries or plan.level_queries  # a plan that asks nothing says so
    for filters in plan.study_queries or ():
        for value in filters.values():
            # Only the planner's own wildcards, in values it made: never a client's * ? or backslash.
            assert "\\" not in value
            assert "?" not in value
    page_links("https://x/fhir", query, has_next=True)  # links can always be written


def element(vr: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(lambda v: {"vr": vr, "Value": v}, st.lists(values, max_size=3)),
        st.just({"vr": vr}),
        st.just({"vr": vr, "Value": "not a list"}),
        st.just("not an element"),
    )


JUNK = st.one_of(st.text(max_size=30), st.integers(-(2**40), 2**40), st.floats(allow_nan=True), st.none(),
                 st.booleans(), st.dictionaries(st.text(max_size=5), st.text(max_size=10), max_size=2))  # fmt: skip
PN = st.one_of(st.text(max_size=40), st.fixed_dictionaries({"Alphabetic": st.text(max_size=40)}), JUNK)
UIDS = st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){1,8}", fullmatch=True)


def dataset(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=dict(fields))


STUDY = st.builds(
    lambda uid, rest: {tags.STUDY_INSTANCE_UID: {"vr": "UI", "Value": [uid]}, **rest},
    UIDS,
    dataset(**{
        tags.STUDY_DATE: element("DA", JUNK), tags.STUDY_TIME: element("TM", JUNK),
        tags.TIMEZONE_OFFSET_FROM_UTC: element("SH", JUNK), tags.ACCESSION_NUMBER: element("SH", JUNK),
        tags.PATIENT_ID: element("LO", JUNK), tags.PATIENT_NAME: element("PN", PN),
        tags.ISSUER_OF_PATIENT_ID: element("LO", JUNK), tags.REFERRING_PHYSICIAN_NAME: element("PN", PN),
        tags.STUDY_DESCRIPTION: element("LO", JUNK), tags.MODALITIES_IN_STUDY: element("CS", JUNK),
        tags.NUMBER_OF_STUDY_RELATED_SERIES: element("IS", JUNK),
        tags.NUMBER_OF_STUDY_RELATED_INSTANCES: element("IS", JUNK),
    }),
)  # fmt: skip
SERIES = st.builds(
    lambda uid, rest, instances: SeriesRows({tags.SERIES_INSTANCE_UID: {"vr": "UI", "Value": [uid]}, **rest},
                                            instances),
    UIDS,
    dataset(**{
        tags.MODALITY: element("CS", JUNK), tags.SERIES_NUMBER: element("IS", JUNK),
        tags.BODY_PART_EXAMINED: element("CS", JUNK), tags.LATERALITY: element("CS", JUNK),
        tags.SERIES_DATE: element("DA", JUNK), tags.SERIES_TIME: element("TM", JUNK),
        tags.PERFORMING_PHYSICIAN_NAME: element("PN", PN), tags.MANUFACTURER: element("LO", JUNK),
        tags.INSTITUTION_NAME: element("LO", JUNK), tags.SERIES_DESCRIPTION: element("LO", JUNK),
    }),
    st.lists(st.builds(
        lambda uid, cls, rest: {tags.SOP_INSTANCE_UID: {"vr": "UI", "Value": [uid]},
                                tags.SOP_CLASS_UID: {"vr": "UI", "Value": [cls]}, **rest},
        UIDS, UIDS,
        dataset(**{tags.INSTANCE_NUMBER: element("IS", JUNK), tags.DOCUMENT_TITLE: element("ST", JUNK),
                   tags.IMAGE_LATERALITY: element("CS", st.one_of(st.sampled_from(["L", "R", "B", "U"]), JUNK))}),
    ), max_size=3),
)  # fmt: skip


# Validation (fhir.resources, fhirpathpy) is slow: fewer examples, still every kind of junk in every field.
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STUDY, st.one_of(st.none(), st.lists(SERIES, max_size=3)))
def test_any_pacs_rows_map_to_valid_fhir(study: dict[str, Any], series: list[SeriesRows] | None) -> None:
    if series is not None:
        uids = [s.series[tags.SERIES_INSTANCE_UID]["Value"][0] for s in series]
        if len(set(uids)) != len(uids):
            return  # the source merges duplicate series before the mapper sees them
    resource = imaging_study(StudyRows(study, series), MappingOptions()).resource
    validate(resource)
    validate(shape(resource, parse_search([("_summary", "true")])))
