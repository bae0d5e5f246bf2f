"""The archive on one machine (embedded) beside the archive on a cluster's backends.

Embedded: a DuckDB-file catalog, data files on local disk, the locator index in
SQLite. Cluster: the catalog and the locator index in PostgreSQL, the data files in
S3 (SeaweedFS), both real servers on loopback (`tests/servers.py`). Four tables:

1. Open at 1,000,000 and 10,000,000 ECGs (``--ecgs``): time from the server's
   process start to health SERVING, its resident memory then (VmRSS), and GetTrace
   and GetDicom by UID p50 end to end over gRPC (a clinician's token). The archives
   are generated directly, not ingested: ``ecg`` and ``summary`` rows of every ECG
   (synthetic values in the schemas' columns) and the ``header``/``waveform`` rows of
   a sample of real objects (our encoder's synthetic ECGs through `records.prepare`),
   committed as Parquet through the store's durable path (`durable.stage_tables` +
   `register`, a million rows a file), and the locator index written in bulk (COPY
   for PostgreSQL, one transaction a file for SQLite), every file marked indexed, so
   that an open reads no data file. Every ECG has a summary of the current analysis
   version (a measured archive: the server's catch-up finds nothing to measure).
2. IngestStream with 16 callers: ECGs/s and server CPU per ECG, embedded against
   one cluster replica and two (two server processes on one catalog and bucket, the
   callers split between them). The servers run without the measurement stage, as
   in ``bench/grpc_ingest.py``; the backends' CPU (PostgreSQL's processes and
   SeaweedFS) is shown beside it.
3. GetTrace and GetDicom p50 from S3 against local disk (from table 1's largest size).
4. One DuckLake commit of a small group (16 ECGs: ``ecg``, ``header``, ``waveform``):
   the catalog commit alone (`register`) and with the data files (`stage_tables`),
   DuckDB file against PostgreSQL, local data against S3.

Targets (issue 17), at 10,000,000 ECGs in both modes: ready <= 5 s, resident
memory <= 1 GiB, GetTrace p50 <= 10 ms. Benchmarks print figures and never assert
them. Run as ``python -m bench cluster [--small]`` or, to choose the sizes,
``python -m bench.cluster --ecgs 1000000,10000000 [--sample 2000] [--runs 3]``. The
generated archives go under ``--tmp`` (default /tmp) and are removed at the end.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bench._util import fmt_time

ROOT = Path(__file__).resolve().parent.parent

TARGET_READY_S = 5.0
TARGET_RSS = 1 << 30
TARGET_TRACE_S = 0.010

#: Rows of ``ecg`` (and of ``summary``) per generated data file.
FILE_ROWS = 1_000_000
#: The organisation of the sampled (readable) ECGs, and the clinician's.
SAMPLE_ORG = "hospital-001"
_ORGS = [f"hospital-{k:03d}" for k in range(1, 41)] + [f"clinic-{k:03d}" for k in range(1, 81)]
_MAKERS = [("GE Healthcare", "MAC 5500"), ("Philips", "PageWriter TC70"),
           ("Schiller", "CARDIOVIT AT-102"), ("Mortara", "ELI 380"), ("Nihon Kohden", "ECG-2550")]
_OPTIONS = [("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.use_local_subchannel_pool", 1)]


# ----------------------------------------------------------------- the backends
def _servers() -> Any:
    """Where the real backend servers come from (one import to change if they move)."""
    from tests import servers

    return servers


@dataclass
class Backends:
    """PostgreSQL and SeaweedFS, running for the whole benchmark."""

    pg: Any
    s3: Any
    bucket: str = "bench"
    _n: int = 0

    def fresh(self, name: str) -> tuple[str, str]:
        """A new catalog database and data prefix: (``postgres:`` catalog, s3 data path)."""
        self._n += 1
        db = f"{name}_{self._n}"
        dsn = self.pg.create_database(db)
        return f"postgres:{dsn}", f"s3://{self.bucket}/{db}/"

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.s3.environment()}

    def cpu(self) -> float:
        """CPU seconds so far of PostgreSQL's processes and SeaweedFS."""
        return _tree_cpu(_postmaster(self.pg)) + _tree_cpu(self.s3.process.pid)


@contextlib.contextmanager
def backends() -> Iterator[Backends]:
    s = _servers()
    with s.postgres_server() as pg, s.seaweedfs_server(("bench",)) as s3:
        saved = {k: os.environ.get(k) for k in s3.environment()}
        os.environ.update(s3.environment())  # this process's own S3 reads and writes
        try:
            yield Backends(pg, s3)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _postmaster(pg: Any) -> int:
    return int((Path(pg.data) / "postmaster.pid").read_text().split()[0])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far (Linux ``/proc``; 0 if gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu(pid: int) -> float:
    """CPU of ``pid`` and its live children (one level: PostgreSQL's backends)."""
    total = _cpu_seconds(pid)
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            total += _cpu_seconds(int(d.name))
    return total


def _rss(pid: int) -> int:
    """Resident memory of ``pid`` in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# ------------------------------------------------------------- the generator
@dataclass
class Target:
    """One archive being generated: where, and its open lake, files and index."""

    mode: str  # "embedded" or "cluster"
    data_dir: Path
    catalog: str
    data_path: str
    lake: Any = None
    files: Any = None
    index: Any = None  # a DB-API connection to the locator index
    file_ids: dict[str, int] = field(default_factory=dict)

    @property
    def postgres(self) -> bool:
        return self.catalog.startswith("postgres:")


def _embedded(root: Path) -> Target:
    return Target("embedded", root, str(root / "catalog.ducklake"),
                  os.path.join(root, "lake") + os.sep)


def _open_target(t: Target) -> None:
    """Create the store's schema and index (one `Store.open`), then open the lake,
    the data files and the index for bulk writing."""
    from waveform.store import Store
    from waveform.store.files import files_for
    from waveform.store.lake import connect

    Store.open(t.data_dir, catalog=t.catalog, data_path=t.data_path, analyze=None,
               measure=False, auto_compact_commits=None).close()
    t.lake = connect(t.catalog, t.data_path)
    t.files = files_for(t.data_path)
    if t.postgres:
        import psycopg

        t.index = psycopg.connect(t.catalog.removeprefix("postgres:"), autocommit=False)
    else:
        t.index = sqlite3.connect(t.data_dir / "locators.sqlite")
        t.index.execute("PRAGMA synchronous = OFF")
    # Secondary indexes are built once at the end (`_finish_target`), not row by row.
    cur = t.index.cursor()
    for name in ("state", "version", "patient", "study", "accession"):
        cur.execute(f"DROP INDEX IF EXISTS waveform_locator_{name}")
    t.index.commit()


def _finish_target(t: Target) -> None:
    from waveform.store.locators import open_locators

    t.index.commit()
    if t.postgres:
        t.index.autocommit = True
    else:
        t.index.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    t.index.close()
    # `Locators.create` makes the indexes dropped above (CREATE INDEX IF NOT EXISTS).
    loc = open_locators(t.catalog, str(t.data_dir) if not t.postgres else None)
    loc.close()
    if t.postgres:
        import psycopg

        with psycopg.connect(t.catalog.removeprefix("postgres:"), autocommit=True) as con:
            con.execute("VACUUM ANALYZE waveform_locator")
            con.execute("VACUUM ANALYZE waveform_file")
    else:
        with contextlib.closing(sqlite3.connect(t.data_dir / "locators.sqlite")) as con:
            con.execute("ANALYZE")
    t.lake.close()


def _commit(t: Target, tables: dict[str, pa.Table], version: str) -> dict[str, str]:
    """Commit ``tables`` through the durable path; their files marked indexed."""
    from waveform.store.durable import register, stage_tables

    written = stage_tables(t.files, t.data_path, tables)
    register(t.lake.cursor(), t.files, written)
    cur = t.index.cursor()
    mark = "%s" if t.postgres else "?"
    for table, path in written.items():
        cur.execute(f"INSERT INTO waveform_file (path, indexed, version) VALUES "
                    f"({mark}, 1, {mark})", [path, version if table == "summary" else None])
        cur.execute(f"SELECT id FROM waveform_file WHERE path = {mark}", [path])
        t.file_ids[path] = int(cur.fetchone()[0])
    return written


_LOCATOR_COLUMNS = (
    "uid", "sha256", "size", "state", "owner", "claimed_us", "ingested_us", "ecg_file",
    "ecg_row", "header_file", "header_row", "wave_file", "wave_rows", "summary_version",
    "summary_file", "summary_row", "patient_id", "organisation", "study_instance_uid",
    "accession_number", "acquired_us", "sop_class_uid", "study_description", "operator",
    "reading_physician",
)


def _locator_rows(t: Target, ecg: pa.Table, ecg_path: str, summary_path: str, version: str,
                  header_path: str | None = None, wave_path: str | None = None,
                  wave_rows: Sequence[str] | None = None) -> pa.Table:
    """The locator rows of ``ecg`` (row i of the ``ecg`` and ``summary`` files is ECG i)."""
    n = ecg.num_rows
    rows = pa.array(np.arange(n, dtype=np.int64))

    def const(v: Any, typ: pa.DataType) -> pa.Array:
        if v is None:
            return pa.nulls(n, typ)
        return pa.array([v], typ).take(pa.array(np.zeros(n, np.int64)))

    def us(col: str) -> Any:
        # Microseconds since 1970 as stated (`locators._us`): the stored value.
        return pc.cast(ecg.column(col), pa.int64())

    return pa.table({
        "uid": ecg.column("sop_instance_uid"), "sha256": ecg.column("sha256"),
        "size": ecg.column("size"), "state": const(1, pa.int16()),
        "owner": const("", pa.string()), "claimed_us": const(0, pa.int64()),
        "ingested_us": us("ingested_at"), "ecg_file": const(t.file_ids[ecg_path], pa.int64()),
        "ecg_row": rows,
        "header_file": (const(t.file_ids[header_path], pa.int64()) if header_path
                        else const(None, pa.int64())),
        "header_row": rows if header_path else const(None, pa.int64()),
        "wave_file": (const(t.file_ids[wave_path], pa.int64()) if wave_path
                      else const(None, pa.int64())),
        "wave_rows": pa.array(wave_rows, pa.string()) if wave_rows else const(None, pa.string()),
        "summary_version": const(version, pa.string()),
        "summary_file": const(t.file_ids[summary_path], pa.int64()), "summary_row": rows,
        "patient_id": ecg.column("patient_id"), "organisation": ecg.column("organisation"),
        "study_instance_uid": ecg.column("study_instance_uid"),
        "accession_number": ecg.column("accession_number"),
        "acquired_us": us("acquisition_datetime"), "sop_class_uid": ecg.column("sop_class_uid"),
        "study_description": ecg.column("study_description"),
        "operator": ecg.column("operator"), "reading_physician": ecg.column("reading_physician"),
    })


def _load_locators(t: Target, rows: pa.Table) -> None:
    """Bulk-insert locator rows: COPY (PostgreSQL) or executemany (SQLite)."""
    cols = ", ".join(_LOCATOR_COLUMNS)
    cur = t.index.cursor()
    if t.postgres:
        import pyarrow.csv as pacsv

        sink = pa.BufferOutputStream()
        pacsv.write_csv(rows, sink, pacsv.WriteOptions(include_header=False))
        with cur.copy(f"COPY waveform_locator ({cols}) FROM STDIN WITH (FORMAT csv)") as cp:
            data = sink.getvalue()
            step = 8 << 20
            for i in range(0, data.size, step):
                cp.write(memoryview(data)[i:i + step])
    else:
        marks = ", ".join("?" * len(_LOCATOR_COLUMNS))
        step = 100_000
        for i in range(0, rows.num_rows, step):
            part = rows.slice(i, step)
            cur.executemany(f"INSERT INTO waveform_locator ({cols}) VALUES ({marks})",
                            zip(*(part.column(c).to_pylist() for c in _LOCATOR_COLUMNS),
                                strict=True))
    t.index.commit()


def _hex(raw: np.ndarray) -> pa.Array:
    """Lowercase hex strings of the rows of a uint8 matrix."""
    table = np.frombuffer(b"".join(f"{b:02x}".encode() for b in range(256)), "S2")
    width = raw.shape[1] * 2
    return pc.cast(pa.array(table[raw].view(f"S{width}").ravel()), pa.string())


def _strings(prefix: str, numbers: np.ndarray, width: int = 0) -> pa.Array:
    s = pc.cast(pa.array(numbers), pa.string())
    if width:
        s = pc.utf8_lpad(s, width, "0")
    return pc.binary_join_element_wise(prefix, s, "")


def _choice(options: Sequence[Any], idx: np.ndarray) -> pa.Array:
    return pa.array(list(options), pa.string()).take(pa.array(idx))


def ecg_rows(run: str, start: int, n: int, total: int, seed: int) -> pa.Table:
    """``ecg`` rows of synthetic ECGs ``start`` .. ``start + n`` (schema `ECG`): a third
    as many patients as ECGs, 120 organisations, acquired 2005-2025, a random SHA-256."""
    from waveform.dicom.synthetic import TWELVE_LEAD
    from waveform.store.schema import ECG

    rng = np.random.default_rng(seed)
    i = np.arange(start, start + n, dtype=np.int64)
    patient = rng.integers(1, max(2, total // 3), n)
    org = rng.integers(1, len(_ORGS), n)  # org 0 (the sample's) is not in the bulk
    maker = rng.integers(0, len(_MAKERS), n)
    t0 = dt.datetime(2005, 1, 1).timestamp()
    acquired = (t0 + rng.uniform(0, 20 * 365.25 * 86400, n)) * 1e6
    ingested = acquired + rng.uniform(60, 30 * 86400, n) * 1e6
    birth = (rng.uniform(-90, -18, n) * 365.25 + (2005 - 1970) * 365.25).astype(np.int32)
    cols: dict[str, pa.Array] = {
        "sop_instance_uid": _strings(f"2.25.1{run}", i, 10),
        "sop_class_uid": _choice([TWELVE_LEAD], np.zeros(n, np.int64)),
        "study_instance_uid": _strings(f"2.25.2{run}", i, 10),
        "series_instance_uid": _strings(f"2.25.3{run}", i, 10),
        "patient_id": _strings("P", patient, 9),
        "patient_id_issuer": _choice(["NATIONAL"], np.zeros(n, np.int64)),
        "patient_name": _strings("SYNTHETIC^", patient),
        "birth_date": pa.array(birth, pa.date32()),
        "sex": _choice(["F", "M"], rng.integers(0, 2, n)),
        "accession_number": _strings("A", i, 10),
        "acquisition_datetime": pa.array(acquired.astype(np.int64).astype("datetime64[us]")),
        "study_description": _choice(["Resting 12-lead ECG", "Pre-operative ECG",
                                      "Follow-up ECG"], rng.integers(0, 3, n)),
        "institution": _choice([o.replace("-", " ").title() for o in _ORGS], org),
        "organisation": _choice(_ORGS, org),
        "manufacturer": _choice([m for m, _ in _MAKERS], maker),
        "model": _choice([m for _, m in _MAKERS], maker),
        "software_versions": _choice(["1.0", "2.3", "10.4"], rng.integers(0, 3, n)),
        "device_serial_number": _strings("SN", rng.integers(1, 5000, n), 6),
        "operator": _strings("nurse-", rng.integers(1, 900, n)),
        "reading_physician": _strings("dr-", rng.integers(1, 700, n)),
        "referring_physician": _strings("dr-", rng.integers(1, 700, n)),
        "transfer_syntax_uid": _choice(["1.2.840.10008.1.2.1"], np.zeros(n, np.int64)),
        "n_groups": pa.array(np.ones(n, np.int16)),
        "ingested_at": pa.array(ingested.astype(np.int64).astype("datetime64[us]")).cast(
            pa.timestamp("us", tz="UTC")),
        "size": pa.array(rng.integers(118_000, 131_000, n)),
        "sha256": _hex(rng.integers(0, 256, (n, 32), dtype=np.uint8)),
        "source_format": _choice(["dicom"], np.zeros(n, np.int64)),
    }
    return pa.table(cols, schema=ECG)


def summary_rows(ecg: pa.Table, version: str, seed: int) -> pa.Table:
    """A ``summary`` row of the current analysis version for each ``ecg`` row: its
    context columns, plausible measures and the document holding them (no median)."""
    from waveform.store.schema import MEASURES, SUMMARY, SUMMARY_CONTEXT

    rng = np.random.default_rng(seed)
    n = ecg.num_rows
    hr = rng.normal(72, 12, n).round(1)
    rr = (60000 / hr).round(1)
    qt = rng.normal(390, 25, n).round(1)
    measures = {"heart_rate_bpm": hr, "pr_ms": rng.normal(160, 20, n).round(1),
                "qrs_ms": rng.normal(92, 10, n).round(1), "qt_ms": qt,
                "qtc_ms": (qt / np.sqrt(rr / 1000)).round(1), "rr_mean_ms": rr,
                "rr_sd_ms": rng.gamma(2, 15, n).round(1)}
    parts: list[Any] = ["{"]
    for k, (name, v) in enumerate(measures.items()):
        parts += [f'{", " if k else ""}"{name}": ', pc.cast(pa.array(v), pa.string())]
    parts.append(', "rhythm": "sinus rhythm", "median_leads": []}')
    document = pc.binary_join_element_wise(*parts, "")
    measured = pc.cast(ecg.column("ingested_at"), pa.int64()).to_numpy() + 5_000_000
    cols: dict[str, Any] = {
        "sop_instance_uid": ecg.column("sop_instance_uid"),
        "analysis_version": _choice([version], np.zeros(n, np.int64)),
        "measured_at": pa.array(measured.astype("datetime64[us]")).cast(
            pa.timestamp("us", tz="UTC")),
        **{c: ecg.column(c) for c in SUMMARY_CONTEXT},
        **{name: pa.array(measures[name]) for name in MEASURES},
        "document": document,
        "median_beat": pa.nulls(n, pa.binary()),
    }
    return pa.table(cols, schema=SUMMARY)


def sample_objects(run: str, k: int, bases: int = 16) -> list[bytes]:
    """``k`` distinct encoded 12-lead ECGs: our encoder's synthetic objects, each with
    its own SOP Instance UID and Patient ID (replaced in place, same length)."""
    from waveform.dicom.encode import encode
    from waveform.dicom.synthetic import synthetic_ecg

    made = []
    for b in range(min(bases, k)):
        e = synthetic_ecg(seed=b, heart_rate=60.0 + 3 * b)
        made.append((encode(e), e.sop_instance_uid.encode(), e.patient_id.encode()))
    out = []
    for i in range(k):
        data, uid, patient = made[i % len(made)]
        new_uid = f"2.25.9{run}{i:010d}".ljust(len(uid), "1")[:len(uid)].encode()
        new_patient = f"S{i:0{len(patient) - 1}d}"[-len(patient):].encode()
        out.append(data.replace(uid, new_uid).replace(patient, new_patient))
    return out


def generate(targets: Sequence[Target], n: int, k: int, progress: Callable[[str], None]
             ) -> list[str]:
    """Write an archive of ``n`` ECGs into each of ``targets`` (the same rows in each);
    the sampled ECGs' UIDs (``k`` of them, readable: header and waveform rows too)."""
    from waveform.analysis import ANALYSIS_VERSION
    from waveform.store.records import prepare, tables

    version = str(ANALYSIS_VERSION)
    run = f"{time.time_ns() % 10**6:06d}"
    for t in targets:
        _open_target(t)
    now = dt.datetime.now(dt.UTC)
    prepared = [prepare(d, SAMPLE_ORG, now) for d in sample_objects(run, k)]
    sample = tables(prepared)
    sample_summary = summary_rows(sample["ecg"], version, seed=1)
    waves: list[str] = []
    row = 0
    for p in prepared:
        waves.append(",".join(str(row + g) for g in range(len(p.waveform_rows))))
        row += len(p.waveform_rows)
    for t in targets:
        w = _commit(t, {**{k_: v for k_, v in sample.items() if v.num_rows},
                        "summary": sample_summary}, version)
        _load_locators(t, _locator_rows(t, sample["ecg"], w["ecg"], w["summary"], version,
                                        w["header"], w["waveform"], waves))
    t0 = time.monotonic()
    done = k
    start = 0
    while done < n:
        m = min(FILE_ROWS, n - done)
        ecg = ecg_rows(run, start, m, n, seed=start)
        summ = summary_rows(ecg, version, seed=start + 1)
        for t in targets:
            w = _commit(t, {"ecg": ecg, "summary": summ}, version)
            _load_locators(t, _locator_rows(t, ecg, w["ecg"], w["summary"], version))
        done += m
        start += m
        rate = (done - k) / (time.monotonic() - t0)
        progress(f"  generated {done:,} of {n:,} ECGs ({rate:,.0f}/s into "
                 f"{len(targets)} archive{'s' if len(targets) > 1 else ''})")
    progress("  building the locator indexes")
    for t in targets:
        _finish_target(t)
    progress(f"  generated {n:,} ECGs in {time.monotonic() - t0:.0f} s")
    return [p.sop_instance_uid for p in prepared]


# ------------------------------------------------------------------ servers
def _serve(args: argparse.Namespace) -> None:
    """An ingest server process for table 2: the store without its measurement stage
    (as bench/grpc_ingest.py; `waveform serve` always measures) and the archive, print
    the port, serve until SIGTERM."""
    from waveform.archive import Archive
    from waveform.service.identity import TokenIdentities
    from waveform.service.server import start
    from waveform.store import Store

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # The audit trail is this replica's own local folder: the server's default (beside
    # the data path) is not a folder when the data path is s3://.
    store = Store.open(args.data, catalog=args.catalog, data_path=args.data_path,
                       analyze=None)
    archive = Archive.open(store, Path(args.data) / "audit")
    srv = start(store, TokenIdentities.load(args.tokens), port=0, archive=archive,
                owns_store=True)
    print(f"serving on 127.0.0.1:{srv.port}", flush=True)
    stop.wait()
    srv.stop(5)
    archive.close()
    sys.stdout.flush()
    os._exit(0)  # the native threads' teardown is not what is measured


@dataclass
class Proc:
    proc: subprocess.Popen[str]
    address: str
    started: float
    ready_s: float = 0.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def spawn(argv: list[str], env: dict[str, str] | None = None, timeout_s: float = 300.0
          ) -> Proc:
    """Start a server; wait for its port, then for health SERVING (the ready time)."""
    return spawn_all([argv], env, timeout_s)[0]


def spawn_all(argvs: Sequence[list[str]], env: dict[str, str] | None = None,
              timeout_s: float = 300.0) -> list[Proc]:
    """Start servers together (not timed: ready times overlap); wait for each."""
    out: list[Proc | BaseException | None] = [None] * len(argvs)

    def one(i: int) -> None:
        try:
            out[i] = _start(argvs[i], env, timeout_s)
        except BaseException as e:  # raised below, on the caller's thread
            out[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(argvs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    procs = [p for p in out if isinstance(p, Proc)]
    failed = [p for p in out if not isinstance(p, Proc)]
    if failed:
        for p in procs:
            p.stop()
        raise RuntimeError(f"a server did not start: {failed[0]}")
    return procs


def _start(argv: list[str], env: dict[str, str] | None, timeout_s: float) -> Proc:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env)
    lines: list[str] = []
    out, err_pipe = proc.stdout, proc.stderr
    assert out is not None and err_pipe is not None
    errors: collections.deque[str] = collections.deque(maxlen=60)
    threading.Thread(target=lambda: errors.extend(err_pipe), daemon=True).start()

    def read() -> None:
        for line in out:
            lines.append(line)
            if " on 127.0.0.1:" in line:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    found = [ln for ln in lines if " on 127.0.0.1:" in ln]
    if not found:
        proc.kill()
        proc.wait(10)
        raise RuntimeError(f"{argv[:4]} did not start: {''.join(lines)}{''.join(errors)}")
    # Drain stdout too, so that a chatty server never blocks on it.
    threading.Thread(target=lambda: collections.deque(out, maxlen=0), daemon=True).start()
    port = int(found[0].rsplit(":", 1)[1].split()[0].rstrip(",."))
    address = f"127.0.0.1:{port}"
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() - t0 > timeout_s:
                proc.kill()
                raise RuntimeError(f"{address} never answered SERVING")
            time.sleep(0.01)
    return Proc(proc, address, t0, time.monotonic() - t0)


def _store_argv(data_dir: Path, tokens: Path, catalog: str | None, data_path: str | None
                ) -> list[str]:
    argv = [sys.executable, "-m", "bench.cluster", "--serve", "--data", str(data_dir),
            "--tokens", str(tokens)]
    if catalog:
        argv += ["--catalog", catalog, "--data-path", str(data_path)]
    return argv


def _waveform_cli() -> list[str]:
    exe = Path(sys.executable).parent / "waveform"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "waveform.cli"]


# ------------------------------------------------------------------ callers
def read_p50(address: str, token: str, uids: Sequence[str], calls: int, rpc: str,
             seed: int = 0) -> float:
    """p50 of ``rpc`` (GetTrace: the whole 12-lead trace; GetDicom: the object) by UID,
    end to end: every chunk received and decoded."""
    import grpc

    from waveform.service._proto.waveform.v1 import archive_pb2 as pb
    from waveform.service._proto.waveform.v1 import archive_pb2_grpc as pb_grpc

    meta = [("authorization", f"Bearer {token}")]
    rng = random.Random(seed)
    times = []
    with grpc.insecure_channel(address, options=_OPTIONS) as channel:
        stub = pb_grpc.EcgArchiveStub(channel)
        for i in range(calls + 3):
            uid = rng.choice(list(uids))
            t0 = time.perf_counter()
            if rpc == "GetTrace":
                chunks = list(stub.GetTrace(pb.GetTraceRequest(sop_instance_uid=uid),
                                            metadata=meta, timeout=30))
                n = len(chunks[0].leads)
                x = np.concatenate([np.frombuffer(c.data, "<f4").reshape(n, c.samples)
                                    for c in chunks], axis=1)
                ok = x.shape[0] == 12
            else:
                data = b"".join(c.data for c in stub.GetDicom(
                    pb.GetDicomRequest(sop_instance_uid=uid), metadata=meta, timeout=30))
                ok = len(data) > 100_000
            if i >= 3:  # the first calls open files and warm caches
                times.append(time.perf_counter() - t0)
            if not ok:
                raise RuntimeError(f"{rpc} of {uid} answered an unexpected shape")
    return statistics.median(times)


# ---------------------------------------------------------- 1. open at scale
@dataclass
class OpenFigures:
    ready_s: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    trace_s: list[float] = field(default_factory=list)
    dicom_s: list[float] = field(default_factory=list)

    def med(self, name: str) -> float:
        return float(statistics.median(getattr(self, name)))


def open_bench(b: Backends, tmp: Path, sizes: Sequence[int], k: int, runs: int, calls: int,
               token: str, tokens: Path, progress: Callable[[str], None]
               ) -> tuple[dict[tuple[int, str], OpenFigures], str]:
    how = "`waveform serve --catalog postgres:... --data s3://...`"
    out: dict[tuple[int, str], OpenFigures] = {}
    for n in sizes:
        emb = _embedded(tmp / f"embedded-{n}")
        catalog, data_path = b.fresh(f"open{n}")
        clu = Target("cluster", tmp / f"cluster-{n}", catalog, data_path)
        clu.data_dir.mkdir(parents=True)
        progress(f"generating {n:,} ECGs (sample of {k:,} readable) in both modes")
        uids = generate([emb, clu], n, k, progress)
        argv = {
            "embedded": [*_waveform_cli(), "serve", "--data", str(emb.data_dir), "--port", "0",
                         "--tokens", str(tokens)],
            "cluster": [*_waveform_cli(), "serve", "--catalog", catalog, "--data", data_path,
                        "--port", "0", "--tokens", str(tokens)],
        }
        for r in range(runs):
            for mode in ("embedded", "cluster"):
                proc = spawn(argv[mode], b.env())
                try:
                    fig = out.setdefault((n, mode), OpenFigures())
                    fig.ready_s.append(proc.ready_s)
                    fig.rss.append(_rss(proc.pid))
                    fig.trace_s.append(read_p50(proc.address, token, uids, calls, "GetTrace", r))
                    fig.dicom_s.append(read_p50(proc.address, token, uids, calls, "GetDicom", r))
                finally:
                    proc.stop()
                progress(f"  {n:,} {mode} run {r + 1}: ready {proc.ready_s:.2f} s, "
                         f"RSS {fig.rss[-1] / 2**20:,.0f} MiB, GetTrace "
                         f"{fmt_time(fig.trace_s[-1])}, GetDicom {fmt_time(fig.dicom_s[-1])}")
        shutil.rmtree(emb.data_dir, ignore_errors=True)
        shutil.rmtree(clu.data_dir, ignore_errors=True)
        _drop_cluster(b, catalog, data_path)
    return out, how


def _drop_cluster(b: Backends, catalog: str, data_path: str) -> None:
    """Free a generated cluster archive's space: its database and its objects."""
    db = catalog.split("dbname=", 1)[1].split()[0]
    with contextlib.suppress(RuntimeError):
        b.pg.psql(f'DROP DATABASE "{db}" WITH (FORCE)')
    with contextlib.suppress(OSError):
        b.s3.filesystem().delete_dir(data_path.removeprefix("s3://").rstrip("/"))


# ------------------------------------------------------------- 2. ingest
@dataclass
class IngestFigures:
    rate: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    backend_cpu: list[float] = field(default_factory=list)
    errors: int = 0


def ingest_bench(b: Backends, tmp: Path, tokens: Path, devices: Sequence[str], callers: int,
                 seconds: float, runs: int, progress: Callable[[str], None]
                 ) -> dict[str, IngestFigures]:
    from bench.grpc_ingest import Payloads, _ingest

    payloads = Payloads(8)
    catalog, data_path = b.fresh("ingest")
    env = b.env()
    # The first replica makes the new catalog's tables alone: two servers opening an
    # empty catalog at once race on the archive's tables (`Store.ensure_tables` is
    # not retried on a DuckLake transaction conflict, as `Store.open`'s are).
    emb, a = spawn_all([_store_argv(tmp / "ingest-embedded", tokens, None, None),
                        _store_argv(tmp / "ingest-a", tokens, catalog, data_path)], env)
    bb = spawn(_store_argv(tmp / "ingest-b", tokens, catalog, data_path), env)
    procs = {"embedded": [emb], "cluster, 1 replica": [a]}
    procs["cluster, 2 replicas"] = [a, bb]
    out: dict[str, IngestFigures] = {}
    try:
        for ps in (procs["embedded"], [a, bb]):
            for p in ps:  # connections, caches, compiled kernels
                _ingest(p.address, devices[0], "stream", 2, min(seconds, 0.5), payloads)
        for r in range(runs):
            for name, ps in procs.items():
                # The callers in lanes of at most 8 streams, each lane a cart of its own
                # (the service lets one caller hold 8 streams), the lanes spread over
                # the servers.
                n_lanes = len(devices)
                lanes = [(ps[j % len(ps)], devices[j],
                          callers // n_lanes + (j < callers % n_lanes)) for j in range(n_lanes)]
                cpu0 = [_cpu_seconds(p.pid) for p in ps]
                back0 = b.cpu()
                results: list[Any] = [None] * n_lanes

                def one(j: int, lanes: list[tuple[Proc, str, int]] = lanes,
                        results: list[Any] = results) -> None:
                    proc, token, share = lanes[j]
                    results[j] = _ingest(proc.address, token, "stream", share, seconds,
                                         payloads)

                threads = [threading.Thread(target=one, args=(j,)) for j in range(n_lanes)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                count = sum(x.count for x in results)
                elapsed = max(x.seconds for x in results)
                cpu = sum(_cpu_seconds(p.pid) - c for p, c in zip(ps, cpu0, strict=True))
                back = b.cpu() - back0 if name != "embedded" else 0.0
                fig = out.setdefault(name, IngestFigures())
                fig.rate.append(count / elapsed)
                fig.cpu.append(cpu / max(count, 1))
                fig.backend_cpu.append(back / max(count, 1))
                fig.errors += sum(x.errors for x in results)
                progress(f"  ingest {name} run {r + 1}: {count / elapsed:,.0f} ECGs/s, "
                         f"{fmt_time(cpu / max(count, 1))} server CPU/ECG")
    finally:
        for p in {id(p): p for ps in procs.values() for p in ps}.values():
            p.stop()
        _drop_cluster(b, catalog, data_path)
    return out


# -------------------------------------------------------------- 4. commits
def commit_bench(b: Backends, tmp: Path, group: int, runs: int
                 ) -> dict[str, tuple[float, float]]:
    """Per catalog and data path: median (register alone, stage + register) seconds."""
    from waveform.store import Store
    from waveform.store.durable import register, stage_tables
    from waveform.store.files import files_for
    from waveform.store.lake import connect
    from waveform.store.records import prepare, tables

    cat_s3, path_s3 = b.fresh("commit_s3")
    cat_pg, _ = b.fresh("commit_local")
    configs = {
        "DuckDB file, local data": (str(tmp / "commit-duck" / "catalog.ducklake"),
                                    str(tmp / "commit-duck" / "lake") + os.sep),
        "PostgreSQL, local data": (cat_pg, str(tmp / "commit-pg" / "lake") + os.sep),
        "PostgreSQL, S3 data": (cat_s3, path_s3),
    }
    now = dt.datetime.now(dt.UTC)
    objects = sample_objects("7", group * (runs + 2))
    groups = [tables([prepare(d, SAMPLE_ORG, now) for d in objects[i:i + group]])
              for i in range(0, len(objects), group)]
    lakes = {}
    (tmp / "commit-duck").mkdir(exist_ok=True)
    for name, (catalog, data_path) in configs.items():
        Path(tmp / "commit-dir").mkdir(exist_ok=True)
        Store.open(tmp / "commit-dir", catalog=catalog, data_path=data_path, analyze=None,
                   measure=False, auto_compact_commits=None).close()
        lakes[name] = (connect(catalog, data_path), files_for(data_path), data_path)
    times: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in configs}
    try:
        for i, g in enumerate(groups):
            for name, (lake, files, data_path) in lakes.items():
                cur = lake.cursor()
                t0 = time.perf_counter()
                written = stage_tables(files, data_path, {k: v for k, v in g.items()
                                                          if v.num_rows})
                t1 = time.perf_counter()
                register(cur, files, written)
                t2 = time.perf_counter()
                if i >= 2:  # the first commits load caches and open connections
                    times[name][0].append(t2 - t1)
                    times[name][1].append(t2 - t0)
    finally:
        for lake, _, _ in lakes.values():
            lake.close()
        _drop_cluster(b, cat_s3, path_s3)
        _drop_cluster(b, cat_pg, "s3://bench/none/")
    return {n: (statistics.median(a), statistics.median(c)) for n, (a, c) in times.items()}


# ---------------------------------------------------------------- printing
def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table (what the docs take as printed)."""
    lines = ["| " + " | ".join(str(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def report(opened: dict[tuple[int, str], OpenFigures], how: str,
           ingest: dict[str, IngestFigures], commits: dict[str, tuple[float, float]],
           runs: int, ingest_runs: int, callers: int, k: int) -> list[str]:
    """Print the four tables; the targets missed."""
    misses: list[str] = []
    sizes = sorted({n for n, _ in opened})
    if opened:
        _report_open(opened, how, runs, k, sizes, misses)
    if ingest:
        _report_ingest(ingest, ingest_runs, callers)
    if opened:
        _report_reads(opened, max(sizes))
    if commits:
        _report_commits(commits)
    print()
    if misses:
        print("targets missed:")
        for m in misses:
            print(f"  - {m}")
    elif opened:
        print(f"every target met at {max(sizes):,} ECGs")
    return misses


def _report_open(opened: dict[tuple[int, str], OpenFigures], how: str, runs: int, k: int,
                 sizes: list[int], misses: list[str]) -> None:
    print(f"\n### 1. Open at scale (medians of {runs} interleaved run(s); GetTrace/GetDicom "
          f"over {k:,} sampled ECGs)\n")
    print(f"Cluster server: {how}. Embedded: `waveform serve --data DIR`.\n")
    rows = []
    for n in sizes:
        e, c = opened[(n, "embedded")], opened[(n, "cluster")]
        for label, attr, fmt in (("ready (start to health SERVING)", "ready_s", "s"),
                                 ("resident memory (VmRSS)", "rss", "mib"),
                                 ("GetTrace p50", "trace_s", "t"),
                                 ("GetDicom p50", "dicom_s", "t")):
            ev, cv = e.med(attr), c.med(attr)
            f = (lambda v: f"{v:.2f} s") if fmt == "s" else (_mib if fmt == "mib" else fmt_time)
            target = {"ready_s": f"<= {TARGET_READY_S:g} s", "rss": "<= 1 GiB",
                      "trace_s": f"<= {fmt_time(TARGET_TRACE_S)}"}.get(attr, "")
            rows.append([f"{n:,}", label, f(ev), f(cv), f"{cv / ev:.2f}" if ev else "-",
                         target])
            limit = {"ready_s": TARGET_READY_S, "rss": TARGET_RSS,
                     "trace_s": TARGET_TRACE_S}.get(attr)
            if limit is not None and n == max(sizes):
                for mode, v in (("embedded", ev), ("cluster", cv)):
                    if v > limit:
                        misses.append(f"{label} {mode} at {n:,} ECGs: {f(v)} (target {f(limit)})")
    print(md_table(["ECGs", "measure", "embedded", "cluster", "cluster/embedded", "target"],
                   rows))


def _report_ingest(ingest: dict[str, IngestFigures], ingest_runs: int, callers: int) -> None:
    print(f"\n### 2. Ingest: IngestStream x{callers}, medians of {ingest_runs} interleaved "
          "runs\n")
    base = statistics.median(ingest["embedded"].rate) if "embedded" in ingest else 0.0
    rows = []
    for name, fig in ingest.items():
        rate = statistics.median(fig.rate)
        rows.append([name, f"{rate:,.0f}/s", f"{rate / base:.2f}" if base else "-",
                     fmt_time(statistics.median(fig.cpu)),
                     fmt_time(statistics.median(fig.backend_cpu)) if name != "embedded"
                     else "-", str(fig.errors)])
    print(md_table(["mode", "ECGs/s", "vs embedded", "server CPU/ECG",
                    "PostgreSQL + SeaweedFS CPU/ECG", "errors"], rows))
    print("\n(server CPU: user + system time of the waveform server processes over the run, "
          "every thread, per acknowledged ECG; no measurement stage)")


def _report_reads(opened: dict[tuple[int, str], OpenFigures], top: int) -> None:
    e, c = opened[(top, "embedded")], opened[(top, "cluster")]
    print(f"\n### 3. Reads from S3 against local disk ({top:,} ECGs, p50 end to end)\n")
    print(md_table(["call", "local disk (embedded)", "S3 + PostgreSQL (cluster)", "ratio"], [
        [rpc, fmt_time(e.med(attr)), fmt_time(c.med(attr)),
         f"{c.med(attr) / e.med(attr):.2f}"]
        for rpc, attr in (("GetTrace (whole 12-lead 10 s)", "trace_s"),
                          ("GetDicom (124 KB object)", "dicom_s"))]))


def _report_commits(commits: dict[str, tuple[float, float]]) -> None:
    print("\n### 4. One DuckLake commit of 16 ECGs (ecg + header + waveform), medians\n")
    duck = commits.get("DuckDB file, local data", (0.0, 0.0))
    print(md_table(["catalog, data", "catalog commit (register)", "vs DuckDB file",
                    "data files + commit"], [
        [name, fmt_time(reg), f"{reg / duck[0]:.2f}" if duck[0] else "-", fmt_time(tot)]
        for name, (reg, tot) in commits.items()]))


def main(small: bool = False, ecgs: Sequence[int] | None = None, sample: int | None = None,
         runs: int | None = None, tmp: str | None = None,
         parts: Sequence[str] = ("open", "ingest", "commit")) -> None:
    from waveform.service.identity import Identity, add_token

    sizes = list(ecgs or ((2_000,) if small else (1_000_000, 10_000_000)))
    k = sample or (100 if small else 2_000)
    k = min(k, min(sizes))
    runs = runs or (1 if small else 3)
    ingest_runs = 1 if small else 3
    callers = 4 if small else 16
    seconds = 0.3 if small else 3.0
    calls = 10 if small else 200
    where = Path(tmp or "/tmp")
    free = shutil.disk_usage(where).free
    print(f"sizes {', '.join(f'{n:,}' for n in sizes)} ECGs; {free / 2**30:,.0f} GiB free "
          f"under {where}", flush=True)

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-cluster-", dir=where) as d, \
            backends() as b:
        root = Path(d)
        tokens = root / "tokens.json"
        clinician = add_token(tokens, Identity(SAMPLE_ORG, "dr-bench", "clinician"))
        devices = [add_token(tokens, Identity("org-bench", f"cart-{j}", "device"))
                   for j in range(2)]
        opened, how = ({}, "") if "open" not in parts else open_bench(
            b, root, sizes, k, runs, calls, clinician, tokens, progress)
        ingest = {} if "ingest" not in parts else ingest_bench(
            b, root, tokens, devices, callers, seconds, ingest_runs, progress)
        commits = {} if "commit" not in parts else commit_bench(b, root, 16, 3 if small else 30)
        report(opened, how, ingest, commits, runs, ingest_runs, callers, k)


def _cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true")
    p.add_argument("--ecgs", help="archive sizes, comma-separated (default 1000000,10000000)")
    p.add_argument("--sample", type=int, help="readable ECGs in each archive (default 2000)")
    p.add_argument("--runs", type=int, help="server starts per size and mode (default 3)")
    p.add_argument("--tmp", help="where the archives are generated (default /tmp)")
    p.add_argument("--parts", default="open,ingest,commit",
                   help="which to run (default all: open,ingest,commit)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--catalog", help=argparse.SUPPRESS)
    p.add_argument("--data-path", help=argparse.SUPPRESS)
    p.add_argument("--tokens", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        _serve(args)
        return 0
    sizes = [int(s.replace("_", "")) for s in args.ecgs.split(",")] if args.ecgs else None
    main(small=args.small, ecgs=sizes, sample=args.sample, runs=args.runs, tmp=args.tmp,
         parts=args.parts.split(","))
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
