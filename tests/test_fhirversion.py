"""The FHIR versions served, as MIME parameters and CapabilityStatement releases name them."""

from __future__ import annotations

import pytest

from bridge.fhirversion import DEFAULT, FhirVersion


@pytest.mark.parametrize(
    ("named", "version"),
    [("4.0", FhirVersion.R4), ("4.0.1", FhirVersion.R4), ("5.0", FhirVersion.R5), ("5.0.0", FhirVersion.R5),
     ("4.3", None), ("4.3.0", None), ("4", None), ("3.0", None), ("", None), ("4.0.2", None)],
)  # fmt: skip
def test_parse_takes_major_minor_or_the_release(named: str, version: FhirVersion | None) -> None:
    assert FhirVersion.parse(named) is version


def test_releases_are_those_clients_map_to_r4_and_r5() -> None:
    # The SMART JS client maps exactly 4.0.1 to release 4: R4B's 4.3.0 would be release 0.
    assert (FhirVersion.R4.release, FhirVersion.R5.release) == ("4.0.1", "5.0.0")
    assert (str(FhirVersion.R4), str(FhirVersion.R5)) == ("4.0", "5.0")
    assert DEFAULT is FhirVersion.R5
