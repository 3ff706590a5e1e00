"""FHIR response formats and versions: ``_format`` and ``Accept`` decide; we serve JSON only
(``application/fhir+json``), as FHIR R4 or R5.

The version comes from the base the client used (``/fhir/r4``, ``/fhir/r5``: ``bridge.bases``) or, on
``/fhir``, from the ``fhirVersion`` parameter of the media type asked for (``application/fhir+json;
fhirVersion=4.0``; R5 when none is named). A version the base cannot serve is a 406. Every answer names its
version in its ``Content-Type``, and says ``Vary: Accept``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from aiohttp import hdrs, web

from bridge.bases import base_of
from bridge.errors import NotAcceptable
from bridge.fhirversion import DEFAULT, FhirVersion

FHIR_JSON = "application/fhir+json"
PLAIN_JSON = "application/json"

LEGACY_FHIR_JSON = "application/json+fhir"  # DSTU2's name, still sent by older clients

_FORMAT_ALIASES = {
    "json": FHIR_JSON,
    FHIR_JSON: FHIR_JSON,
    LEGACY_FHIR_JSON: FHIR_JSON,
    PLAIN_JSON: PLAIN_JSON,
    "text/json": PLAIN_JSON,
}


class Format(NamedTuple):
    """What to answer with: a media type and a FHIR version."""

    media: str
    version: FhirVersion


#: The format a POST ``_search`` body's ``_format`` chose (``body_format``): its errors are said in it too.
BODY_FORMAT = web.RequestKey("body_format", Format)


def response_type(request: web.Request) -> Format:
    """The media type and FHIR version to answer with, or ``NotAcceptable`` naming what was asked."""
    # Only a POST has a body whose _format can have chosen: asking a GET (every read) is not free, as a request's
    # ``in`` is Python-level and raises a KeyError inside when the key is absent.
    if request.method == hdrs.METH_POST and BODY_FORMAT in request:
        return request[BODY_FORMAT]
    fixed = base_of(request.path).version
    # request.query parses the URL: only when _format can be in it (the hot path of cached reads).
    requested = request.query.get("_format") if "_format" in request.raw_path else None
    accept = request.headers.get(hdrs.ACCEPT, "")
    if requested is not None:
        formatted = _format_answer(requested, fixed)
        if fixed is None and not any(_is_version(p) for p in requested.split(";")[1:]):
            # _format picks the format; a version it does not name is still the one Accept names, if served.
            accepted = _answer_to(accept, None)
            if isinstance(accepted, Format):
                return formatted._replace(version=accepted.version)
        return formatted
    answer = _answer_to(accept, fixed)
    if not isinstance(answer, Format):
        raise NotAcceptable(answer)
    return answer


def body_format(request: web.Request, form: list[tuple[str, str]], negotiated: Format) -> Format:
    """What to answer a POST ``_search`` with, given its form body: FHIR reads the body's parameters as the URL's,
    so a ``_format`` there decides as one in the URL would (the URL's, when both name one, wins)."""
    requested = next((value for key, value in form if key == "_format"), None)
    if requested is None or "_format" in request.query:
        return negotiated
    chosen = request[BODY_FORMAT] = _format_answer(requested, base_of(request.path).version)
    return chosen


def version_of(request: web.Request) -> FhirVersion:
    """The version an error is said in: as negotiated, else the base's (the default on ``/fhir``)."""
    try:
        return response_type(request).version
    except NotAcceptable:
        return base_of(request.path).version or DEFAULT


def _format_answer(requested: str, fixed: FhirVersion | None) -> Format:
    media, *parameters = (p.strip() for p in requested.split(";"))
    # An unencoded "+" (as the FHIR spec writes application/fhir+json) arrives as a space.
    media = media.lower().replace(" ", "+")
    if media not in _FORMAT_ALIASES:
        raise NotAcceptable(f"_format={requested} is not served; this server speaks FHIR JSON (_format=json)")
    version = _version(parameters, fixed)
    if not isinstance(version, FhirVersion):  # (a FhirVersion is a str too)
        raise NotAcceptable(f"_format={requested}: {version}")
    return Format(_FORMAT_ALIASES[media], version)


def _version(parameters: list[str], fixed: FhirVersion | None) -> FhirVersion | str:
    """The version a media type's parameters ask for on a base serving ``fixed`` (None: any), or why not."""
    named = next((p.partition("=")[2].strip().strip('"') for p in parameters if _is_version(p)), None)
    if named is None:
        return fixed or DEFAULT
    version = FhirVersion.parse(named)
    if version is None:
        served = ", ".join(v.value for v in FhirVersion)
        return f"fhirVersion={named} is not served (served: {served}; see $versions)"
    if fixed is not None and version is not fixed:
        return f"fhirVersion={named} is not served at this base, which serves FHIR {fixed.value} alone"
    return version


def _is_version(parameter: str) -> bool:
    return parameter.partition("=")[0].strip().lower() == "fhirversion"


@functools.lru_cache(maxsize=256)  # a client sends the same Accept on every request: parsed once
def _answer_to(accept: str, fixed: FhirVersion | None) -> Format | str:
    """The format to answer an Accept header with on a base serving ``fixed``; else what to say in the 406."""
    if not accept.strip():
        return Format(FHIR_JSON, fixed or DEFAULT)
    served: dict[str, FhirVersion] = {}  # media range -> the version asked with it (the most preferred served one)
    refusal = None
    for media, parameters in _accepted(accept):
        version = _version(parameters, fixed)
        if not isinstance(version, FhirVersion):
            refusal = refusal or version
        else:
            served.setdefault(media, version)
    for ranges, media in (
        ((FHIR_JSON, LEGACY_FHIR_JSON), FHIR_JSON),
        # A client that asked for plain JSON (and not FHIR JSON) gets the same body labelled as it asked.
        ((PLAIN_JSON, "text/json"), PLAIN_JSON),
        (("*/*", "application/*"), FHIR_JSON),
    ):
        for one in ranges:
            if one in served:
                return Format(media, served[one])
    if refusal is not None:
        return f"cannot answer Accept: {accept}: {refusal}"
    return f"cannot answer Accept: {accept}; this server speaks {FHIR_JSON}"


def _accepted(accept: str) -> list[tuple[str, list[str]]]:
    """The media ranges of an Accept header with their parameters, most preferred first (by ``q``, then in the
    order given), without those refused by ``q=0``."""
    accepted = []
    for part in accept.split(","):
        media, *parameters = (p.strip() for p in part.split(";"))
        media = media.lower()
        quality = next((p[2:] for p in parameters if p.lower().startswith("q=")), "1")
        try:
            weight = float(quality)
        except ValueError:
            weight = 1.0
        if not 0 <= weight <= 1:  # nan, inf, out of range: malformed too
            weight = 1.0  # a malformed q is ignored rather than held against the client
        if media and weight > 0:
            accepted.append((weight, media, parameters))
    accepted.sort(key=lambda ranged: -ranged[0])  # stable: equal weights keep their order
    return [(media, parameters) for _, media, parameters in accepted]


#: Full Content-Type header values, formatted once.
CONTENT_TYPES = {
    (media, version): f"{media}; fhirVersion={version.value}; charset=utf-8"
    for media in (FHIR_JSON, PLAIN_JSON)
    for version in FhirVersion
}


def fhir_bytes_response(answer: Format, body: bytes, status: int = 200) -> web.Response:
    """A serialized FHIR body labelled as negotiated (the header values are formatted once, at import)."""
    return web.Response(
        body=body, status=status, headers={"Content-Type": CONTENT_TYPES[answer], hdrs.VARY: hdrs.ACCEPT}
    )
