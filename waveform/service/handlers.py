"""The `EcgArchive` service: each RPC authenticates, asks the archive's policy
(`waveform.archive`: one `Access` per call, audited), and calls the store.

Errors are translated in one place (`calls`); every call is logged as one JSON
line (method, caller, code, duration; never samples or names) and counted.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterator
from typing import Any

import grpc

from waveform.archive import Access
from waveform.archive.policy import require_role
from waveform.errors import NotFound
from waveform.service import convert
from waveform.service._proto.waveform.v1 import archive_pb2 as pb
from waveform.service._proto.waveform.v1 import archive_pb2_grpc as pb_grpc
from waveform.service.calls import Abort, Call, Servicer, job, remaining, rpc, stream
from waveform.service.intake import oversized, request_error
from waveform.service.originals import original_chunks, payload, stated
from waveform.service.reanalysis import (
    Reanalysis,
    compare_options,
    comparison_message,
    job_options,
)
from waveform.service.streams import STREAM_WINDOW, Idle, Pending, StreamReader
from waveform.store import IngestResult

__all__ = ["DICOM_CHUNK_BYTES", "STREAM_WINDOW", "EcgArchive"]

DICOM_CHUNK_BYTES = 1 << 20

_RENDER_LOCK = threading.Lock()
_MEDIA_TYPES = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}


class EcgArchive(Servicer, pb_grpc.EcgArchiveServicer):
    """The ECG service, over an injected store, archive, identity provider and metrics."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The one re-analysis job the server may run (`Reanalyze`).
        self.reanalysis = Reanalysis(self.store)

    def _access(self, call: Call, action: str, uid: str = "", patient_id: str = "") -> Access:
        return self.archive.access(call.identity, call.purpose, action, uid=uid,
                                   patient_id=patient_id)

    # ------------------------------------------------------------- ingest
    def _response(self, wait_for_summary: bool, result: IngestResult, controller: bool
                  ) -> pb.IngestResponse:
        out = pb.IngestResponse(sop_instance_uid=result.sop_instance_uid,
                                already_stored=result.already_stored, sha256=result.sha256)
        if wait_for_summary and controller:
            self.store.wait_for_summary(result.sop_instance_uid, self.summary_timeout_s)
            doc = self.store.get_summary(result.sop_instance_uid)
            if doc is not None:
                source = self.store.ecg_context(result.sop_instance_uid).get("source_format")
                out.summary.CopyFrom(convert.summary(result.sop_instance_uid, doc, source))
        return out

    @rpc
    def Ingest(self, request: pb.IngestRequest, context: grpc.ServicerContext,
               call: Call) -> pb.IngestResponse:
        data = request.dicom  # each read of a protobuf bytes field is a copy: once
        size = len(data)
        budget = self.intake.budget
        with self._access(call, "ingest") as acc:
            too_large = oversized(size, self.max_message_bytes, "the request")
            if too_large is not None:
                raise too_large
            if not budget.try_acquire(size):
                raise budget.refusal(size)
            try:
                future = self.intake.submit(payload(data, request.format), call.identity)
                result, controls = self.intake.settle(acc, future, remaining(context))
            except TimeoutError:
                acc.event.outcome, acc.event.rule = "failed", "deadline"
                acc.write()
                raise Abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                            "the commit did not finish before the call's deadline; sending "
                            "the object again is safe (it is answered 'already stored' if "
                            "it was)") from None
            finally:
                budget.release(size)
        call.uid = result.sop_instance_uid
        return self._response(request.wait_for_summary, result, controls)

    @stream
    def IngestStream(self, requests: Iterator[pb.IngestRequest],
                     context: grpc.ServicerContext, call: Call) -> Iterator[pb.IngestResponse]:
        self._access(call, "ingest")  # refuses (audited) a caller who may not ingest
        # A reader thread submits requests as they arrive (so that commits are shared
        # and a lock-step client is not starved); responses follow in order, each
        # after its audit event is durable. Every request read is answered; only the
        # transport (the client going away) ends the stream early.
        reader = StreamReader(self, stated(requests), call.identity)
        idle = self.limits.stream_idle_s
        try:
            while True:
                item = reader.next(idle)
                if item is None:
                    return
                if isinstance(item, BaseException):
                    return  # the transport failed: the client cancelled or went away
                if isinstance(item, Idle):
                    raise Abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"this stream sent no request for {idle:g} s (the idle limit) "
                                f"after {reader.count} requests, all answered; open a new "
                                "stream when there is more to send")
                yield self._stream_answer(call, item)
                reader.done(item)
        finally:
            reader.close()

    def _stream_answer(self, call: Call, item: Pending) -> pb.IngestResponse:
        try:
            with self._access(call, "ingest") as acc:
                result, controls = self.intake.settle(acc, item.future)
            return self._response(item.wait_for_summary, result, controls)
        except Exception as exc:
            code, message = request_error(exc)
            return pb.IngestResponse(error=pb.RequestError(code=code, message=message),
                                     sha256=item.sha256())

    # --------------------------------------------------------------- read
    @rpc
    def GetSummary(self, request: pb.GetSummaryRequest, context: grpc.ServicerContext,
                   call: Call) -> pb.Summary:
        call.uid = request.sop_instance_uid
        with self._access(call, "summary", request.sop_instance_uid) as acc:
            acc.ecg(request.sop_instance_uid)
            doc = self.store.get_summary(request.sop_instance_uid,
                                         request.analysis_version or None)
            if doc is None:
                version = request.analysis_version or "any version"
                raise NotFound(f"ECG {request.sop_instance_uid} has no summary of {version} yet")
        source = self.store.ecg_context(request.sop_instance_uid).get("source_format")
        return convert.summary(request.sop_instance_uid, doc, source)

    @rpc
    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext,
               call: Call) -> pb.SearchResponse:
        with self._access(call, "search", patient_id=request.patient_id) as acc:
            query = convert.search_query(
                request, self.archive.visibility(acc, request.patient_id))
            page = self.store.search(query)
            rows = self.archive.screen_hits(acc, page.rows)
        return convert.search_response(rows, page.next_cursor)

    @stream
    def GetTrace(self, request: pb.GetTraceRequest, context: grpc.ServicerContext,
                 call: Call) -> Iterator[pb.TraceChunk]:
        call.uid = request.sop_instance_uid
        with self._access(call, "trace", request.sop_instance_uid) as acc:
            acc.ecg(request.sop_instance_uid)
            trace = self.store.get_trace(
                request.sop_instance_uid, group=request.group,
                leads=list(request.leads) or None, start_s=request.start_s,
                duration_s=request.duration_s or None, fs=request.sampling_frequency or None,
                units="raw" if request.units == pb.UNITS_RAW else "uV")
        yield from convert.trace_chunks(trace, request.samples_per_chunk)

    @stream
    def GetDicom(self, request: pb.GetDicomRequest, context: grpc.ServicerContext,
                 call: Call) -> Iterator[pb.DicomChunk]:
        call.uid = request.sop_instance_uid
        with self._access(call, "dicom", request.sop_instance_uid) as acc:
            acc.ecg(request.sop_instance_uid)
            data = self.store.get_dicom(request.sop_instance_uid)
        digest = hashlib.sha256(data).hexdigest()
        view = memoryview(data)
        for i in range(0, max(len(data), 1), DICOM_CHUNK_BYTES):
            chunk = pb.DicomChunk(data=bytes(view[i:i + DICOM_CHUNK_BYTES]))
            if i == 0:
                chunk.total_bytes = len(data)
                chunk.sha256 = digest
            yield chunk

    @stream
    def GetOriginal(self, request: pb.GetOriginalRequest, context: grpc.ServicerContext,
                    call: Call) -> Iterator[pb.OriginalChunk]:
        # The same access rules and audit as GetDicom, under their own action.
        call.uid = request.sop_instance_uid
        with self._access(call, "original", request.sop_instance_uid) as acc:
            acc.ecg(request.sop_instance_uid)
            fmt, data = self.store.get_original(request.sop_instance_uid)
        yield from original_chunks(fmt, data)

    @stream
    def Render(self, request: pb.RenderRequest, context: grpc.ServicerContext,
               call: Call) -> Iterator[pb.RenderChunk]:
        from waveform.dicom import decode
        from waveform.model import Summary
        from waveform.render import render

        call.uid = request.sop_instance_uid
        with self._access(call, "render", request.sop_instance_uid) as acc:
            ref = acc.ecg(request.sop_instance_uid)
            ecg = decode(self.store.get_dicom(request.sop_instance_uid))
            doc = self.store.get_summary(request.sop_instance_uid)
            fmt = request.format or "png"
            with _RENDER_LOCK:  # matplotlib keeps global state; one printout at a time
                data = render(ecg, summary=Summary.from_dict(doc) if doc else None,
                              layout=request.layout or "3x4+1", paper=request.paper or "A4",
                              speed_mm_s=request.speed_mm_s or 25,
                              gain_mm_mv=request.gain_mm_mv or 10, fmt=fmt,
                              dpi=request.dpi or 150, qtc=request.qtc_formula or "Bazett",
                              organisation=ref.organisation)
        for i in range(0, max(len(data), 1), DICOM_CHUNK_BYTES):
            chunk = pb.RenderChunk(data=data[i:i + DICOM_CHUNK_BYTES])
            if i == 0:
                chunk.media_type = _MEDIA_TYPES[fmt]
                chunk.total_bytes = len(data)
            yield chunk

    # -------------------------------------------------------- maintenance
    @rpc
    def Compact(self, request: pb.CompactRequest, context: grpc.ServicerContext,
                call: Call) -> pb.CompactResponse:
        require_role(call.identity, "compact")  # no patient data: nothing to audit
        report = self.store.compact()
        return pb.CompactResponse(merged_files=report.merged_files,
                                  written_files=report.written_files,
                                  removed_files=report.removed_files,
                                  orphans_removed=report.orphans_removed)

    @job
    def Reanalyze(self, request: pb.ReanalyzeRequest, context: grpc.ServicerContext,
                  call: Call) -> Iterator[pb.ReanalyzeProgress]:
        # Every ECG without a summary of the version is read: audited like any call,
        # the event durable before the job starts.
        with self._access(call, "reanalyze") as acc:
            options = job_options(request)
            try:
                started = self.reanalysis.begin(options, call.identity)
            except Abort:
                acc.event.rule = "one-job-at-a-time"
                raise
            try:
                acc.write()
            except BaseException:
                self.reanalysis.cancel(started)
                raise
        started.start()
        yield from self.reanalysis.follow(started, context)

    @rpc
    def CompareVersions(self, request: pb.CompareVersionsRequest,
                        context: grpc.ServicerContext, call: Call
                        ) -> pb.CompareVersionsResponse:
        from waveform.reanalyze.compare import compare

        # Summaries of every ECG are read (UIDs and numbers come back): audited.
        with self._access(call, "compare-versions"):
            old, new, top = compare_options(request)
            comparison = compare(self.store, old, new, top=top)
        png = b""
        if request.plot and comparison.n_common:
            from waveform.reanalyze.plot import bland_altman

            out = io.BytesIO()
            with _RENDER_LOCK:  # matplotlib keeps global state
                bland_altman(comparison, out)
            png = out.getvalue()
        return comparison_message(comparison, png)
