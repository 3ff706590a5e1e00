"""WADO-RS from a folder of DICOM files: what the gateway serves when the PACS is a folder (the embedded default).

Pure functions over one file at a time, called on the folder source's worker thread (they read files): an
instance's metadata as DICOM JSON, its frames as stored (native pixel data in Explicit VR Little Endian byte
order, encapsulated frames as their compressed bytes), and its Part 10 bytes. Nothing is transcoded: a client
whose ``Accept`` does not admit the stored encoding is answered 406 (``choose_frame_type``).

The frame media types are PS3.18 Table 8.7.3-2's (image/jpeg, image/jls, image/jp2, image/jpx, image/jphc,
image/dicom-rle; application/octet-stream for native pixel data).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.errors import NotAcceptable, NotFound, UpstreamBadResponse

if TYPE_CHECKING:
    from pydicom import Dataset

EXPLICIT_LE = "1.2.840.10008.1.2.1"
#: Native (uncompressed) transfer syntaxes: their frames are served as Explicit VR Little Endian bytes.
NATIVE = {"1.2.840.10008.1.2", EXPLICIT_LE, "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"}
BIG_ENDIAN = "1.2.840.10008.1.2.2"
OCTET_STREAM = "application/octet-stream"
#: PS3.18 Table 8.7.3-2: the media type of a frame in each encapsulated transfer syntax.
FRAME_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
#: Older names clients still send for the same media type.
_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}
PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = (PIXEL_DATA, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float and Double Float Pixel Data


@dataclass(frozen=True)
class MediaRange:
    """One entry of an ``Accept`` header: ``multipart/related; type=…; transfer-syntax=…`` or a bare type."""

    media_type: str
    #: The ``type`` parameter of ``multipart/related`` (None: not given, or not multipart).
    part_type: str | None = None
    transfer_syntax: str | None = None


def parse_accept(accept: str | None) -> list[MediaRange]:
    """The media ranges of an ``Accept`` header, in the client's order (q values other than 0 are not ranked:
    the first range that can be met is)."""
    if not accept or not accept.strip():
        return [MediaRange("*/*")]
    ranges = []
    for entry in _split(accept, ","):
        pieces = _split(entry, ";")
        if not pieces or not pieces[0]:
            continue
        params: dict[str, str] = {}
        for piece in pieces[1:]:
            name, _, value = piece.partition("=")
            params[name.strip().lower()] = value.strip().strip('"').strip()
        if _refused(params.get("q", "1")):
            continue
        part = params.get("type")
        ranges.append(
            MediaRange(
                pieces[0].lower(),
                _ALIASES.get(part.lower(), part.lower()) if part else None,
                params.get("transfer-syntax"),
            )
        )
    return ranges


def _refused(q: str) -> bool:
    """Whether a q value is zero (``0``, ``0.000``: the range is refused), however it is written."""
    try:
        return float(q) == 0
    except ValueError:
        return False  # a malformed q is read as the default, 1


#: The media ranges an answer in DICOM JSON (metadata, a QIDO-RS search) satisfies.
JSON_RANGES = frozenset({"application/dicom+json", "application/json", "application/*", "*/*"})


def accepts_json(accept: str | None) -> bool:
    """Whether ``accept`` admits an answer in DICOM JSON."""
    return any(wanted.media_type in JSON_RANGES for wanted in parse_accept(accept))


def _split(value: str, separator: str) -> list[str]:
    """``value`` split on ``separator`` outside double quotes, each piece stripped."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            pieces.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    pieces.append("".join(current).strip())
    return pieces


def frame_type(transfer_syntax: str) -> tuple[str, str]:
    """The media type and transfer syntax frames stored in ``transfer_syntax`` are served with."""
    if transfer_syntax in NATIVE:
        return OCTET_STREAM, EXPLICIT_LE
    media = FRAME_TYPES.get(transfer_syntax)
    if media is None:
        raise NotAcceptable(
            f"frames stored in transfer syntax {transfer_syntax} (video or unknown) cannot be served one by one; "
            "retrieve the instance instead"
        )
    return media, transfer_syntax


def choose_frame_type(accept: str | None, transfer_syntax: str) -> tuple[str, str]:
    """The part media type and transfer syntax to serve stored frames with, if ``accept`` admits them; else
    NotAcceptable saying what can be served (the folder transcodes nothing)."""
    media, syntax = frame_type(transfer_syntax)
    for wanted in parse_accept(accept):
        if wanted.media_type in ("*/*", "multipart/*", "multipart/related"):
            part = wanted.part_type or (None if wanted.media_type != "multipart/related" else media)
        else:
            part = _ALIASES.get(wanted.media_type, wanted.media_type)  # a bare type: the client takes it in a part
        other_type = part is not None and part not in ("*/*", media, media.split("/")[0] + "/*")
        # ``transfer-syntax=*`` with another type still admits the stored encoding, named truly in the part.
        if other_type and wanted.transfer_syntax != "*":
            continue
        if wanted.transfer_syntax in (None, "*", syntax):
            return media, syntax
    raise NotAcceptable(
        f"these frames are stored as {media} (transfer syntax {syntax}) and the gateway does not transcode a "
        f'folder\'s files: ask for multipart/related; type="{media}" (or transfer-syntax=*)'
    )


def choose_instance_syntax(accept: str | None, transfer_syntax: str) -> str:
    """The transfer syntax to serve an instance in: the stored one, if ``accept`` admits it (no transcoding)."""
    for wanted in parse_accept(accept):
        multipart = wanted.media_type in ("*/*", "multipart/*", "multipart/related")
        part = wanted.part_type if multipart else wanted.media_type
        if part not in (None, "*/*", "application/*", "application/dicom"):
            continue
        # No transfer-syntax named: the stored one (the folder has no other to give).
        if wanted.transfer_syntax in (None, "*", transfer_syntax):
            return transfer_syntax
    raise NotAcceptable(
        f"this instance is stored in transfer syntax {transfer_syntax} and the gateway does not transcode a "
        f'folder\'s files: ask for multipart/related; type="application/dicom"; transfer-syntax=*'
    )


def read_dataset(path: Path, *, pixels: bool) -> Dataset:
    """The file's dataset (without its pixel data unless ``pixels``), with a transfer syntax in its file meta."""
    from pydicom import dcmread
    from pydicom.uid import UID

    dataset = dcmread(path, force=True, stop_before_pixels=not pixels)
    if "TransferSyntaxUID" not in dataset.file_meta:
        encoding = (dataset.original_encoding[0], dataset.original_encoding[1])
        syntax: dict[tuple[bool | None, bool | None], str] = {
            (True, True): "1.2.840.10008.1.2",
            (False, True): EXPLICIT_LE,
            (False, False): BIG_ENDIAN,
        }
        dataset.file_meta.TransferSyntaxUID = UID(syntax.get(encoding, EXPLICIT_LE))
    return dataset


def metadata(path: Path) -> dict[str, Any]:
    """The instance's DICOM JSON, its pixel data left out (viewers fetch ``frames``); small binary values
    inline, as the DICOM file client gives them. Available Transfer Syntax UID says how its frames come."""
    dataset = read_dataset(path, pixels=False)
    document = dataset.to_json_dict()
    document["00083002"] = {"vr": "UI", "Value": [str(dataset.file_meta.TransferSyntaxUID)]}
    return dict(sorted(document.items()))  # in tag order, as DICOM JSON is written


def frames(path: Path, numbers: list[int]) -> Iterator[bytes]:
    """Frames ``numbers`` (1-based) of the file as stored: native frames in little endian byte order,
    encapsulated frames as their compressed bytes. NotFound when the file has no pixel data or fewer frames."""
    dataset = read_dataset(path, pixels=True)
    element = next((dataset[tag] for tag in _PIXEL_TAGS if tag in dataset), None)
    if element is None or element.value is None:
        raise NotFound("this instance has no pixel data: it has no frames")
    count = int(dataset.get("NumberOfFrames") or 1)
    if past := [n for n in numbers if n > count]:
        raise NotFound(f"this instance has {count} frame(s); there is no frame {past[0]}")
    syntax = str(dataset.file_meta.TransferSyntaxUID)
    value: bytes = element.value
    if syntax in NATIVE:
        size = _frame_size(dataset, element.tag)
        if size == 0:
            raise NotAcceptable("frames of 1-bit pixel data that do not start on a byte boundary are not served")
        if size * count > len(value):
            raise UpstreamBadResponse(f"this instance's pixel data is shorter than its {count} frame(s)")
        for number in numbers:
            frame = value[(number - 1) * size : number * size]
            yield _little_endian(frame, dataset, element.VR) if syntax == BIG_ENDIAN else frame
        return
    from pydicom.encaps import get_frame

    for number in numbers:
        yield get_frame(value, number - 1, number_of_frames=count)


def pixel_rank(path: Path) -> int:
    """How well a viewer can show the file's pixels: 0 whole and uncompressed, 1 whole and compressed (or
    none at all), 2 broken or truncated. Used to choose among files holding one instance."""
    try:
        dataset = read_dataset(path, pixels=True)
        syntax = str(dataset.file_meta.TransferSyntaxUID)
        element = next((dataset[tag] for tag in _PIXEL_TAGS if tag in dataset), None)
        if element is None or element.value is None:
            return 1
        if syntax not in NATIVE:
            from pydicom.encaps import get_frame

            get_frame(element.value, 0, number_of_frames=int(dataset.get("NumberOfFrames") or 1))
            return 1
        size = _frame_size(dataset, element.tag)
        return 0 if len(element.value) >= size * int(dataset.get("NumberOfFrames") or 1) else 2
    except Exception:  # whatever pydicom makes of a broken file, it is the last choice
        return 2


def _frame_size(dataset: Dataset, tag: int) -> int:
    """Bytes per native frame (0 when 1-bit frames do not fill whole bytes)."""
    bits = {PIXEL_DATA: int(dataset.get("BitsAllocated") or 8), 0x7FE00008: 32, 0x7FE00009: 64}[tag]
    pixels = int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel") or 1)
    if (pixels * bits) % 8:
        return 0
    return pixels * bits // 8


def _little_endian(frame: bytes, dataset: Dataset, vr: str) -> bytes:
    """A big endian frame's words in little endian order (what octet-stream frames are)."""
    width = {"OW": 2, "OL": 4, "OF": 4, "OD": 8}.get(vr, 1)
    if vr == "OW" and int(dataset.get("BitsAllocated") or 16) == 32:
        width = 4
    if width == 1:
        return frame
    import numpy as np

    return np.frombuffer(frame, dtype=f">u{width}").astype(f"<u{width}").tobytes()


def part10(path: Path) -> tuple[bytes, str]:
    """The file's bytes as a Part 10 stream (as stored, when it is one), and its transfer syntax."""
    with path.open("rb") as file:
        head = file.read(132)
        if len(head) == 132 and head[128:] == b"DICM":
            from pydicom import dcmread

            file.seek(0)
            data = file.read()
            meta = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["TransferSyntaxUID"])
            syntax = meta.file_meta.get("TransferSyntaxUID")
            if syntax:
                return data, str(syntax)
    # No preamble or File Meta Information (old and hand-made files): written out with both.
    from pydicom import dcmwrite

    dataset = read_dataset(path, pixels=True)
    out = io.BytesIO()
    dcmwrite(out, dataset, enforce_file_format=True)
    return out.getvalue(), str(dataset.file_meta.TransferSyntaxUID)
