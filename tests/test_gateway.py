"""The DICOMweb gateway (/dicom-web) against a real Orthanc: what comes through is what the PACS sends, a token
reaches only its patient's studies, and a failing PACS is a 5xx the client can act on, never a 500."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pydicom
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.conftest import orthanc_settings, start_client
from tests.support.dicomgen import StudySpec, encode, simple_study
from tests.support.orthanc import OrthancServer
from tests.support.standin_tokens import Verifier

pytestmark = pytest.mark.integration

INSTANCE = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAME = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
PIXELS = bytes(range(16))
SMART = {"auth": "smart", "auth_jwks_url": "https://auth.example.org/jwks", "public_url": "https://fhir.test/fhir"}


@dataclass
class Loaded:
    spec: StudySpec
    other: StudySpec

    @property
    def instance_path(self) -> str:
        series = self.spec.series[0]
        return f"/studies/{self.spec.uid}/series/{series.uid}/instances/{series.instances[0].uid}"


def with_pixels(part10: bytes) -> bytes:
    """A generated instance given a 4x4 8-bit image, so that it has a frame."""
    ds = pydicom.dcmread(io.BytesIO(part10))
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 4, 4, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = PIXELS
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def loaded(orthanc: OrthancServer) -> Loaded:
    spec = simple_study(patient_id="GW-A", patient_name="Gate^Alpha")
    other = simple_study(patient_id="GW-B", patient_name="Gate^Beta")
    for study in (spec, other):
        orthanc.upload_many(with_pixels(part) for part in encode(study))
    return Loaded(spec, other)


async def direct(orthanc: OrthancServer, path: str, accept: str) -> tuple[int, str, bytes]:
    """The same request, asked of Orthanc itself."""
    pair = base64.b64encode(f"{orthanc.username}:{orthanc.password}".encode()).decode()
    headers = {"Authorization": f"Basic {pair}", "Accept": accept}
    async with aiohttp.ClientSession() as session, session.get(orthanc.dicomweb_url + path, headers=headers) as got:
        return got.status, got.headers["Content-Type"], await got.read()


def unbounded(content_type: str, body: bytes) -> bytes:
    """A multipart body with its boundary (random per answer) replaced by a fixed one."""
    boundary = next(
        part.split("=", 1)[1].strip('"') for part in content_type.split(";") if part.strip().startswith("boundary=")
    )
    return body.replace(boundary.encode(), b"BOUNDARY")


@pytest.fixture
async def bridge(orthanc: OrthancServer, loaded: Loaded) -> AsyncIterator[TestClient]:
    client = await start_client(orthanc_settings(orthanc))
    yield client
    await client.close()


async def test_an_instance_comes_through_byte_for_byte(
    bridge: TestClient, orthanc: OrthancServer, loaded: Loaded
) -> None:
    got = await bridge.get("/dicom-web" + loaded.instance_path, headers={"Accept": INSTANCE})
    body = await got.read()
    status, content_type, expected = await direct(orthanc, loaded.instance_path, INSTANCE)
    assert (got.status, status) == (200, 200)
    assert got.headers["Content-Type"].startswith("multipart/related")
    assert "boundary=" in got.headers["Content-Type"]
    assert unbounded(got.headers["Content-Type"], body) == unbounded(content_type, expected)
    assert loaded.spec.series[0].instances[0].uid.encode() in body


async def test_a_streamed_answer_carries_the_request_id(bridge: TestClient, loaded: Loaded) -> None:
    got = await bridge.get(
        "/dicom-web" + loaded.instance_path, headers={"Accept": INSTANCE, "X-Request-ID": "viewer-7"}
    )
    await got.read()
    assert got.status == 200
    assert got.headers["X-Request-ID"] == "viewer-7"


async def test_metadata_is_the_pacs_json(bridge: TestClient, orthanc: OrthancServer, loaded: Loaded) -> None:
    for path in (f"/studies/{loaded.spec.uid}/metadata", loaded.instance_path + "/metadata"):
        got = await bridge.get("/dicom-web" + path, headers={"Accept": "application/dicom+json"})
        status, content_type, expected = await direct(orthanc, path, "application/dicom+json")
        assert got.status == status == 200
        assert got.headers["Content-Type"] == content_type
        # The same JSON, but for the BulkDataURIs, which name the gateway where Orthanc named itself.
        gateway_url = str(bridge.make_url("/dicom-web"))
        assert await got.json(content_type=None) == json.loads(
            expected.replace(orthanc.dicomweb_url.rstrip("/").encode() + b"/", gateway_url.encode() + b"/")
        )


async def test_a_frame(bridge: TestClient, orthanc: OrthancServer, loaded: Loaded) -> None:
    path = loaded.instance_path + "/frames/1"
    got = await bridge.get("/dicom-web" + path, headers={"Accept": FRAME})
    body = await got.read()
    status, content_type, expected = await direct(orthanc, path, FRAME)
    assert got.status == status == 200
    assert got.headers["Content-Type"].startswith("multipart/related")
    assert PIXELS in body
    assert unbounded(got.headers["Content-Type"], body) == unbounded(content_type, expected)


async def test_an_unknown_study_is_404(bridge: TestClient, loaded: Loaded) -> None:
    got = await bridge.get("/dicom-web/studies/2.25.404404/metadata", headers={"Accept": "application/dicom+json"})
    assert got.status == 404


class Recorder:
    """A stand-in WADO-RS server: records every path asked, answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.status = status
        self.delay = 0.0
        self.body = b"pixels"
        self.content_type = "application/octet-stream"

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        self.headers.append(dict(request.headers))
        await asyncio.sleep(self.delay)
        return web.Response(status=self.status, body=self.body, content_type=self.content_type)


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    recorder = Recorder()
    app = web.Application()
    app.router.add_get("/{tail:.*}", recorder.handle)
    server = TestServer(app)
    await server.start_server()
    yield recorder, str(server.make_url("/wado"))
    await server.close()


async def test_a_token_reaches_its_patient_only(
    orthanc: OrthancServer, loaded: Loaded, recorder: tuple[Recorder, str]
) -> None:
    """Studies are decided through the cache (a QIDO to Orthanc); pixels come from the PACS's WADO-RS, here the
    recorder: another patient's study gets the 404 of a study that does not exist, and no pixel is asked for."""
    pixels, wado = recorder
    client = await start_client(orthanc_settings(orthanc, wado_url=wado, **SMART), verifier=Verifier())
    try:
        own = await client.get("/dicom-web" + loaded.instance_path, headers={"Authorization": "Bearer patient:GW-A"})
        assert own.status == 200
        assert await own.read() == b"pixels"
        assert len(pixels.paths) == 1
        series = loaded.other.series[0]
        foreign = f"/dicom-web/studies/{loaded.other.uid}/series/{series.uid}/instances/{series.instances[0].uid}"
        refused = await client.get(foreign, headers={"Authorization": "Bearer patient:GW-A"})
        missing = await client.get("/dicom-web/studies/2.25.404404", headers={"Authorization": "Bearer patient:GW-A"})
        assert refused.status == missing.status == 404
        assert (await refused.text()).replace(loaded.other.uid, "X") == (await missing.text()).replace(
            "2.25.404404", "X"
        )
        assert len(pixels.paths) == 1, "the PACS was asked for another patient's pixels"
        anonymous = await client.get("/dicom-web" + loaded.instance_path)
        assert anonymous.status == 401
        assert len(pixels.paths) == 1
    finally:
        await client.close()


async def test_accept_goes_to_the_pacs_with_the_bridges_credentials(
    orthanc: OrthancServer, loaded: Loaded, recorder: tuple[Recorder, str]
) -> None:
    pacs, wado = recorder
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    client = await start_client(orthanc_settings(orthanc, wado_url=wado, **SMART), verifier=Verifier())
    try:
        got = await client.get(
            "/dicom-web" + loaded.instance_path, headers={"Authorization": "Bearer patient:GW-A", "Accept": accept}
        )
        assert got.status == 200
    finally:
        await client.close()
    assert pacs.paths == ["/wado" + loaded.instance_path]
    assert pacs.headers[0]["Accept"] == accept
    # The PACS gets the bridge's own credentials, never the app's token.
    assert pacs.headers[0]["Authorization"].startswith("Basic ")


async def test_a_failing_pacs_is_a_5xx_not_a_500(orthanc: OrthancServer, recorder: tuple[Recorder, str]) -> None:
    pacs, wado = recorder
    pacs.status = 500
    client = await start_client(orthanc_settings(orthanc, wado_url=wado))
    try:
        got = await client.get("/dicom-web/studies/2.25.1/metadata")
        assert got.status == 502
    finally:
        await client.close()
    # Silent past BRIDGE_QIDO_TIMEOUT: a 504, not a hang.
    pacs.status, pacs.delay = 200, 5.0
    client = await start_client(orthanc_settings(orthanc, wado_url=wado, qido_timeout="0.5"))
    try:
        got = await client.get("/dicom-web/studies/2.25.1/metadata")
        assert got.status == 504
    finally:
        await client.close()
    # Nothing listens there.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # held, never listened on: connections are refused
        port = unused.getsockname()[1]
        client = await start_client(orthanc_settings(orthanc, wado_url=f"http://127.0.0.1:{port}/wado"))
        try:
            got = await client.get("/dicom-web/studies/2.25.1/metadata")
            assert got.status in (502, 503)
        finally:
            await client.close()


@pytest.mark.parametrize(
    "tail",
    [
        "/frames/1,1",  # PS3.18: a frame list names each frame once; repeats would multiply the PACS's work
        "/frames/2,1,2",
        "/metadata?charset=x",  # a retrieve takes no query the gateway could vouch for
        "?includefield=all",
        "/frames/1?x=%FF",
        "/frames/x",
        "/bulk/7fe00010/x",
    ],
)
async def test_what_the_gateway_does_not_understand_is_refused_before_the_pacs(
    orthanc: OrthancServer, loaded: Loaded, recorder: tuple[Recorder, str], tail: str
) -> None:
    pacs, wado = recorder
    client = await start_client(orthanc_settings(orthanc, wado_url=wado))
    try:
        for path in ("/studies/1.2.x/metadata", loaded.instance_path + tail):
            got = await client.get("/dicom-web" + path)
            assert got.status == 400, (path, await got.text())
    finally:
        await client.close()
    assert pacs.paths == []


@pytest.mark.parametrize("depth", [300, 1000])
async def test_metadata_nested_deeper_than_dicom_json_is_a_502(
    orthanc: OrthancServer, recorder: tuple[Recorder, str], depth: int
) -> None:
    """JSON that orjson reads but cannot write back (over 254 levels), or deeper than Python's recursion limit."""
    pacs, wado = recorder
    pacs.body, pacs.content_type = b"[" * depth + b"]" * depth, "application/dicom+json"
    client = await start_client(orthanc_settings(orthanc, wado_url=wado))
    try:
        got = await client.get("/dicom-web/studies/2.25.1/metadata")
        assert got.status == 502, await got.text()
    finally:
        await client.close()


def bulkdata_uris(node: object) -> list[str]:
    """Every BulkDataURI in a DICOM JSON document, at any depth."""
    if isinstance(node, list):
        return [uri for item in node for uri in bulkdata_uris(item)]
    if isinstance(node, dict):
        own = [node["BulkDataURI"]] if isinstance(node.get("BulkDataURI"), str) else []
        return own + [uri for value in node.values() for uri in bulkdata_uris(value)]
    return []


@pytest.mark.parametrize("public_url", [None, "https://fhir.test/fhir"])
async def test_bulkdata_uris_in_metadata_point_at_the_gateway(
    orthanc: OrthancServer, loaded: Loaded, public_url: str | None
) -> None:
    """Orthanc writes its own URL into every BulkDataURI (pixel data included): through the gateway each starts
    with the gateway's public URL (the origin of BRIDGE_PUBLIC_URL, else the request's) and resolves through it."""
    client = await start_client(orthanc_settings(orthanc, **({"public_url": public_url} if public_url else {})))
    try:
        gateway_url = "https://fhir.test/dicom-web" if public_url else str(client.make_url("/dicom-web"))
        for path in (f"/studies/{loaded.spec.uid}/metadata", loaded.instance_path + "/metadata"):
            got = await client.get("/dicom-web" + path, headers={"Accept": "application/dicom+json"})
            assert got.status == 200
            assert got.headers["Content-Type"].startswith("application/dicom+json")
            metadata = await got.json(content_type=None)
            _, _, direct_body = await direct(orthanc, path, "application/dicom+json")
            assert bulkdata_uris(json.loads(direct_body)), "Orthanc wrote no BulkDataURI: nothing was tested"
            uris = bulkdata_uris(metadata)
            assert len(uris) == len(bulkdata_uris(json.loads(direct_body)))
            assert all(uri.startswith(gateway_url + "/") for uri in uris), uris
            # Nothing else changed.
            assert str(metadata).count("BulkDataURI") == str(json.loads(direct_body)).count("BulkDataURI")
        pixel = next(uri for uri in uris if "7fe00010" in uri.lower())
        bulk = await client.get(
            "/dicom-web" + pixel.removeprefix(gateway_url),
            headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'},
        )
        assert bulk.status == 200
        assert PIXELS in await bulk.read()
    finally:
        await client.close()


async def test_a_bulkdata_path_that_is_no_tag_is_refused_before_the_pacs(bridge: TestClient, loaded: Loaded) -> None:
    for tail in ("pixels", "7fe00010/x", "7fe00010/0"):
        got = await bridge.get("/dicom-web" + loaded.instance_path + "/bulk/" + tail)
        assert got.status == 400, tail
    got = await bridge.get("/dicom-web" + loaded.instance_path + "/bulk/7fe00010%2F..")
    assert got.status == 400


def rendered_paths(loaded: Loaded, kind: str) -> list[str]:
    series = f"/studies/{loaded.spec.uid}/series/{loaded.spec.series[0].uid}"
    return [
        f"/studies/{loaded.spec.uid}/{kind}",
        f"{series}/{kind}",
        f"{loaded.instance_path}/{kind}",
        f"{loaded.instance_path}/frames/1/{kind}",
    ]


async def test_rendered_images_are_the_pacs_images(bridge: TestClient, orthanc: OrthancServer, loaded: Loaded) -> None:
    """Orthanc renders a study, a series, an instance and a frame; PS3.18's query parameters reach it."""
    for path in [*rendered_paths(loaded, "rendered"), f"{loaded.instance_path}/rendered?viewport=2,2&quality=50"]:
        got = await bridge.get("/dicom-web" + path, headers={"Accept": "image/jpeg"})
        status, content_type, expected = await direct(orthanc, path, "image/jpeg")
        assert got.status == status == 200, path
        assert got.headers["Content-Type"] == content_type == "image/jpeg"
        assert await got.read() == expected


async def test_a_thumbnail_the_pacs_does_not_have_is_404(bridge: TestClient, loaded: Loaded) -> None:
    """Orthanc's plugin makes no thumbnails: its 404 comes through (a PACS that has them is streamed)."""
    for path in rendered_paths(loaded, "thumbnail"):
        got = await bridge.get("/dicom-web" + path, headers={"Accept": "image/jpeg"})
        assert got.status == 404, path


@pytest.mark.parametrize(
    "query",
    ["rendered?accept=image/png", "rendered?viewport=2,2&viewport=4,4", "rendered?quality=%3Cx%3E",
     "rendered?window=40%20400", "thumbnail?quality=50", "rendered?Viewport=2,2"],
)  # fmt: skip
async def test_a_rendering_parameter_ps3_18_does_not_define_is_a_400(
    bridge: TestClient, loaded: Loaded, query: str
) -> None:
    got = await bridge.get(f"/dicom-web{loaded.instance_path}/{query}", headers={"Accept": "image/jpeg"})
    assert got.status == 400


async def test_another_patients_rendered_image_is_not_found(orthanc: OrthancServer, loaded: Loaded) -> None:
    client = await start_client(orthanc_settings(orthanc, **SMART), verifier=Verifier())
    try:
        headers = {"Authorization": "Bearer patient:GW-A", "Accept": "image/jpeg"}
        own = await client.get(f"/dicom-web/studies/{loaded.spec.uid}/rendered", headers=headers)
        assert own.status == 200
        foreign = await client.get(f"/dicom-web/studies/{loaded.other.uid}/rendered", headers=headers)
        assert foreign.status == 404
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("frames", "accept"), [("2", FRAME), ("1", "application/octet-stream")], ids=["past-the-last", "single-part"]
)
async def test_frames_the_pacs_refuses_are_a_4xx_saying_what_to_check(
    bridge: TestClient, loaded: Loaded, frames: str, accept: str
) -> None:
    # Orthanc answers a bare 400 to a frame past the last, and to a single-part Accept; a user is told why.
    got = await bridge.get(f"/dicom-web{loaded.instance_path}/frames/{frames}", headers={"Accept": accept})
    assert got.status in (400, 404, 406)
    said = await got.text()
    assert "NumberOfFrames" in said, said
    assert 'multipart/related; type="application/octet-stream"' in said, said
