"""Real FHIR clients against the bridge in front of a real Orthanc (``every_study``), as their users run them:

- SMART's Python client ``fhirclient`` (4.4.0, R4 models, strict): ``prepare()`` parses ``/fhir/r4/metadata``,
  a study with its series is read, a patient's studies are searched with ``_include=ImagingStudy:endpoint`` and
  paged (every page's whole Bundle parsed strictly), the Endpoint read; also with ``BRIDGE_AUTH=smart``, a JWT of
  the test authorization server set on the OAuth2 handler its ``prepare()`` built from the CapabilityStatement's
  security section;
- the SMART JS client (``fhirclient`` on npm, tests/smartjs/) under Node: release 4 from ``/fhir/r4``, a study's
  endpoint reference resolved, a search iterated across its pages;
- fhirpy on ``/fhir/r4`` and ``/fhir/r5`` with a patient's token (a JWT of the test authorization server): read,
  search, ``_include``, ``.count()``, ``.fetch_all()``.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from fhirpy import AsyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound

from bridge.settings import load_settings
from bridge.web.app import create_app
from bridge.web.server import server_options
from tests.conftest import orthanc_settings, start_client
from tests.support.authserver import AuthServer
from tests.support.every_catalog import Loaded
from tests.support.fhircheck import validate, validate_r4
from tests.support.npm import require_installed
from tests.support.search_catalog import PAGING_PATIENT, paging_order
from tests.test_smart_js import SCRIPT_DIR

pytestmark = pytest.mark.integration

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SCT = "http://snomed.info/sct"


@pytest.fixture
async def open_bridge(every_study: Loaded) -> AsyncIterator[TestClient]:
    """No authorization; links from each request's own origin (no BRIDGE_PUBLIC_URL), so clients follow them."""
    client = await start_client(orthanc_settings(every_study.pacs))
    yield client
    await client.close()


@pytest.fixture
async def smart_bridge(every_study: Loaded, auth_server: AuthServer) -> AsyncIterator[TestClient]:
    """BRIDGE_AUTH=smart, trusting the test authorization server (real JWTs, its metadata in the
    CapabilityStatement's security section). BRIDGE_PUBLIC_URL is needed: the port is chosen first, so that it
    is where the bridge listens and clients follow its links; each base under it is an accepted audience."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environ = auth_server.environ()
    del environ["BRIDGE_AUTH_AUDIENCE"]  # derived from BRIDGE_PUBLIC_URL: each base's
    pacs = every_study.pacs
    settings = load_settings({
        "BRIDGE_QIDO_URL": pacs.dicomweb_url, "BRIDGE_PACS_USERNAME": pacs.username,
        "BRIDGE_PACS_PASSWORD": pacs.password, "BRIDGE_PUBLIC_URL": f"http://127.0.0.1:{port}/fhir", **environ,
    })  # fmt: skip
    server = TestServer(create_app(settings), port=port)
    await server.start_server(**server_options(settings))
    client = TestClient(server)
    await client.start_server()
    yield client
    await client.close()


def patient_token(auth_server: AuthServer, client: TestClient, base: str) -> str:
    """A patient-launch token for the paging patient, its audience the base the app talks to."""
    return auth_server.mint(
        scope="launch/patient patient/ImagingStudy.rs", patient=PAGING_PATIENT, aud=str(client.make_url(base))
    )


# ---- SMART's Python client ----


def fhirclient_session(base_url: str, study_id: str, patient: str, token: str | None = None) -> dict[str, Any]:
    """What SMART's Python client makes of a base, run in a thread (it is synchronous). Every model parses
    strictly: an element R4 lacks, a wrong type or a missing 1..1 element raises FHIRValidationError."""
    from fhirclient import client as fhirclient
    from fhirclient.models.endpoint import Endpoint
    from fhirclient.models.imagingstudy import ImagingStudy

    smart = fhirclient.FHIRClient(settings={"app_id": "bridge-test", "api_base": base_url})
    smart.prepare()  # GET metadata, parsed as an R4 CapabilityStatement
    if token is not None:
        # What a launched app holds after the token exchange: its OAuth2 handler, built by prepare() from the
        # CapabilityStatement's security section, signs every request with the token.
        smart.server.auth.access_token = token
    study = ImagingStudy.read(study_id, smart.server)
    search = ImagingStudy.where(struct={"patient": patient, "_count": "10", "_include": "ImagingStudy:endpoint"})
    pages = list(search.perform_iter(smart.server))  # follows the next links, each page a strict Bundle
    endpoint = Endpoint.read(study.endpoint[0].reference.removeprefix("Endpoint/"), smart.server)
    return {
        "fhirVersion": smart.server.capabilityStatement.fhirVersion,
        "study": study.as_json(),
        "pages": [[(e.resource.resource_type, e.resource.id, e.search.mode) for e in page.entry] for page in pages],
        "endpoint": endpoint.as_json(),
    }


async def test_smarts_python_client_reads_searches_and_pages_r4(open_bridge: TestClient, every_study: Loaded) -> None:
    full = every_study.awkward["full"]
    seen = await asyncio.to_thread(fhirclient_session, str(open_bridge.make_url("/fhir/r4")), full.uid, PAGING_PATIENT)
    assert seen["fhirVersion"] == "4.0.1"
    study = seen["study"]
    validate_r4(study)
    # R4's Codings, as fhirclient's models hold them: modality, series.modality, bodySite, laterality.
    assert [(m["system"], m["code"]) for m in study["modality"]] == [(DCM, "MR"), (DCM, "CT")]
    series = {s["number"]: s for s in study["series"]}
    assert (series[2]["modality"]["code"], series[2]["bodySite"]["code"]) == ("CT", "816094009")
    assert (series[1]["bodySite"]["code"], series[1]["laterality"]["code"]) == ("72696002", "7771000")
    assert [p["actor"]["display"] for p in series[2]["performer"]][:2] == ["Lisa Cuddy", "Tom Tech"]
    assert [i["number"] for i in series[2]["instance"]] == [1, 2, 3]
    assert study["numberOfInstances"] == 4
    matches = [uid for page in seen["pages"] for kind, uid, mode in page if mode == "match"]
    assert matches == paging_order(every_study.search.paging)  # 45 studies, newest first, in 5 pages
    assert len(seen["pages"]) == 5
    assert all(page[-1][0] == "Endpoint" for page in seen["pages"])  # each page includes the Endpoint
    endpoint = seen["endpoint"]
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
    assert endpoint["payloadType"] == [{"text": "DICOM"}]


async def test_smarts_python_client_reads_sr_titles_on_r4(open_bridge: TestClient, every_study: Loaded) -> None:
    spec = every_study.awkward["sr_and_seg"]
    seen = await asyncio.to_thread(fhirclient_session, str(open_bridge.make_url("/fhir/r4")), spec.uid, "PAT-SR")
    titles = {s["modality"]["code"]: s["instance"][0].get("title") for s in seen["study"]["series"]}
    assert titles == {"CT": None, "SR": "Radiology Report", "SEG": None, "DOC": "Referral letter", "KO": None}
    assert [uid for page in seen["pages"] for _, uid, mode in page if mode == "match"] == [spec.uid]


async def test_smarts_python_client_with_a_patients_token_on_r4(
    smart_bridge: TestClient, every_study: Loaded, auth_server: AuthServer
) -> None:
    base = str(smart_bridge.make_url("/fhir/r4"))
    own = every_study.search.paging[0]
    token = patient_token(auth_server, smart_bridge, "/fhir/r4")
    seen = await asyncio.to_thread(fhirclient_session, base, own.uid, PAGING_PATIENT, token)
    assert seen["study"]["id"] == own.uid
    matches = [uid for page in seen["pages"] for _, uid, mode in page if mode == "match"]
    assert matches == paging_order(every_study.search.paging)
    from fhirclient.server import FHIRNotFoundException, FHIRUnauthorizedException

    other = every_study.awkward["full"].uid  # another patient's study: as if missing
    with pytest.raises(FHIRNotFoundException):
        await asyncio.to_thread(fhirclient_session, base, other, PAGING_PATIENT, token)
    with pytest.raises(FHIRUnauthorizedException):  # and without the token, nothing
        await asyncio.to_thread(fhirclient_session, base, own.uid, PAGING_PATIENT)


# ---- the SMART JS client, under Node ----


async def test_the_smart_js_client_reads_r4_from_orthanc(open_bridge: TestClient, every_study: Loaded) -> None:
    require_installed(SCRIPT_DIR)
    study = every_study.search.paging[0]
    process = await asyncio.create_subprocess_exec(
        "node", str(SCRIPT_DIR / "r4check.js"), str(open_bridge.make_url("/fhir/r4")), study.uid, PAGING_PATIENT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    seen = json.loads(out)
    assert seen["release"] == seen["clientRelease"] == 4
    assert seen["endpoint"] == [["Endpoint", "dicom-wado-rs"]]  # the reference resolved to the R4 Endpoint
    assert seen["clientEndpoint"] == ["Endpoint"]
    assert seen["found"] == paging_order(every_study.search.paging)  # 45 studies: three pages iterated


# ---- fhirpy, on each base ----


@pytest.mark.parametrize("base", ["/fhir/r4", "/fhir/r5"])
async def test_fhirpy_with_a_patients_token(
    smart_bridge: TestClient, every_study: Loaded, auth_server: AuthServer, base: str
) -> None:
    fhir = AsyncFHIRClient(
        str(smart_bridge.make_url(base)), authorization=f"Bearer {patient_token(auth_server, smart_bridge, base)}",
        extra_headers={"Accept": "application/fhir+json"},
    )  # fmt: skip
    own = every_study.search.paging[0]
    study = await fhir.reference("ImagingStudy", own.uid).to_resource()
    endpoint = await study["endpoint"][0].to_resource()
    studies = fhir.resources("ImagingStudy")
    everything = await studies.limit(7).fetch_all()  # no patient named: the token's patient's studies alone
    raw = await studies.search(patient=PAGING_PATIENT).include("ImagingStudy", "endpoint").limit(10).fetch_raw()
    count = await studies.search(patient=PAGING_PATIENT).count()
    with pytest.raises(ResourceNotFound):
        await fhir.reference("ImagingStudy", every_study.awkward["full"].uid).to_resource()
    assert [r["id"] for r in everything] == paging_order(every_study.search.paging)
    assert count == 45
    assert [e["resource"]["resourceType"] for e in raw["entry"]] == ["ImagingStudy"] * 10 + ["Endpoint"]
    bundle = orjson.loads(orjson.dumps(raw))
    (validate_r4 if base == "/fhir/r4" else validate)(bundle)
    connection = endpoint["connectionType"]
    assert (connection["code"] if base == "/fhir/r4" else connection[0]["coding"][0]["code"]) == "dicom-wado-rs"
    modality = study["series"][0]["modality"]
    assert (modality["code"] if base == "/fhir/r4" else modality["coding"][0]["code"]) == "CT"
