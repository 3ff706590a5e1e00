"""Run a throwaway Orthanc server (with the DICOMweb plugin) for integration tests.

Only the standard library is used on purpose: the helpers are called from synchronous pytest
fixtures and must not depend on (or interfere with) the aiohttp event loop under test.

Typical use::

    with start_orthanc(tmp_path) as orthanc:
        orthanc.upload(dicom_bytes)
        ...  # point the bridge at orthanc.dicomweb_url with orthanc.username/password
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tests.support import integration

__all__ = [
    "OrthancError",
    "OrthancServer",
    "find_dicomweb_plugin",
    "find_orthanc_binary",
    "start_orthanc",
]

# Where Debian/Ubuntu and common hand-made installations put the plugin. The unversioned name in
# /usr/share/orthanc/plugins is a symlink to the versioned library in /usr/lib/orthanc.
_KNOWN_PLUGIN_PATHS = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so"),
    Path("/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/local/lib/orthanc/libOrthancDicomWeb.so"),
)

_LOCALHOST = "127.0.0.1"
_DEFAULT_USERNAME = "bridge"


class OrthancError(RuntimeError):
    """Orthanc could not be found, started or talked to."""


def find_orthanc_binary() -> Path:
    """Return the path of the ``Orthanc`` executable (``$ORTHANC_BINARY`` overrides the lookup)."""
    override = os.environ.get("ORTHANC_BINARY")
    found = override or shutil.which("Orthanc")
    if not found or not Path(found).is_file():
        raise OrthancError("Orthanc executable not found (install the Debian package 'orthanc' or set ORTHANC_BINARY)")
    return Path(found)


def find_dicomweb_plugin() -> Path:
    """Return the path of the Orthanc DICOMweb plugin shared library.

    ``$ORTHANC_DICOMWEB_PLUGIN`` overrides the lookup. Otherwise the file list of the Debian
    package ``orthanc-dicomweb`` is consulted (it knows the exact, versioned file name), then a few
    well-known locations.
    """
    override = os.environ.get("ORTHANC_DICOMWEB_PLUGIN")
    if override:
        path = Path(override)
        if not path.is_file():
            raise OrthancError(f"ORTHANC_DICOMWEB_PLUGIN={override!r} is not a file")
        return path

    for candidate in (*_dpkg_plugin_candidates(), *_KNOWN_PLUGIN_PATHS):
        if candidate.is_file():
            return candidate

    raise OrthancError(
        "Orthanc DICOMweb plugin (libOrthancDicomWeb.so) not found; install the Debian package "
        "'orthanc-dicomweb' or set ORTHANC_DICOMWEB_PLUGIN"
    )


def _dpkg_plugin_candidates() -> list[Path]:
    """List the plugin libraries installed by ``orthanc-dicomweb`` (empty if dpkg is unavailable)."""
    try:
        listing = subprocess.run(
            ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if listing.returncode != 0:
        return []
    return [Path(line) for line in listing.stdout.splitlines() if Path(line).name.startswith("libOrthancDicomWeb.so")]


def _free_port() -> int:
    """Ask the kernel for a currently unused loopback TCP port.

    There is an unavoidable window between closing this socket and Orthanc binding the port; it is
    harmless in practice for tests and avoids hard-coding ports that parallel runs would share.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOCALHOST, 0))
        return int(sock.getsockname()[1])


class OrthancServer:
    """A real Orthanc process listening on 127.0.0.1, storing everything under ``work_dir``.

    The server requires HTTP basic authentication (user :attr:`username`, password
    :attr:`password`) so that the bridge's authentication code path is exercised.
    """

    def __init__(
        self,
        work_dir: Path | str,
        *,
        username: str = _DEFAULT_USERNAME,
        password: str | None = None,
        startup_timeout: float = 30.0,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        """Prepare (but do not start) a server.

        ``extra_config`` is merged over the generated top-level configuration, which lets a test
        tweak e.g. ``LimitFindResults`` without subclassing.
        """
        self.work_dir = Path(work_dir)
        self._username = username
        self._password = password or secrets.token_urlsafe(16)
        self._startup_timeout = startup_timeout
        self._extra_config = dict(extra_config or {})
        self.http_port = 0
        self.dicom_port = 0
        self.config_path = self.work_dir / "orthanc.json"
        self.log_path = self.work_dir / "orthanc.log"
        self._process: subprocess.Popen[bytes] | None = None

    # -- public properties -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """Root of Orthanc's REST API, e.g. ``http://127.0.0.1:40123``."""
        return f"http://{_LOCALHOST}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """Root of the DICOMweb API (QIDO-RS/WADO-RS/STOW-RS), without trailing slash."""
        return f"{self.base_url}/dicom-web"

    @property
    def username(self) -> str:
        """Basic-auth user name accepted by the server."""
        return self._username

    @property
    def password(self) -> str:
        """Basic-auth password accepted by the server."""
        return self._password

    @property
    def running(self) -> bool:
        """Whether the Orthanc process is alive."""
        return self._process is not None and self._process.poll() is None

    # -- lifecycle ---------------------------------------------------------------------------

    def build_config(self) -> dict[str, Any]:
        """Return the Orthanc configuration used for this server."""
        config: dict[str, Any] = {
            "Name": "bridge-tests",
            "StorageDirectory": str(self.work_dir / "storage"),
            "IndexDirectory": str(self.work_dir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "BRIDGETEST",
            # Loopback only: Orthanc binds all interfaces, so refusing remote clients is the only
            # thing that keeps the test server private.
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self._username: self._password},
            "HttpDescribeErrors": True,
            # Nothing must survive between runs or slow down shutdown.
            "SaveJobs": False,
            "StorageCompression": False,
            # Unlimited by default, made explicit because QIDO-RS paging tests depend on it.
            "LimitFindResults": 0,
            "LimitFindInstances": 0,
            "Plugins": [str(find_dicomweb_plugin())],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": False,
                # "Full" makes WADO-RS Retrieve Metadata read every instance file, so /metadata
                # returns all attributes rather than only Orthanc's indexed "main DICOM tags".
                # (QIDO-RS is not affected by these two settings, see docs/orthanc-notes.md.)
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
            },
        }
        config.update(self._extra_config)
        return config

    def start(self) -> Self:
        """Write the configuration, launch Orthanc and wait until its REST API answers."""
        if self.running:
            return self
        integration.require("Orthanc")
        binary = find_orthanc_binary()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.http_port = _free_port()
        self.dicom_port = _free_port()
        self.config_path.write_text(json.dumps(self.build_config(), indent=2), encoding="utf-8")

        # --logfile keeps Orthanc's chatter out of the pytest output; stdout/stderr are still
        # captured in the same file for anything printed before the logger is initialised.
        with open(self.work_dir / "orthanc.stdout.log", "ab") as console:
            self._process = subprocess.Popen(
                [str(binary), "--no-jobs", f"--logfile={self.log_path}", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
            )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise OrthancError(
                    f"Orthanc exited with status {self._process.returncode} during startup\n{self.log_tail()}"
                )
            try:
                self.get_json("/system", timeout=2.0)
                return
            except (OSError, OrthancError) as exc:  # connection refused until the port is bound
                last_error = exc
                time.sleep(0.05)  # the poll interval of a wait with a deadline: until Orthanc answers
        raise OrthancError(
            f"Orthanc did not answer /system within {self._startup_timeout:.0f}s "
            f"(last error: {last_error})\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate Orthanc (SIGTERM lets it close its SQLite index cleanly), killing it if stuck."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of Orthanc's log, for error messages."""
        chunks: list[str] = []
        for path in (self.log_path, self.work_dir / "orthanc.stdout.log"):
            if path.is_file():
                tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
                if tail:
                    chunks.append(f"--- {path} (last {len(tail)} lines) ---\n" + "\n".join(tail))
        return "\n".join(chunks) or "(Orthanc wrote no log)"

    # -- REST helpers ------------------------------------------------------------------------

    @property
    def _auth_header(self) -> str:
        # Sent pre-emptively: urllib's password manager would first send an unauthenticated
        # request and retry on 401, doubling every call.
        token = base64.b64encode(f"{self._username}:{self._password}".encode()).decode("ascii")
        return f"Basic {token}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """Perform an authenticated request; return ``(status, headers, body)`` for any status."""
        all_headers = {"Authorization": self._auth_header, **(headers or {})}
        req = urllib.request.Request(self.base_url + path, data=body, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, dict(response.headers.items()), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers.items()), error.read()

    def _json_request(self, method: str, path: str, body: bytes | None = None, timeout: float = 30.0) -> Any:
        status, _, payload = self.request(method, path, body, timeout=timeout)
        if status >= 400:
            raise OrthancError(f"{method} {path} -> HTTP {status}: {payload[:500]!r}")
        return json.loads(payload) if payload else None

    def get_json(self, path: str, *, timeout: float = 30.0) -> Any:
        """GET a REST path (e.g. ``/studies``) and decode the JSON answer."""
        return self._json_request("GET", path, timeout=timeout)

    def upload(self, data: bytes) -> dict[str, Any]:
        """Store one DICOM Part-10 file; return Orthanc's answer (``ID``, ``Status``, ...)."""
        result = self._json_request("POST", "/instances", data)
        if not isinstance(result, dict):
            raise OrthancError(f"unexpected answer to POST /instances: {result!r}")
        return result

    def upload_many(self, files: Iterable[bytes], *, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Store many DICOM files over a single keep-alive connection (much faster than ``upload``).

        urllib opens a new connection per request; with thousands of instances the TCP setup
        dominates, so this uses one ``http.client`` connection instead.
        """
        results: list[dict[str, Any]] = []
        conn = http.client.HTTPConnection(_LOCALHOST, self.http_port, timeout=timeout)
        try:
            for data in files:
                conn.request(
                    "POST",
                    "/instances",
                    body=data,
                    headers={"Authorization": self._auth_header, "Content-Type": "application/dicom"},
                )
                response = conn.getresponse()
                payload = response.read()
                if response.status >= 400:
                    raise OrthancError(f"POST /instances -> HTTP {response.status}: {payload[:500]!r}")
                results.append(json.loads(payload))
        finally:
            conn.close()
        return results

    def delete_all(self) -> None:
        """Delete every patient (and therefore every study/series/instance) from Orthanc."""
        for patient_id in self.get_json("/patients"):
            self._json_request("DELETE", f"/patients/{patient_id}")

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<OrthancServer {self.base_url} {state} work_dir={str(self.work_dir)!r}>"


def start_orthanc(tmp_dir: Path | str, **kwargs: Any) -> OrthancServer:
    """Create and start an :class:`OrthancServer` storing its data in ``tmp_dir``.

    Keyword arguments are passed to :class:`OrthancServer`. The caller must call ``stop()`` (or
    use the returned server as a context manager).
    """
    return OrthancServer(tmp_dir, **kwargs).start()
