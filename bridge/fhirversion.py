"""The FHIR versions the bridge serves, named once: pure.

A version is written as FHIR's MIME parameter writes it (``application/fhir+json; fhirVersion=4.0``): major.minor.
``release`` is the full version a CapabilityStatement states (``fhirVersion``); clients such as the SMART JS
client map exactly "4.0.1" to release 4, so R4 must never claim R4B's 4.3.0.
"""

from __future__ import annotations

from enum import StrEnum


class FhirVersion(StrEnum):
    R4 = "4.0"
    R5 = "5.0"

    @property
    def release(self) -> str:
        """The full version (``CapabilityStatement.fhirVersion``)."""
        return _RELEASES[self]

    @classmethod
    def parse(cls, value: str) -> FhirVersion | None:
        """The version named by a MIME ``fhirVersion`` parameter (``4.0`` or ``4.0.1``), or None if not served."""
        for version in cls:
            if value in (version.value, version.release):
                return version
        return None


_RELEASES = {FhirVersion.R4: "4.0.1", FhirVersion.R5: "5.0.0"}

#: The version served when a client names none.
DEFAULT = FhirVersion.R5
