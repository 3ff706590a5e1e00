"""The README as run: every command it shows is run here as printed, or is exempted below with the reason.

What is a command: each line of a ```` ```sh ```` block (``\\`` continuations joined, ``&&`` chains split, a
trailing ``# comment`` kept beside it), and each line of another block or inline code span that starts, after any
``NAME=value`` assignments, with a program: one of ``PROGRAMS`` given an argument, a program in ``.venv/bin/``, or an
executable file of this repository (``scripts/test``). A command that is neither run nor in ``NOT_RUN`` fails
``test_every_command_is_run_or_exempted``, so a command added to the README is run, or exempted on purpose.

What is run, as on a fresh clone after the README's first command: in an empty folder holding ``.venv`` (a link to
the venv these tests run in, with PYTHONPATH on this checkout so that its ``bridge`` is the one run) and in an
environment without ``BRIDGE_*`` variables:

- the venv's bridge ``serve`` with no configuration (the embedded default, pydicom's samples): it must answer.
  The first one is the service the ``curl`` lines ask. It listens on a free port (``BRIDGE_PORT``), not on the
  README's 8080, and ``127.0.0.1:8080`` in a ``curl`` line becomes that port: the one change made to a command.
- ``curl`` against ``http://127.0.0.1:8080``: it must exit 0 with a FHIR resource, valid R5, of the type the
  line's comment starts with (``# 400 OperationOutcome``), else of the type the URL asks for; with ``-i``, the
  status the comment starts with, else 200. A read answers the study asked for; a search finds something; an
  ``_include=ImagingStudy:endpoint`` includes an Endpoint unless the comment says ``no Endpoint``. Under
  ``/dicom-web`` (WADO-RS from the samples): see ``check_dicomweb``.
- the venv's bridge ``get`` (the study asked for) and ``refresh`` (a summary, nothing failed, and studies fetched
  when it names some).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.fhircheck import validate, validate_r4

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()

#: Where the README says the service listens.
PRINTED_ADDRESS = "127.0.0.1:8080"

#: Programs whose name, given an argument, makes an inline code span a command.
PROGRAMS = frozenset(
    {".", "source", "sh", "bash", "curl", "python", "python3", "pip", "imaging-bridge", "docker", "make", "mypy",
     "ruff", "pytest"}
)  # fmt: skip

#: The README's commands that are not run here, and why.
NOT_RUN = {
    "python3 -m venv .venv": "the venv these tests run in stands for it (scripts/test makes it so)",
    ".venv/bin/pip install -e .": "scripts/test installs the project into that venv (with its test extras)",
    "scripts/test": "the suite itself",
    "scripts/test -k mapping": "the suite itself",
    'scripts/test -m "not integration"': "the suite itself",
    ".ci/run": "runs scripts/test",
    "mypy --strict": "names how scripts/test runs mypy",
    ". .venv/bin/activate": "changes the reader's shell; each command here runs in a new one",
    "BRIDGE_QIDO_URL=https://pacs.example.org/dicom-web BRIDGE_PACS_USERNAME=bridge BRIDGE_PACS_PASSWORD=secret "
    ".venv/bin/imaging-bridge serve": "a PACS of the reader's own",
    "BRIDGE_QIDO_URL=file:///srv/dicom .venv/bin/imaging-bridge serve": "a folder of the reader's own",
    "docker compose up --build": "needs a Docker daemon and images from the network",
    ".venv/bin/python -m tests.support.record_qido": "rewrites tests/data/mapping (by hand, when the catalog changes)",
}

BRIDGE = r"\.venv/bin/(?:imaging-bridge|python -m bridge)"
SERVE = re.compile(rf"{BRIDGE} serve")
CLI = re.compile(rf"{BRIDGE} (?:get|refresh) .+")
CURL = re.compile(rf"curl .*http://{re.escape(PRINTED_ADDRESS)}/.*")

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"`([^`\n]+)`")
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=\S*")
URL = re.compile(rf"http://{re.escape(PRINTED_ADDRESS)}[^\s']*")
#: What a comment says comes back: a status, a resource type, or both, at its start.
ANSWER = re.compile(r"(?:(?P<status>[1-5]\d\d)\b\s*)?(?P<type>CapabilityStatement|ImagingStudy|Bundle|Endpoint|"
                    r"OperationOutcome|Parameters)?\b")  # fmt: skip


@dataclass(frozen=True)
class Command:
    text: str
    comment: str = ""


def is_command(span: str) -> bool:
    words = span.split()
    while words and ASSIGNMENT.fullmatch(words[0]):
        words.pop(0)
    if not words:
        return False  # a setting written out (BRIDGE_HEALTH_DETAILS=true), not a command
    program = words[0]
    if program in PROGRAMS:
        return len(words) > 1
    if program.startswith(".venv/bin/"):
        return re.fullmatch(r"\.venv/bin/[\w.-]+", program) is not None
    path = ROOT / program
    return "/" in program and path.is_file() and os.access(path, os.X_OK)


def readme_commands(text: str) -> list[Command]:
    """The commands ``text`` shows, whitespace collapsed as the shell does outside quotes."""
    commands = []
    for info, block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            code, _, comment = line.partition(" #")
            if info == "sh" or is_command(code):  # a command in another block (```bash, a tree) counts too
                commands += [Command(" ".join(part.split()), comment.strip()) for part in code.split("&&")]
    for span in SPAN.findall(FENCE.sub("", text)):
        if is_command(span):
            commands += [Command(" ".join(part.split())) for part in span.split("&&")]
    return [command for command in commands if command.text]


COMMANDS = readme_commands(README)
#: The ways to start the service, each once (the README shows one twice).
SERVES = list(dict.fromkeys(command.text for command in COMMANDS if SERVE.fullmatch(command.text)))


def runs(command: Command) -> bool:
    return any(pattern.fullmatch(command.text) for pattern in (SERVE, CLI, CURL))


def test_every_command_is_run_or_exempted() -> None:
    assert COMMANDS, "no commands found in the README: has its format changed?"
    shown = {command.text for command in COMMANDS}
    neither = sorted(command.text for command in COMMANDS if not runs(command) and command.text not in NOT_RUN)
    both = sorted(command.text for command in COMMANDS if runs(command) and command.text in NOT_RUN)
    stale = sorted(set(NOT_RUN) - shown)

    assert neither == [], "README commands neither run by this test nor in NOT_RUN (a bare program needs .venv/bin/)"
    assert both == [], "README commands both run and exempted"
    assert stale == [], "NOT_RUN names commands the README no longer shows"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty folder with the README's ``.venv``: the venv these tests run in, which must hold the project."""
    venv = Path(sys.prefix)
    assert (venv / "bin" / "imaging-bridge").exists(), f"{venv} has no imaging-bridge: run in the project's venv"
    folder = tmp_path_factory.mktemp("clone")
    (folder / ".venv").symlink_to(venv)
    return folder


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without BRIDGE_* variables, this checkout's ``bridge`` first on the path."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BRIDGE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**env, **extra}


def run(command: str, clone: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", command], cwd=clone, env=environment(), capture_output=True, text=True, timeout=60
    )


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def serve(command: str, clone: Path, log: Path) -> Iterator[int]:
    """Start ``command`` on a free port, yield the port once it answers, then stop it and check it stopped cleanly."""
    port = free_port()
    with log.open("w") as output:
        process = subprocess.Popen(
            shlex.split(command), cwd=clone, env=environment(BRIDGE_PORT=str(port)), stdout=output, stderr=output
        )
    try:
        deadline = time.monotonic() + 60
        while not answers(port):
            assert time.monotonic() < deadline, f"{command} did not answer within 60 s:\n{log.read_text()}"
            try:
                process.wait(timeout=0.1)  # returns only if the service exited
            except subprocess.TimeoutExpired:
                continue
            pytest.fail(f"{command} exited with {process.returncode}:\n{log.read_text()}")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert process.returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text()


@pytest.fixture(scope="module")
def service(clone: Path) -> Iterator[int]:
    """The README's first ``serve``, with no configuration: the port the ``curl`` lines are sent to."""
    assert SERVES, "the README shows no way to start the service"
    with serve(SERVES[0], clone, clone / "service.log") as port:
        yield port


@pytest.mark.parametrize("command", SERVES[1:])
def test_serve(command: str, clone: Path, tmp_path: Path) -> None:
    with serve(command, clone, tmp_path / "serve.log"):
        pass  # it answered; that it stops cleanly is checked on the way out


def expected_answer(command: Command, path: str) -> tuple[int | None, str]:
    """The status and resource type the README says ``command`` answers with (the type, by default, from the URL)."""
    said = ANSWER.match(command.comment)
    status = int(said["status"]) if said and said["status"] else None
    if said and said["type"]:
        return status, said["type"]
    if path.endswith("/metadata"):
        return status, "CapabilityStatement"
    if path.endswith(("/ImagingStudy", "/_search")):
        return status, "Bundle"
    return status, path.strip("/").split("/")[-2]  # a read: /fhir/{type}/{id}


def split_response(output: str, shows_headers: bool) -> tuple[int | None, str]:
    if not shows_headers:
        return None, output
    head, _, body = output.partition("\n\n")  # text mode has made each CRLF a newline
    return int(head.split()[1]), body


@pytest.mark.parametrize("command", [c for c in COMMANDS if CURL.fullmatch(c.text)], ids=lambda c: c.text)
def test_curl(command: Command, clone: Path, service: int) -> None:
    result = run(command.text.replace(PRINTED_ADDRESS, f"127.0.0.1:{service}"), clone)
    assert result.returncode == 0, result.stderr

    address = URL.search(command.text)
    assert address is not None
    url = urlsplit(address[0])
    if url.path.startswith("/dicom-web/"):
        check_dicomweb(command, url.path, result.stdout, clone)
        return
    status, resource_type = expected_answer(command, url.path)
    shows_headers = re.search(r" (?:-\w*i|--include)\b", command.text) is not None
    assert status is None or shows_headers, "the comment names a status the command does not show: add -i"
    got_status, body = split_response(result.stdout, shows_headers)
    resource = json.loads(body)
    assert resource["resourceType"] == resource_type, body[:2000]
    if shows_headers:
        assert got_status == (status or 200)
    if url.path.startswith("/fhir/r4/") or "fhirVersion=4.0" in command.text:
        validate_r4(resource)
    else:
        validate(resource)
    if resource_type == "ImagingStudy":
        assert resource["id"] == url.path.rsplit("/", 1)[-1]
    if resource_type == "Bundle":
        assert resource.get("total", 0) > 0 or resource.get("entry"), "the search finds nothing"
        if "_include=ImagingStudy:endpoint" in url.query:
            included = [e for e in resource.get("entry", []) if e["resource"]["resourceType"] == "Endpoint"]
            assert bool(included) != ("no Endpoint" in command.comment), command.comment


def check_dicomweb(command: Command, path: str, output: str, clone: Path) -> None:
    """A WADO-RS command: metadata is DICOM JSON, one dataset per instance; a command that writes its body to
    a file (``-o``) prints the status and media type its comment starts with (``-w``), and the file holds it."""
    if path.endswith("/metadata"):
        datasets = json.loads(output)
        assert datasets, output[:2000]
        assert all("00080018" in dataset for dataset in datasets), output[:2000]
        return
    written = re.search(r" -o (\S+)", command.text)
    assert written is not None, "a WADO-RS command printing binary: write it to a file with -o"
    status, _, media_type = command.comment.partition(":")[0].partition(" ")
    assert output.split(";")[0].strip() == f"{status} {media_type}", output
    body = (clone / written[1]).read_bytes()
    boundary = output.split("boundary=")[1].strip().strip('"').encode()
    assert body.startswith(b"--" + boundary), body[:200]
    assert body.rstrip().endswith(b"--" + boundary + b"--"), body[-200:]


@pytest.mark.parametrize("command", [c.text for c in COMMANDS if CLI.fullmatch(c.text)])
def test_cli(command: str, clone: Path) -> None:
    result = run(command, clone)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr

    words = command.split()
    if words[-2] == "get":
        resource = json.loads(result.stdout)
        validate(resource)
        assert resource["resourceType"] == "ImagingStudy"
        assert resource["id"] == words[-1]
    else:
        summary = re.search(r"checked (\d+), changed (\d+), fetched (\d+), failed (\d+)", result.stderr)
        assert summary, result.stderr
        assert summary[4] == "0", result.stderr
        if "--due" not in words:  # names studies: some are read
            assert int(summary[3]) > 0, result.stderr
