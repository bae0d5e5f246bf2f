"""What the service adds for the carts' own files (`waveform.formats`): the format a
request states, carried with its bytes to the store, and `GetOriginal`'s chunks.

A request's ``format`` travels as a `StatedFormat` (bytes that say their format)
through the intake, which hands bytes on unchanged, to `Store.submit`, which reads
the file as that format; a request without one is recognised from its content.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from waveform.formats import StatedFormat
from waveform.service._proto.waveform.v1 import archive_pb2 as pb

__all__ = ["CHUNK_BYTES", "original_chunks", "payload", "stated"]

CHUNK_BYTES = 1 << 20


def payload(data: bytes, fmt: str) -> bytes:
    """A request's object for the intake: with its format when the request states one."""
    return StatedFormat(data, fmt) if fmt else data


class _Stated:
    """A stream's request that states a format, as the stream reader reads requests
    (``dicom``, ``wait_for_summary``): ``dicom`` is the `StatedFormat`."""

    __slots__ = ("dicom", "format", "wait_for_summary")

    def __init__(self, request: pb.IngestRequest) -> None:
        self.dicom = StatedFormat(request.dicom, request.format)
        self.format = request.format
        self.wait_for_summary = request.wait_for_summary


def stated(requests: Iterator[pb.IngestRequest]) -> Iterator[Any]:
    """An IngestStream's requests, each that states a format carrying it in its bytes."""
    for request in requests:
        yield _Stated(request) if request.format else request


def original_chunks(fmt: str, data: bytes) -> Iterator[pb.OriginalChunk]:
    """``data`` in chunks of `CHUNK_BYTES`; the first names the format, size and SHA-256."""
    view = memoryview(data)
    for i in range(0, max(len(data), 1), CHUNK_BYTES):
        chunk = pb.OriginalChunk(data=bytes(view[i:i + CHUNK_BYTES]))
        if i == 0:
            chunk.total_bytes = len(data)
            chunk.sha256 = hashlib.sha256(data).hexdigest()
            chunk.format = fmt
        yield chunk
