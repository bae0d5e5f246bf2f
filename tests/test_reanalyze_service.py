"""Re-analysis inside a running server (the Reanalyze RPC and `waveform reanalyze
--server`), while the service ingests.

A real server on 127.0.0.1 holds an embedded store whose measurement stage is
off, so the ECGs stored lack a summary of the current analysis version until a
job measures them (one test turns the stage on to race it). Each test works on
ECGs of an organisation of its own and runs its jobs filtered to it, so the
tests do not depend on one another's summaries. Jobs run on real worker
processes (1 worker, small units and commits, so that a job spans many unit
boundaries and commits in a second or two).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest

from tests.conftest import interruptible
from waveform.analysis import ANALYSIS_VERSION
from waveform.cli import main
from waveform.reanalyze.compare import MEASUREMENTS, compare
from waveform.reanalyze.testing import objects
from waveform.service._proto.waveform.v1 import archive_pb2 as pb
from waveform.service._proto.waveform.v1 import archive_pb2_grpc as pb_grpc
from waveform.service.convert import comparison_from_message
from waveform.service.identity import Identity, TokenIdentities, add_token
from waveform.service.server import Server, start
from waveform.store import Store
from waveform.store.lake import ALIAS
from waveform.store.schema import SUMMARY

ROOT = Path(__file__).resolve().parent.parent
VERSION = str(ANALYSIS_VERSION)
#: Every call and wait of these tests ends within this (seconds).
DEADLINE = 180.0
#: A job that spans many unit boundaries and commits; a run that finishes the rest.
SMALL: dict[str, Any] = {"workers": 1, "unit_ecgs": 2, "commit_rows": 2}
RERUN: dict[str, Any] = {"workers": 1, "unit_ecgs": 8, "commit_rows": 16}

CALLERS = {
    "admin": Identity("org-a", "ops", "admin"),
    "clinician": Identity("org-r", "dr-r", "clinician"),
    "auditor": Identity("org-a", "audit", "auditor"),
    "cart_r": Identity("org-r", "cart-r", "device"),
    "cart_m": Identity("org-m", "cart-m", "device"),
}


@dataclass
class Service:
    server: Server
    tokens: dict[str, str]
    channel: grpc.Channel = field(init=False)
    stub: Any = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.server.address)
        self.stub = pb_grpc.EcgArchiveStub(self.channel)

    @property
    def store(self) -> Store:
        return self.server.store

    def md(self, who: str) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.tokens[who]}")]

    def reanalyze(self, who: str = "admin", **request: Any) -> Any:
        return self.stub.Reanalyze(pb.ReanalyzeRequest(**request), metadata=self.md(who),
                                   timeout=DEADLINE)

    def close(self) -> None:
        self.channel.close()
        self.server.stop(DEADLINE)


def _tokens(root: Path) -> tuple[Path, dict[str, str]]:
    path = root / "tokens.json"
    return path, {who: add_token(path, ident) for who, ident in CALLERS.items()}


def _serve(root: Path, store: Store, **options: Any) -> Service:
    path, tokens = _tokens(root)
    server = start(store, TokenIdentities.load(path), port=0, owns_store=True, **options)
    return Service(server, tokens)


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A server whose store does not measure, with one call slot: a job that held
    it would refuse every other call."""
    root = tmp_path_factory.mktemp("reanalyze-service")
    service = _serve(root, Store.open(root / "data", measure=False), max_concurrent=1)
    yield service
    service.close()


def _stored(store: Store, n: int, org: str, seed: int) -> list[str]:
    """``n`` new ECGs of ``org`` stored without a summary; their UIDs."""
    results = store.ingest(objects(n, seed=seed), org)
    assert not any(r.already_stored for r in results)
    return [r.sop_instance_uid for r in results]


def _summaries(store: Store, org: str) -> dict[str, int]:
    """Summaries of the current version of each stored ECG of ``org``."""
    rows = store.sql(
        f"SELECT e.sop_instance_uid, count(s.sop_instance_uid) FROM {ALIAS}.ecg e "
        f"LEFT JOIN {ALIAS}.summary s ON s.sop_instance_uid = e.sop_instance_uid "
        "AND s.analysis_version = ? WHERE e.organisation = ? GROUP BY ALL", [VERSION, org])
    return {uid: int(n) for uid, n in rows}


def _finish(call: Any) -> list[Any]:
    messages = list(call)
    finals = [m for m in messages if m.final]
    assert finals == [messages[-1]], "exactly one final message, the last"
    return messages


def _wait_until_idle(s: Service) -> None:
    """The server's job is over (its thread ended, its workers shut down)."""
    t0 = time.monotonic()
    while s.server.service.reanalysis.running:
        assert time.monotonic() - t0 < DEADLINE, "the job did not stop"
        time.sleep(0.05)
    assert multiprocessing.active_children() == [], "a worker process outlived its job"


def _code(e: grpc.RpcError) -> grpc.StatusCode:
    return e.code()


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize("who", ["clinician", "auditor", "cart_r"])
def test_only_an_admin_may_reanalyze_and_each_refusal_is_audited(svc: Service, who: str
                                                                 ) -> None:
    before = svc.server.archive.audit.last_seq
    with pytest.raises(grpc.RpcError) as e:
        list(svc.reanalyze(who, where=["nonsense"]))  # the role is checked first
    assert _code(e.value) == grpc.StatusCode.PERMISSION_DENIED
    assert "may not reanalyze (role admin only)" in e.value.details()
    events = svc.server.archive.audit.query(after_seq=before)
    assert [(ev["user"], ev["action"], ev["outcome"], ev["rule"]) for ev in events] == [
        (CALLERS[who].user, "reanalyze", "denied", "role")]
    assert not svc.server.service.reanalysis.running


@pytest.mark.parametrize(("request_", "message"), [
    ({"where": ["organisation=org-r", "colour=red"]}, "filter 'colour=red': no ecg column"),
    ({"where": ["organisation"]}, "filter 'organisation' is not COLUMN OP VALUE"),
    ({"where": ["sha256=ab"]}, "filter 'sha256=ab': no ecg column 'sha256'"),
    ({"engine": "spark"}, "engine 'spark': expected one of local, dask"),
    ({"scheduler": "tcp://10.0.0.5:8786"}, "scheduler 'tcp://10.0.0.5:8786' .* needs engine "
                                           "'dask'"),
    ({"workers": -1}, "workers -1: expected 0"),
    ({"workers": 100_000}, "workers 100000: expected 0"),
    ({"unit_ecgs": -5}, "unit_ecgs -5: expected 0"),
    ({"commit_rows": 1_000_000}, "commit_rows 1000000: expected 0 .* to 16384"),
], ids=["column", "no-operator", "digest-column", "engine", "scheduler-without-dask",
        "negative-workers", "too-many-workers", "unit", "commit"])
def test_a_bad_request_is_invalid_argument_naming_what_is_wrong(
        svc: Service, request_: dict[str, Any], message: str) -> None:
    before = svc.server.archive.audit.last_seq
    with pytest.raises(grpc.RpcError) as e:
        list(svc.reanalyze(**request_))
    assert _code(e.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, e.value.details()), e.value.details()
    events = svc.server.archive.audit.query(after_seq=before)
    assert [(ev["action"], ev["outcome"], ev["rule"]) for ev in events] == [
        ("reanalyze", "failed", "InvalidArgument")]
    assert not svc.server.service.reanalysis.running


def test_a_scheduler_that_cannot_be_reached_is_unavailable(svc: Service) -> None:
    dask = pytest.importorskip("dask")
    pytest.importorskip("distributed")
    org = "org-s"
    _stored(svc.store, 2, org, seed=10)
    unreachable = {"engine": "dask", "scheduler": "tcp://127.0.0.1:9"}
    # A job with nothing to do needs no workers: it ends without reaching them.
    messages = _finish(svc.reanalyze(where=["organisation=nobody"], **unreachable))
    final = messages[-1]
    assert (final.planned, final.committed) == (0, 0)
    assert messages[0].note.endswith("planning (the workers start only if there is work)")
    assert not any(m.note.startswith("starting the") for m in messages)
    _wait_until_idle(svc)
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), \
            pytest.raises(grpc.RpcError) as e:
        list(svc.reanalyze(where=[f"organisation={org}"], **unreachable))
    assert _code(e.value) == grpc.StatusCode.UNAVAILABLE
    assert e.value.details().startswith(
        "the dask engine could not start its workers with the scheduler at "
        "tcp://127.0.0.1:9: OSError: ")
    assert e.value.details().endswith("; nothing was measured")
    _wait_until_idle(svc)


def test_failures_and_unread_ecgs_reach_the_command_line_report_in_full(tmp_path: Path
                                                                        ) -> None:
    """The stream's protocol end to end, without a server: the job's feed splits
    long failure lists over messages, and the command line's follower rebuilds
    the job's own report from them."""
    import io

    from waveform.cli.reanalyze import Follower
    from waveform.client._messages import reanalyze_status
    from waveform.reanalyze.engines import LocalEngine
    from waveform.reanalyze.job import JobResult
    from waveform.reanalyze.progress import LogLines
    from waveform.service.reanalysis import ENTRIES_PER_MESSAGE, Reanalysis, job_options

    with Store.open(tmp_path / "data", analyze=None, measure=False) as store:
        jobs = Reanalysis(store)
        job = jobs.begin(job_options(pb.ReanalyzeRequest(workers=1)), CALLERS["admin"])
        assert isinstance(job.engine, LocalEngine)  # made, not started: no process yet
        jobs.cancel(job)
    assert not jobs.running
    n_failed, n_unread = 2 * ENTRIES_PER_MESSAGE + 7, ENTRIES_PER_MESSAGE + 1
    result = JobResult(job.version, planned=5000, files=3, units=20, committed=4990,
                       commits=5, skipped=10, seconds=12.5,
                       failed=[(f"1.2.{i}", f"ValueError: beat {i}") for i in range(n_failed)],
                       unread=[(f"1.3.{i}", "worker failed") for i in range(n_unread)])
    feed = job.feed
    assert job.describe().endswith("1 worker, planning")
    feed.starting = True  # as while `_start_engine` waits for the workers
    assert job.describe().endswith("1 worker, starting its workers")
    feed.starting = False
    feed.start(5000)
    feed.advance(5000)
    assert job.describe().endswith("1 worker, pass 1: 5000/5000 ECGs")
    feed.committed(dataclasses.replace(result, failed=result.failed[:5], unread=[]))
    feed.end(result)
    messages: list[pb.ReanalyzeProgress] = []
    while not job.messages.empty():
        item = job.messages.get_nowait()
        assert isinstance(item, pb.ReanalyzeProgress)  # the job's end is the thread's
        messages.append(item)
    assert all(len(m.failed_ecgs) <= ENTRIES_PER_MESSAGE and
               len(m.unread_ecgs) <= ENTRIES_PER_MESSAGE for m in messages)
    assert [m.final for m in messages].count(True) == 1 and messages[-1].final

    stream = io.StringIO()
    follower = Follower(LogLines(stream, every_s=3600), verbose=True)
    for m in messages:
        follower.show(reanalyze_status(m))
    assert follower.result is not None
    assert follower.result.failed == result.failed
    assert follower.result.unread == result.unread
    assert follower.result.lines() == result.lines()
    assert "reanalyze: 5000/5000 ECGs (100%)" in stream.getvalue()
    assert "reanalyze: committed: 4990 summaries in 5 commits" in stream.getvalue()


# ------------------------------------------------------------------ the job


@dataclass
class _Ingester:
    """A device sending ECGs one call at a time until told to stop."""

    svc: Service
    who: str
    data: list[bytes]
    acked: list[tuple[float, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for data in self.data:
            if self.stop.is_set():
                return
            try:
                r = self.svc.stub.Ingest(pb.IngestRequest(dicom=data),
                                         metadata=self.svc.md(self.who), timeout=60)
            except grpc.RpcError as e:
                self.errors.append(f"{_code(e).name}: {e.details()}")
            else:
                self.acked.append((time.monotonic(), r.sop_instance_uid))
            time.sleep(0.05)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(DEADLINE)


def test_reanalysis_while_the_service_ingests(svc: Service) -> None:
    org = "org-r"
    before = _stored(svc.store, 24, org, seed=1)
    seq = svc.server.archive.audit.last_seq
    ingest = _Ingester(svc, "cart_r", objects(300, seed=2))  # until the job ends
    messages, times = [], []
    try:
        for m in svc.reanalyze(where=[f"organisation={org}"], workers=1, unit_ecgs=4,
                               commit_rows=8):
            messages.append(m)
            times.append(time.monotonic())
    finally:
        ingest.finish()
    final = messages[-1]

    # Ingest went on: nothing refused (the job holds no call slot, and the server
    # has one), calls acknowledged while the job measured and committed, and
    # every acknowledged ECG is stored.
    assert ingest.errors == []
    planned_at = next(t for t, m in zip(times, messages, strict=True) if m.pass_number == 1)
    assert any(planned_at <= t <= times[-1] for t, _ in ingest.acked), \
        "no ingest was acknowledged while the job ran"
    acked = [uid for _, uid in ingest.acked]
    assert all(svc.store.contains(uid) for uid in acked)
    counts = _summaries(svc.store, org)
    assert set(before + acked) <= set(counts)

    # The job: one final message, monotone progress, every planned ECG measured once.
    assert final.final and sum(m.final for m in messages) == 1
    assert final.analysis_version == VERSION
    assert final.planned >= len(before)
    assert (final.committed, final.already_present, final.failed, final.unread) == (
        final.planned, 0, 0, 0)
    done = [m.done for m in messages if m.pass_number == 1]
    assert done == sorted(done) and done[-1] == final.planned
    assert [m.committed for m in messages] == sorted(m.committed for m in messages)
    assert final.commits >= final.planned // 8 and final.units >= final.planned // 4
    assert any("lack a summary of analysis" in m.note for m in messages)
    assert sum(m.note.startswith("starting the local engine") for m in messages) == 1
    assert all(counts[uid] == 1 for uid in before)
    assert max(counts.values()) == 1
    assert sum(counts.values()) == final.planned
    # The call was audited before the job started.
    events = svc.server.archive.audit.query(after_seq=seq, user="ops")
    assert [(ev["action"], ev["outcome"]) for ev in events] == [("reanalyze", "allowed")]

    # The ECGs acknowledged after the plan are the next run's: it measures exactly those.
    _wait_until_idle(svc)
    again = _finish(svc.reanalyze(where=[f"organisation={org}"], **RERUN))[-1]
    assert again.planned == len(counts) - final.planned
    assert again.committed == again.planned
    assert set(_summaries(svc.store, org).values()) == {1}


def test_one_job_at_a_time_and_a_cancelled_job_resumes_without_duplicates(svc: Service
                                                                          ) -> None:
    org = "org-c"
    uids = _stored(svc.store, 24, org, seed=3)
    where = [f"organisation={org}"]
    first = svc.reanalyze(where=where, **SMALL)
    seen = next(first)  # the job has started (its workers warm up)
    assert seen.note.startswith(f"analysis {VERSION} on the server")

    # A second job is refused while the first runs, with who started it and where it is.
    with pytest.raises(grpc.RpcError) as e:
        list(svc.reanalyze(where=where, **SMALL))
    assert _code(e.value) == grpc.StatusCode.FAILED_PRECONDITION
    assert "a re-analysis job is already running on this server" in e.value.details()
    assert "by admin ops of org-a" in e.value.details()
    assert "one job at a time" in e.value.details()
    # ... and the role is still checked first.
    with pytest.raises(grpc.RpcError) as e:
        list(svc.reanalyze("clinician", where=where))
    assert _code(e.value) == grpc.StatusCode.PERMISSION_DENIED

    # Cancelled once a few commits are in: the job stops at its next unit boundary.
    for m in first:
        if m.committed >= 4:
            break
    first.cancel()
    _wait_until_idle(svc)
    counts = _summaries(svc.store, org)
    measured = sum(counts.values())
    assert 4 <= measured < len(uids), "the job was not stopped mid-run"
    assert max(counts.values()) == 1

    # Run again: exactly the rest, never a second summary.
    final = _finish(svc.reanalyze(where=where, **RERUN))[-1]
    assert final.planned == len(uids) - measured
    assert (final.committed, final.already_present, final.unread) == (final.planned, 0, 0)
    counts = _summaries(svc.store, org)
    assert sorted(counts) == sorted(uids) and set(counts.values()) == {1}


def test_the_command_line_runs_the_job_in_the_server(svc: Service,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    org = "org-cli"
    uids = _stored(svc.store, 12, org, seed=4)
    server = ["--server", svc.server.address]
    args = ["reanalyze", *server, "--where", f"organisation={org}", "--workers", "1",
            "--unit", "4", "--commit", "4", "-v"]

    # Errors: one line with the status code, exit status 1; misused options, 2.
    assert main([*args, "--token", svc.tokens["clinician"]]) == 1
    assert "waveform reanalyze: PERMISSION_DENIED: " in capsys.readouterr().err
    assert main([*args, "--token", svc.tokens["admin"], "--where", "colour=red"]) == 1
    assert ("waveform reanalyze: INVALID_ARGUMENT: filter 'colour=red': no ecg column"
            in capsys.readouterr().err)
    assert main([*args, "--token", svc.tokens["admin"], "--data", "somewhere"]) == 2
    assert ("waveform reanalyze: --data and --server do not go together (it opens the "
            "archive here; --server runs the job inside the server)") in capsys.readouterr().err
    assert main([*args, "--compare", "1.0", "1.1", "--catalog", "c", "--data-path", "d"]) == 2
    assert "--catalog, --data-path and --server do not go together (they open" in \
        capsys.readouterr().err
    # The folder the server holds, opened by another process: the message points
    # at --server.
    data = Path(svc.store.data_path).parent
    r = subprocess.run([sys.executable, "-m", "waveform.cli", "reanalyze", "--data", str(data)],
                       cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE)
    assert r.returncode == 1
    assert "Could not set lock" in r.stderr
    assert "run the job inside that server with `waveform reanalyze --server HOST:PORT" in \
        r.stderr

    assert main([*args, "--token", svc.tokens["admin"]]) == 0
    out, err = capsys.readouterr()
    # The local job's display and report: lines on a pipe, one per commit with -v.
    assert f"reanalyze: 12 ECGs lack a summary of analysis {VERSION}" in err
    assert "reanalyze: committed: 4 summaries in 1 commits" in err
    assert "reanalyze: committed: 12 summaries in 3 commits" in err
    assert "reanalyze: 12/12 ECGs (100%)" in err
    assert out.startswith(f"analysis {VERSION}: 12 ECGs planned in 1 data files (3 units); "
                          "12 summaries committed in 3 commits, 0 already present, "
                          "0 failed analysis, 0 unread;")
    assert _summaries(svc.store, org) == dict.fromkeys(uids, 1)


def test_ctrl_c_on_the_command_line_stops_the_job_and_a_rerun_finishes(svc: Service) -> None:
    org = "org-int"
    uids = _stored(svc.store, 20, org, seed=5)
    cmd = interruptible("waveform.cli", "reanalyze", "--server", svc.server.address,
                        "--token", svc.tokens["admin"], "--where", f"organisation={org}",
                        "--workers", "1", "--unit", "1", "--commit", "1", "-v")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "committed: 3 summaries" in line:
                break
        else:
            pytest.fail(f"no third commit reported: {''.join(lines)}")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert "waveform reanalyze: interrupted; the summaries committed so far stay" in err
    assert out == ""
    _wait_until_idle(svc)
    counts = _summaries(svc.store, org)
    measured = sum(counts.values())
    assert 3 <= measured < len(uids) and max(counts.values()) == 1

    final = _finish(svc.reanalyze(where=[f"organisation={org}"], **RERUN))[-1]
    assert final.planned == len(uids) - measured == final.committed
    assert set(_summaries(svc.store, org).values()) == {1}


# ------------------------------------------------------- shutdown; measurement on


def test_server_shutdown_stops_the_job_and_a_rerun_finishes(tmp_path: Path) -> None:
    org = "org-s"
    store = Store.open(tmp_path / "data", measure=False)
    uids = _stored(store, 20, org, seed=6)
    s = _serve(tmp_path, store)
    try:
        call = s.reanalyze(where=[f"organisation={org}"], **SMALL)
        for m in call:
            if m.committed >= 2:
                break
        stopping = threading.Thread(target=s.server.stop, args=(DEADLINE,))
        stopping.start()
        with pytest.raises(grpc.RpcError) as e:
            list(call)
        stopping.join(DEADLINE)
    finally:
        s.close()
    assert _code(e.value) == grpc.StatusCode.UNAVAILABLE
    assert e.value.details().startswith(
        "the re-analysis stopped because the server is shutting down; ")
    assert e.value.details().endswith("call Reanalyze again to measure the rest")
    assert not s.server.service.reanalysis.running
    assert multiprocessing.active_children() == []

    again = _serve(tmp_path, Store.open(tmp_path / "data", measure=False))
    try:
        counts = _summaries(again.store, org)
        measured = sum(counts.values())
        assert 2 <= measured < len(uids) and max(counts.values()) == 1
        final = _finish(again.reanalyze(where=[f"organisation={org}"], **RERUN))[-1]
        assert final.planned == len(uids) - measured == final.committed
        assert _summaries(again.store, org) == dict.fromkeys(uids, 1)
    finally:
        again.close()


def test_with_the_measurement_stage_on_every_ecg_gets_one_summary(tmp_path: Path) -> None:
    """The realistic server: it measures at ingest and catches up on start-up, and
    the job races both; the store keeps one summary of the version per ECG."""
    org = "org-m"
    with Store.open(tmp_path / "data", analyze=None, measure=False) as offline:
        before = _stored(offline, 30, org, seed=7)
    s = _serve(tmp_path, Store.open(tmp_path / "data"))
    try:
        ingest = _Ingester(s, "cart_m", objects(20, seed=8))
        try:
            final = _finish(s.reanalyze(where=[f"organisation={org}"], workers=1,
                                        unit_ecgs=4, commit_rows=4))[-1]
        finally:
            ingest.finish()
        assert ingest.errors == []
        assert final.unread == 0
        assert final.committed + final.already_present == final.planned
        s.store.wait_measured(DEADLINE)
        counts = _summaries(s.store, org)
        acked = [uid for _, uid in ingest.acked]
        assert sorted(counts) == sorted(before + acked)
        assert set(counts.values()) == {1}
    finally:
        s.close()


# ------------------------------------------------------------ CompareVersions


def _shift(store: Store, uids: list[str], version: str) -> int:
    """Copy the current version's summaries of ``uids`` as ``version`` with QT 10 ms
    longer (60 ms on the first) and PR gone on the second; how many have a QT."""
    names = SUMMARY.names
    rows = store.sql(f"SELECT {', '.join(names)} FROM {ALIAS}.summary WHERE "
                     "analysis_version = ? AND list_contains(?, sop_instance_uid) "
                     "ORDER BY sop_instance_uid", [VERSION, uids])
    new, with_qt = [], 0
    for i, r in enumerate(rows):
        row = dict(zip(names, r, strict=True))
        doc = json.loads(row["document"])
        if doc.get("qt_ms") is not None:
            doc["qt_ms"] += 60.0 if i == 0 else 10.0
            with_qt += 1
        if i == 1:
            doc["pr_ms"] = None
        row.update(analysis_version=version, document=json.dumps(doc))
        new.append(row)
    assert len(new) == len(uids)
    store.commit_summaries(pa.Table.from_pylist(new, schema=SUMMARY))
    return with_qt


def test_versions_are_compared_in_the_server(svc: Service, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    org = "org-cmp"
    uids = _stored(svc.store, 6, org, seed=9)
    _finish(svc.reanalyze(where=[f"organisation={org}"], **RERUN))
    with_qt = _shift(svc.store, uids, "t-shift")
    assert with_qt >= 2
    seq = svc.server.archive.audit.last_seq

    answer = svc.stub.CompareVersions(
        pb.CompareVersionsRequest(old_version=VERSION, new_version="t-shift", plot=True),
        metadata=svc.md("admin"), timeout=DEADLINE)
    # The same comparison and report as one made on the store itself.
    here = compare(svc.store, VERSION, "t-shift")
    assert comparison_from_message(answer).lines() == here.lines()
    assert (answer.common_ecgs, answer.new_ecgs) == (6, 6)
    assert answer.old_ecgs == here.n_old >= 6
    by = {d.label: d for d in answer.differences}
    assert [d.label for d in answer.differences] == [m.label for m in MEASUREMENTS]
    assert by["QT"].compared == with_qt
    assert by["QT"].mean == pytest.approx(10.0 + 50.0 / with_qt)
    assert by["QT"].largest[0].new_value - by["QT"].largest[0].old_value == pytest.approx(60.0)
    assert by["QT"].largest[0].sop_instance_uid == sorted(uids)[0]
    assert (by["PR"].stopped, by["PR"].became) == (1, 0)
    assert by["QRS"].mean == 0.0 and len(by["QRS"].largest) == 0
    assert answer.plot_png[:8] == b"\x89PNG\r\n\x1a\n" and len(answer.plot_png) > 20_000
    events = svc.server.archive.audit.query(after_seq=seq, user="ops")
    assert [(ev["action"], ev["outcome"]) for ev in events] == [
        ("compare-versions", "allowed")]

    # Without a plot asked, none is drawn; top bounds the changes listed.
    short = svc.stub.CompareVersions(
        pb.CompareVersionsRequest(old_version=VERSION, new_version="t-shift", top=1),
        metadata=svc.md("admin"), timeout=DEADLINE)
    assert short.plot_png == b""
    assert max(len(d.largest) for d in short.differences) == 1

    # The command line: the same report as --data would print, the figure written.
    png = tmp_path / "changes.png"
    server = ["--server", svc.server.address, "--token", svc.tokens["admin"]]
    assert main(["reanalyze", *server, "--compare", VERSION, "t-shift", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert out == "\n".join([*here.lines(), f"plot: {png}"]) + "\n"
    assert png.read_bytes() == answer.plot_png
    assert main(["reanalyze", *server, "--compare", "t-none", "t-shift"]) == 1
    assert "no ECG has a summary of both t-none and t-shift" in capsys.readouterr().err


@pytest.mark.parametrize(("request_", "message"), [
    ({"new_version": "t-shift"}, "old_version is empty"),
    ({"old_version": "1.0.0", "new_version": " "}, "new_version is empty"),
    ({"old_version": "1.0.0", "new_version": "1.0.0"}, "both '1.0.0': name two versions"),
    ({"old_version": "a", "new_version": "b", "top": -1}, "top -1: expected 0"),
    ({"old_version": "a", "new_version": "b", "top": 1001}, "top 1001: expected 0"),
])
def test_compare_versions_refuses_bad_requests(svc: Service, request_: dict[str, Any],
                                               message: str) -> None:
    seq = svc.server.archive.audit.last_seq
    with pytest.raises(grpc.RpcError) as e:
        svc.stub.CompareVersions(pb.CompareVersionsRequest(**request_),
                                 metadata=svc.md("admin"), timeout=DEADLINE)
    assert _code(e.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert message in e.value.details()
    events = svc.server.archive.audit.query(after_seq=seq, user="ops")
    assert [(ev["action"], ev["outcome"]) for ev in events] == [("compare-versions", "failed")]


@pytest.mark.parametrize("who", ["clinician", "auditor", "cart_r"])
def test_only_an_admin_may_compare_versions(svc: Service, who: str) -> None:
    seq = svc.server.archive.audit.last_seq
    with pytest.raises(grpc.RpcError) as e:
        svc.stub.CompareVersions(pb.CompareVersionsRequest(old_version="a", new_version="b"),
                                 metadata=svc.md(who), timeout=DEADLINE)
    assert _code(e.value) == grpc.StatusCode.PERMISSION_DENIED
    assert "may not compare versions (role admin only)" in e.value.details()
    events = svc.server.archive.audit.query(after_seq=seq, user=CALLERS[who].user)
    assert [(ev["action"], ev["outcome"], ev["rule"]) for ev in events] == [
        ("compare-versions", "denied", "role")]
