#!/usr/bin/env python3
"""Cold read of a 10,000-instance CT study (4 series) against a real Orthanc, each figure against a baseline
measured in the same run:

- the bridge's cold read (``Cache-Control: no-cache``) against the *QIDO floor*: the study query, the series query
  and every series' instance query issued at once, bodies parsed with orjson, nothing else (goal ≤ 1.10x);
- the bridge's peak RSS after those reads (goal ≤ 128 MiB);
- 50 concurrent cold reads of the study, counted at the PACS (the bridge's own PACS request counter) against
  one read;
- for reference, the naive alternative: dicomweb-client's synchronous client plus fhir.resources models.

The bridge is measured as a user runs it: ``imaging-bridge serve`` with its defaults (access log on), told only
where the PACS is (URL, credentials) and which port to take. Beside it, in the same rounds, a second bridge with
the access log off (``BRIDGE_ACCESS_LOG=false``): the way this script measured until 2026-12-01, kept so both
figures are seen in one run.

    .venv/bin/python scripts/bench_cold_read.py [--instances 10000] [--rounds 9]

Needs Debian's orthanc and orthanc-dicomweb (scripts/test installs them). Loading the study takes a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchkit import cpu_seconds, free_port, wait_for

from bridge.settings import Settings
from tests.support.dicomgen import encode, simple_study
from tests.support.orthanc import OrthancServer


async def qido_floor(base: str, authorization: str, study: str) -> float:
    """Seconds for the minimal QIDO work a complete read needs."""
    started = time.perf_counter()
    headers = {"Accept": "application/dicom+json", "Authorization": authorization}
    async with aiohttp.ClientSession(headers=headers) as session:

        async def get(path: str) -> list[dict[str, object]]:
            async with session.get(base + path) as response:
                return orjson.loads(await response.read())  # type: ignore[no-any-return]

        _, series = await asyncio.gather(get(f"/studies?StudyInstanceUID={study}"), get(f"/studies/{study}/series"))
        uids = [s["0020000E"]["Value"][0] for s in series]  # type: ignore[index]
        await asyncio.gather(*(get(f"/studies/{study}/series/{uid}/instances") for uid in uids))
    return time.perf_counter() - started


async def timed_get(url: str, headers: dict[str, str]) -> tuple[float, str]:
    """Seconds for one read, and its ``X-Cache``."""
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        body = await response.read()
        assert response.status == 200, body[:300]
    return time.perf_counter() - started, response.headers.get("X-Cache", "")


def pacs_requests(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    return sum(float(v) for v in re.findall(r'^bridge_pacs_requests_total\{outcome="ok"\} ([\d.e+]+)$', text, re.M))


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) / 1024  # type: ignore[index]


def naive(base: str, user: str, password: str, study: str) -> float:
    """dicomweb-client's synchronous client and fhir.resources models, the way a quick script would do it."""
    import requests
    from dicomweb_client.api import DICOMwebClient
    from fhir.resources.imagingstudy import ImagingStudy

    session = requests.Session()
    session.auth = (user, password)
    started = time.perf_counter()
    client = DICOMwebClient(url=base, session=session)
    client.search_for_studies(search_filters={"StudyInstanceUID": study})
    series = []
    for row in client.search_for_series(study_instance_uid=study):
        uid = row["0020000E"]["Value"][0]
        instances = client.search_for_instances(study_instance_uid=study, series_instance_uid=uid)
        series.append({
            "uid": uid, "modality": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM",
                                                 "code": row["00080060"]["Value"][0]}]},
            "numberOfInstances": len(instances),
            "instance": [{"uid": i["00080018"]["Value"][0], "sopClass": {"system": "urn:ietf:rfc:3986",
                          "code": "urn:oid:" + i["00080016"]["Value"][0]}} for i in instances],
        })  # fmt: skip
    model = ImagingStudy.model_validate({"status": "available", "id": study, "subject": {"display": "x"},
                                         "series": series})  # fmt: skip
    model.model_dump_json()
    return time.perf_counter() - started


class Bridge:
    """One ``imaging-bridge serve`` process, and what was measured of it."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path, study: str) -> None:
        self.name = name
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/fhir/ImagingStudy/{study}"
        self.metrics = f"http://127.0.0.1:{port}/metrics"
        self.log = workdir / f"{name.replace(' ', '-')}.stdout"
        with self.log.open("wb") as stdout:  # the access log's lines, counted at the end
            self.process = subprocess.Popen([sys.executable, "-m", "bridge", "serve"], cwd=workdir,
                                            env={**env, "BRIDGE_PORT": str(port)}, stdout=stdout,
                                            stderr=subprocess.DEVNULL)  # fmt: skip
        self.colds: list[float] = []
        #: For each cold read, the mean of the floor reads just before and just after it.
        self.floors: list[float] = []
        self.cpu: list[float] = []
        self.read_at = 0.0  # when the PACS last read the study for this bridge (time.monotonic)

    def cold_read(self) -> float:
        """One forced read that reads the PACS: seconds. A forced read within BRIDGE_CACHE_MIN_REREAD (default
        5 s) of the last one is answered from the cache, by design; so the default is kept, and waited out."""
        time.sleep(max(0.0, self.read_at + MIN_REREAD + 0.1 - time.monotonic()))
        before = cpu_seconds(self.process.pid)
        seconds, x_cache = asyncio.run(timed_get(self.url, {"Cache-Control": "no-cache"}))
        self.read_at = time.monotonic()
        if x_cache != "MISS":
            raise SystemExit(f"{self.name}: a forced read came from the cache (X-Cache: {x_cache}), not the PACS")
        self.cpu.append(cpu_seconds(self.process.pid) - before)
        return seconds

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


#: ``BRIDGE_CACHE_MIN_REREAD``'s default: forced reads of one study closer than this are answered from the cache.
MIN_REREAD = float(Settings.model_fields["cache_min_reread"].default)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    per_series = args.instances // 4
    spec = simple_study(series=4, instances=per_series, patient_id="BENCH-10K")
    with tempfile.TemporaryDirectory() as tmp, OrthancServer(Path(tmp) / "orthanc") as orthanc:
        started = time.perf_counter()
        files = list(encode(spec))
        chunks = [files[i::4] for i in range(4)]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(orthanc.upload_many, chunks))
        print(f"loaded {len(files)} instances in {time.perf_counter() - started:.0f} s")

        # The defaults, told only where the PACS is: no other BRIDGE_* setting reaches the bridges.
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env.update(BRIDGE_QIDO_URL=orthanc.dicomweb_url, BRIDGE_PACS_USERNAME=orthanc.username,
                   BRIDGE_PACS_PASSWORD=orthanc.password)  # fmt: skip
        bridges = [
            Bridge("default", env, Path(tmp), spec.uid),
            Bridge("access log off", {**env, "BRIDGE_ACCESS_LOG": "false"}, Path(tmp), spec.uid),
        ]
        default = bridges[0]
        try:
            for bridge in bridges:
                wait_for(bridge.url.split("/fhir/")[0] + "/healthz")
            auth = "Basic " + base64.b64encode(f"{orthanc.username}:{orthanc.password}".encode()).decode()
            # 50 concurrent cold reads against one, counted at the PACS (the cache is empty at first); both
            # bridges, so that both go through the same reads.
            counts = []
            for bridge in bridges:
                before = pacs_requests(bridge.metrics)
                asyncio.run(_concurrently(bridge.url, 50))
                bridge.read_at = time.monotonic()
                fifty = pacs_requests(bridge.metrics) - before
                before = pacs_requests(bridge.metrics)
                bridge.cold_read()
                counts.append((fifty, pacs_requests(bridge.metrics) - before))
                bridge.cpu.clear()

            def read_floor() -> float:
                return asyncio.run(qido_floor(orthanc.dicomweb_url, auth, spec.uid))

            # Orthanc's own time varies by a third from one read to the next, so each bridge read is taken between
            # two floor reads, and its ratio is to their mean (floor, bridge, floor, other bridge, floor, ...). The
            # figure is the median of those ratios.
            floors = [read_floor()]
            for _ in range(args.rounds):
                for bridge in bridges:
                    bridge.colds.append(bridge.cold_read())
                    floors.append(read_floor())
                    bridge.floors.append((floors[-2] + floors[-1]) / 2)
            rss = {bridge.name: peak_rss_mib(bridge.process.pid) for bridge in bridges}
            naives = [naive(orthanc.dicomweb_url, orthanc.username, orthanc.password, spec.uid) for _ in range(2)]
        finally:
            for bridge in bridges:
                bridge.stop()
        logged = len(default.log.read_bytes().splitlines())

    floor = statistics.median(floors)
    print(f"study: 4 series x {per_series} instances; {args.rounds} reads by each bridge, medians")
    print(f"QIDO floor                 {floor * 1000:8.0f} ms   ({', '.join(f'{f * 1000:.0f}' for f in floors)})")
    for bridge in bridges:
        ratios = [c / f for c, f in zip(bridge.colds, bridge.floors, strict=True)]
        print(f"\nbridge, {bridge.name}{' (as a user runs it)' if bridge is default else ' (the old way)'}")
        print(f"  cold read                {statistics.median(bridge.colds) * 1000:8.0f} ms   "
              f"({', '.join(f'{c * 1000:.0f}' for c in bridge.colds)})")  # fmt: skip
        print(f"  ratio cold / floor       {statistics.median(ratios):8.2f}x   (per read: "
              f"{', '.join(f'{r:.2f}' for r in ratios)}; goal ≤ 1.10x)")  # fmt: skip
        print(f"  CPU per read             {statistics.median(bridge.cpu) * 1000:8.0f} ms")
        print(f"  peak RSS                 {rss[bridge.name]:8.0f} MiB  (goal ≤ 128 MiB)")
    print(f"\naccess log of the default bridge: {logged} lines")
    fifty, one = counts[0]
    print(f"PACS requests: 50 concurrent cold reads {fifty:.0f}, one read {one:.0f}")
    print(f"naive (dicomweb-client + fhir.resources) {statistics.median(naives) * 1000:.0f} ms "
          f"= {statistics.median(naives) / floor:.2f}x the floor")  # fmt: skip
    return 0


async def _concurrently(url: str, count: int) -> None:
    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            async with session.get(url) as response:
                await response.read()
                assert response.status == 200

        await asyncio.gather(*(one() for _ in range(count)))


if __name__ == "__main__":
    sys.exit(main())
