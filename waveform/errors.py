"""The one exception tree of `waveform`.

Every error the package raises on purpose is a `WaveformError`; the service maps
each class to exactly one gRPC status code (``waveform.service``), so no library
exception ever reaches a client as ``UNKNOWN``::

    WaveformError
    ├── InvalidDicom (ValueError)          the object cannot be decoded safely
    │   └── LimitExceeded                  a size or nesting limit was passed
    ├── UnsupportedObject (ValueError)     a well-formed object we do not archive
    ├── InvalidArgument (ValueError)       a bad request parameter
    │   ├── InvalidFile                    a cart's own file (MUSE, Sierra, aECG, SCP-ECG)
    │   │                                  is malformed: names the format and the field
    │   └── UnknownFormat                  content that is no ECG format we read
    ├── Conflict                           same SOP Instance UID, other content
    ├── NotFound (LookupError)             no such object (or not visible)
    ├── Unauthenticated                    no or bad credentials
    ├── AccessDenied (PermissionError)     the caller may not do this
    ├── Overloaded                         too much work queued; retry later
    └── StorageError (OSError)             not stored; safe to retry
        └── DurabilityError                fsync or commit failed; writer stopped

Messages name the element or parameter, the offending value and what was
expected, so that a person can act on them.
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "Conflict",
    "DurabilityError",
    "InvalidArgument",
    "InvalidDicom",
    "InvalidFile",
    "LimitExceeded",
    "NotFound",
    "Overloaded",
    "StorageError",
    "Unauthenticated",
    "UnknownFormat",
    "UnsupportedObject",
    "WaveformError",
    "without_traceback",
]


class WaveformError(Exception):
    """Base of every error raised on purpose by `waveform`."""


class InvalidDicom(WaveformError, ValueError):
    """The object is not DICOM we can decode without guessing."""


class LimitExceeded(InvalidDicom):
    """A length, count or nesting depth exceeds what we accept."""


class UnsupportedObject(WaveformError, ValueError):
    """A decodable object that is not a waveform the archive keeps."""


class InvalidArgument(WaveformError, ValueError):
    """A request parameter is out of range or malformed."""


class InvalidFile(InvalidArgument):
    """A cart's own file is malformed; ``format`` and ``field`` say where."""

    def __init__(self, format: str, field: str, problem: str) -> None:
        super().__init__(f"{format}: {field}: {problem}")
        self.format = format
        self.field = field
        self.problem = problem

    def __reduce__(self) -> tuple[type[InvalidFile], tuple[str, str, str]]:
        # copy.copy and pickle rebuild an exception from its args (the message alone).
        return type(self), (self.format, self.field, self.problem)


class UnknownFormat(InvalidArgument):
    """The content is none of the ECG formats we read; the message says what it looks like."""


class Conflict(WaveformError):
    """An object with this SOP Instance UID is stored with other content."""

    def __init__(self, message: str, uid: str = "") -> None:
        super().__init__(message)
        self.uid = uid


class NotFound(WaveformError, LookupError):
    """No such object, or none the caller may know of."""


class Unauthenticated(WaveformError):
    """Missing, unknown or malformed credentials."""


class AccessDenied(WaveformError, PermissionError):
    """The caller is known but may not do this."""


class Overloaded(WaveformError):
    """The service is at capacity; the request was not queued."""


class StorageError(WaveformError, OSError):
    """Nothing was stored; the request is safe to retry."""


class DurabilityError(StorageError):
    """An fsync or catalog commit failed; the writer refuses further work."""


def without_traceback(exc: BaseException) -> BaseException:
    """``exc`` and the exceptions it was raised from, their tracebacks dropped.

    For an error kept beyond the call that raised it (in a future, a queue): its
    traceback holds the frames, the frames their locals (a request's bytes), and a
    frame that also holds the future makes a cycle that only the collector frees."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__traceback__ = None
        e = e.__cause__ or e.__context__
    return exc
