"""What each FHIR version is served: a study's bytes, a search's resources and the Endpoint, in R4 or R5.

STAND-IN until branch r4-core lands ``Entry.body_of(version)`` and the R4 renderers: R5 is served as is and
R4 is the same R5 rendering (not yet valid R4). Replaced by the core's API when merged.
"""

from __future__ import annotations

from typing import Any

from bridge.cache.freshness import Entry
from bridge.fhirversion import FhirVersion


def study_body(entry: Entry, version: FhirVersion) -> bytes:
    """A cached study's response bytes in ``version``."""
    return entry.body


def study_in(resource: dict[str, Any], version: FhirVersion) -> dict[str, Any]:
    """A study (as the search returns it, R5) in ``version``."""
    return resource
