"""What the cache holds and when it may serve it: pure functions of an entry, a policy and the time.

An entry is *fresh* for ``ttl`` seconds after the PACS last confirmed it; then, for ``stale_while_revalidate``
seconds, it is served while a background read refreshes it; past that it must be read again, but if that read
fails it may still be served for ``stale_if_error`` seconds after it went stale (RFC 5861's two extensions).
A client's ``Cache-Control: no-cache`` forces a read only if the entry is older than ``min_reread`` seconds, so
no caller can make the PACS read a study more often than that. A *negative* entry remembers that the PACS had
no such study (404) or had it under two patients (409), for ``negative_ttl`` seconds.
The clock is a parameter everywhere, so the rules are tested by a table, not by sleeping.
"""

from __future__ import annotations

import email.utils
import hashlib
import struct
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import orjson

from bridge.fhirversion import FhirVersion


@dataclass(frozen=True)
class Policy:
    ttl: float = 300.0
    stale_while_revalidate: float = 600.0
    stale_if_error: float = 86_400.0
    #: A forced read (``no-cache``) of an entry confirmed less than this long ago is served the entry instead.
    min_reread: float = 5.0
    #: How long a 404 or 409 is remembered; 0: not at all.
    negative_ttl: float = 30.0

    @property
    def retention(self) -> float:
        """How long an entry is worth keeping at all."""
        return self.ttl + max(self.stale_while_revalidate, self.stale_if_error)


class Action(Enum):
    SERVE = "serve"  # fresh
    SERVE_STALE = "serve-stale"  # stale, within stale-while-revalidate: serve and refresh in the background
    FETCH = "fetch"  # missing, too old, or the client asked (Cache-Control: no-cache) and min_reread has passed
    REFUSE = "refuse"  # a remembered 404 or 409: answer it again


#: What every cached read comes to, bound once: on Python 3.11, reading an Enum member through its class
#: (``Action.SERVE``) costs several times a plain attribute, and a cached read is a few dozen such steps.
SERVE = Action.SERVE
#: Bound once too: ``body_of`` is asked on every read.
_R4, _R5 = FhirVersion.R4, FhirVersion.R5


@dataclass(frozen=True)
class Entry:
    """One synthesized study as served: the response bytes of each FHIR version, and what HTTP and the refresher
    need to know. Both versions are rendered from the same facts when the study is read, so a warm read of
    either is the same lookup of stored bytes."""

    #: The R5 ImagingStudy (of a negative entry: the diagnostics).
    body: bytes
    #: The content's version (a hash of both versions' renderings without their meta): meta.versionId in both.
    version: str
    #: When this content was first seen (epoch seconds): Last-Modified and meta.lastUpdated.
    last_modified: float
    #: When the PACS last confirmed this content (epoch seconds): freshness counts from here.
    checked_at: float
    #: The study-level change signal at that time (see ``change_signal``).
    signal: str = ""
    #: 200, or the status of a remembered negative answer (404, 409), whose ``body`` is then its diagnostics.
    status: int = 200
    #: The R4 ImagingStudy, rendered from the same facts (empty in a negative entry).
    body_r4: bytes = b""

    def body_of(self, version: FhirVersion) -> bytes:
        """The study's bytes in ``version``."""
        return self.body_r4 if version is _R4 else self.body

    def etag_of(self, version: FhirVersion) -> str:
        """The ETag of the representation in ``version``: R5's is ``W/"<version>"`` (``etag``), R4's
        ``W/"<version>-4.0"``. One URL may serve both (content negotiation), and a validator must tell them apart:
        a client holding the R5 bytes must not be told ``304`` for an R4 request. ``meta.versionId`` is the same
        in both, since they are one version of one resource."""
        return self.etag if version is _R5 else f'W/"{self.version}-{version.value}"'

    @property
    def size(self) -> int:
        """The bytes the entry holds (what an in-process store counts against its limit)."""
        return len(self.body) + len(self.body_r4)

    @classmethod
    def negative(cls, status: int, diagnostics: str, checked_at: float) -> Entry:
        """A remembered 404 or 409 with the diagnostics the client was given."""
        return cls(diagnostics.encode(), "", 0.0, checked_at, "", status)

    @property
    def etag(self) -> str:
        # Weak: the same content (version) is served with one meta.lastUpdated by every replica while the
        # backend's first-seen record answers, but a replica that cannot reach it uses its own time.
        return f'W/"{self.version}"'

    @property
    def http_date(self) -> str:
        """``last_modified`` as an HTTP date (the web layer builds a read's headers once per entry)."""
        return email.utils.formatdate(self.last_modified, usegmt=True)

    def confirmed(self, now: float) -> Entry:
        """The same content, confirmed unchanged by the PACS at ``now``."""
        return replace(self, checked_at=now)

    def pack(self) -> bytes:
        """Bytes for a shared store: a length-prefixed JSON header, then the R5 body and the R4 body as they are
        (the header says where one ends).

        The version is under "v2", not the "v" of releases that stored R5 alone: a replica of such a release finds
        no "v", so takes a new entry for a miss rather than serve both bodies as one; and an entry such a replica
        stored has no "v2" and no R4 body, so is a miss here (see ``unpack``)."""
        if self.status != 200:
            # No "v": a replica of an earlier release cannot unpack it, so takes it for a miss, never for a study.
            header = orjson.dumps({"e": self.status, "c": self.checked_at})
            return struct.pack(">I", len(header)) + header + self.body
        header = orjson.dumps({
            "v2": self.version, "m": self.last_modified, "c": self.checked_at, "s": self.signal, "n": len(self.body)
        })  # fmt: skip
        return struct.pack(">I", len(header)) + header + self.body + self.body_r4

    @classmethod
    def unpack(cls, packed: bytes) -> Entry:
        """The entry ``pack`` made. Given only a prefix that holds the header (see ``HEAD_READ``), an entry whose
        header fields are right and whose bodies are what of them the prefix holds. ``ValueError`` for an entry of
        a release that stored R5 alone."""
        size = cls.head_size(packed)
        header = orjson.loads(packed[4:size])
        if "e" in header:
            return cls(packed[size:], "", 0.0, header["c"], "", header["e"])
        if "v2" not in header:
            raise ValueError("a cache entry of an earlier release (no R4 body)")
        split = size + header["n"]
        return cls(packed[size:split], header["v2"], header["m"], header["c"], header["s"], body_r4=packed[split:])

    #: Bytes to read from a packed entry's start to get its header, nearly always.
    HEAD_READ = 512

    @staticmethod
    def head_size(packed: bytes) -> int:
        """The length of a packed entry's header, length prefix included (from its first four bytes)."""
        (size,) = struct.unpack(">I", packed[:4])
        return 4 + int(size)


def decide(entry: Entry | None, now: float, policy: Policy, *, no_cache: bool = False) -> Action:
    """What to do with a request for a cached study; ``no_cache``: the client asked for a PACS read."""
    if entry is None:
        return Action.FETCH
    age = now - entry.checked_at
    # no-cache forces a read only of an entry confirmed min_reread ago or earlier, so however many clients ask, the
    # PACS reads a study at most once per min_reread; a younger entry is answered as usual (never served stale).
    if no_cache and age >= policy.min_reread:
        return Action.FETCH
    if entry.status != 200:
        return Action.REFUSE if age < policy.negative_ttl else Action.FETCH
    if age < policy.ttl:
        return SERVE
    if age < policy.ttl + policy.stale_while_revalidate and not no_cache:
        return Action.SERVE_STALE
    return Action.FETCH


def usable_on_error(entry: Entry | None, now: float, policy: Policy) -> bool:
    """Whether a stored entry may stand in for a PACS that just failed (stale-if-error); a remembered 404 or 409
    never does (it is no study to serve)."""
    return entry is not None and entry.status == 200 and now - entry.checked_at < policy.ttl + policy.stale_if_error


def due_for_refresh(checked_at: float, now: float, policy: Policy, horizon: float) -> bool:
    """Whether the scheduled refresh should re-validate an entry last confirmed at ``checked_at``: it expires
    within ``horizon`` seconds."""
    return now - checked_at >= policy.ttl - horizon


def content_version(*resources: dict[str, Any]) -> str:
    """A hash of the resources without their ``meta``: equal exactly when the content is. A study's version hashes
    every version's rendering: R4 states facts R5 does not (``interpreter``), and a change to one of them alone
    must still move R4's ETag and ``meta``."""
    digest = hashlib.sha256()
    for resource in resources:
        content = {key: value for key, value in resource.items() if key != "meta"}
        digest.update(orjson.dumps(content, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()[:20]


def change_signal(series: int | None, instances: int | None, modalities: list[str]) -> str:
    """The cheap study-level summary the refresher compares: counts and modalities, as the PACS reports them."""
    return f"{series if series is not None else '-'}/{instances if instances is not None else '-'}/" + ",".join(
        sorted(set(modalities))
    )
