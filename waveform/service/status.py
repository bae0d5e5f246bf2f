"""The one place where errors become gRPC status codes.

Every `WaveformError` class maps to exactly one code; anything else is a bug or a
library failure and answers ``INTERNAL`` with a reference to the log line (never
``UNKNOWN``, never the library's text).
"""

from __future__ import annotations

import grpc

from waveform.errors import (
    AccessDenied,
    Conflict,
    InvalidArgument,
    InvalidDicom,
    NotFound,
    Overloaded,
    StorageError,
    Unauthenticated,
    UnsupportedObject,
    WaveformError,
)

__all__ = ["CODES", "code_of"]

#: Most specific class first: the first match wins.
CODES: tuple[tuple[type[WaveformError], grpc.StatusCode], ...] = (
    (InvalidDicom, grpc.StatusCode.INVALID_ARGUMENT),
    (UnsupportedObject, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (Conflict, grpc.StatusCode.ALREADY_EXISTS),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (AccessDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StorageError, grpc.StatusCode.UNAVAILABLE),
)


def code_of(exc: BaseException) -> grpc.StatusCode:
    for cls, code in CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def message_of(exc: BaseException) -> str:
    if isinstance(exc, StorageError):
        return f"not stored, safe to retry: {exc}"
    return str(exc)
