"""The environment for a bridge started as a process (``python -m bridge``) by a test."""

from __future__ import annotations

import os
from pathlib import Path

#: The checkout whose ``bridge`` is under test.
CHECKOUT = Path(__file__).resolve().parents[2]


def bridge_env(**settings: str) -> dict[str, str]:
    """This environment without any BRIDGE_ variable (as on a fresh machine), plus ``settings``, importing the
    ``bridge`` of this checkout: the installed one (an editable install of another worktree, say) would
    otherwise be the one run, and the test would pass or fail for code it never ran."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BRIDGE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHECKOUT), env.get("PYTHONPATH")]))
    env.update(settings)
    return env
