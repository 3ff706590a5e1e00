"""A token's patient context -> the PACS patients it may see (``Patients``).

A SMART patient context is a FHIR Patient id in the clinical FHIR server's namespace, not a PACS PatientID. It
is mapped by BRIDGE_PATIENT_REFERENCE (``mrn-{PatientID}``: the id names the PatientID), or, with
BRIDGE_CLINICAL_FHIR_URL, by reading the Patient there and taking its identifiers in the systems the PACS's
patients carry (BRIDGE_PATIENT_ID_SYSTEM, BRIDGE_ISSUER_SYSTEMS). ``system/`` tokens see what
BRIDGE_AUTH_CLIENT_POLICY grants their client, and nothing by default.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from bridge.auth.grant import Patients
from bridge.errors import ConfigError
from bridge.search.values import PatientRule


class PatientDirectory(Protocol):
    """The clinical FHIR server's Patients (``bridge.auth.clinical``)."""

    async def identifiers(self, patient_id: str) -> list[tuple[str | None, str]]: ...


class Compartments:
    """Patient ids -> ``Patients``."""

    def __init__(
        self,
        rule: PatientRule,
        systems: Iterable[str] = (),
        directory: PatientDirectory | None = None,
        *,
        own_system: str | None = None,
    ) -> None:
        self._rule = rule
        self._systems = frozenset(systems) | ({own_system} if own_system else set())
        self._directory = directory
        # With a system of its own (BRIDGE_PATIENT_ID_SYSTEM, which every row without an issuer carries), the
        # template's PatientIDs are that system's, whatever other issuers' systems are configured: another
        # issuer's patient with the same PatientID is another patient. Without one, they are the one configured
        # system's, or, with none, a PatientID under any issuer.
        if own_system:
            self._template_system: str | None = own_system
        else:
            self._template_system = next(iter(self._systems)) if len(self._systems) == 1 else None

    async def of(self, patient_ids: Iterable[str]) -> Patients:
        found: set[tuple[str | None, str]] = set()
        for patient_id in patient_ids:
            if self._directory is not None:
                found |= {
                    (system, value)
                    for system, value in await self._directory.identifiers(patient_id)
                    if system in self._systems and value
                }
            elif (value := self._rule.patient_id(patient_id)) is not None:
                found.add((self._template_system, value))
        return Patients(frozenset(found))


def read_policy(path: Path) -> dict[str, tuple[str, ...] | None]:
    """BRIDGE_AUTH_CLIENT_POLICY: a JSON object, client id -> a list of Patient ids, or ``"*"`` for every patient
    (None here)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"BRIDGE_AUTH_CLIENT_POLICY: cannot read {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError('BRIDGE_AUTH_CLIENT_POLICY must hold a JSON object: {"client-id": ["patient-id", …] or "*"}')
    policy: dict[str, tuple[str, ...] | None] = {}
    for client, patients in raw.items():
        if patients == "*":
            policy[client] = None
        elif isinstance(patients, list) and all(isinstance(p, str) and p for p in patients):
            policy[client] = tuple(patients)
        else:
            raise ConfigError(f'BRIDGE_AUTH_CLIENT_POLICY: client {client!r} needs a list of Patient ids or "*"')
    return policy
