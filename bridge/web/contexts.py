"""The application's resources, each opened before ``yield`` and closed after it (aiohttp ``cleanup_ctx``):
the PACS source, the study cache, and the scheduled refresher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from bridge.cache.backends import CacheBackend, MemoryBackend, RedisBackend
from bridge.cache.freshness import Policy
from bridge.cache.refresh import Refresher
from bridge.cache.service import StudyCache
from bridge.mapping import tags
from bridge.mapping.dicomjson import uid, unsigned
from bridge.qido.factory import open_source
from bridge.qido.folder import FolderQidoSource
from bridge.settings import Settings
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


async def refresher(app: web.Application) -> AsyncIterator[None]:
    """The scheduled refresh (BRIDGE_REFRESH_INTERVAL > 0), cancelled and awaited at shutdown."""
    settings = app[SETTINGS]
    if not settings.refresh_interval:
        yield
        return
    schedule = Refresher(app[CACHE], app[SOURCE], settings.refresh_interval, settings.refresh_prewarm_days)
    task = asyncio.create_task(schedule.run(), name="cache-refresh")
    log.info("scheduled refresh every %g s", settings.refresh_interval)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


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
