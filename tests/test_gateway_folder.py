"""The DICOMweb gateway serving a folder (the embedded default, ``file://``): what comes through is what the
files hold, read by pydicom here as the reference; a token reaches only its patient's studies; the Endpoint
names the gateway at the address the client used."""

from __future__ import annotations

import io
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pydicom
import pytest
from aiohttp.test_utils import TestClient
from pydicom.data import get_testdata_file
from pydicom.encaps import get_frame
from yarl import URL

from bridge.errors import NotAcceptable
from bridge.mapping.endpoint import REQUIRES_ACCESS_TOKEN
from bridge.qido.folder_wado import choose_frame_type, choose_instance_syntax
from bridge.settings import load_settings
from tests.conftest import start_client
from tests.support.dicomgen import encode, simple_study
from tests.support.fhircheck import validate
from tests.support.pixel_studies import pixel_study
from tests.support.standin_tokens import Verifier

FRAME = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
SMART = {"BRIDGE_AUTH": "smart", "BRIDGE_AUTH_JWKS_URL": "https://auth.example.org/jwks"}


def sample(name: str) -> pydicom.Dataset:
    path = get_testdata_file(name)
    assert path is not None, name
    return pydicom.dcmread(path)


def sample_bytes(name: str) -> bytes:
    return Path(str(get_testdata_file(name))).read_bytes()


def instance_path(ds: pydicom.Dataset) -> str:
    return f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def parts(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related answer."""
    assert content_type.startswith("multipart/related"), content_type
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    assert body.endswith(b"--" + boundary + b"--\r\n"), body[-100:]
    found = []
    for chunk in body.split(b"--" + boundary)[1:-1]:
        head, _, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        found.append((headers["Content-Type"], content.removesuffix(b"\r\n")))
    return found


async def get_parts(client: TestClient, path: str, accept: str = FRAME, **headers: str) -> list[tuple[str, bytes]]:
    got = await client.get(path, headers={"Accept": accept, **headers})
    assert got.status == 200, await got.text()
    return parts(got.headers["Content-Type"], await got.read())


@pytest.fixture
async def embedded() -> AsyncIterator[TestClient]:
    """The bridge with no configuration: pydicom's samples."""
    client = await start_client(load_settings({}))
    yield client
    await client.close()


async def folder_client(folder: Path, **environ: str) -> TestClient:
    return await start_client(load_settings({"BRIDGE_QIDO_URL": f"file://{folder}", **environ}), verifier=Verifier())


def generated(folder: Path, name: str, *, frames: int, patient_id: str = "GF-1") -> pydicom.Dataset:
    """A CT instance with ``frames`` 4x4 16-bit frames, each a different ramp, written to ``folder/name``."""
    ds = pydicom.dcmread(io.BytesIO(next(encode(simple_study(patient_id=patient_id)))))
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 4, 4, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = b"".join(bytes((f * 32 + i) % 256 for i in range(32)) for f in range(frames))
    ds["PixelData"].VR = "OW"
    ds.save_as(folder / name, enforce_file_format=True)
    return ds


# The embedded default: pydicom's CT and MR samples and compressed ones, through /dicom-web.


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
async def test_an_uncompressed_sample_frame_is_its_pixel_data(embedded: TestClient, name: str) -> None:
    ds = sample(name)
    [(media, frame)] = await get_parts(embedded, instance_path(ds) + "/frames/1")
    assert media == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert frame == ds.PixelData


@pytest.mark.parametrize(
    ("name", "numbers", "media"),
    [
        ("examples_ybr_color.dcm", [3, 30], "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"),
        ("SC_rgb_gdcm_KY.dcm", [1], "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.91"),
    ],
)
async def test_a_compressed_sample_frame_is_its_encapsulated_frame(
    embedded: TestClient, name: str, numbers: list[int], media: str
) -> None:
    ds = sample(name)
    count = int(ds.get("NumberOfFrames") or 1)
    path = instance_path(ds) + "/frames/" + ",".join(map(str, numbers))
    got = await get_parts(embedded, path)
    assert got == [(media, get_frame(ds.PixelData, n - 1, number_of_frames=count)) for n in numbers]
    # Asked for by its own media type too.
    assert await get_parts(embedded, path, f'multipart/related; type="{media.split(";")[0]}"') == got


@pytest.mark.parametrize("suffix", ["/metadata", ""])
async def test_a_streamed_answer_carries_the_request_id(embedded: TestClient, suffix: str) -> None:
    got = await embedded.get(
        instance_path(sample("CT_small.dcm")) + suffix, headers={"Accept": "*/*", "X-Request-ID": "viewer-8"}
    )
    await got.read()
    assert got.status == 200
    assert got.headers["X-Request-ID"] == "viewer-8"


async def test_sample_metadata_is_the_header_without_pixel_data(embedded: TestClient) -> None:
    ds = sample("CT_small.dcm")
    got = await embedded.get(instance_path(ds) + "/metadata", headers={"Accept": "application/dicom+json"})
    assert got.status == 200
    assert got.headers["Content-Type"] == "application/dicom+json"
    [dataset] = await got.json()
    assert "7FE00010" not in dataset
    header = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True).to_json_dict()
    assert dataset == {**header, "00083002": {"vr": "UI", "Value": ["1.2.840.10008.1.2.1"]}}
    series = await embedded.get(f"/dicom-web/studies/{ds.StudyInstanceUID}/metadata")
    assert ds.SOPInstanceUID in [d["00080018"]["Value"][0] for d in await series.json()]


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        ("application/json", 200),
        ("text/html, application/*;q=0.5", 200),
        ('multipart/related; type="application/dicom+xml"', 406),
        ("application/dicom+json;q=0", 406),
        ("application/dicom+json; q=0.000", 406),
        ("application/dicom+json;q=0.0000", 406),  # any spelling of zero refuses
    ],
)
async def test_metadata_and_qido_answer_dicom_json_to_an_accept_that_admits_it(
    embedded: TestClient, accept: str, status: int
) -> None:
    ds = sample("CT_small.dcm")
    for path in (instance_path(ds) + "/metadata", f"/dicom-web/studies?StudyInstanceUID={ds.StudyInstanceUID}"):
        got = await embedded.get(path, headers={"Accept": accept})
        assert got.status == status, path


@pytest.mark.parametrize(
    ("query", "status", "count"),
    [
        ("StudyDate=20040119", 200, 1),
        ("StudyDate=20990101", 200, 0),
        ("PatientName=Nobody", 200, 0),
        # What the folder's index would skip, answering every study: refused rather than widened.
        ("ModalitiesInStudy=XX", 400, None),  # an attribute it does not hold at the study level
        ("AccessionNumber=nope", 400, None),
        ("StudyDate=20990101-", 400, None),  # a range: no date it can read
        ("StudyTime=xx", 400, None),
        ("StudyInstanceUID=1.2%5C1.3", 400, None),  # a list of values, compared as one string
        ("PatientName=A_*", 400, None),  # _ and % would be its SQL wildcards
    ],
)
async def test_a_folder_qido_search_matches_what_it_was_asked_or_says_it_cannot(
    embedded: TestClient, query: str, status: int, count: int | None
) -> None:
    got = await embedded.get(f"/dicom-web/studies?{query}", headers={"Accept": "application/dicom+json"})
    assert got.status == status, await got.text()
    if count is not None:
        assert len(await got.json()) == count


async def test_sample_instance_is_the_file_as_stored(embedded: TestClient) -> None:
    ds = sample("MR_small.dcm")
    [(media, part10)] = await get_parts(embedded, instance_path(ds), 'multipart/related; type="application/dicom"')
    assert media == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    back = pydicom.dcmread(io.BytesIO(part10))
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    assert part10 == sample_bytes("MR_small.dcm")


async def test_a_file_without_file_meta_comes_as_part10(tmp_path: Path) -> None:
    ds = generated(tmp_path, "meta.dcm", frames=1)
    bare = pydicom.dcmread(tmp_path / "meta.dcm")
    bare.file_meta = pydicom.Dataset()
    (tmp_path / "meta.dcm").unlink()
    pydicom.dcmwrite(tmp_path / "bare.dcm", bare, implicit_vr=True, little_endian=True, force_encoding=True)
    client = await folder_client(tmp_path)
    try:
        [(media, part10)] = await get_parts(client, instance_path(ds), "*/*")
        assert media == "application/dicom; transfer-syntax=1.2.840.10008.1.2"
        back = pydicom.dcmread(io.BytesIO(part10))  # no force: a preamble and File Meta Information
        assert back.SOPInstanceUID == ds.SOPInstanceUID
        assert back.PixelData == ds.PixelData
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("suffix", "says"),
    [
        ("/frames/2", "has 1 frame(s); there is no frame 2"),
        ("/frames/1,9", "there is no frame 9"),
    ],
)
async def test_a_frame_past_the_last_is_404(embedded: TestClient, suffix: str, says: str) -> None:
    got = await embedded.get(instance_path(sample("CT_small.dcm")) + suffix, headers={"Accept": FRAME})
    assert got.status == 404
    assert says in await got.text()


async def test_a_frame_list_naming_a_frame_twice_is_400(embedded: TestClient) -> None:
    """Each repeat would be read and held again: ten thousand ``1,`` made a 300 MB answer of a 32 KB frame."""
    got = await embedded.get(instance_path(sample("CT_small.dcm")) + "/frames/1,1", headers={"Accept": FRAME})
    assert got.status == 400
    assert "more than once" in await got.text()


@pytest.mark.parametrize("suffix", ["/rendered", "/thumbnail", "/frames/1/rendered"])
async def test_rendered_and_thumbnails_are_not_served_from_a_folder(embedded: TestClient, suffix: str) -> None:
    got = await embedded.get(instance_path(sample("CT_small.dcm")) + suffix)
    assert got.status == 404
    assert "no rendered images or thumbnails" in await got.text()


@pytest.mark.parametrize(
    "path",
    [
        "/dicom-web/studies/2.25.1/metadata",
        "/dicom-web/studies/1.3.6.1.4.1.5962.1.2.1.20040119072730.12322/series/2.25.2",
        "/dicom-web/studies/1.3.6.1.4.1.5962.1.2.1.20040119072730.12322/series/"
        "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322/instances/2.25.3/frames/1",
    ],
)
async def test_unknown_study_series_or_instance_is_404(embedded: TestClient, path: str) -> None:
    got = await embedded.get(path)
    assert got.status == 404
    assert "has no" in await got.text()


@pytest.mark.parametrize(
    ("suffix", "accept", "says"),
    [
        ("/frames/1", 'multipart/related; type="image/jpeg"', 'type="application/octet-stream"'),
        (
            "/frames/1",
            'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.50',
            "transfer syntax 1.2.840.10008.1.2.1",
        ),
        ("/metadata", "application/dicom", "application/dicom+json"),
        (
            "",
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',
            "transfer syntax 1.2.840.10008.1.2.1",
        ),
    ],
)
async def test_an_accept_the_stored_encoding_cannot_meet_is_406_saying_what_can(
    embedded: TestClient, suffix: str, accept: str, says: str
) -> None:
    got = await embedded.get(instance_path(sample("CT_small.dcm")) + suffix, headers={"Accept": accept})
    assert got.status == 406
    assert says in (await got.json())["issue"][0]["diagnostics"]


async def test_head_answers_the_type_without_a_body(embedded: TestClient) -> None:
    ds = sample("CT_small.dcm")
    for suffix, media in [
        ("/frames/1", "multipart/related"),
        ("/metadata", "application/dicom+json"),
        ("", "multipart"),
    ]:
        got = await embedded.head(instance_path(ds) + suffix, headers={"Accept": "*/*"})
        assert got.status == 200, suffix
        assert got.headers["Content-Type"].startswith(media)
        assert await got.read() == b""


async def test_the_samples_endpoint_is_the_gateway_at_the_requests_origin(embedded: TestClient) -> None:
    ds = sample("CT_small.dcm")
    host = {"Host": "localhost:8123"}
    study = await (await embedded.get(f"/fhir/ImagingStudy/{ds.StudyInstanceUID}", headers=host)).json()
    [reference] = study["endpoint"]
    endpoint = await (await embedded.get(f"/fhir/{reference['reference']}", headers=host)).json()
    validate(endpoint)
    assert endpoint["address"] == "http://localhost:8123/dicom-web"
    search = f"/fhir/ImagingStudy?_id={ds.StudyInstanceUID}&_include=ImagingStudy:endpoint"
    bundle = await (await embedded.get(search, headers={"Host": "127.0.0.1:9000"})).json()
    validate(bundle)
    [included] = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Endpoint"]
    assert included == {**endpoint, "address": "http://127.0.0.1:9000/dicom-web"}
    # And the address serves the study's pixels.
    frame = URL(endpoint["address"]).path + instance_path(ds).removeprefix("/dicom-web") + "/frames/1"
    assert await get_parts(embedded, frame, **host)


# A folder of generated files, where the test needs control.


async def test_frame_n_of_a_multiframe_file_is_its_nth_slice(tmp_path: Path) -> None:
    ds = generated(tmp_path, "multi.dcm", frames=3)
    client = await folder_client(tmp_path)
    try:
        got = await get_parts(client, instance_path(ds) + "/frames/2,3")
        assert [frame for _, frame in got] == [ds.PixelData[32:64], ds.PixelData[64:96]]
        missing = await client.get(instance_path(ds) + "/frames/4")
        assert missing.status == 404
        assert "has 3 frame(s)" in await missing.text()
    finally:
        await client.close()


async def test_frames_of_an_instance_without_pixel_data_are_404(tmp_path: Path) -> None:
    ds = pydicom.dcmread(io.BytesIO(next(encode(simple_study(patient_id="GF-2")))))
    ds.save_as(tmp_path / "header.dcm", enforce_file_format=True)
    client = await folder_client(tmp_path)
    try:
        got = await client.get(instance_path(ds) + "/frames/1")
        assert got.status == 404
        assert "no pixel data" in await got.text()
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("name", "media"),
    [
        ("MR_small_jpeg_ls_lossless.dcm", "image/jls; transfer-syntax=1.2.840.10008.1.2.4.80"),
        ("MR_small_RLE.dcm", "image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5"),
        ("JPGExtended.dcm", "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.51"),
    ],
)
async def test_a_compressed_frame_is_the_encapsulated_frame(tmp_path: Path, name: str, media: str) -> None:
    shutil.copy(get_testdata_file(name), tmp_path / name)  # alone: in the samples another file holds it
    ds = sample(name)
    client = await folder_client(tmp_path)
    try:
        got = await get_parts(client, instance_path(ds) + "/frames/1")
        assert got == [(media, get_frame(ds.PixelData, 0, number_of_frames=1))]
    finally:
        await client.close()


async def test_frames_of_a_file_pydicom_cannot_make_sense_of_are_a_502(tmp_path: Path) -> None:
    """A file with pixel data but no Rows: the folder's fault (502, as a PACS's bad answer), not a 500."""
    ds = generated(tmp_path, "norows.dcm", frames=1)
    del ds.Rows
    ds.save_as(tmp_path / "norows.dcm")
    client = await folder_client(tmp_path)
    try:
        got = await client.get(instance_path(ds) + "/frames/1", headers={"Accept": FRAME})
        assert got.status == 502, await got.text()
    finally:
        await client.close()


async def test_big_endian_frames_come_little_endian(tmp_path: Path) -> None:
    shutil.copy(get_testdata_file("MR_small_bigendian.dcm"), tmp_path / "big.dcm")
    client = await folder_client(tmp_path)
    try:
        [(media, frame)] = await get_parts(client, instance_path(sample("MR_small_bigendian.dcm")) + "/frames/1")
        assert media == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
        assert frame == sample("MR_small.dcm").PixelData
    finally:
        await client.close()


async def test_a_series_comes_one_part_per_instance(tmp_path: Path) -> None:
    spec = simple_study(instances=3, patient_id="GF-3")
    for number, data in enumerate(encode(spec)):
        (tmp_path / f"{number}.dcm").write_bytes(data)
    series = spec.series[0]
    client = await folder_client(tmp_path)
    try:
        got = await get_parts(client, f"/dicom-web/studies/{spec.uid}/series/{series.uid}", "*/*")
        uids = sorted(pydicom.dcmread(io.BytesIO(part)).SOPInstanceUID for _, part in got)
        assert uids == sorted(instance.uid for instance in series.instances)
    finally:
        await client.close()


async def test_a_patient_token_reaches_only_its_patients_pixels(tmp_path: Path) -> None:
    mine = generated(tmp_path, "mine.dcm", frames=1, patient_id="GF-A")
    theirs = generated(tmp_path, "theirs.dcm", frames=1, patient_id="GF-B")
    client = await folder_client(tmp_path, **SMART, BRIDGE_PUBLIC_URL="https://fhir.test/fhir")
    try:
        token = {"Authorization": "Bearer patient:GF-A"}
        assert await get_parts(client, instance_path(mine) + "/frames/1", **token)
        for suffix in ("/frames/1", "/metadata", ""):
            refused = await client.get(instance_path(theirs) + suffix, headers={"Accept": "*/*", **token})
            assert refused.status == 404, suffix
            assert theirs.PixelData not in await refused.read()
        assert (await client.get(instance_path(mine) + "/frames/1")).status == 401  # no token
        # The Endpoint names the public gateway, and asks for the token.
        study = await (await client.get(f"/fhir/ImagingStudy/{mine.StudyInstanceUID}", headers=token)).json()
        endpoint = await (await client.get(f"/fhir/{study['endpoint'][0]['reference']}", headers=token)).json()
        validate(endpoint)
        assert endpoint["address"] == "https://fhir.test/dicom-web"
        assert endpoint["extension"] == [{"url": REQUIRES_ACCESS_TOKEN, "valueBoolean": True}]
    finally:
        await client.close()


async def test_a_patient_token_lists_the_series_and_instances_of_its_study(tmp_path: Path) -> None:
    """The folder's series and instance rows carry their study's patient, so the gateway's check of every row's
    owner keeps them (it dropped them all: the file client's series and instance tables name no patient)."""
    mine = generated(tmp_path, "mine.dcm", frames=1, patient_id="GF-A")
    client = await folder_client(tmp_path, **SMART, BRIDGE_PUBLIC_URL="https://fhir.test/fhir")
    try:
        token = {"Authorization": "Bearer patient:GF-A", "Accept": "application/dicom+json"}
        study = f"/dicom-web/studies/{mine.StudyInstanceUID}"
        series = await (await client.get(f"{study}/series", headers=token)).json()
        assert [row["0020000E"]["Value"] for row in series] == [[mine.SeriesInstanceUID]]
        for path in (f"{study}/instances", f"{study}/series/{mine.SeriesInstanceUID}/instances"):
            instances = await (await client.get(path, headers=token)).json()
            assert [row["00080018"]["Value"] for row in instances] == [[mine.SOPInstanceUID]], path
    finally:
        await client.close()


# Content negotiation, as a table: (Accept, stored transfer syntax) -> (part media type, transfer syntax) or 406.

CT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
JLS = "1.2.840.10008.1.2.4.80"
RLE = "1.2.840.10008.1.2.5"


@pytest.mark.parametrize(
    ("accept", "stored", "served"),
    [
        (None, CT, ("application/octet-stream", CT)),
        ("*/*", IMPLICIT, ("application/octet-stream", CT)),
        ("multipart/related; type=application/octet-stream; transfer-syntax=*", JLS, ("image/jls", JLS)),
        ('multipart/related; type="application/octet-stream"', CT, ("application/octet-stream", CT)),
        ('multipart/related; type="application/octet-stream"', JLS, None),
        (f'multipart/related; type="application/octet-stream"; transfer-syntax={CT}', IMPLICIT,
         ("application/octet-stream", CT)),
        ('multipart/related; type="image/jls"', JLS, ("image/jls", JLS)),
        (f'multipart/related; type="image/jls"; transfer-syntax={JLS}', JLS, ("image/jls", JLS)),
        ('multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.81', JLS, None),
        ('multipart/related; type="image/*"', JLS, ("image/jls", JLS)),
        ('multipart/related; type="image/*"', CT, None),
        ('multipart/related; type="image/x-dicom-rle"', RLE, ("image/dicom-rle", RLE)),
        ('multipart/related; type="image/jpeg", multipart/related; type="image/jls"', JLS, ("image/jls", JLS)),
        ('multipart/related; type="image/jls"; q=0, */*', CT, ("application/octet-stream", CT)),
        ('multipart/related; type="image/jls"; q=0', JLS, None),
        ("image/jls", JLS, ("image/jls", JLS)),
        ("text/html", CT, None),
    ],
)  # fmt: skip
def test_frame_negotiation(accept: str | None, stored: str, served: tuple[str, str] | None) -> None:
    if served is None:
        with pytest.raises(NotAcceptable):
            choose_frame_type(accept, stored)
    else:
        assert choose_frame_type(accept, stored) == served


@pytest.mark.parametrize(
    ("accept", "stored", "served"),
    [
        (None, JLS, JLS),
        ('multipart/related; type="application/dicom"', JLS, JLS),
        ('multipart/related; type="application/dicom"; transfer-syntax=*', IMPLICIT, IMPLICIT),
        (f'multipart/related; type="application/dicom"; transfer-syntax={JLS}', JLS, JLS),
        (f'multipart/related; type="application/dicom"; transfer-syntax={CT}', JLS, None),
        ('multipart/related; type="application/octet-stream"', CT, None),
    ],
)
def test_instance_negotiation(accept: str | None, stored: str, served: str | None) -> None:
    if served is None:
        with pytest.raises(NotAcceptable):
            choose_instance_syntax(accept, stored)
    else:
        assert choose_instance_syntax(accept, stored) == served


async def test_a_patient_token_lists_its_own_series_and_instances_in_a_folder(tmp_path: Path) -> None:
    # The folder's index keeps PatientID at the study level only; a confined search checks every row's patient.
    mine = pixel_study("GF-MINE", [[1, 3]])
    for number, data in enumerate([*mine.files, *pixel_study("GF-OTHER", [[1]]).files]):
        (tmp_path / f"{number}.dcm").write_bytes(data)
    client = await folder_client(tmp_path, **SMART, BRIDGE_PUBLIC_URL="https://bridge.test/fhir")
    try:
        token = {"Authorization": "Bearer patient:GF-MINE", "Accept": "application/dicom+json"}
        series = mine.series[0]
        got = await client.get(f"/dicom-web/studies/{mine.uid}/series", headers=token)
        assert got.status == 200
        assert [row["0020000E"]["Value"] for row in await got.json()] == [[series.uid]]
        got = await client.get(f"/dicom-web/studies/{mine.uid}/series/{series.uid}/instances", headers=token)
        assert got.status == 200
        assert {row["00080018"]["Value"][0] for row in await got.json()} == {i.uid for i in series.instances}
        got = await client.get(f"/dicom-web/studies/{mine.uid}/instances", headers=token)
        assert got.status == 200
        assert {row["00080018"]["Value"][0] for row in await got.json()} == {i.uid for i in series.instances}
    finally:
        await client.close()


@pytest.mark.parametrize("path", ["/dicom-web/studies/", "/wado?requestType=WADO"])
async def test_a_path_nothing_serves_is_a_404_saying_so(embedded: TestClient, path: str) -> None:
    # A trailing slash, or a WADO-URI viewer's /wado: a new user's first tries, told what is wrong.
    got = await embedded.get(path)
    assert got.status == 404
    outcome = await got.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert path.split("?")[0] in outcome["issue"][0]["diagnostics"]
