"""Studies with pixel data, for the viewer flows: every frame's bytes are known, so a test can check that what a
viewer received is exactly the file's pixel data (and whose it is).

Frames are 16-bit unsigned, Explicit VR Little Endian, uncompressed (32x32 unless asked larger), each filled from a
seed unique to its patient, instance and frame, so no two frames in a run are alike."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from tests.support.dicomgen import CT_IMAGE, new_uid

SIZE = 32


@dataclass
class PixelInstance:
    uid: str
    frames: list[bytes]


@dataclass
class PixelSeries:
    uid: str
    instances: list[PixelInstance] = field(default_factory=list)


@dataclass
class PixelStudy:
    patient_id: str
    uid: str
    series: list[PixelSeries] = field(default_factory=list)
    files: list[bytes] = field(default_factory=list)


def frame(seed: str, size: int = SIZE) -> bytes:
    """A size x size frame of 16-bit pixels, different for every seed."""
    return random.Random(seed).randbytes(size * size * 2)


def pixel_study(
    patient_id: str, series_frames: list[list[int]], uid: str | None = None, size: int = SIZE
) -> PixelStudy:
    """A study of ``patient_id`` whose series hold instances of the given frame counts (``[[1, 1, 3]]``: one series
    of three instances, the last multi-frame), each frame ``size`` pixels square."""
    study = PixelStudy(patient_id, uid or new_uid())
    for series_number, counts in enumerate(series_frames, start=1):
        series = PixelSeries(new_uid())
        study.series.append(series)
        for number, count in enumerate(counts, start=1):
            instance = PixelInstance(new_uid(), [])
            instance.frames = [frame(f"{patient_id}/{instance.uid}/{n}", size) for n in range(1, count + 1)]
            series.instances.append(instance)
            study.files.append(_file(study, series_number, series, number, instance, size))
    return study


def _file(
    study: PixelStudy, series_number: int, series: PixelSeries, number: int, instance: PixelInstance, size: int
) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = instance.uid
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = series.uid
    ds.PatientID = study.patient_id
    ds.PatientName = "Viewer^Test"
    ds.StudyDate = "20240305"
    ds.Modality = "CT"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = number
    ds.Rows, ds.Columns = size, size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if len(instance.frames) > 1:
        ds.NumberOfFrames = len(instance.frames)
    ds.PixelData = b"".join(instance.frames)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE
    meta.MediaStorageSOPInstanceUID = instance.uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
