"""The DICOMweb gateway's WADO-RS when the PACS is a folder (the embedded default, ``file:///folder``).

``bridge.web.gateway.retrieve`` checks the path and authorizes the study as for a PACS over HTTP, then hands a
folder's requests here. Files are read on the folder source's worker thread, one instance at a time, and each
multipart part is written as soon as it is read: a series is never held whole. ``metadata`` leaves pixel data out
(viewers ask for ``frames``); frames and instances are served as stored, and an ``Accept`` that the stored
encoding cannot meet is answered 406 (nothing is transcoded).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import orjson
from aiohttp import hdrs, web

from bridge.errors import BridgeError, NotAcceptable, NotFound, UpstreamBadResponse
from bridge.qido import folder_wado
from bridge.qido.folder import FolderQidoSource
from bridge.web import observe

log = logging.getLogger(__name__)
T = TypeVar("T")


async def retrieve(request: web.Request, folder: FolderQidoSource) -> web.StreamResponse:
    """A WADO-RS retrieve from ``folder``; the study is already authorized."""
    info = request.match_info
    study, series, instance = info["study"], info.get("series"), info.get("instance")
    if "bulk" in info:
        raise NotFound("the folder's metadata names no bulkdata: pixel data is served as frames")
    if request.path.endswith(("/rendered", "/thumbnail")):
        raise NotFound("a folder has no rendered images or thumbnails: its pixel data is served as frames")
    files = await folder.instance_files(study, series, instance)
    if not files:
        what = f"instance {instance}" if instance else f"series {series}" if series else f"study {study}"
        raise NotFound(f"the folder {folder.description} has no {what} (in study {study})")
    if request.path.endswith("/metadata"):
        return await _metadata(request, folder, files)
    if "frames" in info:
        return await _frames(request, folder, files[0][2], [int(n) for n in info["frames"].split(",")])
    return await _instances(request, folder, files)


async def _metadata(
    request: web.Request, folder: FolderQidoSource, files: list[tuple[str, str, Path]]
) -> web.StreamResponse:
    if not folder_wado.accepts_json(request.headers.get(hdrs.ACCEPT)):
        raise NotAcceptable("metadata is served as application/dicom+json")
    response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: "application/dicom+json"})
    await observe.prepare(request, response)
    if request.method == hdrs.METH_HEAD:
        return response
    try:
        for number, (_, _, path) in enumerate(files):
            document = await folder.on_worker(partial(folder_wado.metadata, path))
            await response.write((b"[" if number == 0 else b",") + orjson.dumps(document))
        await response.write(b"]")
    except Exception as exc:  # headers are sent: only a cut connection can say the body is not whole
        return _cut(request, response, exc)
    await response.write_eof()
    return response


async def _frames(request: web.Request, folder: FolderQidoSource, path: Path, numbers: list[int]) -> web.Response:
    accept = request.headers.get(hdrs.ACCEPT)

    def read() -> tuple[str, str, list[bytes]]:
        syntax = str(folder_wado.read_dataset(path, pixels=False).file_meta.TransferSyntaxUID)
        media, served = folder_wado.choose_frame_type(accept, syntax)  # refused before the pixels are read
        return media, served, list(folder_wado.frames(path, numbers))

    media, syntax, frames = await _read(folder, read)
    boundary = uuid.uuid4().hex
    part_head = f"--{boundary}\r\nContent-Type: {media}; transfer-syntax={syntax}\r\n\r\n".encode()
    body = b"".join(part_head + frame + b"\r\n" for frame in frames) + f"--{boundary}--\r\n".encode()
    content_type = f'multipart/related; type="{media}"; boundary={boundary}'
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})


async def _instances(
    request: web.Request, folder: FolderQidoSource, files: list[tuple[str, str, Path]]
) -> web.StreamResponse:
    accept = request.headers.get(hdrs.ACCEPT)

    def syntaxes() -> list[str]:
        return [
            folder_wado.choose_instance_syntax(
                accept, str(folder_wado.read_dataset(path, pixels=False).file_meta.TransferSyntaxUID)
            )
            for _, _, path in files
        ]

    await _read(folder, syntaxes)  # every instance's encoding admitted before the first byte is sent
    boundary = uuid.uuid4().hex
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: content_type})
    await observe.prepare(request, response)
    if request.method == hdrs.METH_HEAD:
        return response
    try:
        for _, _, path in files:
            data, syntax = await folder.on_worker(partial(folder_wado.part10, path))
            head = f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={syntax}\r\n\r\n"
            await response.write(head.encode())
            await response.write(data)
            await response.write(b"\r\n")
        await response.write(f"--{boundary}--\r\n".encode())
    except Exception as exc:  # headers are sent: only a cut connection can say the body is not whole
        return _cut(request, response, exc)
    await response.write_eof()
    return response


async def _read(folder: FolderQidoSource, func: Callable[[], T]) -> T:
    """``func`` on the folder's worker, before any byte is sent: what pydicom raises on a broken file (no Rows, a
    NumberOfFrames that is no number) is the folder's bad answer, a 502 as a PACS's would be, never a 500."""
    try:
        return await folder.on_worker(func)
    except BridgeError:
        raise
    except Exception as exc:
        raise UpstreamBadResponse(f"a file of {folder.description} cannot be served: {type(exc).__name__}") from None


def _cut(request: web.Request, response: web.StreamResponse, exc: Exception) -> web.StreamResponse:
    log.warning(
        "WADO-RS %s from the folder failed while sending (%s); connection cut", request.path, type(exc).__name__
    )
    if request.transport is not None:
        request.transport.abort()
    return response
