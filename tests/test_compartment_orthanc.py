"""A patient token never sees another patient's study, against a real Orthanc holding patients chosen to collide
(tests/support/colliding_patients.py: PatientIDs that differ by case, by a wildcard character, by a no-break
space, or by issuer alone, and one StudyInstanceUID under two of them): not by read, not by search with any
combination of parameters (hypothesis draws them), not by ``_include``, and not through a cache another token
warmed, in this process or shared through Redis.

Tokens are names for the claims they carry (tests/support/standin_tokens.py): what a grant permits is tested
here, token verification in tests/test_tokens.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import orthanc_settings, start_client
from tests.support.colliding_patients import (
    CONTEXTS,
    HOSP_B_SYSTEM,
    NAMED_ISSUER,
    PACS_SYSTEM,
    Catalog,
    Patient,
    catalog,
)
from tests.support.dicomgen import encode, new_uid
from tests.support.orthanc import OrthancServer
from tests.support.standin_tokens import Verifier, claims

pytestmark = pytest.mark.integration

BASE = "https://fhir.example.org/fhir"
#: A StudyInstanceUID no patient has.
MISSING = new_uid()
_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")


# ---- who asks, and what each may see ----


@dataclass(frozen=True)
class Who:
    token: str
    #: The Patient ids its grant is confined to; None: every patient.
    contexts: tuple[str, ...] | None

    def __str__(self) -> str:
        return f"{self.token} {self.contexts!r}"


#: A patient token per patient context (the stand-in verifier's ``patient:<id>`` cannot carry every PatientID
#: in a header: ``PAT-A\u00a0``), a backend service whose client policy grants three patients, and a clinician.
PATIENT_TOKENS = tuple(Who(f"patient-{n}", (context,)) for n, context in enumerate(CONTEXTS))
REGISTRY = Who("registry", ("PAT-A", "PAT A", "ISS-1"))
CLINICIAN = Who("clinician", None)
CONFINED = (*PATIENT_TOKENS, REGISTRY)


@dataclass(frozen=True)
class Config:
    """How the bridge is configured to name patients, and so which PACS patients a Patient id stands for."""

    patient_id_system: str | None = None
    issuer_systems: Mapping[str, str] = field(default_factory=dict)
    #: The system of the PatientIDs a Patient id stands for (BRIDGE_PATIENT_REFERENCE says nothing of issuers):
    #: BRIDGE_PATIENT_ID_SYSTEM's when it is set, the one system configured when only one is; None: any.
    own_system: str | None = None

    @property
    def environ(self) -> dict[str, str]:
        environ = {"issuer_systems": json.dumps(dict(self.issuer_systems))}
        if self.patient_id_system:
            environ["patient_id_system"] = self.patient_id_system
        return environ

    def system(self, patient: Patient) -> str | None:
        """The identifier system of a patient's studies' subject."""
        if patient.issuer is None:
            return self.patient_id_system
        if patient.issuer in self.issuer_systems:
            return self.issuer_systems[patient.issuer]
        return f"urn:oid:{patient.issuer}" if _OID.fullmatch(patient.issuer) else None

    def sees(self, who: Who, patient: Patient) -> bool:
        if who.contexts is None:
            return True
        return patient.patient_id in who.contexts and self.own_system in (None, self.system(patient))


CONFIGS = {
    "no systems": Config(),
    "patient and issuer systems": Config(PACS_SYSTEM, {NAMED_ISSUER: HOSP_B_SYSTEM}, own_system=PACS_SYSTEM),
    "one issuer system": Config(issuer_systems={NAMED_ISSUER: HOSP_B_SYSTEM}, own_system=HOSP_B_SYSTEM),
}


# ---- the PACS and the bridge ----


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """An Orthanc of their own: the other suites hold every study of the shared one against their index."""
    with OrthancServer(tmp_path_factory.mktemp("orthanc-compartments")) as server:
        yield server


@pytest.fixture(scope="module")
def loaded(pacs: OrthancServer) -> Catalog:
    studies = catalog()
    for _, spec in studies.studies:
        pacs.upload_many(encode(spec))
    return studies


@pytest.fixture
def verifier() -> Verifier:
    verifier = Verifier()
    for who in PATIENT_TOKENS:
        assert who.contexts is not None
        verifier.extra[who.token] = claims("launch/patient patient/ImagingStudy.rs", patient=who.contexts[0])
    verifier.extra[REGISTRY.token] = claims("system/ImagingStudy.rs", client="registry")
    verifier.extra[CLINICIAN.token] = claims("openid fhirUser user/ImagingStudy.rs")
    return verifier


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "clients.json"
    path.write_text(json.dumps({"registry": REGISTRY.contexts}))
    return path


async def open_bridge(pacs: OrthancServer, verifier: Verifier, policy: Path, config: Config, **more: str) -> TestClient:
    settings = orthanc_settings(
        pacs, auth="smart", auth_jwks_url="https://auth.example.org/jwks", public_url=BASE,
        auth_client_policy=str(policy), access_log="false", **config.environ, **more,
    )  # fmt: skip
    return await start_client(settings, verifier=verifier)


def authorization(who: Who) -> dict[str, str]:
    return {"Authorization": f"Bearer {who.token}"}


def matches(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def check_owned(resources: list[dict[str, Any]], who: Who, config: Config, studies: Catalog) -> None:
    """Every resource is a study (or one patient's part of one) of a patient ``who`` may see, and holds nothing
    of another's: its subject is that patient, exactly, and its series are that patient's."""
    for resource in resources:
        identifier = resource["subject"].get("identifier", {})
        owners = [
            (owner, spec) for owner, spec in studies.owners(resource["id"])
            if owner.patient_id == identifier.get("value") and config.system(owner) == identifier.get("system")
        ]  # fmt: skip
        assert len(owners) == 1, f"{who} was shown {resource['id']} as {identifier}, no one's study in the PACS"
        owner, spec = owners[0]
        assert config.sees(who, owner), f"{who} was shown {owner}'s study {resource['id']}"
        shown = {series["uid"] for series in resource.get("series", [])}
        assert shown <= {series.uid for series in spec.series}, f"{who} was shown another's series of {spec.uid}"


def check_mentions(body: dict[str, Any], who: Who, config: Config, studies: Catalog, asked: str) -> None:
    """No diagnostics (errors, or the warnings of a Bundle) name a study ``who`` may not see, unless asked."""
    outcomes = [body] if body.get("resourceType") == "OperationOutcome" else []
    outcomes += [e["resource"] for e in body.get("entry", []) if e["search"]["mode"] == "outcome"]
    said = " ".join(issue.get("diagnostics", "") for outcome in outcomes for issue in outcome["issue"])
    for study_uid in studies.uids:
        if study_uid in said and study_uid not in asked:
            assert any(config.sees(who, owner) for owner, _ in studies.owners(study_uid)), (
                f"{who} was told of {study_uid}: {said}"
            )


# ---- 1. reads ----


@pytest.mark.parametrize("name", CONFIGS)
async def test_a_confined_token_reads_its_patients_studies_and_no_others(
    pacs: OrthancServer, loaded: Catalog, verifier: Verifier, policy: Path, name: str
) -> None:
    """Every study in the PACS, read by every token, each read asking the PACS (nothing is cached): its
    patients' studies are served, every other answers exactly as a study that does not exist."""
    config = CONFIGS[name]
    client = await open_bridge(pacs, verifier, policy, config, cache_max_bytes="0")
    try:
        for who in (*CONFINED, CLINICIAN):
            missing = await client.get(f"/fhir/ImagingStudy/{MISSING}", headers=authorization(who))
            assert missing.status == 404
            unseen = (await missing.json())["issue"][0]["diagnostics"].replace(MISSING, "{uid}")
            for study_uid in loaded.uids:
                response = await client.get(f"/fhir/ImagingStudy/{study_uid}", headers=authorization(who))
                body = await response.json()
                owners = loaded.owners(study_uid)
                if who.contexts is None:
                    assert response.status == (200 if len(owners) == 1 else 409), body
                elif len(owners) == 1 and config.sees(who, owners[0][0]):
                    assert response.status == 200, (who, owners, body)
                else:
                    assert response.status == 404, f"{who} read {owners}'s study: {body}"
                    assert body["issue"][0]["diagnostics"].replace(study_uid, "{uid}") == unseen
                    continue
                if response.status == 200:
                    check_owned([body], who, config, loaded)
    finally:
        await client.close()
