"""Record QIDO-RS answers from a real Orthanc for the mapper's table tests (tests/data/mapping/*.qido.json).

Run by hand when the catalog changes: ``python -m tests.support.record_qido``. It starts a throwaway Orthanc,
loads the named catalog studies, reads each through ``fetch_study`` and writes the raw rows. UIDs are random
per run, so re-recording changes the files; review the expected ``*.fhir.json`` by eye after re-generating.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import orjson

from bridge.qido.http import HttpQidoSource
from bridge.studies import fetch_study
from tests.support import catalog
from tests.support.dicomgen import encode
from tests.support.orthanc import OrthancServer

OUT = Path(__file__).parents[1] / "data" / "mapping"
RECORDED = ("full", "sr_and_seg", "malformed_dates", "negative_zone", "odd_patient", "mammography")


async def _record(server: OrthancServer, names: tuple[str, ...]) -> None:
    specs = catalog.studies()
    source = HttpQidoSource(server.dicomweb_url, username=server.username, password=server.password)
    try:
        for name in names:
            server.upload_many(encode(specs[name]))
            rows = await fetch_study(source, specs[name].uid)
            case = {
                "options": {},
                "study": rows.study,
                "series": [{"series": s.series, "instances": list(s.instances)} for s in rows.series or ()],
            }
            (OUT / f"orthanc_{name}.qido.json").write_bytes(orjson.dumps(case, option=orjson.OPT_INDENT_2))
    finally:
        await source.close()


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, OrthancServer(tmp) as server:
        asyncio.run(_record(server, RECORDED))
    return 0


if __name__ == "__main__":
    sys.exit(main())
