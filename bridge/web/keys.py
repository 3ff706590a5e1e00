"""The application's typed state (aiohttp ``AppKey``s), shared by the handlers and the lifecycle contexts."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bridge.auth.grant import AuditFacts, Grant
from bridge.cache.service import StudyCache
from bridge.fhirversion import FhirVersion
from bridge.mapping.imagingstudy import MappingOptions
from bridge.qido.source import QidoSource
from bridge.search.execute import Limits
from bridge.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
SOURCE = web.AppKey("source", QidoSource)
CACHE = web.AppKey("cache", StudyCache)
MAPPING = web.AppKey("mapping", MappingOptions)
SEARCH_LIMITS = web.AppKey("search_limits", Limits)
ENDPOINT = web.AppKey("endpoint", dict[str, Any])  # empty when no WADO-RS address is known
#: The same Endpoint in each FHIR version served.
ENDPOINTS = web.AppKey("endpoints", dict[FhirVersion, dict[str, Any]])
#: Resource type -> the FHIR interactions served, from the route table (for the CapabilityStatement).
INTERACTIONS = web.AppKey("interactions", dict[str, list[str]])

#: What the request's token grants (``bridge.auth.grant.OPEN`` when authorization is off); set before any
#: handler runs.
GRANT = web.RequestKey("grant", Grant)
#: What a handler did for the audit log: the studies it returned or refused (filled in as it answers).
AUDITED = web.RequestKey("audited", AuditFacts)
