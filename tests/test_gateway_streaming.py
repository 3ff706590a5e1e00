"""Memory stays flat while a large series streams through the DICOMweb gateway from a real Orthanc: the Python
heap's peak during the transfer (tracemalloc, the bridge and the client in this process) is a small fraction of
the series, which is never held whole. And another patient's token gets none of it."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import orthanc_settings, start_client
from tests.support.orthanc import OrthancServer
from tests.support.pixel_studies import PixelStudy, pixel_study
from tests.support.standin_tokens import Verifier

pytestmark = pytest.mark.integration

SMART = {"auth": "smart", "auth_jwks_url": "https://auth.example.org/jwks", "public_url": "https://fhir.test/fhir"}
#: 50 single-frame instances and 5 of 8 frames, 512x512 16-bit: about 46 MB of pixel data.
FRAMES = [1] * 50 + [8] * 5
#: The heap may grow by this much during the transfer: a few chunks in flight, far below the series' size.
FLAT = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def large(orthanc: OrthancServer) -> PixelStudy:
    study = pixel_study("ST-LARGE", [FRAMES], size=512)
    orthanc.upload_many(study.files, timeout=120)
    return study


@pytest.fixture
async def client(orthanc: OrthancServer) -> AsyncIterator[TestClient]:
    client = await start_client(orthanc_settings(orthanc, **SMART, audit_log="off"), verifier=Verifier())
    yield client
    await client.close()


async def streamed(client: TestClient, path: str, token: str, accept: str) -> tuple[int, int, int]:
    """(status, bytes received, the heap's peak growth while receiving them), the body read and dropped."""
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        received = 0
        async with client.get(path, headers={"Authorization": f"Bearer {token}", "Accept": accept}) as got:
            async for chunk in got.content.iter_chunked(64 * 1024):
                received += len(chunk)
            status = got.status
        _, peak = tracemalloc.get_traced_memory()
        return status, received, peak - before
    finally:
        tracemalloc.stop()


async def test_a_large_series_streams_with_flat_memory(client: TestClient, large: PixelStudy) -> None:
    series = large.series[0]
    pixels = sum(len(f) for instance in series.instances for f in instance.frames)
    path = f"/dicom-web/studies/{large.uid}/series/{series.uid}"
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    status, received, growth = await streamed(client, path, "patient:ST-LARGE", accept)
    assert status == 200
    assert received > pixels  # every instance, whole
    assert growth < FLAT, f"the heap grew by {growth / 2**20:.1f} MiB for a {received / 2**20:.1f} MiB series"


async def test_a_large_multiframe_instances_frames_stream_with_flat_memory(
    client: TestClient, large: PixelStudy
) -> None:
    series = large.series[0]
    instance = series.instances[-1]
    numbers = ",".join(str(n) for n in range(1, len(instance.frames) + 1))
    path = f"/dicom-web/studies/{large.uid}/series/{series.uid}/instances/{instance.uid}/frames/{numbers}"
    accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    status, received, growth = await streamed(client, path, "patient:ST-LARGE", accept)
    assert status == 200
    assert received > sum(len(f) for f in instance.frames)
    assert growth < 4 * 1024 * 1024, f"the heap grew by {growth / 2**20:.1f} MiB for {received / 2**20:.1f} MiB"


async def test_another_patients_token_gets_none_of_the_large_series(client: TestClient, large: PixelStudy) -> None:
    series = large.series[0]
    path = f"/dicom-web/studies/{large.uid}/series/{series.uid}"
    status, received, _ = await streamed(client, path, "patient:ST-OTHER", "*/*")
    assert status == 404
    assert received < 1000
