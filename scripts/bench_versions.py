#!/usr/bin/env python3
"""What asking for R4 costs against asking for R5, each figure a ratio within the same run (issue 14).

- **Warm read**: one bridge (``imaging-bridge serve``, defaults, the embedded samples), its largest study cached;
  driven by wrk, each URL alone for a short window per cycle in an order rotated from cycle to cycle:
  ``/fhir/r5/ImagingStudy/{id}`` (the baseline), ``/fhir/r4/…``, ``/fhir/…`` with ``Accept: application/fhir+json;
  fhirVersion=4.0`` (R4 negotiated) and ``/fhir/…`` plain (R5, the default). Per cycle, each rate divided by the R5
  base's rate of the same cycle; the figure is the median (goal: R4 within 5 % of R5). The bridge's CPU time per
  request too (from /proc). One process serves all four, so the ratio sees one cache, one heap, one machine.
- **Cold read**: a real Orthanc holding one CT study (4 series), a second bridge with its defaults in front of it
  through a counting proxy. The first read (empty cache) is asked in R4, then forced reads (``Cache-Control:
  no-cache``, ``BRIDGE_CACHE_MIN_REREAD`` waited out) alternate R5 and R4: the PACS requests and rows of each read
  (goal: identical whichever version asks), their time and the bridge's CPU per read.
- **Rendering on demand**, for the cache's choice: in-process, the CPU a warm R4 read would add if the cache held
  the facts (facts -> R4 -> bytes) or R5's bytes alone (parse, and write again: the least any conversion costs),
  for a study of the sample's size, to set beside the warm read's CPU per request.

    .venv/bin/python scripts/bench_versions.py [--cycles 20] [--window 2] [--render 50] [--instances 2000] [--rounds 6]

Needs wrk (Debian: apt-get install wrk), Debian's orthanc and orthanc-dicomweb (scripts/test installs them);
taskset (util-linux) pins the bridge and wrk to different cores when there are two.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_narrative import medians, rows
from bench_warm_read import pinned, server, wrk_counts
from benchkit import Counter, counting_proxy, cpu_seconds, free_port, wait_for

from bridge.fhirversion import FhirVersion
from bridge.mapping.imagingstudy import MappingOptions, study_facts
from bridge.render import imaging_study
from bridge.settings import Settings
from tests.support.dicomgen import encode, simple_study
from tests.support.orthanc import OrthancServer

#: The embedded samples' largest study (pydicom's 50-instance CT), as bench_warm_read.py reads it.
SAMPLE = "1.2.826.0.1.3680043.8.498.64108189007039777171766333999874882472"
R4_ACCEPT = "application/fhir+json; fhirVersion=4.0"
#: name -> (path, extra wrk arguments); the first is the baseline.
WARM = {
    "/fhir/r5": ("/fhir/r5", []),
    "/fhir/r4": ("/fhir/r4", []),
    "/fhir, Accept 4.0": ("/fhir", ["-H", f"Accept: {R4_ACCEPT}"]),
    "/fhir (R5)": ("/fhir", []),
}
MIN_REREAD = float(Settings.model_fields["cache_min_reread"].default)
#: The bridges run this checkout's code, from any working directory.
ROOT = str(Path(__file__).resolve().parents[1])


def bridge_env(**settings: str) -> dict[str, str]:
    """The environment without any BRIDGE_* setting but ``settings``: the defaults, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return {**env, **{f"BRIDGE_{name.upper()}": value for name, value in settings.items()}}


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    low, _, high = statistics.quantiles(values, n=4)
    return low, high


def warm(cycles: int, window: int, connections: int) -> dict[str, dict[str, float]]:
    env = bridge_env()
    port = free_port()
    command = [sys.executable, "-m", "bridge", "serve", "--port", str(port)]
    rates: dict[str, list[float]] = {name: [] for name in WARM}
    costs: dict[str, list[float]] = {name: [] for name in WARM}
    with server(command, env) as pid:
        sizes = {}
        for name, (path, extra) in WARM.items():
            headers = {"Accept": R4_ACCEPT} if extra else {}
            body = wait_for(f"http://127.0.0.1:{port}{path}/ImagingStudy/{SAMPLE}", headers=headers)  # warms the cache
            sizes[name] = len(body)
        names = list(WARM)
        for cycle in range(cycles):
            for k in range(len(names)):
                name = names[(cycle + k) % len(names)]
                path, extra = WARM[name]
                url = f"http://127.0.0.1:{port}{path}/ImagingStudy/{SAMPLE}"
                before = cpu_seconds(pid)
                run = subprocess.run(pinned(["wrk", "-t1", f"-c{connections}", f"-d{window}s", *extra, url], 1),
                                     capture_output=True, text=True, check=True)  # fmt: skip
                total = wrk_counts(run.stdout, url)
                rates[name].append(total / window)
                costs[name].append((cpu_seconds(pid) - before) / total * 1e6)
    base = names[0]
    print(f"\nwarm read: {cycles} cycles, each URL alone for {window} s per cycle (wrk -t1 -c{connections}); "
          f"body {sizes[base]:,} bytes in R5, {sizes['/fhir/r4']:,} in R4")  # fmt: skip
    summary = {}
    for name in names:
        rate_ratios = [r / b for r, b in zip(rates[name], rates[base], strict=True)]
        cost_ratios = [c / b for c, b in zip(costs[name], costs[base], strict=True)]
        low, high = quartiles(rate_ratios)
        summary[name] = {"rate_ratio": round(statistics.median(rate_ratios), 3),
                         "cpu_ratio": round(statistics.median(cost_ratios), 3)}  # fmt: skip
        print(f"  {name:18s} {statistics.median(rates[name]):>7,.0f} req/s  {statistics.median(costs[name]):6.1f} µs "
              f"CPU/request   rate / R5 {summary[name]['rate_ratio']:.3f}x (middle half {low:.3f}-{high:.3f})   "
              f"CPU / R5 {summary[name]['cpu_ratio']:.3f}x")  # fmt: skip
    return summary


@dataclass
class Read:
    version: str
    forced: bool
    requests: int
    rows: int
    seconds: float
    cpu: float
    size: int


async def cold(instances: int, rounds: int) -> list[Read]:
    spec = simple_study(series=4, instances=instances // 4, patient_id="BENCH-VERSIONS")
    with tempfile.TemporaryDirectory() as tmp, OrthancServer(Path(tmp) / "orthanc") as orthanc:
        started = time.perf_counter()
        files = list(encode(spec))
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(orthanc.upload_many, [files[i::4] for i in range(4)]))
        print(f"\nloaded {len(files)} instances in {time.perf_counter() - started:.0f} s")
        counter = Counter()
        runner = web.AppRunner(counting_proxy(orthanc.dicomweb_url, counter))
        await runner.setup()
        proxy_port, port = free_port(), free_port()
        await web.TCPSite(runner, "127.0.0.1", proxy_port).start()
        env = bridge_env(qido_url=f"http://127.0.0.1:{proxy_port}/dicom-web", pacs_username=orthanc.username,
                         pacs_password=orthanc.password, port=str(port))  # fmt: skip
        bridge = await asyncio.create_subprocess_exec(sys.executable, "-m", "bridge", "serve", env=env, cwd=tmp,
                                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        reads: list[Read] = []
        try:
            await asyncio.to_thread(wait_for, f"http://127.0.0.1:{port}/healthz")
            read_at = 0.0
            # The first read asks R4 of an empty cache; then forced reads alternate R5 and R4.
            order = [("r4", False)] + [(v, True) for _ in range(rounds) for v in ("r5", "r4")]
            async with aiohttp.ClientSession() as session:
                for version, forced in order:
                    await asyncio.sleep(max(0.0, read_at + MIN_REREAD + 0.1 - time.monotonic()))
                    before = (counter.requests, counter.rows, cpu_seconds(bridge.pid))
                    headers = {"Cache-Control": "no-cache"} if forced else {}
                    started = time.perf_counter()
                    url = f"http://127.0.0.1:{port}/fhir/{version}/ImagingStudy/{spec.uid}"
                    async with session.get(url, headers=headers) as response:
                        body = await response.read()
                        assert response.status == 200, body[:300]
                        x_cache = response.headers.get("X-Cache")
                    seconds = time.perf_counter() - started
                    read_at = time.monotonic()
                    if x_cache != "MISS":
                        raise SystemExit(f"a cold read came from the cache (X-Cache: {x_cache}), not the PACS")
                    reads.append(Read(version, forced, counter.requests - before[0], counter.rows - before[1],
                                      seconds, cpu_seconds(bridge.pid) - before[2], len(body)))  # fmt: skip
        finally:
            bridge.terminate()
            await asyncio.wait_for(bridge.wait(), timeout=30)
            await runner.cleanup()
    return reads


def report_cold(reads: list[Read], instances: int) -> dict[str, object]:
    print(f"cold read of a {instances}-instance CT study (4 series), bridge defaults; each read:")
    for read in reads:
        print(f"  {read.version} {'forced' if read.forced else 'first '}  PACS {read.requests} requests, "
              f"{read.rows} rows   {read.seconds * 1000:6.0f} ms   CPU {read.cpu * 1000:5.0f} ms   "
              f"{read.size:,} bytes")  # fmt: skip
    work = {(read.requests, read.rows) for read in reads}
    forced = [read for read in reads if read.forced]
    pairs = list(zip(forced[0::2], forced[1::2], strict=True))  # (R5, R4) read one after the other
    time_ratio = statistics.median(r4.seconds / r5.seconds for r5, r4 in pairs)
    # /proc counts CPU in clock ticks (10 ms): the ratio is of the sums over the forced reads.
    cpu_ratio = sum(r4.cpu for _, r4 in pairs) / max(sum(r5.cpu for r5, _ in pairs), 1e-9)
    print(f"  PACS work per read: {'identical' if len(work) == 1 else 'DIFFERS'} {sorted(work)}")
    print(
        f"  forced reads, R4 / R5 (medians of {len(pairs)} pairs): time {time_ratio:.3f}x; "
        f"CPU, summed, {cpu_ratio:.3f}x"
    )
    return {"pacs_work": sorted(work), "time_ratio": round(time_ratio, 3), "cpu_ratio": round(cpu_ratio, 3)}


def render_on_demand(instances: int, rounds: int) -> dict[str, float]:
    """What a warm R4 read would add if the cache held facts (or the R5 body) instead of R4's bytes: facts -> R4
    -> bytes, and R5 bytes -> parsed -> bytes, for a study of the sample's size (synthetic rows, one series), in
    CPU µs (medians of ``rounds`` batches of 200, taken in turn)."""
    facts = study_facts(rows(instances, series=1), MappingOptions())
    r5_body = orjson.dumps(imaging_study(facts, FhirVersion.R5))
    batch = 200
    figures = medians({
        "facts -> R4 bytes": lambda: [orjson.dumps(imaging_study(facts, FhirVersion.R4)) for _ in range(batch)],
        "R5 bytes -> parse -> bytes": lambda: [orjson.dumps(orjson.loads(r5_body)) for _ in range(batch)],
    }, rounds)  # fmt: skip
    per_read = {name: ms * 1000 / batch for name, ms in figures.items()}
    print(f"\nrendering on demand, a {instances}-instance study in-process (CPU per read, medians of {rounds}):")
    for name, us in per_read.items():
        print(f"  {name:28s} {us:6.1f} µs")
    return per_read


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=20, help="warm-read cycles (0: skip)")
    parser.add_argument("--window", type=int, default=2, help="seconds each URL is driven alone per cycle")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--render", type=int, default=50, help="instances of the render-on-demand study (0: skip)")
    parser.add_argument("--instances", type=int, default=2000, help="instances of the cold-read study (0: skip)")
    parser.add_argument("--rounds", type=int, default=6, help="forced R5 and R4 reads of the cold-read study")
    args = parser.parse_args()
    summary: dict[str, object] = {}
    if args.cycles:
        summary["warm"] = warm(args.cycles, args.window, args.connections)
    if args.render:
        summary["render_on_demand_us"] = render_on_demand(args.render, 21)
    if args.instances:
        summary["cold"] = report_cold(asyncio.run(cold(args.instances, args.rounds)), args.instances)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
