"""Patients chosen to collide, each with a few studies, for the patient-compartment tests against a real Orthanc.

Their PatientIDs differ only by case (``PAT-A`` / ``pat-a``), by a character that a PACS's matching reads as a
wildcard or that the bridge sends as its own ``*`` (``PAT A``, ``PAT/A``, ``PAT_A``, ``PAT?A``, ``PAT*A``,
``PATA`` which ``PAT*A`` matches), by a trailing no-break space, or only by issuer (``ISS-1`` from three issuers).
One StudyInstanceUID is under two of them, and accession numbers repeat across patients. Studies vary in date,
modality, body part and SOP class, so that every search parameter has something to tell apart.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

from tests.support.dicomgen import (
    BASIC_TEXT_SR,
    CT_IMAGE,
    MR_IMAGE,
    InstanceSpec,
    SeriesSpec,
    StudySpec,
    encode,
    new_uid,
)
from tests.support.orthanc import OrthancServer

#: An issuer given as an OID: its identifier system is urn:oid:1.2.3.4 whatever the settings say.
OID_ISSUER = "1.2.3.4"
#: An issuer given as a name, whose system is BRIDGE_ISSUER_SYSTEMS's to say (none when it does not).
NAMED_ISSUER = "HOSP-B"
#: The systems the bridge is configured with in the runs that configure systems.
PACS_SYSTEM = "urn:example:pacs"
HOSP_B_SYSTEM = "urn:example:hosp-b"


@dataclass(frozen=True)
class Patient:
    patient_id: str
    issuer: str | None = None


PATIENTS = (
    Patient("PAT-A"),
    Patient("pat-a"),  # case: Orthanc matches PatientID case-insensitively
    Patient("PAT A"),  # the bridge asks for PAT*A: a space is not URL-safe
    Patient("PAT/A"),  # likewise
    Patient("PAT_A"),  # a wildcard in SQL LIKE
    Patient("PAT?A"),  # DICOM wildcards, which a client may not send
    Patient("PAT*A"),
    Patient("PATA"),  # what PAT*A matches with nothing for the *
    Patient("PAT-A\u00a0"),  # cleaned for display, it would be PAT-A
    Patient("ISS-1", OID_ISSUER),  # one PatientID, three issuers: three patients
    Patient("ISS-1", NAMED_ISSUER),
    Patient("ISS-1"),
    Patient("ISS-2", OID_ISSUER),  # an issuer's patient whose PatientID no one else has
)

#: The patient contexts tokens are made for: every PatientID, and ones that name no PACS patient (``PAT-A `` is
#: ``PAT-A`` padded as DICOM pads, which is not the PatientID the Patient id stands for).
CONTEXTS = (*dict.fromkeys(p.patient_id for p in PATIENTS), "PAT-A ", "NOBODY")


def colliders(patient_id: str) -> list[str]:
    """The other patient contexts that a case-insensitive or wildcard match could take for this one."""

    def folded(value: str) -> str:
        return re.sub(r"[^0-9a-z]", "", value.lower())

    return [other for other in CONTEXTS if other != patient_id and folded(other) == folded(patient_id)]


_MODALITIES = (("CT", CT_IMAGE), ("MR", MR_IMAGE), ("SR", BASIC_TEXT_SR))
_BODY_PARTS = ("CHEST", "HEAD", "KNEE")
#: Body parts, as the SNOMED codes body-site searches name them (PS3.16 Annex L).
BODY_SITES = {"CHEST": "816094009", "HEAD": "69536005", "KNEE": "72696002"}


@dataclass(frozen=True)
class Catalog:
    #: Each study as loaded, with the patient it belongs to.
    studies: tuple[tuple[Patient, StudySpec], ...]
    #: The StudyInstanceUID two patients' studies share.
    shared_uid: str

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # Hypothesis prints a test's arguments with its failure: printed field by field, this catalog derails its
        # replay of the failing example, which then fails as FlakyStrategyDefinition instead of as the test did.
        printer.text(f"<Catalog: {len(self.studies)} studies>")

    def of(self, patient: Patient) -> list[StudySpec]:
        return [spec for owner, spec in self.studies if owner == patient]

    @property
    def uids(self) -> list[str]:
        return sorted({spec.uid for _, spec in self.studies})

    @property
    def accessions(self) -> list[str]:
        return sorted({spec.accession for _, spec in self.studies if spec.accession})

    @property
    def series_uids(self) -> list[str]:
        return sorted({series.uid for _, spec in self.studies for series in spec.series})

    @property
    def instance_uids(self) -> list[str]:
        return sorted({i.uid for _, spec in self.studies for series in spec.series for i in series.instances})

    def owners(self, study_uid: str) -> list[tuple[Patient, StudySpec]]:
        return [(owner, spec) for owner, spec in self.studies if spec.uid == study_uid]


def catalog() -> Catalog:
    """Two studies per patient (``PAT-A`` and ``pat-a`` share the UID of their second), built deterministically
    but for the UIDs, which are new each run."""
    turn = itertools.count()
    shared_uid = new_uid()
    studies = []
    for index, patient in enumerate(PATIENTS):
        for nth in range(2):
            uid = shared_uid if nth == 1 and patient.patient_id in ("PAT-A", "pat-a") else new_uid()
            studies.append((patient, _study(patient, index, nth, uid, next(turn))))
    return Catalog(tuple(studies), shared_uid)


def loaded_catalog(pacs: OrthancServer) -> Catalog:
    """A new ``catalog()``, every study of it stored in ``pacs``."""
    studies = catalog()
    for _, spec in studies.studies:
        pacs.upload_many(encode(spec))
    return studies


def _study(patient: Patient, index: int, nth: int, uid: str, turn: int) -> StudySpec:
    series = []
    for number in range(1 + turn % 2):
        modality, sop_class = _MODALITIES[(turn + number) % len(_MODALITIES)]
        series.append(
            SeriesSpec(
                modality=modality, number=number + 1, body_part=_BODY_PARTS[(turn + 2 * number) % len(_BODY_PARTS)],
                instances=[InstanceSpec(sop_class=sop_class, number=n + 1) for n in range(1 + (turn + number) % 2)],
            )
        )  # fmt: skip
    return StudySpec(
        patient_id=patient.patient_id,
        issuer=patient.issuer,
        patient_name=f"Patient^{index}",
        uid=uid,
        # Years apart, and days apart within a year, so that date ranges cut between any two.
        date=f"{2018 + turn % 7}{1 + turn % 12:02d}{1 + (3 * turn) % 28:02d}",
        time="101500",
        # Accession numbers repeat: ACC-1 is held by a study of most patients.
        accession=f"ACC-{nth + 1}" if turn % 3 else f"acc-{nth + 1}",
        series=series,
    )
