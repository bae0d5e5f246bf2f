"""What every RPC of the service shares: admission, authentication, the purpose,
error translation (one status code per error class, `status.code_of`), and one
JSON log line and metric per call (never samples or names).

`Servicer` is the base of each gRPC service class; a method decorated with
`rpc` (unary answer), `stream` (streamed answer) or `job` (a long-running job's
streamed progress) receives a `Call` holding the authenticated identity and the
stated purpose. `Abort` ends a call with a status code that is not one error
class's (a deadline the service noticed, a job already running).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import grpc

from waveform.archive import CARE, Purpose, parse_purpose
from waveform.errors import InvalidArgument, Overloaded, WaveformError
from waveform.model import Identity
from waveform.service.identity import IdentityProvider
from waveform.service.metrics import Metrics
from waveform.service.status import code_of, message_of

if TYPE_CHECKING:
    from waveform.archive import Archive
    from waveform.service.intake import Intake
    from waveform.store import Store

__all__ = ["INGEST_CALLS", "STREAM_CALLS", "Abort", "Admission", "Call", "Limits", "Servicer",
           "job", "remaining", "rpc", "stream"]

log = logging.getLogger("waveform.service")

T = TypeVar("T")


def _certificate_organisation(context: grpc.ServicerContext) -> str | None:
    """The organisation (O) of a verified client certificate, if the connection has one."""
    auth = context.auth_context()
    pem = auth.get("x509_pem_cert")
    if not pem:
        return None
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(pem[0])
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if orgs:
        return str(orgs[0].value)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


class Abort(Exception):
    """End the call with ``code`` and ``message``: for answers that belong to the
    call's situation rather than to an error class of `waveform.errors` (whose
    codes `status.code_of` decides). Raised inside a handler, it is logged and
    counted once, with its code (``context.abort`` inside a handler would be taken
    for an unexpected exception)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def remaining(context: grpc.ServicerContext) -> float | None:
    """Seconds left before the call's deadline (None: no deadline)."""
    left = context.time_remaining()
    return None if left is None or left > 1e7 else max(0.0, left)


class Call:
    """What one call did, for the log line and the metrics."""

    __slots__ = ("_identity", "admitted", "bound", "method", "purpose", "start", "uid")

    def __init__(self, method: str) -> None:
        self.method = method
        #: Holds a call slot (`Admission.enter`), and counted against ``bound``.
        self.admitted = False
        self.bound: Identity | None = None
        self.start = time.perf_counter()
        self._identity: Identity | None = None
        self.purpose: Purpose = CARE
        self.uid = ""

    @property
    def identity(self) -> Identity:
        assert self._identity is not None, "the call is not authenticated yet"
        return self._identity

    @property
    def who(self) -> Identity | None:
        return self._identity

    def authenticated(self, identity: Identity) -> Identity:
        """Record who is calling (once authenticated); returns ``identity``."""
        self._identity = identity
        return identity


def _failed(service: Servicer, call: Call, context: grpc.ServicerContext,
            exc: Exception) -> NoReturn:
    """End a failed call: one status code per error class, INTERNAL (with a log
    reference, never the library's text) for anything unexpected."""
    if isinstance(exc, Abort):
        service.finish(call, exc.code)
        context.abort(exc.code, exc.message)
    if isinstance(exc, WaveformError):
        service.finish(call, code_of(exc))
        context.abort(code_of(exc), message_of(exc))
    if isinstance(exc, grpc.RpcError):
        service.finish(call, context.code() or grpc.StatusCode.CANCELLED)
        raise exc
    ref = uuid.uuid4().hex[:12]
    log.error("internal error", exc_info=exc, extra={"ref": ref, "method": call.method})
    service.finish(call, grpc.StatusCode.INTERNAL)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error (log reference {ref})")
    raise AssertionError("grpc's context.abort always raises")


@dataclass(frozen=True, slots=True)
class Limits:
    """How much of the server one call, one caller and one kind of call may hold.

    ``max_concurrent`` calls in all; ingest calls (`INGEST_CALLS`) may take all
    but ``read_reserve`` of them, so that clinicians' reads are served while
    devices send at full speed; one identity (organisation, user, role) holds at
    most ``per_identity`` calls, of which at most ``streams_per_identity`` are
    ingest streams; a stream that sends no request for ``stream_idle_s`` seconds
    is ended (DEADLINE_EXCEEDED), so that idle streams cannot hold slots forever.
    """

    max_concurrent: int = 256
    read_reserve: int = 64
    per_identity: int = 32
    streams_per_identity: int = 8
    stream_idle_s: float = 60.0

    def __post_init__(self) -> None:
        checks = (
            (self.max_concurrent >= 1, "max_concurrent must be at least 1"),
            (0 <= self.read_reserve < self.max_concurrent,
             "read_reserve must be at least 0 and below max_concurrent"),
            (self.per_identity >= 1, "per_identity must be at least 1"),
            (1 <= self.streams_per_identity <= self.per_identity,
             "streams_per_identity must be between 1 and per_identity"),
            (math.isfinite(self.stream_idle_s) and self.stream_idle_s > 0,
             "stream_idle_s must be a positive number of seconds"),
        )
        for ok, what in checks:
            if not ok:
                raise InvalidArgument(f"limits: {what} ({self})")

    @classmethod
    def scaled(cls, max_concurrent: int, **overrides: Any) -> Limits:
        """Limits for ``max_concurrent`` slots: a quarter kept for reads, an eighth
        (at least one) a caller, a quarter of that in streams."""
        per = max(1, max_concurrent // 8)
        base: dict[str, Any] = dict(max_concurrent=max_concurrent,
                                    read_reserve=max_concurrent // 4, per_identity=per,
                                    streams_per_identity=max(1, per // 4))
        return cls(**{**base, **overrides})


#: The calls that write objects: they may not take the slots kept for reads.
INGEST_CALLS = frozenset({"Ingest", "IngestStream"})
#: Ingest calls that stay open for many objects: counted per identity separately.
STREAM_CALLS = frozenset({"IngestStream"})


class Admission:
    """The call slots of one server (shared by its services), per kind and identity."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._total = 0
        self._ingest = 0
        self._by_identity: dict[Identity, int] = {}
        self._streams: dict[Identity, int] = {}

    def enter(self, name: str) -> Overloaded | None:
        """Take a slot for a call of ``name``, or the refusal."""
        lim = self.limits
        with self._lock:
            if self._total >= lim.max_concurrent:
                return Overloaded(
                    f"the server is at capacity ({lim.max_concurrent} calls in progress); "
                    "nothing was done, retry later")
            if name in INGEST_CALLS and self._ingest >= lim.max_concurrent - lim.read_reserve:
                return Overloaded(
                    f"the server is at its ingest capacity ({self._ingest} ingest calls in "
                    f"progress; {lim.read_reserve} slots are kept for reads); nothing was "
                    "done, retry later")
            self._total += 1
            if name in INGEST_CALLS:
                self._ingest += 1
        return None

    def bind(self, name: str, identity: Identity) -> Overloaded | None:
        """Count an entered call against its caller, or the refusal (the slot stays
        taken until `leave`)."""
        lim = self.limits
        with self._lock:
            held = self._by_identity.get(identity, 0)
            if held >= lim.per_identity:
                return Overloaded(
                    f"{identity.describe()} has {held} calls in progress (limit "
                    f"{lim.per_identity} a caller); nothing was done, retry when one ends")
            streams = self._streams.get(identity, 0)
            if name in STREAM_CALLS and streams >= lim.streams_per_identity:
                return Overloaded(
                    f"{identity.describe()} has {streams} ingest streams open (limit "
                    f"{lim.streams_per_identity} a caller); send more objects on an open "
                    "stream, or retry when one ends")
            self._by_identity[identity] = held + 1
            if name in STREAM_CALLS:
                self._streams[identity] = streams + 1
        return None

    def leave(self, name: str, identity: Identity | None) -> None:
        with self._lock:
            self._total -= 1
            if name in INGEST_CALLS:
                self._ingest -= 1
            if identity is None:
                return
            _decrement(self._by_identity, identity)
            if name in STREAM_CALLS:
                _decrement(self._streams, identity)

    @property
    def in_progress(self) -> int:
        return self._total


def _decrement(counts: dict[Identity, int], key: Identity) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


def _begin(service: Servicer, name: str, context: grpc.ServicerContext) -> Call:
    """A new call holding a slot, or RESOURCE_EXHAUSTED at once: the limit is ours,
    not grpc's, so that health checks and reflection (served by the reserve
    threads) still answer. The caller gives the slot back (`_end`)."""
    call = Call(name)
    refusal = service.admission.enter(name)
    if refusal is not None:
        _failed(service, call, context, refusal)
    call.admitted = True
    return call


def _end(service: Servicer, call: Call) -> None:
    if call.admitted:
        service.admission.leave(call.method, call.bound)


def _identify(service: Servicer, call: Call, context: grpc.ServicerContext) -> None:
    identity = call.authenticated(service.authenticate(context))
    call.purpose = parse_purpose(context.invocation_metadata())
    if call.admitted:
        refusal = service.admission.bind(call.method, identity)
        if refusal is not None:
            raise refusal
        call.bound = identity


def rpc(method: Callable[..., T]) -> Callable[..., T]:
    """Admit, authenticate, run, translate errors, log and count one unary call."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: Servicer, request: Any, context: grpc.ServicerContext) -> T:
        call = _begin(self, name, context)
        try:
            _identify(self, call, context)
            result = method(self, request, context, call)
        except Exception as exc:
            _failed(self, call, context, exc)
        finally:
            _end(self, call)
        self.finish(call, grpc.StatusCode.OK)
        return result

    return wrapper


def _streamed(method: Callable[..., Iterator[T]], *, holds_slot: bool
              ) -> Callable[..., Iterator[T]]:
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: Servicer, request: Any, context: grpc.ServicerContext) -> Iterator[T]:
        call = _begin(self, name, context) if holds_slot else Call(name)
        try:
            _identify(self, call, context)
            yield from method(self, request, context, call)
        except GeneratorExit:  # grpc stopped asking: the client cancelled or went away
            self.finish(call, grpc.StatusCode.CANCELLED)
            raise
        except Exception as exc:
            _failed(self, call, context, exc)
        finally:
            _end(self, call)
        self.finish(call, grpc.StatusCode.OK)

    return wrapper


def stream(method: Callable[..., Iterator[T]]) -> Callable[..., Iterator[T]]:
    """As `rpc`, for calls whose responses are streamed."""
    return _streamed(method, holds_slot=True)


def job(method: Callable[..., Iterator[T]]) -> Callable[..., Iterator[T]]:
    """As `stream`, for the progress of a long-running job (hours), of which the
    service runs one at a time: it holds none of the call slots, so that ingest
    and reads keep all ``max_concurrent`` of them while it runs (its own thread is
    the server's `JOB_THREADS`); the method refuses a second job itself."""
    return _streamed(method, holds_slot=False)


class Servicer:
    """State every service class shares: store, archive, identities, metrics, limit."""

    def __init__(self, store: Store, archive: Archive, identities: IdentityProvider,
                 metrics: Metrics | None = None, *, summary_timeout_s: float = 30.0,
                 admission: Admission | None = None, intake: Intake | None = None,
                 max_message_bytes: int = 64 << 20) -> None:
        from waveform.service.intake import InflightBudget, Intake

        self.store = store
        self.archive = archive
        self.identities = identities
        self.metrics = metrics or Metrics()
        self.summary_timeout_s = summary_timeout_s
        self.admission = admission or Admission(Limits())
        self.intake = intake or Intake(store, archive, InflightBudget(1 << 30))
        #: The largest object one request may carry (gRPC itself admits up to twice
        #: that, so that a larger one is answered as one request, not a dead stream).
        self.max_message_bytes = max_message_bytes

    @property
    def limits(self) -> Limits:
        return self.admission.limits

    # ----------------------------------------------------------- plumbing
    def authenticate(self, context: grpc.ServicerContext) -> Identity:
        token = None
        for key, value in context.invocation_metadata():
            if key == "authorization":
                text = value if isinstance(value, str) else value.decode("latin-1")
                scheme, _, rest = text.partition(" ")
                if scheme.lower() == "bearer":
                    token = rest.strip()
        return self.identities.authenticate(token, _certificate_organisation(context))

    def finish(self, call: Call, code: grpc.StatusCode) -> None:
        """A call ended with ``code``: its metrics and its log line."""
        elapsed = time.perf_counter() - call.start
        self.metrics.call(call.method, code.name, elapsed)
        ident = call.who
        log.info("call", extra={
            "method": call.method, "code": code.name, "ms": round(elapsed * 1000, 3),
            "role": ident.role if ident else "", "org": ident.organisation if ident else "",
            "user": ident.user if ident else "", "uid": call.uid,
        })

