"""The one place where errors become responses: every error under ``/fhir`` is an OperationOutcome."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from bridge.errors import BridgeError, NotAcceptable, UpstreamError
from bridge.web.negotiation import FHIR_JSON, fhir_bytes_response, response_type

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

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
        media = response_type(request)
    except NotAcceptable:
        media = FHIR_JSON  # the error must still be said, in the one format we have
    body = orjson.dumps(operation_outcome("error" if status < 500 else "fatal", code, diagnostics))
    return fhir_bytes_response(media, body, status)


async def guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run the handler; render ``BridgeError`` (and, under /fhir, the framework's HTTP errors) as OperationOutcomes.

    Called by the one registered middleware (``bridge.web.observe``) rather than registered itself: each
    middleware layer costs a measurable share of a cached read."""
    try:
        return await handler(request)
    except BridgeError as exc:
        if isinstance(exc, UpstreamError):
            log.warning("%s %s -> %s: %s", request.method, request.path, exc.status, exc.diagnostics)
        response = _outcome_response(request, exc.status, exc.issue_code, exc.diagnostics)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except web.HTTPException as exc:
        if not request.path.startswith("/fhir") or exc.status < 400:
            raise
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
    except Exception:
        # A bug of ours: log it with the trace, tell the client no more than that.
        log.exception("unhandled error in %s %s", request.method, request.path)
        if not request.path.startswith("/fhir"):
            raise
        return _outcome_response(request, 500, "exception", "internal error in the bridge; see its log")
