#!/usr/bin/env python3
"""What a search page costs the PACS, page 1 against page 50, in an Orthanc holding 20,000 studies.

For each search (no criteria; ``modality=CT``; ``modality=CT`` in one month) and page (1, 5 and 50; 20 studies
a page) it prints what the bridge asked of the PACS (requests and rows, counted by a proxy between the two) and
how long the page took, against baselines measured in the same run:

- the *floor*: for a search the bridge pages at the PACS (no criteria), the one QIDO query that returns that
  page's study rows (``limit``/``offset``); for one it cannot (a modality: Orthanc pages ModalitiesInStudy
  wrongly, docs/orthanc-notes.md), the QIDO query of every candidate, which is what each of its pages reads;
- the *old way*: the same criteria asked without a limit, every matching study row, as the bridge did for every
  page before it paged at the PACS and bounded what a search may read.

Pages are asked with ``_elements=identifier,modality,started,numberOfSeries,numberOfInstances`` (answered from the
study rows, so the figure is the search's own cost) and, once each, complete (every series and instance, each
study read through the cache), the default.

    .venv/bin/python scripts/bench_search_pages.py [--studies 20000] [--rounds 5]

Needs Debian's orthanc and orthanc-dicomweb (scripts/test installs them). Loading takes a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from subprocess import DEVNULL

import aiohttp
import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchkit import Counter, counting_proxy, free_port, wait_for

from tests.support.dicomgen import encode, simple_study
from tests.support.orthanc import OrthancServer

PAGE = 20
SUMMARY = "_elements=identifier,modality,started,numberOfSeries,numberOfInstances"
#: name -> (the QIDO filters of its candidates, the FHIR criteria, whether the bridge pages it at the PACS)
SEARCHES = {
    "unnarrowed": ({}, "", True),
    "modality=CT": ({"ModalitiesInStudy": "CT"}, "modality=CT", False),
    "modality=CT, one month": (
        {"ModalitiesInStudy": "CT", "StudyDate": "20240331-20240501"},
        "modality=CT&started=2024-04",
        False,
    ),
}


def load(orthanc: OrthancServer, count: int) -> None:
    """``count`` studies of one CT or MR instance each, 2,000 patients, dates over ten years."""
    started = time.perf_counter()
    files = []
    for n in range(count):
        spec = simple_study(series=1, instances=1, modality=("CT", "MR")[n // 7 % 2], patient_id=f"BENCH-{n % 2000}",
                            date=f"{2015 + n % 10}{1 + n % 12:02d}{1 + n % 28:02d}")  # fmt: skip
        files.extend(encode(spec))
    chunks = [files[i::4] for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(orthanc.upload_many, chunks))
    print(f"loaded {count} studies in {time.perf_counter() - started:.0f} s")


async def timed(session: aiohttp.ClientSession, url: str, **kwargs: object) -> tuple[float, bytes]:
    started = time.perf_counter()
    async with session.get(url, **kwargs) as response:  # type: ignore[arg-type]
        body = await response.read()
        assert response.status == 200, body[:300]
    return time.perf_counter() - started, body


async def measure(orthanc: OrthancServer, bridge: str, counter: Counter, rounds: int) -> None:
    auth = {"Authorization": "Basic " + base64.b64encode(f"{orthanc.username}:{orthanc.password}".encode()).decode()}
    async with aiohttp.ClientSession() as session:
        for name, (filters, criteria, paged) in SEARCHES.items():
            query = "&".join(f"{k}={v}" for k, v in filters.items())
            every_row = f"{orthanc.dicomweb_url}/studies?{query}"
            for page in (1, 5, 50):
                offset = (page - 1) * PAGE
                # The floor: the one QIDO query a page needs, as the bridge would ask it.
                floor_url = f"{every_row}&limit={PAGE}&offset={offset}" if paged else every_row
                bridge_url = f"{bridge}/fhir/ImagingStudy?{criteria}&{SUMMARY}&_count={PAGE}&_offset={offset}"
                floors, bridges, costs, status, entries = [], [], [], 0, 0
                for _ in range(rounds):
                    floors.append((await timed(session, floor_url, headers=auth))[0])
                    before = (counter.requests, counter.rows)
                    took, status, body = await timed_status(session, bridge_url)
                    costs.append((counter.requests - before[0], counter.rows - before[1]))
                    bridges.append(took)
                    entries = len(orjson.loads(body).get("entry", [])) if status == 200 else 0
                old = [(await timed(session, every_row, headers=auth))[0] for _ in range(min(rounds, 3))]
                ratios = [b / f for b, f in zip(bridges, floors, strict=True)]
                requests, rows = costs[-1]
                answer = f"{entries} entries" if status == 200 else f"HTTP {status} (too costly)"
                print(f"{name:24s} page {page:2d}: {answer}; PACS {requests} requests, {rows} rows "
                      f"(goal ≤ {2 * PAGE}); bridge {statistics.median(bridges) * 1000:.0f} ms, "
                      f"{'page' if paged else 'candidates'} floor {statistics.median(floors) * 1000:.0f} ms, "
                      f"ratio {statistics.median(ratios):.2f}x (per round {', '.join(f'{r:.2f}' for r in ratios)}); "
                      f"old way (every row) {statistics.median(old) * 1000:.0f} ms")  # fmt: skip
                if status == 200:
                    before = (counter.requests, counter.rows)
                    complete = (await timed(session, f"{bridge}/fhir/ImagingStudy?{criteria}&_count={PAGE}"
                                                     f"&_offset={offset}"))[0]  # fmt: skip
                    print(
                        f"{'':24s}   complete resources, cold cache: {complete * 1000:.0f} ms, PACS "
                        f"{counter.requests - before[0]} requests, {counter.rows - before[1]} rows"
                    )


async def timed_status(session: aiohttp.ClientSession, url: str) -> tuple[float, int, bytes]:
    started = time.perf_counter()
    async with session.get(url) as response:
        body = await response.read()
        return time.perf_counter() - started, response.status, body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, OrthancServer(Path(tmp) / "orthanc") as orthanc:
        load(orthanc, args.studies)
        asyncio.run(_run(orthanc, tmp, args.rounds))
    return 0


async def _run(orthanc: OrthancServer, tmp: str, rounds: int) -> None:
    counter = Counter()
    runner = web.AppRunner(counting_proxy(orthanc.dicomweb_url, counter))
    await runner.setup()
    proxy_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", proxy_port).start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(BRIDGE_QIDO_URL=f"http://127.0.0.1:{proxy_port}/dicom-web", BRIDGE_PACS_USERNAME=orthanc.username,
               BRIDGE_PACS_PASSWORD=orthanc.password, BRIDGE_PORT=str(port))  # fmt: skip
    bridge = await asyncio.create_subprocess_exec(sys.executable, "-m", "bridge", "serve", env=env, cwd=tmp,
                                                  stdout=DEVNULL, stderr=DEVNULL)  # fmt: skip
    try:
        await asyncio.to_thread(wait_for, f"http://127.0.0.1:{port}/healthz")
        await measure(orthanc, f"http://127.0.0.1:{port}", counter, rounds)
    finally:
        bridge.terminate()
        await asyncio.wait_for(bridge.wait(), timeout=30)
        await runner.cleanup()


if __name__ == "__main__":
    sys.exit(main())
