"""The FHIR bases served: ``/fhir/r4`` (R4), ``/fhir/r5`` (R5), and ``/fhir``, whose version the client picks
(``bridge.web.negotiation``; R5 by default). Every FHIR route is served under each: pure, no I/O."""

from __future__ import annotations

from typing import NamedTuple

from bridge.fhirversion import FhirVersion


class Base(NamedTuple):
    #: The path the base's routes hang under.
    path: str
    #: The version it serves; None for ``/fhir``, where ``Accept`` or ``_format`` picks it.
    version: FhirVersion | None

    def url(self, root: str) -> str:
        """This base's URL, given ``/fhir``'s (BRIDGE_PUBLIC_URL, or the request's origin + ``/fhir``)."""
        return root + self.path.removeprefix(NEGOTIATED.path)


NEGOTIATED = Base("/fhir", None)
R4 = Base("/fhir/r4", FhirVersion.R4)
R5 = Base("/fhir/r5", FhirVersion.R5)
#: The versioned bases first: a path under /fhir/r4 is R4's, not /fhir's.
BASES = (R4, R5, NEGOTIATED)


def base_of(path: str) -> Base:
    """The base a request path is under (``/fhir`` for any other path)."""
    if not path.startswith("/fhir/r"):  # every read asks: most are under /fhir itself
        return NEGOTIATED
    for base in BASES[:-1]:
        if path.startswith(base.path) and (len(path) == len(base.path) or path[len(base.path)] == "/"):
            return base
    return NEGOTIATED
