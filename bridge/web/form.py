"""The body of ``POST [base]/ImagingStudy/_search``: an ``application/x-www-form-urlencoded`` form, read as
UTF-8 only. Pure: the handler reads the bytes, this decides what they say.

A body in another encoding must not be half-read: UTF-16 without a charset is valid UTF-8 full of NULs, whose
parameter names then match nothing, so the search would lose its criteria and widen. Anything but UTF-8 is
refused instead.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from bridge.errors import InvalidRequest, TooCostly, UnsupportedMediaType

FORM = "application/x-www-form-urlencoded"
_UTF8 = frozenset({"utf-8", "utf8"})
#: C0 controls but tab, CR and LF (a trailing newline is common), and DEL: never in a form a client meant.
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: Far more than a search may hold (parse_search allows 100 values): a bound on the parsing work.
MAX_FIELDS = 1000


def check_form_type(content_type: str, charset: str | None) -> None:
    """``UnsupportedMediaType`` unless the body is a form in UTF-8 (or in no declared charset)."""
    if content_type != FORM:
        raise UnsupportedMediaType(f"POST _search takes {FORM}, not {content_type or 'no body type'}")
    if charset is not None and charset.lower() not in _UTF8:
        raise UnsupportedMediaType(f"POST _search takes a form in UTF-8, not charset={charset}")


def form_parameters(body: bytes) -> list[tuple[str, str]]:
    """The form's ``(name, value)`` pairs, in order; ``InvalidRequest`` if the body is not UTF-8 form text."""
    if _CONTROL.search(body):
        raise InvalidRequest("the POST _search body holds control characters (UTF-16?); send the form as UTF-8")
    try:
        text = body.decode("utf-8")
        return parse_qsl(text.rstrip(), keep_blank_values=True, errors="strict", max_num_fields=MAX_FIELDS)
    except UnicodeDecodeError:
        # Raw bytes or percent-escapes (%FF) that are not UTF-8.
        raise InvalidRequest("the POST _search body is not a UTF-8 form") from None
    except ValueError:  # parse_qsl: more than max_num_fields
        raise TooCostly(f"the POST _search form holds more than {MAX_FIELDS} fields") from None
