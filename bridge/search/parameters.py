"""The one table of supported ImagingStudy search parameters: each row carries how its values are read, how they
are asked of the PACS and how a row the PACS returns is checked. Pure, no I/O.

The parser accepts exactly these names (with exactly these modifiers), the planner asks the PACS what each row
says, every candidate is checked by each row's own test, and the CapabilityStatement is generated from this
table, so it cannot claim what does not work. Adding a parameter is adding a row (and, where no existing piece
fits, the functions it names, beside it here).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

from bridge import terminology
from bridge.datatypes import is_uid
from bridge.fhirversion import FhirVersion
from bridge.search import values
from bridge.search.dates import DateValue, date_matches
from bridge.search.filters import Alternatives, Filters, date_range, each, matching, uid_list
from bridge.search.values import Context, Reference, Token, TypedToken
from bridge.terminology import ACCESSION_TYPE, DCM, DICOM_UID_SYSTEM, IMAGINGSTUDY_STATUS, RFC3986, SNOMED

#: The FHIR element a criterion is checked against: the study-level ImagingStudy, a series or an instance.
Element = dict[str, Any]
V = TypeVar("V")


class Level(StrEnum):
    """The QIDO-RS level whose rows decide a criterion (and the element its check is given)."""

    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"
    #: Decided on the complete resource, as served (read through the cache): what no QIDO row holds.
    RESOURCE = "resource"


@dataclass(frozen=True)
class Form(Generic[V]):
    """One way a parameter is written (bare, or with one modifier)."""

    #: One OR value -> its typed value (``InvalidRequest`` naming the parameter if it cannot be one).
    parse: Callable[[str, str, Context], V]
    #: The OR values of one criterion -> QIDO alternatives (see ``bridge.search.filters``).
    qido: Callable[[Sequence[V]], Alternatives]
    #: Whether one value matches an element of the parameter's level, exactly, by FHIR's rules.
    check: Callable[[V, Element, dt.tzinfo], bool]


@dataclass(frozen=True)
class SearchParameter:
    name: str
    type: str  # the FHIR search parameter type
    level: Level
    documentation: str
    #: The ways it may be written: "" is the bare name, other keys are modifiers.
    forms: Mapping[str, Form[Any]]
    #: The canonical SearchParameter of the FHIR R5 specification, when this is one of its parameters.
    definition: str | None = None
    #: Its R4 name and canonical SearchParameter where they differ from R5's (``basedon`` for ``based-on``);
    #: empty: as in R5.
    r4: tuple[str, str] = ("", "")
    #: Whether R5 serves it: R5 defines ``reason`` with no expression (over a CodeableReference), so only R4's,
    #: over ``reasonCode``, is served.
    in_r5: bool = True
    #: It names the patient: asked of the PACS first in every search, and its studies' issuers checked.
    names_patient: bool = False
    #: It puts no filter on the PACS and the PACS's rows all match it as given: a page of a search with only
    #: such criteria can be read at the PACS with ``limit``/``offset`` (see ``bridge.search.execute``).
    paged_at_pacs: bool = False
    #: Its values identify no one (a modality, a status): shown in the access log, where others are ``***``.
    public: bool = False

    @property
    def modifiers(self) -> frozenset[str]:
        return frozenset(key for key in self.forms if key)

    def name_in(self, version: FhirVersion) -> str:
        """Its name in ``version``: what a client writes, and the CapabilityStatement says."""
        return self.r4[0] if version is FhirVersion.R4 and self.r4[0] else self.name

    def served_in(self, version: FhirVersion) -> bool:
        return self.in_r5 or version is not FhirVersion.R5

    def documentation_in(self, version: FhirVersion) -> str:
        """Its documentation, naming it as ``version`` does (``basedon:identifier=…`` in R4)."""
        name = self.name_in(version)
        return self.documentation if name == self.name else self.documentation.replace(self.name, name)

    def definition_in(self, version: FhirVersion) -> str | None:
        return self.r4[1] if version is FhirVersion.R4 and self.r4[1] else self.definition


def missing(element: str) -> Form[bool]:
    """``:missing=true|false``: whether the element is absent. QIDO cannot ask it (universal matching finds both)."""
    return Form(values.boolean, _no_filter, lambda value, found, zone: (element not in found) is value)


def _no_filter(values: Sequence[Any]) -> Alternatives:
    return None


def _all_studies(value: object) -> list[Filters]:
    return [{}]


# ---- identifiers and references ----


def _identifier_matches(token: Token, identifier: Element) -> bool:
    if identifier.get("value") != token.code:
        return False
    return token.system is None or identifier.get("system", "") == token.system


def _study_identifier_filters(token: Token) -> list[Filters]:
    """A DICOM UID (``urn:dicom:uid|urn:oid:…``, or the bare ``urn:oid:…`` of SMART Imaging), else an accession
    number of any issuer."""
    if token.system == DICOM_UID_SYSTEM or (token.system is None and token.code.startswith("urn:oid:")):
        return uid_list("StudyInstanceUID", [token.code.removeprefix("urn:oid:")])
    return matching("AccessionNumber", token.code)


def _has_identifier(token: Token, study: Element, zone: dt.tzinfo) -> bool:
    return any(_identifier_matches(token, identifier) for identifier in study.get("identifier", []))


def _has_typed_identifier(token: TypedToken, study: Element, zone: dt.tzinfo) -> bool:
    for identifier in study.get("identifier", []):
        codings = identifier.get("type", {}).get("coding", [])
        if identifier.get("value") == token.value and any(
            (c.get("system"), c.get("code")) == (token.type_system, token.type_code) for c in codings
        ):
            return True
    return False


def _is_patient(reference: Reference, study: Element, zone: dt.tzinfo) -> bool:
    # The parser turned the Patient's id into the PatientID it stands for (BRIDGE_PATIENT_REFERENCE).
    identifier = study["subject"].get("identifier", {})
    return reference.type == "Patient" and bool(reference.id) and identifier.get("value") == reference.id


def _patient_filters(reference: Reference) -> list[Filters]:
    return matching("PatientID", reference.id) if reference.type == "Patient" and reference.id else []


def _has_patient_identifier(token: Token, study: Element, zone: dt.tzinfo) -> bool:
    identifier = study["subject"].get("identifier")
    return identifier is not None and _identifier_matches(token, identifier)


def _is_based_on(token: Token, study: Element, zone: dt.tzinfo) -> bool:
    identifiers = [reference["identifier"] for reference in study.get("basedOn", []) if "identifier" in reference]
    return any(_identifier_matches(token, identifier) for identifier in identifiers)


def _has_endpoint(reference: Reference, study: Element, zone: dt.tzinfo) -> bool:
    return f"{reference.type}/{reference.id}" in {ref.get("reference") for ref in study.get("endpoint", [])}


def _subject() -> dict[str, Form[Any]]:
    """``patient`` and ``subject``: a Patient reference (``:Patient`` is the type modifier, and only Patient
    subjects exist here), or ``:identifier`` on the subject's identifier."""
    reference = Form(values.patient_reference, each(_patient_filters), _is_patient)
    return {
        "": reference,
        "Patient": reference,
        "identifier": Form(values.token, each(lambda token: matching("PatientID", token.code)),
                           _has_patient_identifier),
    }  # fmt: skip


# ---- codes ----


def _has_coding(token: Token, codings: list[Element], system: str) -> bool:
    if token.system not in (None, system):
        return False
    return any(c.get("system") == system and c.get("code") == token.code for c in codings)


def _modality_filters(token: Token) -> list[Filters]:
    # Only DICOM's defined terms are coded (others are text, which a token never matches): nothing else can match.
    defined = terminology.modality_display(token.code) is not None
    return [{"ModalitiesInStudy": token.code}] if token.system in (None, DCM) and defined else []


def _has_modality(token: Token, study: Element, zone: dt.tzinfo) -> bool:
    codings = [coding for concept in study.get("modality", []) for coding in concept.get("coding", [])]
    return _has_coding(token, codings, DCM)


def _body_site_filters(token: Token) -> list[Filters]:
    if token.system not in (None, SNOMED):
        return []
    return [{"BodyPartExamined": term} for term in terminology.body_part_terms(token.code)]


def _has_body_site(token: Token, series: Element, zone: dt.tzinfo) -> bool:
    return _has_coding(token, series.get("bodySite", {}).get("concept", {}).get("coding", []), SNOMED)


def _has_reason(token: Token, study: Element, zone: dt.tzinfo) -> bool:
    """A coded reason (decided on the R5 rendering, ``reason.concept``, R4's ``reasonCode``): FHIR's token rules,
    ``code``, ``system|code`` and ``|code`` (no system)."""
    for reason in study.get("reason", []):
        for coding in reason.get("concept", {}).get("coding", []):
            if coding.get("code") == token.code and token.system in (None, coding.get("system", "")):
                return True
    return False


def _status_filters(token: Token) -> list[Filters]:
    return [{}] if token.system in (None, IMAGINGSTUDY_STATUS) and token.code == "available" else []


def _has_status(token: Token, study: Element, zone: dt.tzinfo) -> bool:
    return token.system in (None, IMAGINGSTUDY_STATUS) and token.code == study["status"]


def sop_class_uid(token: Token) -> str | None:
    """The SOP Class UID of a dicom-class value (``urn:oid:1.2…`` or ``1.2…``, system rfc3986 or none)."""
    if token.system not in (None, RFC3986):
        return None
    uid = token.code.removeprefix("urn:oid:")
    return uid if is_uid(uid) else None


def _is_sop_class(token: Token, instance: Element, zone: dt.tzinfo) -> bool:
    return bool(instance["sopClass"]["code"] == f"urn:oid:{sop_class_uid(token)}")


# ---- UIDs and dates ----


def _uids(key: str) -> Callable[[Sequence[Token]], Alternatives]:
    return lambda tokens: uid_list(key, [token.code for token in tokens])


def _is_uid(element_key: str) -> Callable[[Token, Element, dt.tzinfo], bool]:
    return lambda token, element, zone: token.system in (None, "") and token.code == element[element_key]


def _started_filters(dates: Sequence[DateValue]) -> Alternatives:
    return date_range("StudyDate", dates)


def _started(value: DateValue, study: Element, zone: dt.tzinfo) -> bool:
    return "started" in study and date_matches(value, study["started"], zone)


def _last_updated(value: DateValue, study: Element, zone: dt.tzinfo) -> bool:
    # A study read without the cache has no meta.lastUpdated: it is being served for the first time, now.
    updated = study.get("meta", {}).get("lastUpdated")
    return updated is None or date_matches(value, updated, zone)


def _r5(name: str) -> str:
    return f"http://hl7.org/fhir/SearchParameter/{name}"


SEARCH_PARAMETERS: tuple[SearchParameter, ...] = (
    SearchParameter(
        "_id", "token", Level.STUDY, "The StudyInstanceUID (the resource id).",
        {"": Form(values.uid_token, _uids("StudyInstanceUID"), _is_uid("id"))},
        _r5("Resource-id"),
    ),
    SearchParameter(
        "identifier", "token", Level.STUDY,
        "urn:dicom:uid|urn:oid:<StudyInstanceUID>, a bare urn:oid:<uid> (SMART Imaging), or the accession number "
        "(any system, or its issuer's system; :of-type with v2-0203|ACSN).",
        {
            "": Form(values.token, each(_study_identifier_filters), _has_identifier),
            "of-type": Form(values.typed_token, each(lambda typed: matching("AccessionNumber", typed.value)
                            if (typed.type_system, typed.type_code) == ACCESSION_TYPE else []),
                            _has_typed_identifier),
        },
        _r5("clinical-identifier"),
    ),
    SearchParameter(
        "patient", "reference", Level.STUDY,
        "Patient/<id>, where the id stands for a DICOM PatientID by the BRIDGE_PATIENT_REFERENCE template "
        "(default: the id is the PatientID); :identifier=system|value matches the subject's identifier; the chain "
        "patient.identifier does the same.",
        _subject(), _r5("clinical-patient"), names_patient=True,
    ),
    SearchParameter(
        "subject", "reference", Level.STUDY, "As patient (only Patient subjects exist here).",
        _subject(), _r5("ImagingStudy-subject"), names_patient=True,
    ),
    SearchParameter(
        "started", "date", Level.STUDY,
        "StudyDate/StudyTime; every prefix but ap, every precision; the time part is checked by the bridge.",
        {"": Form(values.date, _started_filters, _started), "missing": missing("started")},
        _r5("ImagingStudy-started"),
    ),
    SearchParameter(
        "modality", "token", Level.STUDY,
        "A DICOM modality code (system http://dicom.nema.org/resources/ontology/DCM), matched against the "
        "study's series modalities (ModalitiesInStudy).",
        {"": Form(values.token, each(_modality_filters), _has_modality)},
        _r5("ImagingStudy-modality"), public=True,
    ),
    SearchParameter(
        "series", "token", Level.SERIES, "A SeriesInstanceUID of the study.",
        {"": Form(values.uid_token, _uids("SeriesInstanceUID"), _is_uid("uid"))},
        _r5("ImagingStudy-series"),
    ),
    SearchParameter(
        "instance", "token", Level.INSTANCE, "A SOPInstanceUID of the study.",
        {"": Form(values.uid_token, _uids("SOPInstanceUID"), _is_uid("uid"))},
        _r5("ImagingStudy-instance"),
    ),
    SearchParameter(
        "dicom-class", "token", Level.INSTANCE,
        "A SOP Class UID (urn:oid:<uid> or the bare UID) of one of the study's instances.",
        {"": Form(values.token, lambda tokens: uid_list("SOPClassUID", [sop_class_uid(t) for t in tokens]),
                  _is_sop_class)},
        _r5("ImagingStudy-dicom-class"),
    ),
    SearchParameter(
        "body-site", "token", Level.SERIES,
        "A SNOMED CT code (http://snomed.info/sct), matched through PS3.16 Annex L against BodyPartExamined.",
        {"": Form(values.token, each(_body_site_filters), _has_body_site)},
        _r5("ImagingStudy-body-site"), r4=("bodysite", _r5("ImagingStudy-bodysite")),
    ),
    SearchParameter(
        "based-on", "reference", Level.STUDY,
        "Only as based-on:identifier=[system|]<accession number>, or based-on:missing.",
        {
            "identifier": Form(values.token, each(lambda token: matching("AccessionNumber", token.code)),
                               _is_based_on),
            "missing": missing("basedOn"),
        },
        _r5("ImagingStudy-based-on"), r4=("basedon", _r5("ImagingStudy-basedon")),
    ),
    SearchParameter(
        "reason", "token", Level.STUDY,
        "R4 only: a coded reason for the study (Reason for Requested Procedure Code Sequence, reasonCode). A PACS "
        "cannot be asked for it: it is checked on every study the other criteria find, so name a patient, a date "
        "or a modality beside it.",
        # Not paged at the PACS: the page would page through the archive to keep what matches.
        {"": Form(values.token, each(_all_studies), _has_reason)},
        _r5("ImagingStudy-reason"), in_r5=False,
    ),
    SearchParameter(
        "status", "token", Level.STUDY, "Every study the PACS returns is available.",
        {"": Form(values.token, each(_status_filters), _has_status)},
        _r5("ImagingStudy-status"), paged_at_pacs=True, public=True,
    ),
    SearchParameter(
        "_lastUpdated", "date", Level.RESOURCE,
        "When the bridge first served the study's current content (meta.lastUpdated: a PACS keeps no modification "
        "time QIDO returns), for incremental sync: patient=…&_lastUpdated=gt<the last sync>. Decided on the "
        "complete studies, so a search with it may have at most 100 candidates.",
        {"": Form(values.date, _no_filter, _last_updated)},
        _r5("Resource-lastUpdated"),
    ),
    SearchParameter(
        "endpoint", "reference", Level.STUDY, "The WADO-RS Endpoint every study references.",
        # Not paged at the PACS: another server's Endpoint would page through the whole archive to show nothing.
        {"": Form(values.endpoint_reference, each(_all_studies), _has_endpoint)},
        _r5("ImagingStudy-endpoint"),
    ),
)  # fmt: skip

BY_NAME = {parameter.name: parameter for parameter in SEARCH_PARAMETERS}
#: The parameters by the name each version gives them: R5's ``body-site`` is unknown in R4, and R4's ``bodysite``
#: in R5.
NAMED_IN = {
    version: {p.name_in(version): p for p in SEARCH_PARAMETERS if p.served_in(version)} for version in FhirVersion
}
#: Parameters a version defines that the bridge cannot serve, with why: refused (400) rather than called unknown.
NOT_SERVED_IN = {
    FhirVersion.R4: {
        "interpreter": "the bridge's interpreters are names alone (Name of Physician(s) Reading Study), with no "
        "Practitioner a reference could name, and a PACS cannot be asked for them",
    },
    FhirVersion.R5: {},
}
PATIENT_PARAMETERS = frozenset(parameter.name for parameter in SEARCH_PARAMETERS if parameter.names_patient)

#: Chains accepted: ``patient.identifier`` and ``subject.identifier`` mean ``:identifier``.
CHAINS = {"patient.identifier": "patient", "subject.identifier": "subject"}

#: Result parameters understood (``_totalMethod`` is Aidbox's ``_total``, which fhirpy's ``count()`` sends).
RESULT_PARAMETERS = ("_count", "_offset", "_summary", "_elements", "_include", "_total", "_totalMethod", "_sort")

#: Parameters that concern the response format, handled by the web layer.
FORMAT_PARAMETERS = ("_format", "_pretty")

DEFAULT_COUNT = 20
MAX_COUNT = 100
INCLUDE_ENDPOINT = "ImagingStudy:endpoint"
