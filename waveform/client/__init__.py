"""The typed Python client of the archive (`waveform.Client`).

    from waveform import Client

    with Client("archive.example:50051", token="...", tls_ca="ca.pem") as c:
        [r] = c.ingest(["ecg.dcm"])
        page = c.search(patient_id="SYN000001", ranges=[("qtc_ms", 450, None)])
        s = c.summary(r.sop_instance_uid)          # waveform.model.Summary
        t = c.trace(r.sop_instance_uid, leads=["II", "V5"], duration=2.0)
        t.samples                                  # numpy (leads, samples), µV

One channel per client (TLS and a bearer token optional; ``$WAVEFORM_SERVER`` and
``$WAVEFORM_TOKEN`` are the defaults), one method per call of the services
``waveform.v1.EcgArchive`` and ``waveform.v1.PatientRecords``. A failed call raises
the project's typed exception (`waveform.errors`, with ``code`` set to the status
code's name; `waveform.client.errors`), never `grpc.RpcError`. Calls refused with
``UNAVAILABLE`` or ``RESOURCE_EXHAUSTED`` (nothing was stored) are sent again by
gRPC's own retry policy (`SERVICE_CONFIG`), with exponential back-off.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import json
import os
import queue
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import grpc

from waveform.client import _messages as msg
from waveform.client.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    ServerError,
    code_name,
    from_status,
    map_rpc_errors,
)
from waveform.client.types import (
    AuditPage,
    CitizenExamination,
    Compaction,
    ConsentState,
    DocumentList,
    DocumentRef,
    IngestResult,
    OriginalFile,
    ReanalyzeStatus,
    RecentExaminations,
    SearchPage,
    Trace,
)
from waveform.errors import InvalidArgument, NotFound, WaveformError
from waveform.model import Summary

if TYPE_CHECKING:
    from waveform.reanalyze.compare import Comparison

__all__ = [
    "DEFAULT_SERVER", "SERVICE_CONFIG", "Cancelled", "Client", "DeadlineExceeded",
    "FailedPrecondition", "IngestResult", "OriginalFile", "SearchPage", "ServerError", "Trace",
    "code_name",
]

DEFAULT_SERVER = "127.0.0.1:50051"
ARCHIVE_SERVICE = "waveform.v1.EcgArchive"
RECORDS_SERVICE = "waveform.v1.PatientRecords"
_MAX_MESSAGE = 64 << 20

#: gRPC's retry policy (gRFC A6): a call answered UNAVAILABLE or RESOURCE_EXHAUSTED
#: stored nothing and is sent again, up to 5 attempts in all, 0.1 s doubling to 2 s
#: apart (randomised by gRPC). Streams are retried as long as no response came back.
SERVICE_CONFIG: dict[str, Any] = {
    "methodConfig": [{
        "name": [{"service": ARCHIVE_SERVICE}, {"service": RECORDS_SERVICE}],
        "retryPolicy": {
            "maxAttempts": 5,
            "initialBackoff": "0.1s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
        },
    }],
}

Source = str | os.PathLike[str] | bytes
ProgressCallback = Callable[[IngestResult], None]


def _read(path: str | os.PathLike[str] | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"{what} {path}: {exc.strerror or exc}") from None


def _ts(value: dt.datetime | dt.date | None) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    if value is None:
        return None
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    ts = Timestamp()
    ts.FromDatetime(value if value.tzinfo else value.replace(tzinfo=dt.UTC))
    return ts


class Client:
    """A connection to one archive server; use it as a context manager, or `close` it.

    ``server`` is HOST:PORT (default ``$WAVEFORM_SERVER``, else 127.0.0.1:50051) and
    ``token`` the bearer token (default ``$WAVEFORM_TOKEN``). ``tls_ca`` (a PEM file)
    switches to TLS; ``tls_cert`` and ``tls_key`` add a client certificate (mutual
    TLS). ``timeout`` is each call's deadline in seconds (None: no deadline).
    ``purpose="emergency"`` with ``purpose_reason`` is sent with every call (a
    clinician's emergency access, docs/access.md).
    """

    def __init__(self, server: str | None = None, token: str | None = None, *,
                 tls_ca: str | os.PathLike[str] | None = None,
                 tls_cert: str | os.PathLike[str] | None = None,
                 tls_key: str | os.PathLike[str] | None = None,
                 tls_server_name: str | None = None, timeout: float | None = 60.0,
                 purpose: str | None = None, purpose_reason: str | None = None,
                 retries: bool = True) -> None:
        self.server = server or os.environ.get("WAVEFORM_SERVER") or DEFAULT_SERVER
        token = token if token is not None else os.environ.get("WAVEFORM_TOKEN", "")
        if (tls_cert is None) != (tls_key is None):
            raise InvalidArgument("tls_cert and tls_key go together (mutual TLS needs both)")
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.enable_retries", 1 if retries else 0),
            ("grpc.service_config", json.dumps(SERVICE_CONFIG if retries else {})),
        ]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        if tls_ca or tls_cert:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(tls_ca, "TLS CA file"),
                private_key=_read(tls_key, "TLS key file"),
                certificate_chain=_read(tls_cert, "TLS certificate file"))
            self.channel = grpc.secure_channel(self.server, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(self.server, options=options)
        self.metadata: list[tuple[str, str]] = []
        if token:
            self.metadata.append(("authorization", f"Bearer {token}"))
        if purpose:
            self.metadata.append(("purpose", purpose))
        if purpose_reason:
            self.metadata.append(("purpose-reason", purpose_reason))
        self.timeout = timeout
        from waveform.service._proto.waveform.v1 import archive_pb2_grpc, records_pb2_grpc

        self._archive = archive_pb2_grpc.EcgArchiveStub(self.channel)
        self._records = records_pb2_grpc.PatientRecordsStub(self.channel)

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unary(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        with map_rpc_errors():
            return method(request, metadata=self.metadata,
                          timeout=self.timeout if timeout is None else timeout)

    def _stream(self, method: Any, request: Any) -> Iterator[Any]:
        with map_rpc_errors():
            yield from method(request, metadata=self.metadata, timeout=self.timeout)

    @staticmethod
    def _pb() -> Any:
        from waveform.service._proto.waveform.v1 import archive_pb2

        return archive_pb2

    @staticmethod
    def _rpb() -> Any:
        from waveform.service._proto.waveform.v1 import records_pb2

        return records_pb2

    # --------------------------------------------------------------- health
    def health(self) -> dict[str, str]:
        """The grpc.health.v1 status of the server ("") and of each service:
        ``{"": "SERVING", "waveform.v1.EcgArchive": "SERVING", ...}``."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        out = {}
        for service in ("", ARCHIVE_SERVICE, RECORDS_SERVICE):
            r = self._unary(stub.Check, health_pb2.HealthCheckRequest(service=service),
                            timeout=min(self.timeout or 5.0, 5.0))
            out[service] = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
        return out

    # --------------------------------------------------------------- ingest
    def ingest(self, objects: Source | Iterable[Source], *, wait_for_summary: bool = False,
               concurrency: int = 4, stream: bool = True,
               on_progress: ProgressCallback | None = None,
               format: str | None = None) -> list[IngestResult]:
        """Send DICOM objects or the carts' own files (GE MUSE XML, Philips Sierra XML,
        HL7 aECG, SCP-ECG: the server converts them and keeps the file, `original`)
        as file paths or bytes; one `IngestResult` per object, in the order given. An
        object the server refuses has ``error`` set (the others are stored all the
        same); nothing is raised for it. ``format`` states the format of every object
        ("dicom", "ge-muse-xml", ...; default: the server recognises each).

        ``concurrency`` streams (``stream``, the default: IngestStream) or callers of
        the unary Ingest run at once; ``on_progress`` is called (from those threads)
        with each result as it arrives. A whole call the server refuses (a bad
        token) refuses every object it would have carried, with that error.
        """
        items = ([objects] if isinstance(objects, (str, bytes, os.PathLike))
                 else list(objects))
        names = [f"#{i}" if isinstance(o, bytes) else os.fspath(o)
                 for i, o in enumerate(items)]
        results: list[IngestResult | None] = [None] * len(items)
        lock = threading.Lock()

        def done(i: int, r: IngestResult) -> None:
            with lock:
                results[i] = r
            if on_progress is not None:
                on_progress(r)

        work: queue.Queue[int] = queue.Queue()
        for i in range(len(items)):
            work.put(i)
        worker = self._ingest_stream if stream else self._ingest_unary
        n = max(1, min(concurrency, len(items)))
        if items:
            with ThreadPoolExecutor(n, thread_name_prefix="ingest") as pool:
                for f in [pool.submit(worker, items, names, work, done, wait_for_summary,
                                      format or "") for _ in range(n)]:
                    f.result()
        return [r for r in results if r is not None]

    @staticmethod
    def _load(item: Source, name: str) -> bytes | IngestResult:
        if isinstance(item, bytes):
            return item
        try:
            return Path(item).read_bytes()
        except OSError as exc:
            failure = NotFound if isinstance(exc, FileNotFoundError) else InvalidArgument
            return IngestResult(name, error=failure(f"cannot read {name}: "
                                                    f"{exc.strerror or exc}"))

    def _result(self, name: str, r: Any) -> IngestResult:
        if r.HasField("error") and r.error.code:
            return IngestResult(name, error=from_status(r.error.code, r.error.message))
        s = msg.summary(r.summary) if r.HasField("summary") else None
        return IngestResult(name, r.sop_instance_uid, r.already_stored, r.sha256,
                            tuple(r.warnings), s)

    def _ingest_unary(self, items: list[Source], names: list[str], work: queue.Queue[int],
                      done: Callable[[int, IngestResult], None], wait: bool,
                      fmt: str) -> None:
        pb = self._pb()
        while True:
            try:
                i = work.get_nowait()
            except queue.Empty:
                return
            data = self._load(items[i], names[i])
            if isinstance(data, IngestResult):
                done(i, data)
                continue
            try:
                r = self._unary(self._archive.Ingest,
                                pb.IngestRequest(dicom=data, wait_for_summary=wait,
                                                 format=fmt))
            except WaveformError as exc:
                done(i, IngestResult(names[i], error=exc))
            else:
                done(i, self._result(names[i], r))

    def _ingest_stream(self, items: list[Source], names: list[str], work: queue.Queue[int],
                       done: Callable[[int, IngestResult], None], wait: bool,
                       fmt: str) -> None:
        """One IngestStream fed from the shared queue; responses come in order."""
        pb = self._pb()
        sent: collections.deque[int] = collections.deque()
        # gRPC pulls requests on its own thread: taking an object and recording it as
        # sent happen under one lock, so that none is taken after the stream ended.
        lock = threading.Lock()
        closed = False

        def requests() -> Iterator[Any]:
            while True:
                with lock:
                    if closed:
                        return
                    try:
                        i = work.get_nowait()
                    except queue.Empty:
                        return
                    data = self._load(items[i], names[i])
                    if isinstance(data, IngestResult):
                        done(i, data)
                        continue
                    sent.append(i)
                yield pb.IngestRequest(dicom=data, wait_for_summary=wait, format=fmt)

        failure: WaveformError | None = None
        try:
            for r in self._stream(self._archive.IngestStream, requests()):
                with lock:
                    i = sent.popleft()
                done(i, self._result(names[i], r))
        except WaveformError as exc:
            failure = exc
        with lock:
            closed = True
            unanswered = list(sent)
        if not unanswered and failure is None:
            return
        failure = failure or from_status(grpc.StatusCode.UNAVAILABLE,
                                         "the stream ended without answering")
        # The whole call was refused: what is left would be refused the same way.
        for i in unanswered:
            done(i, IngestResult(names[i], error=failure))
        while True:
            try:
                i = work.get_nowait()
            except queue.Empty:
                return
            done(i, IngestResult(names[i], error=failure))

    # --------------------------------------------------------------- search
    def search(self, *, patient_id: str = "", patient_id_issuer: str = "",
               organisation: str = "", sop_class_uid: str = "", manufacturer: str = "",
               model: str = "", study_instance_uid: str = "", accession_number: str = "",
               acquired_from: dt.datetime | dt.date | None = None,
               acquired_to: dt.datetime | dt.date | None = None,
               ranges: Sequence[tuple[str, float | None, float | None]] = (),
               order_by: str = "", ascending: bool = False, page_size: int = 100,
               page_token: str = "") -> SearchPage:
        """One page of the ECGs the caller may see that match every filter given:
        a `pyarrow.Table` (a row per ECG; absent measurements are null) and the
        token of the next page. ``ranges`` are (measure, low, high), inclusive,
        either bound None; a date without a zone is UTC."""
        pb = self._pb()
        req = pb.SearchRequest(
            patient_id=patient_id, patient_id_issuer=patient_id_issuer,
            organisation=organisation, sop_class_uid=sop_class_uid,
            manufacturer=manufacturer, model=model, study_instance_uid=study_instance_uid,
            accession_number=accession_number, order_by=order_by, ascending=ascending,
            page_size=page_size, page_token=page_token)
        if acquired_from is not None:
            req.acquired_from.CopyFrom(_ts(acquired_from))
        if acquired_to is not None:
            req.acquired_to.CopyFrom(_ts(acquired_to))
        for measure, low, high in ranges:
            r = req.ranges.add(measure=measure)
            if low is not None:
                r.low = low
            if high is not None:
                r.high = high
        page = self._unary(self._archive.Search, req)
        return SearchPage(msg.search_table(page.hits), page.next_page_token)

    def search_pages(self, **filters: Any) -> Iterator[SearchPage]:
        """Every page of `search` with ``filters``, the first to the last."""
        token = filters.pop("page_token", "")
        while True:
            page = self.search(page_token=token, **filters)
            yield page
            token = page.next_page_token
            if not token:
                return

    # ------------------------------------------------------ summary, trace
    def summary(self, uid: str, analysis_version: str | None = None) -> Summary:
        """The measurements of one ECG (the latest analysis version unless named)."""
        pb = self._pb()
        return msg.summary(self._unary(self._archive.GetSummary, pb.GetSummaryRequest(
            sop_instance_uid=uid, analysis_version=analysis_version or "")))

    def summary_document(self, uid: str, analysis_version: str | None = None
                         ) -> dict[str, Any]:
        """The stored summary document of one ECG as JSON-ready values (beats, classes,
        median beat, fiducials: everything `Summary.to_dict` holds)."""
        pb = self._pb()
        m = self._unary(self._archive.GetSummary, pb.GetSummaryRequest(
            sop_instance_uid=uid, analysis_version=analysis_version or ""))
        doc: dict[str, Any] = json.loads(m.document_json) if m.document_json else {}
        return doc

    def trace(self, uid: str, leads: Sequence[str] = (), start: float = 0.0,
              duration: float | None = None, rate: float | None = None, *,
              raw: bool = False, group: int = 0) -> Trace:
        """Samples of one multiplex group: ``leads`` (default all) from ``start`` for
        ``duration`` seconds (default: to the end), float32 µV resampled to ``rate``
        (default the stored rate), or with ``raw`` the stored integers and their scale."""
        import numpy as np

        if raw and rate:
            raise InvalidArgument("rate resamples microvolts; raw samples come at the "
                                  "stored rate (drop raw or rate)")
        pb = self._pb()
        req = pb.GetTraceRequest(sop_instance_uid=uid, group=group, leads=list(leads),
                                 start_s=start, duration_s=duration or 0.0,
                                 sampling_frequency=rate or 0.0,
                                 units=pb.UNITS_RAW if raw else pb.UNITS_MICROVOLTS)
        head = None
        blocks = []
        for chunk in self._stream(self._archive.GetTrace, req):
            head = head or chunk
            dtype = "<i8" if head.units == pb.UNITS_RAW else "<f4"
            blocks.append(np.frombuffer(chunk.data, dtype).reshape(len(head.leads),
                                                                   chunk.samples))
        if head is None:
            raise ServerError(f"the server sent no trace chunk for {uid}")
        data = np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]
        if data.shape[1] != head.total_samples:
            raise from_status(grpc.StatusCode.DATA_LOSS, f"received {data.shape[1]} samples "
                              f"of {head.total_samples} for {uid}")
        return Trace(head.sop_instance_uid, tuple(head.leads), head.sampling_frequency,
                     head.start_s, "raw" if head.units == pb.UNITS_RAW else "uV", data,
                     tuple(head.sensitivity), tuple(head.correction), tuple(head.baseline),
                     tuple(head.channel_units))

    # ------------------------------------------------------- dicom, render
    def _bytes(self, chunks: Iterator[Any], what: str, sha: bool) -> bytes:
        first = None
        parts = []
        for chunk in chunks:
            first = first or chunk
            parts.append(chunk.data)
        data = b"".join(parts)
        expected = first.total_bytes if first is not None else -1
        if len(data) != expected:
            raise from_status(grpc.StatusCode.DATA_LOSS, f"received {len(data)} bytes of "
                              f"{what} announced as {expected} bytes")
        if sha:
            digest = hashlib.sha256(data).hexdigest()
            announced = first.sha256 if first is not None else ""
            if digest != announced:
                raise from_status(grpc.StatusCode.DATA_LOSS,
                                  f"received {what} with SHA-256 {digest[:16]}...; the "
                                  f"server announced {announced[:16]}...")
        return data

    def dicom(self, uid: str) -> bytes:
        """The original DICOM object, byte for byte (its size and SHA-256 checked
        against what the server announced: `ServerError` when they differ)."""
        pb = self._pb()
        return self._bytes(self._stream(self._archive.GetDicom,
                                        pb.GetDicomRequest(sop_instance_uid=uid)),
                           f"object {uid}", sha=True)

    def original(self, uid: str) -> OriginalFile:
        """The file a cart sent in its own format (MUSE, Sierra, aECG, SCP-ECG), byte
        for byte, with its format (size and SHA-256 checked as `dicom`'s). `NotFound`
        for an ECG that came as DICOM: `dicom` is its original."""
        pb = self._pb()
        chunks = list(self._stream(self._archive.GetOriginal,
                                   pb.GetOriginalRequest(sop_instance_uid=uid)))
        data = self._bytes(iter(chunks), f"original file of {uid}", sha=True)
        return OriginalFile(chunks[0].format, data, chunks[0].sha256)

    def render(self, uid: str, format: Literal["png", "svg", "pdf"] = "png", *,
               layout: str = "3x4+1", paper: str = "A4", dpi: float = 150.0,
               speed_mm_s: float = 25.0, gain_mm_mv: float = 10.0,
               qtc_formula: str = "Bazett") -> bytes:
        """The standard 12-lead printout of a stored ECG as PNG, SVG or PDF bytes."""
        pb = self._pb()
        req = pb.RenderRequest(sop_instance_uid=uid, layout=layout, paper=paper, format=format,
                               dpi=dpi, speed_mm_s=speed_mm_s, gain_mm_mv=gain_mm_mv,
                               qtc_formula=qtc_formula)
        return self._bytes(self._stream(self._archive.Render, req), f"the printout of {uid}",
                           sha=False)

    # ------------------------------------------------------------ admin
    def compact(self) -> Compaction:
        """Merge small data files and remove orphans (role admin)."""
        r = self._unary(self._archive.Compact, self._pb().CompactRequest())
        return Compaction(r.merged_files, r.written_files, r.removed_files, r.orphans_removed)

    def reanalyze(self, where: Sequence[str] = (), *, engine: str = "local",
                  scheduler: str = "", workers: int = 0, unit_ecgs: int = 0,
                  commit_rows: int = 0) -> Generator[ReanalyzeStatus, None, None]:
        """Re-measure the stored ECGs inside the server (role admin), yielding its
        progress; the last status has ``final`` set. Closing the iterator early
        cancels the call, and the server stops the job after its current unit."""
        req = self._pb().ReanalyzeRequest(where=list(where), engine=engine,
                                          scheduler=scheduler, workers=workers,
                                          unit_ecgs=unit_ecgs, commit_rows=commit_rows)
        call = self._archive.Reanalyze(req, metadata=self.metadata, timeout=self.timeout)
        try:
            with map_rpc_errors():
                for m in call:
                    yield msg.reanalyze_status(m)
        finally:
            call.cancel()  # no-op once the stream has ended

    def compare_versions(self, old_version: str, new_version: str, *, top: int = 0,
                         plot: bool = False) -> tuple[Comparison, bytes]:
        """How the summaries of ``new_version`` differ from ``old_version``'s on the
        ECGs with both (role admin), and the Bland-Altman PNG when ``plot``."""
        from waveform.service.convert import comparison_from_message

        req = self._pb().CompareVersionsRequest(old_version=old_version,
                                                new_version=new_version, top=top, plot=plot)
        r = self._unary(self._archive.CompareVersions, req)
        return comparison_from_message(r), bytes(r.plot_png)

    # --------------------------------------------------- PatientRecords
    def attach_document(self, kind: str, patient_id: str, *, text: str = "",
                        title: str = "", study_instance_uid: str = "",
                        accession_number: str = "", visit_id: str = "", author: str = "",
                        authored_at: dt.datetime | None = None, cda_xml: bytes = b"",
                        document_id: str = "") -> DocumentRef:
        """Store a document of an examination (``kind`` referral, examination_note or
        statement); ``document_id`` adds a new version of that document."""
        rpb = self._rpb()
        if kind not in msg.KIND_VALUES:
            raise InvalidArgument(f"document kind {kind!r}: expected one of "
                                  f"{', '.join(msg.KIND_VALUES)}")
        req = rpb.AttachDocumentRequest(
            kind=msg.KIND_VALUES[kind], patient_id=patient_id,
            study_instance_uid=study_instance_uid, accession_number=accession_number,
            visit_id=visit_id, author=author, title=title, text=text, cda_xml=cda_xml,
            document_id=document_id)
        if authored_at is not None:
            req.authored_at.CopyFrom(_ts(authored_at))
        r = self._unary(self._records.AttachDocument, req)
        return DocumentRef(r.document_id, r.version)

    def documents(self, *, study_instance_uid: str = "", accession_number: str = "",
                  document_id: str = "", all_versions: bool = False,
                  with_cda: bool = False) -> DocumentList:
        """The documents of a study, an accession number or one document."""
        req = self._rpb().GetDocumentsRequest(
            study_instance_uid=study_instance_uid, accession_number=accession_number,
            document_id=document_id, all_versions=all_versions, with_cda=with_cda)
        return msg.document_list(self._unary(self._records.GetDocuments, req))

    def release_document(self, document_id: str) -> dt.datetime:
        """Show a document to the patient now; the time it became visible."""
        r = self._unary(self._records.ReleaseDocument,
                        self._rpb().ReleaseDocumentRequest(document_id=document_id))
        when = msg.when(r, "released_at")
        if when is None:
            raise ServerError(f"the server released {document_id} without saying when")
        return when

    def recent_examinations(self, patient_id: str, within_days: int = 0
                            ) -> RecentExaminations:
        """The patient's ECGs the caller may see, newest first (default: a year)."""
        r = self._unary(self._records.RecentExaminations,
                        self._rpb().RecentExaminationsRequest(patient_id=patient_id,
                                                              within_days=within_days))
        return RecentExaminations(tuple(msg.examination(e) for e in r.examinations), r.notice)

    def my_examinations(self) -> list[CitizenExamination]:
        """The calling citizen's examinations and the documents released to them."""
        r = self._unary(self._records.MyExaminations, self._rpb().MyExaminationsRequest())
        return [msg.citizen_examination(e) for e in r.examinations]

    def consent(self) -> ConsentState:
        """The calling citizen's consent and denials."""
        return msg.consent(self._unary(self._records.GetConsentState,
                                       self._rpb().GetConsentStateRequest()))

    def set_consent(self, granted: bool) -> ConsentState:
        return msg.consent(self._unary(self._records.SetConsent,
                                       self._rpb().SetConsentRequest(granted=granted)))

    def add_denial(self, *, organisation: str = "", study_instance_uid: str = ""
                   ) -> ConsentState:
        """Deny every ECG of ``organisation``, or one examination."""
        return msg.consent(self._unary(self._records.AddDenial, self._rpb().AddDenialRequest(
            organisation=organisation, study_instance_uid=study_instance_uid)))

    def remove_denial(self, denial_id: str) -> ConsentState:
        return msg.consent(self._unary(self._records.RemoveDenial,
                                       self._rpb().RemoveDenialRequest(denial_id=denial_id)))

    def query_audit(self, *, patient_id: str = "", user: str = "", organisation: str = "",
                    start: dt.datetime | dt.date | None = None,
                    end: dt.datetime | dt.date | None = None, limit: int = 0,
                    page_token: str = "") -> AuditPage:
        """One page of the audit trail, oldest first (role auditor); ``start``
        inclusive, ``end`` exclusive."""
        req = self._rpb().QueryAuditRequest(patient_id=patient_id, user=user,
                                            organisation=organisation, limit=limit,
                                            page_token=page_token)
        if start is not None:
            getattr(req, "from").CopyFrom(_ts(start))
        if end is not None:
            req.to.CopyFrom(_ts(end))
        return msg.audit_page(self._unary(self._records.QueryAudit, req))

    def my_access_log(self, *, start: dt.datetime | dt.date | None = None, limit: int = 0,
                      page_token: str = "") -> AuditPage:
        """Who accessed the calling citizen's data, at organisation level."""
        req = self._rpb().MyAccessLogRequest(limit=limit, page_token=page_token)
        if start is not None:
            getattr(req, "from").CopyFrom(_ts(start))
        return msg.audit_page(self._unary(self._records.MyAccessLog, req))
