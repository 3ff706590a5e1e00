"""Search results as an R5 searchset Bundle, and ``_summary``/``_elements`` applied to each resource: pure."""

from __future__ import annotations

import copy
import uuid
from typing import Any
from urllib.parse import urlencode

from bridge.mapping.imagingstudy import SUBSETTED
from bridge.search.query import SearchQuery

#: Elements kept whatever ``_elements`` says: what a resource needs to be a valid ImagingStudy.
MANDATORY = ("resourceType", "id", "meta", "status", "subject")


def needs_series(query: SearchQuery) -> bool:
    """Whether the page's studies must be read whole (series and instances), or the study rows suffice."""
    if query.summary == "count" or query.count == 0:
        return False
    return query.elements is None or "series" in query.elements


def shape(resource: dict[str, Any], query: SearchQuery) -> dict[str, Any]:
    """The resource as ``_summary``/``_elements`` ask (``true``: summary elements, no narrative or instances;
    ``data``: all but the narrative), tagged SUBSETTED when anything was left out."""
    if query.summary == "true":
        shaped = copy.deepcopy(resource)
        shaped.pop("text", None)  # the narrative is not a summary element
        for series in shaped.get("series", []):
            series.pop("instance", None)  # series.instance is not a summary element
        if shaped.get("series"):
            # ist-4 would demand numberOfInstances = the number of listed instances, now none.
            shaped.pop("numberOfInstances", None)
        return _subsetted(shaped)
    if query.summary == "data":  # all but the narrative
        return _subsetted({key: value for key, value in resource.items() if key != "text"})
    if query.elements is not None:
        kept = set(MANDATORY) | set(query.elements)
        if "series" in kept:
            kept.add("identifier")  # ist-1: series only with the urn:dicom:uid identifier
        return _subsetted({key: value for key, value in resource.items() if key in kept})
    return resource


def _subsetted(resource: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta", {}))
    tags = [tag for tag in meta.get("tag", []) if tag.get("code") != SUBSETTED["code"]]
    meta["tag"] = [*tags, dict(SUBSETTED)]
    return {"resourceType": resource["resourceType"], "id": resource["id"], "meta": meta, **{
        key: value for key, value in resource.items() if key not in ("resourceType", "id", "meta")
    }}  # fmt: skip


def searchset(
    base: str,
    query: SearchQuery,
    total: int | None,
    resources: list[dict[str, Any]],
    endpoint: dict[str, Any] | None,
    warnings: list[str],
    *,
    has_next: bool = False,
    kept: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    """The Bundle for one page: ``base`` is the FHIR base URL the links and fullUrls start with; ``kept``, the
    parameters besides the search's that its links must carry (the ``_format`` that chose the version)."""
    entries: list[dict[str, Any]] = [
        {"fullUrl": f"{base}/ImagingStudy/{r['id']}", "resource": shape(r, query), "search": {"mode": "match"}}
        for r in resources
    ]
    if query.include_endpoint and endpoint and resources:
        entries.append(
            {"fullUrl": f"{base}/Endpoint/{endpoint['id']}", "resource": endpoint, "search": {"mode": "include"}}
        )
    if warnings:
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "warning", "code": "multiple-matches", "diagnostics": w} for w in warnings],
        }
        entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": outcome, "search": {"mode": "outcome"}})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:  # a page read at the PACS knows whether there is more, not how much
        bundle["total"] = total
    bundle["link"] = page_links(base, query, has_next, kept)
    if entries:
        bundle["entry"] = entries
    return bundle


def page_links(
    base: str, query: SearchQuery, has_next: bool, kept: tuple[tuple[str, str], ...] = ()
) -> list[dict[str, str]]:
    """``self``, ``next`` and ``previous`` as GET URLs carrying exactly the parameters that were applied, and
    ``kept``: a client follows ``next`` as given, so a ``_format`` that chose the version must stay in it."""

    def url(offset: int) -> str:
        criteria = [c.applied for c in query.criteria if c.applied]
        params = [*criteria, *query.applied, *kept, ("_count", str(query.count))]
        if offset:
            params.append(("_offset", str(offset)))
        return f"{base}/ImagingStudy?{urlencode(params)}"

    links = [{"relation": "self", "url": url(query.offset)}]
    if query.summary != "count" and query.count and has_next:
        links.append({"relation": "next", "url": url(query.offset + query.count)})
    if query.offset > 0 and query.count:
        links.append({"relation": "previous", "url": url(max(0, query.offset - query.count))})
    return links
