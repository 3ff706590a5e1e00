"""Patterns of the DICOM and FHIR value types the bridge reads and writes, defined once: pure."""

from __future__ import annotations

import re

# Digits and dots. PS3.5 9.1 also forbids leading zeros in a component, but old modalities wrote them and
# archives keep them: such a UID still names a study, and is still a valid FHIR id.
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: An OID as ``urn:oid:`` may carry it (no leading zeros): an issuer's universal id, for instance.
OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
#: A FHIR id: broken UIDs that still fit it are kept (series.uid, instance.uid) rather than losing the instance.
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
#: An absolute URI as FHIR's ``uri`` type admits one (a scheme, then no whitespace).
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")


def is_uid(value: str) -> bool:
    """True for a usable DICOM UID: digits and dots, at most 64 characters."""
    return len(value) <= 64 and bool(UID.match(value))


def is_fhir_id(value: str) -> bool:
    return bool(FHIR_ID.match(value))
