"""Bearer tokens -> verified ``Claims``: the seam the web layer authorizes through.

``token_verifier(settings)`` gives the ``BearerVerifier`` of BRIDGE_AUTH=smart (None for ``none``). It refuses a
token that is too long or not a bearer token's characters before any other work, then answers from a cache
keyed by the token's SHA-256 digest (a warm request costs a hash), and otherwise sends the token to:

- ``jwt_tokens.JwtVerifier`` when it has a JWT's shape and a key set is configured (BRIDGE_AUTH_JWKS_URL, or
  the ``jwks_uri`` of BRIDGE_AUTH_ISSUER's metadata);
- ``introspection.Introspection`` (BRIDGE_AUTH_INTROSPECTION_URL) otherwise, or when the issuer publishes no key
  set.

Errors: ``InvalidToken`` (401, ``error="invalid_token"``) saying what is wrong; ``AuthServerUnavailable`` (503
with Retry-After) when the authorization server cannot be asked. The token itself is never stored, logged or
put in a message: the cache and the log know its digest only.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from bridge.auth.claims import InvalidToken
from bridge.auth.grant import Claims
from bridge.auth.introspection import Introspection
from bridge.auth.issuer import IssuerMetadata
from bridge.auth.jwks import KeySet, NoKeySet
from bridge.auth.jwt_tokens import JwtVerifier, looks_like_jwt
from bridge.auth.remote import TIMEOUT, JsonClient
from bridge.errors import AuthServerUnavailable, ConfigError
from bridge.settings import Settings

__all__ = ["BearerVerifier", "InvalidToken", "TokenCache", "TokenVerifier", "digest", "token_verifier"]

log = logging.getLogger(__name__)

#: The longest token read (characters); a JWT with a few dozen scopes is under 2 KiB.
MAX_TOKEN_LENGTH = 8192
#: Verified tokens remembered, and for how long at most (a JWT's until its ``exp``, within this).
CACHE_ENTRIES = 10_000
CACHE_MAX_TTL = 3600.0

#: RFC 6750 2.1 ``b64token``.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> Claims:
        """The token's claims, or ``InvalidToken`` saying what is wrong (never echoing the token)."""
        ...

    async def close(self) -> None: ...


def digest(token: str) -> bytes:
    """The SHA-256 of a token: what the cache keys by, and (its first bytes) how the log names a token."""
    return hashlib.sha256(token.encode()).digest()


class TokenCache:
    """Verified tokens' claims by digest, each until a time, the least recently used forgotten beyond a size."""

    def __init__(self, max_entries: int = CACHE_ENTRIES, *, clock: Callable[[], float] = time.time) -> None:
        self._entries: OrderedDict[bytes, tuple[float, Claims]] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock

    def get(self, key: bytes) -> Claims | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() >= entry[0]:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: bytes, claims: Claims, until: float) -> None:
        until = min(until, self._clock() + CACHE_MAX_TTL)
        if until <= self._clock() or self._max_entries <= 0:
            return
        self._entries[key] = (until, claims)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class BearerVerifier:
    """The ``TokenVerifier`` of BRIDGE_AUTH=smart; owns the HTTP session it asks the authorization server with."""

    def __init__(
        self,
        http: JsonClient,
        *,
        jwt: JwtVerifier | None = None,
        keys: KeySet | None = None,
        introspection: Introspection | None = None,
        issuer: IssuerMetadata | None = None,
        cache: TokenCache | None = None,
    ) -> None:
        if jwt is None and introspection is None:
            raise ValueError("a BearerVerifier needs a JWT verifier, introspection, or both")
        self._http = http
        self._jwt = jwt
        self._keys = keys
        self._introspection = introspection
        #: The issuer's metadata (endpoints, for the smart-configuration), if BRIDGE_AUTH_ISSUER is set.
        self.issuer = issuer
        self._cache = cache if cache is not None else TokenCache()
        #: Answers from the cache (for tests and metrics).
        self.cache_hits = 0

    @property
    def signature_checks(self) -> int:
        return self._jwt.signature_checks if self._jwt else 0

    @property
    def introspections(self) -> int:
        return self._introspection.requests if self._introspection else 0

    @property
    def jwks_fetches(self) -> int:
        return self._keys.fetches if self._keys else 0

    async def verify(self, token: str) -> Claims:
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken(f"the token is longer than {MAX_TOKEN_LENGTH} characters")
        if not _B64TOKEN.fullmatch(token):
            raise InvalidToken("the token is malformed: not a bearer token (RFC 6750 2.1)")
        key = digest(token)
        claims = self._cache.get(key)
        if claims is not None:
            self.cache_hits += 1
            return claims
        try:
            claims, until = await self._check(token, key)
        except InvalidToken as exc:
            log.debug("token sha256:%s… refused: %s", key[:6].hex(), exc.diagnostics)
            raise
        self._cache.put(key, claims, until)
        return claims

    async def _check(self, token: str, key: bytes) -> tuple[Claims, float]:
        if self._jwt is not None and looks_like_jwt(token):
            try:
                return await self._jwt.verify(token)
            except NoKeySet:
                if self._introspection is None:
                    log.error("BRIDGE_AUTH_ISSUER's metadata names no jwks_uri: set BRIDGE_AUTH_JWKS_URL")
                    raise AuthServerUnavailable(
                        "the authorization server publishes no key set to verify tokens with"
                    ) from None
        if self._introspection is not None:
            return await self._introspection.verify(token, key)
        raise InvalidToken("the token is not a JWT (three base64url parts), the only kind this server accepts")

    async def close(self) -> None:
        for part in (self._introspection, self._keys, self.issuer):
            if part is not None:
                await part.close()
        await self._http.close()


def token_verifier(
    settings: Settings, *, clock: Callable[[], float] = time.time, timeout: float = TIMEOUT
) -> BearerVerifier | None:
    """The verifier the settings ask for: None with BRIDGE_AUTH=none. ``ConfigError`` for settings that cannot
    verify a token (Settings checks them too; this holds for settings built otherwise)."""
    if settings.auth_mode == "none":
        return None
    audience = settings.audiences
    if not audience:
        raise ConfigError("BRIDGE_AUTH=smart needs BRIDGE_AUTH_AUDIENCE or BRIDGE_PUBLIC_URL")
    http = JsonClient(timeout=timeout)
    issuer = IssuerMetadata(settings.auth_issuer, http, clock=clock) if settings.auth_issuer else None
    keys = jwt = introspection = None
    if settings.auth_jwks_url or issuer is not None:
        jwks_url = settings.auth_jwks_url

        async def url() -> str | None:
            return jwks_url if jwks_url else await issuer.endpoint("jwks_uri")  # type: ignore[union-attr]

        keys = KeySet(url, http, clock=clock)
        jwt = JwtVerifier(
            keys, audience=audience, issuer=settings.auth_issuer, patient_claim=settings.auth_patient_claim, clock=clock
        )
    if settings.auth_introspection_url:
        if not (settings.auth_client_id and settings.auth_client_secret):
            raise ConfigError("BRIDGE_AUTH_INTROSPECTION_URL needs BRIDGE_AUTH_CLIENT_ID and BRIDGE_AUTH_CLIENT_SECRET")
        introspection = Introspection(
            settings.auth_introspection_url,
            settings.auth_client_id,
            settings.auth_client_secret.get_secret_value(),
            http,
            audience=audience,
            issuer=settings.auth_issuer,
            patient_claim=settings.auth_patient_claim,
            clock=clock,
        )
    if jwt is None and introspection is None:
        raise ConfigError("BRIDGE_AUTH=smart needs BRIDGE_AUTH_ISSUER, BRIDGE_AUTH_JWKS_URL or _INTROSPECTION_URL")
    return BearerVerifier(
        http, jwt=jwt, keys=keys, introspection=introspection, issuer=issuer, cache=TokenCache(clock=clock)
    )
