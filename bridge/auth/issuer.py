"""The authorization server's metadata: its endpoints and key set, found under BRIDGE_AUTH_ISSUER.

``{issuer}/.well-known/openid-configuration`` (OpenID Connect Discovery) and
``{issuer}/.well-known/smart-configuration`` (SMART App Launch) are both read; either gives ``jwks_uri``,
``token_endpoint``, ``authorization_endpoint`` …, the OpenID one's fields win where both give one, and the SMART
one adds what only it says (its ``capabilities``, which apps read in the bridge's own smart-configuration). One
is enough. A document naming another ``issuer`` is refused (OpenID Connect Discovery 4.3): tokens would then be
checked against one issuer's keys and another's name. Kept for an hour; a failed refetch keeps what is held.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from bridge.auth.fetched import Fetched
from bridge.auth.remote import JsonClient, redact, unavailable
from bridge.errors import AuthServerUnavailable

log = logging.getLogger(__name__)

WELL_KNOWN = (".well-known/openid-configuration", ".well-known/smart-configuration")
#: Seconds the metadata is kept before it is read again.
METADATA_TTL = 3600.0

WHAT = "the authorization server's metadata"


def same_issuer(a: str, b: str) -> bool:
    """Whether two issuer identifiers name the same issuer: exactly, but for a trailing ``/`` (settings drop it,
    and some servers, Auth0 among them, put one in every token)."""
    return a.rstrip("/") == b.rstrip("/")


def http_url(value: Any) -> str | None:
    """``value`` if it is an absolute http(s) URL, else None (a metadata field that is not one is not used)."""
    if isinstance(value, str) and urlsplit(value).scheme in ("http", "https") and urlsplit(value).hostname:
        return value
    return None


class IssuerMetadata:
    """The metadata document of one issuer, fetched once and shared."""

    def __init__(
        self, issuer: str, http: JsonClient, *, clock: Callable[[], float] = time.time, ttl: float = METADATA_TTL
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self._http = http
        self._ttl = ttl
        self._document: Fetched[dict[str, Any]] = Fetched(self._fetch, clock=clock)

    async def get(self) -> dict[str, Any]:
        """The metadata document (``AuthServerUnavailable`` if it cannot be read and none is held)."""
        return await self._document.get()

    async def endpoint(self, name: str) -> str | None:
        """An endpoint the metadata gives (``jwks_uri``, ``token_endpoint`` …), if it gives it as an http(s) URL."""
        return http_url((await self.get()).get(name))

    async def close(self) -> None:
        await self._document.close()

    async def _fetch(self) -> tuple[dict[str, Any], float]:
        documents: list[dict[str, Any]] = []
        tried = []
        for path in WELL_KNOWN:
            url = f"{self.issuer}/{path}"
            try:
                answer = await self._http.get(url, what=WHAT)
            except AuthServerUnavailable:
                if documents:
                    continue  # the OpenID document suffices
                raise
            if answer.status != 200 or not isinstance(answer.body, dict):
                tried.append(f"{redact(url)}: HTTP {answer.status}")
                continue
            named = answer.body.get("issuer")
            if named is not None and not (isinstance(named, str) and same_issuer(named, self.issuer)):
                raise unavailable(WHAT, url, "the document names another issuer than BRIDGE_AUTH_ISSUER")
            documents.append(answer.body)
        if not documents:
            raise unavailable(WHAT, self.issuer, "no metadata document (" + "; ".join(tried) + ")")
        # The OpenID document's fields first; the SMART one adds what only it has (its capabilities).
        merged: dict[str, Any] = {}
        for document in reversed(documents):
            merged.update(document)
        return merged, self._ttl
