"""The folder source (``file:///folder`` and the embedded default): every instance in its files reaches its study's
ImagingStudy, or the file is named in a warning. pydicom, reading the files directly, is the reference."""

from __future__ import annotations

import io
import logging
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread, dcmwrite
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from bridge.mapping import tags
from bridge.mapping.dicomjson import text
from bridge.qido.factory import open_source
from bridge.qido.folder import FolderQidoSource, pydicom_samples
from bridge.settings import load_settings
from tests.conftest import start_client
from tests.support.dicomgen import InstanceSpec, SeriesSpec, StudySpec, encode, simple_study
from tests.support.fhircheck import validate

UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def read(path: Path) -> Dataset | None:
    """The file's header as pydicom reads it, or None where pydicom cannot (the samples include broken files)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return dcmread(path, stop_before_pixels=True, force=True)
        except Exception:
            return None


def rewritten(data: bytes, change: Callable[[Dataset], None]) -> bytes:
    """A Part 10 file changed by ``change``."""
    dataset = dcmread(io.BytesIO(data))
    change(dataset)
    out = io.BytesIO()
    dataset.save_as(out)
    return out.getvalue()


def without_file_meta(*, implicit_vr: bool, little_endian: bool) -> Callable[[bytes], bytes]:
    """The file's dataset alone, as old and hand-made files hold it: no preamble, no File Meta Information."""

    def rewrite(data: bytes) -> bytes:
        dataset = dcmread(io.BytesIO(data))
        dataset.file_meta = Dataset()
        out = io.BytesIO()
        dcmwrite(out, dataset, implicit_vr=implicit_vr, little_endian=little_endian, force_encoding=True)
        return out.getvalue()

    return rewrite


def set_raw(keyword: str, value: str) -> Callable[[bytes], bytes]:
    """The file with ``keyword`` holding ``value`` as written, valid or not (pydicom would refuse to set it)."""
    tag = Tag(tag_for_keyword(keyword))
    raw = value.encode() + b" " * (len(value) % 2)

    def change(dataset: Dataset) -> None:
        dataset[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, False, True)

    return lambda data: rewritten(data, change)


def write_study(folder: Path, study: StudySpec, second: Callable[[bytes], bytes]) -> None:
    """The study's files in ``folder``, the second passed through ``second``."""
    for number, data in enumerate(encode(study)):
        (folder / f"{number}.dcm").write_bytes(second(data) if number == 1 else data)


@pytest.mark.parametrize(
    "second",
    [
        pytest.param(without_file_meta(implicit_vr=True, little_endian=True), id="no-file-meta-implicit-little"),
        pytest.param(without_file_meta(implicit_vr=False, little_endian=True), id="no-file-meta-explicit-little"),
        pytest.param(without_file_meta(implicit_vr=False, little_endian=False), id="no-file-meta-explicit-big"),
        pytest.param(set_raw("PatientID", "P" * 65), id="patient-id-too-long"),
        pytest.param(set_raw("InstanceNumber", "1A"), id="instance-number-not-a-number"),
    ],
)
async def test_a_file_the_dicom_file_client_skips_is_listed_in_its_series(
    tmp_path: Path, second: Callable[[bytes], bytes]
) -> None:
    study = simple_study(instances=2)  # dicomweb-client indexes the series, and only the first file's instance
    write_study(tmp_path, study, second)
    client = await start_client(load_settings({"BRIDGE_QIDO_URL": f"file://{tmp_path}"}))
    try:
        response = await client.get(f"/fhir/ImagingStudy/{study.uid}")
        assert response.status == 200, await response.text()
        resource = await response.json()
    finally:
        await client.close()
    validate(resource)
    assert [i["uid"] for i in resource["series"][0]["instance"]] == [i.uid for i in study.series[0].instances]
    assert resource["numberOfInstances"] == 2


async def test_an_instance_without_study_and_series_uids_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    study = StudySpec(series=[SeriesSpec(instances=[InstanceSpec(), InstanceSpec()])])

    def without_uids(dataset: Dataset) -> None:
        del dataset.StudyInstanceUID, dataset.SeriesInstanceUID

    write_study(tmp_path, study, lambda data: rewritten(data, without_uids))
    caplog.set_level(logging.WARNING, logger="bridge.qido.folder")
    source = FolderQidoSource(tmp_path)
    await source.open()
    await source.close()
    reported = [r.getMessage() for r in caplog.records if r.name == "bridge.qido.folder"]
    lost = study.series[0].instances[1].uid
    assert reported == [
        f"{tmp_path / '1.dcm'}: instance {lost} is not served: it has no StudyInstanceUID or SeriesInstanceUID"
    ]


async def test_every_instance_in_the_sample_files_is_listed_in_its_study_or_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The reference: pydicom reading every file the embedded default indexes (it skips files named DICOMDIR).
    expected: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    unplaceable: list[Path] = []
    for path in sorted(pydicom_samples().glob("**/*")):
        dataset = read(path) if path.is_file() and path.name != "DICOMDIR" else None
        if dataset is None or not dataset.get("SOPInstanceUID"):
            continue  # not an instance
        study_uid, series_uid, sop_uid, sop_class = (str(dataset.get(keyword) or "") for keyword in UIDS)
        if study_uid and series_uid and sop_class:
            expected[study_uid][series_uid].add(sop_uid)
        else:
            unplaceable.append(path)
    assert len(expected) > 30  # the sample files are really there

    caplog.set_level(logging.WARNING, logger="bridge.qido.folder")
    settings = load_settings({})
    source = await open_source(settings)
    client = await start_client(settings, source)
    try:
        served = {text(row, tags.STUDY_INSTANCE_UID) for row in await source.search_studies({}, ())}
        assert served == set(expected)
        problems: dict[str, Any] = {}
        for study_uid, series in sorted(expected.items()):
            response = await client.get(f"/fhir/ImagingStudy/{study_uid}")
            assert response.status == 200, (study_uid, await response.text())
            resource = await response.json()
            validate(resource)
            listed = {s["uid"]: {i["uid"] for i in s.get("instance", [])} for s in resource.get("series", [])}
            if listed != series:
                problems[study_uid] = {"listed": listed, "in the files": dict(series)}
        assert not problems, problems
    finally:
        await client.close()
        await source.close()
    reported = "\n".join(r.getMessage() for r in caplog.records if r.name == "bridge.qido.folder")
    assert [path for path in unplaceable if f"{path}: instance " not in reported] == []
