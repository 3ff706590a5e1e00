"""How the HTTP server runs: its limits and timeouts, and the optional admin listener.

With BRIDGE_ADMIN_PORT set, /healthz, /readyz (with the reason the PACS is unavailable) and /metrics are served
on a listener of their own (BRIDGE_ADMIN_HOST, loopback by default) and no longer on the public one: an
operator can then keep them from the clients, who need neither the PACS's address nor the service's figures.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from bridge.settings import Settings
from bridge.web import observe
from bridge.web.handlers import healthz, readiness
from bridge.web.keys import SETTINGS, SOURCE
from bridge.web.outcomes import SERVER_LIMITS

log = logging.getLogger(__name__)

#: The runner of the admin listener, when there is one (its ``addresses`` say where it listens).
ADMIN = web.AppKey("admin", web.AppRunner)


def server_options(settings: Settings) -> dict[str, Any]:
    """What the HTTP server is run with, by ``imaging-bridge serve`` and by the tests alike.

    aiohttp has no bound of its own on the time to send headers; its keep-alive timer runs from a connection's
    start (and from each response) until the next request's headers are in, and closes the connection if it is
    still waiting then: set to BRIDGE_CLIENT_READ_TIMEOUT, it bounds the header phase, and a byte every 10 s no
    longer holds a connection. (An idle keep-alive connection is closed after as long: a reverse proxy that keeps
    connections to the bridge must drop idle ones sooner.) The body is bounded where it is read (POST _search);
    an unread body is drained, then the connection closed, within the same bound (``lingering_time``)."""
    return {
        **SERVER_LIMITS,
        "keepalive_timeout": settings.client_read_timeout,
        "lingering_time": min(settings.client_read_timeout, 10.0),  # aiohttp's default is 10 s
    }


def probe_routes(details: bool) -> list[tuple[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]]:
    """The operator's routes: liveness, readiness (``details``: with the reason), metrics."""
    return [("/healthz", healthz), ("/readyz", readiness(details)), ("/metrics", observe.metrics)]


async def admin_listener(app: web.Application) -> AsyncIterator[None]:
    """The admin listener (BRIDGE_ADMIN_PORT): opened once the PACS source is, closed before it."""
    settings = app[SETTINGS]
    assert settings.admin_port is not None
    admin = web.Application()
    admin[SOURCE] = app[SOURCE]
    envelope = observe.Envelope(None, settings.request_deadline)  # counted in the metrics; not access-logged
    for path, handler in probe_routes(details=True):
        admin.router.add_get(path, envelope(handler, path))
    runner = web.AppRunner(admin, access_log=None, **server_options(settings))
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.admin_host, settings.admin_port).start()
        app[ADMIN] = runner
        log.info("health and metrics at %s", ", ".join(f"http://{_shown(a)}" for a in runner.addresses))
        yield
    finally:
        await runner.cleanup()


def _shown(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
