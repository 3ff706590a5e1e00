"""The command line as a newcomer meets it: no configuration, pydicom's sample files, real processes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.fhircheck import validate
from tests.support.process import bridge_env

CT_SMALL_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"  # pydicom's CT_small.dcm


def clean_env() -> dict[str, str]:
    """The environment without any BRIDGE_ variable, as on a fresh machine (running this checkout's bridge)."""
    return bridge_env()


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args], capture_output=True, text=True, timeout=timeout,
        env=env or clean_env(), cwd=cwd,
    )  # fmt: skip


def test_get_prints_a_valid_imaging_study(tmp_path: Path) -> None:
    result = run("get", CT_SMALL_STUDY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    resource = json.loads(result.stdout)
    validate(resource)
    assert resource["id"] == CT_SMALL_STUDY
    assert resource["numberOfInstances"] == 1


@pytest.mark.parametrize(("study", "message"), [("1.2.3", "no study"), ("not-a-uid", "not a DICOM StudyInstanceUID")])
def test_get_fails_clearly(tmp_path: Path, study: str, message: str) -> None:
    result = run("get", study, cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr


def test_bad_configuration_stops_at_start_naming_the_variable(tmp_path: Path) -> None:
    result = run("serve", env={**clean_env(), "BRIDGE_PORT": "eighty"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "BRIDGE_PORT" in result.stderr


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["get", CT_SMALL_STUDY]])
def test_a_misspelt_variable_stops_the_start_naming_the_setting(tmp_path: Path, command: list[str]) -> None:
    # A serve that starts instead runs until the timeout: the test then fails at once rather than at pytest's bound.
    result = run(*command, env={**clean_env(), "BRIDGE_CACHE_TTLL": "60"}, cwd=tmp_path, timeout=20)
    assert result.returncode == 2
    assert "BRIDGE_CACHE_TTLL is not a setting (did you mean BRIDGE_CACHE_TTL?)" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_config_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "bridge.env").write_text("BRIDGE_TIMEZONE=Nowhere/Land\n")
    result = run("get", CT_SMALL_STUDY, cwd=tmp_path)
    assert result.returncode == 2
    assert "BRIDGE_TIMEZONE" in result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_with_no_configuration_answers_imaging_study_json(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve", "--port", str(port)], env=clean_env(), cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/fhir/ImagingStudy/{CT_SMALL_STUDY}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    body = json.load(response)
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.2)  # the poll interval of a wait with a deadline: until the process listens
        validate(body)
        assert body["resourceType"] == "ImagingStudy"
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=15)
    assert "Traceback" not in stderr


def test_a_bridge_in_front_of_an_http_pacs_does_not_import_pydicom(tmp_path: Path) -> None:
    # ``import pydicom`` imports numpy and requests too: 18 MiB of a 75 MiB process, which a bridge reading an
    # HTTP PACS needs nothing of (it names SOP Classes from pydicom's UID table, read on its own).
    script = """
import asyncio, sys
from bridge.cli import main
from bridge.mapping.imagingstudy import sop_class_name
from bridge.qido.factory import open_source
from bridge.settings import load_settings
from bridge.web.app import create_app

settings = load_settings({"BRIDGE_QIDO_URL": "http://pacs.internal/dicom-web"})
create_app(settings)

async def opened():
    await (await open_source(settings)).close()

asyncio.run(opened())
assert sop_class_name("1.2.840.10008.5.1.4.1.1.2") == "CT Image Storage"
print(sorted({"pydicom", "numpy", "requests", "PIL", "dicomweb_client"} & set(sys.modules)))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=clean_env(), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
