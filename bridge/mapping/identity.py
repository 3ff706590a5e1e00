"""Whose a row is: the PACS's PatientID and IssuerOfPatientID, compared exactly.

Identity is decided on raw values, with only DICOM's own padding removed (trailing and leading spaces, a NUL
pad). The bridge cleans values for display (a no-break space becomes a space, control characters go), and
``P1\\u00a0`` or ``\\tP1`` cleaned is ``P1``: compared after cleaning, two patients become one. So nothing here
cleans, and ``bridge.mapping.dicomjson.text`` is never used for identity.

One PatientID assigned by two issuers (two hospitals) is two patients. Some PACSes leave IssuerOfPatientID out
of series and instance rows; a row without it is attributed by PatientID alone, unless its PatientID is known
under more than one issuer, when it cannot be attributed at all.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
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

    patient_id: str | None
    issuer: str | None

    def __str__(self) -> str:
        shown = repr(self.patient_id) if self.patient_id is not None else "no PatientID"
        return f"{shown} (issuer {self.issuer!r})" if self.issuer is not None else shown


def identity_of(row: DicomJson) -> Identity | None:
    """The row's patient; None when the row does not name one (no PatientID attribute at all)."""
    if tags.PATIENT_ID not in row:
        return None
    return Identity(raw(row, tags.PATIENT_ID), raw(row, tags.ISSUER_OF_PATIENT_ID))


def writable(value: str) -> bool:
    """Whether a raw value can be written into a FHIR string exactly as it is."""
    return _UNWRITABLE.search(value) is None


@dataclass(frozen=True)
class Owners:
    """The patients a study's rows name, and how to attribute a row that leaves its issuer out.

    A study row without IssuerOfPatientID has none (PACSes leave out what the files do not hold); a series or
    instance row without it says nothing about it (some PACSes return it at the study level only).
    """

    identities: frozenset[Identity]

    @classmethod
    def of(cls, study_rows: Iterable[DicomJson], lower_rows: Iterable[DicomJson] = ()) -> Owners:
        found = {identity for row in study_rows if (identity := identity_of(row)) is not None}
        unnamed: set[str | None] = set()
        for row in lower_rows:
            identity = identity_of(row)
            if identity is None:
                continue
            if tags.ISSUER_OF_PATIENT_ID in row:
                found.add(identity)
            else:
                unnamed.add(identity.patient_id)
        known = {identity.patient_id for identity in found}
        found |= {Identity(patient_id, None) for patient_id in unnamed - known}
        return cls(frozenset(found))

    def attribute(self, row: DicomJson) -> Identity | None:
        """The patient a row belongs to; None when it cannot be told (no PatientID, or no issuer for a
        PatientID that more than one issuer assigned)."""
        found = identity_of(row)
        if found is None or tags.ISSUER_OF_PATIENT_ID in row:
            return found
        issuers = self._issuers.get(found.patient_id, ())
        if len(issuers) > 1:
            return None
        return Identity(found.patient_id, next(iter(issuers), None))

    @functools.cached_property
    def _issuers(self) -> dict[str | None, set[str | None]]:
        """PatientID -> its issuers: asked once per instance row of a read."""
        issuers: dict[str | None, set[str | None]] = {}
        for identity in self.identities:
            issuers.setdefault(identity.patient_id, set()).add(identity.issuer)
        return issuers
