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
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import grpc

from waveform.archive import CARE, Purpose, parse_purpose
from waveform.errors import Overloaded, WaveformError
from waveform.model import Identity
from waveform.service.identity import IdentityProvider
from waveform.service.metrics import Metrics
from waveform.service.status import code_of, message_of

if TYPE_CHECKING:
    from waveform.archive import Archive
    from waveform.store import Store

__all__ = ["Abort", "Call", "Servicer", "job", "remaining", "rpc", "stream"]

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

    __slots__ = ("_identity", "method", "purpose", "start", "uid")

    def __init__(self, method: str) -> None:
        self.method = method
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


def _failed(service: Servicer, call: Call, context: grpc.ServicerContext,
            exc: Exception) -> NoReturn:
    """End a failed call: one status code per error class, INTERNAL (with a log
    reference, never the library's text) for anything unexpected."""
    if isinstance(exc, Abort):
        service._finish(call, exc.code)
        context.abort(exc.code, exc.message)
    if isinstance(exc, WaveformError):
        service._finish(call, code_of(exc))
        context.abort(code_of(exc), message_of(exc))
    if isinstance(exc, grpc.RpcError):
        service._finish(call, context.code() or grpc.StatusCode.CANCELLED)
        raise exc
    ref = uuid.uuid4().hex[:12]
    log.error("internal error", exc_info=exc, extra={"ref": ref, "method": call.method})
    service._finish(call, grpc.StatusCode.INTERNAL)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error (log reference {ref})")
    raise AssertionError("grpc's context.abort always raises")


def _begin(service: Servicer, name: str, context: grpc.ServicerContext) -> Call:
    """A new call holding a slot, or RESOURCE_EXHAUSTED at once: the limit is ours,
    not grpc's, so that health checks and reflection (served by the reserve
    threads) still answer. The caller releases the slot."""
    call = Call(name)
    if not service._slots.acquire(blocking=False):
        _failed(service, call, context, Overloaded(
            f"the server is at capacity ({service.max_concurrent} calls in progress); "
            "nothing was done, retry later"))
    return call


def _identify(service: Servicer, call: Call, context: grpc.ServicerContext) -> None:
    call._identity = service.authenticate(context)
    call.purpose = parse_purpose(context.invocation_metadata())


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
            self._slots.release()
        self._finish(call, grpc.StatusCode.OK)
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
            self._finish(call, grpc.StatusCode.CANCELLED)
            raise
        except Exception as exc:
            _failed(self, call, context, exc)
        finally:
            if holds_slot:
                self._slots.release()
        self._finish(call, grpc.StatusCode.OK)

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
                 max_concurrent: int = 256, slots: threading.BoundedSemaphore | None = None
                 ) -> None:
        self.store = store
        self.archive = archive
        self.identities = identities
        self.metrics = metrics or Metrics()
        self.summary_timeout_s = summary_timeout_s
        self.max_concurrent = max_concurrent
        self._slots = slots or threading.BoundedSemaphore(max_concurrent)

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

    def _finish(self, call: Call, code: grpc.StatusCode) -> None:
        elapsed = time.perf_counter() - call.start
        self.metrics.call(call.method, code.name, elapsed)
        ident = call.who
        log.info("call", extra={
            "method": call.method, "code": code.name, "ms": round(elapsed * 1000, 3),
            "role": ident.role if ident else "", "org": ident.organisation if ident else "",
            "user": ident.user if ident else "", "uid": call.uid,
        })

