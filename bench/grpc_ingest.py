"""gRPC ingest on loopback: the archive server beside a do-nothing server (the ceiling).

The servers run in their own processes (``python -m bench.grpc_ingest --serve``);
the callers are threads of this process, one channel each. Payloads are 12-lead
10 s 500 Hz ECGs made by our encoder, every one with its own SOP Instance UID
(so each is really stored, durably, before it is answered). The archive server
runs without its measurement stage here; the background measurement rate is
measured separately, in this process (catching up on stored ECGs), as a wall
rate and per core (ECGs per CPU-second of the process).

Targets (issue 5): IngestStream >= 2,000 ECGs/s and >= 25% of the streaming
ceiling; unary >= 1,000 ECGs/s; measurement >= 400 ECGs/s per core; GetTrace of
a whole 12-lead ECG p50 <= 10 ms end to end. A missed target is printed with the
shortfall and a profile: of the server process for a missed ingest target (a
separate run under cProfile, every thread), of the measurement stage's threads for
a missed measurement target.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._util import fmt_time, table

ROOT = Path(__file__).resolve().parent.parent

TARGET_STREAM = 2000.0
TARGET_STREAM_SHARE = 0.25
TARGET_UNARY = 1000.0
TARGET_MEASURE = 400.0
TARGET_TRACE_S = 0.010
_OPTIONS = [("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.use_local_subchannel_pool", 1)]  # one connection per caller


# ------------------------------------------------------------------- payloads
class Payloads:
    """Distinct encoded ECGs made on demand: a few encoded bases whose SOP Instance
    UID bytes are replaced by a fresh UID of the same length (no re-encoding).

    The bases are our encoder's 12-lead object carrying LUDB samples, as in
    ``bench/store.py`` (synthetic samples carry full-resolution noise and compress
    2.7x worse than recorded ECGs, docs/storage.md); synthetic ECGs without LUDB.
    """

    def __init__(self, n_bases: int = 8) -> None:
        from bench.store import _base_objects
        from waveform.dicom import decode

        self.bases: list[tuple[bytes, bytes]] = [
            (data, decode(data).sop_instance_uid.encode()) for data in _base_objects(n_bases)
        ]
        self._count = itertools.count()
        self._run = time.time_ns() % 10**9

    def uid(self, i: int, length: int) -> bytes:
        digits = length - len("2.25.")
        body = f"{self._run:09d}{i:0{digits - 10}d}"
        return f"2.25.1{body}"[:length].encode()

    def next(self) -> bytes:
        i = next(self._count)
        data, uid = self.bases[i % len(self.bases)]
        return data.replace(uid, self.uid(i, len(uid)))

    @property
    def size(self) -> int:
        return len(self.bases[0][0])


# --------------------------------------------------------------------- servers
def _serve(mode: str, data_dir: str, tokens: str, profile: str | None) -> None:
    """The server process: print the port, serve until SIGTERM, dump the profile."""
    import grpc

    from waveform.service._proto.waveform.v1 import archive_pb2 as pb
    from waveform.service._proto.waveform.v1 import archive_pb2_grpc as pb_grpc

    profilers: list[Any] = []
    if profile:
        import cProfile

        lock = threading.Lock()

        def per_thread(frame: Any, event: str, arg: Any) -> None:
            # Python 3.11's cProfile sees one thread: give each new thread its own.
            p = cProfile.Profile(time.thread_time)  # CPU time: waits and other threads excluded
            with lock:
                profilers.append(p)
            p.enable()

        threading.setprofile(per_thread)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if mode == "null":

        class Null(pb_grpc.EcgArchiveServicer):
            def Ingest(self, request: Any, context: Any) -> Any:
                return pb.IngestResponse()

            def IngestStream(self, requests: Any, context: Any) -> Iterator[Any]:
                for _ in requests:
                    yield pb.IngestResponse()

        server = grpc.server(ThreadPoolExecutor(32), options=_OPTIONS[:2],
                             maximum_concurrent_rpcs=256)
        pb_grpc.add_EcgArchiveServicer_to_server(Null(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        print(port, flush=True)
        stop.wait()
        server.stop(1).wait()
    else:
        from waveform.service.identity import TokenIdentities
        from waveform.service.server import start
        from waveform.store import Store

        store = Store.open(data_dir, analyze=None)
        srv = start(store, TokenIdentities.load(tokens), port=0)
        print(srv.port, flush=True)
        stop.wait()
        srv.stop(5)
        store.close()
    if profile:
        threading.setprofile(None)
        for p in profilers:
            p.disable()
        stats = [p for p in profilers if p.getstats()]
        if stats:
            pstats.Stats(*stats).dump_stats(profile)


@dataclass
class _Proc:
    proc: subprocess.Popen[str]
    address: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _spawn(mode: str, root: Path, tokens: Path, profile: Path | None = None
           ) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "bench.grpc_ingest", "--serve", mode,
            "--data", str(root / f"data-{mode}-{time.monotonic_ns()}"), "--tokens", str(tokens)]
    if profile is not None:
        argv += ["--profile", str(profile)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=ROOT)


def _ready(proc: subprocess.Popen[str], timeout_s: float = 120.0) -> _Proc:
    line: list[str] = []
    out = proc.stdout
    assert out is not None
    t = threading.Thread(target=lambda: line.append(out.readline()), daemon=True)
    t.start()
    t.join(timeout_s)
    if not line or not line[0].strip().isdigit():
        proc.kill()
        raise RuntimeError(f"the benchmark server did not start within {timeout_s} s")
    return _Proc(proc, f"127.0.0.1:{int(line[0])}")


# --------------------------------------------------------------------- callers
def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``; nan elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    kind: str
    callers: int
    count: int
    seconds: float
    latencies: list[float]
    errors: int
    #: CPU seconds the server process spent during the run (every thread).
    server_cpu: float = float("nan")

    @property
    def cpu_per_call(self) -> float:
        return self.server_cpu / self.count if self.count else float("nan")

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")


def _ingest(address: str, token: str, kind: str, callers: int, seconds: float,
            payloads: Payloads, server_pid: int | None = None) -> Run:
    import grpc

    from waveform.service._proto.waveform.v1 import archive_pb2 as pb
    from waveform.service._proto.waveform.v1 import archive_pb2_grpc as pb_grpc

    meta = [("authorization", f"Bearer {token}")]
    latencies: list[float] = []
    counts = [0] * callers
    errors = [0] * callers
    start = threading.Barrier(callers + 1)
    deadline = [0.0]

    def unary(k: int, stub: Any) -> None:
        start.wait()
        while time.perf_counter() < deadline[0]:
            req = pb.IngestRequest(dicom=payloads.next())
            t0 = time.perf_counter()
            try:
                stub.Ingest(req, metadata=meta, timeout=60)
            except grpc.RpcError:
                errors[k] += 1
                continue
            latencies.append(time.perf_counter() - t0)
            counts[k] += 1

    def stream(k: int, stub: Any) -> None:
        sent: collections.deque[float] = collections.deque()

        def requests() -> Iterator[Any]:
            while time.perf_counter() < deadline[0]:
                req = pb.IngestRequest(dicom=payloads.next())
                sent.append(time.perf_counter())
                yield req

        start.wait()
        for r in stub.IngestStream(requests(), metadata=meta, timeout=120):
            latencies.append(time.perf_counter() - sent.popleft())
            if r.HasField("error"):
                errors[k] += 1
            else:
                counts[k] += 1

    channels = [grpc.insecure_channel(address, options=_OPTIONS) for _ in range(callers)]
    try:
        stubs = [pb_grpc.EcgArchiveStub(c) for c in channels]
        for c in channels:
            grpc.channel_ready_future(c).result(timeout=30)
        fn = unary if kind == "unary" else stream
        with ThreadPoolExecutor(callers) as pool:
            futures = [pool.submit(fn, k, stubs[k]) for k in range(callers)]
            deadline[0] = time.perf_counter() + seconds
            cpu0 = _cpu_seconds(server_pid) if server_pid else float("nan")
            t0 = time.perf_counter()
            start.wait()
            for f in futures:
                f.result()
            elapsed = time.perf_counter() - t0
            cpu = (_cpu_seconds(server_pid) if server_pid else float("nan")) - cpu0
    finally:
        for c in channels:
            c.close()
    return Run(kind, callers, sum(counts), elapsed, latencies, sum(errors), cpu)


def _trace_p50(address: str, token: str, uids: list[str], repeat: int) -> float:
    import grpc
    import numpy as np

    from waveform.service._proto.waveform.v1 import archive_pb2 as pb
    from waveform.service._proto.waveform.v1 import archive_pb2_grpc as pb_grpc

    meta = [("authorization", f"Bearer {token}")]
    times = []
    with grpc.insecure_channel(address, options=_OPTIONS) as channel:
        stub = pb_grpc.EcgArchiveStub(channel)
        for i in range(repeat + 2):
            t0 = time.perf_counter()
            chunks = list(stub.GetTrace(pb.GetTraceRequest(sop_instance_uid=uids[i % len(uids)]),
                                        metadata=meta, timeout=30))
            n = len(chunks[0].leads)
            x = np.concatenate([np.frombuffer(c.data, "<f4").reshape(n, c.samples)
                                for c in chunks], axis=1)
            if i >= 2:  # the first calls open files and warm caches
                times.append(time.perf_counter() - t0)
            assert x.shape[0] == 12
    return statistics.median(times)


def _stored_uids(address: str, token: str, payloads: Payloads, n: int) -> list[str]:
    import grpc

    from waveform.service._proto.waveform.v1 import archive_pb2 as pb
    from waveform.service._proto.waveform.v1 import archive_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address, options=_OPTIONS) as channel:
        stub = pb_grpc.EcgArchiveStub(channel)
        return [stub.Ingest(pb.IngestRequest(dicom=payloads.next()),
                            metadata=[("authorization", f"Bearer {token}")],
                            timeout=30).sop_instance_uid for _ in range(n)]


@dataclass
class Measured:
    """The measurement stage catching up: wall rate, and ECGs per CPU-second of the
    whole process (its two threads and everything else; the "per core" rate)."""

    count: int
    seconds: float
    cpu_seconds: float
    profile: str = ""

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    @property
    def per_core(self) -> float:
        return self.count / self.cpu_seconds


def measurement_rate(root: Path, payloads: Payloads, n: int, profile: bool = False) -> Measured:
    """The background measurement stage catching up on ``n`` stored ECGs."""
    from waveform.analysis import analyze
    from waveform.dicom import decode
    from waveform.store import Store

    data_dir = root / f"measure-{time.monotonic_ns()}"
    with Store.open(data_dir, analyze=None) as store:
        store.ingest([payloads.next() for _ in range(n)], "org-bench")
    analyze(decode(payloads.next()))  # load the compiled kernels before timing
    profilers: list[Any] = []
    if profile:
        import cProfile

        def per_thread(frame: Any, event: str, arg: Any) -> None:
            if threading.current_thread().name.startswith("waveform-measure"):
                p = cProfile.Profile(time.thread_time)  # CPU, not waits
                profilers.append(p)
                p.enable()

        threading.setprofile(per_thread)
    try:
        with Store.open(data_dir) as store:  # catch-up queues all n; measuring starts now
            t0, c0 = time.perf_counter(), time.process_time()
            store.wait_measured(600)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        threading.setprofile(None)
    text = ""
    if profilers:
        stats = pstats.Stats(*[p for p in profilers if p.getstats()])
        rows = sorted(((tt, ct, nc, f"{Path(f).name}:{line}({func})")
                       for (f, line, func), (_cc, nc, tt, ct, _c) in stats.stats.items()  # type: ignore[attr-defined]
                       ), reverse=True)[:15]
        text = table(["own CPU", "cumulative", "calls", "function"],
                     [[f"{tt:.3f} s", f"{ct:.3f} s", nc, name] for tt, ct, nc, name in rows])
    return Measured(n, elapsed, cpu, text)


#: Functions where threads wait rather than work (locks, queues, the gRPC poller).
_WAITING = ("acquire", "'get' of '_queue", "wait", "_serve", "sleep", "poll",
            "_raise_or_start_receive_message", "_next", "result")
#: Stages of an ingest, by function name, for the summary of where the time goes.
_STAGES = (("decode + prepare rows (callers' threads)", "prepare"),
           ("  sample codec", "encode_samples"),
           ("group staging (writer's staging thread)", "_stage"),
           ("  Arrow tables", "tables"), ("  Parquet encoding", "_parquet_bytes"),
           ("  fsync of files", "fsync"), ("  fsync of directories", "fsync_dir"),
           ("group commit (writer's commit thread)", "commit_group"),
           ("  catalog (DuckDB)", "execute"),
           ("authentication", "authenticate"), ("logging the call", "finish"))


def _profile_top(path: Path, n: int = 18) -> str:
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    by_name: dict[str, float] = {}
    busy = []
    waiting = 0.0
    for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.items():
        for _, name in _STAGES:
            if name == func or (func.startswith("<") and f".{name}>" in func):
                by_name[name] = max(by_name.get(name, 0.0), ct)
        if any(w in func for w in _WAITING):
            waiting += tt
            continue
        busy.append((tt, ct, nc, f"{Path(file).name}:{line}({func})"))
    busy.sort(reverse=True)
    total = sum(b[0] for b in busy)
    lines = [table(["stage", "cumulative"],
                   [[label, f"{by_name[name]:.3f} s"] for label, name in _STAGES
                    if name in by_name]), "",
             f"busy time {total:.3f} s over every thread (waiting in locks, queues and the "
             f"gRPC poller, {waiting:.3f} s, left out); top functions by own time:",
             table(["own", "cumulative", "calls", "function"],
                   [[f"{tt:.3f} s", f"{ct:.3f} s", nc, name] for tt, ct, nc, name in busy[:n]])]
    return "\n".join(lines)


# ------------------------------------------------------------------------ main
def main(small: bool = False) -> None:
    from waveform.service.identity import Identity, add_token

    seconds = 0.2 if small else 3.0
    levels = (2,) if small else (1, 4, 16)
    payloads = Payloads(2 if small else 8)
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp:
        root = Path(tmp)
        tokens_file = root / "tokens.json"
        token = add_token(tokens_file, Identity("org-bench", "cart-bench", "device"))
        reader = add_token(tokens_file, Identity("org-bench", "dr-bench", "clinician"))
        # Small runs (the test suite) profile the archive server all along, to save a
        # process start; full runs measure unprofiled and profile a separate run.
        prof = root / "server.prof"
        procs = {"null": _spawn("null", root, tokens_file),
                 "archive": _spawn("archive", root, tokens_file, prof if small else None)}
        servers: dict[str, _Proc] = {}
        # Small runs measure the measurement stage while the servers start (the
        # figures of small runs are not the point); full runs do it on a quiet machine.
        measured = measurement_rate(root, payloads, 4) if small else None
        try:
            for mode, proc in procs.items():
                servers[mode] = _ready(proc)
                for kind in ("unary", "stream"):  # connections, caches, compiled kernels
                    _ingest(servers[mode].address, token, kind, 2, 0.05 if small else 0.5,
                            payloads)
            rows = []
            results: dict[tuple[str, int], tuple[Run, Run]] = {}
            for kind in ("unary", "stream"):
                for callers in levels:
                    ours = _ingest(servers["archive"].address, token, kind, callers, seconds,
                                   payloads, servers["archive"].proc.pid)
                    ceiling = _ingest(servers["null"].address, token, kind, callers, seconds,
                                      payloads, servers["null"].proc.pid)
                    results[(kind, callers)] = (ours, ceiling)
                    rows.append([
                        f"{'Ingest' if kind == 'unary' else 'IngestStream'} x{callers}",
                        f"{ours.rate:,.0f}/s", fmt_time(ours.pct(0.5)), fmt_time(ours.pct(0.99)),
                        fmt_time(ours.cpu_per_call),
                        f"{ceiling.rate:,.0f}/s", fmt_time(ceiling.pct(0.5)),
                        fmt_time(ceiling.cpu_per_call),
                        f"{ours.rate / ceiling.rate:.2f}" if ceiling.rate else "-",
                        ours.errors,
                    ])
            uids = _stored_uids(servers["archive"].address, token, payloads, 4)
            trace = _trace_p50(servers["archive"].address, reader, uids, 8 if small else 60)
        finally:
            for s in servers.values():
                s.stop()
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
        if measured is None:
            measured = measurement_rate(root, payloads, 300)

        print(f"12-lead 10 s 500 Hz ECGs of {payloads.size / 1000:.0f} KB, loopback, "
              f"{seconds:g} s a run; every archive answer is after a durable commit")
        print(table(["call x callers", "archive", "p50", "p99", "server CPU/ECG", "do-nothing",
                     "p50", "server CPU/call", "ratio", "errors"], rows))
        print("(server CPU: user + system time of the server process over the run, every "
              "thread, per answer; steadier than rates on a shared machine)")
        print()
        print(table(["operation", "ours", "target"], [
            ["GetTrace whole 12-lead 10 s, p50 end to end", fmt_time(trace),
             fmt_time(TARGET_TRACE_S)],
            ["background measurement, catch-up (wall)", f"{measured.rate:,.0f} ECGs/s", ""],
            ["background measurement per core (ECGs per CPU-second)",
             f"{measured.per_core:,.0f} ECGs/s", f"{TARGET_MEASURE:,.0f} ECGs/s"],
        ]))

        best_stream = max((results[("stream", c)] for c in levels), key=lambda r: r[0].rate)
        best_unary = max((results[("unary", c)] for c in levels), key=lambda r: r[0].rate)
        misses = []
        if best_stream[0].rate < TARGET_STREAM:
            misses.append(f"IngestStream {best_stream[0].rate:,.0f}/s is "
                          f"{TARGET_STREAM - best_stream[0].rate:,.0f}/s "
                          f"({1 - best_stream[0].rate / TARGET_STREAM:.0%}) under "
                          f"{TARGET_STREAM:,.0f}/s")
        share = best_stream[0].rate / best_stream[1].rate if best_stream[1].rate else 0.0
        if share < TARGET_STREAM_SHARE:
            misses.append(f"IngestStream reaches {share:.0%} of its ceiling "
                          f"(target {TARGET_STREAM_SHARE:.0%})")
        if best_unary[0].rate < TARGET_UNARY:
            misses.append(f"Ingest {best_unary[0].rate:,.0f}/s is "
                          f"{TARGET_UNARY - best_unary[0].rate:,.0f}/s "
                          f"({1 - best_unary[0].rate / TARGET_UNARY:.0%}) under "
                          f"{TARGET_UNARY:,.0f}/s")
        if measured.per_core < TARGET_MEASURE:
            misses.append(f"measurement {measured.per_core:,.0f}/s per core is "
                          f"{TARGET_MEASURE - measured.per_core:,.0f}/s "
                          f"({1 - measured.per_core / TARGET_MEASURE:.0%}) under "
                          f"{TARGET_MEASURE:,.0f}/s")
        if trace > TARGET_TRACE_S:
            misses.append(f"GetTrace p50 {fmt_time(trace)} is "
                          f"{fmt_time(trace - TARGET_TRACE_S)} over {fmt_time(TARGET_TRACE_S)}")
        print()
        if not misses:
            print("every target met")
            return
        print("targets missed:")
        for m in misses:
            print(f"  - {m}")
        missed = {m.split()[0] for m in misses}
        for kind, name, best in (("stream", "IngestStream", best_stream),
                                 ("unary", "Ingest", best_unary)):
            if name not in missed:
                continue
            callers = best[0].callers
            what = "the whole small run"
            if small and kind == "unary":
                continue  # one profile of the small run: printed for the stream
            if not small:
                prof = root / f"server-{kind}.prof"
                server = _ready(_spawn("archive", root, tokens_file, prof))
                try:
                    _ingest(server.address, token, kind, 2, 0.5, payloads)
                    run = _ingest(server.address, token, kind, callers, seconds, payloads)
                finally:
                    server.stop()
                what = f"{name} x{callers}, {run.rate:,.0f}/s under the profiler"
            print(f"\nwhere the archive server's time goes ({what}; cProfile in every thread):")
            print(_profile_top(prof, 12 if small else 25) if prof.exists()
                  else "  (no profile was written)")
        if "measurement" in missed:
            if not small:
                measured = measurement_rate(root, payloads, 300, profile=True)
            print(f"\nwhere the measurement stage's CPU goes ({measured.count} ECGs; cProfile "
                  "of its two threads):")
            print(measured.profile or "  (not profiled in small runs)")


def _cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.grpc_ingest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true")
    p.add_argument("--serve", choices=("null", "archive"), help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--tokens", help=argparse.SUPPRESS)
    p.add_argument("--profile", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        _serve(args.serve, args.data, args.tokens, args.profile)
    else:
        main(small=args.small)
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
