"""The npm packages the tests run under Node (viewer/, tests/smartjs/, tests/r4validators/): each folder pins them
in a committed package-lock.json, and scripts/test runs ``npm ci`` there when the lock changed, then keeps a copy
of the lock it installed from in node_modules. A test checks that copy before it runs Node: a missing or stale
install fails the test, saying what to run, rather than skipping it."""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def require_installed(folder: Path) -> None:
    """Fail unless ``node`` is on PATH and ``folder``/node_modules was installed from ``folder``'s lock."""
    if shutil.which("node") is None:
        pytest.fail("node is missing: run scripts/test (it installs Debian's nodejs and npm)")
    kept = folder / "node_modules" / ".installed-package-lock.json"
    if not kept.exists() or not filecmp.cmp(kept, folder / "package-lock.json", shallow=False):
        name = folder.relative_to(ROOT)
        pytest.fail(
            f"{name}/node_modules is missing or not installed from its package-lock.json: run scripts/test (or "
            f"`npm ci` in {name} and copy package-lock.json to node_modules/.installed-package-lock.json)"
        )
