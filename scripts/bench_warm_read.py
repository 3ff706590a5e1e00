#!/usr/bin/env python3
"""Warm-read benchmark: a cached ImagingStudy from the bridge against a bare aiohttp app serving the same bytes.

Three servers: the bare app; the bridge with its metrics and ETag handling, which are always on; the bridge
with its access log too. All are pinned to one core and driven by wrk from the other. They are measured two
ways, each giving per-cycle ratios to the bare app of the same cycle, and their median:

- **alone** (the figure a user measuring one server at a time sees): in each cycle every server in turn is
  driven alone for a short window while the others sit idle, in an order that rotates from cycle to cycle.
  Short windows taken close together see the same machine, so their ratio is steady where long runs of one
  server and then the other are not (their rates wander by a quarter on a shared machine).
- **together**: the three servers are driven at the same time, so whatever else the machine does, it does to
  all of them, and the kernel shares the core fairly among them. The steadiest measure, but not a neutral one:
  the three processes also share the core's caches, which costs the process with the larger working set (the
  bridge) a few percent more than it costs it running alone.

Two figures per server: requests per second (wrk), and the server's CPU time per request (from /proc).

    .venv/bin/python scripts/bench_warm_read.py [--cycles 30] [--window 2] [--rounds 5] [--seconds 5]

Needs wrk (Debian: apt-get install wrk); taskset (util-linux) pins the processes when there are two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from benchkit import cpu_seconds, free_port, wait_for

BARE_APP = """
import sys
from aiohttp import web
body = open(sys.argv[2], "rb").read()
async def study(request):
    return web.Response(body=body, content_type="application/fhir+json", charset="utf-8")
app = web.Application()
app.router.add_get("/fhir/ImagingStudy/{id}", study)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def pinned(command: list[str], core: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core), *command]
    return command


@contextmanager
def server(command: list[str], env: dict[str, str]) -> Iterator[int]:
    """Run a server pinned to core 0; yields its pid (taskset execs, so the pid is the server's)."""
    process = subprocess.Popen(pinned(command, 0), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield process.pid
    finally:
        process.terminate()
        process.wait(timeout=15)


def wrk_counts(output: str, url: str) -> int:
    """The number of requests in one wrk run's output (refusing a run with errors)."""
    if re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        raise SystemExit(f"{url} answered errors under load:\n{output}")
    total = re.search(r"(\d+) requests in", output)
    if not total:
        raise SystemExit(f"cannot read wrk's output:\n{output}")
    return int(total[1])


Measurements = dict[str, list[float]]


def run_wrk(
    urls: dict[str, str], seconds: int, connections: int, headers: dict[str, list[str]] | None = None
) -> dict[str, int]:
    """Drive each of ``urls`` with its own wrk, all at once (``headers``: extra wrk arguments per server, such as
    ``-H``); the requests each answered."""
    load = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    extra = headers or {}
    runs = {
        name: subprocess.Popen(pinned([*load, *extra.get(name, []), url], 1), stdout=subprocess.PIPE, text=True)
        for name, url in urls.items()
    }
    return {name: wrk_counts(run.communicate()[0], urls[name]) for name, run in runs.items()}


def measure(urls: dict[str, str], pids: dict[str, int], rounds: list[list[str]], seconds: int,
            connections: int, headers: dict[str, list[str]] | None = None,
            ) -> tuple[Measurements, Measurements]:  # fmt: skip
    """Rates and CPU µs per request for each server and round; a round is a list of steps, each the servers
    driven at once."""
    rates: Measurements = {name: [] for name in urls}
    costs: Measurements = {name: [] for name in urls}
    for steps in rounds:
        for step in steps:
            before = {name: cpu_seconds(pids[name]) for name in step}
            totals = run_wrk({name: urls[name] for name in step}, seconds, connections, headers)
            for name in step:
                rates[name].append(totals[name] / seconds)
                costs[name].append((cpu_seconds(pids[name]) - before[name]) / totals[name] * 1e6)
    return rates, costs


def report(title: str, rates: Measurements, costs: Measurements) -> dict[str, dict[str, float]]:
    print(f"\n{title}")
    for name in rates:
        print(f"  {name:11s} {statistics.median(rates[name]):>7,.0f} req/s   "
              f"{statistics.median(costs[name]):6.1f} µs CPU/request")  # fmt: skip
    summary: dict[str, dict[str, float]] = {}
    for name in ("bridge", "bridge+log"):
        rate_ratios = [r / b for r, b in zip(rates[name], rates["bare"], strict=True)]
        cost_ratio = statistics.median(b / c for c, b in zip(costs[name], costs["bare"], strict=True))
        rate_ratio = statistics.median(rate_ratios)
        quartiles = statistics.quantiles(rate_ratios, n=4) if len(rate_ratios) > 1 else [rate_ratio] * 3
        summary[name] = {"rate_ratio": round(rate_ratio, 3), "cpu_cost_ratio": round(cost_ratio, 3)}
        print(f"  {name + ' / bare':18s} rate ratio {rate_ratio:.2f}x (middle half {quartiles[0]:.2f}-"
              f"{quartiles[2]:.2f})   CPU-cost ratio {cost_ratio:.2f}x   (goal ≥ 0.75x)")  # fmt: skip
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=30, help="cycles of the servers driven alone (0: skip)")
    parser.add_argument("--window", type=int, default=2, help="seconds each server is driven alone per cycle")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the servers driven together (0: skip)")
    parser.add_argument("--seconds", type=int, default=5, help="seconds of each round together")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2

    base_env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    bare_script = workdir / "bare.py"
    bare_script.write_text(BARE_APP)
    study = "1.2.826.0.1.3680043.8.498.64108189007039777171766333999874882472"  # the samples' largest study
    path = f"/fhir/ImagingStudy/{study}"
    ports = {"bare": free_port(), "bridge": free_port(), "bridge+log": free_port()}

    def bridge(name: str) -> list[str]:
        return [sys.executable, "-m", "bridge", "serve", "--port", str(ports[name])]

    quiet, logging = {**base_env, "BRIDGE_ACCESS_LOG": "false"}, {**base_env, "BRIDGE_ACCESS_LOG": "true"}

    # The embedded default (pydicom's samples), read once from a bridge so the bare app serves the same bytes.
    with server(bridge("bridge"), quiet):
        body = wait_for(f"http://127.0.0.1:{ports['bridge']}{path}")
    (workdir / "body.json").write_bytes(body)

    summary: dict[str, dict[str, dict[str, float]]] = {}
    with ExitStack() as stack:
        bare = [sys.executable, str(bare_script), str(ports["bare"]), str(workdir / "body.json")]
        pids = {
            "bare": stack.enter_context(server(bare, base_env)),
            "bridge": stack.enter_context(server(bridge("bridge"), quiet)),
            "bridge+log": stack.enter_context(server(bridge("bridge+log"), logging)),
        }
        urls = {name: f"http://127.0.0.1:{port}{path}" for name, port in ports.items()}
        for url in urls.values():
            wait_for(url)  # for the bridges, this read warms the cache
        names = list(urls)
        print(f"body: {len(body)} bytes; servers pinned to one core, each wrk -t1 -c{args.connections} from the other")
        if args.cycles:
            # Each cycle: every server alone for a window, in an order rotated by one from the cycle before.
            cycles = [[[names[(i + k) % len(names)]] for k in range(len(names))] for i in range(args.cycles)]
            rates, costs = measure(urls, pids, cycles, args.window, args.connections)
            summary["alone"] = report(
                f"alone: {args.cycles} cycles, each server driven alone for {args.window} s per cycle", rates, costs
            )
        if args.rounds:
            rounds = [[names] for _ in range(args.rounds)]
            rates, costs = measure(urls, pids, rounds, args.seconds, args.connections)
            summary["together"] = report(
                f"together: {args.rounds} rounds of {args.seconds} s, the three servers driven at once "
                "(each gets a third of the core)",
                rates,
                costs,
            )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
