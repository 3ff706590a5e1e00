"""The read-through cache of synthesized studies.

A read consults the backend and the freshness rules (``bridge.cache.freshness``): fresh entries are served as
stored bytes (no mapping, no serialization), stale ones are served while one background read refreshes them,
and a PACS failure falls back to a stored entry within the stale-if-error window. Concurrent reads of the same
study share one PACS fetch (single flight), so fifty cold reads cost the PACS what one costs, and a forced read
(``no-cache``) reads the PACS only if the entry is older than the policy's ``min_reread``.

A read that ends in ``NotFound`` or ``Conflict`` is remembered as a negative entry in the study's place, for the
policy's ``negative_ttl``: it is answered again, status and diagnostics, without the PACS. It replaces any entry
the study had, since the PACS's latest answer is the one to give: a study now under two patients is never served
from a copy read before. A failing PACS (``UpstreamError``) is never remembered.

``meta.versionId`` is a hash of the content and ``meta.lastUpdated`` the time that content was first seen, so
both change exactly when the study does. Since when a study has had its content is a record of the backend, shared by
the replicas and kept longer than the entry: a study evicted, expired or read by two replicas at once keeps its
time, and content that changes back to an earlier version gets a new one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from enum import Enum
from typing import Any, NamedTuple

import orjson

from bridge.cache.backends import CacheBackend, Clock, study_key
from bridge.cache.freshness import (
    SERVE,
    Action,
    Entry,
    Policy,
    change_signal,
    content_version,
    decide,
    usable_on_error,
)
from bridge.errors import BridgeError, Conflict, DeadlineExceeded, NotFound, UpstreamError
from bridge.fhirversion import FhirVersion
from bridge.mapping import tags
from bridge.mapping.dicomjson import DicomJson, texts, uid, unsigned
from bridge.mapping.imagingstudy import MappingOptions
from bridge.qido.resilience import remaining
from bridge.qido.source import QidoSource
from bridge.render import both
from bridge.studies import check_study_id, read_study
from bridge.telemetry import STATS

log = logging.getLogger(__name__)


class Outcome(Enum):
    HIT = "hit"
    MISS = "miss"
    STALE = "stale"  # served stale while a background read refreshes it
    STALE_IF_ERROR = "stale-if-error"  # served stale because the PACS failed

    def __init__(self, label: str) -> None:
        #: The metrics label and the ``X-Cache`` response header: attributes, which a cached read reads without
        #: the Python calls that an Enum's ``value`` or hashing a member would cost.
        self.header = label.upper()
        self.label = label


#: A cached read's outcome, bound once (see ``freshness.SERVE``).
HIT = Outcome.HIT

for _outcome in Outcome:  # every outcome in the metrics from the start, at 0
    STATS.cache_reads[_outcome.label] += 0


class Read(NamedTuple):
    entry: Entry
    outcome: Outcome


class StudyCache:
    """Synthesized studies, read through the cache."""

    def __init__(
        self,
        backend: CacheBackend,
        source: QidoSource,
        options: MappingOptions,
        policy: Policy,
        clock: Clock = time.time,
    ) -> None:
        self.backend = backend
        self.policy = policy
        self._source = source
        self._options = options
        self._clock = clock
        self._inflight: dict[str, asyncio.Future[Entry]] = {}
        #: Studies read but not kept by the backend at their last read (the refresh counts them as failed).
        self.unstored: set[str] = set()

    def fresh(self, study_uid: str) -> Entry | None:
        """The study's entry if it is fresh and held in this process, found without waiting; None otherwise
        (then ``read``). Most reads of an in-process cache end here, spared the two awaits of ``read``."""
        stored = self.backend.held(study_key(study_uid))
        if stored is None or decide(stored, self._clock(), self.policy) is not SERVE:
            return None
        STATS.cache_reads[HIT.label] += 1
        return stored

    async def read(self, study_uid: str, *, no_cache: bool = False) -> Read:
        """The study as stored or freshly read; ``no_cache`` (``Cache-Control: no-cache``) forces a PACS read
        unless the stored entry is younger than ``min_reread``. Raises a remembered ``NotFound`` or ``Conflict``."""
        stored = await self.backend.get(study_key(study_uid))
        if stored is None:
            check_study_id(study_uid)  # a stored key was checked when it was stored
        now = self._clock()
        action = decide(stored, now, self.policy, no_cache=no_cache)
        if action is SERVE and stored is not None:
            STATS.cache_reads[HIT.label] += 1
            return Read(stored, HIT)
        if action is Action.REFUSE and stored is not None:
            STATS.cache_reads[HIT.label] += 1
            raise remembered(stored)
        if action is Action.SERVE_STALE and stored is not None:
            self._load_once(study_uid, stored)  # one refresh per study, however many stale reads
            STATS.cache_reads[Outcome.STALE.label] += 1
            return Read(stored, Outcome.STALE)
        try:
            entry = await self.fetch(study_uid, stored)
            STATS.cache_reads[Outcome.MISS.label] += 1
            return Read(entry, Outcome.MISS)
        except UpstreamError as exc:
            if usable_on_error(stored, now, self.policy) and stored is not None:
                log.warning("PACS failed (%s); serving the stored study %s", exc.diagnostics, study_uid)
                STATS.cache_reads[Outcome.STALE_IF_ERROR.label] += 1
                return Read(stored, Outcome.STALE_IF_ERROR)
            raise

    async def fetch(self, study_uid: str, previous: Entry | None) -> Entry:
        """Read the study from the PACS and store it; concurrent calls for one study share one read."""
        pending = self._load_once(study_uid, previous)
        # shield: a client that gives up must not cancel the read the others are waiting for; and each waiter
        # keeps its own deadline, whoever started the read.
        try:
            async with asyncio.timeout(remaining()):
                return await asyncio.shield(pending)
        except TimeoutError:
            raise DeadlineExceeded(f"the request's deadline passed while study {study_uid} was read") from None

    async def revalidate(self, study_uid: str, stored: Entry) -> bool:
        """One cheap study-level query; re-read the study only if its change signal moved. True if it changed."""
        rows = await self._source.search_studies({"StudyInstanceUID": study_uid}, tags.STUDY_FIELDS)
        matching = [row for row in rows if uid(row, tags.STUDY_INSTANCE_UID) == study_uid]
        if len(matching) == 1 and signal_of(matching[0]) == stored.signal:
            # Confirm only the entry the signal was compared with: a read that stored newer content meanwhile
            # (or is storing it now) must not be overwritten by the older copy.
            current = await self.backend.get(study_key(study_uid))
            if study_uid in self._inflight or current is None or current != stored:
                return False
            await self.backend.version_since(study_key(study_uid), stored.version, stored.last_modified)  # kept alive
            await self.backend.put(study_key(study_uid), stored.confirmed(self._clock()), self.policy.retention)
            return False
        await self.fetch(study_uid, stored)
        return True

    async def close(self) -> None:
        """Cancel the reads in flight (their results would go to a closing backend)."""
        pending = list(self._inflight.values())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _load_once(self, study_uid: str, previous: Entry | None) -> asyncio.Future[Entry]:
        """The one read of a study in flight, started now if there is none (registered before any await)."""
        pending = self._inflight.get(study_uid)
        if pending is None:
            pending = asyncio.ensure_future(self._load(study_uid, previous))
            self._inflight[study_uid] = pending
            pending.add_done_callback(lambda done: self._finished(study_uid, done))
        return pending

    def _finished(self, study_uid: str, done: asyncio.Future[Entry]) -> None:
        self._inflight.pop(study_uid, None)
        if not done.cancelled() and (exc := done.exception()) is not None:
            # Waiters see it too; this line is for a refresh nobody waited for.
            log.warning("read of study %s failed: %s", study_uid, getattr(exc, "diagnostics", repr(exc)))

    async def _load(self, study_uid: str, previous: Entry | None) -> Entry:
        try:
            read = await read_study(self._source, study_uid, self._options)
        except (NotFound, Conflict) as exc:
            if self.policy.negative_ttl > 0:
                negative = Entry.negative(exc.status, exc.diagnostics, self._clock())
                await self.backend.put(study_key(study_uid), negative, self.policy.negative_ttl)
            raise
        now = self._clock()
        rendered = both(read.facts)
        version = content_version(rendered[FhirVersion.R5], rendered[FhirVersion.R4])
        # Asked even when ``previous`` has this version: that keeps the record alive as long as the entry, and
        # restores it, with the entry's time, if it was lost.
        known = previous.last_modified if previous is not None and previous.version == version else now
        since = await self.backend.version_since(study_key(study_uid), version, known)
        entry = make_entry(rendered[FhirVersion.R5], version, signal_of(read.study), since, now,
                           r4=rendered[FhirVersion.R4])  # fmt: skip
        if await self.backend.put(study_key(study_uid), entry, self.policy.retention):
            self.unstored.discard(study_uid)
        else:
            self.unstored.add(study_uid)
        return entry


def remembered(entry: Entry) -> BridgeError:
    """The error a negative entry remembers, as it was first raised."""
    diagnostics = entry.body.decode()
    return Conflict(diagnostics) if entry.status == Conflict.status else NotFound(diagnostics)


def make_entry(
    resource: dict[str, Any],
    version: str,
    signal: str,
    last_modified: float,
    now: float,
    *,
    r4: dict[str, Any] | None = None,
) -> Entry:
    """The entry for a freshly mapped R5 resource of ``version`` (``content_version``) and its R4 rendering,
    first seen at ``last_modified`` (their ``meta.lastUpdated``) and confirmed by the PACS ``now``."""
    updated = instant(last_modified)
    body_r4 = b"" if r4 is None else _served(r4, version, updated)
    return Entry(_served(resource, version, updated), version, last_modified, now, signal, body_r4=body_r4)


def _served(resource: dict[str, Any], version: str, updated: str) -> bytes:
    """The bytes of a resource as served: its meta (versionId, lastUpdated) after its type and id."""
    meta = {**resource.get("meta", {}), "versionId": version, "lastUpdated": updated}
    ordered = {"resourceType": resource["resourceType"], "id": resource["id"], "meta": meta}
    ordered.update((key, value) for key, value in resource.items() if key not in ordered)
    return orjson.dumps(ordered)


def signal_of(study: DicomJson) -> str:
    return change_signal(
        unsigned(study, tags.NUMBER_OF_STUDY_RELATED_SERIES),
        unsigned(study, tags.NUMBER_OF_STUDY_RELATED_INSTANCES),
        texts(study, tags.MODALITIES_IN_STUDY),
    )


def instant(epoch: float) -> str:
    """A FHIR instant: ``2026-11-27T14:20:27.123Z``."""
    stamp = dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")
