"""Which PACS patients a Patient id stands for (``bridge.auth.compartment``): pure, no PACS."""

from __future__ import annotations

import pytest

from bridge.auth.compartment import Compartments
from bridge.search.values import PatientRule

PACS = "urn:example:pacs"
HOSP_B = "urn:example:hosp-b"


@pytest.mark.parametrize(
    ("systems", "own_system", "system"),
    [
        ((), None, None),  # no system named: the PatientID under any issuer
        ((HOSP_B,), None, HOSP_B),  # one system configured: its PatientIDs
        ((PACS,), PACS, PACS),
        # BRIDGE_PATIENT_ID_SYSTEM with BRIDGE_ISSUER_SYSTEMS: the PACS's own system's PatientID, not the same
        # PatientID from another issuer (which once admitted any issuer, another hospital's patient included)
        ((PACS, HOSP_B), PACS, PACS),
        ((HOSP_B, "urn:example:hosp-c"), None, None),
    ],
)
async def test_a_patient_id_stands_for_the_patient_id_in_the_bridges_own_system(
    systems: tuple[str, ...], own_system: str | None, system: str | None
) -> None:
    patients = await Compartments(PatientRule(), systems, own_system=own_system).of(["ISS-1"])
    assert patients.identifiers == {(system, "ISS-1")}
    if system is not None:
        other = HOSP_B if system != HOSP_B else PACS
        assert not patients.admits({"identifier": {"system": other, "value": "ISS-1"}})
        assert not patients.names(other, "ISS-1")
    assert patients.admits(
        {"identifier": {"system": system, "value": "ISS-1"}} if system else {"identifier": {"value": "ISS-1"}}
    )
