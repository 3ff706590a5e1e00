"""Bearer tokens -> verified ``Claims``: the seam the web layer authorizes through.

(The verifiers themselves — JWT against the issuer's JWKS, RFC 7662 introspection, a cache by digest — are
being written; this module holds the interface they implement.)
"""

from __future__ import annotations

from typing import Protocol

from bridge.auth.grant import Claims
from bridge.errors import Unauthorized


class InvalidToken(Unauthorized):
    """A token that is malformed, forged, expired, not yet valid, for another issuer or audience, or unknown."""


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> Claims:
        """The token's claims, or ``InvalidToken`` saying what is wrong (never echoing the token)."""
        ...

    async def close(self) -> None: ...
