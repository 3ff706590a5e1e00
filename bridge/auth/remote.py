"""JSON over HTTP with the authorization server and the clinical FHIR server: the shell of ``bridge.auth``.

One ``JsonClient`` per owner (the token verifier, the clinical Patient lookup), each with one aiohttp session
whose requests are bounded in time and in size. Every failure to get an answer (refused, reset, timed out, too
large, not JSON) is an ``AuthServerUnavailable`` (503 + Retry-After) naming the server's role; its address and
the cause go to the log, not to the client. The HTTP status of an answer is the caller's to judge.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlsplit, urlunsplit

import aiohttp
import orjson

from bridge import __version__
from bridge.errors import AuthServerUnavailable

log = logging.getLogger(__name__)

#: Seconds one request to the authorization or clinical FHIR server may take, connection included: a token check
#: waits for it, so it is short.
TIMEOUT = 5.0
#: The largest answer read (metadata, a key set, an introspection answer, a Patient).
MAX_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Answer:
    status: int
    #: The parsed JSON body; None when the body is empty or not JSON (judged by the caller with ``status``).
    body: Any


def basic_auth(client_id: str, secret: str) -> str:
    """The ``Authorization`` value of RFC 6749 2.3.1: id and secret form-encoded, then RFC 7617 Basic."""
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def redact(url: str) -> str:
    """The URL without userinfo and query, for the log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class JsonClient:
    """GET and form POST for JSON answers, through one session with a timeout and a size limit."""

    def __init__(self, *, timeout: float = TIMEOUT, max_bytes: int = MAX_BYTES) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._seconds = timeout
        self._max_bytes = max_bytes
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use, inside the event loop that will run it.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                headers={"User-Agent": f"dicomweb-fhir-bridge/{__version__}"},
                connector=aiohttp.TCPConnector(limit=32),
            )
        return self._session

    async def get(self, url: str, *, what: str, headers: Mapping[str, str] | None = None) -> Answer:
        return await self._request("GET", url, what=what, headers=headers)

    async def post_form(
        self, url: str, form: Mapping[str, str], *, what: str, headers: Mapping[str, str] | None = None
    ) -> Answer:
        return await self._request("POST", url, what=what, headers=headers, form=form)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: Mapping[str, str] | None,
        form: Mapping[str, str] | None = None,
    ) -> Answer:
        sent = {"Accept": "application/json", **(headers or {})}
        # A public document (metadata, a key set) may have moved; a request with credentials goes nowhere else.
        follow = method == "GET" and "Authorization" not in sent
        try:
            async with self._client().request(
                method,
                url,
                headers=sent,
                data=dict(form) if form is not None else None,
                allow_redirects=follow,
                max_redirects=3,
            ) as response:
                if (response.content_length or 0) > self._max_bytes:
                    raise _TooLarge
                body = await response.content.read(self._max_bytes + 1)
                if len(body) > self._max_bytes:
                    raise _TooLarge
                status = response.status
        except _TooLarge:
            raise unavailable(what, url, f"an answer larger than {self._max_bytes} bytes") from None
        except TimeoutError:
            raise unavailable(what, url, f"no answer within {self._seconds:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise unavailable(what, url, f"{type(exc).__name__}: {exc}") from None
        if not body.strip():
            return Answer(status, None)
        try:
            return Answer(status, orjson.loads(body))
        except orjson.JSONDecodeError:
            if 200 <= status < 300:
                raise unavailable(what, url, "an answer that is not JSON") from None
            return Answer(status, None)


class _TooLarge(Exception):
    pass


def unavailable(what: str, url: str, cause: str) -> AuthServerUnavailable:
    """The error for a server that gave no usable answer: its role for the client, its address in the log."""
    log.warning("%s (%s) is unavailable: %s", what, redact(url), cause)
    return AuthServerUnavailable(f"{what} is unavailable, so the request cannot be authorized now; retry later")
