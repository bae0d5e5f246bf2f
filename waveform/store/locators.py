"""Where each stored ECG's rows are, kept in a row store beside the lake.

The lake is the truth; this is its point-lookup index, and the table where
writers claim a SOP Instance UID before they store it. Nothing is loaded at open:
a lookup is one indexed query (SQLite in the data directory for the embedded
store, a table in the catalog's PostgreSQL database for several servers), so
opening takes the same time at ten ECGs and at ten million, and memory does not
grow with the archive.

A row of ``waveform_locator`` is either *claimed* (a writer is storing the
object: its SHA-256 and size are known, its rows are not yet committed) or
*stored* (the lake commit landed; the row says in which file and row each of the
ECG's ``ecg``, ``header`` and ``waveform`` rows is, and its current summary's).
Writers claim before they stage, so two servers sent the same UID at once store
it once: the loser sees the winner's claim and waits for it to be stored
(`Store`), or takes over a claim whose writer went silent for `CLAIM_TTL_S`.

The index is derived data. It is updated after each lake commit, not in the
same transaction (DuckLake commits in its own), so a crash between the two leaves
the lake ahead: every data file the index has taken in is marked in
``waveform_file``, and `Store.open` indexes the live files that are not (after a
crash, or an archive written before this index existed) from the files
themselves. The cost of that is the number of files, not of ECGs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from waveform.errors import StorageError

__all__ = [
    "CLAIMED",
    "CLAIM_TTL_S",
    "EXAM_COLUMNS",
    "STORED",
    "Claim",
    "Entry",
    "Locators",
    "PostgresLocators",
    "SqliteLocators",
    "open_locators",
]

#: Row states.
CLAIMED = 0
STORED = 1

#: A claim whose writer has not stored the object for this long may be taken over
#: (the writer died between its claim and its commit).
CLAIM_TTL_S = 30.0

Locator = tuple[str, int]


@dataclass(slots=True)
class Entry:
    """A stored ECG: its digest, and where its rows are."""

    sha256: str
    size: int
    #: When it was stored, in microseconds since the epoch (None: a row committed
    #: without one).
    ingested_us: int | None
    ecg: Locator
    header: Locator  # ("", -1): catalogued without its object
    groups: list[Locator]


@dataclass(frozen=True, slots=True)
class Claim:
    """A UID someone else holds: stored (``entry``), or claimed by ``owner``."""

    uid: str
    sha256: str
    size: int
    owner: str
    claimed_us: int
    entry: Entry | None


_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS waveform_file (
        id {serial} PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,
        indexed SMALLINT NOT NULL DEFAULT 0,
        version TEXT)""",
    """CREATE TABLE IF NOT EXISTS waveform_locator (
        uid TEXT NOT NULL PRIMARY KEY,
        sha256 TEXT,
        size BIGINT,
        state SMALLINT NOT NULL,
        owner TEXT NOT NULL DEFAULT '',
        claimed_us BIGINT NOT NULL DEFAULT 0,
        ingested_us BIGINT,
        ecg_file BIGINT, ecg_row BIGINT,
        header_file BIGINT, header_row BIGINT,
        wave_file BIGINT, wave_rows TEXT,
        summary_version TEXT, summary_file BIGINT, summary_row BIGINT,
        patient_id TEXT, organisation TEXT, study_instance_uid TEXT, accession_number TEXT,
        acquired_us BIGINT, sop_class_uid TEXT, study_description TEXT, operator TEXT,
        reading_physician TEXT){without_rowid}""",
    "CREATE INDEX IF NOT EXISTS waveform_locator_state ON waveform_locator (state)",
    "CREATE INDEX IF NOT EXISTS waveform_locator_version ON waveform_locator "
    "(summary_version)",
    "CREATE INDEX IF NOT EXISTS waveform_locator_patient ON waveform_locator (patient_id)",
    "CREATE INDEX IF NOT EXISTS waveform_locator_study ON waveform_locator (study_instance_uid)",
    "CREATE INDEX IF NOT EXISTS waveform_locator_accession ON waveform_locator "
    "(accession_number)",
)

#: The examination columns each locator row carries (`exams`), as in the ``ecg`` table
#: (``acquired_us``: ``acquisition_datetime`` in microseconds since 1970, as stated).
EXAM_COLUMNS = ("sop_instance_uid", "patient_id", "organisation", "study_instance_uid",
                "accession_number", "acquisition_datetime", "sop_class_uid",
                "study_description", "operator", "reading_physician")
_EXAM_SQL = ("uid", "patient_id", "organisation", "study_instance_uid", "accession_number",
             "acquired_us", "sop_class_uid", "study_description", "operator",
             "reading_physician")
_NAIVE_EPOCH = dt.datetime(1970, 1, 1)


def _us(t: Any) -> int | None:
    """Microseconds since 1970 of a datetime as stated (naive, or its own offset)."""
    if not isinstance(t, dt.datetime):
        return None
    d = t.replace(tzinfo=None) - _NAIVE_EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def _exam_values(ctx: Mapping[str, Any] | None) -> tuple[Any, ...]:
    """A context's `EXAM_COLUMNS` after the UID, as the locator row holds them."""
    if ctx is None:
        return (None,) * (len(EXAM_COLUMNS) - 1)
    return tuple(_us(ctx.get(c)) if c == "acquisition_datetime" else ctx.get(c)
                 for c in EXAM_COLUMNS[1:])


_EXAM_SET = ", ".join(f"{c} = coalesce(excluded.{c}, waveform_locator.{c})"
                      for c in _EXAM_SQL[1:])

_ENTRY = ("SELECT l.uid, l.sha256, l.size, l.ingested_us, e.path, l.ecg_row, h.path, "
          "l.header_row, w.path, l.wave_rows FROM waveform_locator l "
          "LEFT JOIN waveform_file e ON e.id = l.ecg_file "
          "LEFT JOIN waveform_file h ON h.id = l.header_file "
          "LEFT JOIN waveform_file w ON w.id = l.wave_file ")


def _entry(row: Sequence[Any]) -> Entry:
    _, sha, size, at, ecg, ecg_row, head, head_row, wave, wave_rows = row
    groups = ([(wave, int(r)) for r in wave_rows.split(",")] if wave and wave_rows else [])
    return Entry(sha, size, at, (ecg or "", -1 if ecg_row is None else int(ecg_row)),
                 (head, int(head_row)) if head else ("", -1), groups)


def _chunks(items: Sequence[Any], n: int = 500) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


class Locators(ABC):
    """The index: claims, locators and indexed files. Thread-safe."""

    #: The placeholder of the driver's parameter style.
    mark = "?"

    #: Idle connections kept for the next call (more are opened under load, and
    #: closed when they come back to a full pool).
    POOL = 8

    def __init__(self) -> None:
        self._file_ids: dict[str, int] = {}
        self._ids_lock = threading.Lock()
        self._closed = False
        self._idle: list[Any] = []
        self._conn_lock = threading.Lock()

    # ------------------------------------------------------------ plumbing
    @abstractmethod
    def _connect(self) -> Any: ...

    @abstractmethod
    def _errors(self) -> tuple[type[BaseException], ...]: ...

    def _transaction(self, con: Any) -> Any:
        return con  # sqlite3: the connection is the transaction's context manager

    def _borrow(self) -> Any:
        with self._conn_lock:
            if self._closed:
                raise StorageError("the locator index is closed")
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _give_back(self, con: Any) -> None:
        with self._conn_lock:
            if not self._closed and len(self._idle) < self.POOL:
                self._idle.append(con)
                return
        self._close(con)

    def _close(self, con: Any) -> None:
        try:
            con.close()
        except self._errors():
            pass

    def _q(self, sql: str) -> str:
        return sql if self.mark == "?" else sql.replace("?", self.mark)

    def _run(self, fn: Any, *, transaction: bool = True) -> Any:
        """``fn(cursor)`` in one transaction, committed; index errors as `StorageError`
        (and the connection dropped). A connection that broke while idle (the server
        restarted) costs one retry on a new one: every operation here may run twice
        (claims are recognised by owner and time, the rest are upserts)."""
        for attempt in (1, 2):
            con = self._borrow()
            try:
                with (self._transaction(con) if transaction  # commit, or roll back
                      else contextlib.nullcontext()):
                    cur = con.cursor()
                    try:
                        out = fn(cur)
                    finally:
                        cur.close()
            except self._errors() as e:
                self._close(con)
                if attempt == 1 and self._lost_connection(e):
                    self._drop_idle()
                    continue
                raise StorageError(f"the locator index failed: {e}") from e
            except BaseException:
                self._close(con)
                raise
            self._give_back(con)
            return out
        raise AssertionError("unreachable")  # pragma: no cover

    def _lost_connection(self, error: BaseException) -> bool:
        """Whether ``error`` says the connection is gone (not the statement wrong)."""
        return False

    def _drop_idle(self) -> None:
        with self._conn_lock:
            idle, self._idle = self._idle, []
        for con in idle:
            self._close(con)

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """Work that one server at a time may do (compaction): yields whether this
        process holds ``name`` now (False: another server is doing it). Embedded: one
        process, always True."""
        yield True

    def ping(self) -> None:
        """A round trip to the index; raises `StorageError` while it cannot be reached."""
        self._fetch("SELECT 1")

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """One read statement (outside an explicit transaction: one round trip)."""
        def run(cur: Any) -> list[Any]:
            cur.execute(self._q(sql), list(params))
            return list(cur.fetchall())

        out: list[Any] = self._run(run, transaction=False)
        return out

    def create(self) -> None:
        serial = "INTEGER" if self.mark == "?" else "BIGINT GENERATED BY DEFAULT AS IDENTITY"
        without_rowid = " WITHOUT ROWID" if self.mark == "?" else ""

        def run(cur: Any) -> None:
            for stmt in _SCHEMA:
                cur.execute(stmt.format(serial=serial, without_rowid=without_rowid))

        self._run(run)

    def _file_id(self, cur: Any, path: str) -> int:
        with self._ids_lock:
            known = self._file_ids.get(path)
        if known is not None:
            return known
        cur.execute(self._q("INSERT INTO waveform_file (path) VALUES (?) ON CONFLICT (path) "
                            "DO NOTHING"), [path])
        cur.execute(self._q("SELECT id FROM waveform_file WHERE path = ?"), [path])
        fid = int(cur.fetchone()[0])
        with self._ids_lock:
            self._file_ids[path] = fid
        return fid

    # ------------------------------------------------------------ lookups
    def get(self, uid: str) -> Entry | None:
        """The stored ECG ``uid`` (None: not stored, or only claimed)."""
        rows = self._fetch(_ENTRY + "WHERE l.uid = ? AND l.state = 1", [uid])
        return _entry(rows[0]) if rows else None

    def get_many(self, uids: Iterable[str]) -> dict[str, Entry]:
        out: dict[str, Entry] = {}
        for chunk in _chunks(list(dict.fromkeys(uids))):
            marks = ", ".join("?" * len(chunk))
            for r in self._fetch(_ENTRY + f"WHERE l.uid IN ({marks}) AND l.state = 1",
                                 list(chunk)):
                out[r[0]] = _entry(r)
        return out

    def claimed(self, uid: str) -> Claim | None:
        """Who holds ``uid`` now (stored or claimed), or None."""
        got = self._held([uid])
        return got.get(uid)

    def _held(self, uids: Sequence[str], cur: Any = None) -> dict[str, Claim]:
        out: dict[str, Claim] = {}
        for chunk in _chunks(list(uids)):
            marks = ", ".join("?" * len(chunk))
            sql = (_ENTRY.replace("SELECT l.uid,", "SELECT l.state, l.owner, l.claimed_us, l.uid,")
                   + f"WHERE l.uid IN ({marks})")
            if cur is None:
                rows = self._fetch(sql, list(chunk))
            else:
                cur.execute(self._q(sql), list(chunk))
                rows = cur.fetchall()
            for r in rows:
                state, owner, claimed_us = r[0], r[1], r[2]
                entry = _entry(r[3:]) if state == STORED else None
                out[r[3]] = Claim(r[3], r[4], r[5], owner, int(claimed_us), entry)
        return out

    def uids(self) -> list[str]:
        return [r[0] for r in self._fetch(
            "SELECT uid FROM waveform_locator WHERE state = 1 ORDER BY uid")]

    def count(self) -> int:
        return int(self._fetch("SELECT count(*) FROM waveform_locator WHERE state = 1")[0][0])

    # ------------------------------------------------------------ claims
    def claim(self, items: Sequence[tuple[str, str, int]], owner: str, now_us: int
              ) -> dict[str, Claim]:
        """Claim each (uid, sha256, size) not held by anyone; the holders of the
        others (which may include this owner's own earlier claims)."""

        def run(cur: Any) -> dict[str, Claim]:
            for chunk in _chunks(list(items)):
                cur.executemany(self._q(
                    "INSERT INTO waveform_locator (uid, sha256, size, state, owner, claimed_us) "
                    "VALUES (?, ?, ?, 0, ?, ?) ON CONFLICT (uid) DO NOTHING"),
                    [(u, s, n, owner, now_us) for u, s, n in chunk])
            held = self._held([u for u, _, _ in items], cur)
            return {u: c for u, c in held.items()
                    if not (c.entry is None and c.owner == owner and c.claimed_us == now_us)}

        out: dict[str, Claim] = self._run(run)
        return out

    def take_over(self, uid: str, owner: str, stale_before_us: int, now_us: int) -> bool:
        """Take a claim older than ``stale_before_us`` (its writer went silent)."""

        def run(cur: Any) -> bool:
            cur.execute(self._q(
                "UPDATE waveform_locator SET owner = ?, claimed_us = ? WHERE uid = ? AND "
                "state = 0 AND claimed_us < ?"), [owner, now_us, uid, stale_before_us])
            return bool(cur.rowcount == 1)

        out: bool = self._run(run)
        return out

    def release(self, uids: Sequence[str], owner: str) -> None:
        """Give up this owner's claims (its commit failed: nothing was stored)."""

        def run(cur: Any) -> None:
            cur.executemany(self._q(
                "DELETE FROM waveform_locator WHERE uid = ? AND state = 0 AND owner = ?"),
                [(u, owner) for u in uids])

        self._run(run)

    # ------------------------------------------------------------ stores
    def stored(self, entries: Mapping[str, Entry], files: Iterable[str],
               contexts: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Mark ``entries`` stored (after their lake commit), with their examination
        columns (``contexts``: ``ecg`` rows by UID; absent ones keep what the row has),
        and ``files`` indexed."""
        files = list(files)
        contexts = contexts or {}

        def run(cur: Any) -> None:
            ids = {p: self._file_id(cur, p) for p in files}
            for e in entries.values():
                for p in (e.ecg[0], e.header[0], e.groups[0][0] if e.groups else ""):
                    if p and p not in ids:
                        ids[p] = self._file_id(cur, p)
            rows = []
            for uid, e in entries.items():
                rows.append((uid, e.sha256, e.size, e.ingested_us,
                             ids.get(e.ecg[0]), e.ecg[1],
                             ids.get(e.header[0]) if e.header[0] else None,
                             e.header[1] if e.header[0] else None,
                             ids.get(e.groups[0][0]) if e.groups else None,
                             ",".join(str(r) for _, r in e.groups) if e.groups else None,
                             *_exam_values(contexts.get(uid))))
            marks = ", ".join("?" * (len(_EXAM_SQL) - 1))
            cur.executemany(self._q(
                "INSERT INTO waveform_locator (uid, sha256, size, state, ingested_us, "
                "ecg_file, ecg_row, header_file, header_row, wave_file, wave_rows, "
                f"{', '.join(_EXAM_SQL[1:])}) "
                f"VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, {marks}) ON CONFLICT (uid) DO UPDATE "
                "SET sha256 = excluded.sha256, size = excluded.size, state = 1, "
                "ingested_us = excluded.ingested_us, ecg_file = excluded.ecg_file, "
                "ecg_row = excluded.ecg_row, header_file = excluded.header_file, "
                "header_row = excluded.header_row, wave_file = excluded.wave_file, "
                f"wave_rows = excluded.wave_rows, {_EXAM_SET}"), rows)
            self._mark_indexed(cur, files)

        self._run(run)

    def _mark_indexed(self, cur: Any, files: Sequence[str], version: str | None = None) -> None:
        """``files`` taken in (a ``summary`` file: for the analysis ``version``)."""
        if files:
            cur.executemany(self._q("UPDATE waveform_file SET indexed = 1, version = ? "
                                    "WHERE id = ?"),
                            [(version, self._file_id(cur, p)) for p in files])

    def index_rows(self, table: str, path: str, rows: Sequence[tuple[Any, ...]],
                   version: str | None = None) -> None:
        """Take in one data file of ``table`` read back from the lake: ``ecg`` rows are
        (uid, row, sha256, size, ingested_us, context), ``header`` (uid, row), ``waveform``
        (uid, [rows in group order]), ``summary`` (uid, row, version). Rows of other
        tables' ECGs that are not indexed yet wait for their ``ecg`` file."""

        def run(cur: Any) -> None:
            fid = self._file_id(cur, path)
            if table == "ecg":
                marks = ", ".join("?" * (len(_EXAM_SQL) - 1))
                cur.executemany(self._q(
                    "INSERT INTO waveform_locator (uid, sha256, size, state, ingested_us, "
                    f"ecg_file, ecg_row, {', '.join(_EXAM_SQL[1:])}) "
                    f"VALUES (?, ?, ?, 1, ?, ?, ?, {marks}) ON CONFLICT (uid) DO UPDATE "
                    "SET sha256 = excluded.sha256, size = excluded.size, state = 1, "
                    "ingested_us = excluded.ingested_us, ecg_file = excluded.ecg_file, "
                    f"ecg_row = excluded.ecg_row, {_EXAM_SET}"),
                    [(u, sha, size, at, fid, r, *_exam_values(ctx))
                     for u, r, sha, size, at, ctx in rows])
            elif table in ("header", "waveform"):
                self._point(cur, table, fid, rows)
            elif table == "summary":
                cur.executemany(self._q(
                    "UPDATE waveform_locator SET summary_version = ?, summary_file = ?, "
                    "summary_row = ? WHERE uid = ?"), [(v, fid, r, u) for u, r, v in rows])
            else:
                raise ValueError(f"table {table!r} is not indexed")
            self._mark_indexed(cur, [path], version)

        self._run(run)

    def _point(self, cur: Any, table: str, fid: int, rows: Sequence[tuple[Any, ...]]) -> None:
        """Point the ECGs of ``rows`` at their ``header`` row, or ``waveform`` rows, in
        file ``fid``: (uid, row) or (uid, [rows in group order])."""
        if table == "header":
            cur.executemany(self._q(
                "UPDATE waveform_locator SET header_file = ?, header_row = ? WHERE uid = ?"),
                [(fid, r, u) for u, r in rows])
        else:
            cur.executemany(self._q(
                "UPDATE waveform_locator SET wave_file = ?, wave_rows = ? WHERE uid = ?"),
                [(fid, ",".join(map(str, rs)), u) for u, rs in rows])

    def indexed_files(self, version: str | None) -> set[str]:
        """The files taken in: data files, and ``summary`` files for ``version``."""
        return {r[0] for r in self._fetch(
            "SELECT path FROM waveform_file WHERE indexed = 1 AND (version IS NULL OR "
            "version = ?)", [version or ""])}

    def forget_files(self, paths: Iterable[str]) -> None:
        """Files the lake no longer names (compaction replaced them)."""
        paths = list(paths)

        def run(cur: Any) -> None:
            cur.executemany(self._q("DELETE FROM waveform_file WHERE path = ?"),
                            [(p,) for p in paths])

        self._run(run)
        with self._ids_lock:
            for p in paths:
                self._file_ids.pop(p, None)

    # ------------------------------------------------------------ examinations
    def exams(self, column: str, value: str) -> list[dict[str, Any]]:
        """The stored ECGs whose ``column`` (``patient_id``, ``study_instance_uid``,
        ``accession_number`` or ``uid``) is ``value``, as `EXAM_COLUMNS` dicts."""
        if column not in ("patient_id", "study_instance_uid", "accession_number", "uid"):
            raise ValueError(f"examinations are not looked up by {column!r}")
        if not value:
            return []
        out = []
        for r in self._fetch(f"SELECT {', '.join(_EXAM_SQL)} FROM waveform_locator "
                             f"WHERE {column} = ? AND state = 1", [value]):
            d = dict(zip(EXAM_COLUMNS, r, strict=True))
            us = d["acquisition_datetime"]
            d["acquisition_datetime"] = (None if us is None
                                         else _NAIVE_EPOCH + dt.timedelta(microseconds=us))
            out.append(d)
        return out

    # ------------------------------------------------------------ summaries
    def summary(self, uid: str, version: str) -> Locator | None:
        return self.summaries([uid], version).get(uid)

    def summaries(self, uids: Iterable[str], version: str) -> dict[str, Locator]:
        """The locators of the ``version`` summaries of ``uids`` that have one."""
        out: dict[str, Locator] = {}
        for chunk in _chunks(list(dict.fromkeys(uids))):
            marks = ", ".join("?" * len(chunk))
            for uid, path, row in self._fetch(
                    "SELECT l.uid, f.path, l.summary_row FROM waveform_locator l JOIN "
                    f"waveform_file f ON f.id = l.summary_file WHERE l.uid IN ({marks}) "
                    "AND l.summary_version = ?", [*chunk, version]):
                out[uid] = (path, int(row))
        return out

    def set_summaries(self, version: str, locs: Mapping[str, Locator], path: str) -> None:
        """Point ``locs``' ECGs at their new ``version`` summary, all in file ``path``."""

        def run(cur: Any) -> None:
            fid = self._file_id(cur, path)
            cur.executemany(self._q(
                "UPDATE waveform_locator SET summary_version = ?, summary_file = ?, "
                "summary_row = ? WHERE uid = ?"),
                [(version, fid, row, uid) for uid, (_, row) in locs.items()])
            self._mark_indexed(cur, [path], version)

        self._run(run)

    def without_summary(self, version: str) -> list[str]:
        """Stored ECGs without a ``version`` summary."""
        # Two ranges and NULL, each served by the index on summary_version, so that
        # a measured archive answers without a scan (SQLite would otherwise choose the
        # state index, which every stored row matches).
        hint = " INDEXED BY waveform_locator_version" if self.mark == "?" else ""
        branches = " UNION ALL ".join(
            f"SELECT uid FROM waveform_locator{hint} WHERE {cond} AND state = 1"
            for cond in ("summary_version IS NULL", "summary_version < ?",
                         "summary_version > ?"))
        return [r[0] for r in self._fetch(branches, [version, version])]

    # ------------------------------------------------------------ compaction
    def moved(self, table: str, new: str, rows: Sequence[tuple[Any, ...]],
              old: Iterable[str], version: str | None = None) -> None:
        """Compaction committed ``new`` in place of ``old``: the locators of its rows
        move (``rows`` as for `index_rows`; ``summary`` rows move only where the
        current locator was in ``old``)."""
        old = list(old)

        def run(cur: Any) -> None:
            fid = self._file_id(cur, new)
            old_ids = [self._file_id(cur, p) for p in old]
            if table == "ecg":
                cur.executemany(self._q(
                    "UPDATE waveform_locator SET ecg_file = ?, ecg_row = ? WHERE uid = ?"),
                    [(fid, r, u) for u, r, *_ in rows])
            elif table in ("header", "waveform"):
                self._point(cur, table, fid, rows)
            elif table == "summary":
                marks = ", ".join("?" * len(old_ids))
                cur.executemany(self._q(
                    "UPDATE waveform_locator SET summary_file = ?, summary_row = ? WHERE "
                    f"uid = ? AND summary_version = ? AND summary_file IN ({marks})"),
                    [(fid, r, u, v, *old_ids) for u, r, v in rows])
            self._mark_indexed(cur, [new], version)

        self._run(run)

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        with self._conn_lock:
            self._closed = True
            cons, self._idle = self._idle, []
        for con in cons:
            self._close(con)


class SqliteLocators(Locators):
    """The embedded store's index: a SQLite file in WAL mode.

    Not synchronous: the index is derived from the lake, which `Store.open`
    re-reads for any file the index had not taken in, so a write of it lost in a
    crash costs a re-read, never an ECG."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False,
                              isolation_level="DEFERRED")
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = OFF")
        return con

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)


class PostgresLocators(Locators):
    """The index of several servers: tables in the catalog's PostgreSQL database."""

    mark = "%s"

    def __init__(self, conninfo: str) -> None:
        super().__init__()
        self.conninfo = conninfo

    def _connect(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(self.conninfo, connect_timeout=5, autocommit=True)
        except psycopg.Error as e:
            raise StorageError(f"cannot reach the locator index in PostgreSQL: {e}") from e

    def _errors(self) -> tuple[type[BaseException], ...]:
        import psycopg

        return (psycopg.Error,)

    def _transaction(self, con: Any) -> Any:
        return con.transaction()

    def _lost_connection(self, error: BaseException) -> bool:
        import psycopg

        return isinstance(error, psycopg.OperationalError)

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """A PostgreSQL advisory lock on a connection of its own, held for the block;
        released by PostgreSQL if this process dies."""
        con = self._connect()
        try:
            row = con.execute("SELECT pg_try_advisory_lock(hashtext(%s))",
                              [f"waveform:{name}"]).fetchone()
            held = bool(row and row[0])
            yield held
        finally:
            self._close(con)  # ends the session, and the lock with it


def open_locators(catalog: str, data_dir: str | None) -> Locators:
    """The index that goes with ``catalog``: its PostgreSQL database for a
    ``postgres:`` catalog, else ``locators.sqlite`` beside the catalog file."""
    if catalog.startswith("postgres:"):
        loc: Locators = PostgresLocators(catalog.removeprefix("postgres:"))
    else:
        where = data_dir if data_dir is not None else os.path.dirname(catalog)
        loc = SqliteLocators(os.path.join(where, "locators.sqlite"))
    loc.create()
    return loc
