"""QIDO-RS through the DICOMweb gateway: ``/dicom-web/studies``, ``…/series``, ``…/instances``.

Searches go through the bridge's own ``QidoSource`` (``app[SOURCE]``), not raw HTTP forwarding: it brings the
request's deadline, the retries and circuit breaker, paging and the proof that an answer is whole, the
``BRIDGE_QIDO_MAX_BYTES`` bound, and it also serves the folder source of the embedded default. The answer is
re-serialized from the rows it returns: ``application/dicom+json`` (an ``Accept`` without it, ``application/json``
or a wildcard is a 406), and 200 with ``[]`` for no match, as Orthanc
answers (PS3.18 allows 204 too; an empty JSON array is what every client reads).

The client's query (PS3.18 8.3.4) is parsed before anything is asked (``parse_qido``, pure): matching keys named
by keyword or tag, ``includefield`` (keywords or tags, several or comma-separated), ``limit``, ``offset``, and
``fuzzymatching=false``. Anything else is a 400 that says what is not understood: sequence paths
(``00081111.00081150``), ``includefield=all`` (the rows are trimmed to what was asked, so "all" cannot be kept
true), ``fuzzymatching=true`` (the bridge does not promise what a PACS's fuzzy matching does), unknown keywords.
``RetrieveURL`` is never returned: it would name the PACS, which the client cannot reach with its token.

Bounds: every search runs under one ``Budget`` of BRIDGE_SEARCH_MAX_QUERIES requests and BRIDGE_SEARCH_MAX_ROWS
rows (running out is a 400 asking to narrow the query), and ``limit`` is capped at BRIDGE_SEARCH_MAX_ROWS (a
capped answer carries the ``Warning`` PS3.18 8.3.4.4 prescribes).

A token confined to patients (``patient/``, or a ``system/`` policy) sees only its patients' rows:

- Under ``/studies/{study}`` the study is admitted first, through the cache, as a retrieve is (another patient's
  study is the 404 of a study that does not exist).
- At ``/studies`` the PACS is asked once per PatientID of the grant, with that PatientID as a matching key in the
  same form the FHIR search sends it (``qido_value``: a value holding ``*``, ``?``, ``\\`` or a character that is
  not URL-safe becomes a ``*`` pattern, a superset). A client's own PatientID must be one of the grant's,
  exactly, or the search is a 403 (as a FHIR search naming another patient is).
- At every level every row is checked as the FHIR search checks a study: its PatientID and IssuerOfPatientID,
  raw, mapped to the identifier the ImagingStudy's ``subject`` would carry and compared exactly with the grant's
  patients; rows of anyone else are dropped. ``includefield`` always asks for both, so the check has them.
- Because a PACS matches PatientID loosely (Orthanc case-insensitively; a ``*`` pattern more so), ``limit`` and
  ``offset`` of a confined search are applied by the bridge to the checked rows, not sent to the PACS; the
  budget bounds what is read.
- Root-level ``/series`` and ``/instances`` are refused (400, "ask under a study"): neither carries the
  patient in a way the PACS can be asked to narrow by, so a confined answer could only be had by reading the
  whole PACS's series.

Series and instance searches read the whole list their path names (a study's series, a series' instances; at the
root, for an unconfined token, every series or instance: a 400 on a large PACS unless matching keys narrow it),
within the budget, then apply ``offset`` and ``limit``: ``QidoSource`` pages those levels itself.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import orjson
from aiohttp import hdrs, web

from bridge.auth.grant import AuditFacts, Patients
from bridge.datatypes import is_uid
from bridge.errors import BudgetExceeded, Forbidden, InvalidRequest, NotAcceptable
from bridge.mapping import tags
from bridge.mapping.dicomjson import DicomJson
from bridge.mapping.imagingstudy import MappingOptions, subject_of
from bridge.qido.budget import Budget, spending
from bridge.qido.folder import FolderQidoSource
from bridge.qido.folder_wado import accepts_json
from bridge.qido.source import QidoSource, qido_value
from bridge.terminology import keyword_tag, tag_keyword
from bridge.web.gateway import PREFIX, authorize_study
from bridge.web.keys import AUDITED, GRANT, MAPPING, SETTINGS, SOURCE

Level = Literal["studies", "series", "instances"]

#: The QIDO-RS routes under ``PREFIX`` and the level each searches.
ROUTES: tuple[tuple[str, Level], ...] = (
    ("/studies", "studies"),
    ("/studies/{study}/series", "series"),
    ("/studies/{study}/series/{series}/instances", "instances"),
    ("/studies/{study}/instances", "instances"),
    ("/series", "series"),
    ("/instances", "instances"),
)

#: Returned at each level without being asked (PS3.18 Tables 6.7.1-2, -2a: the required return attributes that
#: a PACS holds), with what the mapper reads; the rows are trimmed to these and the client's ``includefield``.
_INSTANCE_DEFAULTS = ("00080056", "00280010", "00280011", "00280100", "00280008")  # availability, rows, columns …
DEFAULT_FIELDS: dict[Level, tuple[str, ...]] = {
    "studies": tags.STUDY_FIELDS,
    "series": tags.SERIES_FIELDS,
    "instances": (*tags.INSTANCE_FIELDS, *_INSTANCE_DEFAULTS),
}
#: RetrieveURL: the PACS's own address, which a client of the gateway cannot reach with its token.
_LEFT_OUT = ("00081190",)
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_NUMBER = re.compile(r"^[0-9]{1,9}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_VALUE = 1024
#: The PatientIDs a confined search asks for one by one, at most (a patient's compartment maps to a few).
MAX_PATIENT_IDS = 10


@dataclass(frozen=True)
class QidoQuery:
    """A client's QIDO-RS query, checked: matching keys by keyword, fields by tag, and the window asked for."""

    filters: dict[str, str] = field(default_factory=dict)
    fields: tuple[str, ...] = ()
    limit: int | None = None
    offset: int = 0


def parse_qido(pairs: Iterable[tuple[str, str]]) -> QidoQuery:
    """The query string's pairs as a ``QidoQuery``; an ``InvalidRequest`` naming the first thing not understood."""
    filters: dict[str, str] = {}
    fields: list[str] = []
    limit: int | None = None
    offset = 0
    seen: set[str] = set()
    for name, value in pairs:
        if _CONTROL.search(value) or len(value) > MAX_VALUE:
            raise InvalidRequest(f"the value of {name!r} holds control characters or is longer than {MAX_VALUE}")
        if name in ("limit", "offset", "fuzzymatching"):
            if name in seen:
                raise InvalidRequest(f"{name} is given more than once")
            seen.add(name)
        if name == "includefield":
            for item in value.split(","):
                if item == "all":
                    raise InvalidRequest(
                        "includefield=all is not served through the gateway: name the attributes (keywords or tags)"
                    )
                fields.append(_tag(item, "includefield"))
        elif name == "limit":
            limit = _count(name, value)
        elif name == "offset":
            offset = _count(name, value)
        elif name == "fuzzymatching":
            if value != "false":
                raise InvalidRequest("fuzzymatching=true is not served through the gateway; only false (the default)")
        else:
            keyword = _keyword(name)
            if keyword in filters:
                raise InvalidRequest(f"{name} is given more than once (a list of values is one value, with \\)")
            if value == "":
                fields.append(_tag(keyword, name))  # universal matching: returned, not matched (PS3.4 C.2.2.2.3)
            else:
                filters[keyword] = value
    return QidoQuery(filters, tuple(dict.fromkeys(fields)), limit, offset)


def _count(name: str, value: str) -> int:
    if not _NUMBER.match(value):
        raise InvalidRequest(f"{name}={value!r} is not a non-negative integer")
    return int(value)


def _keyword(name: str) -> str:
    """A matching key (keyword or tag) as its keyword: the form both sources take."""
    if "." in name:
        raise InvalidRequest(f"{name!r}: sequence matching (attribute paths) is not served through the gateway")
    if _TAG.match(name):
        keyword = tag_keyword(int(name, 16))
        if keyword:
            return str(keyword)
    elif keyword_tag(name) is not None:
        return name
    raise InvalidRequest(
        f"{name!r} is not a QIDO-RS parameter the gateway understands: a DICOM keyword or tag, includefield, "
        "limit, offset or fuzzymatching"
    )


def _tag(name: str, parameter: str) -> str:
    """A keyword or tag as the 8-digit tag the DICOM JSON rows are keyed by."""
    if _TAG.match(name):
        if tag_keyword(int(name, 16)):
            return name.upper()
    elif (tag := keyword_tag(name)) is not None:
        return f"{tag:08X}"
    raise InvalidRequest(f"{parameter}={name!r} is neither a DICOM keyword nor a tag in the DICOM dictionary")


def patient_ids(patients: Patients, asked: str | None) -> list[str]:
    """The PatientIDs a confined search asks the PACS for: the grant's, or the one the client named, which must
    be one of them exactly (raw, any system), else 403."""
    granted = sorted({value for _, value in patients.identifiers})
    if asked is None:
        return granted
    if asked not in granted:
        raise Forbidden("PatientID names a patient this token may not see")
    return [asked]


def admitted(rows: Sequence[DicomJson], patients: Patients, options: MappingOptions) -> list[DicomJson]:
    """The rows whose PatientID and IssuerOfPatientID make a subject ``patients`` admits, as a search's studies."""
    return [row for row in rows if patients.admits(subject_of(row, options))]


def window(rows: list[DicomJson], offset: int, limit: int) -> list[DicomJson]:
    return rows[offset : offset + limit]


def searcher(level: Level) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The handler of the QIDO-RS routes searching ``level``."""

    async def handler(request: web.Request) -> web.Response:
        return await search(request, level)

    return handler


async def search(request: web.Request, level: Level) -> web.Response:
    """GET /dicom-web/studies, …/series, …/instances: QIDO-RS through the source, confined to the grant."""
    info = request.match_info
    for key in ("study", "series"):
        if key in info and not is_uid(info[key]):
            raise InvalidRequest(f"{info[key]!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    _check_accept(request.headers.get(hdrs.ACCEPT))
    query = parse_qido(request.query.items())
    study, series = info.get("study"), info.get("series")
    app = request.app
    settings, source, options = app[SETTINGS], app[SOURCE], app[MAPPING]
    cap = settings.search_max_rows
    limit = min(query.limit or cap, cap)
    facts = request.get(AUDITED)
    if facts is None:
        facts = request[AUDITED] = AuditFacts(action="search")
    asked = query.filters.get("PatientID")
    if asked:
        facts.patients.append(asked)  # the audit log says which patient a search named, as for a FHIR search
    grant = request.get(GRANT)
    patients = grant.patients if grant is not None else None
    if patients is not None:
        if study is None and level != "studies":
            raise InvalidRequest(
                f"a token confined to patients searches {level} under a study: ask "
                f"{PREFIX}/studies/{{StudyInstanceUID}}/{level} (find the studies with {PREFIX}/studies)"
            )
        if asked:
            patient_ids(patients, asked)  # at every level: naming another patient is a 403, never an empty answer
        if study is not None:
            await authorize_study(request, study)
    if isinstance(source, FolderQidoSource) and (unmatched := source.unmatched(level, query.filters)):
        raise InvalidRequest(
            f"the folder {source.description} cannot match {', '.join(unmatched)} in a {level} search (an attribute "
            "its index does not hold, a range, a list of values); without them the answer would be wider than asked"
        )
    fields = (*DEFAULT_FIELDS[level], *query.fields, *tags.OWNER)
    fields = tuple(f for f in dict.fromkeys(fields) if f not in _LEFT_OUT)
    try:
        with spending(Budget(settings.search_max_queries, settings.search_max_rows)):
            if level == "studies" and patients is not None:
                rows = await _confined_studies(source, query, patients, fields)
            elif level == "studies":
                rows = await source.search_studies(query.filters, fields, limit=limit, offset=query.offset)
            elif level == "series":
                rows = await source.search_series(study, fields, filters=query.filters)
            else:
                rows = await source.search_instances(study, series, fields, filters=query.filters)
    except BudgetExceeded as exc:
        raise BudgetExceeded(
            f"this QIDO-RS search would cost the PACS too much: {exc.diagnostics}; narrow it with matching keys "
            "(BRIDGE_SEARCH_MAX_ROWS, BRIDGE_SEARCH_MAX_QUERIES)"
        ) from None
    if patients is not None:
        kept = admitted(rows, patients, options)
        ids = {id(row) for row in kept}
        facts.refused.extend(_study_uids(row for row in rows if id(row) not in ids))
        rows = kept
    if patients is not None or level != "studies":
        rows = window(rows, query.offset, limit)  # the PACS was asked for every row: the window is ours
    for row in rows:
        for tag in _LEFT_OUT:
            row.pop(tag, None)
    facts.returned.extend(_study_uids(rows))
    headers = {hdrs.CACHE_CONTROL: "private, no-store"}
    if len(rows) == cap and (query.limit is None or query.limit > cap):
        # PS3.18 8.3.4.4: more may match than the server returns.
        headers[hdrs.WARNING] = (
            "299 imaging-bridge: The number of results exceeded the maximum supported by the server "
            "(BRIDGE_SEARCH_MAX_ROWS). Additional results can be requested."
        )
    return web.Response(body=orjson.dumps(rows), content_type="application/dicom+json", headers=headers)


async def _confined_studies(
    source: QidoSource, query: QidoQuery, patients: Patients, fields: Sequence[str]
) -> list[DicomJson]:
    """Every study row of the grant's patients that matches the query: one PACS search per PatientID, each
    narrowed by it (a superset, checked by the caller)."""
    ids = patient_ids(patients, query.filters.get("PatientID"))
    if len(ids) > MAX_PATIENT_IDS:
        raise InvalidRequest(
            f"this token's patients have {len(ids)} PatientIDs; a QIDO-RS search through the gateway asks for at "
            f"most {MAX_PATIENT_IDS}: search with PatientID"
        )
    rows: list[DicomJson] = []
    seen: set[tuple[str | None, ...]] = set()
    for patient_id in ids:
        filters = {**query.filters, "PatientID": qido_value(patient_id)}
        for row in await source.search_studies(filters, fields):
            key = tuple(_first(row, tag) for tag in (tags.STUDY_INSTANCE_UID, *tags.OWNER))
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return rows


def _check_accept(accept: str | None) -> None:
    """406 for an ``Accept`` that DICOM JSON does not satisfy (``multipart/related; type=application/dicom+xml``)."""
    if not accepts_json(accept):
        raise NotAcceptable(f"this QIDO-RS search answers application/dicom+json only, not {(accept or '')[:100]!r}")


def _first(row: DicomJson, tag: str) -> str | None:
    values = (row.get(tag) or {}).get("Value") or [None]
    value = values[0]
    return value if isinstance(value, str) else None


def _study_uids(rows: Iterable[DicomJson]) -> list[str]:
    return list(dict.fromkeys(uid for row in rows if (uid := _first(row, tags.STUDY_INSTANCE_UID))))
