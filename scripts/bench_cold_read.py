#!/usr/bin/env python3
"""Cold read of a 10,000-instance CT study (4 series) against a real Orthanc, each figure against a baseline
measured in the same run:

- the bridge's cold read (``Cache-Control: no-cache``) against the *QIDO floor*: the study query, the series query
  and every series' instance query issued at once, bodies parsed with orjson, nothing else (goal ≤ 1.10x);
- the bridge's peak RSS after those reads (goal ≤ 128 MiB);
- 50 concurrent cold reads of the study, counted at the PACS (the bridge's own PACS request counter) against
  one read;
- for reference, the naive alternative: dicomweb-client's synchronous client plus fhir.resources models.

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


async def timed_get(url: str, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        body = await response.read()
        assert response.status == 200, body[:300]
    return time.perf_counter() - started


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

        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        # BRIDGE_CACHE_MIN_REREAD=0: every no-cache read below is a cold read, however soon after the last.
        env.update(BRIDGE_QIDO_URL=orthanc.dicomweb_url, BRIDGE_PACS_USERNAME=orthanc.username,
                   BRIDGE_PACS_PASSWORD=orthanc.password, BRIDGE_PORT=str(port), BRIDGE_ACCESS_LOG="false",
                   BRIDGE_CACHE_MIN_REREAD="0")  # fmt: skip
        bridge = subprocess.Popen([sys.executable, "-m", "bridge", "serve"], env=env, cwd=tmp,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}/fhir/ImagingStudy/{spec.uid}"
            wait_for(f"http://127.0.0.1:{port}/healthz")
            auth = "Basic " + base64.b64encode(f"{orthanc.username}:{orthanc.password}".encode()).decode()
            # 50 concurrent cold reads against one, counted at the PACS (the cache is empty at first).
            metrics = f"http://127.0.0.1:{port}/metrics"
            before = pacs_requests(metrics)
            asyncio.run(_concurrently(url, 50))
            fifty = pacs_requests(metrics) - before
            before = pacs_requests(metrics)
            asyncio.run(timed_get(url, {"Cache-Control": "no-cache"}))
            one = pacs_requests(metrics) - before

            floors, colds, cpu = [], [], []

            def read_floor() -> None:
                floors.append(asyncio.run(qido_floor(orthanc.dicomweb_url, auth, spec.uid)))

            def read_cold() -> None:
                before = cpu_seconds(bridge.pid)
                colds.append(asyncio.run(timed_get(url, {"Cache-Control": "no-cache"})))
                cpu.append(cpu_seconds(bridge.pid) - before)

            # Side by side, first one then the other first: Orthanc's own time varies by a third between reads,
            # so each round's ratio is taken, and their median is the figure.
            for round_ in range(args.rounds):
                for step in (read_floor, read_cold) if round_ % 2 == 0 else (read_cold, read_floor):
                    step()
            rss = peak_rss_mib(bridge.pid)
            naives = [naive(orthanc.dicomweb_url, orthanc.username, orthanc.password, spec.uid) for _ in range(2)]
        finally:
            bridge.terminate()
            bridge.wait(timeout=30)

    floor, cold = statistics.median(floors), statistics.median(colds)
    ratios = [c / f for c, f in zip(colds, floors, strict=True)]
    print(f"study: 4 series x {per_series} instances; {args.rounds} rounds, medians")
    print(f"QIDO floor           {floor * 1000:8.0f} ms   ({', '.join(f'{f * 1000:.0f}' for f in floors)})")
    print(f"bridge cold read     {cold * 1000:8.0f} ms   ({', '.join(f'{c * 1000:.0f}' for c in colds)})")
    print(f"ratio cold / floor   {statistics.median(ratios):8.2f}x   (per round: "
          f"{', '.join(f'{r:.2f}' for r in ratios)}; goal ≤ 1.10x)")  # fmt: skip
    print(f"bridge CPU per read  {statistics.median(cpu) * 1000:8.0f} ms")
    print(f"bridge peak RSS      {rss:8.0f} MiB  (goal ≤ 128 MiB)")
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
