#!/usr/bin/env python3
"""Warm-read benchmark: a cached ImagingStudy from the bridge against a bare aiohttp app serving the same bytes.

Both servers run in this run, on the same core, in alternating rounds; wrk drives them from the other core. Two
figures per server: requests per second (wrk), and the server's CPU time per request (from /proc, around the
same wrk run). The ratio of medians is what matters; the CPU-time ratio is the steadier of the two on a shared
machine, where another tenant's load changes how much of the core a server gets but not what a request costs.
The bridge is measured with its metrics and ETag handling (always on), without and with its access log.

    .venv/bin/python scripts/bench_warm_read.py [--seconds 5] [--rounds 3] [--connections 32]

Needs wrk (Debian: apt-get install wrk); taskset (util-linux) pins the processes when there are two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pinned(command: list[str], core: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core), *command]
    return command


def wait_for(url: str, seconds: float = 30) -> bytes:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return bytes(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextmanager
def server(command: list[str], env: dict[str, str]) -> Iterator[int]:
    """Run a server pinned to core 0; yields its pid (taskset execs, so the pid is the server's)."""
    process = subprocess.Popen(pinned(command, 0), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield process.pid
    finally:
        process.terminate()
        process.wait(timeout=15)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, seconds: int, connections: int, pid: int) -> tuple[float, float]:
    """Requests per second, and the server's CPU microseconds per request, over one wrk run."""
    command = pinned(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url], 1)
    before = cpu_seconds(pid)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    used = cpu_seconds(pid) - before
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        raise SystemExit(f"{url} answered errors under load:\n{output}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if not found or not total:
        raise SystemExit(f"cannot read wrk's output:\n{output}")
    return float(found[1]), used / int(total[1]) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2

    base_env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    bare_port, bridge_port = free_port(), free_port()
    bare_script = workdir / "bare.py"
    bare_script.write_text(BARE_APP)
    results: dict[str, list[float]] = {"bare": [], "bridge": [], "bridge+log": []}
    cpu: dict[str, list[float]] = {"bare": [], "bridge": [], "bridge+log": []}

    # The embedded default (pydicom's samples); its largest study, read once so the cache is warm.
    with server([sys.executable, "-m", "bridge", "serve", "--port", str(bridge_port)],
                {**base_env, "BRIDGE_ACCESS_LOG": "false"}):  # fmt: skip
        study = "1.2.826.0.1.3680043.8.498.64108189007039777171766333999874882472"
        body = wait_for(f"http://127.0.0.1:{bridge_port}/fhir/ImagingStudy/{study}")
    (workdir / "body.json").write_bytes(body)
    path = f"/fhir/ImagingStudy/{study}"

    def measure(name: str, port: int, pid: int) -> None:
        wait_for(f"http://127.0.0.1:{port}{path}")  # for the bridge, this read warms the cache
        rate, micros = wrk(f"http://127.0.0.1:{port}{path}", args.seconds, args.connections, pid)
        results[name].append(rate)
        cpu[name].append(micros)

    for _ in range(args.rounds):
        with server([sys.executable, str(bare_script), str(bare_port), str(workdir / "body.json")], base_env) as pid:
            measure("bare", bare_port, pid)
        for name, logging in (("bridge", "false"), ("bridge+log", "true")):
            env = {**base_env, "BRIDGE_ACCESS_LOG": logging}
            with server([sys.executable, "-m", "bridge", "serve", "--port", str(bridge_port)], env) as pid:
                measure(name, bridge_port, pid)

    rate = {name: statistics.median(values) for name, values in results.items()}
    cost = {name: statistics.median(values) for name, values in cpu.items()}
    print(f"body: {len(body)} bytes; wrk -t1 -c{args.connections} -d{args.seconds}s, {args.rounds} rounds each")
    for name in results:
        shown = ", ".join(f"{r:,.0f}" for r in results[name])
        print(f"{name:11s} {rate[name]:>8,.0f} req/s ({shown})   {cost[name]:6.1f} µs CPU/request")
    for name in ("bridge", "bridge+log"):
        print(f"{name + ' / bare':18s} rate ratio {rate[name] / rate['bare']:.2f}x   "
              f"CPU-cost ratio {cost['bare'] / cost[name]:.2f}x   (goal ≥ 0.75x)")  # fmt: skip
    print(json.dumps({"req_per_s": {k: round(v) for k, v in rate.items()},
                      "cpu_us_per_request": {k: round(v, 1) for k, v in cost.items()}}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
