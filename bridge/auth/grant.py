"""Who is asking and what they may see: one value per request, consulted by every handler. Pure.

With ``BRIDGE_AUTH=none`` every request carries ``OPEN``. With ``smart``, a verified token becomes a ``Grant``:
its client, its subject, its scopes, and its patient context. Which patients a grant may see (its compartment) is
decided once, when the request is authorized (``bridge.web.authz``), and then holds on every path, cache hits
included.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.auth.scopes import Context, Interaction, Scopes
from bridge.mapping.identity import Identity


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
    """The PACS patients a grant may see: identities compared exactly, on raw values (``issuer`` None in an
    ``Identity`` here means the row's issuer is not checked: the mapping gave no issuer to check against)."""

    identities: frozenset[Identity]

    def admits(self, patient_id: str | None, issuer: str | None) -> bool:
        if patient_id is None:
            return False
        return any(allowed.patient_id == patient_id and allowed.issuer in (None, issuer) for allowed in self.identities)


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
