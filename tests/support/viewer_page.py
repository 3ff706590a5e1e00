"""The Cornerstone3D test viewer (viewer/): built with esbuild, served from an origin of its own.

``npm ci`` is run by scripts/test (when viewer/node_modules is missing or older than package-lock.json); the
bundle is built here, once per run, so a change to viewer/src is always what the tests drive."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.npm import require_installed

VIEWER = Path(__file__).resolve().parents[2] / "viewer"


def build() -> Path:
    """Bundle viewer/src into viewer/dist (esbuild, well under a second); returns the folder to serve."""
    npm = shutil.which("npm")
    assert npm, "npm is not installed (scripts/test installs Debian's nodejs and npm)"
    require_installed(VIEWER)
    built = subprocess.run([npm, "run", "--silent", "build"], cwd=VIEWER, capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, f"esbuild failed:\n{built.stdout}\n{built.stderr}"
    dist = VIEWER / "dist"
    shutil.copyfile(VIEWER / "src" / "index.html", dist / "index.html")
    return dist


async def serve(dist: Path) -> TestServer:
    """A web server of its own origin (``http://127.0.0.1:<port>``) serving the built page."""
    app = web.Application()

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(dist / "index.html")

    app.router.add_get("/", index)
    app.router.add_static("/", dist)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server
