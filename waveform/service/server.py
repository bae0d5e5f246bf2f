"""Building and running the gRPC server: the archive service, health, reflection.

`start(...)` returns a running `Server` on a store; `serve(...)` is the command
line's loop around it: on SIGTERM/SIGINT health turns NOT_SERVING, new calls are
refused, a running re-analysis job stops after its current unit (its workers
shut down), in-flight calls and commits finish, the store closes, and the
process exits. Nothing acknowledged is lost.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from waveform.archive import Archive
from waveform.errors import InvalidArgument, StorageError
from waveform.service._proto.waveform.v1 import archive_pb2 as pb
from waveform.service._proto.waveform.v1 import archive_pb2_grpc as pb_grpc
from waveform.service._proto.waveform.v1 import records_pb2 as rpb
from waveform.service._proto.waveform.v1 import records_pb2_grpc as rpb_grpc
from waveform.service.calls import Admission, Limits
from waveform.service.handlers import EcgArchive
from waveform.service.identity import IdentityProvider
from waveform.service.intake import InflightBudget, Intake
from waveform.service.memory import Trimmer
from waveform.service.metrics import Metrics
from waveform.service.records import PatientRecords
from waveform.store import Store
from waveform.store.s3 import is_s3_url

__all__ = [
    "JOB_THREADS", "RECORDS_SERVICE_NAME", "RESERVE_THREADS", "SERVICE_NAME", "Server",
    "TlsFiles", "configure_logging", "start",
]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EcgArchive"].full_name
RECORDS_SERVICE_NAME = rpb.DESCRIPTOR.services_by_name["PatientRecords"].full_name
#: The names health answers for: the server as a whole and each service.
HEALTH_NAMES = ("", SERVICE_NAME, RECORDS_SERVICE_NAME)
DEFAULT_MAX_MESSAGE = 64 << 20
#: Bytes of received objects not yet answered, across every call (`Intake`).
DEFAULT_MAX_INFLIGHT = 1 << 30


def _transport_limit(max_message_bytes: int) -> int:
    """gRPC's own message limit: twice the object limit (at most 2 GiB - 1)."""
    return min(2 * max_message_bytes + (1 << 16), (1 << 31) - 1)

#: Threads beyond the service's call limit: health checks and reflection run on them.
RESERVE_THREADS = 8
#: Threads for the streamed progress of a job (`Reanalyze`: one at a time), which
#: holds none of the call slots, so that ingest keeps all of them while it runs.
JOB_THREADS = 1


#: How long the archive's shared state (consent, denials, documents) may go without a
#: refresh from the catalog before health says NOT_SERVING (reads past its own, shorter
#: bound already refresh or fail: this is what a load balancer sees).
STALE_STATE_S = 5.0


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None


class Server:
    """A running server; `stop()` shuts it down gracefully."""

    def __init__(self, grpc_server: grpc.Server, port: int, health_servicer: Any,
                 service: EcgArchive, store: Store, owns_store: bool, archive: Archive,
                 owns_archive: bool, calls: ThreadPoolExecutor) -> None:
        self.grpc = grpc_server
        #: The threads calls run on: gRPC's stop ends the calls, not the threads.
        self._calls = calls
        self.port = port
        self.health = health_servicer
        self.service = service
        self.store = store
        self.archive = archive
        self._owns_store = owns_store
        self._owns_archive = owns_archive
        self._stopped = threading.Event()
        self._watcher: threading.Thread | None = None

    def watch_health(self, interval_s: float = 0.25) -> None:
        """Keep health in step with the store, the audit trail and the archive's shared
        state: NOT_SERVING while the store or the trail cannot write (a full disk, a
        failed fsync or commit, an unreachable catalog or object store), or while the
        consent, denials and documents other servers may change are older than their
        bound (the catalog cannot be read); SERVING again once all have recovered."""

        def watch() -> None:
            serving = True
            refresher = self.archive.refresher
            while not self._stopped.wait(interval_s):
                why = ("" if self.store.writable else "store cannot write") or (
                    "" if self.archive.audit.failed is None else "audit trail cannot write") or (
                    "" if refresher.age_s <= STALE_STATE_S
                    else "shared archive state cannot be refreshed")
                now = not why
                if now == serving:
                    continue
                serving = now
                status = (health_pb2.HealthCheckResponse.SERVING if now
                          else health_pb2.HealthCheckResponse.NOT_SERVING)
                for name in HEALTH_NAMES:
                    self.health.set(name, status)
                logging.getLogger("waveform.service").warning(
                    "health", extra={"serving": now, "why": why})

        self._watcher = threading.Thread(target=watch, name="waveform-health", daemon=True)
        self._watcher.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace_s: float = 30.0) -> None:
        """NOT_SERVING, refuse new calls, stop a re-analysis job at its next unit
        boundary, let in-flight calls finish, close the store."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._watcher is not None:
            self._watcher.join()
        self.health.enter_graceful_shutdown()
        jobs = self.service.reanalysis
        jobs.stop("the server is shutting down")
        self.grpc.stop(grace_s).wait()
        # Every call's thread is joined here, before the store closes: a thread left
        # to the interpreter's exit would drop its DuckDB cursor (kept per thread by
        # the store) then, and a DuckDB connection dropped on another thread while
        # the interpreter finalizes aborts the process (see `Engine.close` in the store).
        self._calls.shutdown(wait=True)
        trimmer = self.service.intake.budget.trimmer
        if trimmer is not None:
            trimmer.close()
        # The job commits through the store: it must be over before the store closes.
        if not jobs.join(grace_s):
            logging.getLogger("waveform.service").warning(
                "the re-analysis job did not stop within the grace period; closing the "
                "store under it (its commit in progress fails as a whole)",
                extra={"grace_s": grace_s})
        if self._owns_archive:
            self.archive.close()
        if self._owns_store:
            self.store.close()

    def wait(self) -> None:
        self.grpc.wait_for_termination()


def start(
    store: Store,
    identities: IdentityProvider,
    *,
    host: str = "127.0.0.1",
    port: int = 50051,
    tls: TlsFiles | None = None,
    workers: int = 32,
    max_concurrent: int = 256,
    limits: Limits | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE,
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT,
    metrics: Metrics | None = None,
    owns_store: bool = False,
    archive: Archive | None = None,
) -> Server:
    """Start serving ``store`` on ``host:port`` (port 0: any free port).

    Calls beyond the limits (``limits``, or `Limits.scaled` to ``max_concurrent``
    slots) are answered RESOURCE_EXHAUSTED at once by the service itself; the
    thread pool has `RESERVE_THREADS` more than that (and at least ``workers``) so
    that health checks and reflection answer while the service is at capacity,
    and `JOB_THREADS` more for a re-analysis job's stream. An object may be up to
    ``max_message_bytes``; gRPC admits messages of twice that, so that a larger
    object is refused as one request (a stream goes on) rather than by the
    transport. Received objects not yet answered hold at most
    ``max_inflight_bytes`` (plus one message a stream). The port is never shared:
    if it is taken, `StorageError` says so.
    """
    if limits is None:
        limits = Limits() if max_concurrent == Limits().max_concurrent else \
            Limits.scaled(max_concurrent)
    max_concurrent = limits.max_concurrent
    if max_message_bytes <= 0 or max_inflight_bytes < max_message_bytes:
        raise InvalidArgument(
            f"the in-flight budget ({max_inflight_bytes >> 20} MiB) must hold at least one "
            f"object of the largest size ({max_message_bytes >> 20} MiB)")
    metrics = metrics or Metrics()
    options = [
        ("grpc.max_receive_message_length", _transport_limit(max_message_bytes)),
        ("grpc.max_send_message_length", _transport_limit(max_message_bytes)),
        ("grpc.so_reuseport", 0),  # no silent port sharing with another server
    ]
    threads = max(workers, max_concurrent + RESERVE_THREADS + JOB_THREADS)
    # grpc's own cap only bounds a flood (each refused call holds a thread briefly).
    calls = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rpc")
    server = grpc.server(calls, options=options, maximum_concurrent_rpcs=threads)
    metrics.watch_queue(lambda: float(store.queued))
    address = f"{host}:{port}"
    try:
        if tls is None:
            bound = server.add_insecure_port(address)
        else:
            creds = grpc.ssl_server_credentials(
                [(tls.key.read_bytes(), tls.cert.read_bytes())],
                root_certificates=tls.client_ca.read_bytes() if tls.client_ca else None,
                require_client_auth=tls.client_ca is not None,
            )
            bound = server.add_secure_port(address, creds)
    except RuntimeError as exc:
        raise StorageError(f"cannot listen on {address}: {exc} (is the port taken?)") from None
    except OSError as exc:
        raise InvalidArgument(f"TLS files: {exc}") from None
    if bound == 0:
        raise StorageError(f"cannot listen on {address}: the port is taken or not allowed")
    owns_archive = archive is None
    if archive is None:
        if is_s3_url(store.data_path):
            raise InvalidArgument("a store in object storage keeps no audit trail beside its "
                                  "data files: open its Archive (waveform serve: in the "
                                  "PostgreSQL catalog) and pass it")
        archive = Archive.open(store, Path(store.data_path).parent / "audit")
    admission = Admission(limits)
    intake = Intake(store, archive, InflightBudget(max_inflight_bytes, Trimmer()))
    service = EcgArchive(store, archive, identities, metrics, admission=admission,
                         intake=intake, max_message_bytes=max_message_bytes)
    records = PatientRecords(store, archive, identities, metrics, admission=admission,
                             intake=intake, max_message_bytes=max_message_bytes)
    pb_grpc.add_EcgArchiveServicer_to_server(service, server)
    rpb_grpc.add_PatientRecordsServicer_to_server(records, server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, RECORDS_SERVICE_NAME,
         health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server)
    server.start()
    for name in HEALTH_NAMES:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    running = Server(server, bound, health_servicer, service, store, owns_store, archive,
                     owns_archive, calls)
    running.watch_health()
    return running


class _JsonLines(logging.Formatter):
    """One JSON object a line; `extra` fields become keys."""

    _STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
                               "level": record.levelname, "logger": record.name,
                               "msg": record.getMessage()}
        for key, value in vars(record).items():
            if key not in self._STANDARD:
                doc[key] = value
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLines())
    root = logging.getLogger("waveform")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def run_until_signalled(server: Server, grace_s: float = 30.0,
                        first: Callable[[], object] | None = None) -> None:
    """Block until SIGTERM or SIGINT, then stop gracefully. ``first`` runs once the
    signals are taken (a signal during it stops the server when it returns)."""
    done = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        logging.getLogger("waveform.service").info(
            "stopping", extra={"signal": signal.Signals(signum).name})
        done.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if first is not None and not done.is_set():
            first()
        # Short waits: the kernel may deliver the signal to any of the process's
        # threads, and then nothing interrupts a wait without a timeout on the main
        # thread, where Python runs the handler (a stop in about 50 under ingest
        # never began).
        while not done.wait(0.25):
            pass
    finally:
        server.stop(grace_s)
        for s, handler in previous.items():
            signal.signal(s, handler)
