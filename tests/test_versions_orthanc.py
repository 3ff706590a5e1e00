"""Every study of a test PACS read in R4 and in R5 through the HTTP API, and held to stating the same facts.

A real Orthanc of its own, loaded with every catalog the integration suites use (``every_study``: the awkward
studies, the search catalog, the colliding patients, a study with procedures, reasons and readers): each study it
holds is read on ``/fhir/r4`` and ``/fhir/r5`` (both from one PACS read, and each from its own) and found by
searches on both bases. Every R4 answer is checked with the R4 validator (fhir.resources' R4B models,
dom-2..dom-6, ele-1, ref-1, the narrative) and parsed by SMART's Python client (R4 models, strict); every R5
answer with the R5 validator. The two are then compared through a projection written here, in neither version's
shape, that covers every element either version writes: an element the projection does not know fails the test
rather than going uncompared.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from fhirclient.models.fhirelementfactory import FHIRElementFactory

from tests.conftest import orthanc_settings, start_client
from tests.support.dicomgen import SEGMENTATION
from tests.support.every_catalog import READERS_PATIENT, Loaded
from tests.support.fhircheck import validate, validate_r4

pytestmark = pytest.mark.integration

R4, R5 = "/fhir/r4", "/fhir/r5"
Json = dict[str, Any]


# ---- the bridge ----


@pytest.fixture
async def client(every_study: Loaded) -> AsyncIterator[TestClient]:
    client = await start_client(orthanc_settings(every_study.pacs))
    yield client
    await client.close()


# ---- the version-neutral projection ----


def concept(value: Json | None, r4: bool) -> tuple[str | None, ...] | None:
    """A Coding (R4) or a CodeableConcept / CodeableReference (R5) as (system, code, display), or ("words", …)
    for a concept DICOM only named (R5: text alone; R4: a Coding with display alone)."""
    if value is None:
        return None
    if not r4:
        value = value.get("concept", value)
        if "coding" not in value:
            assert set(value) == {"text"}, value
            return ("words", value["text"])
        value = value["coding"][0]
    if "code" not in value:
        assert set(value) == {"display"}, value
        return ("words", value["display"])
    return (value["system"], value["code"], value.get("display"))


def codeable(value: Json) -> tuple[tuple[tuple[str | None, ...], ...], str | None]:
    """A CodeableConcept, the same type in both versions (procedure and reason codes)."""
    return tuple((c.get("system"), c.get("code"), c.get("display")) for c in value.get("coding", [])), value.get("text")


def reference(value: Json) -> tuple[Any, ...]:
    identifier = value.get("identifier", {})
    return (value.get("reference"), value.get("type"), identifier.get("system"), identifier.get("value"),
            str(identifier.get("type")), value.get("display"))  # fmt: skip


STUDY_KEYS = {
    "resourceType", "id", "meta", "text", "identifier", "status", "modality", "subject", "started", "basedOn",
    "referrer", "endpoint", "numberOfSeries", "numberOfInstances", "description", "series",
}  # fmt: skip
R4_ONLY, R5_ONLY = {"procedureCode", "reasonCode", "interpreter"}, {"procedure", "reason"}
SERIES_KEYS = {
    "uid", "number", "modality", "description", "numberOfInstances", "endpoint", "bodySite", "laterality", "started",
    "performer", "instance",
}  # fmt: skip
INSTANCE_KEYS = {"uid", "sopClass", "number", "title"}


def projection(study: Json, r4: bool) -> Json:
    """What an ImagingStudy says, in no version's shape. The elements one version alone can carry are projected
    to what both say: R4's readers (``interpreter``) have no R5 element, so they are kept aside."""
    unknown = set(study) - STUDY_KEYS - (R4_ONLY if r4 else R5_ONLY)
    assert not unknown, f"elements the comparison does not know: {unknown}"
    procedures = study.get("procedureCode", []) if r4 else [p["concept"] for p in study.get("procedure", [])]
    reasons = study.get("reasonCode", []) if r4 else [r["concept"] for r in study.get("reason", [])]
    series = []
    for item in study.get("series", []):
        assert not (unknown := set(item) - SERIES_KEYS), f"series elements the comparison does not know: {unknown}"
        instances = []
        for instance in item.get("instance", []):
            assert not (unknown := set(instance) - INSTANCE_KEYS), f"instance elements not known: {unknown}"
            sop = instance["sopClass"]
            instances.append((instance["uid"], sop["system"], sop["code"], sop.get("display"), instance.get("number"),
                              instance.get("title")))  # fmt: skip
        series.append({
            "uid": item["uid"], "number": item.get("number"), "modality": concept(item["modality"], r4),
            "description": item.get("description"), "numberOfInstances": item.get("numberOfInstances"),
            "endpoint": [reference(e) for e in item.get("endpoint", [])],
            "bodySite": concept(item.get("bodySite"), r4), "laterality": concept(item.get("laterality"), r4),
            "started": item.get("started"),
            "performer": [(codeable(p["function"]) if "function" in p else None, reference(p["actor"]))
                          for p in item.get("performer", [])],
            "instances": instances,
        })  # fmt: skip
    meta = study.get("meta", {})
    return {
        "id": study["id"], "status": study["status"],
        "tags": [(t.get("system"), t.get("code")) for t in meta.get("tag", [])],
        "identifier": [(i.get("system"), i.get("value"), str(i.get("type"))) for i in study.get("identifier", [])],
        "modality": [concept(m, r4) for m in study.get("modality", [])],
        "subject": reference(study["subject"]), "started": study.get("started"),
        "basedOn": [reference(b) for b in study.get("basedOn", [])],
        "referrer": reference(study["referrer"]) if "referrer" in study else None,
        "endpoint": [reference(e) for e in study.get("endpoint", [])],
        "numberOfSeries": study.get("numberOfSeries"), "numberOfInstances": study.get("numberOfInstances"),
        "description": study.get("description"),
        "procedures": [codeable(p) for p in procedures], "reasons": [codeable(r) for r in reasons],
        "text": study.get("text"),  # the narrative: the same div, character for character
        "series": series,
    }  # fmt: skip


def same_facts(r4: Json, r5: Json) -> None:
    if r5["resourceType"] != "ImagingStudy":
        assert r4["resourceType"] == r5["resourceType"] == "OperationOutcome", (r4, r5)
        assert [i["code"] for i in r4["issue"]] == [i["code"] for i in r5["issue"]]
        return
    assert projection(r4, r4=True) == projection(r5, r4=False), r5["id"]


# ---- checks of each answer ----


def checked(body: Json, path: str) -> Json:
    if path.startswith(R4):
        validate_r4(body)
        FHIRElementFactory.instantiate(body["resourceType"], body)  # fhirclient's R4 models: strict
    else:
        validate(body)
    return body


async def get(client: TestClient, path: str) -> tuple[int, Json]:
    response = await client.get(path)
    body = await response.json()
    version = "4.0" if path.startswith(R4) else "5.0"
    assert response.headers["Content-Type"] == f"application/fhir+json; fhirVersion={version}; charset=utf-8"
    return response.status, checked(body, path)


async def pages(client: TestClient, path: str) -> list[Json]:
    """Every entry of a search, across its pages (next links followed as written)."""
    entries: list[Json] = []
    url: str | None = path
    while url is not None:
        assert len(entries) < 5000, "runaway paging"
        status, bundle = await get(client, url)
        assert status == 200, bundle
        entries.extend(bundle.get("entry", []))
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        if url is not None:
            url = url.removeprefix(str(client.make_url("")))
    return entries


def by_id(entries: list[Json], mode: str = "match") -> dict[str, Json]:
    return {e["resource"]["id"]: e["resource"] for e in entries if e["search"]["mode"] == mode}


def held_uids(every_study: Loaded) -> set[str]:
    return {study["MainDicomTags"]["StudyInstanceUID"] for study in every_study.pacs.get_json("/studies?expand")}


# ---- the tests ----


@pytest.mark.parametrize("apart", [False, True], ids=["one-read-for-both", "a-read-for-each"])
async def test_every_study_reads_alike_in_r4_and_r5(client: TestClient, every_study: Loaded, apart: bool) -> None:
    """Read by one bridge, R4 first (its cache then serves R5 from the same PACS read); or R5 by a second bridge,
    from a PACS read of its own, so that the two versions come from separate reads of the PACS."""
    held = sorted(held_uids(every_study))
    assert set(held) == {spec.uid for spec in every_study.specs}  # the PACS holds what was loaded: all of it is read
    other = await start_client(orthanc_settings(every_study.pacs)) if apart else client
    statuses: dict[int, int] = {}
    try:
        for uid in held:
            status_r4, r4 = await get(client, f"{R4}/ImagingStudy/{uid}")
            status_r5, r5 = await get(other, f"{R5}/ImagingStudy/{uid}")
            assert status_r4 == status_r5, (uid, r4, r5)
            statuses[status_r5] = statuses.get(status_r5, 0) + 1
            same_facts(r4, r5)
    finally:
        if apart:
            await other.close()
    # A UID held under two patients is a conflict in either version; every other study is read.
    assert statuses == {200: len(held) - len(every_study.shared), 409: len(every_study.shared)}, statuses


async def test_every_study_searches_alike_in_r4_and_r5(client: TestClient, every_study: Loaded) -> None:
    held = held_uids(every_study)
    query = "ImagingStudy?_count=50&_include=ImagingStudy:endpoint"
    r4_entries, r5_entries = await pages(client, f"{R4}/{query}"), await pages(client, f"{R5}/{query}")
    r4, r5 = by_id(r4_entries), by_id(r5_entries)
    order = [[(e["search"]["mode"], e["resource"].get("id")) for e in entries] for entries in (r4_entries, r5_entries)]
    assert order[0] == order[1]  # the same entries in the same order
    outcomes = [[e["resource"]["issue"] for e in entries if e["search"]["mode"] == "outcome"]
                for entries in (r4_entries, r5_entries)]  # fmt: skip
    assert outcomes[0] == outcomes[1]
    assert set(r5) == held - every_study.shared  # a UID under two patients is left out, saying so, in both
    assert set(r4) == set(r5)
    for uid in r5:
        same_facts(r4[uid], r5[uid])
    endpoints = by_id(r4_entries, "include"), by_id(r5_entries, "include")
    assert endpoints[0].keys() == endpoints[1].keys()
    assert len(endpoints[0]) == 1
    (endpoint_id,) = endpoints[0]
    r4_endpoint, r5_endpoint = endpoints[0][endpoint_id], endpoints[1][endpoint_id]
    assert r4_endpoint["address"] == r5_endpoint["address"]
    assert r4_endpoint["connectionType"] == r5_endpoint["connectionType"][0]["coding"][0]
    assert r4_endpoint["payloadMimeType"] == [m for p in r5_endpoint["payload"] for m in p["mimeType"]]
    assert all(s["endpoint"][0]["reference"] == f"Endpoint/{endpoint_id}" for s in r4.values())


DCM = "http://dicom.nema.org/resources/ontology/DCM"
CHEST = "http://snomed.info/sct|816094009"


@pytest.mark.parametrize(
    ("r4_query", "r5_query"),
    [
        (f"modality={DCM}|MR", f"modality={DCM}|MR"),
        (f"bodysite={CHEST}", f"body-site={CHEST}"),  # R4's name and R5's
        ("started=ge2023-06-01&started=lt2024-06-01", "started=ge2023-06-01&started=lt2024-06-01"),
        ("patient:identifier=PAT-A&_sort=-started", "patient:identifier=PAT-A&_sort=-started"),
        (f"patient:identifier={READERS_PATIENT}", f"patient:identifier={READERS_PATIENT}"),
        (f"dicom-class={SEGMENTATION}", f"dicom-class={SEGMENTATION}"),
    ],
)
async def test_searches_find_the_same_studies_in_r4_and_r5(client: TestClient, r4_query: str, r5_query: str) -> None:
    r4 = by_id(await pages(client, f"{R4}/ImagingStudy?{r4_query}&_count=20"))
    r5 = by_id(await pages(client, f"{R5}/ImagingStudy?{r5_query}&_count=20"))
    assert r5
    assert list(r4) == list(r5)
    for uid in r5:
        same_facts(r4[uid], r5[uid])
