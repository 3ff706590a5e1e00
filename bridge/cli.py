"""The command line: ``serve`` runs the service, ``get UID`` prints one ImagingStudy."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence

import orjson
from aiohttp import web

from bridge import __version__
from bridge.errors import BridgeError, ConfigError
from bridge.qido.factory import open_source
from bridge.settings import Settings, load_settings
from bridge.studies import read_study
from bridge.web.app import create_app
from bridge.web.keys import MAPPING

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
    args = parser.parse_args(argv)

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"imaging-bridge: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.log_level != "DEBUG":
        logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # logs every query at INFO
    if args.command == "serve":
        host = args.host or settings.host
        port = args.port if args.port is not None else settings.port
        try:
            web.run_app(create_app(settings), host=host, port=port, print=_announce(host, port))
        except BridgeError as exc:  # the PACS source could not be opened
            print(f"imaging-bridge: {exc.diagnostics}", file=sys.stderr)
            return 1
        return 0
    return asyncio.run(_get(settings, args.study_uid))


def _announce(host: str, port: int) -> Callable[..., None]:
    def say(_: str) -> None:
        shown = f"[{host}]" if ":" in host else host
        print(f"imaging-bridge {__version__} serving FHIR R5 at http://{shown}:{port}/fhir (Ctrl-C stops)")

    return say


async def _get(settings: Settings, study_uid: str) -> int:
    app = create_app(settings)
    try:
        source = await open_source(settings)
    except BridgeError as exc:
        print(f"imaging-bridge: {exc.diagnostics}", file=sys.stderr)
        return 1
    try:
        resource = await read_study(source, study_uid, app[MAPPING])
    except BridgeError as exc:
        print(f"imaging-bridge: {exc.diagnostics} (HTTP {exc.status})", file=sys.stderr)
        return 1
    finally:
        await source.close()
    sys.stdout.write(orjson.dumps(resource, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
