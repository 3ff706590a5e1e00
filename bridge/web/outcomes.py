"""The one place where errors become responses: every error under ``/fhir`` is an OperationOutcome."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

from bridge.errors import BridgeError, HeadersTooLarge, NotAcceptable, UpstreamError, UriTooLong
from bridge.web.negotiation import FHIR_JSON, Format, fhir_bytes_response, response_type, version_of

log = logging.getLogger(__name__)

# Framework HTTP errors (unknown route, wrong method, oversized request) -> FHIR issue type.
_HTTP_ISSUE_CODES = {
    404: "not-found",
    405: "not-supported",
    413: "too-costly",
    414: "too-long",
    431: "too-long",
}


def operation_outcome(severity: str, code: str, diagnostics: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def _outcome_response(request: web.Request, status: int, code: str, diagnostics: str) -> web.Response:
    try:
        answer = response_type(request)
    except NotAcceptable:
        # The error must still be said, in the one format we have, and the version the base or default says.
        answer = Format(FHIR_JSON, version_of(request))
    body = orjson.dumps(operation_outcome("error" if status < 500 else "fatal", code, diagnostics))
    return fhir_bytes_response(answer, body, status)


#: What the bridge reads of a request; aiohttp's own parser limits (``SERVER_LIMITS``) are set higher, so that a
#: request between the two is answered here, as an OperationOutcome, and not by the framework in plain text.
MAX_URL = 8 * 1024
MAX_HEADER = 8 * 1024
MAX_HEADERS = 32 * 1024
#: aiohttp parser limits, passed to the server by `imaging-bridge serve` and the tests.
MAX_LINE_SIZE = MAX_FIELD_SIZE = 64 * 1024
SERVER_LIMITS: dict[str, int] = {"max_line_size": MAX_LINE_SIZE, "max_field_size": MAX_FIELD_SIZE}


def check_size(request: web.Request) -> None:
    """``UriTooLong`` / ``HeadersTooLarge`` for requests beyond what the bridge reads."""
    if len(request.raw_path) > MAX_URL:
        raise UriTooLong(f"the URL is {len(request.raw_path)} characters long; at most {MAX_URL} are read")
    total = 0
    for name, value in request.raw_headers:
        if len(value) > MAX_HEADER:
            raise HeadersTooLarge(f"a header is {len(value)} bytes long; at most {MAX_HEADER} are read")
        total += len(name) + len(value)
    if total > MAX_HEADERS:
        raise HeadersTooLarge(f"the headers take {total} bytes; at most {MAX_HEADERS} are read")


def error_response(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The response for an error a handler raised: ``BridgeError`` as its OperationOutcome; under ``/fhir``, the
    framework's HTTP errors and our own bugs too. What is not ours to render is raised again."""
    if isinstance(exc, BridgeError):
        if isinstance(exc, UpstreamError):
            log.warning("%s %s -> %s: %s", request.method, request.path, exc.status, exc.diagnostics)
        response = _outcome_response(request, exc.status, exc.issue_code, exc.diagnostics)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        response.headers.update(exc.headers)
        if exc.close_connection:
            response.force_close()
        return response
    if isinstance(exc, web.HTTPException):
        if not request.path.startswith("/fhir") or exc.status < 400:
            raise exc
        if exc.status == 404:
            message = f"no such FHIR endpoint: {request.method} {request.path}"
        elif exc.status == 405:
            message = f"{request.method} is not supported on {request.path}"
        else:
            message = exc.reason
        response = _outcome_response(request, exc.status, _HTTP_ISSUE_CODES.get(exc.status, "processing"), message)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    # A bug of ours: log it with the trace, tell the client no more than that.
    log.error("unhandled error in %s %s", request.method, request.path, exc_info=exc)
    if not request.path.startswith("/fhir"):
        raise exc
    return _outcome_response(request, 500, "exception", "internal error in the bridge; see its log")
