"""The bridge's own log lines (warnings about the PACS, the cache, the refresh; not the access log), on standard
error: text for a terminal, or JSON lines for a log pipeline (``BRIDGE_LOG_FORMAT=json``). Either way each line
names the request it was written for, the id the access log and the PACS see too.

Messages carry what clients send (paths, parameter names, header values): no client value may start a line of
its own. JSON lines are safe by construction (control characters are escaped in a JSON string; the line
separators U+2028/9 are escaped too); the text format
escapes every control character of a record's line, and indents each line of a traceback, so that nothing a
client controls can pass for a record. aiohttp's report of a request it could not parse (a malformed header, a
bad request line) is one line, without a traceback: a client's mistake, not a failure of the server.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import IO, Any

import orjson
from aiohttp.http_exceptions import HttpProcessingError

from bridge.telemetry import REQUEST_ID

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"

#: C0 and C1 controls, DEL, and the Unicode line and paragraph separators (some viewers break lines at them).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def escape(text: str) -> str:
    """``text`` on one line: each control character written as an escape (``\\n``, ``\\x1b``, ``\\u2028``)."""
    return _CONTROL.sub(_escaped, text)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to each record: the request being served where the line was logged, or ``-``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get() or "-"
        return True


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT``, one line per record (control characters escaped); a traceback follows on lines of its
    own, each indented, so that no line of it can pass for a record."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        # logging caches a record's traceback text for every handler: another formatter's, unindented, may be there.
        cached, record.exc_text = record.exc_text, None
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("    " + escape(line) for line in text.split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request id, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json_line_safe(orjson.dumps(line)).decode()


def json_line_safe(data: bytes) -> bytes:
    """JSON with U+2028 and U+2029 escaped: valid raw in a JSON string, but line breaks to some readers
    (``str.splitlines``, JavaScript before ES2019)."""
    if b"\xe2\x80" not in data:
        return data
    return data.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029")


class Once:
    """Which of the last ``size`` messages were said already, for warnings that every read of the same data would
    repeat. Bounded: the message repeated least recently is forgotten first, and said again should it recur."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._said: OrderedDict[str, None] = OrderedDict()

    def first(self, message: str) -> bool:
        """True if ``message`` is not among those said: it is now."""
        if message in self._said:
            self._said.move_to_end(message)
            return False
        self._said[message] = None
        if len(self._said) > self._size:
            self._said.popitem(last=False)
        return True


class MalformedRequestFilter(logging.Filter):
    """Turns aiohttp's ERROR with a traceback for a request it could not parse (``aiohttp.server``: "Error
    handling request from …") into one INFO line saying what was wrong. Other errors keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg, record.args = "malformed request from %s: %s %s", (remote, exc.code, exc.message)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


MALFORMED_REQUESTS = MalformedRequestFilter()


def handler(log_format: str, stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing records to ``stream`` (standard error) as ``log_format`` (``text`` or ``json``) says."""
    written = logging.StreamHandler(stream)
    written.addFilter(RequestIdFilter())
    formatter: Callable[[], logging.Formatter] = JsonFormatter if log_format == "json" else TextFormatter
    written.setFormatter(formatter())
    return written


def configure(level: str, log_format: str) -> None:
    """Send the process's log records to standard error, as ``log_format`` (``text`` or ``json``) says."""
    root = logging.getLogger()
    root.handlers[:] = [handler(log_format)]
    root.setLevel(level)
    logging.getLogger("aiohttp.server").addFilter(MALFORMED_REQUESTS)
