"""Who is asking and what they may see: one value per request, consulted by every handler. Pure.

With ``BRIDGE_AUTH=none`` every request carries ``OPEN``. With ``smart``, a verified token becomes a ``Grant``:
its client, its subject, its scopes, and its patient context. Which patients a grant may see (its compartment) is
decided once, when the request is authorized (``bridge.web.authz``), and then holds on every path, cache hits
included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge.auth.scopes import Context, Interaction, Scopes


@dataclass(frozen=True)
class Claims:
    """What a verified token says (from its JWT claims, or from an introspection answer)."""

    #: The OAuth client the token was issued to (``client_id``, else ``azp``; None if neither is given).
    client_id: str | None
    #: The token's subject (``sub``): a user, or the client itself for backend services.
    subject: str | None
    #: The space-separated ``scope`` string.
    scope: str
    #: The patient context: a FHIR Patient id in the clinical FHIR server's namespace (not a PACS PatientID).
    patient: str | None
    #: When the token expires (epoch seconds); None if it does not say.
    expires_at: float | None
    issuer: str | None = None


@dataclass(frozen=True)
class Patients:
    """The PACS patients a grant may see, as the identifiers of the studies' subjects: (system, PatientID) pairs,
    compared exactly on the raw value. A system of None admits the PatientID under any system (the mapping from a
    Patient id to a PatientID, BRIDGE_PATIENT_REFERENCE, says nothing of issuers)."""

    identifiers: frozenset[tuple[str | None, str]]
    #: PatientID -> the systems it is admitted under (None: any), for the check of every read.
    _systems: dict[str, frozenset[str | None]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        systems: dict[str, set[str | None]] = {}
        for system, value in self.identifiers:
            systems.setdefault(value, set()).add(system)
        object.__setattr__(self, "_systems", {value: frozenset(found) for value, found in systems.items()})

    def admits(self, subject: dict[str, Any] | None) -> bool:
        """Whether a resource's ``subject`` (its ``identifier``) is one of these patients."""
        identifier = (subject or {}).get("identifier") or {}
        value = identifier.get("value")
        if not isinstance(value, str):
            return False  # no PatientID the resource could show (absent, or unwritable): no one's to see
        systems = self._systems.get(value)
        return systems is not None and (None in systems or identifier.get("system") in systems)

    def names(self, system: str | None, value: str) -> bool:
        """Whether a search value naming a patient (``system`` None: any) is one of these patients."""
        return any(
            value == allowed and (system is None or wanted is None or system == wanted)
            for wanted, allowed in self.identifiers
        )


@dataclass(frozen=True)
class Grant:
    claims: Claims | None
    scopes: Scopes = field(default_factory=lambda: Scopes(frozenset()))
    #: The patients this grant is confined to; None: every patient (auth off, or a user or system grant with
    #: no confinement).
    patients: Patients | None = None

    @property
    def client_id(self) -> str | None:
        return self.claims.client_id if self.claims else None

    def allows(self, resource_type: str, interaction: Interaction) -> bool:
        if self.claims is None:
            return True  # BRIDGE_AUTH=none
        return bool(self.scopes.contexts(resource_type, interaction))

    def contexts(self, resource_type: str, interaction: Interaction) -> frozenset[Context]:
        if self.claims is None:
            return frozenset(Context)
        return self.scopes.contexts(resource_type, interaction)


#: The grant of every request when authorization is off.
OPEN = Grant(claims=None)


@dataclass
class AuditFacts:
    """What a request did with patient data, filled in by its handler for the audit log."""

    #: ``read``, ``search`` …: the FHIR interaction.
    action: str = ""
    #: StudyInstanceUIDs returned.
    returned: list[str] = field(default_factory=list)
    #: StudyInstanceUIDs refused to this grant (another patient's), or left out of its answer.
    refused: list[str] = field(default_factory=list)
    #: The patient(s) the request named (a search's ``patient``), as given.
    patients: list[str] = field(default_factory=list)
