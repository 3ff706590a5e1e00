"""Whose a row is: the PACS's PatientID and IssuerOfPatientID, compared exactly.

Identity is decided on raw values, with only DICOM's own padding removed (trailing and leading spaces, a NUL
pad). The bridge cleans values for display (a no-break space becomes a space, control characters go), and
``P1\u00a0`` or ``\tP1`` cleaned is ``P1``: compared after cleaning, two patients become one. So nothing here
cleans, and ``bridge.mapping.dicomjson.text`` is never used for identity.

One PatientID assigned by two issuers (two hospitals) is two patients. A row that gives no issuer (PACSes leave
out what a file does not hold, or what they do not index at a level; files of one study differ, secondary
captures often lacking it) says nothing against one: within a study it belongs to its PatientID's one issuer,
and where two issuers assign that PatientID it cannot be attributed at all. A row without a PatientID value
names no patient.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bridge.mapping import tags
from bridge.mapping.dicomjson import DicomJson, first

# C0 controls other than tab, CR and LF: a FHIR string should not hold them (R5 2.1.28.0.1), so a PatientID
# with one cannot be written out as it is, and is written out as absent rather than as a different value.
_UNWRITABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def raw(ds: DicomJson, tag: str) -> str | None:
    """The first value of a string attribute with DICOM's padding alone removed; None if absent or blank."""
    value = first(ds, tag)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # an ID that a PACS sent as a number
    if not isinstance(value, str):
        return None
    return value.strip(" \x00") or None


@dataclass(frozen=True)
class Identity:
    """A patient as the PACS names it: the raw PatientID and IssuerOfPatientID (None where there is none)."""

    patient_id: str
    issuer: str | None


def identity_of(row: DicomJson) -> Identity | None:
    """The patient a row names, as it names it; None when it names none (no PatientID value)."""
    patient_id = raw(row, tags.PATIENT_ID)
    if patient_id is None:
        return None
    return Identity(patient_id, raw(row, tags.ISSUER_OF_PATIENT_ID))


def writable(value: str) -> bool:
    """Whether a raw value can be written into a FHIR string exactly as it is."""
    return _UNWRITABLE.search(value) is None


@dataclass(frozen=True)
class Owners:
    """The patients the rows of one study name: each PatientID with the issuers rows give it."""

    issuers: Mapping[str, frozenset[str]]

    @classmethod
    def of(cls, *row_lists: Iterable[DicomJson]) -> Owners:
        issuers: dict[str, set[str]] = {}
        for row in (row for rows in row_lists for row in rows):
            if (found := identity_of(row)) is not None:
                named = issuers.setdefault(found.patient_id, set())
                if found.issuer is not None:
                    named.add(found.issuer)
        return cls({patient_id: frozenset(named) for patient_id, named in issuers.items()})

    @property
    def identities(self) -> frozenset[Identity]:
        """Every patient the rows name."""
        return frozenset(
            Identity(patient_id, issuer)
            for patient_id, named in self.issuers.items()
            for issuer in (named or {None})
        )  # fmt: skip

    def attribute(self, row: DicomJson) -> Identity | None:
        """The patient a row belongs to; None when it names none, or gives no issuer for a PatientID that two
        issuers assign."""
        found = identity_of(row)
        return None if found is None else self.canonical(found)

    def canonical(self, identity: Identity) -> Identity | None:
        """The patient an identity stands for among these rows (an issuer-less one for its PatientID's one
        issuer); None when it cannot be told."""
        if identity.issuer is not None:
            return identity
        named = self.issuers.get(identity.patient_id, frozenset())
        if len(named) > 1:
            return None
        return Identity(identity.patient_id, next(iter(named), None))


def merged_issuers(study_rows: Iterable[DicomJson], series_rows: Iterable[DicomJson]) -> list[str]:
    """The PatientIDs of a study whose series give issuers its study rows do not, two at least in all: the PACS
    keeps two issuers' patients as one study (Orthanc keys patients by PatientID alone)."""
    study_rows = list(study_rows)
    in_study = Owners.of(study_rows).issuers
    in_all = Owners.of(study_rows, series_rows).issuers
    return sorted(
        patient_id for patient_id, named in in_all.items()
        if patient_id in in_study and len(named) > 1 and named != in_study[patient_id]
    )  # fmt: skip
