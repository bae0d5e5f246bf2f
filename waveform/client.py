"""The command line's client commands: they talk to a running archive over gRPC.

    waveform ingest PATH...              send DICOM objects (files and folders, recursive)
    waveform search [filters]            find ECGs (table, JSON or CSV)
    waveform summary UID                 the measurements of one ECG
    waveform trace UID [-o FILE]         samples as CSV, NPY or Parquet
    waveform export UID -o FILE.dcm      the original object, SHA-256 checked
    waveform render UID|FILE.dcm -o OUT  the 12-lead printout (.png, .svg, .pdf)
    waveform compact [--data DIR]        merge small data files (admin; or offline)
    waveform reanalyze --server ADDR     re-measure the archive inside the server (admin;
                                         see waveform.reanalyze.cli)
    waveform health                      the grpc.health.v1 status of the server
    waveform tokens add ...              add a caller to a tokens file

The server is ``--server`` or ``$WAVEFORM_SERVER`` (default 127.0.0.1:50051), the
bearer token ``--token`` or ``$WAVEFORM_TOKEN``; ``--tls-ca`` (and ``--tls-cert``,
``--tls-key`` for mutual TLS) switch to TLS. Every failure prints one line,
``waveform: <command>: <status code>: <details>``, and exits with status 1.
"""

from __future__ import annotations

import argparse
import collections
import csv
import datetime as dt
import errno
import hashlib
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc
    import numpy as np

    from waveform.service._proto.waveform.v1 import archive_pb2 as pb

__all__ = ["DEFAULT_SERVER", "CommandFailed", "connect", "connection_options", "register",
           "rpc_failure"]

DEFAULT_SERVER = "127.0.0.1:50051"
SERVICE_NAME = "waveform.v1.EcgArchive"
#: Status codes after which sending again is safe (nothing was stored).
_RETRYABLE = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
_MAX_MESSAGE = 64 << 20


class CommandFailed(Exception):
    """A command's one-line failure: a status code name and the details."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


def _os_failure(exc: OSError, what: str) -> CommandFailed:
    code = {errno.ENOENT: "NOT_FOUND", errno.EACCES: "PERMISSION_DENIED",
            errno.EPERM: "PERMISSION_DENIED"}.get(exc.errno or 0, "INTERNAL")
    return CommandFailed(code, f"{what}: {exc.strerror or exc}")


# ----------------------------------------------------------------- connection
@dataclass(slots=True)
class _Connection:
    """A channel to the server and the call metadata of the caller."""

    channel: grpc.Channel
    metadata: list[tuple[str, str]]
    timeout: float | None

    def archive(self) -> Any:
        from waveform.service._proto.waveform.v1 import archive_pb2_grpc as pb_grpc

        return pb_grpc.EcgArchiveStub(self.channel)


def _read_file(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise _os_failure(exc, f"{what} {path}") from None


def connect(args: argparse.Namespace) -> _Connection:
    """A channel to the server and the caller's metadata, from `connection_options`."""
    import grpc

    server = args.server or os.environ.get("WAVEFORM_SERVER") or DEFAULT_SERVER
    token = args.token or os.environ.get("WAVEFORM_TOKEN") or ""
    options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", _MAX_MESSAGE),
                                      ("grpc.max_send_message_length", _MAX_MESSAGE)]
    if args.tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CommandFailed("INVALID_ARGUMENT", "--tls-cert and --tls-key go together")
    if args.tls_ca or args.tls_cert:
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read_file(args.tls_ca, "TLS CA file"),
            private_key=_read_file(args.tls_key, "TLS key file"),
            certificate_chain=_read_file(args.tls_cert, "TLS certificate file"))
        channel = grpc.secure_channel(server, creds, options=options)
    else:
        channel = grpc.insecure_channel(server, options=options)
    metadata = [("authorization", f"Bearer {token}")] if token else []
    return _Connection(channel, metadata, args.timeout)


def connection_options(timeout: float | None = 60.0,
                       timeout_help: str = "deadline of each call in seconds (default 60)",
                       server_help: str = f"the archive (default $WAVEFORM_SERVER or "
                                          f"{DEFAULT_SERVER})") -> argparse.ArgumentParser:
    """The options naming the server and the caller (``--server``, ``--token``, TLS,
    ``--timeout``), as a parent parser for a command that talks to the server."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection")
    g.add_argument("--server", metavar="HOST:PORT", help=server_help)
    g.add_argument("--token", help="bearer token (default $WAVEFORM_TOKEN)")
    g.add_argument("--tls-ca", metavar="PEM", help="CA certificate of the server: use TLS")
    g.add_argument("--tls-cert", metavar="PEM", help="client certificate (mutual TLS)")
    g.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    g.add_argument("--tls-server-name", metavar="NAME",
                   help="name to expect in the server certificate (default: the host)")
    g.add_argument("--timeout", type=float, default=timeout, metavar="S", help=timeout_help)
    return p


# --------------------------------------------------------------------- ingest
def _looks_like_dicom(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _collect(paths: Sequence[str]) -> list[Path]:
    """Files named, and DICOM files (``.dcm`` or a DICM preamble) under folders named."""
    out: list[Path] = []
    for name in paths:
        p = Path(name)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file()
                              and not f.name.startswith(".") and _looks_like_dicom(f)))
        elif p.exists():
            out.append(p)
        else:
            raise CommandFailed("NOT_FOUND", f"{name}: no such file or folder")
    return out


class _Progress:
    """A progress bar on a terminal (rich if installed, else tqdm); elsewhere, or
    without either, a plain line now and then (logs stay readable)."""

    def __init__(self, total: int, enabled: bool, stream: IO[str]) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self._lock = threading.Lock()
        self._start = self._last = time.monotonic()
        self._bar: Any = None
        self._rich: Any = None
        self.enabled = enabled
        if not enabled or not getattr(stream, "isatty", lambda: False)():
            return
        try:
            from rich.progress import Progress

            self._rich = Progress(transient=False)
            self._rich.start()
            self._bar = self._rich.add_task("ingest", total=total)
            return
        except ImportError:
            pass
        try:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="ECG", file=stream)
        except ImportError:
            pass

    def advance(self) -> None:
        with self._lock:
            self.done += 1
            if not self.enabled:
                return
            if self._rich is not None:
                self._rich.advance(self._bar)
            elif self._bar is not None:
                self._bar.update(1)
            else:
                now = time.monotonic()
                if now - self._last >= 0.5 or self.done == self.total:
                    self._last = now
                    rate = self.done / max(now - self._start, 1e-9)
                    print(f"ingest: {self.done}/{self.total} "
                          f"({100 * self.done // max(self.total, 1)}%) {rate:.0f}/s",
                          file=self.stream, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
        elif self._bar is not None:
            self._bar.close()


@dataclass(slots=True)
class _Tally:
    """What happened to each file; thread-safe."""

    progress: _Progress
    stored: int = 0
    already: int = 0
    rejected: dict[str, list[Path]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, already: bool) -> None:
        with self.lock:
            if already:
                self.already += 1
            else:
                self.stored += 1
        self.progress.advance()

    def reject(self, path: Path, reason: str) -> None:
        with self.lock:
            self.rejected.setdefault(reason, []).append(path)
        self.progress.advance()

    @property
    def n_rejected(self) -> int:
        return sum(len(v) for v in self.rejected.values())


def _code_name(value: int) -> str:
    import grpc

    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code.name
    return str(value)


def rpc_failure(exc: Any) -> tuple[str, str]:
    """The status code name and details of a failed call."""
    code = exc.code() if hasattr(exc, "code") else None
    return (code.name if code is not None else "UNKNOWN",
            exc.details() if hasattr(exc, "details") else str(exc))


def _read_object(path: Path, tally: _Tally) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as exc:
        tally.reject(path, f"{_os_failure(exc, 'cannot read').code}: {exc.strerror}")
        return None


def _ingest_unary(conn: _Connection, files: queue.Queue[Path], tally: _Tally,
                  retries: int) -> None:
    import grpc

    from waveform.service._proto.waveform.v1 import archive_pb2 as pb

    stub = conn.archive()
    while True:
        try:
            path = files.get_nowait()
        except queue.Empty:
            return
        data = _read_object(path, tally)
        if data is None:
            continue
        for attempt in range(retries + 1):
            try:
                r = stub.Ingest(pb.IngestRequest(dicom=data), metadata=conn.metadata,
                                timeout=conn.timeout)
            except grpc.RpcError as exc:
                code, details = rpc_failure(exc)
                if code in _RETRYABLE and attempt < retries:
                    time.sleep(min(2.0, 0.05 * 2 ** attempt))
                    continue
                tally.reject(path, f"{code}: {details}")
            else:
                tally.ok(r.already_stored)
            break


def _ingest_stream(conn: _Connection, files: queue.Queue[Path], tally: _Tally,
                   retries: int) -> None:
    """One stream at a time, fed from the shared queue; on a retryable failure of
    the stream the unanswered files go back to the queue and a new stream starts."""
    import grpc

    from waveform.service._proto.waveform.v1 import archive_pb2 as pb

    stub = conn.archive()
    failures = 0
    while not files.empty():
        sent: collections.deque[Path] = collections.deque()
        # gRPC pulls requests on its own thread: taking a file and recording it as
        # sent happen under one lock, so that no file is taken after the stream ended.
        lock = threading.Lock()
        closed = [False]

        def requests(sent: collections.deque[Path] = sent, lock: threading.Lock = lock,
                     closed: list[bool] = closed) -> Iterator[pb.IngestRequest]:
            while True:
                with lock:
                    if closed[0]:
                        return
                    try:
                        path = files.get_nowait()
                    except queue.Empty:
                        return
                    data = _read_object(path, tally)
                    if data is None:
                        continue
                    sent.append(path)
                yield pb.IngestRequest(dicom=data)

        failure: tuple[str, str] | None = None
        try:
            for r in stub.IngestStream(requests(), metadata=conn.metadata):
                with lock:
                    path = sent.popleft()
                if r.HasField("error"):
                    tally.reject(path, f"{_code_name(r.error.code)}: {r.error.message}")
                else:
                    tally.ok(r.already_stored)
                    failures = 0
        except grpc.RpcError as exc:
            failure = rpc_failure(exc)
        with lock:
            closed[0] = True
            unanswered = list(sent)
        if not unanswered and failure is None:
            continue
        code, details = failure or ("UNAVAILABLE", "the stream ended without answering")
        if code in _RETRYABLE and failures < retries:
            failures += 1
            for path in unanswered:
                files.put(path)
            time.sleep(min(2.0, 0.05 * 2 ** failures))
            continue
        # The whole call was refused: what is left would be refused the same way.
        reason = f"{code}: {details}"
        for path in unanswered:
            tally.reject(path, reason)
        while True:
            try:
                tally.reject(files.get_nowait(), reason)
            except queue.Empty:
                break


def _cmd_ingest(args: argparse.Namespace) -> int:
    paths = _collect(args.paths)
    conn = connect(args)
    progress = _Progress(len(paths), not args.quiet, sys.stderr)
    tally = _Tally(progress)
    work: queue.Queue[Path] = queue.Queue()
    for p in paths:
        work.put(p)
    worker = _ingest_unary if args.unary else _ingest_stream
    n = max(1, min(args.concurrency, len(paths) or 1))
    t0 = time.monotonic()
    try:
        with ThreadPoolExecutor(n, thread_name_prefix="ingest") as pool:
            for f in [pool.submit(worker, conn, work, tally, args.retries) for _ in range(n)]:
                f.result()
    finally:
        progress.close()
        conn.channel.close()
    elapsed = time.monotonic() - t0
    print(f"stored {tally.stored}, already stored {tally.already}, "
          f"rejected {tally.n_rejected} ({len(paths)} files in {elapsed:.1f} s)")
    for reason, files in sorted(tally.rejected.items(), key=lambda kv: -len(kv[1])):
        print(f"rejected {len(files)}: {reason}")
        for p in files[:10]:
            print(f"  {p}")
        if len(files) > 10:
            print(f"  ... and {len(files) - 10} more")
    if tally.rejected:
        first = max(tally.rejected.items(), key=lambda kv: len(kv[1]))[0]
        raise CommandFailed(first.split(":", 1)[0],
                            f"{tally.n_rejected} of {len(paths)} files were not stored")
    return 0


# --------------------------------------------------------------------- search
_MEASURES = ("heart_rate_bpm", "pr_ms", "qrs_ms", "qt_ms", "qtc_ms")
_HIT_FIELDS = ("sop_instance_uid", "patient_id", "organisation", "sop_class_uid",
               "study_instance_uid", "accession_number", "acquired", "manufacturer", "model",
               "analysis_version", *_MEASURES)


def _when(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date (YYYY-MM-DD) or ISO date-time") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _range(text: str) -> tuple[str, float | None, float | None]:
    parts = text.split(":")
    try:
        if len(parts) != 3 or not parts[0]:
            raise ValueError
        low = float(parts[1]) if parts[1] else None
        high = float(parts[2]) if parts[2] else None
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected MEASURE:LOW:HIGH (either bound may be empty), "
            "e.g. qtc_ms:450:") from None
    return parts[0], low, high


def _hit_dict(hit: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _HIT_FIELDS:
        if name == "acquired":
            out[name] = (hit.acquired.ToDatetime(tzinfo=dt.UTC).isoformat()
                         if hit.HasField("acquired") else None)
        elif name in _MEASURES:
            m = getattr(hit, name)
            out[name] = m.value if m.HasField("value") else None
        else:
            out[name] = getattr(hit, name)
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}"
    return str(value)


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for row in [list(headers), ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _cmd_search(args: argparse.Namespace) -> int:
    from waveform.service._proto.waveform.v1 import archive_pb2 as pb

    req = pb.SearchRequest(
        patient_id=args.patient or "", patient_id_issuer=args.issuer or "",
        organisation=args.organisation or "", sop_class_uid=args.sop_class or "",
        manufacturer=args.manufacturer or "", model=args.model or "",
        study_instance_uid=args.study or "", accession_number=args.accession or "",
        order_by=args.order_by or "", ascending=args.asc, page_size=args.limit,
        page_token=args.page_token or "")
    if args.date_from is not None:
        req.acquired_from.FromDatetime(args.date_from)
    if args.date_to is not None:
        req.acquired_to.FromDatetime(args.date_to)
    for measure, low, high in args.range:
        r = req.ranges.add(measure=measure)
        if low is not None:
            r.low = low
        if high is not None:
            r.high = high
    conn = connect(args)
    try:
        page = conn.archive().Search(req, metadata=conn.metadata, timeout=conn.timeout)
    finally:
        conn.channel.close()
    hits = [_hit_dict(h) for h in page.hits]
    if args.format == "json":
        print(json.dumps({"hits": hits, "next_page_token": page.next_page_token}, indent=2))
        return 0
    if args.format == "csv":
        w = csv.DictWriter(sys.stdout, fieldnames=list(_HIT_FIELDS), lineterminator="\n")
        w.writeheader()
        w.writerows({k: "" if v is None else v for k, v in h.items()} for h in hits)
    else:
        _print_table(
            ["SOP instance UID", "acquired", "patient", "organisation", "device", "HR", "PR",
             "QRS", "QT", "QTc"],
            [[h["sop_instance_uid"], (h["acquired"] or "-")[:19], h["patient_id"] or "-",
              h["organisation"], f"{h['manufacturer']} {h['model']}".strip() or "-",
              *(_fmt(h[m]) for m in _MEASURES)] for h in hits])
    if page.next_page_token:
        print(f"more: --page-token {page.next_page_token}", file=sys.stderr)
    return 0


# -------------------------------------------------------------------- summary
def _summary_dict(s: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    out: dict[str, Any] = MessageToDict(s, preserving_proto_field_name=True)
    out.pop("document_json", None)
    out["document"] = json.loads(s.document_json) if s.document_json else None
    return out


def _cmd_summary(args: argparse.Namespace) -> int:
    from waveform.service._proto.waveform.v1 import archive_pb2 as pb

    conn = connect(args)
    try:
        s = conn.archive().GetSummary(
            pb.GetSummaryRequest(sop_instance_uid=args.uid,
                                 analysis_version=args.analysis_version or ""),
            metadata=conn.metadata, timeout=conn.timeout)
    finally:
        conn.channel.close()
    if args.json:
        print(json.dumps(_summary_dict(s), indent=2))
        return 0
    print(f"ECG {s.sop_instance_uid} (analysis {s.analysis_version}), {s.beat_count} beats")
    rows = []
    for f in pb.Summary.DESCRIPTOR.fields:
        if f.message_type is not None and f.message_type.name == "Measured":
            m = getattr(s, f.name)
            rows.append([f.name, f"{m.value:.1f}" if m.HasField("value") else "-",
                         m.reason])
    _print_table(["measure", "value", "reason"], rows)
    if s.lead_quality:
        print()
        _print_table(["lead", "quality", "reason"],
                     [[q.lead, f"{q.quality:.2f}", q.reason] for q in s.lead_quality])
    return 0


# ---------------------------------------------------------------------- trace
@dataclass(slots=True)
class _TraceData:
    head: Any
    data: np.ndarray  # (leads, samples)


def _fetch_trace(conn: _Connection, req: pb.GetTraceRequest) -> _TraceData:
    import numpy as np

    head = None
    blocks = []
    for chunk in conn.archive().GetTrace(req, metadata=conn.metadata, timeout=conn.timeout):
        if head is None:
            head = chunk
        dtype = "<i8" if head.units == 1 else "<f4"
        blocks.append(np.frombuffer(chunk.data, dtype).reshape(len(head.leads), chunk.samples))
    if head is None:
        raise CommandFailed("INTERNAL", "the server sent no trace chunk")
    data = np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]
    if data.shape[1] != head.total_samples:
        raise CommandFailed("DATA_LOSS", f"received {data.shape[1]} samples of "
                                         f"{head.total_samples}")
    return _TraceData(head, data)


def _write_trace(t: _TraceData, out: str | None) -> None:
    import numpy as np

    head = t.head
    raw = head.units == 1
    leads = list(head.leads)
    times = head.start_s + np.arange(t.data.shape[1]) / head.sampling_frequency
    suffix = Path(out).suffix.lower() if out else ".csv"
    if suffix == ".npy":
        assert out is not None
        np.save(out, t.data)
        return
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        meta = {"sop_instance_uid": head.sop_instance_uid,
                "sampling_frequency": repr(head.sampling_frequency),
                "units": "raw" if raw else "uV"}
        if raw:
            meta.update(sensitivity=json.dumps(list(head.sensitivity)),
                        correction=json.dumps(list(head.correction)),
                        baseline=json.dumps(list(head.baseline)),
                        channel_units=json.dumps(list(head.channel_units)))
        table = pa.table({"time_s": times, **{lead: t.data[i] for i, lead in enumerate(leads)}})
        pq.write_table(table.replace_schema_metadata(meta), out)
        return
    if suffix != ".csv":
        raise CommandFailed("INVALID_ARGUMENT",
                            f"output {out}: the suffix must be .csv, .npy or .parquet")
    fmt = ["%.6f"] + (["%d"] if raw else ["%.9g"]) * len(leads)
    frame = np.column_stack([times, t.data.T]) if not raw else None
    with (open(out, "w", newline="") if out else _stdout()) as f:
        f.write(",".join(["time_s", *leads]) + "\n")
        if frame is not None:
            np.savetxt(f, frame, fmt=fmt, delimiter=",")
        else:
            for k in range(t.data.shape[1]):
                f.write(f"{times[k]:.6f}," + ",".join(str(int(v)) for v in t.data[:, k]) + "\n")


class _stdout:
    """sys.stdout as a context manager that does not close it."""

    def __enter__(self) -> IO[str]:
        return sys.stdout

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()


def _cmd_trace(args: argparse.Namespace) -> int:
    from waveform.service._proto.waveform.v1 import archive_pb2 as pb

    if args.raw and args.rate:
        raise CommandFailed("INVALID_ARGUMENT", "--rate resamples to µV; drop --raw or --rate")
    leads = [x for part in args.leads for x in part.split(",") if x]
    req = pb.GetTraceRequest(sop_instance_uid=args.uid, group=args.group, leads=leads,
                             start_s=args.start, duration_s=args.duration or 0.0,
                             sampling_frequency=args.rate or 0.0,
                             units=pb.UNITS_RAW if args.raw else pb.UNITS_MICROVOLTS)
    conn = connect(args)
    try:
        trace = _fetch_trace(conn, req)
    finally:
        conn.channel.close()
    _write_trace(trace, args.output)
    if args.output:
        print(f"{args.output}: {len(trace.head.leads)} leads x {trace.data.shape[1]} samples "
              f"at {trace.head.sampling_frequency:g} Hz", file=sys.stderr)
    return 0


# --------------------------------------------------------------------- export
def _save(conn: _Connection, chunks: Iterator[Any], out: Path,
          check: Callable[[int, Any, str], None]) -> int:
    """Stream ``chunks`` into ``out`` by way of a temporary file, fsynced; ``check``
    (size, first chunk, SHA-256 hex) may refuse it, and then nothing is written."""
    tmp = out.with_name(f".{out.name}.part")
    digest = hashlib.sha256()
    size, first = 0, None
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                first = first if first is not None else chunk
                digest.update(chunk.data)
                size += len(chunk.data)
                f.write(chunk.data)
            f.flush()
            os.fsync(f.fileno())
        check(size, first, digest.hexdigest())
        os.replace(tmp, out)
    except OSError as exc:
        raise _os_failure(exc, f"cannot write {out}") from None
    finally:
        conn.channel.close()
        tmp.unlink(missing_ok=True)
    return size


def _cmd_export(args: argparse.Namespace) -> int:
    from waveform.service._proto.waveform.v1 import archive_pb2 as pb

    out = Path(args.output)
    conn = connect(args)
    announced: list[Any] = []

    def check(size: int, first: Any, sha: str) -> None:
        expected_sha = first.sha256 if first is not None else ""
        expected_size = first.total_bytes if first is not None else -1
        announced.append(expected_sha)
        if size != expected_size or sha != expected_sha:
            raise CommandFailed(
                "DATA_LOSS", f"received {size} bytes with SHA-256 {sha[:16]}...; "
                f"the server announced {expected_size} bytes with SHA-256 "
                f"{expected_sha[:16]}...; nothing written")

    size = _save(conn, conn.archive().GetDicom(
        pb.GetDicomRequest(sop_instance_uid=args.uid), metadata=conn.metadata,
        timeout=conn.timeout), out, check)
    print(f"{out}: {size} bytes, SHA-256 {announced[0]}")
    return 0


# --------------------------------------------------------------------- render
_RENDER_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


def _cmd_render(args: argparse.Namespace) -> int:
    out = Path(args.output)
    fmt = _RENDER_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise CommandFailed("INVALID_ARGUMENT", f"{out}: the output must end in "
                            f"{', '.join(_RENDER_FORMATS)} (it chooses the format)")
    options: dict[str, Any] = dict(layout=args.layout, paper=args.paper, dpi=args.dpi,
                                   speed_mm_s=args.speed, gain_mm_mv=args.gain, qtc=args.qtc)
    source = Path(args.target)
    if source.is_file():
        # A local object: decoded, measured and drawn here, no server involved.
        from waveform.render import render_file

        try:
            render_file(source, out, **options)
        except ValueError as exc:
            raise CommandFailed("INVALID_ARGUMENT", f"{source}: {exc}") from None
        print(f"{out}: printout of {source}")
        return 0
    from waveform.service._proto.waveform.v1 import archive_pb2 as pb

    req = pb.RenderRequest(
        sop_instance_uid=args.target, layout=args.layout, paper=args.paper, format=fmt,
        dpi=args.dpi, speed_mm_s=args.speed, gain_mm_mv=args.gain, qtc_formula=args.qtc)
    conn = connect(args)

    def check(size: int, first: Any, sha: str) -> None:
        expected = first.total_bytes if first is not None else -1
        if size != expected:
            raise CommandFailed("DATA_LOSS", f"received {size} bytes of a {expected}-byte "
                                "printout; nothing written")

    size = _save(conn, conn.archive().Render(req, metadata=conn.metadata,
                                             timeout=conn.timeout), out, check)
    print(f"{out}: printout of {args.target} ({size} bytes)")
    return 0


# -------------------------------------------------------------------- compact
def _cmd_compact(args: argparse.Namespace) -> int:
    from waveform.service._proto.waveform.v1 import archive_pb2 as pb

    if args.data is not None:
        return _compact_offline(args.data)
    conn = connect(args)
    try:
        r = conn.archive().Compact(pb.CompactRequest(), metadata=conn.metadata,
                                   timeout=conn.timeout)
    finally:
        conn.channel.close()
    _print_compaction(r)
    return 0


def _print_compaction(r: Any) -> None:
    print(f"merged {r.merged_files} files into {r.written_files}, removed {r.removed_files}, "
          f"orphans removed {r.orphans_removed}")


def _compact_offline(data: Path) -> int:
    """Compact a store that no server has open (the catalog allows one writer)."""
    from waveform.errors import StorageError
    from waveform.store import compact_dir

    if not (data / "catalog.ducklake").exists():
        raise CommandFailed("NOT_FOUND", f"{data} holds no archive (no catalog.ducklake)")
    try:
        r = compact_dir(data)
    except StorageError as exc:
        if "lock" in str(exc).lower():
            raise CommandFailed("UNAVAILABLE", f"{data} is open in a running server; "
                                "compact through it (waveform compact --server ...)") from None
        raise
    _print_compaction(r)
    return 0


# --------------------------------------------------------------------- health
def _cmd_health(args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    conn = connect(args)
    bad = []
    try:
        stub = health_pb2_grpc.HealthStub(conn.channel)
        for service in ("", SERVICE_NAME):
            r = stub.Check(health_pb2.HealthCheckRequest(service=service),
                           metadata=conn.metadata, timeout=min(conn.timeout or 5.0, 5.0))
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
            print(f"{service or '(server)'}: {status}")
            if r.status != health_pb2.HealthCheckResponse.SERVING:
                bad.append(f"{service or '(server)'} is {status}")
    finally:
        conn.channel.close()
    if bad:
        raise CommandFailed("UNAVAILABLE", "; ".join(bad))
    return 0


# --------------------------------------------------------------------- tokens
def _cmd_tokens_add(args: argparse.Namespace) -> int:
    from waveform.service.identity import Identity, add_token

    ident = Identity(args.org, args.user, args.role, args.patient_id or "")
    try:
        token = add_token(args.file, ident)
    except OSError as exc:
        raise _os_failure(exc, f"tokens file {args.file}") from None
    except ValueError as exc:
        raise CommandFailed("INVALID_ARGUMENT", f"tokens file {args.file}: {exc}") from None
    print(token)
    print(f"added {ident.describe()} to {args.file}; the token above is shown only once",
          file=sys.stderr)
    return 0


# ------------------------------------------------------------------- plumbing
def _guarded(command: str, fn: Callable[[argparse.Namespace], int]
             ) -> Callable[[argparse.Namespace], int]:
    """Run ``fn``; any failure becomes one line on stderr and status 1."""

    def run(args: argparse.Namespace) -> int:
        import grpc

        from waveform.errors import WaveformError
        from waveform.service.status import code_of

        try:
            return fn(args)
        except CommandFailed as exc:
            code, details = exc.code, exc.details
        except grpc.RpcError as exc:
            code, details = rpc_failure(exc)
        except WaveformError as exc:
            code, details = code_of(exc).name, str(exc)
        except OSError as exc:
            failure = _os_failure(exc, getattr(exc, "filename", None) or command)
            code, details = failure.code, failure.details
        except KeyboardInterrupt:
            code, details = "CANCELLED", "interrupted"
        print(f"waveform: {command}: {code}: {details}", file=sys.stderr)
        return 1

    return run


def register(sub: Any) -> None:
    """Add the client commands to the `waveform` command line's subparsers."""
    conn = connection_options()
    fmt = argparse.RawDescriptionHelpFormatter

    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str,
            parents: Sequence[argparse.ArgumentParser] = (conn,)) -> argparse.ArgumentParser:
        q: argparse.ArgumentParser = sub.add_parser(
            name, help=help, description=help, parents=list(parents), formatter_class=fmt)
        q.set_defaults(fn=_guarded(name, fn))
        return q

    q = add("ingest", _cmd_ingest, "send DICOM objects to the archive; folders are walked "
            "recursively (.dcm files and files with a DICM preamble)")
    q.add_argument("paths", nargs="+", metavar="PATH")
    q.add_argument("-j", "--concurrency", type=int, default=4, metavar="N",
                   help="streams (or unary callers) at once (default 4)")
    q.add_argument("--unary", action="store_true",
                   help="one Ingest call per object instead of IngestStream")
    q.add_argument("--retries", type=int, default=3, metavar="N",
                   help="resend after UNAVAILABLE or RESOURCE_EXHAUSTED (default 3)")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    q = add("search", _cmd_search, "find ECGs the caller may see, one page at a time")
    q.add_argument("--patient", help="patient ID")
    q.add_argument("--issuer", help="issuer of the patient ID")
    q.add_argument("--organisation", help="archiving organisation")
    q.add_argument("--sop-class", help="SOP Class UID")
    q.add_argument("--manufacturer")
    q.add_argument("--model")
    q.add_argument("--study", help="Study Instance UID")
    q.add_argument("--accession", help="accession number")
    q.add_argument("--from", dest="date_from", type=_when, metavar="DATE",
                   help="acquired at or after (YYYY-MM-DD or ISO date-time, UTC if no zone)")
    q.add_argument("--to", dest="date_to", type=_when, metavar="DATE",
                   help="acquired before (exclusive)")
    q.add_argument("--range", type=_range, action="append", default=[],
                   metavar="MEASURE:LOW:HIGH",
                   help="inclusive bounds of heart_rate_bpm, pr_ms, qrs_ms, qt_ms or qtc_ms; "
                        "either bound may be empty; repeatable")
    q.add_argument("--order-by", metavar="FIELD",
                   help="acquisition_datetime (default), ingested_at or a measure")
    q.add_argument("--asc", action="store_true", help="ascending (default descending)")
    q.add_argument("--limit", type=int, default=100, metavar="N", help="page size (default 100)")
    q.add_argument("--page-token", metavar="TOKEN", help="next page of an earlier search")
    q.add_argument("--format", choices=("table", "json", "csv"), default="table")

    q = add("summary", _cmd_summary, "the measurements of one ECG")
    q.add_argument("uid", metavar="UID")
    q.add_argument("--analysis-version", metavar="V", help="default: the latest")
    q.add_argument("--json", action="store_true", help="the whole summary as JSON")

    q = add("trace", _cmd_trace, "samples of one ECG: CSV on stdout, or -o FILE "
            "(.csv, .npy of shape (leads, samples), .parquet with a column per lead)")
    q.add_argument("uid", metavar="UID")
    q.add_argument("--leads", action="append", default=[], metavar="I,II,...",
                   help="leads to fetch (default all)")
    q.add_argument("--group", type=int, default=0, help="multiplex group (default 0)")
    q.add_argument("--start", type=float, default=0.0, metavar="S", help="window start (s)")
    q.add_argument("--duration", type=float, metavar="S", help="window length (s; default: all)")
    q.add_argument("--rate", type=float, metavar="HZ", help="resample to this rate (µV only)")
    q.add_argument("--raw", action="store_true",
                   help="the stored integers (physical = raw x sensitivity x correction "
                        "+ baseline) instead of µV")
    q.add_argument("-o", "--output", metavar="FILE")

    q = add("export", _cmd_export, "the original DICOM object, byte for byte (SHA-256 checked)")
    q.add_argument("uid", metavar="UID")
    q.add_argument("-o", "--output", required=True, metavar="FILE.dcm")

    q = add("render", _cmd_render, "the 12-lead printout of a stored ECG (by UID, from the "
            "server) or of a local DICOM file (no server needed)")
    q.add_argument("target", metavar="UID|FILE.dcm")
    q.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="FILE.png, FILE.svg or FILE.pdf (the suffix chooses the format)")
    q.add_argument("--layout", default="3x4+1", choices=("3x4+1", "3x4+3", "6x2", "12x1"),
                   help="3x4 with a lead II rhythm strip (default), 3x4 with three rhythm "
                        "strips, 6x2 or 12x1")
    q.add_argument("--paper", default="A4", choices=("A4", "Letter"), help="landscape")
    q.add_argument("--dpi", type=float, default=150.0, help="PNG resolution (default 150)")
    q.add_argument("--speed", type=float, default=25.0, choices=(25.0, 50.0),
                   help="paper speed, mm/s (default 25)")
    q.add_argument("--gain", type=float, default=10.0, choices=(5.0, 10.0, 20.0),
                   help="mm/mV (default 10)")
    q.add_argument("--qtc", default="Bazett",
                   choices=("Bazett", "Fridericia", "Framingham", "Hodges"),
                   help="the QTc formula in the header")

    q = add("compact", _cmd_compact, "merge small data files and remove orphans: through the "
            "server (role admin), or with --data on an archive no server has open")
    q.add_argument("--data", type=Path, metavar="DIR",
                   help="compact this archive folder directly (the server must be stopped)")
    add("health", _cmd_health, f"the grpc.health.v1 status of the server and {SERVICE_NAME}")

    tokens = sub.add_parser("tokens", help="manage a tokens file",
                            description="manage a tokens file (only hashes are stored)")
    tsub = tokens.add_subparsers(dest="tokens_command", required=True)
    q = tsub.add_parser("add", help="add a caller; prints the new token once")
    q.set_defaults(fn=_guarded("tokens", _cmd_tokens_add))
    q.add_argument("--file", required=True, type=Path, metavar="F")
    q.add_argument("--org", required=True, help="organisation ID")
    q.add_argument("--user", required=True, help="user ID")
    q.add_argument("--role", required=True,
                   choices=("device", "clinician", "citizen", "auditor", "admin"))
    q.add_argument("--patient-id", metavar="P", help="the citizen's patient ID")
