"""The authorization step of every FHIR route: a bearer token -> the request's ``Grant``, or a 401/403.

A read needs a scope with ``r`` on ImagingStudy, a search one with ``s``; an Endpoint read needs what an
ImagingStudy read does. The broadest context granted decides what the token sees: ``user/`` every patient the
bridge serves (the authorization server decided what the user may do); ``system/`` what BRIDGE_AUTH_CLIENT_POLICY
grants the client, and nothing without an entry; ``patient/`` the token's patient context alone.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from bridge.auth.compartment import Compartments
from bridge.auth.grant import AuditFacts, Grant, Patients
from bridge.auth.scopes import Context, Interaction, Scopes
from bridge.auth.tokens import TokenVerifier, digest
from bridge.errors import Forbidden, Unauthorized
from bridge.web.keys import AUDITED, GRANT
from bridge.web.ratelimit import RATE_LIMITER, client_key

Authorize = Callable[[web.Request], Awaitable[None]]


def step(resource_type: str, interaction: Interaction, action: str) -> Authorize:
    """The step run before a route's handler (by ``bridge.web.observe.Envelope``), with BRIDGE_AUTH=smart: the
    request's Grant, from the app's ``AUTHORIZER`` (opened with the app, as it holds an HTTP session)."""

    async def authorize(request: web.Request) -> None:
        request[AUDITED] = AuditFacts(action=action)
        authorizer, authorization = request.app[AUTHORIZER], request.headers.get(hdrs.AUTHORIZATION)
        # A grant decided in the last minute is taken without another coroutine: most requests of a warm read.
        grant = authorizer.cached(authorization, resource_type, interaction)
        if grant is None:
            # A token not seen lately is verified, which may cost the authorization server a request (an
            # introspection): verifications are limited per address, before the attempt, so that a stream of
            # made-up tokens is refused (429) rather than passed on.
            if (limiter := request.app.get(RATE_LIMITER)) is not None:
                await limiter.check("verify:" + client_key(request))
            grant = await authorizer.grant(authorization, resource_type, interaction)
        request[GRANT] = grant

    return authorize


#: Seconds a token's grant is reused for the same interaction before it is decided again (never past the token's
#: expiry): the verifier's own cache keeps its claims longer; this saves parsing scopes and mapping the patient.
GRANT_TTL = 60.0
#: Grants kept at most (the oldest forgotten first).
GRANT_ENTRIES = 10_000


class Authorizer:
    def __init__(
        self,
        verifier: TokenVerifier,
        compartments: Compartments,
        policy: dict[str, tuple[str, ...] | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._verifier = verifier
        self._compartments = compartments
        self._policy = policy
        self._clock = clock
        # By the token's digest (never the token), the resource type and the interaction.
        self._grants: dict[tuple[bytes, str, Interaction], tuple[float, Grant]] = {}

    def cached(self, authorization: str | None, resource_type: str, interaction: Interaction) -> Grant | None:
        """The grant of a well-formed bearer token decided within ``GRANT_TTL``, if there is one."""
        if not authorization or not authorization.startswith(("Bearer ", "bearer ")) or not authorization.isascii():
            return None
        found = self._grants.get((digest(authorization[7:].strip()), resource_type, interaction))
        return found[1] if found is not None and self._clock() < found[0] else None

    async def grant(self, authorization: str | None, resource_type: str, interaction: Interaction) -> Grant:
        if not authorization:
            raise Unauthorized("this server needs a bearer token (Authorization: Bearer …)", error=None)
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be Bearer <access token>", error="invalid_request")
        token = token.strip()
        if not token.isascii():  # header bytes that are not ASCII (aiohttp keeps them as surrogates): no token
            raise Unauthorized("the token is malformed: not a bearer token (RFC 6750 2.1)")
        key = (digest(token), resource_type, interaction)
        now = self._clock()
        cached = self._grants.get(key)
        if cached is not None and now < cached[0]:
            return cached[1]
        grant = await self._decide(token, resource_type, interaction)
        expires = grant.claims.expires_at if grant.claims and grant.claims.expires_at else now + GRANT_TTL
        if len(self._grants) >= GRANT_ENTRIES:
            del self._grants[next(iter(self._grants))]
        self._grants[key] = (min(now + GRANT_TTL, expires), grant)
        return grant

    async def _decide(self, token: str, resource_type: str, interaction: Interaction) -> Grant:
        claims = await self._verifier.verify(token)
        scopes = Scopes.parse(claims.scope)
        contexts = scopes.contexts(resource_type, interaction)
        needed = "read" if interaction is Interaction.READ else "search"
        if not contexts:
            raise Forbidden(
                f"the token's scopes do not allow {needed}ing {resource_type} (e.g. patient/{resource_type}.r"
                f"{'s' if interaction is Interaction.SEARCH else ''} or patient/{resource_type}.read)",
                scope=f"patient/{resource_type}.{interaction.value}",
            )
        patients: Patients | None
        if Context.USER in contexts:
            patients = None
        elif Context.SYSTEM in contexts:
            if claims.client_id is None or claims.client_id not in self._policy:
                raise Forbidden(
                    "system/ scopes reach only the patients BRIDGE_AUTH_CLIENT_POLICY grants a client, and it "
                    "names no policy for this token's client"
                )
            allowed = self._policy[claims.client_id]
            patients = None if allowed is None else await self._compartments.of(allowed)
        else:
            if not claims.patient:
                raise Forbidden("a patient/ scope needs a patient context in the token, and this one has none")
            patients = await self._compartments.of([claims.patient])
        return Grant(claims, scopes, patients)


AUTHORIZER = web.AppKey("authorizer", Authorizer)
