"""Every catalog the integration suites use, in one PACS: the awkward studies (``catalog``), the search catalog,
the colliding patients, and a study with procedures, reasons and readers. The R4/R5 suites read all of it."""

from __future__ import annotations

from dataclasses import dataclass

from tests.support import catalog, colliding_patients, search_catalog
from tests.support.dicomgen import StudySpec, encode, simple_study
from tests.support.orthanc import OrthancServer
from tests.support.search_catalog import SearchCatalog

#: The patient of the study with procedure codes, coded and worded reasons and two reading physicians.
READERS_PATIENT = "PAT-READERS"


@dataclass(frozen=True)
class Loaded:
    pacs: OrthancServer
    #: Every study loaded, as specified (a UID held under two patients appears once for each).
    specs: list[StudySpec]
    awkward: dict[str, StudySpec]
    search: SearchCatalog

    @property
    def shared(self) -> set[str]:
        """The StudyInstanceUIDs that more than one patient's study carries."""
        owners: dict[str, set[tuple[str | None, str | None]]] = {}
        for spec in self.specs:
            owners.setdefault(spec.uid, set()).add((spec.patient_id, spec.issuer))
        return {uid for uid, who in owners.items() if len(who) > 1}


def load(pacs: OrthancServer) -> Loaded:
    awkward, search = catalog.studies(), search_catalog.build()
    specs = [
        *awkward.values(),
        *catalog.shared_uid_pair(),
        *search.all(),
        *(spec for _, spec in colliding_patients.catalog().studies),
        simple_study(
            patient_id=READERS_PATIENT, description="CT head <plain> & \"fast\"",
            procedures=[("RPID16", "RADLEX", "CT HEAD WO")], reasons=[("25064002", "SCT", "Headache")],
            reason_text="headache since <Monday>", reading="Reader^Rita\\Second^Sam",
        ),
    ]  # fmt: skip
    pacs.upload_many(data for spec in specs for data in encode(spec))
    return Loaded(pacs, specs, awkward, search)
