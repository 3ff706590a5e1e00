#!/usr/bin/env python3
"""Warm reads of one cached study in R5 and in R4 from the same bridge: what serving the second version costs.

One ``imaging-bridge serve`` (the embedded default, access log off) pinned to core 0 holds the samples' largest
study in its cache; ``wrk -t1 -c16`` from core 1 reads it for ``--window`` seconds at a time, in turns whose order
rotates per cycle: at ``/fhir/ImagingStudy/{id}`` (R5), at ``/fhir/r4/ImagingStudy/{id}`` (R4), and at ``/fhir``
with ``Accept: application/fhir+json; fhirVersion=4.0`` (R4 by negotiation). Printed per read: the median rate,
the median of per-cycle ratios to R5's rate, and the bridge's CPU time per request (from /proc: the steadier
figure on a shared machine). Needs the ``/fhir/r4`` base and negotiation (issue 14's web side), wrk and taskset.

    .venv/bin/python scripts/bench_warm_versions.py [--cycles 24] [--window 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from benchkit import cpu_seconds, free_port, wait_for

STUDY = "1.2.826.0.1.3680043.8.498.64108189007039777171766333999874882472"  # the samples' largest study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=24)
    parser.add_argument("--window", type=int, default=2)
    args = parser.parse_args()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")} | {"BRIDGE_ACCESS_LOG": "false"}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    command = ["taskset", "-c", "0", sys.executable, "-m", "bridge", "serve", "--port", str(port)]
    bridge = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    reads = {
        "R5": (f"{base}/fhir/ImagingStudy/{STUDY}", []),
        "R4": (f"{base}/fhir/r4/ImagingStudy/{STUDY}", []),
        "R4 by Accept": (f"{base}/fhir/ImagingStudy/{STUDY}", ["-H", "Accept: application/fhir+json; fhirVersion=4.0"]),
    }
    try:
        for url, _ in reads.values():
            wait_for(url)  # the first read caches the study
        names = list(reads)
        rates: dict[str, list[float]] = {name: [] for name in names}
        costs: dict[str, list[float]] = {name: [] for name in names}
        for cycle in range(args.cycles):
            for name in names[cycle % len(names) :] + names[: cycle % len(names)]:
                url, headers = reads[name]
                before = cpu_seconds(bridge.pid)
                load = ["taskset", "-c", "1", "wrk", "-t1", "-c16", f"-d{args.window}s", *headers, url]
                output = subprocess.run(load, capture_output=True, text=True, check=True).stdout
                requests = int(output.split(" requests in")[0].split()[-1])
                rates[name].append(requests / args.window)
                costs[name].append((cpu_seconds(bridge.pid) - before) / requests * 1e6)
        for name in names:
            ratio = statistics.median(a / b for a, b in zip(rates[name], rates["R5"], strict=True))
            print(f"{name:13} {statistics.median(rates[name]):8.0f} requests/s  {ratio:.3f}x R5's rate  "
                  f"{statistics.median(costs[name]):5.1f} µs CPU per request")  # fmt: skip
    finally:
        bridge.terminate()
        bridge.wait()


if __name__ == "__main__":
    main()
