"""A search answers in the FHIR version asked for: the same studies, matched the same way, rendered from the same
facts (study-level summaries, complete studies from the cache and from the PACS)."""

from __future__ import annotations

import orjson
import pytest

from bridge.cache.backends import MemoryBackend
from bridge.cache.freshness import Policy
from bridge.cache.service import StudyCache
from bridge.fhirversion import FhirVersion
from bridge.mapping.imagingstudy import MappingOptions
from bridge.search.execute import run_search
from bridge.search.query import parse_search
from tests.support.fhircheck import validate, validate_r4
from tests.test_cache import pacs
from tests.test_render import projection

R4, R5 = FhirVersion.R4, FhirVersion.R5


@pytest.mark.parametrize("complete", [False, True])
@pytest.mark.parametrize("cached", [False, True])
async def test_a_search_renders_its_studies_in_the_version_asked_for(complete: bool, cached: bool) -> None:
    source = pacs(instances=3)
    cache = StudyCache(MemoryBackend(), source, MappingOptions(), Policy()) if cached else None
    query = parse_search([("modality", "CT")])
    try:
        found = {
            version: await run_search(source, query, MappingOptions(), complete=complete, cache=cache, version=version)
            for version in FhirVersion
        }
    finally:
        if cache is not None:
            await cache.close()
    (r4,), (r5,) = found[R4].resources, found[R5].resources
    validate_r4(r4)
    validate(r5)
    assert ("series" in r4) is complete
    neutral_r4, neutral_r5 = projection(r4, R4), projection(r5, R5)
    if complete and not cached:
        assert "meta" not in r4  # read straight from the PACS: no version yet
    assert neutral_r4 == neutral_r5
    assert found[R4].total == found[R5].total == 1


async def test_a_cached_study_is_served_in_r4_as_the_cache_holds_it() -> None:
    source = pacs(instances=2)
    cache = StudyCache(MemoryBackend(), source, MappingOptions(), Policy())
    try:
        result = await run_search(source, parse_search([]), MappingOptions(), complete=True, cache=cache, version=R4)
        held = (await cache.read(result.resources[0]["id"])).entry
    finally:
        await cache.close()
    assert result.resources == [orjson.loads(held.body_of(R4))]
