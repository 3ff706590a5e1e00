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
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bridge.qido.factory import open_source
from bridge.terminology import DCM, DICOM_UID_SYSTEM, RFC3986, SNOMED
from tests.conftest import orthanc_settings, start_client
from tests.support.colliding_patients import (
    BODY_SITES,
    CONTEXTS,
    HOSP_B_SYSTEM,
    NAMED_ISSUER,
    PACS_SYSTEM,
    Catalog,
    Patient,
    colliders,
    loaded_catalog,
)
from tests.support.dicomgen import new_uid
from tests.support.orthanc import OrthancServer
from tests.support.recording_source import RecordingSource
from tests.support.redis_server import RedisServer
from tests.support.standin_tokens import Verifier, claims
from tests.test_cache_redis import dead_pacs_url

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
    return loaded_catalog(pacs)


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


# ---- 2. searches ----


@dataclass(frozen=True)
class Search:
    who: Who
    #: ``GET``, ``POST`` (``_search`` with a form body) or ``compartment`` (``Patient/{id}/ImagingStudy``).
    route: str
    params: tuple[tuple[str, str], ...]
    #: The Patient id in the compartment route's path.
    compartment: str = ""

    def __str__(self) -> str:
        where = f"Patient/{self.compartment!r}/ImagingStudy" if self.route == "compartment" else self.route
        return f"{self.who} {where} {list(self.params)}"

    def with_params(self, params: list[tuple[str, str]], who: Who | None = None) -> Search:
        return Search(who or self.who, self.route, tuple(params), self.compartment)

    @property
    def result(self) -> dict[str, str]:
        return {key: value for key, value in self.params if key in RESULT_PARAMETERS}


#: Values the bridge refuses (400), whatever else the search says.
REFUSED = [
    ("modality", "C*"), ("identifier", "ACC?1"), ("patient", "PAT\\A"), ("_count", "-1"), ("started", "2020-13"),
    ("_sort", "_lastUpdated"), ("_elements", "-series"), ("_summary", "maybe"), ("series", "not a uid"),
]  # fmt: skip
PATIENT_REFERENCES = ("patient", "subject", "patient:Patient", "subject:Patient")
PATIENT_IDENTIFIERS = ("patient:identifier", "subject:identifier", "patient.identifier", "subject.identifier")
#: Parameters that shape the answer rather than choose studies (``_sort`` orders the whole answer too).
RESULT = ("_count", "_offset", "_summary", "_elements", "_include", "_total")
RESULT_PARAMETERS = (*RESULT, "_sort")
_DICOM_UNSAFE = re.compile(r"[*?\\]")


@st.composite
def patient_criterion(draw: st.DrawFn, studies: Catalog, who: Who) -> tuple[str, str]:
    """A parameter naming patients: mostly the token's own, often another (a PatientID in the PACS, or a Patient
    id that stands for none), in any of the ways a patient can be named."""
    own = list(who.contexts or CONTEXTS)
    near = [other for patient_id in own for other in colliders(patient_id)] or CONTEXTS
    patients = st.one_of(st.sampled_from(own), st.sampled_from(near), st.sampled_from(CONTEXTS))
    named = draw(st.lists(patients, min_size=1, max_size=2))
    if draw(st.booleans()):
        key = draw(st.sampled_from(PATIENT_REFERENCES))
        prefix = draw(st.sampled_from(["", "Patient/", f"{BASE}/Patient/"]))
        return key, ",".join(f"{prefix}{patient_id}" for patient_id in named)
    key = draw(st.sampled_from(PATIENT_IDENTIFIERS))
    systems = st.sampled_from([None, "", PACS_SYSTEM, HOSP_B_SYSTEM, "urn:oid:1.2.3.4"])
    return key, ",".join(
        patient_id if (system := draw(systems)) is None else f"{system}|{patient_id}" for patient_id in named
    )


@st.composite
def study_criterion(draw: st.DrawFn, studies: Catalog, who: Who) -> tuple[str, str]:
    """A parameter choosing studies by what they hold: values of the grant's patients' studies, of any patient's,
    and some of no one's."""
    own = [spec for patient, spec in studies.studies if who.contexts is None or patient.patient_id in who.contexts]
    pool = draw(st.sampled_from([own or [spec for _, spec in studies.studies], [spec for _, spec in studies.studies]]))
    uids = st.sampled_from([*sorted({spec.uid for spec in pool}), MISSING])
    kind = draw(st.sampled_from(["_id", "identifier", "started", "modality", "series", "instance", "dicom-class",
                                 "body-site", "based-on:identifier", "status"]))  # fmt: skip
    if kind == "status":
        return kind, draw(st.sampled_from(["available", "cancelled"]))
    if kind == "_id":
        return kind, ",".join(draw(st.lists(uids, min_size=1, max_size=3, unique=True)))
    accession = st.sampled_from([*sorted({spec.accession for spec in pool if spec.accession}), "ACC-9"])
    if kind == "based-on:identifier":
        return kind, draw(accession)
    if kind == "identifier":
        value = draw(st.one_of(
            accession, uids.map(lambda uid: f"{DICOM_UID_SYSTEM}|urn:oid:{uid}"), uids.map(lambda uid: f"urn:oid:{uid}")
        ))  # fmt: skip
        return kind, value
    if kind == "started":
        prefix = draw(st.sampled_from(["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"]))
        year = draw(st.integers(2017, 2025))
        precision = draw(st.sampled_from([f"{year}", f"{year}-06", f"{year}-06-15"]))
        return kind, f"{prefix}{precision}"
    series = [series for spec in pool for series in spec.series]
    if kind == "modality":
        code = draw(st.sampled_from([*sorted({s.modality or "" for s in series}), "US"]))
        return kind, draw(st.sampled_from([code, f"{DCM}|{code}"]))
    if kind == "series":
        return kind, ",".join(draw(st.lists(st.sampled_from(sorted(s.uid for s in series)), min_size=1, max_size=2)))
    if kind == "instance":
        return kind, draw(st.sampled_from(sorted(i.uid for s in series for i in s.instances)))
    if kind == "dicom-class":
        sop_class = draw(st.sampled_from(sorted({i.sop_class for s in series for i in s.instances})))
        return kind, draw(st.sampled_from([sop_class, f"urn:oid:{sop_class}", f"{RFC3986}|urn:oid:{sop_class}"]))
    code = draw(st.sampled_from(sorted({BODY_SITES[s.body_part or ""] for s in series})))
    return kind, draw(st.sampled_from([code, f"{SNOMED}|{code}"]))


@st.composite
def result_parameters(draw: st.DrawFn) -> list[tuple[str, str]]:
    chosen: list[tuple[str, str]] = []
    if draw(st.booleans()):
        chosen.append(("_count", str(draw(st.sampled_from([0, 1, 2, 3, 100])))))
    if draw(st.booleans()):
        chosen.append(("_offset", str(draw(st.integers(0, 3)))))
    shape = draw(st.sampled_from(["", "_summary", "_elements"]))
    if shape == "_summary":
        chosen.append(("_summary", draw(st.sampled_from(["true", "false", "data", "count"]))))
    elif shape == "_elements":
        elements = draw(st.lists(st.sampled_from(["identifier", "started", "modality", "series", "subject"]),
                                 min_size=1, max_size=3, unique=True))  # fmt: skip
        chosen.append(("_elements", ",".join(elements)))
    if draw(st.booleans()):
        chosen.append(("_include", "ImagingStudy:endpoint"))
    if draw(st.booleans()):
        chosen.append(("_total", draw(st.sampled_from(["accurate", "estimate", "none"]))))
    if draw(st.booleans()):
        chosen.append(("_sort", draw(st.sampled_from(["started", "-started"]))))
    return chosen


@st.composite
def searches(draw: st.DrawFn, studies: Catalog) -> Search:
    who = draw(st.sampled_from(CONFINED))
    params = draw(st.lists(study_criterion(studies, who), max_size=3))
    params += draw(st.lists(patient_criterion(studies, who), max_size=2))
    params += draw(result_parameters())
    if draw(st.integers(0, 9)) == 9:  # now and then (hypothesis starts from 0, the simplest)
        params.append(draw(st.sampled_from(REFUSED)))
    params = draw(st.permutations(params))
    route = draw(st.sampled_from(["GET", "POST", "compartment"]))
    compartment = ""
    if route == "compartment":
        compartment = draw(st.one_of(st.sampled_from(who.contexts or CONTEXTS), st.sampled_from(CONTEXTS)))
    return Search(who, route, tuple(params), compartment)


def expected_status(search: Search, config: Config) -> int:
    """400 for a value the bridge refuses, else 403 for a search naming a patient outside the grant, else 200."""
    patients: list[tuple[str | None, str] | None] = []  # (system, PatientID) named; None: no patient of this PACS
    params = list(search.params)
    if search.route == "compartment":
        params.insert(0, ("patient", f"Patient/{search.compartment}"))
    for key, value in params:
        if any(refused == (key, value) for refused in REFUSED) or _DICOM_UNSAFE.search(value):
            return 400
        if key in PATIENT_REFERENCES:
            for reference in value.split(","):
                parts = reference.removeprefix(f"{BASE}/").split("/")
                if len(parts) > 2:
                    return 400  # Patient/PAT/A: no reference
                patients.append((None, parts[-1]) if len(parts) == 1 or parts[0] == "Patient" else None)
        elif key in PATIENT_IDENTIFIERS:
            for token in value.split(","):
                system, bar, patient_id = token.rpartition("|")
                patients.append((system if bar else None, patient_id))
    if len(search.result) < sum(key in RESULT_PARAMETERS for key, _ in search.params):
        return 400
    if "_summary" in search.result and "_elements" in search.result:
        return 400
    contexts = search.who.contexts
    for named in patients:
        if contexts is not None and (
            named is None
            or named[1] not in contexts
            or (named[0] is not None and config.own_system is not None and named[0] != config.own_system)
        ):
            return 403
    return 200


async def ask(client: TestClient, search: Search) -> tuple[int, dict[str, Any]]:
    headers = authorization(search.who)
    if search.route == "POST":
        response = await client.post("/fhir/ImagingStudy/_search", data=list(search.params), headers=headers)
    elif search.route == "compartment":
        path = f"/fhir/Patient/{quote(search.compartment, safe='')}/ImagingStudy"
        response = await client.get(path, params=list(search.params), headers=headers)
    else:
        response = await client.get("/fhir/ImagingStudy", params=list(search.params), headers=headers)
    body: dict[str, Any] = await response.json()
    assert response.status < 500, f"{search}: {body}"
    return response.status, body


def found(bundle: dict[str, Any]) -> list[tuple[str, str | None]]:
    """The matches of a Bundle, in order, as (StudyInstanceUID, PatientID): a UID alone can be two patients'."""
    return [(r["id"], r["subject"].get("identifier", {}).get("value")) for r in matches(bundle)]


def ambiguous(who: Who, config: Config, studies: Catalog) -> bool:
    """Whether the grant names a PatientID that more than one issuer assigns, with no system to tell them
    apart: a search then leaves its studies out (saying so), as it does for anyone who names such a PatientID."""
    if config.own_system is not None or who.contexts is None:
        return False
    issuers = {(p.patient_id, p.issuer) for p, _ in studies.studies if p.issuer and p.patient_id in who.contexts}
    return len(issuers) > len({patient_id for patient_id, _ in issuers})


async def check_search(client: TestClient, search: Search, config: Config, studies: Catalog) -> None:
    """The search's answer holds the grant's patients' studies alone, every one a clinician finds for the same
    search naming those patients, and pages through them as the whole answer does."""
    status, body = await ask(client, search)
    expected = expected_status(search, config)
    event(f"{status} {search.route}")
    assert status == expected, f"{search}: {status}, expected {expected}: {body}"
    check_mentions(body, search.who, config, studies, asked=str(search.params) + search.compartment)
    if status == 403:
        assert body["issue"][0]["code"] == "forbidden"
    if status != 200:
        return
    check_owned(matches(body), search.who, config, studies)
    included = [e["resource"]["resourceType"] for e in body.get("entry", []) if e["search"]["mode"] == "include"]
    assert included in ([], ["Endpoint"])

    # The whole answer, one page of it: the page is its slice, the total its size.
    result = search.result
    whole_params = [(key, value) for key, value in search.params if key not in RESULT] + [("_count", "100")]
    status, whole = await ask(client, search.with_params(whole_params))
    assert status == 200, whole
    everything = found(whole)
    offset, count = int(result.get("_offset", "0")), int(result.get("_count", "20"))
    page = [] if result.get("_summary") == "count" else everything[offset : offset + count]
    assert found(body) == page, f"{search}: the page is not the whole answer's slice"
    if "total" in body:
        assert body["total"] == len(everything)

    # The same search by a clinician naming the grant's patients: the confinement is exactly that criterion.
    contexts = search.who.contexts
    assert contexts is not None
    if not any(_DICOM_UNSAFE.search(patient_id) for patient_id in contexts):
        system = f"{config.own_system}|" if config.own_system else ""
        named = ("patient:identifier", ",".join(f"{system}{patient_id}" for patient_id in contexts))
        status, oracle = await ask(client, search.with_params([*whole_params, named], CLINICIAN))
        assert status == 200, oracle
        assert sorted(everything) == sorted(found(oracle)), f"{search}: not what naming the patients finds"
        event(f"named by a clinician: {len(everything)} found")

    # The same search by a clinician, its matches of the grant's patients: all of them found, and only a study
    # whose UID is shared (which a search that names no patient leaves out) besides. (A search naming a patient
    # is the criterion above; a PatientID that issuers share is left out of any search naming it without one.)
    names_patient = search.route == "compartment" or any(
        key in PATIENT_REFERENCES or key in PATIENT_IDENTIFIERS for key, _ in search.params
    )
    if not names_patient and not ambiguous(search.who, config, studies):
        status, oracle = await ask(client, search.with_params(whole_params, CLINICIAN))
        assert status == 200, oracle
        theirs = {
            (study_uid, patient_id) for study_uid, patient_id in found(oracle)
            if any(config.sees(search.who, owner) and owner.patient_id == patient_id
                   for owner, _ in studies.owners(study_uid))
        }  # fmt: skip
        assert theirs <= set(everything), f"{search}: the grant lost {theirs - set(everything)}"
        assert {study_uid for study_uid, _ in set(everything) - theirs} <= {studies.shared_uid}
        event(f"a clinician's, filtered: {len(theirs)} found")


# Each example asks a bridge of its own (its cache starts empty, so that an example fails or passes alone, as its
# replay must) up to four times: a few dozen examples, drawn the same way on every run so that a failure is one
# to reproduce, not a flake.
@pytest.mark.parametrize("name", ["no systems", "patient and issuer systems"])
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_no_search_shows_a_confined_token_another_patients_study(
    pacs: OrthancServer, loaded: Catalog, verifier: Verifier, policy: Path, name: str, data: st.DataObject
) -> None:
    """Any search a confined token may send (GET, POST _search, the compartment route; naming no patient, its own
    or another in any way; any UIDs, accession numbers, dates, codes, result parameters) is answered with its
    patients' studies alone, or refused (403 naming another patient, 400 a value the bridge refuses); never 500."""
    search = data.draw(searches(loaded), label="search")
    client = await open_bridge(pacs, verifier, policy, CONFIGS[name])
    try:
        await check_search(client, search, CONFIGS[name], loaded)
    finally:
        await client.close()


def sweep_searches(studies: Catalog) -> list[list[tuple[str, str]]]:
    """Searches that, between them, bring every study of the PACS into the cache (complete, series and all)."""
    return [
        [("_count", "100")],
        [("_count", "100"), ("_include", "ImagingStudy:endpoint"), ("_sort", "started")],
        [("_id", ",".join(studies.uids)), ("_count", "100")],
        *([("identifier", accession), ("_count", "100")] for accession in studies.accessions),
        [("modality", "CT"), ("_summary", "count")],
    ]


@pytest.mark.parametrize("name", ["no systems", "patient and issuer systems"])
async def test_a_search_naming_a_colliding_patient_is_refused(
    pacs: OrthancServer, loaded: Catalog, verifier: Verifier, policy: Path, name: str
) -> None:
    """Every patient token, naming every other patient context in every way (and its own PatientID under other
    systems): a 403, or a 400 for a value no PACS can match literally, never an answer."""
    config = CONFIGS[name]
    client = await open_bridge(pacs, verifier, policy, config)
    try:
        for who in PATIENT_TOKENS:
            assert who.contexts is not None
            own = who.contexts[0]
            asked = [Search(who, "compartment", (), other) for other in CONTEXTS if other != own]
            asked += [
                Search(who, "GET", ((key, other),))
                for other in CONTEXTS if other != own
                for key in ("patient", "subject:identifier", "patient.identifier")
            ]  # fmt: skip
            asked += [
                Search(who, "POST", (("patient:identifier", f"{system}|{own}"),))
                for system in ("", PACS_SYSTEM, HOSP_B_SYSTEM, "urn:oid:1.2.3.4")
            ]
            for search in asked:
                status, body = await ask(client, search)
                assert status == expected_status(search, config), f"{search}: {status} {body}"
                if status == 200:
                    check_owned(matches(body), who, config, loaded)
    finally:
        await client.close()


async def test_a_patient_id_that_stands_for_no_pacs_patient_sees_nothing_and_asks_the_pacs_for_nothing(
    pacs: OrthancServer, loaded: Catalog, verifier: Verifier, policy: Path
) -> None:
    """With BRIDGE_PATIENT_REFERENCE=mrn-{PatientID}, Patient PAT-A (not mrn-…) stands for no PatientID: its
    token's searches find nothing without a study being looked for at the PACS (an empty PatientID there is
    universal matching, every patient), and its reads find nothing; Patient mrn-PAT-A stands for PatientID PAT-A."""
    settings = orthanc_settings(
        pacs, auth="smart", auth_jwks_url="https://auth.example.org/jwks", public_url=BASE, access_log="false",
        patient_reference="mrn-{PatientID}",
    )  # fmt: skip
    source = RecordingSource(await open_source(settings))
    client = await start_client(settings, source, verifier)
    verifier.extra["mrn"] = claims("patient/ImagingStudy.rs", patient="mrn-PAT-A")
    try:
        for who in PATIENT_TOKENS:
            for params in sweep_searches(loaded):
                status, bundle = await ask(client, Search(who, "GET", tuple(params)))
                assert (status, matches(bundle), bundle.get("total", 0)) == (200, [], 0), f"{who} {params}: {bundle}"
        assert source.searches == []
        for who in PATIENT_TOKENS:
            for study_uid in loaded.uids:
                response = await client.get(f"/fhir/ImagingStudy/{study_uid}", headers=authorization(who))
                assert response.status == 404
        mrn = Who("mrn", ("PAT-A",))
        status, bundle = await ask(client, Search(mrn, "GET", (("_count", "100"),)))
        assert status == 200
        assert set(found(bundle)) == {(spec.uid, "PAT-A") for spec in loaded.of(Patient("PAT-A"))}
    finally:
        await client.close()
        await source.close()


# ---- 3. through a cache another token warmed ----


def visible(who: Who, config: Config, studies: Catalog) -> set[tuple[str, str]]:
    """What a search of every study finds for ``who``, as (StudyInstanceUID, PatientID): for a clinician every
    study but the UID two patients share (which a search that names no patient leaves out); for a confined grant
    its patients' studies, the shared UID's part included, but for a PatientID that issuers share with no system
    to tell them apart (which a search naming it leaves out, saying so)."""
    if who.contexts is None:
        return {(spec.uid, patient.patient_id) for patient, spec in studies.studies if spec.uid != studies.shared_uid}
    return {
        (spec.uid, patient.patient_id) for patient, spec in studies.studies
        if config.sees(who, patient) and not ambiguous(Who(who.token, (patient.patient_id,)), config, studies)
    }  # fmt: skip


async def sweep(
    client: TestClient, who: Who, config: Config, studies: Catalog, etags: dict[str, str], *, searched: bool = True
) -> None:
    """``who`` reads every study (conditionally, on the ETags another token was given) and runs every sweep
    search: it gets its patients' studies alone, all of them, and for a clinician every study."""
    for study_uid in studies.uids:
        headers = authorization(who)
        if study_uid in etags and who.contexts is not None:
            headers["If-None-Match"] = etags[study_uid]
        response = await client.get(f"/fhir/ImagingStudy/{study_uid}", headers=headers)
        owners = studies.owners(study_uid)
        if who.contexts is None:
            assert response.status == (200 if len(owners) == 1 else 409)
            if response.status == 200:
                etags[study_uid] = response.headers["ETag"]
        elif len(owners) == 1 and config.sees(who, owners[0][0]):
            assert response.status in (200, 304)
        else:
            assert response.status == 404, f"{who} read {owners}'s study: {response.status}"
            continue
        if response.status == 200:
            check_owned([await response.json()], who, config, studies)
    if not searched:
        return
    for params in sweep_searches(studies):
        status, bundle = await ask(client, Search(who, "GET", tuple(params)))
        assert status == 200, bundle
        check_owned(matches(bundle), who, config, studies)
        check_mentions(bundle, who, config, studies, asked=str(params))
        if params == [("_count", "100")]:
            assert set(found(bundle)) == visible(who, config, studies), f"{who}: not every study of its own"


@pytest.mark.parametrize("name", ["no systems", "patient and issuer systems"])
@pytest.mark.parametrize("clinician_first", [True, False], ids=["clinician first", "patients first"])
async def test_a_cache_warmed_by_one_token_serves_no_other_patients_study(
    pacs: OrthancServer, loaded: Catalog, verifier: Verifier, policy: Path, name: str, clinician_first: bool
) -> None:
    config = CONFIGS[name]
    client = await open_bridge(pacs, verifier, policy, config)
    etags: dict[str, str] = {}
    try:
        order = (CLINICIAN, *CONFINED) if clinician_first else (*CONFINED, CLINICIAN)
        for who in order:
            await sweep(client, who, config, loaded, etags)
    finally:
        await client.close()


async def test_a_shared_cache_warmed_on_one_replica_serves_no_other_patients_study_on_another(
    pacs: OrthancServer, loaded: Catalog, verifier: Verifier, policy: Path, redis_server: RedisServer
) -> None:
    """A clinician's reads and searches on one replica fill Redis; on a replica whose PACS is down (so that
    every study it serves comes from Redis) and on one whose PACS answers, each patient gets its own alone."""
    config = CONFIGS["patient and issuer systems"]
    shared = {"cache_url": redis_server.url}
    warm = await open_bridge(pacs, verifier, policy, config, **shared)
    stranded = await open_bridge(pacs, verifier, policy, config, **shared, qido_url=dead_pacs_url())
    live = await open_bridge(pacs, verifier, policy, config, **shared)
    etags: dict[str, str] = {}
    try:
        await sweep(warm, CLINICIAN, config, loaded, etags)
        for who in CONFINED:
            await sweep(stranded, who, config, loaded, etags, searched=False)
            await sweep(live, who, config, loaded, etags)
    finally:
        for client in (warm, stranded, live):
            await client.close()
