"""Opaque access tokens checked by RFC 7662 token introspection, as SMART's token introspection profiles it.

The bridge POSTs ``token=…`` to BRIDGE_AUTH_INTROSPECTION_URL with its own client credentials (HTTP Basic).
``active: true`` is required, and then: ``exp`` not past and ``nbf`` not in the future; ``iss``, when the answer
gives one and an issuer is configured, that issuer; ``aud``, when given, naming this server; ``token_type``, when
given, an access token (not a refresh token); no ``cnf`` binding. The patient context is the answer's ``patient``
(or the configured claim name). One introspection at a time per token: concurrent requests with the same new
token share it. Refusals are remembered a few seconds so one bad token repeated does not flood the server.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from bridge.auth.claims import InvalidToken, claims_from, numeric_date
from bridge.auth.grant import Claims
from bridge.auth.issuer import same_issuer
from bridge.auth.remote import JsonClient, basic_auth, unavailable

log = logging.getLogger(__name__)

#: Seconds an active answer is relied on at most, whatever its ``exp``: a revoked token is refused after that.
MAX_TTL = 300.0
#: Seconds a refusal is remembered, and how many are.
INACTIVE_TTL = 10.0
INACTIVE_ENTRIES = 1000
#: Seconds of clock skew allowed for ``exp`` and ``nbf``.
LEEWAY = 30.0

WHAT = "the token introspection endpoint"
INACTIVE = "the token is not active: expired, revoked, or unknown to the authorization server"


class Introspection:
    """Asks the authorization server whether a token is active, and what it grants."""

    def __init__(
        self,
        url: str,
        client_id: str,
        client_secret: str,
        http: JsonClient,
        *,
        audience: str | Sequence[str],
        issuer: str | None = None,
        patient_claim: str = "patient",
        max_ttl: float = MAX_TTL,
        inactive_ttl: float = INACTIVE_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = url
        self._authorization = basic_auth(client_id, client_secret)
        self._http = http
        named = [audience] if isinstance(audience, str) else list(audience)
        self._audiences = frozenset(one.rstrip("/") for one in named)
        self._audience = named[0].rstrip("/")  # named in errors
        self._issuer = issuer
        self._patient_claim = patient_claim
        self._max_ttl = max_ttl
        self._inactive_ttl = inactive_ttl
        self._clock = clock
        self._refused: OrderedDict[bytes, tuple[float, str]] = OrderedDict()
        self._running: dict[bytes, asyncio.Task[tuple[Claims, float]]] = {}
        #: Introspection requests sent (for tests and metrics).
        self.requests = 0

    async def verify(self, token: str, digest: bytes) -> tuple[Claims, float]:
        """The token's claims and until when they may be cached; ``InvalidToken`` when it is not active."""
        refused = self._refused.get(digest)
        if refused is not None:
            if self._clock() < refused[0]:
                raise InvalidToken(refused[1])
            del self._refused[digest]
        task = self._running.get(digest)
        if task is None:
            task = self._running[digest] = asyncio.create_task(self._introspect(token, digest))
            task.add_done_callback(lambda done: self._done(digest, done))
        # Shielded: a client that goes away does not cancel the introspection others wait for.
        return await asyncio.shield(task)

    async def close(self) -> None:
        running, self._running = list(self._running.values()), {}
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def _introspect(self, token: str, digest: bytes) -> tuple[Claims, float]:
        self.requests += 1
        answer = await self._http.post_form(
            self._url,
            {"token": token, "token_type_hint": "access_token"},
            what=WHAT,
            headers={"Authorization": self._authorization},
        )
        if answer.status in (401, 403):
            log.error("the introspection endpoint refuses the bridge: check BRIDGE_AUTH_CLIENT_ID and _SECRET")
            raise unavailable(WHAT, self._url, f"HTTP {answer.status}: the bridge's client credentials are refused")
        if answer.status != 200 or not isinstance(answer.body, dict):
            problem = f"HTTP {answer.status}" if answer.status != 200 else "an answer that is not a JSON object"
            raise unavailable(WHAT, self._url, problem)
        try:
            return self._judge(answer.body)
        except InvalidToken as exc:
            self._remember_refusal(digest, exc.diagnostics)
            raise

    def _judge(self, body: dict[str, Any]) -> tuple[Claims, float]:
        if body.get("active") is not True:
            raise InvalidToken(INACTIVE)
        now = self._clock()
        expires = numeric_date(body, "exp")
        if expires is not None and expires <= now - LEEWAY:
            raise InvalidToken("the token has expired")
        not_before = numeric_date(body, "nbf")
        if not_before is not None and not_before > now + LEEWAY:
            raise InvalidToken("the token is not valid yet (nbf): check the clocks")
        issuer = body.get("iss")
        if self._issuer and issuer is not None and not (isinstance(issuer, str) and same_issuer(issuer, self._issuer)):
            raise InvalidToken(f"the token was not issued by {self._issuer}")
        if "aud" in body and not self._for_us(body["aud"]):
            raise InvalidToken(f"the token is not for this server: its audience (aud) does not name {self._audience}")
        token_type = body.get("token_type")
        if token_type is not None and str(token_type).lower() not in ("bearer", "access_token"):
            raise InvalidToken("the token is not a bearer access token (token_type)")
        if "cnf" in body:
            raise InvalidToken("the token is bound to a key (cnf) that the bridge cannot check; send a bearer token")
        claims = claims_from(body, patient_claim=self._patient_claim)
        return claims, min(expires if expires is not None else math.inf, now + self._max_ttl)

    def _for_us(self, audience: Any) -> bool:
        named = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
        return any(isinstance(one, str) and one.rstrip("/") in self._audiences for one in named)

    def _remember_refusal(self, digest: bytes, message: str) -> None:
        if self._inactive_ttl <= 0:
            return
        self._refused[digest] = (self._clock() + self._inactive_ttl, message)
        self._refused.move_to_end(digest)
        while len(self._refused) > INACTIVE_ENTRIES:
            self._refused.popitem(last=False)

    def _done(self, digest: bytes, task: asyncio.Task[tuple[Claims, float]]) -> None:
        if self._running.get(digest) is task:
            del self._running[digest]
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have gone
