"""The authorization step of every FHIR route: a bearer token -> the request's ``Grant``, or a 401/403.

A read needs a scope with ``r`` on ImagingStudy, a search one with ``s``; an Endpoint read needs what an
ImagingStudy read does. The broadest context granted decides what the token sees: ``user/`` every patient the
bridge serves (the authorization server decided what the user may do); ``system/`` what BRIDGE_AUTH_CLIENT_POLICY
grants the client, and nothing without an entry; ``patient/`` the token's patient context alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from bridge.auth.compartment import Compartments
from bridge.auth.grant import AuditFacts, Grant, Patients
from bridge.auth.scopes import Context, Interaction, Scopes
from bridge.auth.tokens import TokenVerifier
from bridge.errors import Forbidden, Unauthorized
from bridge.web.keys import AUDITED, GRANT

Authorize = Callable[[web.Request], Awaitable[None]]


def step(resource_type: str, interaction: Interaction, action: str) -> Authorize:
    """The step run before a route's handler (by ``bridge.web.observe.Envelope``), with BRIDGE_AUTH=smart: the
    request's Grant, from the app's ``AUTHORIZER`` (opened with the app, as it holds an HTTP session)."""

    async def authorize(request: web.Request) -> None:
        request[AUDITED] = AuditFacts(action=action)
        authorizer = request.app[AUTHORIZER]
        request[GRANT] = await authorizer.grant(request.headers.get(hdrs.AUTHORIZATION), resource_type, interaction)

    return authorize


class Authorizer:
    def __init__(
        self, verifier: TokenVerifier, compartments: Compartments, policy: dict[str, tuple[str, ...] | None]
    ) -> None:
        self._verifier = verifier
        self._compartments = compartments
        self._policy = policy

    async def grant(self, authorization: str | None, resource_type: str, interaction: Interaction) -> Grant:
        if not authorization:
            raise Unauthorized("this server needs a bearer token (Authorization: Bearer …)", error=None)
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be Bearer <access token>", error="invalid_request")
        claims = await self._verifier.verify(token.strip())
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
