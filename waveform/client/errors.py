"""Failed calls become the project's typed exceptions, in one table.

The service maps each `WaveformError` class to one status code
(`waveform.service.status.CODES`); this is the way back. A status code with no
class of its own in `waveform.errors` gets one here, below `WaveformError` too,
so that a caller catches one tree whatever failed::

    WaveformError
    ├── (waveform.errors: InvalidArgument, Conflict, NotFound, Unauthenticated,
    │    AccessDenied, Overloaded, StorageError)
    ├── DeadlineExceeded (TimeoutError)   the call's deadline passed
    ├── Cancelled                         the call was cancelled
    ├── FailedPrecondition                the server's state does not allow it now
    └── ServerError                       INTERNAL, DATA_LOSS, UNIMPLEMENTED, UNKNOWN

Every exception raised from a failed call carries ``code``, the status code's
name (``"NOT_FOUND"``), so that a command line can print it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import grpc

from waveform.errors import (
    AccessDenied,
    Conflict,
    InvalidArgument,
    NotFound,
    Overloaded,
    StorageError,
    Unauthenticated,
    WaveformError,
)

__all__ = ["CLASSES", "Cancelled", "DeadlineExceeded", "FailedPrecondition", "ServerError",
           "code_name", "from_status", "map_rpc_errors"]


class DeadlineExceeded(WaveformError, TimeoutError):
    """The call's deadline passed before the server answered."""


class Cancelled(WaveformError):
    """The call was cancelled (by the caller, or the server stopped a job)."""


class FailedPrecondition(WaveformError):
    """The server's state does not allow the call now (a job is already running)."""


class ServerError(WaveformError):
    """The server failed (INTERNAL, DATA_LOSS, UNIMPLEMENTED, UNKNOWN)."""


#: Status code -> the exception a caller sees. Codes not listed are `ServerError`.
CLASSES: Mapping[grpc.StatusCode, type[WaveformError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.ALREADY_EXISTS: Conflict,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: AccessDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: StorageError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: FailedPrecondition,
}

_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def from_status(code: grpc.StatusCode | int, details: str) -> WaveformError:
    """The exception for a call (or an item of a stream) that failed with ``code``."""
    if isinstance(code, int):
        code = _BY_VALUE.get(code, grpc.StatusCode.UNKNOWN)
    exc = CLASSES.get(code, ServerError)(details)
    exc.code = code.name  # type: ignore[attr-defined]
    return exc


def code_name(exc: BaseException) -> str:
    """The status code name of ``exc``: the one it came with from the server, else the
    one the service would answer for it."""
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return code
    from waveform.service.status import code_of

    return code_of(exc).name


@contextmanager
def map_rpc_errors() -> Iterator[None]:
    """Turn a `grpc.RpcError` raised inside into the project's exception."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else str(exc)
        raise from_status(code or grpc.StatusCode.UNKNOWN, details or "") from None
