"""A token's patient context -> the identifiers of that Patient, read from the clinical FHIR server.

A SMART token's ``patient`` is a Patient id in the clinical FHIR server's namespace (BRIDGE_CLINICAL_FHIR_URL), not
a PACS PatientID. ``ClinicalPatients.identifiers`` reads ``Patient/{id}`` there with the bridge's own access token
(the client_credentials grant, BRIDGE_AUTH_CLIENT_ID/_SECRET, at the token endpoint of BRIDGE_AUTH_ISSUER's
metadata, else of the clinical server's smart-configuration) and gives its identifiers as (system, value) pairs;
which of them is the PACS's PatientID is the caller's to decide. Identifiers marked ``use: old`` are left out: an
MRN that was reassigned would name another person's studies.

A Patient that does not exist (404, 410) has no identifiers: its token sees nothing. Answers, both kinds, are kept
``ttl`` seconds (5 min), for ``max_entries`` patients; a lookup under way is shared by concurrent requests. Any
other failure is an ``AuthServerUnavailable`` (503), never an empty answer that would read as "no studies".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from bridge.auth.claims import FHIR_ID
from bridge.auth.fetched import Fetched
from bridge.auth.issuer import IssuerMetadata, http_url
from bridge.auth.remote import JsonClient, basic_auth, unavailable
from bridge.settings import Settings

log = logging.getLogger(__name__)

#: Seconds a Patient's identifiers (or its absence) are relied on, and how many Patients are remembered.
PATIENT_TTL = 300.0
PATIENT_ENTRIES = 10_000
#: What the bridge asks for its own token: reading Patients is all it does with it.
SERVICE_SCOPE = "system/Patient.rs"
#: Seconds before its expiry the bridge's own token is renewed (a request must not reach the server with a token
#: that expires on the way).
EXPIRY_MARGIN = 30.0
#: The largest Patient read (a Patient may carry photos).
MAX_PATIENT_BYTES = 8 * 1024 * 1024

WHAT = "the clinical FHIR server"
TOKEN_WHAT = "the authorization server's token endpoint"

Identifiers = list[tuple[str | None, str]]


class ClientCredentials:
    """The bridge's own access token from the client_credentials grant (RFC 6749 4.4, client_secret_basic),
    kept until shortly before it expires."""

    def __init__(
        self,
        token_url: Callable[[], Awaitable[str | None]],
        client_id: str,
        client_secret: str,
        http: JsonClient,
        *,
        scope: str = SERVICE_SCOPE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._token_url = token_url
        self._authorization = basic_auth(client_id, client_secret)
        self._http = http
        self._scope = scope
        self._token: Fetched[str] = Fetched(self._fetch, clock=clock, keep_stale=False)

    @property
    def fetches(self) -> int:
        return self._token.fetches

    async def token(self) -> str:
        return await self._token.get()

    def refused(self) -> None:
        """The token was refused (revoked, or expired early): the next ``token`` asks for a new one."""
        self._token.invalidate()

    async def close(self) -> None:
        await self._token.close()

    async def _fetch(self) -> tuple[str, float]:
        url = await self._token_url()
        if url is None:
            raise unavailable(TOKEN_WHAT, "", "no token_endpoint in the metadata")
        form = {"grant_type": "client_credentials", "scope": self._scope}
        answer = await self._http.post_form(url, form, what=TOKEN_WHAT, headers={"Authorization": self._authorization})
        if answer.status in (400, 401, 403):
            error = answer.body.get("error") if isinstance(answer.body, dict) else None
            log.error(
                "the token endpoint refuses the bridge (HTTP %s, %s): check BRIDGE_AUTH_CLIENT_ID and _SECRET, and "
                "that the client may have %s by the client_credentials grant",
                answer.status,
                error if isinstance(error, str) and error.isidentifier() else "no error code",
                self._scope,
            )
        body = answer.body if answer.status == 200 and isinstance(answer.body, dict) else {}
        token, lifetime = body.get("access_token"), body.get("expires_in", PATIENT_TTL)
        if not (isinstance(token, str) and token) or str(body.get("token_type", "bearer")).lower() != "bearer":
            raise unavailable(TOKEN_WHAT, url, f"HTTP {answer.status}, no bearer access_token")
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float):
            lifetime = PATIENT_TTL
        return token, max(0.0, float(lifetime) - EXPIRY_MARGIN)


class ClinicalPatients:
    """Patient id -> the Patient's identifiers, from the clinical FHIR server, cached."""

    def __init__(
        self,
        base_url: str,
        http: JsonClient,
        credentials: ClientCredentials | None = None,
        *,
        ttl: float = PATIENT_TTL,
        max_entries: int = PATIENT_ENTRIES,
        clock: Callable[[], float] = time.time,
        owned: tuple[IssuerMetadata | Fetched[str | None], ...] = (),
    ) -> None:
        self._base = base_url.rstrip("/")
        self._http = http
        self._credentials = credentials
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._owned = owned
        self._known: OrderedDict[str, tuple[float, Identifiers]] = OrderedDict()
        self._running: dict[str, asyncio.Task[Identifiers]] = {}
        #: Patient reads sent (for tests and metrics).
        self.requests = 0

    async def identifiers(self, patient_id: str) -> Identifiers:
        """The (system, value) identifiers of ``Patient/{patient_id}``; none if there is no such Patient (or the id
        is not a FHIR id). ``AuthServerUnavailable`` if the clinical server (or the token endpoint) fails."""
        if not FHIR_ID.fullmatch(patient_id):
            return []
        known = self._known.get(patient_id)
        if known is not None:
            if self._clock() < known[0]:
                self._known.move_to_end(patient_id)
                return list(known[1])
            del self._known[patient_id]
        task = self._running.get(patient_id)
        if task is None:
            task = self._running[patient_id] = asyncio.create_task(self._read(patient_id))
            task.add_done_callback(lambda done: self._done(patient_id, done))
        # Shielded: a client that goes away does not cancel the read others wait for.
        return list(await asyncio.shield(task))

    async def close(self) -> None:
        running, self._running = list(self._running.values()), {}
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if self._credentials is not None:
            await self._credentials.close()
        for part in self._owned:
            await part.close()
        await self._http.close()

    async def _read(self, patient_id: str) -> Identifiers:
        url = f"{self._base}/Patient/{quote(patient_id, safe='')}"
        answer = await self._get(url)
        if answer.status == 401 and self._credentials is not None:
            self._credentials.refused()  # revoked or expired early: one more try with a new token
            answer = await self._get(url)
        if answer.status in (404, 410):
            found: Identifiers = []
        elif answer.status == 200:
            found = _identifiers(answer.body, patient_id, url)
        else:
            if answer.status in (401, 403):
                log.error("the clinical FHIR server refuses the bridge's token (HTTP %s): it needs %s for its client",
                          answer.status, SERVICE_SCOPE)  # fmt: skip
            raise unavailable(WHAT, url, f"HTTP {answer.status}")
        self._known[patient_id] = (self._clock() + self._ttl, found)
        self._known.move_to_end(patient_id)
        while len(self._known) > self._max_entries:
            self._known.popitem(last=False)
        return found

    async def _get(self, url: str) -> Any:
        headers = {"Accept": "application/fhir+json"}
        if self._credentials is not None:
            headers["Authorization"] = f"Bearer {await self._credentials.token()}"
        self.requests += 1
        return await self._http.get(url, what=WHAT, headers=headers)

    def _done(self, patient_id: str, task: asyncio.Task[Identifiers]) -> None:
        if self._running.get(patient_id) is task:
            del self._running[patient_id]
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have gone


def _identifiers(body: Any, patient_id: str, url: str) -> Identifiers:
    if not isinstance(body, dict) or body.get("resourceType") != "Patient":
        raise unavailable(WHAT, url, "an answer that is not a Patient")
    if body.get("id") not in (None, patient_id):
        raise unavailable(WHAT, url, "an answer that is another Patient")
    found: Identifiers = []
    for identifier in body.get("identifier") or []:
        if not isinstance(identifier, dict) or identifier.get("use") == "old":
            continue
        system, value = identifier.get("system"), identifier.get("value")
        if isinstance(value, str) and value and (system is None or isinstance(system, str)):
            found.append((system or None, value))
    return found


def clinical_patients(
    settings: Settings, *, clock: Callable[[], float] = time.time, timeout: float = 5.0
) -> ClinicalPatients | None:
    """The Patient lookup the settings ask for: None without BRIDGE_CLINICAL_FHIR_URL. With client credentials
    (BRIDGE_AUTH_CLIENT_ID/_SECRET) the bridge reads with its own token; without, it reads unauthenticated."""
    if not settings.clinical_fhir_url:
        return None
    http = JsonClient(timeout=timeout, max_bytes=MAX_PATIENT_BYTES)
    if not (settings.auth_client_id and settings.auth_client_secret):
        return ClinicalPatients(settings.clinical_fhir_url, http, clock=clock)
    owned: tuple[IssuerMetadata | Fetched[str | None], ...]
    if settings.auth_issuer:
        issuer = IssuerMetadata(settings.auth_issuer, http, clock=clock)
        owned = (issuer,)

        async def token_url() -> str | None:
            return await issuer.endpoint("token_endpoint")

    else:
        # The clinical server's own smart-configuration names its authorization server's token endpoint.
        configuration_url = f"{settings.clinical_fhir_url}/.well-known/smart-configuration"

        async def read_configuration() -> tuple[str | None, float]:
            answer = await http.get(configuration_url, what=WHAT)
            body = answer.body if answer.status == 200 and isinstance(answer.body, dict) else {}
            if (url := http_url(body.get("token_endpoint"))) is None:
                raise unavailable(WHAT, configuration_url, f"HTTP {answer.status}, no token_endpoint")
            return url, 3600.0

        endpoint: Fetched[str | None] = Fetched(read_configuration, clock=clock)
        owned = (endpoint,)
        token_url = endpoint.get
    credentials = ClientCredentials(
        token_url, settings.auth_client_id, settings.auth_client_secret.get_secret_value(), http, clock=clock
    )
    return ClinicalPatients(settings.clinical_fhir_url, http, credentials, clock=clock, owned=owned)
