"""Which tests need a real Orthanc or Redis: they are marked ``integration`` (``pytest -m "not integration"``
runs the rest without either installed).

conftest marks every test that uses the ``orthanc`` or ``redis_server`` fixture (directly or through another
fixture); a test that starts a server itself must carry the mark, and ``require`` refuses to start one for a
test without it, so the mark cannot be forgotten.
"""

from __future__ import annotations

#: Fixtures that start a real server: a test using any of them (through any fixture) is an integration test.
FIXTURES = frozenset({"orthanc", "redis_server", "every_study"})

#: The running test's id while it is unmarked; None between tests and outside pytest (scripts start servers too).
_unmarked_test: str | None = None


def running(test_id: str | None) -> None:
    """Called by conftest as each test is set up (its id if it is not marked) and torn down (None)."""
    global _unmarked_test
    _unmarked_test = test_id


def require(server: str) -> None:
    """Refuse to start ``server`` for a test that is not marked ``integration``."""
    if _unmarked_test is not None:
        raise RuntimeError(
            f"{_unmarked_test} starts a real {server}: mark it @pytest.mark.integration "
            "(or use the orthanc / redis_server fixture, which marks it)"
        )
