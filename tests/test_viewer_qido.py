"""A second viewer, different from tests/test_viewer.py's Cornerstone3D page: an OHIF-like flow with plain fetch,
from a page of yet another origin (tests/support/qido_viewer.html). From the FHIR base it finds the Endpoint, then
from the Endpoint's address alone it searches QIDO-RS (studies by PatientID, their series, their instances), reads
each series' metadata and fetches every frame of every instance (multipart/related, decoded in the page).

Tokens for several patients (stand-in tokens ``patient:<PatientID>``), against Orthanc, a folder of the same files,
and the embedded default (no configuration). What is checked: each token gets exactly its patient's studies, every
frame byte for byte; another patient's rows, metadata and frames never arrive (status and body, and the responses
the browser recorded); every request goes to the Endpoint's address; the cross-origin requests with
``Authorization`` and multipart ``Accept`` succeed (each needs a CORS preflight).

Nothing here is skipped: without Chromium the tests fail."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page, Request, Response

from bridge.qido.folder import pydicom_samples
from bridge.settings import load_settings
from bridge.web.app import create_app
from bridge.web.server import server_options
from tests.conftest import orthanc_settings
from tests.support.authserver import AuthServer
from tests.support.dicomgen import new_uid
from tests.support.orthanc import OrthancServer
from tests.support.pixel_studies import PixelStudy, pixel_study
from tests.support.standin_tokens import Verifier

pytestmark = [pytest.mark.browser, pytest.mark.viewer]

JSON = "application/dicom+json"
FRAME = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
PAGE = Path(__file__).parent / "support" / "qido_viewer.html"
SMART = {"BRIDGE_AUTH": "smart", "BRIDGE_AUTH_JWKS_URL": "https://auth.example.org/jwks", "BRIDGE_AUDIT_LOG": "off"}

#: Each patient's digests: study -> series -> instance -> the SHA-256 of each frame, in order.
Expected = dict[str, dict[str, dict[str, list[str]]]]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def expected(studies: list[PixelStudy]) -> Expected:
    return {
        study.uid: {
            series.uid: {instance.uid: [sha(f) for f in instance.frames] for instance in series.instances}
            for series in study.series
        }
        for study in studies
    }


# Patient ONE has a large series (50 single-frame instances and 5 of 3 frames) and a small study; TWO a study with
# a multi-frame instance; NONE has no studies at all.
LARGE = [1] * 50 + [3] * 5
STUDIES = {
    "VQ-ONE": [pixel_study("VQ-ONE", [LARGE]), pixel_study("VQ-ONE", [[1, 1]])],
    "VQ-TWO": [pixel_study("VQ-TWO", [[1, 4, 1]])],
    "VQ-NONE": [],
}
#: One StudyInstanceUID under two patients (a PACS's data error): neither's pixels go to either.
SHARED_UID = new_uid()
SHARED = [pixel_study("VQ-SHARE-A", [[1]], uid=SHARED_UID), pixel_study("VQ-SHARE-B", [[2]], uid=SHARED_UID)]


@dataclass(frozen=True)
class World:
    """A running bridge and what each patient's token must get from it."""

    origin: str
    patients: dict[str, Expected]


@pytest.fixture(scope="module")
def page_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("qido-viewer-page")
    shutil.copyfile(PAGE, folder / "index.html")
    return folder


@pytest.fixture
async def page_origin(page_folder: Path) -> AsyncIterator[str]:
    """The page, served from an origin of its own (neither the bridge's nor the Cornerstone page's)."""
    app = web.Application()

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(page_folder / "index.html")

    app.router.add_get("/", index)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/")).rstrip("/")
    await server.close()


@pytest.fixture(scope="module")
def orthanc_loaded(orthanc: OrthancServer) -> None:
    orthanc.upload_many(f for studies in [*STUDIES.values(), SHARED] for study in studies for f in study.files)


@pytest.fixture(scope="module")
def pixel_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("qido-viewer-folder")
    for studies in STUDIES.values():
        for study in studies:
            for number, data in enumerate(study.files):
                (folder / f"{study.uid}-{number}.dcm").write_bytes(data)
    return folder


SAMPLES = ("CT_small.dcm", "MR_small.dcm")


def embedded_expectation() -> dict[str, Expected]:
    """The pydicom samples of CT_small's and MR_small's patients, as the folder holds them: those two files'
    frames by their pixel data's digest, the other instances (other encodings of them too) by presence only."""
    wanted: dict[str, Expected] = {}
    for name in SAMPLES:
        ds = pydicom.dcmread(pydicom_samples() / name)
        wanted[ds.PatientID] = {}
    for path in sorted(pydicom_samples().glob("*.dcm")):
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # pydicom's samples include broken files; the folder skips them too
            continue
        if ds.get("PatientID") not in wanted or "PixelData" not in ds:
            continue
        instances = wanted[ds.PatientID].setdefault(ds.StudyInstanceUID, {}).setdefault(ds.SeriesInstanceUID, {})
        frames = instances.setdefault(ds.SOPInstanceUID, [])
        if path.name in SAMPLES:  # of the copies of one instance (re-encoded, padded, truncated), the sample's
            frames[:] = [sha(ds.PixelData)]
    return wanted


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(params=[pytest.param("orthanc", marks=pytest.mark.integration), "folder", "embedded"])
async def world(request: pytest.FixtureRequest, page_origin: str) -> AsyncIterator[World]:
    port = free_port()  # BRIDGE_PUBLIC_URL names the port before the server is started on it
    environ = {**SMART, "BRIDGE_PUBLIC_URL": f"http://127.0.0.1:{port}/fhir", "BRIDGE_CORS_ORIGINS": page_origin}
    patients = {patient: expected(studies) for patient, studies in STUDIES.items()}
    if request.param == "orthanc":
        request.getfixturevalue("orthanc_loaded")
        orthanc: OrthancServer = request.getfixturevalue("orthanc")
        settings = orthanc_settings(orthanc, **{key.removeprefix("BRIDGE_").lower(): v for key, v in environ.items()})
    elif request.param == "folder":
        folder: Path = request.getfixturevalue("pixel_folder")
        settings = load_settings({**environ, "BRIDGE_QIDO_URL": f"file://{folder}"})
    else:
        settings = load_settings(environ)
        patients = embedded_expectation()
    server = TestServer(create_app(settings, None, Verifier()), host="127.0.0.1", port=port)
    await server.start_server(**server_options(settings))
    try:
        yield World(f"http://127.0.0.1:{port}", patients)
    finally:
        await server.close()


@dataclass
class Recorded:
    requests: list[str] = field(default_factory=list)
    responses: list[tuple[str, int]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


async def open_page(browser: Browser, page_origin: str) -> tuple[Page, Recorded]:
    page = await browser.new_page()
    recorded = Recorded()

    def on_request(request: Request) -> None:
        recorded.requests.append(request.url)

    def on_response(response: Response) -> None:
        recorded.responses.append((response.url, response.status))

    def on_failed(request: Request) -> None:
        recorded.failed.append(f"{request.method} {request.url}: {request.failure}")

    page.on("request", on_request)
    page.on("response", on_response)
    page.on("requestfailed", on_failed)
    await page.goto(f"{page_origin}/")
    return page, recorded


def digests(browsed: dict[str, Any]) -> Expected:
    return {
        study: {series: dict(info["instances"]) for series, info in entry["series"].items()}
        for study, entry in browsed["studies"].items()
    }


async def test_each_token_gets_exactly_its_patients_studies_and_frames_through_the_endpoint(
    browser: Browser, page_origin: str, world: World
) -> None:
    page, recorded = await open_page(browser, page_origin)
    try:
        for patient, wanted in world.patients.items():
            token = f"patient:{patient}"
            addresses = await page.evaluate("([f, t]) => endpointAddress(f, t)", [f"{world.origin}/fhir", token])
            if not wanted:
                assert addresses == [], addresses  # no study, so no Endpoint to follow
                address = f"{world.origin}/dicom-web"
            else:
                assert set(addresses) == {f"{world.origin}/dicom-web"}, addresses
                address = addresses[0]
            browsed = await page.evaluate("([a, t, q]) => browse(a, t, q)", [address, token, f"PatientID={patient}"])
            got = digests(browsed)
            assert {s: set(se) for s, se in got.items()} == {s: set(se) for s, se in wanted.items()}, patient
            for study, series in wanted.items():
                assert browsed["studies"][study]["patient"] == patient
                for series_uid, instances in series.items():
                    assert browsed["studies"][study]["series"][series_uid]["metadataPatients"] == [patient]
                    assert set(got[study][series_uid]) == set(instances)
                    for instance, frames in instances.items():
                        if frames:  # the embedded samples' compressed files are compared by presence only
                            assert got[study][series_uid][instance] == frames, (patient, instance)
    finally:
        await page.close()
    network = [url for url in recorded.requests if url.startswith("http")]
    assert not recorded.failed, recorded.failed
    fhir = [url for url in network if url.startswith(f"{world.origin}/fhir/")]
    pixels = [url for url in network if url not in fhir and not url.startswith(f"{page_origin}/")]
    assert any("/frames/" in url for url in pixels)
    assert all(url.startswith(f"{world.origin}/dicom-web/") for url in pixels), pixels
    assert all(status == 200 for url, status in recorded.responses if url in network), recorded.responses


def other_patients_urls(address: str, study: PixelStudy) -> list[str]:
    series = study.series[0]
    instance = series.instances[-1]
    base = f"{address}/studies/{study.uid}"
    where = f"{base}/series/{series.uid}"
    return [
        f"{base}/series",
        f"{where}/instances",
        f"{base}/instances",
        f"{base}/metadata",
        f"{where}/metadata",
        f"{where}/instances/{instance.uid}/metadata",
        f"{where}/instances/{instance.uid}/frames/1",
        f"{where}/instances/{instance.uid}",
        f"{where}",
        f"{base}",
    ]


@pytest.mark.parametrize("world", [pytest.param("orthanc", marks=pytest.mark.integration), "folder"], indirect=True)
async def test_another_patients_rows_metadata_and_frames_never_arrive(
    browser: Browser, page_origin: str, world: World
) -> None:
    address = f"{world.origin}/dicom-web"
    theirs = STUDIES["VQ-ONE"][0]
    secret = [f for series in theirs.series for instance in series.instances for f in instance.frames]
    page, recorded = await open_page(browser, page_origin)
    answers: list[tuple[str, dict[str, Any]]] = []
    try:
        for token in ("patient:VQ-TWO", "patient:VQ-NONE"):
            for url in other_patients_urls(address, theirs):
                searched = url.endswith(("/series", "/instances"))  # QIDO-RS: DICOM JSON only (else a 406)
                for accept in ("*/*", "application/dicom+json" if searched else FRAME):
                    answers.append((url, await page.evaluate("([u, t, a]) => probe(u, t, a)", [url, token, accept])))
            # QIDO: naming their study finds nothing; naming their patient is refused.
            rows = await page.evaluate(
                "([u, t]) => probe(u, t)", [f"{address}/studies?StudyInstanceUID={theirs.uid}", token]
            )
            assert rows["status"] == 200, rows
            assert base64.b64decode(rows["body"]) == b"[]", rows
            refused = await page.evaluate("([u, t]) => probe(u, t)", [f"{address}/studies?PatientID=VQ-ONE", token])
            assert refused["status"] == 403, refused
            answers.append(("PatientID search", refused))
    finally:
        await page.close()
    for url, answer in answers:
        assert answer["status"] in (403, 404), (url, answer["status"])
        body = base64.b64decode(answer["body"])
        assert len(body) < 2000, url
        assert not any(f[:32] in body for f in secret), url
        assert b"VQ-ONE" not in body, (url, body[:200])
    touched = [(url, status) for url, status in recorded.responses if f"/studies/{theirs.uid}" in url]
    assert touched, recorded.responses
    assert all(status in (403, 404) for _, status in touched), touched
    assert not recorded.failed, recorded.failed  # every refusal reached the page: CORS headers on errors too


@pytest.mark.integration
@pytest.mark.parametrize("world", ["orthanc"], indirect=True)
async def test_a_study_uid_under_two_patients_gives_neither_the_others_pixels(
    browser: Browser, page_origin: str, world: World
) -> None:
    address = f"{world.origin}/dicom-web"
    page, recorded = await open_page(browser, page_origin)
    try:
        for mine, theirs in (SHARED, SHARED[::-1]):
            token = f"patient:{mine.patient_id}"
            found = await page.evaluate(
                "([u, t]) => probe(u, t)", [f"{address}/studies?StudyInstanceUID={SHARED_UID}", token]
            )
            rows = json.loads(base64.b64decode(found["body"]))
            assert [row["00100020"]["Value"] for row in rows] == [[mine.patient_id]]  # its own row only
            frames = [f for study in SHARED for series in study.series for i in series.instances for f in i.frames]
            for study in (mine, theirs):
                for url in other_patients_urls(address, study):
                    searched = url.endswith(("/series", "/instances"))
                    answer = await page.evaluate(
                        "([u, t, a]) => probe(u, t, a)", [url, token, JSON if searched else FRAME]
                    )
                    assert answer["status"] == 404, (url, answer["status"])  # whose is a UID of two? no one's
                    body = base64.b64decode(answer["body"])
                    assert not any(f[:32] in body for f in frames), url
                    assert theirs.patient_id.encode() not in body, url
    finally:
        await page.close()
    assert not recorded.failed, recorded.failed


async def test_real_tokens_reach_their_patients_and_an_expired_one_is_told_so(
    browser: Browser, page_origin: str, pixel_folder: Path, auth_server: AuthServer
) -> None:
    """Tokens signed by an authorization server (tests/support/authserver.py), not stand-ins: each reaches its
    patient's frames from the page's origin; an expired one is a 401 whose ``WWW-Authenticate`` the page can read."""
    port = free_port()
    environ = auth_server.environ(
        qido_url=f"file://{pixel_folder}", public_url=f"http://127.0.0.1:{port}/fhir", cors_origins=page_origin
    )
    settings = load_settings({**environ, "BRIDGE_AUDIT_LOG": "off"})
    server = TestServer(create_app(settings), host="127.0.0.1", port=port)
    await server.start_server(**server_options(settings))
    address = f"http://127.0.0.1:{port}/dicom-web"
    page, recorded = await open_page(browser, page_origin)
    try:
        for patient in ("VQ-ONE", "VQ-TWO"):
            token = auth_server.mint(scope="launch/patient patient/ImagingStudy.rs", patient=patient)
            browsed = await page.evaluate("([a, t, q]) => browse(a, t, q)", [address, token, f"PatientID={patient}"])
            assert digests(browsed) == expected(STUDIES[patient])
        expired = auth_server.mint(scope="patient/ImagingStudy.rs", patient="VQ-ONE", lifetime=-60)
        study = STUDIES["VQ-ONE"][1]
        series, instance = study.series[0], study.series[0].instances[0]
        url = f"{address}/studies/{study.uid}/series/{series.uid}/instances/{instance.uid}/frames/1"
        told = await page.evaluate(
            """async ([u, t]) => {
                const r = await fetch(u, {headers: {Authorization: `Bearer ${t}`, Accept: "*/*"}});
                return {status: r.status, challenge: r.headers.get("WWW-Authenticate"), body: await r.text()};
            }""",
            [url, expired],
        )
    finally:
        await page.close()
        await server.close()
    assert told["status"] == 401, told
    assert told["challenge"], told  # exposed to the page by CORS: a viewer can tell "log in again" from "refused"
    assert "Bearer" in told["challenge"], told
    assert not recorded.failed, recorded.failed
