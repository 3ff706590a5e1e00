"""The SMART JS client (``fhirclient`` on npm, 2.6.3, pinned in tests/smartjs/package-lock.json) under Node, against
the bridge: it maps a CapabilityStatement's ``fhirVersion`` to a release through a fixed table (4.0.1 is 4; 5.0.0
is 0, unknown), so /fhir/r4 must say exactly 4.0.1; and it resolves a study's endpoint references."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bridge.qido.memory import MemoryQidoSource
from bridge.settings import load_settings
from tests.conftest import start_client
from tests.support.npm import require_installed
from tests.test_versions import STUDY, pacs

SCRIPT_DIR = Path(__file__).parent / "smartjs"


async def smart_js(base_url: str, patient: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        "node", str(SCRIPT_DIR / "r4check.js"), base_url, STUDY, patient,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    seen: dict[str, Any] = json.loads(out)
    return seen


@pytest.fixture
def source() -> MemoryQidoSource:
    return pacs()


@pytest.mark.parametrize(("path", "release"), [("/fhir/r4", 4), ("/fhir/r5", 0), ("/fhir", 0)])
async def test_the_smart_js_client_reads_the_release_and_resolves_endpoints(
    source: MemoryQidoSource, path: str, release: int
) -> None:
    require_installed(SCRIPT_DIR)
    settings = load_settings(
        {"BRIDGE_QIDO_URL": "http://pacs.internal/dicom-web", "BRIDGE_WADO_URL": "https://pacs/wado"}
    )
    client = await start_client(settings, source)
    try:
        seen = await smart_js(str(client.make_url(path)), "P1")
    finally:
        await client.close()
    assert seen["release"] == seen["clientRelease"] == release  # the client's table knows 4.0.1, not 5.0.0
    assert seen["found"] == [STUDY]
    assert seen["clientEndpoint"] == ["Endpoint"]
    # R4's Endpoint has one connectionType Coding; R5's is a list (the script reads .code of what it gets).
    assert seen["endpoint"] == [["Endpoint", "dicom-wado-rs" if path == "/fhir/r4" else None]]
