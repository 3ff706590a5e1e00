#!/usr/bin/env python3
"""The DICOMweb gateway against a real Orthanc, each figure against Orthanc's own DICOMweb measured in the same run:

- a ~200 MB series (100 instances of 1024x1024 16-bit, uncompressed) retrieved whole, multipart
  (``GET /dicom-web/studies/{s}/series/{se}``), through the gateway against directly: the rate ratio (goal
  ≥ 0.90x), and how much the bridge's RSS grows while it relays (goal ≤ 32 MiB);
- the first frame of an instance (``…/instances/{i}/frames/1``, 2 MiB) through the gateway against directly, the
  token and the patient check warm (the study in the cache): the latency ratio (goal ≤ 1.10x).

The bridge runs as a user runs it in front of a PACS with authorization: ``imaging-bridge serve`` with its
defaults (access log on, audit log on), ``BRIDGE_AUTH=smart`` verifying an RS256 JWT (``patient/*.rs`` for the
study's patient) against a JWKS this script serves, as ``bench_auth_read.py`` does. Direct and gateway requests
alternate, each gateway request's ratio taken to the mean of the direct requests just before and after it (Orthanc's
own time wanders from one request to the next); the figure is the median of those ratios. Both are read by the
same client: aiohttp, ``iter_chunked`` of 1 MiB, discarded.

    .venv/bin/python scripts/bench_gateway.py [--rounds 9] [--frames 61]

Needs Debian's orthanc and orthanc-dicomweb (scripts/test installs them). The series is generated once and kept
in the system's temporary directory (``bridge-bench-gateway-*``); loading it into Orthanc takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
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
from typing import Any, NamedTuple

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
SIDE = 1024  # rows and columns; 16 bits a pixel: 2 MiB of pixel data an instance
PATIENT = "BENCH-GW"
READ = 1024 * 1024  # the client's chunk


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
        ds.PixelData = os.urandom(SIDE * SIDE * 2)
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


Measure = Callable[[], Coroutine[Any, Any, float]]


async def alternated(rounds: int, direct: Measure, gateway: Measure) -> tuple[list[float], list[float], list[float]]:
    """Direct, gateway, direct, gateway, … direct: the direct figures, the gateway's, and each gateway figure's
    ratio to the mean of the direct ones on either side of it."""
    directs = [await direct()]
    gateways, ratios = [], []
    for _ in range(rounds):
        gateways.append(await gateway())
        directs.append(await direct())
        ratios.append(gateways[-1] / ((directs[-2] + directs[-1]) / 2))
    return directs, gateways, ratios


#: Accept-Encoding of the frame requests: uncompressed, and a browser's (Orthanc then gzips the frame).
ENCODINGS = ("identity", "gzip, deflate")


class Frames(NamedTuple):
    directs: list[float]
    gateways: list[float]
    ratios: list[float]
    firsts: dict[str, list[float]]  # seconds to the first byte of the body


async def frames(targets: dict[str, tuple[str, dict[str, str]]], series_path: str, instances: list[str], encoding: str,
           rounds: int) -> Frames:  # fmt: skip
    """First frames of the series' instances, direct and through the gateway in turn (each instance asked of
    both), on one kept-alive connection each, as a viewer holds them."""
    firsts: dict[str, list[float]] = {name: [] for name in targets}
    clients: dict[str, aiohttp.ClientSession] = {}
    asked = iter(range(10**9))

    def read(name: str) -> Measure:
        base, auth = targets[name]

        async def one() -> float:
            if name not in clients:  # the connection opened and the token seen before the figures start
                clients[name] = aiohttp.ClientSession(auto_decompress=False)
                warm = f"{base}{series_path}/instances/{instances[0]}/frames/1"
                await fetch(clients[name], warm, {**auth, "Accept": FRAME})
            instance = instances[(next(asked) // 2) % len(instances)]
            headers = {**auth, "Accept": FRAME, "Accept-Encoding": encoding}
            first, seconds, _ = await fetch(clients[name], f"{base}{series_path}/instances/{instance}/frames/1",
                                            headers)  # fmt: skip
            firsts[name].append(first)
            return seconds

        return one

    try:
        directs, gateways, ratios = await alternated(rounds, read("direct"), read("gateway"))
    finally:
        for client in clients.values():
            await client.close()
    return Frames(directs, gateways, ratios, firsts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=9, help="series retrieves through the gateway")
    parser.add_argument("--frames", type=int, default=61, help="first-frame requests through the gateway")
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

        port = free_port()
        public_url = f"http://127.0.0.1:{port}/fhir"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        # This checkout's bridge, whichever the environment has installed.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env.update(BRIDGE_QIDO_URL=orthanc.dicomweb_url, BRIDGE_PACS_USERNAME=orthanc.username,
                   BRIDGE_PACS_PASSWORD=orthanc.password, BRIDGE_AUTH="smart", BRIDGE_AUTH_JWKS_URL=jwks_url,
                   BRIDGE_PUBLIC_URL=public_url, BRIDGE_PORT=str(port))  # fmt: skip
        log = tmp / "bridge.stdout"  # the access and audit logs' lines
        with log.open("wb") as stdout:
            bridge = subprocess.Popen([sys.executable, "-m", "bridge", "serve"], cwd=tmp, env=env, stdout=stdout,
                                      stderr=subprocess.DEVNULL)  # fmt: skip
        stack.callback(bridge.wait, timeout=30)
        stack.callback(bridge.terminate)
        wait_for(f"http://127.0.0.1:{port}/healthz")

        now = int(time.time())
        claims = {"iss": "bench", "aud": public_url, "sub": "bench-user", "client_id": "bench", "iat": now,
                  "exp": now + 3600, "scope": "launch/patient patient/*.rs", "patient": PATIENT}  # fmt: skip
        token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"})
        pair = base64.b64encode(f"{orthanc.username}:{orthanc.password}".encode()).decode()
        study, series = uids["study"], uids["series"]
        series_path = f"/studies/{study}/series/{series}"
        targets = {
            "direct": (orthanc.dicomweb_url, {"Authorization": f"Basic {pair}"}),
            "gateway": (f"http://127.0.0.1:{port}/dicom-web", {"Authorization": f"Bearer {token}"}),
        }
        pid = bridge.pid

        async def session() -> aiohttp.ClientSession:
            return aiohttp.ClientSession(read_bufsize=4 * READ, timeout=aiohttp.ClientTimeout(total=600))

        # (a) the series, whole. A fresh connection each time, as a viewer's first retrieve of a study has.
        sizes: dict[str, set[int]] = {"direct": set(), "gateway": set()}
        growth: list[float] = []
        rss_start = status_kib(pid, "VmRSS")
        cpu: list[float] = []
        #: CPU seconds per retrieve of Orthanc and of this client, direct and through the gateway
        spent: dict[str, dict[str, list[float]]] = {n: {"orthanc": [], "client": []} for n in targets}
        orthanc_pid = orthanc._process.pid  # type: ignore[union-attr]

        def series_read(name: str) -> Measure:
            base, auth = targets[name]

            async def read() -> float:
                if name == "gateway":
                    reset_peak(pid)
                    before, cpu_before = status_kib(pid, "VmRSS"), cpu_seconds(pid)
                pacs_before, client_before = cpu_seconds(orthanc_pid), time.process_time()
                async with await session() as client:
                    _, seconds, size = await fetch(client, base + series_path, {**auth, "Accept": SERIES})
                spent[name]["orthanc"].append(cpu_seconds(orthanc_pid) - pacs_before)
                spent[name]["client"].append(time.process_time() - client_before)
                sizes[name].add(size)
                if name == "gateway":
                    growth.append((status_kib(pid, "VmHWM") - before) / 1024)
                    cpu.append(cpu_seconds(pid) - cpu_before)
                return size / seconds / 2**20

            return read

        # A first read of each warms the token, the study's cache entry and Orthanc's own caches.
        asyncio.run(series_read("direct")())
        asyncio.run(series_read("gateway")())
        rss_warm = status_kib(pid, "VmRSS")
        growth.clear()
        cpu.clear()
        direct_rates, gateway_rates, series_ratios = asyncio.run(
            alternated(args.rounds, series_read("direct"), series_read("gateway"))
        )  # fmt: skip
        rss_end, hwm_all = status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM")
        if max(sizes["gateway"]) - min(sizes["direct"]) > 4096:  # only the multipart boundaries may differ
            raise SystemExit(f"the gateway's answers ({sizes['gateway']}) are not the PACS's ({sizes['direct']})")

        # (b) the first frame, on kept-alive connections (a viewer's), the token and the study warm; asked once
        # uncompressed (Accept-Encoding: identity) and once as a browser asks (gzip, which Orthanc then applies).
        instances = uids["instances"]
        frame_figures = {encoding: asyncio.run(frames(targets, series_path, instances, encoding, args.frames))
                         for encoding in ENCODINGS}  # fmt: skip
        bridge.terminate()
        bridge.wait(timeout=30)
        logged = len(log.read_bytes().splitlines())

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:7.1f} ms"

    series_ratio = statistics.median(series_ratios)
    size = max(sizes["gateway"]) / 2**20
    print(f"\n(a) the series, {size:.0f} MiB multipart, {args.rounds} retrieves through the gateway, medians")
    print(f"  direct   {statistics.median(direct_rates):7.0f} MiB/s   ({', '.join(f'{r:.0f}' for r in direct_rates)})")
    print(f"  gateway  {statistics.median(gateway_rates):7.0f} MiB/s   "
          f"({', '.join(f'{r:.0f}' for r in gateway_rates)})")  # fmt: skip
    print(f"  rate ratio gateway / direct {series_ratio:.2f}x   (per retrieve: "
          f"{', '.join(f'{r:.2f}' for r in series_ratios)}; goal ≥ 0.90x)")  # fmt: skip
    print(
        f"  CPU per retrieve: bridge {statistics.median(cpu):.2f} s; Orthanc direct "
        f"{statistics.median(spent['direct']['orthanc']):.2f} s, through the gateway "
        f"{statistics.median(spent['gateway']['orthanc']):.2f} s; this client direct "
        f"{statistics.median(spent['direct']['client']):.2f} s, through the gateway "
        f"{statistics.median(spent['gateway']['client']):.2f} s"
    )
    print(f"  bridge RSS growth during a retrieve: at most {max(growth):.1f} MiB (per retrieve: "
          f"{', '.join(f'{g:.1f}' for g in growth)}; goal ≤ 32 MiB)")  # fmt: skip
    print(
        f"  bridge RSS: {rss_start / 1024:.0f} MiB before any retrieve, {rss_warm / 1024:.0f} MiB after the "
        f"first, {rss_end / 1024:.0f} MiB at the end; peak over the rounds {hwm_all / 1024:.0f} MiB"
    )
    for encoding, got in frame_figures.items():
        quartiles = statistics.quantiles(got.ratios, n=4)
        print(f"\n(b) the first frame (2 MiB), Accept-Encoding: {encoding}, {args.frames} requests through the "
              "gateway, kept-alive connections")  # fmt: skip
        print(f"  direct   {ms(got.directs)}   (first byte {ms(got.firsts['direct'])})")
        print(f"  gateway  {ms(got.gateways)}   (first byte {ms(got.firsts['gateway'])})")
        print(f"  latency ratio gateway / direct {statistics.median(got.ratios):.2f}x   (middle half "
              f"{quartiles[0]:.2f}-{quartiles[2]:.2f}; goal ≤ 1.10x)")  # fmt: skip
    print(f"\naccess and audit log lines written: {logged}")
    summary = {
        "series_rate_ratio": round(series_ratio, 3),
        "rss_growth_mib": round(max(growth), 1),
        **{
            f"frame_latency_ratio_{encoding.split(',')[0]}": round(statistics.median(got.ratios), 3)
            for encoding, got in frame_figures.items()
        },
        "direct_mib_s": round(statistics.median(direct_rates)),
        "gateway_mib_s": round(statistics.median(gateway_rates)),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
