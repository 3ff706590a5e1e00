"""CORS (BRIDGE_CORS_ORIGINS): which web pages may call the bridge from a browser, and what they may read.

Off by default: nothing here is installed and no request pays for it. On, two pieces:

* ``preflight``, the handler of ``OPTIONS`` under each of ``PREFIXES``: it answers for whatever route serves the
  path (its methods, found through the router, so that a route added later is covered without a list to keep),
  with the request headers a FHIR or DICOMweb client sends and ``Access-Control-Max-Age``. A browser sends no
  token on a preflight, so none is asked for; it is neither audited nor sent to the PACS. A preflight from an
  origin not allowed gets a 403 without CORS headers: the browser fails the request either way, and a 403 shows
  in its developer tools as what it is.
* ``add_headers``, on aiohttp's ``on_response_prepare`` signal: every response under ``PREFIXES`` to an allowed
  origin (errors, 401 with its ``WWW-Authenticate``, 304 and streamed bodies included, since the signal fires
  wherever a response is sent from) carries ``Access-Control-Allow-Origin`` and ``Access-Control-Expose-Headers``.

No response carries ``Access-Control-Allow-Credentials``: the bridge uses no cookies, and a bearer token is an
ordinary request header that ``fetch`` sends without ``credentials: "include"``. So ``*`` (any origin) can work
with bearer tokens, which a hostile page does not have; it is refused without BRIDGE_AUTH=smart (the settings),
where reaching the bridge is itself the credential. With a list of origins the allowed one is echoed and every
response says ``Vary: Origin``, so that a shared cache does not hand one origin's answer to another.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import hdrs, web

from bridge.errors import Forbidden, NotFound

#: The paths browsers may call: the FHIR API and the DICOMweb gateway. Probes and metrics are not for pages.
PREFIXES = ("/fhir", "/dicom-web")

#: Request headers a client of the FHIR API or of DICOMweb sends beyond the CORS-safelisted ones.
ALLOWED_HEADERS = ", ".join([
    "Authorization", "Accept", "Content-Type", "Prefer", "If-None-Match", "If-Modified-Since", "X-Request-ID",
    "Cache-Control",
])  # fmt: skip
#: Response headers a script may read (beyond the safelisted Cache-Control, Content-Language, Content-Length,
#: Content-Type, Expires, Last-Modified, Pragma; some are listed anyway, for older browsers).
EXPOSED_HEADERS = ", ".join([
    "ETag", "Last-Modified", "Location", "X-Request-ID", "WWW-Authenticate", "Content-Type", "Retry-After",
    "X-Cache",
])  # fmt: skip
#: Seconds a browser may reuse a preflight's answer (Chromium caps it at 7200, Firefox at 86400).
MAX_AGE = "7200"

_ORIGIN = hdrs.ORIGIN
_ALLOW_ORIGIN = hdrs.ACCESS_CONTROL_ALLOW_ORIGIN
_EXPOSE = hdrs.ACCESS_CONTROL_EXPOSE_HEADERS


@dataclass(frozen=True)
class Policy:
    """The origins allowed (normalized as ``bridge.settings.web_origin`` does), or ``("*",)`` for any."""

    origins: frozenset[str]

    @property
    def any(self) -> bool:
        return "*" in self.origins

    def allow_origin(self, origin: str | None) -> str | None:
        """The ``Access-Control-Allow-Origin`` for a request's ``Origin``, or None: no CORS headers."""
        if origin is None:
            return None
        if self.any:
            return "*"
        return origin if origin in self.origins else None


POLICY = web.AppKey("cors_policy", Policy)


def install(app: web.Application, origins: tuple[str, ...]) -> None:
    """CORS headers on the responses of ``app`` under ``PREFIXES``, for ``origins``; the preflight routes are added
    by the caller (``routes``), through the same envelope as every other route."""
    app[POLICY] = Policy(frozenset(origins))
    app.on_response_prepare.append(add_headers)


def routes() -> list[tuple[str, str]]:
    """(path pattern, route name) of the preflight routes: one catching ``OPTIONS`` under each prefix. Registered
    before the application's catch-all, they answer for every route there is under them."""
    return [(f"{prefix}/{{path:.*}}", f"{prefix}/* OPTIONS") for prefix in PREFIXES]


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the CORS headers of a response to a page of an allowed origin."""
    if not request.path.startswith(PREFIXES):
        return
    policy = request.app[POLICY]
    headers = response.headers
    if not policy.any:
        headers.add(hdrs.VARY, "Origin")
    allowed = policy.allow_origin(request.headers.get(_ORIGIN))
    if allowed is not None:
        headers[_ALLOW_ORIGIN] = allowed
        headers[_EXPOSE] = EXPOSED_HEADERS


async def preflight(request: web.Request) -> web.StreamResponse:
    """``OPTIONS``: a CORS preflight for an allowed origin gets 204 with what it may send; without ``Origin`` it is
    a plain ``OPTIONS`` (204 with ``Allow``). A path nothing serves: 404. An origin not allowed: 403."""
    methods = await served_methods(request)
    if not methods:
        raise NotFound(f"nothing is served at {request.path}")
    listed = ", ".join(sorted(methods))
    origin = request.headers.get(_ORIGIN)
    if origin is None or hdrs.ACCESS_CONTROL_REQUEST_METHOD not in request.headers:
        return web.Response(status=204, headers={hdrs.ALLOW: listed})
    if request.app[POLICY].allow_origin(origin) is None:
        raise Forbidden(
            f"origin {origin[:100]!r} is not allowed to call this server from a browser (BRIDGE_CORS_ORIGINS)"
        )
    return web.Response(
        status=204,
        headers={
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: listed,
            hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ALLOWED_HEADERS,
            hdrs.ACCESS_CONTROL_MAX_AGE: MAX_AGE,
        },
    )


async def served_methods(request: web.Request) -> set[str]:
    """The methods of the routes matching the request's path: what a request with another method would reach.
    A resource that serves ``OPTIONS`` itself (this handler's, the application's catch-all) is no such route."""
    methods: set[str] = set()
    for resource in request.app.router.resources():
        match, allowed = await resource.resolve(request)
        if match is None:
            methods |= allowed
    return methods
