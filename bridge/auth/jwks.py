"""The authorization server's public keys (its JWKS), by key id, for the algorithms this bridge accepts.

Only asymmetric signatures are accepted (``ALGORITHMS``): RSA (PKCS#1 v1.5 and PSS) and ECDSA on the curve its
algorithm names. ``none`` and the HMAC algorithms are not, so a public key can never be used as a shared secret,
and a token's algorithm must fit its key's type (an ES256 token is never checked with an RSA key). Keys that are
not for signatures, symmetric, private, of an unknown type, or RSA under 2048 bits are left out of the set.

A key id the set does not hold makes it fetched again (the server may have rotated its keys), at most once per
``refetch_interval`` seconds however many tokens name unknown ids, and one fetch at a time; the set is also read
again every ``ttl`` seconds, so a key the server withdrew stops being accepted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError

from bridge.auth.claims import InvalidToken
from bridge.auth.fetched import Fetched
from bridge.auth.remote import JsonClient, unavailable

log = logging.getLogger(__name__)

#: Accepted algorithm -> (key type, curve).
ALGORITHMS: dict[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
}
MIN_RSA_BITS = 2048
#: Keys read from one set at most (a set is a handful; more is a mistake or an attack on our memory).
MAX_KEYS = 100
#: Seconds between two fetches for an unknown key id, at least.
REFETCH_INTERVAL = 30.0
#: Seconds the set is kept before it is read again.
JWKS_TTL = 600.0

WHAT = "the authorization server's key set"


class UnknownKey(InvalidToken):
    """No key of the set has the token's key id (after a refetch, if one was allowed)."""


class NoKeySet(Exception):
    """The issuer's metadata names no ``jwks_uri``: its tokens cannot be verified here, only introspected."""


@dataclass(frozen=True)
class PublicKey:
    kid: str | None
    kty: str
    crv: str | None
    #: The algorithm the set declares for the key (``alg``), if it does.
    alg: str | None
    #: The key as ``cryptography`` holds it.
    key: Any

    def algorithms(self) -> list[str]:
        """The accepted algorithms this key may verify (the one it declares, if it declares one)."""
        fitting = [name for name, (kty, crv) in ALGORITHMS.items() if kty == self.kty and crv in (None, self.crv)]
        return [name for name in fitting if self.alg in (None, name)]


def parse_jwks(document: Any) -> list[PublicKey]:
    """The usable signature keys of a JWKS document (RFC 7517 5); ``ValueError`` if it is not one."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('not a JWK set (an object with a "keys" list)')
    keys = []
    for jwk in document["keys"][:MAX_KEYS]:
        key = _public_key(jwk)
        if key is not None:
            keys.append(key)
    return keys


def _public_key(jwk: Any) -> PublicKey | None:
    if not isinstance(jwk, dict):
        return None
    kid = jwk.get("kid") if isinstance(jwk.get("kid"), str) else None
    kty, crv, alg = jwk.get("kty"), jwk.get("crv"), jwk.get("alg")
    if jwk.get("use", "sig") != "sig" or ("key_ops" in jwk and "verify" not in (jwk["key_ops"] or ())):
        return None  # an encryption key
    if "d" in jwk:
        log.error("the key set holds a private key (kid %r): left out; the authorization server leaks it", kid)
        return None
    if kty not in ("RSA", "EC") or (alg is not None and alg not in ALGORITHMS):
        return None  # symmetric ("oct"), or for an algorithm not accepted here
    try:
        key = RSAAlgorithm.from_jwk(jwk) if kty == "RSA" else ECAlgorithm.from_jwk(jwk)
    except (InvalidKeyError, ValueError, TypeError, KeyError) as exc:
        log.warning("key %r of the key set is left out: %s", kid, exc)
        return None
    if kty == "RSA" and key.key_size < MIN_RSA_BITS:
        log.warning("key %r of the key set is left out: RSA under %d bits", kid, MIN_RSA_BITS)
        return None
    found = PublicKey(kid, kty, crv if isinstance(crv, str) else None, alg, key)
    return found if found.algorithms() else None


def pick(keys: list[PublicKey], kid: str | None, alg: str) -> PublicKey | None:
    """The key to check a token with ``kid`` and ``alg``; None if the set has none by that id (or, for a token
    naming no key, none that fits). ``InvalidToken`` when a key has the id but not the algorithm's type."""
    if kid is None:
        fitting = [key for key in keys if alg in key.algorithms()]
        if len(fitting) > 1:
            raise InvalidToken("the token names no key (kid) and the authorization server publishes several")
        return fitting[0] if fitting else None
    named = [key for key in keys if key.kid == kid]
    for key in named:
        if alg in key.algorithms():
            return key
    if named:
        raise InvalidToken(f"the token's algorithm ({alg}) does not fit the key it names (its type, or its alg)")
    return None


class KeySet:
    """The keys at one JWKS URL (given, or from the issuer's metadata), fetched when needed."""

    def __init__(
        self,
        url: Callable[[], Awaitable[str | None]],
        http: JsonClient,
        *,
        clock: Callable[[], float] = time.time,
        ttl: float = JWKS_TTL,
        refetch_interval: float = REFETCH_INTERVAL,
    ) -> None:
        self._url = url
        self._http = http
        self._ttl = ttl
        self._refetch_interval = refetch_interval
        self._keys: Fetched[list[PublicKey]] = Fetched(self._fetch, clock=clock)

    @property
    def fetches(self) -> int:
        return self._keys.fetches

    async def key(self, kid: str | None, alg: str) -> PublicKey:
        """The key a token names; ``UnknownKey`` if the set lacks it even when fetched again (if allowed now)."""
        found = pick(await self._keys.get(), kid, alg)
        if found is None:
            found = pick(await self._keys.refetch(unless_within=self._refetch_interval), kid, alg)
        if found is None:
            raise UnknownKey("the token is signed with a key the authorization server does not publish (unknown kid)")
        return found

    async def close(self) -> None:
        await self._keys.close()

    async def _fetch(self) -> tuple[list[PublicKey], float]:
        url = await self._url()
        if url is None:
            raise NoKeySet
        answer = await self._http.get(url, what=WHAT)
        if answer.status != 200:
            raise unavailable(WHAT, url, f"HTTP {answer.status}")
        try:
            keys = parse_jwks(answer.body)
        except ValueError as exc:
            raise unavailable(WHAT, url, str(exc)) from None
        if not keys:
            raise unavailable(WHAT, url, "no key in the set is usable (RSA or EC signature keys)")
        log.info("key set read: %d keys (%s)", len(keys), ", ".join(str(key.kid) for key in keys))
        return keys, self._ttl
