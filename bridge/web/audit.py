"""The audit log: one R5 AuditEvent (``bridge.auth.auditevent``) per request to patient data, one JSON line each,
to standard output or a file (``BRIDGE_AUDIT_LOG``), or nowhere (``off``).

Like the access log it is kept off the request path: a request appends one tuple to a buffer; a writer thread
builds, serializes and writes the events of the buffer a few times a second, and flushes the sink once per
batch. A cached read is audited at the cost of that tuple.

**A slow or broken sink.** An audit trail with gaps is worth little, so the bridge would rather stop serving
patient data than serve it unaudited:

- a write that fails (a full disk, a closed pipe) is logged and tried again at the next flush, resumed at the
  byte where it stopped for a file; nothing is dropped while the process lives (on standard output, whose
  partial writes cannot be told, a line may then appear twice: the request id tells them apart);
- while more than ``MAX_PENDING`` events wait to be written, requests to patient data are refused (503, with
  ``Retry-After``) before anything is read, and counted (``bridge_audit_refused_total``); they resume as soon as
  the sink catches up. Memory stays bounded by that, plus the requests already being answered.

Only an event that cannot be built at all (a bug), or that is still unwritten when the process stops, is lost:
logged and counted (``bridge_audit_lost_total``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import Counter, Gauge

from bridge.aio import periodically, running
from bridge.auth.auditevent import Access, Observer, audit_event, instant
from bridge.auth.grant import AuditFacts, Grant
from bridge.errors import AuditUnavailable, ConfigError
from bridge.logs import json_line_safe
from bridge.settings import Settings
from bridge.telemetry import REGISTRY
from bridge.web.keys import AUDITED, GRANT

log = logging.getLogger(__name__)

EVENTS = Counter("bridge_audit_events", "Audit events written.", registry=REGISTRY)
PENDING = Gauge("bridge_audit_pending", "Audit events waiting to be written.", registry=REGISTRY)
WRITE_ERRORS = Counter("bridge_audit_write_errors", "Failed writes to the audit log.", registry=REGISTRY)
REFUSED = Counter(
    "bridge_audit_refused", "Requests to patient data refused (503) while the audit log could not keep up.",
    registry=REGISTRY,
)  # fmt: skip
LOST = Counter("bridge_audit_lost", "Audit events that could not be built or written.", registry=REGISTRY)


class Sink(Protocol):
    """Where audit lines go. ``write`` returns how many bytes of ``data`` were written, and the error that
    stopped it short (None when all were)."""

    description: str

    def write(self, data: bytes) -> tuple[int, Exception | None]: ...

    def close(self) -> None: ...


class StreamSink:
    """A binary stream; by default standard output, looked up at each write (as the access log does: both then
    share its buffer and its lock, so their lines never interleave)."""

    def __init__(self, stream: IO[bytes] | None = None) -> None:
        self._stream = stream
        self.description = "standard output" if stream is None else "a stream"

    def write(self, data: bytes) -> tuple[int, Exception | None]:
        stream = self._stream or sys.stdout.buffer
        try:
            stream.write(data)
            stream.flush()
        except (OSError, ValueError) as exc:  # broken pipe, or closed
            return 0, exc
        return len(data), None

    def close(self) -> None:
        pass


class FileSink:
    """A file, opened once for appending (created readable by its owner alone: it names patients), written with
    ``os.write`` so that a failed write is known to the byte and resumed there."""

    def __init__(self, path: Path) -> None:
        self.description = str(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)

    def write(self, data: bytes) -> tuple[int, Exception | None]:
        view, done = memoryview(data), 0
        try:
            while done < len(view):
                done += os.write(self._fd, view[done:])
        except OSError as exc:
            return done, exc
        return done, None

    def close(self) -> None:
        os.close(self._fd)


def open_sink(destination: str) -> Sink:
    """BRIDGE_AUDIT_LOG's sink: ``stdout``, or a file path (a ``ConfigError`` if it cannot be opened)."""
    if destination == "stdout":
        return StreamSink()
    try:
        return FileSink(Path(destination))
    except OSError as exc:
        raise ConfigError(f"BRIDGE_AUDIT_LOG: cannot open {destination} for appending: {exc.strerror}") from None


class AuditLog:
    """Audit events, recorded as tuples on the request's path and written by one thread in batches."""

    #: Events waiting to be written (or rewritten) beyond which requests to patient data are refused.
    MAX_PENDING = 20_000

    def __init__(
        self, destination: str, observer: Observer, *, interval: float = 0.2, max_pending: int = MAX_PENDING
    ) -> None:
        self.destination = destination
        self._line = Lines(observer)
        self._interval = interval
        #: Events waiting beyond which requests to patient data are refused.
        self.max_pending = max_pending
        self._sink: Sink | None = None
        #: ``Access`` fields, as plain tuples: a request pays for no more (a NamedTuple's constructor costs more).
        self._pending: list[tuple[Any, ...]] = []
        #: Events being written now; what a failed write left unwritten, and how many events that is.
        self._in_flight = 0
        self._unwritten = b""
        self._unwritten_events = 0
        self._failing = False
        self._lock = asyncio.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-log")

    def open(self, sink: Sink | None = None) -> None:
        """Open the sink (``sink`` instead of BRIDGE_AUDIT_LOG's: tests)."""
        self._sink = sink or open_sink(self.destination)

    @property
    def held(self) -> int:
        """Events recorded and not yet written."""
        return len(self._pending) + self._in_flight + self._unwritten_events

    def admit(self) -> None:
        """Before a request to patient data is answered: ``AuditUnavailable`` (503) while the log cannot keep up."""
        if self.held >= self.max_pending:
            REFUSED.inc()
            raise AuditUnavailable(
                "the audit log cannot keep up, and patient data is not served unaudited: try again shortly",
                retry_after=1,
            )

    def record(
        self, request: web.Request, request_id: str, interaction: str, status: int, ended: float, seconds: float
    ) -> None:
        """One answered request: what its grant and its handler (``AUDITED``) say it did."""
        grant: Grant | None = request.get(GRANT)
        facts: AuditFacts | None = request.get(AUDITED)
        claims = grant.claims if grant is not None else None
        # A POST search's form: the body aiohttp keeps once the handler has read it (read here without
        # awaiting, and only if it was read: the envelope never waits for a client's body).
        form = request._read_bytes if request.method == "POST" else None
        self._pending.append((
            ended, seconds, request_id, request.method, interaction, status,
            claims.client_id if claims else None, claims.subject if claims else None,
            claims.patient if claims else None, request.remote, request.raw_path, form,
            request.match_info.get("id") if interaction == "read" else None,
            facts.patients if facts else (), facts.returned if facts else (), facts.refused if facts else (),
        ))  # fmt: skip

    async def run(self) -> None:
        """Write every ``interval`` seconds until cancelled, then once more."""
        try:
            await periodically(self._interval, self.flush)
        finally:
            if self._unwritten_events:
                LOST.inc(self._unwritten_events)
                log.error("audit log: %d events could not be written to %s before the bridge stopped",
                          self._unwritten_events, self._description)  # fmt: skip
            self._writer.shutdown(wait=True)

    async def flush(self) -> None:
        """Write what waits (first what a failed write left)."""
        async with self._lock:
            if not self._pending and not self._unwritten:
                return
            batch, self._pending = self._pending, []
            self._in_flight = len(batch)
            written = asyncio.get_running_loop().run_in_executor(self._writer, self._write, self._unwritten, batch)
            try:
                self._unwritten = await asyncio.shield(written)
            except asyncio.CancelledError:  # stopping: the write goes on in its thread; keep what it leaves
                self._unwritten = await written
                raise
            finally:
                self._in_flight, self._unwritten_events = 0, self._unwritten.count(b"\n")
                PENDING.set(self.held)

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    @property
    def _description(self) -> str:
        return self._sink.description if self._sink else self.destination

    def _write(self, unwritten: bytes, batch: list[tuple[Any, ...]]) -> bytes:
        """(The writer thread.) Write ``unwritten`` and the lines of ``batch``; what could not be written."""
        lines = self._lines(batch)
        data = b"".join([unwritten, *lines]) if unwritten else b"".join(lines)
        if self._sink is None:
            raise RuntimeError("the audit log was not opened")
        written, error = self._sink.write(data)
        if error is None:
            EVENTS.inc(len(lines) + unwritten.count(b"\n"))
            if self._failing:
                log.warning("audit log: writing to %s again", self._description)
                self._failing = False
            return b""
        EVENTS.inc(data.count(b"\n", 0, written))
        WRITE_ERRORS.inc()
        if not self._failing:  # once per outage, not once per batch
            log.error("audit log: cannot write to %s (%s); requests to patient data are refused once %d events "
                      "wait", self._description, error, self.max_pending)  # fmt: skip
            self._failing = True
        return data[written:]

    def _lines(self, batch: list[tuple[Any, ...]]) -> list[bytes]:
        lines = []
        for fields in batch:
            try:
                lines.append(self._line(fields))
            except Exception:  # a bug: say which request went unaudited, and write the others
                LOST.inc()
                log.exception("audit log: the event of request %s could not be built", fields[2])
        return lines


class Lines:
    """``audit_event`` as JSON lines (U+2028/9 escaped), built once for events alike but for their times and
    request id (every warm read of a study by one client): those are spliced into the serialized event, which
    costs a tenth of building it. Holds ``size`` shapes at most (all forgotten at once beyond)."""

    def __init__(self, observer: Observer, size: int = 4096) -> None:
        self._observer = observer
        self._size = size
        self._shapes: dict[tuple[Any, ...], list[bytes]] = {}
        # Placeholders no client can write (a random mark), each a JSON string once serialized.
        mark = "\x00" + secrets.token_hex(8)
        self._placeholders = (f"{mark}o", f"{mark}r", f"{mark}i")
        self._split = [orjson.dumps(placeholder) for placeholder in self._placeholders]
        #: The second of the last instant formatted, and its text to the second.
        self._second = -1
        self._second_text = b""

    def __call__(self, fields: tuple[Any, ...]) -> bytes:
        """The event of an ``Access`` (or a plain tuple of its fields), as one line (with its newline)."""
        # Indexed, not named: this runs for every event, and a plain tuple is what the request recorded.
        key = (fields[3:13], tuple(fields[13]), tuple(fields[14]), tuple(fields[15]))
        pieces = self._shapes.get(key)
        if pieces is None:
            pieces = self._pieces(Access._make(fields))
            if len(self._shapes) >= self._size:
                self._shapes.clear()
            self._shapes[key] = pieces
        if not pieces:  # (see _pieces)
            event = audit_event(Access._make(fields), self._observer)
            return json_line_safe(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))
        head, occurred, recorded, tail = pieces
        ended = fields[0]
        return b"".join((
            head, self._instant(ended - fields[1]), occurred, self._instant(ended), recorded,
            json_line_safe(orjson.dumps(fields[2])), tail,
        ))  # fmt: skip

    def _pieces(self, access: Access) -> list[bytes]:
        """The serialized event of ``access`` cut where its times and request id go; [] if it cannot be."""
        event = audit_event(access, self._observer)
        occurred, recorded, request_id = self._placeholders
        event["occurredDateTime"], event["recorded"] = occurred, recorded
        event["entity"][0]["what"]["identifier"]["value"] = request_id
        # Escaped once here, the spliced lines need no pass over them (times are ASCII, the id is escaped).
        text = json_line_safe(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))
        head, found_o, rest = text.partition(self._split[0])
        middle, found_r, rest = rest.partition(self._split[1])
        after, found_i, tail = rest.partition(self._split[2])
        if not (found_o and found_r and found_i):  # the builder moved a field: build every such event whole
            return []
        return [head + b'"', b'"' + middle + b'"', b'"' + after, tail]

    def _instant(self, epoch: float) -> bytes:
        """``instant(epoch)``, formatting (in ``time.strftime``) once a second: a tenth of the cost."""
        second, millisecond = divmod(int(epoch * 1000), 1000)
        if second != self._second:
            self._second, self._second_text = second, instant(second).encode()[:-5]  # without ".000Z"
        return b"%b.%03dZ" % (self._second_text, millisecond)


AUDIT_LOG = web.AppKey("audit_log", AuditLog)


def audit_log(settings: Settings) -> AuditLog | None:
    """The audit log BRIDGE_AUDIT_LOG asks for (opened by ``audit_context``), or None for ``off``."""
    if settings.audit_sink == "off":
        return None
    return AuditLog(settings.audit_sink, Observer(socket.gethostname(), settings.public_url))


async def audit_context(app: web.Application) -> AsyncIterator[None]:
    """Open the sink and write in the background; at shutdown, write what is left and close the sink."""
    audit = app[AUDIT_LOG]
    audit.open()
    try:
        async with running(audit.run(), "audit-log"):
            yield
    finally:
        audit.close()
