"""The command line: ``serve`` runs the service, ``get UID`` prints one ImagingStudy."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import logging
import sys
from collections.abc import Callable, Sequence

import orjson
from aiohttp import web

from bridge import __version__, logs
from bridge.cache.refresh import LOCK, Summary, refresh_due, warm
from bridge.cache.service import StudyCache
from bridge.errors import BridgeError, ConfigError
from bridge.qido.factory import open_source
from bridge.qido.source import QidoSource
from bridge.settings import Settings, load_settings
from bridge.studies import read_study
from bridge.web.app import create_app, mapping_options
from bridge.web.contexts import cache_policy, open_backend
from bridge.web.server import server_options

log = logging.getLogger("bridge")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imaging-bridge", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the FHIR service")
    serve.add_argument("--host", help="overrides BRIDGE_HOST")
    serve.add_argument("--port", type=int, help="overrides BRIDGE_PORT")
    get = commands.add_parser("get", help="print the ImagingStudy of one StudyInstanceUID")
    get.add_argument("study_uid")
    refresh = commands.add_parser(
        "refresh", help="warm or re-validate the cache (BRIDGE_CACHE_URL) for a date range, a patient, or what it holds"
    )
    refresh.add_argument("--since", type=_day, help="studies from this date (YYYY-MM-DD)")
    refresh.add_argument("--until", type=_day, help="studies up to this date (YYYY-MM-DD)")
    refresh.add_argument("--patient", help="studies of this PatientID")
    refresh.add_argument("--due", action="store_true", help="re-validate every study the cache holds")
    args = parser.parse_args(argv)

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"imaging-bridge: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    if settings.log_level != "DEBUG":
        logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # logs every query at INFO
    if args.command == "serve":
        host = args.host or settings.host
        port = args.port if args.port is not None else settings.port
        settings = settings.model_copy(update={"host": host, "port": port})  # the names links may be built from
        app = create_app(settings)
        app.on_startup.append(_tune_gc)
        try:
            # access_log=None: aiohttp's own access log goes through the logging module on every request; the
            # bridge writes its own (BRIDGE_ACCESS_LOG), batched off the hot path.
            # On SIGTERM: stop accepting, let in-flight requests finish (up to the bound), then close the PACS
            # session, the cache and the refresher through their cleanup contexts.
            web.run_app(
                app, host=host, port=port, print=_announce(host, port), access_log=None,
                shutdown_timeout=settings.shutdown_timeout, **server_options(settings),
            )  # fmt: skip
        except BridgeError as exc:  # the PACS source could not be opened
            print(f"imaging-bridge: {exc.diagnostics}", file=sys.stderr)
            return 1
        except ConfigError as exc:  # a file a setting names could not be opened (BRIDGE_AUDIT_LOG)
            print(f"imaging-bridge: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "refresh":
        if not (args.since or args.until or args.patient or args.due):
            parser.error("refresh needs --since/--until, --patient or --due")
        return asyncio.run(_refresh(settings, args))
    return asyncio.run(_get(settings, args.study_uid))


#: Container allocations between young-generation collections (CPython's default is 700), and young collections
#: between older ones: see ``_tune_gc``.
GC_THRESHOLDS = (50_000, 20, 100)


async def _tune_gc(app: web.Application) -> None:
    """Keep the garbage collector off the serving path.

    Everything loaded at start (pydicom's dictionaries, the PACS client, the terminology) is moved out of its
    reach: otherwise each full collection walks that whole heap (a cached read went from 0.49x to 0.66x of a
    bare app). And collections are made rarer: a cold read of a large study allocates millions of containers
    (the PACS's JSON, the resource), none of them in a cycle, and with CPython's defaults the collector walked
    the growing heap again and again, 40 % of the bridge's CPU time for a 10,000-instance study."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _announce(host: str, port: int) -> Callable[..., None]:
    def say(_: str) -> None:
        shown = f"[{host}]" if ":" in host else host
        print(f"imaging-bridge {__version__} serving FHIR R5 at http://{shown}:{port}/fhir, R4 at …/fhir/r4 (Ctrl-C)")

    return say


async def _get(settings: Settings, study_uid: str) -> int:
    try:
        source = await open_source(settings)
    except BridgeError as exc:
        print(f"imaging-bridge: {exc.diagnostics}", file=sys.stderr)
        return 1
    try:
        resource = (await read_study(source, study_uid, mapping_options(settings))).resource
    except BridgeError as exc:
        print(f"imaging-bridge: {exc.diagnostics} (HTTP {exc.status})", file=sys.stderr)
        return 1
    finally:
        await source.close()
    sys.stdout.write(orjson.dumps(resource, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _day(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


async def _refresh(settings: Settings, args: argparse.Namespace) -> int:
    try:
        source = await open_source(settings)
    except BridgeError as exc:
        print(f"imaging-bridge: {exc.diagnostics}", file=sys.stderr)
        return 1
    backend = open_backend(settings)
    cache = StudyCache(backend, source, mapping_options(settings), cache_policy(settings))
    if backend.description == "memory":
        print("imaging-bridge: no BRIDGE_CACHE_URL: studies are read and checked, but kept by no one", file=sys.stderr)
    try:
        async with backend.lock(LOCK, ttl=3600) as taken:  # the scheduled refreshers' lock: one at a time
            if not taken:
                print("imaging-bridge: the refresh lock is held by another refresh, or the cache cannot be reached",
                      file=sys.stderr)  # fmt: skip
                return 1
            summary = await _run_refresh(cache, source, settings, args)
    except BridgeError as exc:
        print(f"\nimaging-bridge: {exc.diagnostics}", file=sys.stderr)
        return 1
    finally:
        await cache.close()
        await backend.close()
        await source.close()
    print(f"\n{summary}", file=sys.stderr)
    return 1 if summary.failed else 0


async def _run_refresh(cache: StudyCache, source: QidoSource, settings: Settings, args: argparse.Namespace) -> Summary:
    if args.due:
        return await refresh_due(cache, horizon=settings.cache_ttl)
    filters = {}
    if args.since or args.until:
        filters["StudyDate"] = f"{_da(args.since)}-{_da(args.until)}"
    if args.patient:
        filters["PatientID"] = args.patient
    return await warm(cache, source, filters, _progress_bar)


def _da(day: dt.date | None) -> str:
    return f"{day:%Y%m%d}" if day else ""


def _progress_bar(done: int, total: int, width: int = 30) -> None:
    filled = width * done // total if total else width
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
