"""FHIR response formats: ``_format`` and ``Accept`` decide; we serve JSON only (``application/fhir+json``)."""

from __future__ import annotations

import functools

from aiohttp import hdrs, web

from bridge.errors import NotAcceptable

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


def response_type(request: web.Request) -> str:
    """The media type to answer with, or ``NotAcceptable`` naming what was asked."""
    # request.query parses the URL: only when _format can be in it (the hot path of cached reads).
    requested = request.query.get("_format") if "_format" in request.raw_path else None
    if requested is not None:
        # An unencoded "+" (as the FHIR spec writes application/fhir+json) arrives as a space.
        media = requested.split(";")[0].strip().lower().replace(" ", "+")
        if media not in _FORMAT_ALIASES:
            raise NotAcceptable(f"_format={requested} is not served; this server speaks FHIR JSON (_format=json)")
        return _FORMAT_ALIASES[media]
    accept = request.headers.get(hdrs.ACCEPT)
    if accept is None:
        return FHIR_JSON
    answer = _answer_to(accept)
    if answer is None:
        raise NotAcceptable(f"cannot answer Accept: {accept}; this server speaks {FHIR_JSON}")
    return answer


@functools.lru_cache(maxsize=256)  # a client sends the same Accept on every request: parsed once
def _answer_to(accept: str) -> str | None:
    """The media type to answer an Accept header with; None if nothing it accepts is served."""
    if not accept.strip():
        return FHIR_JSON
    offered = _accepted(accept)
    if offered & {FHIR_JSON, LEGACY_FHIR_JSON}:
        return FHIR_JSON
    # A client that asked for plain JSON (and not FHIR JSON) gets the same body labelled as it asked.
    if offered & {PLAIN_JSON, "text/json"}:
        return PLAIN_JSON
    if offered & {"*/*", "application/*"}:
        return FHIR_JSON
    return None


def _accepted(accept: str) -> set[str]:
    """The media ranges of an Accept header, without those refused by ``q=0``."""
    accepted = set()
    for part in accept.split(","):
        media, *parameters = (p.strip().lower() for p in part.split(";"))
        quality = next((p.removeprefix("q=") for p in parameters if p.startswith("q=")), "1")
        try:
            refused = float(quality) <= 0
        except ValueError:
            refused = False  # a malformed q is ignored rather than held against the client
        if media and not refused:
            accepted.add(media)
    return accepted


#: Full Content-Type header values, formatted once.
CONTENT_TYPES = {FHIR_JSON: f"{FHIR_JSON}; charset=utf-8", PLAIN_JSON: f"{PLAIN_JSON}; charset=utf-8"}


def fhir_bytes_response(media_type: str, body: bytes, status: int = 200) -> web.Response:
    """A serialized FHIR body labelled as negotiated (the header values are formatted once, at import)."""
    return web.Response(body=body, status=status, headers={"Content-Type": CONTENT_TYPES[media_type]})
