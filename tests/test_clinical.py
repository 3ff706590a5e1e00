"""The clinical FHIR Patient lookup (bridge.auth.clinical): a token's patient context -> the Patient's identifiers,
read with the bridge's own client_credentials token, cached; a missing Patient has none; failures are 503s."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest

from bridge.auth.clinical import ClinicalPatients, clinical_patients
from bridge.errors import AuthServerUnavailable
from bridge.settings import load_settings
from tests.support.authserver import CLIENT_SECRET, AuthServer

MRN = "urn:oid:1.2.3.4"


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def make(auth: AuthServer, clock: Clock, **values: str) -> ClinicalPatients:
    auth.clock = clock
    patients = clinical_patients(
        load_settings(auth.environ(clinical_fhir_url=auth.clinical_url, patient_id_system=MRN, **values)), clock=clock
    )
    assert patients is not None
    return patients


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def patients(auth_server: AuthServer, clock: Clock) -> AsyncIterator[ClinicalPatients]:
    auth_server.add_patient(
        "p-1",
        [(MRN, "MRN-1"), ("urn:oid:9.9", "OLD-1"), (None, "LOCAL-1")],
        active=True,
    )
    auth_server.patients["p-1"]["identifier"][1]["use"] = "old"
    auth_server.add_patient("p-2", [(MRN, "MRN-2")])
    patients = make(auth_server, clock)
    yield patients
    await patients.close()


async def test_a_patients_identifiers_are_read_with_the_bridges_own_token(
    auth_server: AuthServer, patients: ClinicalPatients
):
    assert await patients.identifiers("p-1") == [(MRN, "MRN-1"), (None, "LOCAL-1")]  # the old MRN left out
    assert auth_server.requests["token"] == 1
    assert auth_server.token_requests == [{"grant_type": "client_credentials", "scope": "system/Patient.rs"}]
    assert await patients.identifiers("p-2") == [(MRN, "MRN-2")]
    assert auth_server.requests["token"] == 1  # one token for every read while it lasts


async def test_answers_are_cached_for_five_minutes(auth_server: AuthServer, patients: ClinicalPatients, clock: Clock):
    await patients.identifiers("p-1")
    auth_server.add_patient("p-1", [(MRN, "MRN-CHANGED")])
    assert await patients.identifiers("p-1") == [(MRN, "MRN-1"), (None, "LOCAL-1")]
    assert auth_server.requests["patient"] == 1
    clock.offset += 301
    assert await patients.identifiers("p-1") == [(MRN, "MRN-CHANGED")]
    assert auth_server.requests["patient"] == 2


async def test_a_missing_patient_has_no_identifiers_and_that_is_cached(
    auth_server: AuthServer, patients: ClinicalPatients
):
    assert await patients.identifiers("nobody") == []
    assert await patients.identifiers("nobody") == []
    assert auth_server.requests["patient"] == 1


@pytest.mark.parametrize("patient_id", ["", "../Patient/p-1", "p 1", "x" * 65, "p-1/_history/1"])
async def test_an_id_that_is_no_fhir_id_asks_nothing(
    auth_server: AuthServer, patients: ClinicalPatients, patient_id: str
):
    assert await patients.identifiers(patient_id) == []
    assert auth_server.requests["patient"] == auth_server.requests["token"] == 0


async def test_the_bridges_token_is_renewed_before_it_expires(
    auth_server: AuthServer, patients: ClinicalPatients, clock: Clock
):
    auth_server.service_token_lifetime = 60
    await patients.identifiers("p-1")
    clock.offset += 31  # within 30 s of its expiry
    await patients.identifiers("p-2")
    assert auth_server.requests["token"] == 2


async def test_a_revoked_token_is_replaced_once(auth_server: AuthServer, patients: ClinicalPatients):
    await patients.identifiers("p-1")
    auth_server.service_tokens.clear()
    assert await patients.identifiers("p-2") == [(MRN, "MRN-2")]
    assert auth_server.requests["token"] == 2
    assert auth_server.requests["patient"] == 3  # refused once, then read


async def test_concurrent_lookups_of_one_patient_read_it_once(auth_server: AuthServer, patients: ClinicalPatients):
    results = await asyncio.gather(*(patients.identifiers("p-1") for _ in range(10)))
    assert all(result == results[0] for result in results)
    assert auth_server.requests["patient"] == 1
    assert auth_server.requests["token"] == 1


@pytest.mark.parametrize("status", [500, 403, 400])
async def test_a_failing_clinical_server_is_503_and_not_cached(
    auth_server: AuthServer, patients: ClinicalPatients, status: int
):
    auth_server.failures["patient"] = status
    with pytest.raises(AuthServerUnavailable) as caught:
        await patients.identifiers("p-1")
    assert caught.value.status == 503
    assert "clinical FHIR server is unavailable" in caught.value.diagnostics
    del auth_server.failures["patient"]
    assert await patients.identifiers("p-1") == [(MRN, "MRN-1"), (None, "LOCAL-1")]


@pytest.mark.parametrize("body", [{"resourceType": "Observation", "id": "p-1"}, {"resourceType": "Patient", "id": "x"}])
async def test_an_answer_that_is_not_the_patient_is_503(
    auth_server: AuthServer, patients: ClinicalPatients, body: dict[str, str]
):
    auth_server.patients["p-1"] = body
    with pytest.raises(AuthServerUnavailable):
        await patients.identifiers("p-1")


async def test_a_token_endpoint_refusing_the_bridge_is_503_and_logged(
    auth_server: AuthServer, clock: Clock, caplog: pytest.LogCaptureFixture
):
    auth_server.add_patient("p-1", [(MRN, "MRN-1")])
    patients = make(auth_server, clock, auth_client_secret="wrong-secret")
    try:
        with pytest.raises(AuthServerUnavailable):
            await patients.identifiers("p-1")
    finally:
        await patients.close()
    assert any("BRIDGE_AUTH_CLIENT_ID" in record.getMessage() for record in caplog.records)
    assert auth_server.requests["patient"] == 0


async def test_without_an_issuer_the_clinical_servers_smart_configuration_names_the_token_endpoint(
    auth_server: AuthServer, clock: Clock
):
    auth_server.add_patient("p-1", [(MRN, "MRN-1")])
    environ = auth_server.environ(
        clinical_fhir_url=auth_server.clinical_url, auth_jwks_url=auth_server.jwks_url, patient_id_system=MRN
    )
    del environ["BRIDGE_AUTH_ISSUER"]
    patients = clinical_patients(load_settings(environ), clock=clock)
    assert patients is not None
    try:
        assert await patients.identifiers("p-1") == [(MRN, "MRN-1")]
    finally:
        await patients.close()
    assert auth_server.requests["clinical-smart-configuration"] == 1
    assert auth_server.requests["openid-configuration"] == 0


async def test_without_client_credentials_patients_are_read_without_a_token(auth_server: AuthServer, clock: Clock):
    auth_server.add_patient("p-1", [(MRN, "MRN-1")])
    environ = auth_server.environ(clinical_fhir_url=auth_server.clinical_url, patient_id_system=MRN)
    del environ["BRIDGE_AUTH_CLIENT_ID"], environ["BRIDGE_AUTH_CLIENT_SECRET"]
    patients = clinical_patients(load_settings(environ), clock=clock)
    assert patients is not None
    try:
        with pytest.raises(AuthServerUnavailable):
            await patients.identifiers("p-1")  # this server wants a token
        auth_server.clinical_open = True
        assert await patients.identifiers("p-1") == [(MRN, "MRN-1")]
    finally:
        await patients.close()
    assert auth_server.requests["token"] == 0


async def test_no_lookup_without_a_clinical_server():
    assert clinical_patients(load_settings({})) is None


async def test_secrets_are_never_logged(
    auth_server: AuthServer, patients: ClinicalPatients, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    await patients.identifiers("p-1")
    auth_server.failures["patient"] = 500
    with pytest.raises(AuthServerUnavailable):
        await patients.identifiers("p-2")
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert CLIENT_SECRET not in logged
    assert not any(token in logged for token in auth_server.service_tokens)
