#!/usr/bin/env python3
"""Warm-read benchmark: a cached ImagingStudy from the bridge against a bare aiohttp app serving the same bytes.

The servers (the bare app; the bridge with its metrics and ETag handling, which are always on; the bridge with
its access log too) run at the same time, pinned to one core, each driven by its own wrk from the other core.
Running them together is what makes the ratio trustworthy on a shared, noisy machine: whatever else the machine
does in a round, it does to all of them, and the kernel's fair scheduler gives each the same share of the core.
Two figures per server and round: requests per second (wrk), and the server's CPU time per request (from
/proc). The ratio of each round is taken against the bare app of the same round; the median over rounds is
printed. (Each server gets about a third of the core, so the absolute rates are a third of a lone server's.)

    .venv/bin/python scripts/bench_warm_read.py [--seconds 5] [--rounds 5] [--connections 16]

Needs wrk (Debian: apt-get install wrk); taskset (util-linux) pins the processes when there are two cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
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

    rates: dict[str, list[float]] = {name: [] for name in ports}
    costs: dict[str, list[float]] = {name: [] for name in ports}
    with contextlib.ExitStack() as stack:
        bare = [sys.executable, str(bare_script), str(ports["bare"]), str(workdir / "body.json")]
        pids = {
            "bare": stack.enter_context(server(bare, base_env)),
            "bridge": stack.enter_context(server(bridge("bridge"), quiet)),
            "bridge+log": stack.enter_context(server(bridge("bridge+log"), logging)),
        }
        urls = {name: f"http://127.0.0.1:{port}{path}" for name, port in ports.items()}
        for url in urls.values():
            wait_for(url)  # for the bridges, this read warms the cache
        for _ in range(args.rounds):
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            load = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s"]
            runs = {
                name: subprocess.Popen(pinned([*load, url], 1), stdout=subprocess.PIPE, text=True)
                for name, url in urls.items()
            }
            outputs = {name: run.communicate()[0] for name, run in runs.items()}
            for name, pid in pids.items():
                total = wrk_counts(outputs[name], urls[name])
                rates[name].append(total / args.seconds)
                costs[name].append((cpu_seconds(pid) - before[name]) / total * 1e6)

    print(f"body: {len(body)} bytes; {args.rounds} rounds of {args.seconds} s, the three servers at once on one core,")
    print(f"each driven by wrk -t1 -c{args.connections} from the other core")
    for name in ports:
        shown = ", ".join(f"{r:,.0f}" for r in rates[name])
        print(f"{name:11s} {statistics.median(rates[name]):>7,.0f} req/s ({shown})   "
              f"{statistics.median(costs[name]):6.1f} µs CPU/request")  # fmt: skip
    summary: dict[str, dict[str, float]] = {}
    for name in ("bridge", "bridge+log"):
        rate_ratio = statistics.median(r / b for r, b in zip(rates[name], rates["bare"], strict=True))
        cost_ratio = statistics.median(b / c for c, b in zip(costs[name], costs["bare"], strict=True))
        summary[name] = {"rate_ratio": round(rate_ratio, 3), "cpu_cost_ratio": round(cost_ratio, 3)}
        print(f"{name + ' / bare':18s} rate ratio {rate_ratio:.2f}x   CPU-cost ratio {cost_ratio:.2f}x   "
              "(goal ≥ 0.75x)")  # fmt: skip
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
