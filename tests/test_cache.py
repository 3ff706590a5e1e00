"""The cache: freshness rules as a table (injected clock), the read-through cache, and its HTTP semantics."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from bridge.cache.backends import MemoryBackend, study_key
from bridge.cache.freshness import Action, Entry, Policy, change_signal, content_version, decide, usable_on_error
from bridge.cache.refresh import Refresher, refresh_due, warm
from bridge.cache.service import Outcome, StudyCache, make_entry
from bridge.errors import Conflict, DeadlineExceeded, NotFound, UpstreamTimeout, UpstreamUnavailable
from bridge.fhirversion import FhirVersion
from bridge.mapping.imagingstudy import MappingOptions
from bridge.qido.memory import MemoryQidoSource
from bridge.qido.resilience import DEADLINE
from bridge.settings import load_settings
from bridge.web.contexts import cache_policy
from tests.conftest import start_client
from tests.support.fhircheck import validate, validate_r4
from tests.support.waiting import eventually

POLICY = Policy(ttl=100, stale_while_revalidate=50, stale_if_error=1000, min_reread=5, negative_ttl=30)
#: Freshness shorter than the forced-read bound, and no negative entries.
SHORT = Policy(ttl=2, stale_while_revalidate=50, stale_if_error=1000, min_reread=5, negative_ttl=0)
STUDY, SERIES, CT = "2.25.7", "2.25.7.1", "1.2.840.10008.5.1.4.1.1.2"


def entry(checked_at: float, status: int = 200) -> Entry:
    if status != 200:
        return Entry.negative(status, "no such study", checked_at)
    return Entry(b"{}", "v1", 0.0, checked_at, "")


# (the stored entry's status or None for no entry, its age in seconds, Cache-Control: no-cache, policy, action)
DECISIONS = [
    (None, 0, False, POLICY, Action.FETCH),
    (None, 0, True, POLICY, Action.FETCH),
    (200, 0, False, POLICY, Action.SERVE),
    (200, 99.9, False, POLICY, Action.SERVE),
    (200, 100, False, POLICY, Action.SERVE_STALE),
    (200, 149.9, False, POLICY, Action.SERVE_STALE),
    (200, 150, False, POLICY, Action.FETCH),
    # A forced read reads the PACS only once the entry is min_reread old, and is never served a stale entry.
    (200, 0, True, POLICY, Action.SERVE),
    (200, 4.9, True, POLICY, Action.SERVE),
    (200, 5, True, POLICY, Action.FETCH),
    (200, 120, True, POLICY, Action.FETCH),
    (200, 1.9, True, SHORT, Action.SERVE),
    (200, 2, True, SHORT, Action.FETCH),  # past freshness, though within min_reread
    # A remembered 404 or 409 is answered again for negative_ttl, and a forced read is bounded as for a study.
    (404, 0, False, POLICY, Action.REFUSE),
    (404, 29.9, False, POLICY, Action.REFUSE),
    (404, 30, False, POLICY, Action.FETCH),
    (409, 29.9, False, POLICY, Action.REFUSE),
    (404, 4.9, True, POLICY, Action.REFUSE),
    (409, 5, True, POLICY, Action.FETCH),
    (404, 0, False, SHORT, Action.FETCH),  # negative_ttl 0: never answered from the cache
]


@pytest.mark.parametrize(("status", "age", "no_cache", "policy", "action"), DECISIONS)
def test_decide(status: int | None, age: float, no_cache: bool, policy: Policy, action: Action) -> None:
    stored = None if status is None else entry(1000.0, status)
    assert decide(stored, 1000.0 + age, policy, no_cache=no_cache) is action


@pytest.mark.parametrize(("age", "usable"), [(0, True), (1099.9, True), (1100, False)])
def test_stale_if_error_window(age: float, usable: bool) -> None:
    assert usable_on_error(entry(0.0), age, POLICY) is usable
    assert not usable_on_error(None, age, POLICY)
    assert not usable_on_error(entry(0.0, 404), age, POLICY)  # a remembered 404 is no study to serve


def test_the_bounds_come_from_the_settings() -> None:
    default = cache_policy(load_settings({}))
    assert (default.min_reread, default.negative_ttl) == (5, 30)
    given = cache_policy(load_settings({"BRIDGE_CACHE_MIN_REREAD": "2", "BRIDGE_CACHE_NEGATIVE_TTL": "0"}))
    assert (given.min_reread, given.negative_ttl) == (2, 0)


def test_entries_pack_for_a_shared_store() -> None:
    stored = Entry(b'{"resourceType":"ImagingStudy"}', "abc", 12.5, 99.25, "2/3/CT")
    assert Entry.unpack(stored.pack()) == stored
    negative = Entry.negative(409, "StudyInstanceUID 1.2 is registered under 2 different patients", 99.25)
    assert Entry.unpack(negative.pack()) == negative


def test_version_is_the_content_not_the_meta() -> None:
    resource = {"resourceType": "ImagingStudy", "id": "1", "status": "available"}
    assert content_version(resource) == content_version({**resource, "meta": {"versionId": "x"}})
    assert content_version(resource) != content_version({**resource, "status": "cancelled"})
    assert change_signal(2, 5, ["MR", "CT", "CT"]) == "2/5/CT,MR"
    assert change_signal(None, None, []) == "-/-/"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def el(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


def pacs(instances: int = 1) -> MemoryQidoSource:
    return MemoryQidoSource(
        studies=[{"0020000D": el("UI", STUDY), "00100020": el("LO", "P1"), "00201206": el("IS", 1),
                  "00201208": el("IS", instances), "00080061": el("CS", "CT")}],
        series={STUDY: [{"0020000E": el("UI", SERIES), "00080060": el("CS", "CT")}]},
        instances={(STUDY, SERIES): [{"00080018": el("UI", f"{SERIES}.{n}"), "00080016": el("UI", CT)}
                                     for n in range(1, instances + 1)]},
    )  # fmt: skip


def add_instance(source: MemoryQidoSource) -> None:
    rows = source.instances[(STUDY, SERIES)]
    rows.append({"00080018": el("UI", f"{SERIES}.{len(rows) + 1}"), "00080016": el("UI", CT)})
    source.studies[0]["00201208"] = el("IS", len(rows))


def reads_of_study(source: MemoryQidoSource) -> int:
    return source.calls.count(f"series {STUDY}")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def source() -> MemoryQidoSource:
    return pacs()


@pytest.fixture
async def cache(source: MemoryQidoSource, clock: Clock) -> AsyncIterator[StudyCache]:
    cache = StudyCache(MemoryBackend(clock=clock), source, MappingOptions(), POLICY, clock)
    yield cache
    await cache.close()


async def test_a_miss_then_hits_without_the_pacs(cache: StudyCache, source: MemoryQidoSource) -> None:
    first = await cache.read(STUDY)
    assert first.outcome is Outcome.MISS
    second = await cache.read(STUDY)
    assert second.outcome is Outcome.HIT
    assert second.entry == first.entry
    assert reads_of_study(source) == 1
    resource = orjson.loads(second.entry.body)
    validate(resource)
    assert resource["meta"]["versionId"] == first.entry.version


async def test_fifty_concurrent_cold_reads_cost_one_pacs_read(cache: StudyCache, source: MemoryQidoSource) -> None:
    reads = await asyncio.gather(*(cache.read(STUDY) for _ in range(50)))
    assert {r.entry.version for r in reads} == {reads[0].entry.version}
    assert source.calls.count("studies") == 1
    assert reads_of_study(source) == 1


async def test_stale_is_served_while_one_background_read_refreshes(
    cache: StudyCache, source: MemoryQidoSource, clock: Clock
) -> None:
    await cache.read(STUDY)
    add_instance(source)
    clock.now += 120  # past ttl, within stale-while-revalidate
    stale = await cache.read(STUDY)
    assert stale.outcome is Outcome.STALE
    assert orjson.loads(stale.entry.body)["numberOfInstances"] == 1
    await eventually(lambda: cache.fresh(STUDY), what="the background read stored")
    fresh = await cache.read(STUDY)
    assert fresh.outcome is Outcome.HIT
    assert orjson.loads(fresh.entry.body)["numberOfInstances"] == 2


async def test_twenty_forced_reads_in_a_row_cost_one_pacs_read_per_min_reread(
    cache: StudyCache, source: MemoryQidoSource, clock: Clock
) -> None:
    outcomes = []
    for _ in range(20):
        outcomes.append((await cache.read(STUDY, no_cache=True)).outcome)
        clock.now += 0.125  # 2.5 s in all: within min_reread (5 s)
    assert outcomes == [Outcome.MISS] + [Outcome.HIT] * 19
    assert reads_of_study(source) == 1
    clock.now += 2.5
    assert (await cache.read(STUDY, no_cache=True)).outcome is Outcome.MISS
    assert reads_of_study(source) == 2


async def test_twenty_concurrent_forced_reads_cost_one_pacs_read(
    cache: StudyCache, source: MemoryQidoSource, clock: Clock
) -> None:
    await cache.read(STUDY)
    clock.now += 10  # past min_reread: a forced read reads the PACS, and the others join it
    reads = await asyncio.gather(*(cache.read(STUDY, no_cache=True) for _ in range(20)))
    assert {r.outcome for r in reads} == {Outcome.MISS}
    assert reads_of_study(source) == 2


# --- negative entries: 404 and 409 remembered for negative_ttl -------------------------------------------------

UNKNOWN = "2.25.404"


async def test_a_404_is_remembered_for_negative_ttl(cache: StudyCache, source: MemoryQidoSource, clock: Clock) -> None:
    with pytest.raises(NotFound) as first:
        await cache.read(UNKNOWN)
    source.calls.clear()
    clock.now += 29
    with pytest.raises(NotFound) as again:
        await cache.read(UNKNOWN)
    assert again.value.diagnostics == first.value.diagnostics
    assert source.calls == []
    clock.now += 1
    with pytest.raises(NotFound):
        await cache.read(UNKNOWN)
    assert source.calls.count("studies") == 1


async def test_concurrent_reads_of_a_missing_study_cost_one_pacs_read(
    cache: StudyCache, source: MemoryQidoSource
) -> None:
    reads = await asyncio.gather(*(cache.read(UNKNOWN) for _ in range(20)), return_exceptions=True)
    assert all(isinstance(read, NotFound) for read in reads)
    assert source.calls.count("studies") == 1


async def test_a_forced_read_of_a_remembered_404_is_bounded_by_min_reread(
    cache: StudyCache, source: MemoryQidoSource, clock: Clock
) -> None:
    saved, source.studies = source.studies, []  # the study is not in the PACS yet
    with pytest.raises(NotFound):
        await cache.read(STUDY, no_cache=True)
    source.calls.clear()
    for _ in range(20):
        with pytest.raises(NotFound):
            await cache.read(STUDY, no_cache=True)
    assert source.calls == []
    source.studies = saved  # it arrives
    clock.now += 5
    assert (await cache.read(STUDY, no_cache=True)).outcome is Outcome.MISS


async def test_a_409_replaces_the_stored_study_and_is_remembered(
    cache: StudyCache, source: MemoryQidoSource, clock: Clock
) -> None:
    await cache.read(STUDY)
    source.studies.append({**source.studies[0], "00100020": el("LO", "P2")})  # the UID, now under a second patient
    clock.now += 5
    with pytest.raises(Conflict) as forced:
        await cache.read(STUDY, no_cache=True)
    source.calls.clear()
    assert cache.fresh(STUDY) is None
    with pytest.raises(Conflict) as remembered:  # not the copy read when the UID had one patient
        await cache.read(STUDY)
    assert remembered.value.diagnostics == forced.value.diagnostics
    assert source.calls == []


async def test_a_failing_pacs_is_not_remembered(cache: StudyCache, source: MemoryQidoSource) -> None:
    source.fail_with = UpstreamUnavailable("PACS down")
    with pytest.raises(UpstreamUnavailable):
        await cache.read(STUDY)
    source.fail_with = None
    assert (await cache.read(STUDY)).outcome is Outcome.MISS


async def test_warming_reads_a_study_whose_404_is_remembered(
    cache: StudyCache, source: MemoryQidoSource, clock: Clock
) -> None:
    saved, source.studies = source.studies, []
    with pytest.raises(NotFound):
        await cache.read(STUDY)
    source.studies = saved
    summary = await warm(cache, source, {})
    assert (summary.checked, summary.fetched) == (0, 1)  # read at once, not first compared with the 404
    assert (await cache.read(STUDY)).outcome is Outcome.HIT


async def test_the_refresh_leaves_remembered_answers_alone(
    cache: StudyCache, source: MemoryQidoSource, clock: Clock
) -> None:
    with pytest.raises(NotFound):
        await cache.read(UNKNOWN)
    source.calls.clear()
    summary = await refresh_due(cache, horizon=cache.policy.ttl, clock=clock)
    assert str(summary) == "checked 0, changed 0, fetched 0, failed 0"
    assert source.calls == []


async def test_a_failing_pacs_is_covered_by_the_stored_copy_within_stale_if_error(
    cache: StudyCache, source: MemoryQidoSource, clock: Clock
) -> None:
    await cache.read(STUDY)
    source.fail_with = UpstreamUnavailable("PACS down")
    clock.now += 500  # past ttl and stale-while-revalidate
    assert (await cache.read(STUDY)).outcome is Outcome.STALE_IF_ERROR
    assert (await cache.read(STUDY, no_cache=True)).outcome is Outcome.STALE_IF_ERROR
    clock.now += 1000  # past stale-if-error: the error is the answer (the entry has expired too)
    with pytest.raises(UpstreamUnavailable):
        await cache.read(STUDY)


async def test_version_and_last_updated_change_exactly_when_the_content_does(
    cache: StudyCache, source: MemoryQidoSource, clock: Clock
) -> None:
    first = (await cache.read(STUDY)).entry
    clock.now += 10
    same = (await cache.read(STUDY, no_cache=True)).entry
    assert (same.version, same.last_modified, same.body) == (first.version, first.last_modified, first.body)
    assert same.checked_at == clock.now
    add_instance(source)
    clock.now += 10
    changed = (await cache.read(STUDY, no_cache=True)).entry
    assert changed.version != first.version
    assert changed.last_modified == clock.now
    meta = orjson.loads(changed.body)["meta"]
    assert meta["versionId"] == changed.version
    assert meta["lastUpdated"].endswith("Z")


async def test_last_updated_survives_the_entry_expiring_and_being_read_again(
    cache: StudyCache, source: MemoryQidoSource, clock: Clock
) -> None:
    first = (await cache.read(STUDY)).entry
    clock.now += cache.policy.retention + 1  # the entry is gone; its content's first-seen time is not
    again = (await cache.read(STUDY)).entry
    assert again.checked_at == clock.now
    assert (again.version, again.last_modified, again.body) == (first.version, first.last_modified, first.body)


async def test_a_fresh_entry_held_here_is_found_without_waiting(
    cache: StudyCache, source: MemoryQidoSource, clock: Clock
) -> None:
    assert cache.fresh(STUDY) is None  # not read yet
    entry = (await cache.read(STUDY)).entry
    assert cache.fresh(STUDY) is entry
    clock.now += 120  # stale: ``read`` decides (here: serve it stale and refresh it)
    assert cache.fresh(STUDY) is None
    assert (await cache.read(STUDY)).outcome is Outcome.STALE


async def test_content_changing_back_to_an_earlier_version_gets_a_new_last_updated(
    cache: StudyCache, source: MemoryQidoSource, clock: Clock
) -> None:
    first = (await cache.read(STUDY)).entry
    add_instance(source)
    clock.now += 100
    changed = (await cache.read(STUDY, no_cache=True)).entry
    source.instances[(STUDY, SERIES)].pop()  # the instance is gone again: the content is the first one's
    source.studies[0]["00201208"] = el("IS", len(source.instances[(STUDY, SERIES)]))
    clock.now += 100
    back = (await cache.read(STUDY, no_cache=True)).entry
    assert back.version == first.version
    assert back.last_modified == clock.now > changed.last_modified  # not the first time, which would go back


async def test_an_expired_entry_is_not_due_for_refresh_but_gone(clock: Clock) -> None:
    backend = MemoryBackend(clock=clock)
    await backend.put("study::1.2.3", Entry(b"{}", "v", 0.0, clock.now), retention=10)
    assert await backend.checked_at("study::1.2.3") == clock.now
    clock.now += 11
    assert await backend.checked_at("study::1.2.3") is None


async def test_revalidation_costs_one_study_query_unless_the_signal_moved(
    cache: StudyCache, source: MemoryQidoSource, clock: Clock
) -> None:
    stored = (await cache.read(STUDY)).entry
    clock.now += 99
    source.calls.clear()
    assert not await cache.revalidate(STUDY, stored)
    assert source.calls == ["studies"]
    renewed = await cache.backend.get(study_key(STUDY))
    assert renewed is not None
    assert renewed.checked_at == clock.now
    add_instance(source)
    assert await cache.revalidate(STUDY, renewed)
    assert reads_of_study(source) == 1


async def test_scheduled_refresh_revalidates_what_is_due(
    cache: StudyCache, source: MemoryQidoSource, clock: Clock
) -> None:
    await cache.read(STUDY)
    assert str(await refresh_due(cache, horizon=10, clock=clock)) == "checked 0, changed 0, fetched 0, failed 0"
    clock.now += 95
    add_instance(source)
    summary = await Refresher(cache, source, interval=10, clock=clock).run_once()
    assert summary is not None
    assert (summary.checked, summary.changed, summary.fetched) == (1, 1, 1)


async def test_only_one_refresher_at_a_time(cache: StudyCache, source: MemoryQidoSource) -> None:
    async with cache.backend.lock("refresh", ttl=60) as taken:
        assert taken
        assert await Refresher(cache, source, interval=10).run_once() is None


async def test_warm_reads_matching_studies_and_reports_failures(cache: StudyCache, source: MemoryQidoSource) -> None:
    seen: list[tuple[int, int]] = []
    summary = await warm(cache, source, {"PatientID": "P1"}, lambda done, total: seen.append((done, total)))
    assert (summary.fetched, summary.failed, seen) == (1, 0, [(1, 1)])
    assert (await warm(cache, source, {"PatientID": "p1"})).fetched == 0  # exact, whatever the PACS's case rules


class DateBlindPacs(MemoryQidoSource):
    """A PACS (or a folder of files) that ignores a StudyDate filter, as QIDO lets it."""

    async def search_studies(self, filters: dict[str, str], *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return await super().search_studies({k: v for k, v in filters.items() if k != "StudyDate"}, *args, **kwargs)


@pytest.mark.parametrize(
    ("dates", "fetched"),
    [("20240301-20240331", 1), ("20240302-", 0), ("-20240229", 0), ("20240301-", 1), ("20250101-20250102", 0)],
)
async def test_warm_checks_the_date_range_exactly(clock: Clock, dates: str, fetched: int) -> None:
    source = DateBlindPacs(studies=pacs().studies, series=pacs().series, instances=pacs().instances)
    source.studies[0]["00080020"] = el("DA", "20240301")
    cache = StudyCache(MemoryBackend(clock=clock), source, MappingOptions(), POLICY, clock)
    assert (await warm(cache, source, {"StudyDate": dates})).fetched == fetched


async def test_warm_counts_failures(source: MemoryQidoSource, clock: Clock) -> None:
    cold = StudyCache(MemoryBackend(clock=clock), source, MappingOptions(), POLICY, clock)
    source.fail_with, source.fail_only = UpstreamTimeout("slow"), "series"
    summary = await warm(cold, source, {})
    assert (summary.fetched, summary.failed) == (0, 1)


async def test_memory_backend_is_bounded_by_bytes_least_recently_used_first(clock: Clock) -> None:
    backend = MemoryBackend(max_bytes=100, clock=clock)
    for name in ("a", "b", "c"):
        await backend.put(name, Entry(b"x" * 40, name, 0, 0), retention=60)
    assert await backend.keys() == ["b", "c"]
    await backend.get("b")
    await backend.put("d", Entry(b"x" * 40, "d", 0, 0), retention=60)
    assert await backend.keys() == ["b", "d"]
    assert backend.size == 80
    clock.now += 61
    assert await backend.get("b") is None


def test_entries_pack_both_versions_for_a_shared_store() -> None:
    stored = Entry(b'{"r5": 1}', "v1", 100.0, 12345.5, "1/1/CT", body_r4=b'{"r4": 1}')
    unpacked = Entry.unpack(stored.pack())
    assert unpacked == stored
    assert (unpacked.body_of(FhirVersion.R5), unpacked.body_of(FhirVersion.R4)) == (b'{"r5": 1}', b'{"r4": 1}')


def test_an_entry_of_the_r5_only_release_is_not_unpacked() -> None:
    header = orjson.dumps({"v": "v1", "m": 1.0, "c": 2.0, "s": ""})
    with pytest.raises(ValueError, match="earlier release"):
        Entry.unpack(len(header).to_bytes(4, "big") + header + b"{}")


def test_the_r4_representation_has_its_own_etag_and_the_same_version() -> None:
    stored = Entry(b"{}", "abc", 0.0, 0.0, body_r4=b"{}")
    assert stored.etag_of(FhirVersion.R5) == stored.etag == 'W/"abc"'
    assert stored.etag_of(FhirVersion.R4) == 'W/"abc-4.0"'


async def test_a_read_keeps_both_versions_of_the_same_facts(cache: StudyCache, source: MemoryQidoSource) -> None:
    entry = (await cache.read(STUDY)).entry
    r5, r4 = orjson.loads(entry.body_of(FhirVersion.R5)), orjson.loads(entry.body_of(FhirVersion.R4))
    validate(r5)
    validate_r4(r4)
    assert r4["meta"] == r5["meta"]
    assert r4["text"] == r5["text"]
    assert r4["series"][0]["modality"] == r5["series"][0]["modality"]["coding"][0]
    assert reads_of_study(source) == 1


async def test_a_change_only_r4_states_is_a_new_version(
    cache: StudyCache, source: MemoryQidoSource, clock: Clock
) -> None:
    # Name of Physician(s) Reading Study is R4's interpreter alone (R5 has no element for it), often filled in
    # after the study is stored: R4's ETag and meta must move with it, or an R4 client is told 304 for stale bytes.
    before = (await cache.read(STUDY)).entry
    source.studies[0]["00081060"] = {"vr": "PN", "Value": [{"Alphabetic": "Reader^Rita"}]}
    clock.now += POLICY.min_reread
    after = (await cache.read(STUDY, no_cache=True)).entry
    assert orjson.loads(after.body_of(FhirVersion.R4))["interpreter"] == [
        {"type": "Practitioner", "display": "Rita Reader"}
    ]
    assert after.etag_of(FhirVersion.R4) != before.etag_of(FhirVersion.R4)
    assert after.version != before.version
    assert after.last_modified == clock.now


async def test_memory_backend_counts_both_versions_bytes(clock: Clock) -> None:
    backend = MemoryBackend(max_bytes=100, clock=clock)
    await backend.put("a", Entry(b"x" * 40, "a", 0, 0, body_r4=b"y" * 30), retention=60)
    assert backend.size == 70
    assert not await backend.put("b", Entry(b"x" * 60, "b", 0, 0, body_r4=b"y" * 60), retention=60)


def test_make_entry_orders_meta_after_id() -> None:
    made = make_entry({"resourceType": "ImagingStudy", "id": "1", "status": "available"}, "v1", "", 0.0, 0.0)
    assert list(orjson.loads(made.body)) == ["resourceType", "id", "meta", "status"]


# --- over HTTP ------------------------------------------------------------------------------------------------


@pytest.fixture
async def client(source: MemoryQidoSource) -> AsyncIterator[TestClient]:
    settings = load_settings({"BRIDGE_QIDO_URL": "http://pacs/dicom-web", "BRIDGE_CACHE_TTL": "0",
                              "BRIDGE_CACHE_STALE_WHILE_REVALIDATE": "0"})  # fmt: skip
    client = await start_client(settings, source)
    yield client
    await client.close()


async def test_etag_last_modified_and_conditional_reads(source: MemoryQidoSource) -> None:
    settings = load_settings({"BRIDGE_QIDO_URL": "http://pacs/dicom-web", "BRIDGE_CACHE_MIN_REREAD": "0"})
    client = await start_client(settings, source)
    try:
        first = await client.get(f"/fhir/ImagingStudy/{STUDY}")
        assert first.status == 200
        assert first.headers["X-Cache"] == "MISS"
        etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
        version = (await first.json())["meta"]["versionId"]
        assert etag == f'W/"{version}"'  # weak: another replica may serialize the same content differently
        assert email.utils.parsedate_to_datetime(modified)
        second = await client.get(f"/fhir/ImagingStudy/{STUDY}", headers={"If-None-Match": etag})
        assert (second.status, second.headers["X-Cache"], await second.read()) == (304, "HIT", b"")
        assert second.headers["ETag"] == etag
        for echoed in (f'"x", {etag}', f'"{version}"'):  # weak comparison: either form of the tag
            assert (await client.get(f"/fhir/ImagingStudy/{STUDY}", headers={"If-None-Match": echoed})).status == 304
        since = await client.get(f"/fhir/ImagingStudy/{STUDY}", headers={"If-Modified-Since": modified})
        assert since.status == 304
        other = await client.get(f"/fhir/ImagingStudy/{STUDY}", headers={"If-None-Match": '"other"'})
        assert other.status == 200
        for forcing in ({"Cache-Control": "no-cache"}, {"Cache-Control": "max-age=0"}, {"Pragma": "no-cache"}):
            forced = await client.get(f"/fhir/ImagingStudy/{STUDY}", headers=forcing)
            assert forced.headers["X-Cache"] == "MISS"
        assert reads_of_study(source) == 4
    finally:
        await client.close()


async def test_forced_reads_within_min_reread_are_served_the_stored_study(source: MemoryQidoSource) -> None:
    settings = load_settings({"BRIDGE_QIDO_URL": "http://pacs/dicom-web", "BRIDGE_CACHE_MIN_REREAD": "3600"})
    client = await start_client(settings, source)
    try:
        assert (await client.get(f"/fhir/ImagingStudy/{STUDY}")).headers["X-Cache"] == "MISS"
        for forcing in ({"Cache-Control": "no-cache"}, {"Cache-Control": "max-age=0"}, {"Pragma": "no-cache"}):
            forced = await client.get(f"/fhir/ImagingStudy/{STUDY}", headers=forcing)
            assert (forced.status, forced.headers["X-Cache"]) == (200, "HIT")
        assert reads_of_study(source) == 1
    finally:
        await client.close()


async def test_a_remembered_404_is_answered_again_without_the_pacs(
    client: TestClient, source: MemoryQidoSource
) -> None:
    first = await client.get(f"/fhir/ImagingStudy/{UNKNOWN}")
    source.calls.clear()
    again = await client.get(f"/fhir/ImagingStudy/{UNKNOWN}", headers={"Cache-Control": "no-cache"})
    assert (first.status, again.status) == (404, 404)
    assert (await again.json())["issue"] == (await first.json())["issue"]
    assert source.calls == []


async def test_a_search_finds_a_study_whose_404_is_remembered(client: TestClient, source: MemoryQidoSource) -> None:
    saved, source.studies = source.studies, []
    assert (await client.get(f"/fhir/ImagingStudy/{STUDY}")).status == 404
    source.studies = saved  # the study arrives; reads answer 404 until negative_ttl, but a search that finds it
    found = await (await client.get(f"/fhir/ImagingStudy?_id={STUDY}")).json()
    assert [e["search"]["mode"] for e in found["entry"]] == ["match"]
    assert found["entry"][0]["resource"]["series"][0]["uid"] == SERIES


async def test_a_remembered_409_stays_a_409_and_a_search_gets_each_patients_part(
    client: TestClient, source: MemoryQidoSource
) -> None:
    for part in (source.studies, source.series[STUDY], source.instances[(STUDY, SERIES)]):
        part[0]["00100020"] = el("LO", "P1")  # a shared UID's rows must name their patient
    source.studies.append({**source.studies[0], "00100020": el("LO", "P2")})
    source.series[STUDY].append({"0020000E": el("UI", "2.25.7.9"), "00080060": el("CS", "MR"),
                                 "00100020": el("LO", "P2")})  # fmt: skip
    source.instances[(STUDY, "2.25.7.9")] = [{"00080018": el("UI", "2.25.7.9.1"), "00080016": el("UI", CT),
                                              "00100020": el("LO", "P2")}]  # fmt: skip
    assert (await client.get(f"/fhir/ImagingStudy/{STUDY}")).status == 409
    for patient, series in (("P1", SERIES), ("P2", "2.25.7.9")):
        scoped = await (await client.get(f"/fhir/ImagingStudy?patient={patient}")).json()
        assert [s["uid"] for s in scoped["entry"][0]["resource"]["series"]] == [series]
    source.calls.clear()
    assert (await client.get(f"/fhir/ImagingStudy/{STUDY}")).status == 409
    assert source.calls == []


async def test_a_stored_study_is_served_when_the_pacs_fails(client: TestClient, source: MemoryQidoSource) -> None:
    assert (await client.get(f"/fhir/ImagingStudy/{STUDY}")).status == 200
    source.fail_with = UpstreamUnavailable("PACS down")
    response = await client.get(f"/fhir/ImagingStudy/{STUDY}")
    assert response.status == 200
    assert response.headers["X-Cache"] == "STALE-IF-ERROR"
    validate(await response.json())
    unknown = await client.get("/fhir/ImagingStudy/1.2.3.4.5.6")
    assert unknown.status == 503  # nothing stored: the PACS's failure is the answer


# --- review findings ------------------------------------------------------------------------------------------


async def test_revalidation_never_puts_back_an_older_copy(
    cache: StudyCache, source: MemoryQidoSource, clock: Clock
) -> None:
    older = (await cache.read(STUDY)).entry
    newer = Entry(b'{"newer": true}', "v2", clock.now, clock.now, older.signal)
    await cache.backend.put(study_key(STUDY), newer, 60)  # stored by a read while the refresh was querying
    assert not await cache.revalidate(STUDY, older)  # the PACS's signal still matches the older copy
    assert await cache.backend.get(study_key(STUDY)) == newer


async def test_a_waiter_keeps_its_own_deadline(source: MemoryQidoSource, clock: Clock) -> None:
    asked = asyncio.Event()

    class Hanging(MemoryQidoSource):
        async def search_studies(self, filters: Any, fields: Any) -> Any:
            asked.set()
            await asyncio.get_running_loop().create_future()  # never answers

    hanging = Hanging(source.studies, source.series, source.instances)
    cache = StudyCache(MemoryBackend(clock=clock), hanging, MappingOptions(), POLICY, clock)
    first = asyncio.ensure_future(cache.read(STUDY))  # no deadline: a refresher, say
    await asyncio.wait_for(asked.wait(), timeout=5)  # its read is in flight: the next read waits for it
    token = DEADLINE.set(time.monotonic() + 0.1)
    try:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(cache.read(STUDY), timeout=5)  # a read that ignored its deadline: TimeoutError
        assert time.monotonic() - started < 0.5
    finally:
        DEADLINE.reset(token)
    await cache.close()  # cancels the read still in flight
    assert first.cancelled() or first.done()


async def test_many_stale_reads_start_one_refresh(cache: StudyCache, source: MemoryQidoSource, clock: Clock) -> None:
    await cache.read(STUDY)
    clock.now += 120
    reads = await asyncio.gather(*(cache.read(STUDY) for _ in range(20)))
    assert {r.outcome for r in reads} == {Outcome.STALE}
    await eventually(lambda: cache.fresh(STUDY), what="the refresh stored")
    assert reads_of_study(source) == 2
