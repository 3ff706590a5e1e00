"""The search translation, table-driven: FHIR parameters -> the QIDO-RS queries the PACS sees (pure)."""

from __future__ import annotations

import re
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qsl

import pytest

from bridge.errors import InvalidRequest
from bridge.fhirversion import FhirVersion
from bridge.search.plan import plan_search
from bridge.search.query import PatientRule, parse_search


def plan(query: str, base: str | None = None) -> tuple[object, list[tuple[str, str, list[dict[str, str]]]]]:
    """The plan of a query string: (study queries, [(criterion, level, queries)])."""
    result = plan_search(parse_search(parse_qsl(query, keep_blank_values=True), base=base))
    if result.unsatisfiable:
        return "nothing", []
    study = [dict(q) for q in result.study_queries] if result.study_queries is not None else None
    lower = [(lq.criterion.name, lq.level.value, [dict(q) for q in lq.queries]) for lq in result.level_queries]
    return study, lower


UID = "1.2.840.113619.2.55.3.1"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"

# (FHIR query, study-level QIDO queries, series/instance-level QIDO queries)
TRANSLATIONS = [
    ("", [{}], []),
    ("_count=5", [{}], []),
    (f"_id={UID}", [{"StudyInstanceUID": UID}], []),
    (f"_id={UID},1.2.3", [{"StudyInstanceUID": f"{UID},1.2.3"}], []),
    (f"identifier=urn:dicom:uid|urn:oid:{UID}", [{"StudyInstanceUID": UID}], []),
    (f"identifier=urn:oid:{UID}", [{"StudyInstanceUID": UID}], []),  # SMART Imaging's bare form
    ("identifier=ACC-17", [{"AccessionNumber": "ACC-17"}], []),
    ("identifier=https://ris.example/acc|ACC-17", [{"AccessionNumber": "ACC-17"}], []),
    (f"identifier:of-type={V2_0203}|ACSN|ACC-17", [{"AccessionNumber": "ACC-17"}], []),
    (f"identifier:of-type={V2_0203}|MR|77", "nothing", []),
    (f"identifier=ACC-17,urn:oid:{UID}", [{"AccessionNumber": "ACC-17"}, {"StudyInstanceUID": UID}], []),
    ("patient=Patient/PAT-1", [{"PatientID": "PAT-1"}], []),
    ("patient=PAT-1", [{"PatientID": "PAT-1"}], []),
    ("subject=Group/7", "nothing", []),
    ("patient:identifier=urn:oid:1.2.3|PAT-1", [{"PatientID": "PAT-1"}], []),
    ("patient.identifier=PAT-1", [{"PatientID": "PAT-1"}], []),
    # Characters outside the URL's unreserved set become the planner's own wildcard; the bridge re-checks.
    ("patient:identifier=PAT 01/ä", [{"PatientID": "PAT*01*"}], []),
    ("patient=P1,P2", [{"PatientID": "P1"}, {"PatientID": "P2"}], []),
    ("started=2024-03-05", [{"StudyDate": "20240304-20240306"}], []),
    ("started=2024-03", [{"StudyDate": "20240229-20240401"}], []),
    ("started=2024", [{"StudyDate": "20231231-20250101"}], []),
    ("started=ge2024-03-05", [{"StudyDate": "20240304-"}], []),
    ("started=gt2024-03-05", [{"StudyDate": "20240304-"}], []),
    ("started=sa2024-03-05", [{"StudyDate": "20240304-"}], []),
    ("started=le2024-03-05", [{"StudyDate": "-20240306"}], []),
    ("started=lt2024-03-05", [{"StudyDate": "-20240305"}], []),
    ("started=eb2024-03-05", [{"StudyDate": "-20240305"}], []),
    ("started=ne2024-03-05", [{}], []),  # QIDO cannot say "not": the bridge checks every row
    ("started=ge2024-01&started=lt2024-02", [{"StudyDate": "20231231-20240201"}], []),  # both ends: one range
    ("modality=CT&started=2024-03", [{"ModalitiesInStudy": "CT", "StudyDate": "20240229-20240401"}], []),
    ("started=ge2024-03&started=le2024-01", "nothing", []),  # no date is in both: nothing is asked
    ("started:missing=true", [{}], []),
    ("started=2024-03-05T10:00:00%2B01:00", [{"StudyDate": "20240304-20240306"}], []),
    ("started=2024-03-05T10:00:00+01:00", [{"StudyDate": "20240304-20240306"}], []),  # "+" unencoded: a space
    ("modality=CT", [{"ModalitiesInStudy": "CT"}], []),
    ("modality=http://dicom.nema.org/resources/ontology/DCM|MR", [{"ModalitiesInStudy": "MR"}], []),
    ("modality=http://snomed.info/sct|CT", "nothing", []),
    ("modality=XYZ", "nothing", []),  # not a DICOM defined term: such a modality is text, which no token matches
    ("modality=CT,XYZ", [{"ModalitiesInStudy": "CT"}], []),
    ("modality=CT,MR", [{"ModalitiesInStudy": "CT"}, {"ModalitiesInStudy": "MR"}], []),
    ("modality=CT&modality=SR", [{"ModalitiesInStudy": "CT"}], []),  # one filter per attribute; SR is checked
    ("based-on:identifier=ACC-17", [{"AccessionNumber": "ACC-17"}], []),
    ("based-on:missing=true", [{}], []),
    ("status=available", [{}], []),
    ("status=cancelled", "nothing", []),
    ("endpoint=Endpoint/wado-rs-1", [{}], []),
    # Series- and instance-level criteria are asked at their own level, narrowed by the study-level filters.
    ("series=1.2.3.4", None, [("series", "series", [{"SeriesInstanceUID": "1.2.3.4"}])]),
    ("instance=1.2.3.4.5", None, [("instance", "instance", [{"SOPInstanceUID": "1.2.3.4.5"}])]),
    (
        "dicom-class=urn:oid:1.2.840.10008.5.1.4.1.1.2,1.2.840.10008.5.1.4.1.1.4",
        None,
        [("dicom-class", "instance", [{"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2,1.2.840.10008.5.1.4.1.1.4"}])],
    ),
    ("body-site=http://snomed.info/sct|816094009", None,
     [("body-site", "series", [{"BodyPartExamined": "CHEST"}, {"BodyPartExamined": "THORAX"}])]),
    ("body-site=000000", "nothing", []),
    (
        "patient=PAT-1&series=1.2.3.4",
        [{"PatientID": "PAT-1"}],
        [("series", "series", [{"PatientID": "PAT-1", "SeriesInstanceUID": "1.2.3.4"}])],
    ),
    # Only keys every level carries narrow series queries (Orthanc answers ModalitiesInStudy there with nothing).
    (
        "modality=MR&series=1.2.3.4",
        [{"ModalitiesInStudy": "MR"}],
        [("series", "series", [{"SeriesInstanceUID": "1.2.3.4"}])],
    ),
    # With another filter narrowing, the date is decided by the bridge alone: a study stored as 1997.04.24 is found.
    ("patient=PAT-1&started=1997-04-24", [{"PatientID": "PAT-1"}], []),
    ("started=ge2010&started=lt2011", [{"StudyDate": "20091231-20110101"}], []),
    ("started=ge0001-01-01", [{"StudyDate": "00010101-"}], []),  # the calendar's ends do not overflow
    # Patient criteria always reach the PACS, whatever other ORs there are: its own match is a second check.
    ("modality=CT,MR&patient=P1,P2", [{"PatientID": "P1"}, {"PatientID": "P2"}], []),  # modality: exact check
    ("identifier=A1,A2&patient=P1,P2", [{"PatientID": "P1"}, {"PatientID": "P2"}], []),
    ("subject:Patient=P1", [{"PatientID": "P1"}], []),
    ("started=9999-12-31", [{"StudyDate": "99991230-99991231"}], []),
]  # fmt: skip


@pytest.mark.parametrize(("query", "study", "lower"), TRANSLATIONS, ids=[t[0] or "(none)" for t in TRANSLATIONS])
def test_translation(query: str, study: object, lower: list[object]) -> None:
    assert plan(query) == (study, lower)


# (FHIR query, text the 400 must contain: the parameter's name and what is wrong)
REFUSALS = [
    ("patient=PAT*", "cannot be matched literally"),
    ("identifier=ACC?1", "cannot be matched literally"),
    ("patient:identifier=A\\,B", "cannot be matched literally"),  # FHIR's escaped comma: DICOM cannot carry it
    ("patient:exact=PAT-1", "modifier :exact is not supported on patient"),
    ("modality:not=CT", "modifier :not is not supported on modality"),
    ("started=ap2024", "ap prefix"),
    ("started=2024-13", "not a real date"),
    ("started=2024-02-30", "not a real date"),
    ("started=yesterday", "is not a FHIR date"),
    ("started=2024-03-05T10:00:00+15:00", "not a real date"),
    ("started:missing=maybe", "started:missing takes true or false"),
    ("_id=not a uid", "is not a DICOM UID"),
    ("series=1.2.3;drop", "is not a DICOM UID"),
    ("patient=", "empty value"),
    ("modality=CT,,MR", "empty value"),
    ("identifier=a|b|c", "a token is [system|]code"),
    ("identifier:of-type=ACSN|17", "identifier:of-type takes system|code|value"),
    ("patient=https://ehr.example/fhir/Patient/PAT-1", "refers to another server"),  # not ours: not Patient/PAT-1
    ("patient=Patient/PAT 01/ä", "is not a reference"),  # a PatientID with "/" is reached by patient:identifier
    ("patient.name=Smith", "chained search patient.name is not supported"),
    ("_count=-1", "_count takes a whole number"),
    ("_count=ten", "_count takes a whole number"),
    ("_count=1&_count=2", "_count may be given once"),
    ("_offset=x", "_offset takes a whole number"),
    # Digits str.isdigit() accepts: "²" made int() raise (a 500), "٣" was read as 3. ASCII digits alone.
    ("_count=²", "_count takes a whole number"),
    ("_offset=²", "_offset takes a whole number"),
    ("_count=٣", "_count takes a whole number"),
    ("_offset=\uff11", "_offset takes a whole number"),  # a full-width 1
    ("_summary=text", "_summary=text is not supported"),
    ("_elements=identifier,foo", "not FHIR 5.0 ImagingStudy elements: foo"),
    ("_elements=-series", "excluding elements (-name) is not supported"),
    ("_sort=_lastUpdated", "a PACS keeps no modification time"),
    ("_sort=-_lastUpdated", "a PACS keeps no modification time"),
    ("_sort=description", "_sort=description is not supported (sorts served: started, -started)"),
    ("_sort=started,_id", "one sort key is served"),
    ("_total=some", "_total takes none, estimate, accurate"),
    ("_totalMethod=guess", "_totalMethod takes count, estimate, none"),
    ("_total=none&_totalMethod=count", "disagree"),
    ("based-on=ServiceRequest/1", "based-on is served only with a modifier: based-on:identifier, based-on:missing"),
    ("_summary=true&_elements=identifier", "cannot be combined"),
    ("_total=maybe", "_total takes"),
    ("identifier=" + ",".join(f"A{n}" for n in range(101)), "at most 100 values"),
    ("identifier=" + ",".join("X" * 60 + str(n) for n in range(70)), "exceed 4000 characters"),
]


@pytest.mark.parametrize(("query", "message"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_malformed_values_are_400_naming_the_problem(query: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        parse_search(parse_qsl(query, keep_blank_values=True))


def test_unknown_parameters_are_refused_unless_lenient() -> None:
    params = [("foo", "bar"), ("_sort", "_lastUpdated"), ("_include", "ImagingStudy:patient"), ("patient", "P1")]
    lenient = parse_search(params, strict=False)
    assert lenient.ignored == ("foo", "_include=ImagingStudy:patient", "_sort=_lastUpdated")
    assert [c.name for c in lenient.criteria] == ["patient"]
    assert lenient.sort is None
    with pytest.raises(InvalidRequest, match="unknown search parameter: foo;"):
        parse_search(params)


BASE = "https://fhir.example.org/fhir"


@pytest.mark.parametrize(
    "value",
    [
        "http://evil/fhir/Patient/P1",
        "https://fhir.example.org.evil/fhir/Patient/P1",
        "https://fhir.example.org/other/Patient/P1",  # this host, another base
        "http://fhir.example.org/fhir/Patient/P1",  # another scheme
        "https://fhir.example.org/fhir/Patient/P1#x",
        "//evil/fhir/Patient/P1",
        "/fhir/Patient/P1",
        "http:/evil/Patient/P1",
    ],
)
@pytest.mark.parametrize("name", ["patient", "subject"])
def test_a_reference_to_another_server_is_refused(name: str, value: str) -> None:
    with pytest.raises(InvalidRequest, match="refers to another server"):
        parse_search([(name, value)], base=BASE)


def test_an_endpoint_on_another_server_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="endpoint: 'http://evil/fhir/Endpoint/e1' refers to another server"):
        parse_search([("endpoint", "http://evil/fhir/Endpoint/e1")], base=BASE)


@pytest.mark.parametrize(
    "value",
    ["P1", "Patient/P1", f"{BASE}/Patient/P1", "HTTPS://FHIR.example.org/fhir/Patient/P1", f"{BASE}/Patient/P1/"],
)
def test_local_references_are_accepted(value: str) -> None:
    assert plan(f"patient={value}", base=BASE) == ([{"PatientID": "P1"}], [])


def test_without_a_known_base_no_absolute_reference_is_accepted() -> None:
    with pytest.raises(InvalidRequest, match="refers to another server"):
        parse_search([("patient", f"{BASE}/Patient/P1")])


def test_more_path_than_type_and_id_is_not_a_reference() -> None:
    with pytest.raises(InvalidRequest, match="is not a reference"):
        parse_search([("patient", "x/Patient/P1")])


def test_an_unknown_name_differing_only_in_case_gets_a_suggestion() -> None:
    with pytest.raises(InvalidRequest, match=r"Subject:IDENTIFIER \(did you mean subject:IDENTIFIER\?\)"):
        parse_search([("Subject:IDENTIFIER", "x|1")])


@pytest.mark.parametrize(("count", "expected"), [("0", 0), ("5", 5), ("100", 100), ("1000", 100)])
def test_count_is_capped_never_exceeded(count: str, expected: int) -> None:
    assert parse_search([("_count", count)]).count == expected


@pytest.mark.parametrize("include", ["ImagingStudy:endpoint", "ImagingStudy:endpoint:Endpoint", "*"])
def test_include_endpoint(include: str) -> None:
    assert parse_search([("_include", include)]).include_endpoint


@pytest.mark.parametrize(
    ("template", "reference", "patient_id"),
    [
        ("{PatientID}", "Patient/PAT-1", "PAT-1"),
        ("mrn-{PatientID}", "Patient/mrn-12345", "12345"),
        ("mrn-{PatientID}", "Patient/12345", None),  # outside the template: stands for no PatientID
        ("{PatientID}.h1", "Patient/777.h1", "777"),
        ("mrn-{PatientID}", "Patient/mrn-", None),
    ],
)
def test_patient_reference_rule(template: str, reference: str, patient_id: str | None) -> None:
    query = parse_search([("patient", reference)], patients=PatientRule(template))
    result = plan_search(query)
    if patient_id is None:
        assert result.unsatisfiable
    else:
        assert result.study_queries == ({"PatientID": patient_id},)


def test_long_uid_lists_are_split_across_queries() -> None:
    uids = [f"1.2.3.{n}" for n in range(90)]
    study, _ = plan("_id=" + ",".join(uids))
    assert isinstance(study, list)
    assert [len(q["StudyInstanceUID"].split(",")) for q in study] == [50, 40]


#: SNOMED codes that name a body part, each asked of the PACS as one or more BodyPartExamined terms.
SNOMED_CODES = sorted({row.split(",")[1] for row in (files("bridge.terminology") / "body-part-snomed.csv")
                       .read_text().splitlines()[1:]})  # fmt: skip


def test_a_fan_out_beyond_the_cap_is_too_costly() -> None:
    with pytest.raises(InvalidRequest, match="more than 30 PACS queries"):
        plan("patient=" + ",".join(f"P{n}" for n in range(31)))
    with pytest.raises(InvalidRequest, match="more than 30 series and instance queries"):
        plan("body-site=" + ",".join(SNOMED_CODES[:31]) + "&patient=P1")
    assert len(plan("patient=" + ",".join(f"P{n}" for n in range(30)))[0] or ()) == 30
    study, _ = plan("patient=P1,P2&subject=P1,P2")  # the same PatientID filters twice: asked once each
    assert study == [{"PatientID": "P1"}, {"PatientID": "P2"}]


def test_a_parameter_is_one_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new row is parsed, planned and checked with nothing else changed (here: a made-up ``accession``)."""
    from bridge.search import parameters, values
    from bridge.search.filters import each, matching
    from bridge.search.match import study_matches

    def has_accession(token: values.Token, study: dict[str, Any], zone: object) -> bool:
        return any(i.get("value") == token.code for i in study.get("identifier", []) if "type" in i)

    row = parameters.SearchParameter(
        "accession", "token", parameters.Level.STUDY, "An accession number.",
        {"": parameters.Form(values.token, each(lambda token: matching("AccessionNumber", token.code)),
                             has_accession)},
    )  # fmt: skip
    monkeypatch.setitem(parameters.NAMED_IN[FhirVersion.R5], "accession", row)
    query = parse_search([("accession", "A 1,A2")])
    assert [dict(q) for q in plan_search(query).study_queries or ()] == [
        {"AccessionNumber": "A*1"},  # the space made safe for the PACS, as every row's values are
        {"AccessionNumber": "A2"},
    ]
    study = {"identifier": [{"type": {"text": "accession"}, "value": "A2"}]}
    assert study_matches(query.criteria[0], study)
    assert not study_matches(query.criteria[0], {"identifier": [{"type": {}, "value": "A3"}]})
    with pytest.raises(InvalidRequest, match="modifier :exact is not supported on accession"):
        parse_search([("accession:exact", "A1")])
