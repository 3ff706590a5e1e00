"""The search translation asks the PACS for every study a search matches (hypothesis).

For generated studies and searches over their values, the plan's QIDO queries, run the way a PACS runs them
(``tests/support/reference_qido.py``), find every study the bridge's exact check (``bridge.search.match``) keeps:
a plan that asks nothing, calls a matching search unsatisfiable, or narrows a date range or a list too far fails
here; and where QIDO can state a criterion exactly, they find no other study: a plan that leaves a filter out
fails too. The planner is used through ``parse_search`` and ``plan_search`` alone.

Studies are drawn from small pools, and searches mostly from the study's own values, so that many searches match.
Values are what DICOM allows (upper-case CS codes and defined body-part terms, well-formed dates): a PACS's
matching of malformed values is no property of the plan.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

from hypothesis import event, given, reject, settings
from hypothesis import strategies as st

from bridge.errors import InvalidRequest
from bridge.mapping import tags
from bridge.mapping.imagingstudy import MappingOptions, StudyRows, imaging_study, instance_element, series_element
from bridge.search.match import instance_matches, series_matches, study_matches
from bridge.search.plan import Plan, plan_search
from bridge.search.query import SearchQuery, parse_search
from tests.support.reference_qido import Study, el, qido_matches

STUDY_UIDS = ("1.2.3", "1.2.4", "2.25.7")
SERIES_UIDS = ("1.2.3.1", "1.2.3.2", "2.25.7.1")
CT_IMAGE, MR_IMAGE = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
#: The last two hold characters outside the URL's unreserved set: the planner asks for them with its own ``*``.
PATIENT_IDS = ("P1", "P2", "PAT 01/ä", "PAT 01/b")
ACCESSIONS = ("ACC-1", "ACC-2", "ACC 3")
MODALITY_CODES = ("CT", "MR", "SR", "US")
#: (Body Part Examined term, its SNOMED code): CHEST and THORAX share one.
BODY_PARTS = (("CHEST", "816094009"), ("THORAX", "816094009"), ("HEAD", "69536005"), ("SKULL", "89546000"))
#: Around a month's end and a leap day, so that a day's slack crosses months.
DAYS = ("20240228", "20240229", "20240301", "20240302")
TIMES = ("000000", "120000", "235959.5")
OFFSETS = ("+1400", "-1200", "+0100", "+0000")
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
OPTIONS = MappingOptions()
SERIES_CRITERIA, INSTANCE_CRITERIA = frozenset({"series", "body-site"}), frozenset({"instance", "dicom-class"})


@st.composite
def studies(draw: st.DrawFn, *, dated: bool = False) -> Study:
    """A study from the pools; ``dated``: always with a date, mostly with a time and a zone offset."""
    study_uid = draw(st.sampled_from(STUDY_UIDS))
    row = {tags.STUDY_INSTANCE_UID: el("UI", study_uid), tags.PATIENT_ID: el("LO", draw(st.sampled_from(PATIENT_IDS)))}
    if accession := draw(st.none() | st.sampled_from(ACCESSIONS)):
        row[tags.ACCESSION_NUMBER] = el("SH", accession)
    if day := draw(st.sampled_from(DAYS) if dated else st.none() | st.sampled_from(DAYS)):
        row[tags.STUDY_DATE] = el("DA", day)
        if time := draw(st.sampled_from((None, *TIMES))):
            row[tags.STUDY_TIME] = el("TM", time)
        if offset := draw(st.sampled_from((None, *OFFSETS))):
            row[tags.TIMEZONE_OFFSET_FROM_UTC] = el("SH", offset)
    series = []
    for series_uid in draw(st.lists(st.sampled_from(SERIES_UIDS), min_size=1, max_size=2, unique=True)):
        series_row = {tags.STUDY_INSTANCE_UID: el("UI", study_uid), tags.SERIES_INSTANCE_UID: el("UI", series_uid),
                      tags.MODALITY: el("CS", draw(st.sampled_from(MODALITY_CODES)))}  # fmt: skip
        if part := draw(st.none() | st.sampled_from(BODY_PARTS)):
            series_row[tags.BODY_PART_EXAMINED] = el("CS", part[0])
        instances = tuple(
            {tags.STUDY_INSTANCE_UID: el("UI", study_uid), tags.SERIES_INSTANCE_UID: el("UI", series_uid),
             tags.SOP_INSTANCE_UID: el("UI", f"{series_uid}.{n}"), tags.SOP_CLASS_UID: el("UI", sop_class)}
            for n, sop_class in enumerate(draw(st.lists(st.sampled_from((CT_IMAGE, MR_IMAGE)), min_size=1,
                                                         max_size=2)), start=1)
        )  # fmt: skip
        series.append((series_row, instances))
    row[tags.MODALITIES_IN_STUDY] = el("CS", *sorted({s[tags.MODALITY]["Value"][0] for s, _ in series}))
    return Study(row, tuple(series))


def listed(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """One value or an OR list of two."""
    return st.lists(values, min_size=1, max_size=2).map(",".join)


INSTANCE_UIDS = [f"{series_uid}.{n}" for series_uid in SERIES_UIDS for n in (1, 2)]
FHIR_DAYS = [f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in DAYS]
FHIR_DATES = st.one_of(
    st.sampled_from(FHIR_DAYS),
    st.sampled_from(["2024", "2024-02", "2024-03"]),
    st.builds(lambda day, time, zone: f"{day}T{time}{zone}", st.sampled_from(FHIR_DAYS),
              st.sampled_from(["00:00", "11:59:59", "23:30"]), st.sampled_from(["", "Z", "+14:00", "-12:00"])),
)  # fmt: skip
STARTED = st.tuples(st.just("started"), listed(st.builds(
    str.__add__, st.sampled_from(["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"]), FHIR_DATES
)))  # fmt: skip


def criteria(study: Study) -> st.SearchStrategy[tuple[str, str]]:
    """(parameter, value) pairs, each a criterion the planner must cover; values half the time the study's own
    (else any of the pools'), so that searches of several criteria still often match the study."""

    def pick(own: list[str], pool: Sequence[str]) -> st.SearchStrategy[str]:
        return st.sampled_from(own) | st.sampled_from(pool) if own else st.sampled_from(pool)

    def values(tag: str, level: str = "study") -> list[str]:
        rows = {"study": [study.row], "series": [r for r, _ in study.series],
                "instance": [i for _, rows in study.series for i in rows]}[level]  # fmt: skip
        return sorted({str(v) for row in rows for v in row.get(tag, {}).get("Value", [])})

    uids = pick(values(tags.STUDY_INSTANCE_UID), STUDY_UIDS)
    accessions = pick(values(tags.ACCESSION_NUMBER), ACCESSIONS)
    patients = pick(values(tags.PATIENT_ID), PATIENT_IDS)
    codes = dict(BODY_PARTS)
    body_sites = pick([codes[t] for t in values(tags.BODY_PART_EXAMINED, "series")], sorted(set(codes.values())))
    return st.one_of(
        st.tuples(st.just("_id"), listed(uids)),
        st.tuples(st.just("identifier"), listed(st.one_of(
            uids.map(lambda uid: f"urn:dicom:uid|urn:oid:{uid}"), uids.map(lambda uid: f"urn:oid:{uid}"), accessions,
        ))),
        st.tuples(st.just("identifier:of-type"), accessions.map(lambda a: f"{V2_0203}|ACSN|{a}")),
        # A Patient id holds no "/" or space: those PatientIDs are searched by identifier alone.
        st.tuples(st.sampled_from(["patient", "subject"]), listed(pick(
            [p for p in values(tags.PATIENT_ID) if re.fullmatch(r"[A-Za-z0-9.-]+", p)], ["P1", "P2", "Patient/P1"]
        ))),
        st.tuples(st.sampled_from(["patient:identifier", "subject.identifier"]), listed(patients)),
        STARTED,
        st.tuples(st.sampled_from(["started:missing", "based-on:missing"]), st.sampled_from(["true", "false"])),
        st.tuples(st.just("modality"), listed(st.builds(
            str.__add__, st.sampled_from(["", f"{DCM}|"]), pick(values(tags.MODALITIES_IN_STUDY), MODALITY_CODES)
        ))),
        st.tuples(st.just("based-on:identifier"), listed(accessions)),
        st.tuples(st.just("status"), st.sampled_from(["available", "cancelled"])),
        st.tuples(st.just("series"), listed(pick(values(tags.SERIES_INSTANCE_UID, "series"), SERIES_UIDS))),
        st.tuples(st.just("instance"), listed(pick(values(tags.SOP_INSTANCE_UID, "instance"), INSTANCE_UIDS))),
        st.tuples(st.just("dicom-class"), listed(st.builds(
            str.__add__, st.sampled_from(["", "urn:oid:"]), pick(values(tags.SOP_CLASS_UID, "instance"),
                                                                 [CT_IMAGE, MR_IMAGE])
        ))),
        st.tuples(st.just("body-site"), listed(st.builds(str.__add__, st.sampled_from(["", f"{SNOMED}|"]),
                                                         body_sites))),
    )  # fmt: skip


def matches_exactly(query: SearchQuery, study: Study) -> bool:
    """Whether the bridge's exact check keeps the study: every criterion met, on the element it applies to."""
    summary = imaging_study(StudyRows(study.row), OPTIONS).resource
    for criterion in query.criteria:
        if criterion.name in SERIES_CRITERIA:
            met = any(series_matches(criterion, series_element(row, OPTIONS)) for row, _ in study.series)
        elif criterion.name in INSTANCE_CRITERIA:
            met = any(instance_matches(criterion, instance_element(i)) for _, rows in study.series for i in rows)
        else:
            met = study_matches(criterion, summary)
        if not met:
            return False
    return True


def found_by_plan(plan: Plan, study: Study) -> bool:
    """Whether the plan's queries, run by a PACS holding the study, bring it in as a candidate: one of the
    study-level queries returns it (if any are asked), and each lower-level criterion's queries return one of
    its rows that meets the criterion exactly (the exact check drops the others)."""
    if plan.unsatisfiable:
        return False
    if plan.study_queries is not None and not any(
        qido_matches(filters, study.attributes("study"), "study") for filters in plan.study_queries
    ):
        return False
    for lower in plan.level_queries:
        level = getattr(lower.level, "value", lower.level)
        rows = [row for row, _ in study.series] if level == "series" else [i for _, rs in study.series for i in rs]
        if not any(
            qido_matches(filters, study.attributes(level, row), level)
            and (series_matches(lower.criterion, series_element(row, OPTIONS)) if level == "series"
                 else instance_matches(lower.criterion, instance_element(row)))
            for row in rows
            for filters in lower.queries
        ):  # fmt: skip
            return False
    return True


def planned(params: list[tuple[str, str]]) -> tuple[SearchQuery, Plan]:
    try:
        query = parse_search(params)
        return query, plan_search(query)
    except InvalidRequest:
        reject()  # a 400 (e.g. patient=Patient/PAT 01/ä): nothing is planned


@settings(max_examples=500, deadline=None)
@given(studies(), st.data())
def test_the_plan_finds_every_study_the_search_matches(study: Study, data: st.DataObject) -> None:
    """Whatever else the plan asks, a study the search matches is among its candidates: never a plan that asks
    nothing (or calls the search unsatisfiable) for a study that matches, never a range or a list too narrow."""
    query, plan = planned(data.draw(st.lists(criteria(study), min_size=1, max_size=3)))
    matched = matches_exactly(query, study)
    event("matches" if matched else "does not match")
    if matched:
        assert not plan.unsatisfiable, "a search the study matches was planned as unsatisfiable"
        assert found_by_plan(plan, study), f"the plan misses a study the search matches: {plan}"


def near(day: str) -> list[str]:
    """The FHIR dates of a DA day and of the two days either side of it."""
    local = dt.date(int(day[:4]), int(day[4:6]), int(day[6:]))
    return [(local + dt.timedelta(days=shift)).isoformat() for shift in range(-2, 3)]


@settings(max_examples=500, deadline=None)
@given(studies(dated=True), st.data())
def test_the_plans_date_range_holds_every_study_started_within(study: Study, data: st.DataObject) -> None:
    """The same, for dates near the study's own: it is stored under its local date, the search may name another
    zone's day or instant, and the range asked of the PACS must still hold it (a day's slack each side)."""
    days = near(study.row[tags.STUDY_DATE]["Value"][0])
    dates = st.one_of(
        st.sampled_from(days),
        st.builds(lambda day, time, zone: f"{day}T{time}{zone}", st.sampled_from(days),
                  st.sampled_from(["00:00", "11:59:59", "23:30"]), st.sampled_from(["", "Z", "+14:00", "-12:00"])),
    )  # fmt: skip
    values = st.builds(str.__add__, st.sampled_from(["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"]), dates)
    params = data.draw(st.lists(st.tuples(st.just("started"), listed(values)), min_size=1, max_size=2))
    query, plan = planned(params)
    matched = matches_exactly(query, study)
    event("matches" if matched else "does not match")
    if matched:
        assert found_by_plan(plan, study), f"the plan misses a study the search matches: {plan}"


#: Criteria whose values QIDO can state exactly (no system to ignore, no character the planner widens to ``*``).
EXACT_CRITERIA = st.one_of(
    st.tuples(st.just("_id"), listed(st.sampled_from(STUDY_UIDS))),
    st.tuples(st.just("identifier"), listed(st.sampled_from([*(f"urn:oid:{u}" for u in STUDY_UIDS), "ACC-1"]))),
    st.tuples(st.sampled_from(["patient", "patient:identifier"]), listed(st.sampled_from(["P1", "P2"]))),
    st.tuples(st.just("based-on:identifier"), listed(st.sampled_from(["ACC-1", "ACC-2"]))),
    st.tuples(st.just("modality"), listed(st.sampled_from(MODALITY_CODES))),
    st.tuples(st.just("series"), listed(st.sampled_from(SERIES_UIDS))),
    st.tuples(st.just("instance"), listed(st.sampled_from(INSTANCE_UIDS))),
    st.tuples(st.just("dicom-class"), listed(st.sampled_from([CT_IMAGE, MR_IMAGE]))),
    st.tuples(st.just("body-site"), listed(st.sampled_from([code for _, code in BODY_PARTS]))),
)


@settings(max_examples=300, deadline=None)
@given(studies(), EXACT_CRITERIA)
def test_a_criterion_qido_can_state_is_asked_of_the_pacs(study: Study, param: tuple[str, str]) -> None:
    """With one criterion QIDO can state exactly, the PACS is asked for just the studies it matches: a plan
    that leaves a filter out (and reads far more of the PACS than the search needs) fails here."""
    query, plan = planned([param])
    assert found_by_plan(plan, study) == matches_exactly(query, study)
