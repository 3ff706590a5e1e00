"""The application's resources, each opened before ``yield`` and closed after it (aiohttp ``cleanup_ctx``):
the PACS source, the study cache, and the scheduled refresher."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from bridge.aio import running
from bridge.auth.clinical import clinical_patients
from bridge.auth.compartment import Compartments, read_policy
from bridge.auth.discovery import smart_configuration
from bridge.auth.issuer import IssuerMetadata
from bridge.auth.tokens import TokenVerifier, token_verifier
from bridge.cache.backends import CacheBackend, MemoryBackend, RedisBackend
from bridge.cache.freshness import Policy
from bridge.cache.refresh import Refresher
from bridge.cache.service import StudyCache
from bridge.errors import ConfigError
from bridge.mapping import tags
from bridge.mapping.dicomjson import uid, unsigned
from bridge.qido.factory import open_source
from bridge.qido.folder import FolderQidoSource
from bridge.search.values import PatientRule
from bridge.settings import Settings
from bridge.web.authz import AUTHORIZER, Authorizer
from bridge.web.keys import CACHE, ENDPOINT, MAPPING, SETTINGS, SOURCE

log = logging.getLogger(__name__)


async def pacs_source(app: web.Application) -> AsyncIterator[None]:
    """The PACS (or folder) the studies come from."""
    source = await open_source(app[SETTINGS])
    log.info("PACS: %s", source.description)
    if not app[ENDPOINT]:
        log.warning("no WADO-RS address known (set BRIDGE_WADO_URL): studies are served without an Endpoint")
    app[SOURCE] = source
    try:
        if isinstance(source, FolderQidoSource):
            await _suggest_a_study(source)
        yield
    finally:
        await source.close()


async def study_cache(app: web.Application) -> AsyncIterator[None]:
    """The cache of synthesized studies, in this process or in Redis (BRIDGE_CACHE_URL)."""
    settings = app[SETTINGS]
    backend = open_backend(settings)
    cache = StudyCache(backend, app[SOURCE], app[MAPPING], cache_policy(settings))
    app[CACHE] = cache
    log.info("cache: %s, fresh for %g s", backend.description, settings.cache_ttl)
    try:
        yield
    finally:
        await cache.close()
        await backend.close()


#: The token verifier, when the caller gives one (tests); else one is made from the settings.
TOKEN_VERIFIER = web.AppKey("token_verifier", TokenVerifier)


class Discovery:
    """What ``/.well-known/smart-configuration`` and the CapabilityStatement say of authorization: built from the
    settings and the authorization server's metadata (read when first asked, and kept as the verifier keeps it)."""

    def __init__(self, settings: Settings, issuer: IssuerMetadata | None) -> None:
        self._settings = settings
        self._issuer = issuer

    async def configuration(self) -> dict[str, Any]:
        return smart_configuration(self._settings, await self._issuer.get() if self._issuer is not None else None)


DISCOVERY = web.AppKey("discovery", Discovery)


async def authorization(app: web.Application) -> AsyncIterator[None]:
    """BRIDGE_AUTH=smart: the token verifier, the patient compartments and the client policy."""
    settings = app[SETTINGS]
    given = app.get(TOKEN_VERIFIER)
    made = None if given is not None else token_verifier(settings)
    verifier = given or made
    if verifier is None:
        raise ConfigError("BRIDGE_AUTH=smart: no way to verify a token is configured")
    directory = clinical_patients(settings)
    systems = {*settings.issuer_systems.values(), *([settings.patient_id_system] if settings.patient_id_system else [])}
    compartments = Compartments(
        PatientRule(settings.patient_reference), systems, directory, own_system=settings.patient_id_system
    )
    policy = read_policy(settings.auth_client_policy) if settings.auth_client_policy else {}
    app[AUTHORIZER] = Authorizer(verifier, compartments, policy)
    app[DISCOVERY] = Discovery(settings, made.issuer if made is not None else None)
    try:
        yield
    finally:
        if made is not None:
            await made.close()
        if directory is not None:
            await directory.close()


async def refresher(app: web.Application) -> AsyncIterator[None]:
    """The scheduled refresh (BRIDGE_REFRESH_INTERVAL > 0), cancelled and awaited at shutdown."""
    settings = app[SETTINGS]
    if not settings.refresh_interval:
        yield
        return
    schedule = Refresher(app[CACHE], app[SOURCE], settings.refresh_interval, settings.refresh_prewarm_days)
    log.info("scheduled refresh every %g s", settings.refresh_interval)
    async with running(schedule.run(), "cache-refresh"):
        yield


def open_backend(settings: Settings) -> CacheBackend:
    if settings.cache_url is not None:
        return RedisBackend(settings.cache_url.get_secret_value())
    return MemoryBackend(settings.cache_max_bytes)


def cache_policy(settings: Settings) -> Policy:
    return Policy(
        ttl=settings.cache_ttl,
        stale_while_revalidate=settings.cache_stale_while_revalidate,
        stale_if_error=settings.cache_stale_if_error,
        min_reread=settings.cache_min_reread,
        negative_ttl=settings.cache_negative_ttl,
    )


async def _suggest_a_study(source: FolderQidoSource) -> None:
    """A folder's index is in memory already: tell a newcomer what there is to read."""
    studies = await source.search_studies({}, ())
    biggest = max(studies, key=lambda s: unsigned(s, tags.NUMBER_OF_STUDY_RELATED_INSTANCES) or 0, default={})
    if example := uid(biggest, tags.STUDY_INSTANCE_UID):
        log.info("%d studies in %s; try GET /fhir/ImagingStudy/%s", len(studies), source.folder, example)
