"""The shared cache with a real Redis (Debian's redis-server, started by the suite) and the real Orthanc."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from bridge.cache.backends import RedisBackend, study_key
from bridge.cache.freshness import Entry, Policy
from bridge.cache.refresh import Refresher
from bridge.cache.service import StudyCache
from bridge.errors import Conflict, NotFound
from bridge.mapping.dicomjson import DicomJson
from bridge.mapping.imagingstudy import MappingOptions
from bridge.qido.http import HttpQidoSource
from bridge.qido.memory import MemoryQidoSource
from bridge.qido.source import Filters
from tests.conftest import orthanc_settings, start_client
from tests.support.dicomgen import InstanceSpec, encode, simple_study
from tests.support.fhircheck import validate
from tests.support.orthanc import OrthancServer
from tests.support.process import bridge_env
from tests.support.waiting import eventually
from tests.test_cache import STUDY, UNKNOWN, Clock, el, pacs

#: The refresh lock's key in Redis.
LOCK_KEY = "imaging-bridge:lock:refresh"


def dead_pacs_url() -> str:
    """A DICOMweb URL on a loopback port nothing listens on: a PACS that is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/dicom-web"


async def test_two_replicas_share_one_cache(orthanc: OrthancServer, redis_url: str) -> None:
    spec = simple_study(series=2, instances=2, patient_id="PAT-REDIS")
    orthanc.upload_many(encode(spec))
    reader = await start_client(orthanc_settings(orthanc, cache_url=redis_url))
    stranded = await start_client(orthanc_settings(orthanc, cache_url=redis_url, qido_url=dead_pacs_url()))
    try:
        first = await reader.get(f"/fhir/ImagingStudy/{spec.uid}")
        assert (first.status, first.headers["X-Cache"]) == (200, "MISS")
        served = await stranded.get(f"/fhir/ImagingStudy/{spec.uid}")
        assert (served.status, served.headers["X-Cache"]) == (200, "HIT")
        assert served.headers["ETag"] == first.headers["ETag"]
        resource = await served.json()
        validate(resource)
        assert resource["numberOfInstances"] == 4
        missing = await stranded.get("/fhir/ImagingStudy/1.2.3.4.5.6.7")
        assert missing.status == 503  # not cached, and its PACS is down
    finally:
        await reader.close()
        await stranded.close()


async def test_the_change_signal_sees_an_instance_added_in_the_pacs(orthanc: OrthancServer, redis_url: str) -> None:
    spec = simple_study(series=1, instances=2, patient_id="PAT-SIGNAL")
    orthanc.upload_many(encode(spec))
    source = HttpQidoSource(orthanc.dicomweb_url, username=orthanc.username, password=orthanc.password)
    backend = RedisBackend(redis_url)
    cache = StudyCache(backend, source, MappingOptions(), Policy())
    try:
        stored = (await cache.read(spec.uid)).entry
        assert not await cache.revalidate(spec.uid, stored)  # nothing moved: one study query, no re-read
        spec.series[0].instances.append(InstanceSpec(number=3))
        orthanc.upload_many(encode(spec))  # the same two again, and the new one
        assert await cache.revalidate(spec.uid, stored)
        read = await cache.read(spec.uid)
        assert orjson.loads(read.entry.body)["numberOfInstances"] == 3
        assert read.entry.version != stored.version
    finally:
        await cache.close()
        await backend.close()
        await source.close()


class GatedPacs(MemoryQidoSource):
    """Study queries wait until the test lets them through, so a refresher holds its lock as long as needed."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()

    async def search_studies(self, filters: Filters, fields: Sequence[str]) -> list[DicomJson]:
        self.asked.set()
        await self.answer.wait()
        return await super().search_studies(filters, fields)


async def test_one_replica_refreshes_at_a_time_and_a_crashed_holder_expires(redis_url: str) -> None:
    backends = [RedisBackend(redis_url), RedisBackend(redis_url)]
    source = GatedPacs()
    caches = [StudyCache(b, source, MappingOptions(), Policy()) for b in backends]
    refreshers = [Refresher(c, source, interval=30, prewarm_days=1) for c in caches]
    redis = Redis.from_url(redis_url)
    runs = [asyncio.ensure_future(r.run_once()) for r in refreshers]
    try:
        await asyncio.wait_for(source.asked.wait(), timeout=5)  # one holds the lock, inside its refresh
        done, _ = await asyncio.wait(runs, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert [run.result() for run in done] == [None]  # the other found the lock taken, and ran nothing
        source.answer.set()
        results = await asyncio.gather(*runs)
        assert sorted(r is None for r in results) == [False, True]  # exactly one ran
        # A refresher that died holding the lock: the lock expires by itself.
        crashed = Redis.from_url(redis_url)
        assert await crashed.lock(LOCK_KEY, timeout=0.3).acquire(blocking=False)
        await crashed.aclose()  # and never releases it
        assert await refreshers[0].run_once() is None

        async def expired() -> bool:
            return not await redis.exists(LOCK_KEY)

        await eventually(expired, what="the dead holder's lock expired")
        assert await refreshers[0].run_once() is not None
    finally:
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        await redis.aclose()
        for cache, backend in zip(caches, backends, strict=True):
            await cache.close()
            await backend.close()


async def test_an_unreachable_redis_is_a_miss_not_an_error() -> None:
    backend = RedisBackend("redis://127.0.0.1:1/0")
    try:
        assert await backend.get("study::1.2.3") is None
        assert not await backend.put("study::1.2.3", Entry(b"{}", "v", 0.0, 0.0), retention=10)  # logged, not raised
    finally:
        await backend.close()


def test_the_refresh_command_warms_the_shared_cache(orthanc: OrthancServer, redis_url: str, tmp_path: Path) -> None:
    spec = simple_study(series=1, instances=2, patient_id="PAT-CLI-REFRESH")
    orthanc.upload_many(encode(spec))
    env = bridge_env(BRIDGE_QIDO_URL=orthanc.dicomweb_url, BRIDGE_PACS_USERNAME=orthanc.username,
                     BRIDGE_PACS_PASSWORD=orthanc.password, BRIDGE_CACHE_URL=redis_url)  # fmt: skip

    def refresh(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bridge", "refresh", *args], env={**env, **extra},
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip

    warmed = refresh("--patient", "PAT-CLI-REFRESH")
    assert warmed.returncode == 0, warmed.stderr
    assert "checked 0, changed 0, fetched 1, failed 0" in warmed.stderr
    assert "1/1" in warmed.stderr  # the progress bar
    due = refresh("--due")
    assert due.returncode == 0, due.stderr
    assert "fetched 0, failed 0" in due.stderr
    down = refresh("--patient", "PAT-CLI-REFRESH", BRIDGE_QIDO_URL=dead_pacs_url())
    assert down.returncode == 1
    assert "cannot connect to the PACS" in down.stderr
    no_cache = refresh("--patient", "PAT-CLI-REFRESH", BRIDGE_CACHE_URL="redis://127.0.0.1:1/0")
    assert no_cache.returncode == 1  # nothing could be kept: not a success
    assert "cache cannot be reached" in no_cache.stderr


async def test_an_unreadable_entry_is_a_miss(redis_url: str) -> None:
    raw = Redis.from_url(redis_url)
    await raw.set("imaging-bridge:study::1.2.3", b"\x00\x00\x00\x09not json!body")
    await raw.aclose()
    backend = RedisBackend(redis_url)
    try:
        assert await backend.get("study::1.2.3") is None
    finally:
        await backend.close()


async def test_replicas_agree_on_last_updated_even_reading_cold_at_once_and_after_eviction(redis_url: str) -> None:
    source, clocks = pacs(), [Clock(), Clock()]
    clocks[1].now += 7  # the second replica's clock differs: the shared first-seen record decides
    backends = [RedisBackend(redis_url), RedisBackend(redis_url)]
    caches = [
        StudyCache(b, source, MappingOptions(), Policy(), clock) for b, clock in zip(backends, clocks, strict=True)
    ]
    try:
        reads = await asyncio.gather(*(cache.read(STUDY, no_cache=True) for cache in caches))
        first, second = (read.entry for read in reads)
        assert (first.version, first.last_modified, first.body) == (second.version, second.last_modified, second.body)
        # The entry is evicted (Redis's maxmemory, or it expired); the content, read again later, is not new.
        raw = Redis.from_url(redis_url)
        await raw.delete("imaging-bridge:study::" + STUDY)
        await raw.aclose()
        clocks[0].now += 3600
        again = (await caches[0].read(STUDY)).entry
        assert (again.last_modified, again.body) == (first.last_modified, first.body)
        assert again.checked_at == clocks[0].now
    finally:
        for cache, backend in zip(caches, backends, strict=True):
            await cache.close()
            await backend.close()


async def test_replicas_share_remembered_404s_and_409s(redis_url: str) -> None:
    sources = [pacs(), pacs()]
    sources[0].studies.append({**sources[0].studies[0], "00100020": el("LO", "P2")})  # the first sees the UID shared
    backends = [RedisBackend(redis_url), RedisBackend(redis_url)]
    caches = [StudyCache(b, s, MappingOptions(), Policy()) for b, s in zip(backends, sources, strict=True)]
    try:
        with pytest.raises(NotFound) as missing:
            await caches[0].read(UNKNOWN)
        with pytest.raises(Conflict) as shared:
            await caches[0].read(STUDY)
        with pytest.raises(NotFound) as missing_too:
            await caches[1].read(UNKNOWN)
        with pytest.raises(Conflict) as shared_too:  # never the one-patient study the second's own PACS would give
            await caches[1].read(STUDY)
        assert (missing_too.value.diagnostics, shared_too.value.diagnostics) == (
            missing.value.diagnostics,
            shared.value.diagnostics,
        )
        assert sources[1].calls == []
        assert await backends[1].checked_at(study_key(UNKNOWN)) is None  # nothing for the refresh to re-validate
    finally:
        for cache, backend in zip(caches, backends, strict=True):
            await cache.close()
            await backend.close()


@pytest.mark.parametrize("signal_size", [10, 2000])  # a header within the first range read, and one beyond it
async def test_the_refresh_reads_an_entrys_header_not_its_body(redis_url: str, signal_size: int) -> None:
    backend = RedisBackend(redis_url)
    try:
        entry = Entry(b"x" * 3_000_000, "v1", 100.0, 12345.5, "s" * signal_size, body_r4=b"y" * 2_000_000)
        assert await backend.put("study::1.2.3", entry, retention=60)
        assert await backend.checked_at("study::1.2.3") == 12345.5
        assert await backend.checked_at("study::1.2.4") is None
        assert await backend.get("study::1.2.3") == entry
    finally:
        await backend.close()


async def test_the_refresh_lock_is_renewed_while_its_holder_lives(redis_url: str) -> None:
    holder, contender = RedisBackend(redis_url), RedisBackend(redis_url)
    try:
        async with holder.lock("refresh", ttl=0.3) as taken:
            assert taken
            for _ in range(4):  # three times the lock's expiry, and still held
                await asyncio.sleep(0.25)  # not a wait for something: time passing is what the renewal must survive
                async with contender.lock("refresh", ttl=0.3) as also:
                    assert not also
        async with contender.lock("refresh", ttl=0.3) as after:
            assert after  # released at the end
    finally:
        await holder.close()
        await contender.close()


async def test_the_shared_version_record_gives_content_that_changes_back_a_new_time(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    try:
        assert await backend.version_since("study::1.2.3", "v1", 100.0) == 100.0
        assert await backend.version_since("study::1.2.3", "v1", 150.0) == 100.0  # the same content: its time
        assert await backend.version_since("study::1.2.3", "v2", 200.0) == 200.0
        assert await backend.version_since("study::1.2.3", "v1", 300.0) == 300.0  # back to v1: a new time
    finally:
        await backend.close()
