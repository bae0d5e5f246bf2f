"""The `EcgArchive` service: each RPC authenticates, asks the policy, calls the store.

Errors are translated in one place (`status.code_of`); every call is logged as
one JSON line (method, caller, code, duration; never samples or names) and
counted for the metrics.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, NoReturn, TypeVar

import grpc

from waveform.errors import NotFound, Overloaded, StorageError, WaveformError
from waveform.service import convert, policy
from waveform.service._proto.waveform.v1 import archive_pb2 as pb
from waveform.service._proto.waveform.v1 import archive_pb2_grpc as pb_grpc
from waveform.service.identity import Identity, IdentityProvider
from waveform.service.metrics import Metrics
from waveform.service.status import code_of, message_of
from waveform.store import IngestResult, Store

__all__ = ["DICOM_CHUNK_BYTES", "STREAM_WINDOW", "EcgArchive"]

log = logging.getLogger("waveform.service")

#: Requests of one IngestStream in flight at once (read ahead of the responses).
STREAM_WINDOW = 512
DICOM_CHUNK_BYTES = 1 << 20

T = TypeVar("T")
_RENDER_LOCK = threading.Lock()
_MEDIA_TYPES = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}


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


def _remaining(context: grpc.ServicerContext) -> float | None:
    """Seconds left before the call's deadline (None: no deadline)."""
    left = context.time_remaining()
    return None if left is None or left > 1e7 else max(0.0, left)


class _Call:
    """What one call did, for the log line and the metrics."""

    __slots__ = ("identity", "method", "start", "uid")

    def __init__(self, method: str) -> None:
        self.method = method
        self.start = time.perf_counter()
        self.identity: Identity | None = None
        self.uid = ""


def _failed(service: EcgArchive, call: _Call, context: grpc.ServicerContext,
            exc: Exception) -> NoReturn:
    """End a failed call: one status code per error class, INTERNAL (with a log
    reference, never the library's text) for anything unexpected."""
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


def _admit(service: EcgArchive) -> None:
    """Take a call slot or refuse at once: the limit is ours, not grpc's, so that
    health checks and reflection (served by the reserve threads) still answer."""
    if not service._slots.acquire(blocking=False):
        raise Overloaded(f"the server is at capacity ({service.max_concurrent} calls in "
                         "progress); nothing was done, retry later")


def _rpc(method: Callable[..., T]) -> Callable[..., T]:
    """Admit, authenticate, run, translate errors, log and count one unary call."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: EcgArchive, request: Any, context: grpc.ServicerContext) -> T:
        call = _Call(name)
        try:
            _admit(self)
        except Overloaded as exc:
            _failed(self, call, context, exc)
        try:
            call.identity = self.authenticate(context)
            result = method(self, request, context, call)
        except Exception as exc:
            _failed(self, call, context, exc)
        finally:
            self._slots.release()
        self._finish(call, grpc.StatusCode.OK)
        return result

    return wrapper


def _stream(method: Callable[..., Iterator[T]]) -> Callable[..., Iterator[T]]:
    """As `_rpc`, for calls whose responses are streamed."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: EcgArchive, request: Any, context: grpc.ServicerContext) -> Iterator[T]:
        call = _Call(name)
        try:
            _admit(self)
        except Overloaded as exc:
            _failed(self, call, context, exc)
        try:
            call.identity = self.authenticate(context)
            yield from method(self, request, context, call)
        except Exception as exc:
            _failed(self, call, context, exc)
        finally:
            self._slots.release()
        self._finish(call, grpc.StatusCode.OK)

    return wrapper


class EcgArchive(pb_grpc.EcgArchiveServicer):
    """The service, over an injected store, identity provider and metrics."""

    def __init__(self, store: Store, identities: IdentityProvider,
                 metrics: Metrics | None = None, *, summary_timeout_s: float = 30.0,
                 max_concurrent: int = 256) -> None:
        self.store = store
        self.identities = identities
        self.metrics = metrics or Metrics()
        self.summary_timeout_s = summary_timeout_s
        self.max_concurrent = max_concurrent
        self._slots = threading.BoundedSemaphore(max_concurrent)

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

    def _finish(self, call: _Call, code: grpc.StatusCode) -> None:
        elapsed = time.perf_counter() - call.start
        self.metrics.call(call.method, code.name, elapsed)
        ident = call.identity
        log.info("call", extra={
            "method": call.method, "code": code.name, "ms": round(elapsed * 1000, 3),
            "role": ident.role if ident else "", "org": ident.organisation if ident else "",
            "user": ident.user if ident else "", "uid": call.uid,
        })

    def _context(self, uid: str, identity: Identity) -> None:
        """Raise `NotFound` unless the ECG exists and ``identity`` may see it."""
        if not uid:
            from waveform.errors import InvalidArgument

            raise InvalidArgument("sop_instance_uid is empty")
        if not self.store.contains(uid):
            raise NotFound(f"no ECG {uid} is visible to {identity.describe()}")
        policy.visible(identity, self.store.ecg_context(uid), uid)

    # ------------------------------------------------------------- ingest
    def _submit(self, request: pb.IngestRequest, identity: Identity) -> Future[IngestResult]:
        try:
            return self.store.submit(request.dicom, identity.organisation)
        except WaveformError as exc:
            f: Future[IngestResult] = Future()
            f.set_exception(exc)
            return f

    def _response(self, request: pb.IngestRequest, result: IngestResult) -> pb.IngestResponse:
        out = pb.IngestResponse(sop_instance_uid=result.sop_instance_uid,
                                already_stored=result.already_stored, sha256=result.sha256)
        if request.wait_for_summary:
            doc = self._summary_after_commit(result.sop_instance_uid)
            if doc is not None:
                out.summary.CopyFrom(convert.summary(result.sop_instance_uid, doc))
        return out

    def _summary_after_commit(self, uid: str) -> dict[str, Any] | None:
        measure = getattr(self.store, "_measure", None)
        if measure is not None:
            measure.wait_for(uid, self.summary_timeout_s)
        return self.store.get_summary(uid)

    @_rpc
    def Ingest(self, request: pb.IngestRequest, context: grpc.ServicerContext,
               call: _Call) -> pb.IngestResponse:
        assert call.identity is not None
        policy.require_role(call.identity, "ingest ECGs", "device")
        try:
            result = self._submit(request, call.identity).result(_remaining(context))
        except TimeoutError:
            self._finish(call, grpc.StatusCode.DEADLINE_EXCEEDED)
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                          "the commit did not finish before the call's deadline; sending the "
                          "object again is safe (it is answered 'already stored' if it was)")
        call.uid = result.sop_instance_uid
        return self._response(request, result)

    @_stream
    def IngestStream(self, requests: Iterator[pb.IngestRequest],
                     context: grpc.ServicerContext, call: _Call) -> Iterator[pb.IngestResponse]:
        assert call.identity is not None
        identity = call.identity
        policy.require_role(identity, "ingest ECGs", "device")
        # A reader thread submits requests as they arrive (so that commits are shared
        # and a lock-step client is not starved); responses follow in order.
        pending: queue.Queue[tuple[pb.IngestRequest, Future[IngestResult]] | BaseException | None]
        pending = queue.Queue(maxsize=STREAM_WINDOW)

        def read() -> None:
            try:
                for req in requests:
                    pending.put((req, self._submit(req, identity)))
                pending.put(None)
            except BaseException as exc:  # the client went away or sent garbage
                pending.put(exc)

        reader = threading.Thread(target=read, name="ingest-stream-reader", daemon=True)
        reader.start()
        while True:
            item = pending.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                if isinstance(item, grpc.RpcError):
                    return
                raise item
            req, future = item
            try:
                yield self._response(req, future.result())
            except WaveformError as exc:
                if isinstance(exc, StorageError):
                    raise  # the writer failed: end the stream, nothing more is stored
                yield pb.IngestResponse(
                    error=pb.RequestError(code=code_of(exc).value[0], message=message_of(exc)),
                    sha256=hashlib.sha256(req.dicom).hexdigest())

    # --------------------------------------------------------------- read
    @_rpc
    def GetSummary(self, request: pb.GetSummaryRequest, context: grpc.ServicerContext,
                   call: _Call) -> pb.Summary:
        assert call.identity is not None
        call.uid = request.sop_instance_uid
        policy.require_role(call.identity, "read summaries", "clinician")
        self._context(request.sop_instance_uid, call.identity)
        doc = self.store.get_summary(request.sop_instance_uid,
                                     request.analysis_version or None)
        if doc is None:
            version = request.analysis_version or "any version"
            raise NotFound(f"ECG {request.sop_instance_uid} has no summary of {version} yet")
        return convert.summary(request.sop_instance_uid, doc)

    @_rpc
    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext,
               call: _Call) -> pb.SearchResponse:
        assert call.identity is not None
        query = convert.search_query(request, policy.search_scope(call.identity))
        page = self.store.search(query)
        return convert.search_response(page.rows, page.next_cursor)

    @_stream
    def GetTrace(self, request: pb.GetTraceRequest, context: grpc.ServicerContext,
                 call: _Call) -> Iterator[pb.TraceChunk]:
        assert call.identity is not None
        call.uid = request.sop_instance_uid
        policy.require_role(call.identity, "read traces", "clinician")
        self._context(request.sop_instance_uid, call.identity)
        trace = self.store.get_trace(
            request.sop_instance_uid, group=request.group, leads=list(request.leads) or None,
            start_s=request.start_s, duration_s=request.duration_s or None,
            fs=request.sampling_frequency or None,
            units="raw" if request.units == pb.UNITS_RAW else "uV")
        yield from convert.trace_chunks(trace, request.samples_per_chunk)

    @_stream
    def GetDicom(self, request: pb.GetDicomRequest, context: grpc.ServicerContext,
                 call: _Call) -> Iterator[pb.DicomChunk]:
        assert call.identity is not None
        call.uid = request.sop_instance_uid
        policy.require_role(call.identity, "export DICOM objects", "clinician")
        self._context(request.sop_instance_uid, call.identity)
        data = self.store.get_dicom(request.sop_instance_uid)
        digest = hashlib.sha256(data).hexdigest()
        view = memoryview(data)
        for i in range(0, max(len(data), 1), DICOM_CHUNK_BYTES):
            chunk = pb.DicomChunk(data=bytes(view[i:i + DICOM_CHUNK_BYTES]))
            if i == 0:
                chunk.total_bytes = len(data)
                chunk.sha256 = digest
            yield chunk

    @_stream
    def Render(self, request: pb.RenderRequest, context: grpc.ServicerContext,
               call: _Call) -> Iterator[pb.RenderChunk]:
        assert call.identity is not None
        call.uid = request.sop_instance_uid
        policy.require_role(call.identity, "print ECGs", "clinician")
        self._context(request.sop_instance_uid, call.identity)
        from waveform.dicom import decode
        from waveform.model import Summary
        from waveform.render import render

        ecg = decode(self.store.get_dicom(request.sop_instance_uid))
        doc = self.store.get_summary(request.sop_instance_uid)
        fmt = request.format or "png"
        with _RENDER_LOCK:  # matplotlib keeps global state; one printout at a time
            data = render(ecg, summary=Summary.from_dict(doc) if doc else None,
                          layout=request.layout or "3x4+1", paper=request.paper or "A4",
                          speed_mm_s=request.speed_mm_s or 25, gain_mm_mv=request.gain_mm_mv or 10,
                          fmt=fmt, dpi=request.dpi or 150, qtc=request.qtc_formula or "Bazett")
        for i in range(0, max(len(data), 1), DICOM_CHUNK_BYTES):
            chunk = pb.RenderChunk(data=data[i:i + DICOM_CHUNK_BYTES])
            if i == 0:
                chunk.media_type = _MEDIA_TYPES[fmt]
                chunk.total_bytes = len(data)
            yield chunk

    # -------------------------------------------------------- maintenance
    @_rpc
    def Compact(self, request: pb.CompactRequest, context: grpc.ServicerContext,
                call: _Call) -> pb.CompactResponse:
        assert call.identity is not None
        policy.require_role(call.identity, "compact the archive", "admin")
        report = self.store.compact()
        return pb.CompactResponse(merged_files=report.merged_files,
                                  written_files=report.written_files,
                                  removed_files=report.removed_files,
                                  orphans_removed=report.orphans_removed)
