"""What a study's DICOM rows say, once, in no FHIR version's shape: pure value types.

``bridge.mapping.imagingstudy`` reads DICOM JSON rows into these (repairing or dropping malformed values, and
noting what disagreed); ``bridge.render`` writes them as an R4 or an R5 ImagingStudy. Every decision about what
a DICOM value means is taken in the reading, so both versions state the same facts and differ only in shape
(an R5 CodeableConcept is an R4 Coding, R5 ``procedure`` is R4 ``procedureCode``…).

Instances and codings are named tuples, the rest frozen dataclasses: a large study has tens of thousands of
instances, and a tuple is built several times faster than a frozen dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class Coding(NamedTuple):
    system: str
    code: str
    display: str | None = None


@dataclass(frozen=True, slots=True)
class Concept:
    """A coded (or only named) idea: codings, and the text DICOM gave, either of which may be absent (not both)."""

    codings: tuple[Coding, ...] = ()
    text: str | None = None


@dataclass(frozen=True, slots=True)
class Issued:
    """An identifier value and who issued it: a system URI, or else only the issuer's name (``assigner``)."""

    value: str
    system: str | None = None
    assigner: str | None = None


@dataclass(frozen=True, slots=True)
class Patient:
    """Whom a study is of. ``id`` is the PACS's raw PatientID (a cleaned one would name another patient);
    ``id_writable`` False when a FHIR string cannot hold it as it is (it is then written as absent)."""

    id: str | None = None
    id_writable: bool = True
    system: str | None = None
    assigner: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Performer:
    """Who or what performed a series: ``kind`` is the actor's resource type (Practitioner, Device,
    Organization); ``function`` a v3-ParticipationType coding, for people."""

    kind: str
    name: str
    function: Coding | None = None


class InstanceFacts(NamedTuple):
    uid: str
    sop_class: str
    sop_class_name: str | None
    number: int | None
    title: str | None


@dataclass(frozen=True, slots=True)
class SeriesFacts:
    uid: str
    modality: Concept
    instances: tuple[InstanceFacts, ...]
    number: int | None = None
    description: str | None = None
    body_site: Concept | None = None
    laterality: Concept | None = None
    started: str | None = None
    performers: tuple[Performer, ...] = ()


@dataclass(frozen=True, slots=True)
class StudyFacts:
    """One study (one patient's part of it). ``series`` None: the study level alone (a subset of the resource),
    whose counts are then the PACS's; with series, the counts are those of the listed rows."""

    uid: str
    patient: Patient
    modalities: tuple[Concept, ...] = ()
    series: tuple[SeriesFacts, ...] | None = None
    accession: Issued | None = None
    started: str | None = None
    referrer: str | None = None
    description: str | None = None
    number_of_series: int | None = None
    number_of_instances: int | None = None
    #: Procedure Code Sequence (0008,1032).
    procedures: tuple[Concept, ...] = ()
    #: Reason for Requested Procedure Code Sequence (0040,100A), or Reason for the Requested Procedure (0040,1002).
    reasons: tuple[Concept, ...] = ()
    #: Name of Physician(s) Reading Study (0008,1060). R5 has no element for them; R4 calls them interpreters.
    interpreters: tuple[str, ...] = ()
    #: The id of the WADO-RS Endpoint that serves the study's pixels, if one is configured.
    endpoint_id: str | None = None
    #: What was repaired or disagreed while reading the rows, for the caller to log.
    notes: tuple[str, ...] = ()

    @property
    def subsetted(self) -> bool:
        return self.series is None
