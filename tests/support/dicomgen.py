"""Synthetic DICOM studies for the tests, written with pydicom.

A ``StudySpec`` describes a study the way the tests expect to read it back; ``encode`` turns it into Part 10
files. Values are written as given, malformed ones included (``1997.04.24``), because real PACSes hold them.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import pydicom.config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
DIGITAL_MAMMOGRAPHY = "1.2.840.10008.5.1.4.1.1.1.2"

_counter = itertools.count(1)
# A UID root under pydicom's test root, unique per run so studies never collide with earlier uploads.
_ROOT = "1.2.826.0.1.3680043.8.498.7"


def new_uid() -> str:
    return f"{_ROOT}.{next(_counter)}"


@dataclass
class InstanceSpec:
    sop_class: str = CT_IMAGE
    number: int | None = None
    uid: str = field(default_factory=new_uid)
    document_title: str | None = None
    concept_name: str | None = None
    image_laterality: str | None = None


@dataclass
class SeriesSpec:
    modality: str | None = "CT"
    number: int | None = 1
    uid: str = field(default_factory=new_uid)
    description: str | None = None
    body_part: str | None = None
    laterality: str | None = None
    date: str | None = None
    time: str | None = None
    performing: str | None = None
    operators: str | None = None
    institution: str | None = None
    manufacturer: str | None = None
    instances: list[InstanceSpec] = field(default_factory=list)


@dataclass
class StudySpec:
    patient_id: str | None = "PAT-1"
    patient_name: str | None = "Doe^Jane"
    issuer: str | None = None
    uid: str = field(default_factory=new_uid)
    date: str | None = "20240305"
    time: str | None = "143000"
    tz_offset: str | None = None
    accession: str | None = None
    description: str | None = None
    referring: str | None = None
    #: Procedure Code Sequence items and Reason for Requested Procedure Code Sequence items: (code, scheme, meaning).
    procedures: list[tuple[str, str, str]] = field(default_factory=list)
    reasons: list[tuple[str, str, str]] = field(default_factory=list)
    reason_text: str | None = None
    #: Name of Physician(s) Reading Study, as one PN value (several names separated by a backslash).
    reading: str | None = None
    series: list[SeriesSpec] = field(default_factory=list)

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.series)


def simple_study(series: int = 1, instances: int = 1, modality: str = "CT", **study: object) -> StudySpec:
    """A study of ``series`` series of ``instances`` instances each."""
    spec = StudySpec(**study)  # type: ignore[arg-type]
    for s in range(series):
        spec.series.append(
            SeriesSpec(modality=modality, number=s + 1,
                       instances=[InstanceSpec(number=i + 1) for i in range(instances)])
        )  # fmt: skip
    return spec


def encode(study: StudySpec) -> Iterator[bytes]:
    """One Part 10 file per instance of the study."""
    for series in study.series:
        for instance in series.instances:
            yield _file(study, series, instance)


def _file(study: StudySpec, series: SeriesSpec, instance: InstanceSpec) -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8, for non-ASCII names
    ds.SOPClassUID = instance.sop_class
    ds.SOPInstanceUID = instance.uid
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = series.uid
    _put(ds, "PatientID", study.patient_id)
    _put(ds, "PatientName", study.patient_name)
    _put(ds, "IssuerOfPatientID", study.issuer)
    _put(ds, "StudyDate", study.date)
    _put(ds, "StudyTime", study.time)
    _put(ds, "TimezoneOffsetFromUTC", study.tz_offset)
    _put(ds, "AccessionNumber", study.accession)
    _put(ds, "StudyDescription", study.description)
    _put(ds, "ReferringPhysicianName", study.referring)
    _put(ds, "NameOfPhysiciansReadingStudy", study.reading)
    _put(ds, "ReasonForTheRequestedProcedure", study.reason_text)
    if study.procedures:
        ds.ProcedureCodeSequence = [_code(*item) for item in study.procedures]
    if study.reasons:
        ds.ReasonForRequestedProcedureCodeSequence = [_code(*item) for item in study.reasons]
    _put(ds, "Modality", series.modality)
    _put(ds, "SeriesNumber", series.number)
    _put(ds, "SeriesDescription", series.description)
    _put(ds, "BodyPartExamined", series.body_part)
    _put(ds, "Laterality", series.laterality)
    _put(ds, "SeriesDate", series.date)
    _put(ds, "SeriesTime", series.time)
    _put(ds, "PerformingPhysicianName", series.performing)
    _put(ds, "OperatorsName", series.operators)
    _put(ds, "InstitutionName", series.institution)
    _put(ds, "Manufacturer", series.manufacturer)
    _put(ds, "InstanceNumber", instance.number)
    _put(ds, "DocumentTitle", instance.document_title)
    _put(ds, "ImageLaterality", instance.image_laterality)
    if instance.concept_name:
        concept = Dataset()
        concept.CodeValue = "18748-4"
        concept.CodingSchemeDesignator = "LN"
        concept.CodeMeaning = instance.concept_name
        ds.ConceptNameCodeSequence = [concept]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = instance.sop_class
    meta.MediaStorageSOPInstanceUID = instance.uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    out = io.BytesIO()
    with _as_given():
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


@contextlib.contextmanager
def _as_given() -> Iterator[None]:
    """Malformed values are the point of some tests: write them as given, without pydicom's objections."""
    previous = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom.config.settings.writing_validation_mode = previous


def _put(ds: Dataset, keyword: str, value: object) -> None:
    if value is not None:
        with _as_given():
            setattr(ds, keyword, value)
