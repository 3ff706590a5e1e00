"""Keeping the cache warm: scheduled re-validation of entries about to expire, and warming from the PACS.

Re-validation costs one study-level QIDO query per study: NumberOfStudyRelatedSeries/Instances and
ModalitiesInStudy are compared with what they were when the entry was made, and only a study whose signal moved
is read again. With a shared backend (Redis) a lock that expires by itself lets one replica refresh at a time,
and a refresher that crashed holding it blocks the others only until it expires.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from bridge.cache.backends import Clock, study_key, study_uid_of
from bridge.cache.freshness import due_for_refresh
from bridge.cache.service import StudyCache
from bridge.errors import BridgeError
from bridge.mapping import tags
from bridge.mapping.datetimes import parse_date
from bridge.mapping.dicomjson import DicomJson, text, uid
from bridge.mapping.identity import Identity, identity_of
from bridge.qido.source import Filters, QidoSource
from bridge.telemetry import REFRESH_RUNS

log = logging.getLogger(__name__)

LOCK = "refresh"
#: Studies re-validated or read at once during a refresh (the PACS's own concurrency bound still applies).
PARALLEL = 4

Progress = Callable[[int, int], None]


@dataclass
class Summary:
    checked: int = 0  # re-validated with a study-level query
    changed: int = 0  # of those, changed (and read again)
    fetched: int = 0  # read in full (changed or new)
    failed: int = 0

    def __add__(self, other: Summary) -> Summary:
        return Summary(self.checked + other.checked, self.changed + other.changed,
                       self.fetched + other.fetched, self.failed + other.failed)  # fmt: skip

    def __str__(self) -> str:
        return f"checked {self.checked}, changed {self.changed}, fetched {self.fetched}, failed {self.failed}"


async def refresh_due(cache: StudyCache, horizon: float, clock: Clock = time.time) -> Summary:
    """Re-validate every entry that expires within ``horizon`` seconds."""
    now = clock()
    due = []
    for key in await cache.backend.keys():
        checked_at = await cache.backend.checked_at(key)  # the entry's header: its body stays where it is
        if checked_at is not None and due_for_refresh(checked_at, now, cache.policy, horizon):
            due.append(study_uid_of(key))
    return await _each(cache, due, None)


async def warm(cache: StudyCache, source: QidoSource, filters: Filters, progress: Progress | None = None) -> Summary:
    """Read every study matching ``filters`` into the cache (re-validating those already held)."""
    rows = await source.search_studies(filters, tags.STUDY_FIELDS)
    wanted_patient = filters.get("PatientID")
    by_uid: dict[str, set[Identity | None]] = {}
    for row in rows:
        study_uid = uid(row, tags.STUDY_INSTANCE_UID)
        owner = identity_of(row)
        # The PACS's match is a superset (wildcards, case; a folder of files ignores dates): a patient and a date
        # range are checked exactly, the patient on raw values.
        if (
            study_uid is not None
            and (wanted_patient is None or (owner and owner.patient_id == wanted_patient))
            and _within(row, filters.get("StudyDate"))
        ):
            by_uid.setdefault(study_uid, set()).add(owner)
    # A StudyInstanceUID under several patients is not one study: it is never cached (reads answer 409).
    uids = sorted(u for u, patients in by_uid.items() if len(patients) == 1)
    return await _each(cache, uids, progress)


def _within(row: DicomJson, dates: str | None) -> bool:
    """Whether the row's StudyDate is in a QIDO ``low-high`` DA range (either end open); no range: any row."""
    if not dates:
        return True
    day = parse_date(text(row, tags.STUDY_DATE))
    if day is None:
        return False  # no PACS's range matches a study without a readable date either
    low, _, high = (parse_date(end) for end in dates.partition("-"))
    return (low is None or low <= day) and (high is None or day <= high)


async def _each(cache: StudyCache, uids: list[str], progress: Progress | None) -> Summary:
    summary = Summary()
    done = 0
    gate = asyncio.Semaphore(PARALLEL)

    async def one(study_uid: str) -> None:
        nonlocal done
        async with gate:
            try:
                stored = await cache.backend.get(study_key(study_uid))
                if stored is None or stored.status != 200:  # a remembered 404/409 has nothing to re-validate
                    await cache.fetch(study_uid, None)
                    summary.fetched += 1
                else:
                    summary.checked += 1
                    if await cache.revalidate(study_uid, stored):
                        summary.changed += 1
                        summary.fetched += 1
                if study_uid in cache.unstored:
                    # Read, but not kept (the cache's store failed, or the study is larger than the cache).
                    summary.failed += 1
                    log.warning("study %s was read but could not be stored in the cache", study_uid)
            except BridgeError as exc:
                summary.failed += 1
                log.warning("refresh of study %s failed: %s", study_uid, exc.diagnostics)
            done += 1
            if progress is not None:
                progress(done, len(uids))

    await asyncio.gather(*(one(study_uid) for study_uid in uids))
    return summary


class Refresher:
    """The scheduled refresh: every ``interval`` seconds, if this replica takes the lock."""

    def __init__(
        self, cache: StudyCache, source: QidoSource, interval: float, prewarm_days: int = 0, clock: Clock = time.time
    ) -> None:
        self._cache = cache
        self._source = source
        self._interval = interval
        self._prewarm_days = prewarm_days
        self._clock = clock

    async def run_once(self) -> Summary | None:
        """One refresh, or None when another replica holds the lock."""
        # The lock outlives one refresh comfortably, and expires if its holder dies.
        async with self._cache.backend.lock(LOCK, ttl=max(60.0, 2 * self._interval)) as taken:
            if not taken:
                return None
            summary = await refresh_due(self._cache, horizon=self._interval, clock=self._clock)
            if self._prewarm_days:
                since = dt.datetime.fromtimestamp(self._clock(), dt.UTC).date() - dt.timedelta(days=self._prewarm_days)
                summary += await warm(self._cache, self._source, {"StudyDate": f"{since:%Y%m%d}-"})
            return summary

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                summary = await self.run_once()
            except Exception as exc:  # one bad run (PACS, Redis, a bug) must not end the schedule
                REFRESH_RUNS.labels("failed").inc()
                log.warning("scheduled refresh failed: %s", getattr(exc, "diagnostics", repr(exc)))
                continue
            REFRESH_RUNS.labels("skipped" if summary is None else "done").inc()
            if summary is not None:
                log.info("scheduled refresh: %s", summary)
