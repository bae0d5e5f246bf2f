"""Batch re-analysis: plan, workers, engines (local pool and Dask), resumption, compare.

One archive of a few hundred ECGs is ingested without summaries once for the
module; each test measures it under its own analysis version, so the tests do
not depend on one another's summaries.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import Backend, interruptible
from waveform.analysis import ANALYSIS_VERSION
from waveform.cli import main
from waveform.cli.progress import Bar
from waveform.dicom import decode
from waveform.errors import InvalidArgument
from waveform.reanalyze import (
    Engine,
    LocalEngine,
    UnitResult,
    WorkUnit,
    commit_new,
    measure_unit,
    parse_filter,
    plan,
    run,
)
from waveform.reanalyze.compare import compare
from waveform.reanalyze.job import JobResult
from waveform.reanalyze.planning import UNIT_ROWS, _split
from waveform.reanalyze.plot import bland_altman
from waveform.reanalyze.progress import LogLines, progress_for
from waveform.reanalyze.testing import analyze_or_fail, marked_to_fail, objects
from waveform.store import Store
from waveform.store.lake import ALIAS
from waveform.store.measure import summary_row
from waveform.store.schema import SUMMARY

ROOT = Path(__file__).resolve().parent.parent
N = 240
PER_COMMIT = 40  # so the archive has N / PER_COMMIT waveform data files


@pytest.fixture(scope="module")
def archive(module_backend: Backend) -> Backend:
    """The module's archive, on each backend in turn (the workers read the data files
    from the local folder, or from S3 directly)."""
    objs = objects(N)
    with _open(module_backend) as store:
        for k in range(0, N, PER_COMMIT):
            store.ingest(objs[k:k + PER_COMMIT], "org-a" if k < N // 2 else "org-b")
    return module_backend


def _open(b: Backend) -> Store:
    return Store.open(b.data_dir, catalog=b.catalog, data_path=b.data_path, analyze=None,
                      measure=False)


@pytest.fixture
def store(archive: Backend) -> Iterator[Store]:
    with _open(archive) as s:
        yield s


@pytest.fixture(scope="module")
def local2(module_backend: Backend) -> Iterator[LocalEngine]:
    # Started after the backend: its workers read S3 with the environment it set.
    with LocalEngine(2) as engine:
        yield engine


@pytest.fixture(scope="module")
def measured(archive: Backend, local2: LocalEngine) -> JobResult:
    """The archive measured once by the local engine under version t-local."""
    with _open(archive) as s:
        return run(s, local2, version="t-local", analyze=analyze_or_fail, unit_ecgs=32,
                   commit_rows=64, progress=_quiet())


def _summaries(store: Store, version: str) -> dict[str, dict[str, object]]:
    names = ["sop_instance_uid", "organisation", "patient_id", "heart_rate_bpm", "pr_ms",
             "qrs_ms", "qt_ms", "qtc_ms", "document"]
    rows = store.sql(f"SELECT {', '.join(names)} FROM {ALIAS}.summary "
                     "WHERE analysis_version = ? ORDER BY sop_instance_uid", [version])
    return {r[0]: dict(zip(names, r, strict=True)) for r in rows}


def _counts(store: Store, version: str) -> tuple[int, int]:
    total, distinct = store.sql(
        f"SELECT count(*), count(DISTINCT sop_instance_uid) FROM {ALIAS}.summary "
        "WHERE analysis_version = ?", [version])[0]
    return int(total), int(distinct)


def _quiet() -> LogLines:
    return LogLines(open(os.devnull, "w"), every_s=3600)


# ------------------------------------------------------------------------ plan


def test_plan_splits_by_data_file_and_filters(store: Store) -> None:
    p = plan(store, "never-run", unit_ecgs=1000)
    assert p.n_ecgs == N and p.n_files == N // PER_COMMIT
    assert len(p.units) == 1
    small = plan(store, "never-run", unit_ecgs=30)
    # 40 ECGs per file: each file gives a unit of 30 and 10 merged with the next file.
    assert sum(u.n_ecgs for u in small.units) == N
    assert max(u.n_ecgs for u in small.units) == 30
    assert any(len(u.files) == 2 for u in small.units)
    uids = [uid for u in small.units for uid in u.rows.column("sop_instance_uid").to_pylist()]
    assert len(uids) == len(set(uids)) == N
    org_b = plan(store, "never-run", filters=[parse_filter("organisation = org-b")])
    assert org_b.n_ecgs == N // 2
    assert set(org_b.units[0].rows.column("organisation").to_pylist()) == {"org-b"}
    recent = plan(store, "never-run", filters=[parse_filter("ingested_at<2000-01-01")])
    assert recent.n_ecgs == 0 and recent.units == ()


def _split_by_hand(rows: list[dict[str, Any]], unit_ecgs: int) -> list[list[tuple[str, int]]]:
    """The unit rule stated plainly: an ECG goes to the file of its first row; files
    in name order, ECGs in the order their first rows come, every row of an ECG
    together; a new unit every ``unit_ecgs`` ECGs."""
    by_file: dict[str, dict[str, list[tuple[str, int]]]] = {}
    home: dict[str, str] = {}
    for r in rows:
        f = home.setdefault(r["sop_instance_uid"], r["filename"])
        by_file.setdefault(f, {}).setdefault(r["sop_instance_uid"], []).append(
            (r["filename"], r["file_row_number"]))
    ecgs = [locs for f in sorted(by_file) for locs in by_file[f].values()]
    return [[loc for locs in ecgs[k:k + unit_ecgs] for loc in locs]
            for k in range(0, len(ecgs), unit_ecgs)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 7)), max_size=40),
       st.integers(1, 5))
def test_units_keep_an_ecgs_groups_together_in_file_order(
        picks: list[tuple[int, int]], unit_ecgs: int) -> None:
    # Rows as the catalog returns them, ordered by (filename, file_row_number);
    # an ECG's groups may sit in several files (after a compaction, say).
    raw = sorted({(f"f{f}.parquet", n, f"uid-{(f * 5 + n * 3) % 6}") for f, n in picks})
    rows = [dict(filename=f, file_row_number=n, group_index=0, sop_instance_uid=u,
                 **{c: None for c in UNIT_ROWS.names[4:]}) for f, n, u in raw]
    p = _split("v", pa.Table.from_pylist(rows, schema=UNIT_ROWS), unit_ecgs)
    got = [list(zip(u.rows.column("filename").to_pylist(),
                    u.rows.column("file_row_number").to_pylist(), strict=True))
           for u in p.units]
    assert got == _split_by_hand(rows, unit_ecgs)
    assert [u.index for u in p.units] == list(range(len(p.units)))
    assert p.n_ecgs == len({r["sop_instance_uid"] for r in rows})
    assert p.n_files == len({next(r["filename"] for r in rows if r["sop_instance_uid"] == u)
                             for u in {r["sop_instance_uid"] for r in rows}})
    assert all(u.rows.schema == UNIT_ROWS for u in p.units)


@pytest.mark.parametrize(("text", "message"), [
    ("organisation", "is not COLUMN OP VALUE"),
    ("sha256=abc", "no ecg column 'sha256'"),
    ("organisation=1; DROP TABLE x", None),  # a value, bound as such: matches nothing
    ("nosuch>=3", "no ecg column 'nosuch'"),
])
def test_filters_are_columns_and_bound_values(store: Store, text: str,
                                              message: str | None) -> None:
    if message is not None:
        with pytest.raises(InvalidArgument, match=message):
            parse_filter(text)
    else:
        assert plan(store, "never-run", filters=[parse_filter(text)]).n_ecgs == 0


# ---------------------------------------------------------------------- worker


def test_worker_rows_equal_the_store_path(store: Store) -> None:
    """Rows rebuilt from Parquet measure exactly as the decoded original object does."""
    unit = plan(store, "w", unit_ecgs=12).units[0]
    result = measure_unit(unit, "w")
    assert result.table.num_rows == 12 and not result.failed and not result.unread
    assert set(result.seconds) == {"read", "decode", "analyze", "rows"}
    assert 0 < result.cpu_seconds
    from waveform.analysis import analyze

    for row in result.table.to_pylist()[:4]:
        uid = row["sop_instance_uid"]
        expected = summary_row(uid, "w", row["measured_at"],
                               analyze(decode(store.get_dicom(uid))), store.ecg_context(uid))
        assert row == expected


def test_worker_reads_data_files_named_by_url(store: Store) -> None:
    """A data path on an object store names files by URL; pyarrow's filesystems read them."""
    unit = plan(store, "w", unit_ecgs=3).units[0]
    # On object storage the catalog names them s3://...; locally, as file:// URLs here.
    rows = [r if r["filename"].startswith("s3://") else dict(r, filename="file://" + r["filename"])
            for r in unit.rows.to_pylist()]
    by_url = measure_unit(WorkUnit(0, pa.Table.from_pylist(rows, schema=unit.rows.schema)), "w")
    by_path = measure_unit(unit, "w")
    assert by_url.table.num_rows == 3 and not by_url.unread
    assert by_url.table.drop(["measured_at"]).equals(by_path.table.drop(["measured_at"]))


def test_worker_reports_unread_rows_and_failed_analyses(store: Store) -> None:
    unit = plan(store, "w", unit_ecgs=N).units[0]
    rows = unit.rows.to_pylist()
    first_file = rows[0]["filename"]
    gone = [dict(r, filename=r["filename"] + ".gone") if r["filename"] == first_file else r
            for r in rows]
    broken = WorkUnit(0, pa.Table.from_pylist(gone, schema=unit.rows.schema))
    result = measure_unit(broken, "w", analyze_or_fail)
    lost = {r["sop_instance_uid"] for r in rows if r["filename"] == first_file}
    assert {u for u, _ in result.unread} == lost
    assert all(".gone" in why for _, why in result.unread)
    measured = set(result.table.column("sop_instance_uid").to_pylist())
    assert measured == {r["sop_instance_uid"] for r in rows} - lost
    failed = {u for u, _ in result.failed}
    assert failed == {u for u in measured if marked_to_fail(u)} and failed
    docs = {r["sop_instance_uid"]: json.loads(r["document"]) for r in result.table.to_pylist()}
    for uid in failed:
        assert docs[uid] == {"error": f"InvalidArgument: ECG {uid} is marked to fail (a test)"}


# ----------------------------------------------------------------- the job


def test_local_and_dask_give_identical_summaries(store: Store, local2: LocalEngine,
                                                 measured: JobResult) -> None:
    pytest.importorskip("distributed")
    from waveform.reanalyze import DaskEngine

    local = measured
    assert local.planned == N and local.committed == N and local.skipped == 0
    assert local.commits >= N // 64 and not local.unread
    assert sorted(local.failed) == sorted(
        (u, f"InvalidArgument: ECG {u} is marked to fail (a test)")
        for u in _summaries(store, "t-local") if marked_to_fail(u))
    with DaskEngine(workers=2) as dask:
        assert dask.workers == 2
        remote = run(store, dask, version="t-dask", analyze=analyze_or_fail, unit_ecgs=32,
                     commit_rows=64, progress=_quiet())
    assert remote.committed == N and not remote.unread
    assert _counts(store, "t-local") == _counts(store, "t-dask") == (N, N)
    a, b = _summaries(store, "t-local"), _summaries(store, "t-dask")
    assert a == b
    assert sum(r["qt_ms"] is not None for r in a.values()) > N * 0.9
    # Nothing is left to do: a second run plans nothing and writes nothing.
    again = run(store, local2, version="t-local", analyze=analyze_or_fail, progress=_quiet())
    assert again.planned == 0 and again.committed == 0
    assert _counts(store, "t-local") == (N, N)


class _Inline(Engine):
    """Units measured in this process; the first ``failures`` tasks die instead."""

    name = "inline"

    def __init__(self, failures: int) -> None:
        self.failures = failures

    @property
    def workers(self) -> int:
        return 1

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def _submit(self, unit: WorkUnit, version: str, analyze: Any) -> Future[UnitResult]:
        f: Future[UnitResult] = Future()
        if self.failures:
            self.failures -= 1
            f.set_exception(RuntimeError("the worker process died"))
        else:
            f.set_result(measure_unit(unit, version, analyze))
        return f

    def _completed(self, pending: set[Any]) -> Iterator[Any]:
        yield from pending


def test_a_dead_worker_leaves_its_ecgs_unread_and_they_are_planned_again(
        store: Store) -> None:
    lines = _Stream(tty=False)
    r = run(store, _Inline(failures=1), version="t-flaky", unit_ecgs=100, commit_rows=50,
            progress=LogLines(lines, every_s=3600))  # type: ignore[arg-type]
    assert r.committed == N and not r.unread
    assert "100 ECGs were unread; 100 still lack a summary: planning them again" in lines.text
    assert "reanalyze: 100/100 ECGs (100%)" in lines.text  # the second pass has its own count
    assert _counts(store, "t-flaky") == (N, N)
    hopeless = run(store, _Inline(failures=10**6), version="t-dead", unit_ecgs=100,
                   progress=_quiet())
    assert r.planned == hopeless.planned == N and hopeless.committed == 0
    assert len(hopeless.unread) == N
    assert {why for _, why in hopeless.unread} == {
        "worker failed: RuntimeError: the worker process died"}
    assert _counts(store, "t-dead") == (0, 0)


def test_the_last_wave_is_committed_as_it_comes_back(store: Store) -> None:
    """With every unit left on a worker, rows are committed as soon as the committer
    is idle: the job's last commit holds the last unit, not a whole batch."""
    seen: list[int] = []
    r = run(store, _Inline(failures=0), version="t-tail", unit_ecgs=100, commit_rows=10_000,
            progress=_quiet(), on_commit=lambda res: seen.append(res.committed))
    assert r.units == 3 and r.committed == N == 240
    # Units of 100, 100 and 40 ECGs on one worker: the first two committed once the
    # third was the only one left, the third on its own.
    assert seen == [200, 240] and r.commits == 2
    assert _counts(store, "t-tail") == (N, N)


class _Unstartable(_Inline):
    """An engine whose workers cannot start (an unreachable scheduler)."""

    def start(self) -> None:
        raise ConnectionError("no scheduler at tcp://127.0.0.1:1")


def test_a_job_with_nothing_to_do_starts_no_workers(store: Store, measured: JobResult) -> None:
    assert measured.planned == N
    r = run(store, _Unstartable(failures=0), version="t-local", progress=_quiet())
    assert r.planned == r.units == r.committed == 0
    # With something to do, the same engine is started, and its failure ends the job.
    with pytest.raises(ConnectionError):
        run(store, _Unstartable(failures=0), version="t-unstartable", progress=_quiet())
    assert _counts(store, "t-unstartable") == (0, 0)
    # The caller may pass its own start (the service's reports which engine failed).
    started: list[int] = []
    r = run(store, _Inline(failures=0), version="t-started", unit_ecgs=100,
            progress=_quiet(), start=lambda: started.append(1))
    assert started == [1] and r.committed == N


def test_commit_skips_summaries_that_appeared_meanwhile(store: Store) -> None:
    unit = plan(store, "t-race", unit_ecgs=10).units[0]
    table = measure_unit(unit, "t-race").table
    # Someone else (the store's measurement stage, another run) wrote three first.
    assert commit_new(store, table.slice(0, 3), "t-race") == (3, 0)
    assert commit_new(store, pa.concat_tables([table, table.slice(5, 1)]), "t-race") == (7, 4)
    assert _counts(store, "t-race") == (10, 10)
    assert commit_new(store, table, "t-race") == (0, 10)


def test_runs_while_the_store_ingests(tmp_path: Path, local2: LocalEngine) -> None:
    """Ingest goes on through the same Store while the job commits; the job measures
    what it planned, exactly once, and a next run takes the newcomers."""
    first_batch, fresh = objects(48, seed=4), objects(48, seed=5)
    errors: list[BaseException] = []
    with Store.open(tmp_path / "data", analyze=None, measure=False) as store:
        store.ingest(first_batch, "org-c")

        def ingest() -> None:
            try:
                for k in range(0, len(fresh), 8):
                    store.ingest(fresh[k:k + 8], "org-c")
                    time.sleep(0.05)
            except BaseException as e:  # reported by the test below
                errors.append(e)

        t = threading.Thread(target=ingest)
        t.start()
        try:
            first = run(store, local2, version="t-ingest", unit_ecgs=8, commit_rows=8,
                        progress=_quiet())
        finally:
            t.join()
        assert not errors
        assert first.planned >= len(first_batch) and first.committed == first.planned
        assert first.commits >= len(first_batch) // 8
        second = run(store, local2, version="t-ingest", progress=_quiet())
        assert first.planned + second.planned == len(first_batch) + len(fresh)
        assert _counts(store, "t-ingest") == (96, 96)


def _where(b: Backend | Path) -> list[str]:
    """The command line's options for the archive ``b`` (a folder: embedded)."""
    if isinstance(b, Path):
        return ["--data", str(b)]
    if b.name == "embedded":
        return ["--data", str(b.data_dir)]
    return ["--catalog", b.catalog, "--data", b.data_path]


def _cli(archive: Backend | Path, *args: str, **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        interruptible("waveform.cli", "reanalyze", *_where(archive), *args),
        cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)  # type: ignore[call-overload]


def test_killed_job_resumes_without_duplicates(archive: Backend, local2: LocalEngine) -> None:
    """SIGKILL (driver and workers) after two commits; the next run does the rest."""
    child = _cli(archive, "--workers", "1", "--unit", "8", "--commit", "16", "-v",
                 start_new_session=True)
    commits = 0
    assert child.stderr is not None
    try:
        deadline = time.monotonic() + 120
        while commits < 2 and time.monotonic() < deadline:
            line = child.stderr.readline()
            if not line:
                break
            commits += "committed:" in line
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    assert commits == 2
    with _open(archive) as s:
        total, distinct = _counts(s, ANALYSIS_VERSION)
        assert total == distinct and 32 <= total < N
        again = run(s, local2, progress=_quiet())
        assert again.planned == again.committed == N - total and again.skipped == 0
        assert _counts(s, ANALYSIS_VERSION) == (N, N)


def test_ctrl_c_stops_the_job_quietly_and_it_resumes(tmp_path: Path,
                                                     local2: LocalEngine) -> None:
    """SIGINT to the whole process group (what Ctrl-C on a terminal sends): the
    driver stops with its message and exit status 1, the pool's workers ignore
    it (no traceback from them), and a re-run finishes without duplicates."""
    path = tmp_path / "data"
    n = 96
    with Store.open(path, analyze=None, measure=False) as s:
        s.ingest(objects(n, seed=5), "org-c")
    child = _cli(path, "--workers", "2", "--unit", "4", "--commit", "8", "-v",
                 start_new_session=True)
    assert child.stderr is not None
    seen = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = child.stderr.readline()
            seen.append(line)
            if not line or "committed:" in line:
                break
        os.killpg(child.pid, signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    err = "".join(seen) + err
    assert any("committed:" in line for line in seen), err
    assert child.returncode == 1, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "interrupted" in err.lower(), err
    with Store.open(path, analyze=None, measure=False) as s:
        total, distinct = _counts(s, ANALYSIS_VERSION)
        assert total == distinct and 8 <= total <= n
        again = run(s, local2, progress=_quiet())
        assert again.committed == n - total and again.skipped == 0
        assert _counts(s, ANALYSIS_VERSION) == (n, n)


# --------------------------------------------------------------- compare


def _shifted_version(store: Store) -> None:
    """Version t-new: t-local with QT 10 ms longer, PR gone on one ECG, back on another."""
    names = SUMMARY.names
    rows = store.sql(f"SELECT {', '.join(names)} FROM {ALIAS}.summary "
                     "WHERE analysis_version = 't-local'")
    new = []
    for i, r in enumerate(sorted(rows, key=lambda r: r[0])):
        row = dict(zip(names, r, strict=True))
        doc = json.loads(row["document"])
        if doc.get("qt_ms") is not None:
            doc["qt_ms"] += 10.0 if i else 60.0
        if i == 1:
            doc["pr_ms"] = None
        row.update(analysis_version="t-new", document=json.dumps(doc))
        new.append(row)
    store.commit_summaries(pa.Table.from_pylist(new, schema=SUMMARY))


def test_compare_reports_differences_and_plots(store: Store, measured: JobResult,
                                               tmp_path: Path) -> None:
    assert measured.committed == N
    _shifted_version(store)
    c = compare(store, "t-local", "t-new")
    assert c.n_common == c.n_old == c.n_new == N
    by = {d.measurement.label: d for d in c.differences}
    qt = by["QT"]
    with_qt = N - sum(marked_to_fail(u) for u in _summaries(store, "t-local"))
    assert qt.n == with_qt
    assert qt.mean == pytest.approx(10.0 + 50.0 / with_qt)
    assert qt.largest[0][2] - qt.largest[0][1] == pytest.approx(60.0)
    assert by["PR"].stopped == 1 and by["PR"].became == 0
    assert by["QRS"].mean == 0.0 and by["QRS"].largest == ()
    text = "\n".join(c.lines())
    assert "QT" in text and qt.largest[0][0] in text
    png = tmp_path / "ba.png"
    bland_altman(c, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


# ------------------------------------------------------------------- cli


def test_cli_compare_and_argument_errors(archive: Backend, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reanalyze", *_where(archive), "--plot", "x.png"]) == 2
    assert "--plot needs --compare" in capsys.readouterr().err
    assert main(["reanalyze", *_where(archive), "--compare", "t-none", "t-x"]) == 1
    assert "no ECG has a summary of both t-none and t-x" in capsys.readouterr().err
    assert main(["reanalyze", *_where(archive), "--where", "bogus"]) == 1
    assert "is not COLUMN OP VALUE" in capsys.readouterr().err
    assert main(["reanalyze", *_where(archive), "--scheduler", "tcp://x:1"]) == 1
    assert "--scheduler tcp://x:1 needs --engine dask" in capsys.readouterr().err


def test_cli_dask_without_distributed_says_what_to_install(
        archive: Backend, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    assert main(["reanalyze", *_where(archive), "--engine", "dask"]) == 1
    assert "pip install 'waveform[dask]'" in capsys.readouterr().err


def test_cli_beside_a_server_holding_the_catalog(archive: Backend,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # An embedded catalog admits one process: the command explains it. A PostgreSQL
    # catalog admits several: re-analysis runs beside the server.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from waveform.store import Store; "
         f"s = Store.open({str(archive.data_dir)!r}, catalog={archive.catalog!r}, "
         f"data_path={archive.data_path!r}, analyze=None, measure=False); print('open', "
         "flush=True); sys.stdin.read()"],
        cwd=ROOT, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        code = main(["reanalyze", *_where(archive), "--workers", "1"])
    finally:
        holder.communicate("", timeout=60)
    err = capsys.readouterr().err
    if archive.name == "embedded":
        assert code == 1
        assert "held by another process" in err and "PostgreSQL catalog" in err
    else:
        assert code == 0, err
        with _open(archive) as s:
            assert _counts(s, ANALYSIS_VERSION) == (N, N)


# -------------------------------------------------------------- progress


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.text = ""
        self.tty = tty

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return self.tty


def test_progress_lines_off_a_terminal_and_a_bar_on_one() -> None:
    plain = _Stream(tty=False)
    lines = progress_for(plain)  # type: ignore[arg-type]
    assert isinstance(lines, LogLines)
    lines.start(10)
    lines.advance(10)
    assert plain.text.startswith("reanalyze: 10/10 ECGs (100%), ") and "left" in plain.text
    assert "\r" not in plain.text
    # The command line's display: the same lines off a terminal, a rich bar on one.
    off = _Stream(tty=False)
    quiet = Bar(off, "reanalyze", unit="ECGs")  # type: ignore[arg-type]
    quiet.start(4)
    quiet.advance(4)
    assert off.text.startswith("reanalyze: 4/4 ECGs (100%), ") and "\r" not in off.text
    tty = _Stream(tty=True)
    bar = Bar(tty, "reanalyze", unit="ECGs")  # type: ignore[arg-type]
    bar.note("planned")
    assert tty.text == "reanalyze: planned\n"
    bar.start(4)
    bar.advance(2)
    bar.note("a commit")
    bar.close()
    assert "2/4" in tty.text and "reanalyze: a commit" in tty.text
    assert "\x1b[" in tty.text  # drawn in place with terminal control sequences


def test_job_result_report() -> None:
    r = JobResult("9.9", planned=3, committed=2, commits=1, seconds=2.0,
                  failed=[("1.2.3", "InvalidArgument: no")], unread=[("1.2.4", "gone")])
    text = "\n".join(r.lines())
    assert "3 ECGs planned" in text and "2 summaries committed in 1 commits" in text
    assert "1.2.3: InvalidArgument: no" in text and "1.2.4: gone" in text
    assert r.rate == pytest.approx(1.0)
    assert dataclasses.replace(r, seconds=0.0).rate == 0.0
