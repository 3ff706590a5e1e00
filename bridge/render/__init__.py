"""The facts of a study (``bridge.mapping.facts``) written as a FHIR resource of one version: pure.

``r5`` and ``r4`` differ only where the versions do (Coding against CodeableConcept, ``procedure`` against
``procedureCode``…); what both write the same way is in ``common``, the narrative in ``narrative``.
"""

from __future__ import annotations

from typing import Any

from bridge.fhirversion import FhirVersion
from bridge.mapping.facts import StudyFacts
from bridge.render import r4, r5
from bridge.render.common import instances_of


def imaging_study(facts: StudyFacts, version: FhirVersion) -> dict[str, Any]:
    """The ImagingStudy in ``version`` (study level only, tagged SUBSETTED, when the facts have no series)."""
    return r4.imaging_study(facts) if version is FhirVersion.R4 else r5.imaging_study(facts)


def both(facts: StudyFacts) -> dict[FhirVersion, dict[str, Any]]:
    """The ImagingStudy in every version, the instance elements (most of a large study, and the same in R4 and
    R5) rendered once and shared by both: what a cache entry holds."""
    instances = instances_of(facts.series or ())
    return {FhirVersion.R5: r5.imaging_study(facts, instances), FhirVersion.R4: r4.imaging_study(facts, instances)}
