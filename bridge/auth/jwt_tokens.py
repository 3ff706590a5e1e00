"""JWT access tokens (RFC 9068 and the like) verified with PyJWT against the authorization server's key set.

Checked, in this order: the header parses; its ``alg`` is one of ``jwks.ALGORITHMS`` (``none`` and HS* never);
the key its ``kid`` names is published and fits the algorithm; the signature; ``exp`` present and not past,
``nbf`` and ``iat`` not in the future, each within ``leeway`` seconds of clock skew; ``iss`` is the configured
issuer (when one is configured); ``aud`` names this server; and the token is a bearer token (no ``cnf``
binding, which the bridge could not check).
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import jwt
from jwt.exceptions import (
    DecodeError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    PyJWTError,
)

from bridge.auth.claims import InvalidToken, claims_from, numeric_date
from bridge.auth.grant import Claims
from bridge.auth.jwks import ALGORITHMS, KeySet

#: Seconds of clock skew allowed between the authorization server and the bridge.
LEEWAY = 30.0

_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_ALG_NAME = re.compile(r"[A-Za-z0-9+-]{1,16}")


def looks_like_jwt(token: str) -> bool:
    """Whether a token has a JWS's compact shape: three base64url parts (the last, the signature, may be empty)."""
    return _JWT.fullmatch(token) is not None


class JwtVerifier:
    """Verifies JWT access tokens with the keys of one ``KeySet``."""

    def __init__(
        self,
        keys: KeySet,
        *,
        audience: str | Sequence[str],
        issuer: str | None = None,
        patient_claim: str = "patient",
        leeway: float = LEEWAY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        # A trailing "/" is not told apart (settings drop it; some servers write it). Several: any of them.
        named = [audience] if isinstance(audience, str) else list(audience)
        self._audiences = [form for one in named for form in (one.rstrip("/"), one.rstrip("/") + "/")]
        self._issuers = {issuer.rstrip("/"), issuer.rstrip("/") + "/"} if issuer else None
        self._issuer = issuer
        self._patient_claim = patient_claim
        self._leeway = leeway
        self._clock = clock
        #: Signatures checked (a cached token costs none).
        self.signature_checks = 0

    async def verify(self, token: str) -> tuple[Claims, float]:
        """The token's claims and until when they may be cached (its ``exp``); ``InvalidToken`` saying why not."""
        header = _header(token)
        alg = _algorithm(header)
        if "crit" in header:
            raise InvalidToken("the token has critical header parameters (crit), which this server does not support")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("the token is malformed: its key id (kid) is not a string")
        key = await self._keys.key(kid, alg)
        self.signature_checks += 1
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=key.algorithms(),
                audience=self._audiences,
                issuer=self._issuers,
                # The times are checked below, on the clock the caches keep too.
                options={"require": ["exp"], "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except PyJWTError as exc:
            raise InvalidToken(self._reason(exc)) from None
        now = self._clock()
        expires = numeric_date(payload, "exp")
        if expires is None:
            raise InvalidToken("the token has no exp claim")
        if expires <= now - self._leeway:
            raise InvalidToken("the token has expired")
        not_before = numeric_date(payload, "nbf")
        if not_before is not None and not_before > now + self._leeway:
            raise InvalidToken("the token is not valid yet (nbf): check the clocks")
        issued = numeric_date(payload, "iat")
        if issued is not None and issued > now + self._leeway:
            raise InvalidToken("the token was issued in the future (iat): check the clocks")
        if "cnf" in payload:
            raise InvalidToken("the token is bound to a key (cnf) that the bridge cannot check; send a bearer token")
        return claims_from(payload, patient_claim=self._patient_claim), expires

    def _reason(self, exc: PyJWTError) -> str:
        # PyJWT's messages are not passed on: said here, they cannot carry a value from the token.
        if isinstance(exc, MissingRequiredClaimError):
            return f"the token has no {exc.claim} claim"
        if isinstance(exc, InvalidAudienceError):
            return f"the token is not for this server: its audience (aud) does not name {self._audiences[0]}"
        if isinstance(exc, InvalidIssuerError):
            return f"the token was not issued by {self._issuer}"
        if isinstance(exc, InvalidSignatureError):
            return "the token's signature does not verify"
        if isinstance(exc, DecodeError):
            return "the token is malformed: not a signed JWT with a JSON object as its payload"
        return f"the token is not valid ({type(exc).__name__})"


def _header(token: str) -> dict[str, Any]:
    """The JOSE header, read to choose the key (PyJWT reads it again, and checks it, when it verifies)."""
    segment = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise InvalidToken("the token is malformed: its header is not a base64url-encoded JSON object")
    return header


def _algorithm(header: dict[str, Any]) -> str:
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise InvalidToken("the token is malformed: its header has no algorithm (alg)")
    if alg in ALGORITHMS:
        return alg
    accepted = ", ".join(ALGORITHMS)
    if alg.lower() == "none":
        raise InvalidToken(f"the token is not signed (alg none); accepted algorithms: {accepted}")
    if alg.upper().startswith("HS"):
        raise InvalidToken(
            f"the token is signed with a shared secret ({alg if _ALG_NAME.fullmatch(alg) else 'HMAC'}); only the "
            f"authorization server's public keys are accepted: {accepted}"
        )
    named = f" ({alg})" if _ALG_NAME.fullmatch(alg) else ""
    raise InvalidToken(f"the token's algorithm{named} is not accepted; accepted algorithms: {accepted}")
