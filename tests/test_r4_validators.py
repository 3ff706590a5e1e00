"""Every R4 resource the bridge emits, checked by R4 validators its own code and other tests do not use (pinned in
tests/r4validators/package-lock.json, run under Node): Medplum's ``validateResource`` with the R4
StructureDefinitions, every error-level R4 invariant evaluated by fhirpath.js with its R4 model, and Lantana's
FHIR.js. Read from the embedded default (pydicom's sample files, as a new user starts) and from the Orthanc holding
every catalog: each study, every page of a search with ``_include``, the Endpoint, the CapabilityStatement,
``$versions``, summaries and errors."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.settings import load_settings
from tests.conftest import orthanc_settings, start_client
from tests.support.every_catalog import Loaded
from tests.support.npm import require_installed

SCRIPT_DIR = Path(__file__).parent / "r4validators"
Json = dict[str, Any]

#: Searches and errors whose R4 answers are checked beside every read and every search page.
OTHERS = (
    "/fhir/r4/metadata",
    "/fhir/r4/$versions",
    "/fhir/r4/ImagingStudy?_summary=true",
    "/fhir/r4/ImagingStudy?_summary=count",
    "/fhir/r4/ImagingStudy?_elements=identifier,procedureCode,reasonCode,interpreter",
    "/fhir/r4/ImagingStudy/not-a-uid",
    "/fhir/r4/ImagingStudy/1.2.3.999",
    "/fhir/r4/ImagingStudy?nonsense=1",
    "/fhir/r4/Endpoint/wado-rs-0000000000000000",
)


async def validated(resources: dict[str, Json], folder: Path) -> Json:
    """What the validators say of ``resources``: ``{"checked": n, "failures": [{name, tool, message}]}``."""
    require_installed(SCRIPT_DIR)
    file = folder / "resources.json"
    file.write_text(json.dumps(resources))
    process = await asyncio.create_subprocess_exec(
        "node", str(SCRIPT_DIR / "validate.js"), str(file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode()
    said: Json = json.loads(out)
    return said


async def emitted(client: TestClient) -> dict[str, Json]:
    """Every R4 resource a client meets: each study's read, every page of the search with its Endpoint, the
    Endpoint's read, and ``OTHERS``."""
    found: dict[str, Json] = {}
    url: str | None = "/fhir/r4/ImagingStudy?_count=10&_include=ImagingStudy:endpoint"
    while url is not None:
        response = await client.get(url)
        assert response.status == 200, await response.text()
        page = found[url] = await response.json()
        link = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        base = str(client.make_url("/fhir/r4/"))
        assert link is None or link.startswith(base)  # paging stays on the R4 base
        url = None if link is None else "/fhir/r4/" + link.removeprefix(base)
    listed = {f"{r['resourceType']}/{r['id']}" for p in found.values() for r in (e["resource"] for e in p["entry"])
              if r["resourceType"] != "OperationOutcome"}  # fmt: skip
    assert any(name.startswith("Endpoint/") for name in listed)
    for name in listed:
        response = await client.get(f"/fhir/r4/{name}")
        assert response.status == 200, await response.text()
        found[name] = await response.json()
    for path in OTHERS:
        response = await client.get(path)
        found[path] = await response.json()
    return found


@pytest.fixture
async def embedded() -> AsyncIterator[TestClient]:
    client = await start_client(load_settings({}))
    yield client
    await client.close()


async def test_every_r4_resource_of_the_embedded_default_passes_independent_r4_validators(
    embedded: TestClient, tmp_path: Path
) -> None:
    resources = await emitted(embedded)
    said = await validated(resources, tmp_path)
    assert said["failures"] == []
    assert sum(name.startswith("ImagingStudy/") for name in resources) >= 30  # pydicom's samples: 31 studies


async def test_every_r4_resource_read_from_orthanc_passes_independent_r4_validators(
    every_study: Loaded, tmp_path: Path
) -> None:
    client = await start_client(orthanc_settings(every_study.pacs))
    try:
        resources = await emitted(client)
    finally:
        await client.close()
    said = await validated(resources, tmp_path)
    assert said["failures"] == []
    studies = {name.removeprefix("ImagingStudy/") for name in resources if name.startswith("ImagingStudy/")}
    assert studies == {spec.uid for spec in every_study.specs} - every_study.shared


async def test_the_independent_validators_refuse_r5_shapes_and_broken_invariants(
    embedded: TestClient, tmp_path: Path
) -> None:
    """The validators must refuse what they exist to refuse, or their silence above proves nothing."""
    resources = await emitted(embedded)
    study = next(r for name, r in resources.items() if name.startswith("ImagingStudy/") and r.get("series"))
    endpoint = next(r for name, r in resources.items() if name.startswith("Endpoint/"))
    r5_modality, dangling, no_payload = copy.deepcopy(study), copy.deepcopy(study), copy.deepcopy(endpoint)
    r5_modality["series"][0]["modality"] = {"coding": [study["series"][0]["modality"]]}
    dangling["referrer"] = {"reference": "#nothing-contained"}
    del no_payload["payloadType"]
    said = await validated({"r5-modality": r5_modality, "dangling": dangling, "no-payload": no_payload}, tmp_path)
    failed = {(f["name"], f["tool"]) for f in said["failures"]}
    assert {("r5-modality", "medplum"), ("dangling", "fhirpath"), ("no-payload", "medplum")} <= failed
