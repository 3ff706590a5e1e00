#!/usr/bin/env python3
"""The DICOMweb gateway against a real Orthanc, each figure against Orthanc's own DICOMweb measured in the same run:

- a ~200 MB series (100 instances of 1024x1024 16-bit, uncompressed) retrieved whole, multipart
  (``GET /dicom-web/studies/{s}/series/{se}``), through the gateway against directly: the rate ratio (goal
  ≥ 0.90x), and how much the bridge's RSS grows while it relays (goal ≤ 32 MiB);
- the first frame of an instance (``…/instances/{i}/frames/1``, 2 MiB) through the gateway against directly, the
  token and the patient check warm (the study in the cache): the latency ratio (goal ≤ 1.10x); asked once
  uncompressed (``Accept-Encoding: identity``) and once as a browser asks (``gzip, deflate``: Orthanc then
  compresses the frame, which takes most of the time).

The bridge runs as a user runs it in front of a PACS with authorization: ``imaging-bridge serve`` with its
defaults (access log on, audit log on), ``BRIDGE_AUTH=smart`` verifying an RS256 JWT (``patient/*.rs`` for the
study's patient) against a JWKS this script serves, as ``bench_auth_read.py`` does. Beside it, a *bare relay*: a
minimal aiohttp app copying the PACS's answer through as the gateway does (256 KiB chunks), with no
authorization, log or checks; what relaying through a Python process costs on this machine, whatever the bridge
does. Each round asks Orthanc directly, then the gateway and the bare relay (their order alternating); each figure
of a round is taken to the mean of the direct figures of its round and the next (Orthanc's own time wanders from
one request to the next), and the figure reported is the median of those ratios. Every path is read by the same
client: aiohttp, ``iter_chunked`` of 1 MiB, discarded, bodies not decompressed.

    .venv/bin/python scripts/bench_gateway.py [--rounds 15] [--frames 201]

Needs Debian's orthanc and orthanc-dicomweb (scripts/test installs them). The series is generated once and kept
in the system's temporary directory (``bridge-bench-gateway-*``); loading it into Orthanc takes seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pydicom
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_auth_read import jwks_server
from benchkit import cpu_seconds, free_port, wait_for

from tests.support.dicomgen import encode, simple_study
from tests.support.orthanc import OrthancServer

ROOT = Path(__file__).resolve().parents[1]
SERIES = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAME = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
#: Accept-Encoding of the frame requests: uncompressed, and a browser's (Orthanc then gzips the frame).
ENCODINGS = ("identity", "gzip, deflate")
SIDE = 1024  # rows and columns; 16 bits a pixel: 2 MiB of pixel data an instance
PATIENT = "BENCH-GW"
READ = 1024 * 1024  # the client's chunk
PATHS = ("direct", "gateway", "relay")
WARM_FRAMES = 8  # instances whose first frames are asked: 16 MiB, held in Orthanc's storage cache (128 MiB)

BARE_RELAY = """
import sys
import aiohttp
from aiohttp import web

PACS, AUTHORIZATION = sys.argv[2], sys.argv[3]

async def session(app):
    app["pacs"] = aiohttp.ClientSession(headers={"Authorization": AUTHORIZATION}, auto_decompress=False,
                                        skip_auto_headers=("Accept-Encoding",))
    yield
    await app["pacs"].close()

async def relay(request):
    headers = {name: value for name in ("Accept", "Accept-Encoding") if (value := request.headers.get(name))}
    url = PACS + request.raw_path.removeprefix("/dicom-web")
    async with request.app["pacs"].get(url, headers=headers) as upstream:
        response = web.StreamResponse(status=upstream.status)
        for name in ("Content-Type", "Content-Length", "Content-Encoding"):
            if (value := upstream.headers.get(name)) is not None:
                response.headers[name] = value
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(256 * 1024):
            await response.write(chunk)
        await response.write_eof()
        return response

app = web.Application()
app.cleanup_ctx.append(session)
app.router.add_get("/dicom-web/{path:.*}", relay)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def generated(count: int) -> tuple[dict[str, Any], list[Path]]:
    """The series' files (made once, then reused from the temporary directory) and its UIDs."""
    where = Path(tempfile.gettempdir()) / f"bridge-bench-gateway-{count}x{SIDE}-v2"
    manifest = where / "manifest.json"
    if manifest.exists():
        uids = json.loads(manifest.read_text())
        return uids, [where / f"{i:04d}.dcm" for i in range(count)]
    where.mkdir(exist_ok=True)
    spec = simple_study(series=1, instances=count, patient_id=PATIENT, patient_name="Bench^Gateway")
    files = []
    for i, part10 in enumerate(encode(spec)):
        ds = pydicom.dcmread(io.BytesIO(part10))
        ds.Rows, ds.Columns, ds.SamplesPerPixel = SIDE, SIDE, 1
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = os.urandom(SIDE * SIDE * 2)  # noise: the same bytes whatever compresses them
        ds["PixelData"].VR = "OW"
        path = where / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    series = spec.series[0]
    uids = {"study": spec.uid, "series": series.uid, "instances": [i.uid for i in series.instances]}
    manifest.write_text(json.dumps(uids))
    return uids, files


def status_kib(pid: int, field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())[1])  # type: ignore[index]


def waited(pid: int) -> float:
    """Seconds the threads of a process have spent runnable but waiting for a CPU (the scheduler's run queue)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def reset_peak(pid: int) -> None:
    """A process's VmHWM back to its current RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def fetch(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[float, float, int]:
    """Seconds to the first byte of the body and to the last, and the body's length; the body discarded."""
    started = time.perf_counter()
    first = 0.0
    size = 0
    async with session.get(url, headers=headers) as response:
        if response.status != 200:
            raise SystemExit(f"{url} answered {response.status}: {(await response.read())[:300]!r}")
        async for chunk in response.content.iter_chunked(READ):
            if not size:
                first = time.perf_counter() - started
            size += len(chunk)
    return first, time.perf_counter() - started, size


Measure = Callable[[str], Coroutine[Any, Any, float]]
Figures = dict[str, list[float]]


async def rounds(count: int, measure: Measure) -> tuple[Figures, Figures]:
    """``count`` rounds of direct, gateway and relay (their order alternating), and a last direct: every path's
    figures, and the gateway's and relay's ratios to the mean of the direct figures of their round and the next."""
    figures: dict[str, list[float]] = {name: [] for name in PATHS}
    figures["direct"].append(await measure("direct"))
    for i in range(count):
        for name in ("gateway", "relay") if i % 2 == 0 else ("relay", "gateway"):
            figures[name].append(await measure(name))
        figures["direct"].append(await measure("direct"))
    ratios = {
        name: [figure / ((before + after) / 2) for figure, before, after in
               zip(figures[name], figures["direct"], figures["direct"][1:], strict=False)]
        for name in ("gateway", "relay")
    }  # fmt: skip
    return figures, ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=15, help="series retrieves through the gateway")
    parser.add_argument("--frames", type=int, default=201, help="first-frame requests through the gateway, each way")
    parser.add_argument("--bridge-env", action="append", default=[], metavar="NAME=VALUE",
                        help="a bridge setting beyond the defaults (repeatable): BRIDGE_ACCESS_LOG=false")  # fmt: skip
    args = parser.parse_args()

    started = time.perf_counter()
    uids, files = generated(args.instances)
    total = sum(f.stat().st_size for f in files)
    print(f"series: {len(files)} instances, {total / 2**20:.0f} MiB of files ({time.perf_counter() - started:.0f} s)")

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks_url = jwks_server(json.dumps({"keys": [{**public, "kid": "bench", "alg": "RS256", "use": "sig"}]}).encode())

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        orthanc = stack.enter_context(OrthancServer(tmp / "orthanc"))
        started = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda chunk: orthanc.upload_many(p.read_bytes() for p in chunk), [files[0::2], files[1::2]]))
        print(f"loaded into Orthanc in {time.perf_counter() - started:.0f} s")
        basic = "Basic " + base64.b64encode(f"{orthanc.username}:{orthanc.password}".encode()).decode()

        port, relay_port = free_port(), free_port()
        public_url = f"http://127.0.0.1:{port}/fhir"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        # This checkout's bridge, whichever the environment has installed.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env.update(BRIDGE_QIDO_URL=orthanc.dicomweb_url, BRIDGE_PACS_USERNAME=orthanc.username,
                   BRIDGE_PACS_PASSWORD=orthanc.password, BRIDGE_AUTH="smart", BRIDGE_AUTH_JWKS_URL=jwks_url,
                   BRIDGE_PUBLIC_URL=public_url, BRIDGE_PORT=str(port))  # fmt: skip
        env.update(setting.split("=", 1) for setting in args.bridge_env)
        log = tmp / "bridge.stdout"  # the access and audit logs' lines
        (tmp / "relay.py").write_text(BARE_RELAY)
        processes = {}
        with log.open("wb") as stdout:
            processes["gateway"] = subprocess.Popen([sys.executable, "-m", "bridge", "serve"], cwd=tmp, env=env,
                                                    stdout=stdout, stderr=subprocess.DEVNULL)  # fmt: skip
        processes["relay"] = subprocess.Popen(
            [sys.executable, str(tmp / "relay.py"), str(relay_port), orthanc.dicomweb_url, basic]
        )
        for process in processes.values():
            stack.callback(process.wait, timeout=30)
            stack.callback(process.terminate)
        wait_for(f"http://127.0.0.1:{port}/healthz")

        now = int(time.time())
        claims = {"iss": "bench", "aud": public_url, "sub": "bench-user", "client_id": "bench", "iat": now,
                  "exp": now + 3600, "scope": "launch/patient patient/*.rs", "patient": PATIENT}  # fmt: skip
        token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"})
        study, series = uids["study"], uids["series"]
        series_path = f"/studies/{study}/series/{series}"
        targets = {
            "direct": (orthanc.dicomweb_url, {"Authorization": basic}),
            "gateway": (f"http://127.0.0.1:{port}/dicom-web", {"Authorization": f"Bearer {token}"}),
            "relay": (f"http://127.0.0.1:{relay_port}/dicom-web", {}),
        }
        wait_for(targets["relay"][0] + series_path + "/metadata")
        pid, orthanc_pid = processes["gateway"].pid, orthanc._process.pid  # type: ignore[union-attr]
        relay_pid = processes["relay"].pid

        # (a) the series, whole. A fresh connection each time, as a viewer's first retrieve of a study has.
        sizes: dict[str, set[int]] = {name: set() for name in PATHS}
        growth: list[float] = []
        #: CPU seconds per retrieve: the relaying process's (bridge or bare relay), Orthanc's, this client's.
        spent: dict[str, dict[str, list[float]]] = {
            n: {"relay": [], "waiting": [], "orthanc": [], "client": []} for n in PATHS
        }
        relays = {"gateway": pid, "relay": relay_pid}

        async def series_read(name: str) -> float:
            base, auth = targets[name]
            if name == "gateway":
                reset_peak(pid)
                before = status_kib(pid, "VmRSS")
            relay_before = cpu_seconds(relays[name]) if name in relays else 0.0
            wait_before = waited(relays[name]) if name in relays else 0.0
            pacs_before, client_before = cpu_seconds(orthanc_pid), time.process_time()
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as client:
                _, seconds, size = await fetch(client, base + series_path, {**auth, "Accept": SERIES})
            spent[name]["orthanc"].append(cpu_seconds(orthanc_pid) - pacs_before)
            spent[name]["client"].append(time.process_time() - client_before)
            if name in relays:
                spent[name]["relay"].append(cpu_seconds(relays[name]) - relay_before)
                spent[name]["waiting"].append(waited(relays[name]) - wait_before)
            sizes[name].add(size)
            if name == "gateway":
                growth.append((status_kib(pid, "VmHWM") - before) / 1024)
            return size / seconds / 2**20

        # A first read of each warms the token, the study's cache entry and Orthanc's own caches.
        rss_start = status_kib(pid, "VmRSS")
        for name in PATHS:
            asyncio.run(series_read(name))
        rss_warm = status_kib(pid, "VmRSS")
        growth.clear()
        for figures in spent.values():
            for values in figures.values():
                values.clear()
        rates, rate_ratios = asyncio.run(rounds(args.rounds, series_read))
        rss_end, hwm_all = status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM")
        if max(max(s) for s in sizes.values()) - min(min(s) for s in sizes.values()) > 4096:
            raise SystemExit(f"the answers' lengths differ by more than their multipart boundaries: {sizes}")

        # (b) the first frame, on kept-alive connections (a viewer's), the token and the study warm.
        # A few instances, asked of Orthanc once before the figures start: every path then finds them in Orthanc's
        # storage cache (the first to ask an instance would otherwise pay its reading for the others).
        instances = uids["instances"][:WARM_FRAMES]
        frames = {}
        for encoding in ENCODINGS:
            firsts: dict[str, list[float]] = {name: [] for name in PATHS}
            frame_cpu: list[float] = []

            async def run(encoding: str = encoding, firsts: dict[str, list[float]] = firsts,
                          frame_cpu: list[float] = frame_cpu) -> tuple[Figures, Figures]:  # fmt: skip
                clients = {name: aiohttp.ClientSession(auto_decompress=False) for name in PATHS}
                asked = iter(range(10**9))

                async def frame_read(name: str) -> float:
                    base, auth = targets[name]
                    instance = instances[next(asked) % len(instances)]
                    headers = {**auth, "Accept": FRAME, "Accept-Encoding": encoding}
                    url = f"{base}{series_path}/instances/{instance}/frames/1"
                    first, seconds, _ = await fetch(clients[name], url, headers)
                    firsts[name].append(first)
                    return seconds

                try:
                    for name in PATHS:  # connections opened, the token seen, the instances read once
                        for _ in instances:
                            await frame_read(name)
                    for values in firsts.values():
                        values.clear()
                    # CPU time is counted in clock ticks: summed over all the requests of the rounds
                    before = [cpu_seconds(pid), cpu_seconds(relay_pid), waited(pid), waited(relay_pid)]
                    figures = await rounds(args.frames, frame_read)
                    after = [cpu_seconds(pid), cpu_seconds(relay_pid), waited(pid), waited(relay_pid)]
                    frame_cpu.extend((a - b) / args.frames for a, b in zip(after, before, strict=True))
                    return figures
                finally:
                    for client in clients.values():
                        await client.close()

            latencies, ratios = asyncio.run(run())
            frames[encoding] = (latencies, ratios, firsts, frame_cpu)
        for process in processes.values():
            process.terminate()
            process.wait(timeout=30)
        logged = len(log.read_bytes().splitlines())

    def median(values: list[float]) -> float:
        return statistics.median(values)

    def listed(values: list[float], form: str = ".2f") -> str:
        return ", ".join(format(v, form) for v in values)

    size = max(sizes["gateway"]) / 2**20
    print(f"\n(a) the series, {size:.0f} MiB multipart, {args.rounds} rounds, medians")
    for name in PATHS:
        cpu = spent[name]
        relaying = ""
        if name in relays:
            relaying = f"relaying {median(cpu['relay']):.2f} s (and {median(cpu['waiting']):.2f} s waiting for a CPU), "
        print(f"  {name:8s} {median(rates[name]):6.0f} MiB/s   CPU per retrieve: {relaying}Orthanc "
              f"{median(cpu['orthanc']):.2f} s, client {median(cpu['client']):.2f} s   "
              f"({listed(rates[name], '.0f')})")  # fmt: skip
    for name in ("gateway", "relay"):
        print(f"  rate ratio {name} / direct {median(rate_ratios[name]):.2f}x   (per round: "
              f"{listed(rate_ratios[name])}; goal ≥ 0.90x)")  # fmt: skip
    paired = [g / r for g, r in zip(rates["gateway"], rates["relay"], strict=True)]
    print(f"  rate ratio gateway / relay  {median(paired):.2f}x (per round)")
    print(f"  bridge RSS growth during a retrieve: at most {max(growth):.1f} MiB (per retrieve: "
          f"{listed(growth, '.1f')}; goal ≤ 32 MiB)")  # fmt: skip
    print(
        f"  bridge RSS: {rss_start / 1024:.0f} MiB before any retrieve, {rss_warm / 1024:.0f} MiB after the "
        f"first, {rss_end / 1024:.0f} MiB at the end; peak over the rounds {hwm_all / 1024:.0f} MiB"
    )
    summary: dict[str, float] = {
        "series_rate_ratio": round(median(rate_ratios["gateway"]), 3),
        "relay_rate_ratio": round(median(rate_ratios["relay"]), 3),
        "rss_growth_mib": round(max(growth), 1),
    }
    for encoding, (latencies, ratios, firsts, frame_cpu) in frames.items():
        print(
            f"\n(b) the first frame (2 MiB), Accept-Encoding: {encoding}, {args.frames} rounds, kept-alive connections"
        )
        for name in PATHS:
            print(f"  {name:8s} {median(latencies[name]) * 1000:6.1f} ms   (first byte "
                  f"{median(firsts[name]) * 1000:.1f} ms)")  # fmt: skip
        for name in ("gateway", "relay"):
            quartiles = statistics.quantiles(ratios[name], n=4)
            print(f"  latency ratio {name} / direct {median(ratios[name]):.2f}x   (middle half "
                  f"{quartiles[0]:.2f}-{quartiles[2]:.2f}; goal ≤ 1.10x)")  # fmt: skip
        paired = [g / r for g, r in zip(latencies["gateway"], latencies["relay"], strict=True)]
        print(f"  latency ratio gateway / relay  {median(paired):.2f}x (per round)")
        print(f"  per frame, bridge: CPU {frame_cpu[0] * 1000:.2f} ms, waiting for a CPU {frame_cpu[2] * 1000:.2f} ms; "
              f"bare relay: {frame_cpu[1] * 1000:.2f} ms, {frame_cpu[3] * 1000:.2f} ms")  # fmt: skip
        key_name = encoding.split(",")[0]
        summary[f"frame_ratio_{key_name}"] = round(median(ratios["gateway"]), 3)
        summary[f"relay_frame_ratio_{key_name}"] = round(median(ratios["relay"]), 3)
    print(f"\naccess and audit log lines written: {logged}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
