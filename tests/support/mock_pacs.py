"""aioresponses for the PACS's HTTP edge cases, on the aiohttp this project uses."""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any

import aiohttp
from aioresponses import aioresponses
from yarl import URL

_NEEDS_STREAM_WRITER = "stream_writer" in inspect.signature(aiohttp.ClientResponse.__init__).parameters


class MockedResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds responses without the ``stream_writer`` that aiohttp 3.14 requires.

    pnuckowski/aioresponses#289; drop this once a fixed aioresponses is released.
    """

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        if _NEEDS_STREAM_WRITER:
            kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class PacsMock(aioresponses):
    """aioresponses whose canned answers use ``MockedResponse``."""

    def add(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", MockedResponse)
        super().add(*args, **kwargs)
