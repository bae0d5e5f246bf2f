"""The audit trail of several servers: one hash chain per replica in PostgreSQL.

Replicas that share a PostgreSQL catalog keep their audit events in that database,
so that an event outlives the machine that wrote it and every replica reads all of
them. Each replica appends to a chain of its own (``replica``, ``seq`` 1, 2, ...,
``prev`` and ``hash`` as in the journal files, ``replica`` hashed with the event),
so replicas never wait on one another's chain head. Two tables::

    waveform_audit       pos (global order), replica, seq, time, "user", organisation,
                         patient_id, prev, hash, event (the canonical JSON that is hashed)
                         primary key (replica, seq); indexes on the query filters
    waveform_audit_head  replica, seq, hash, time: the last event of each chain

A writer thread takes the events of concurrent calls (group commit, as the journal
does) and writes a batch in one transaction: lock its chain's head row, insert the
events after it, move the head to the last one, commit. A call is answered only
after that commit, so an event a killed replica acknowledged is in PostgreSQL. The
head row moves in the same transaction as the events, so `verify_postgres` finds a
removed last event the way ``HEAD`` finds one among the files.

When a batch cannot be committed (PostgreSQL unreachable, restarted, refusing), its
calls are refused and the trail is `failed` (health says NOT_SERVING); every
`RETRY_S` seconds it reads its chain head again and takes events once it can. That
is safe after any failure, also a commit whose outcome is unknown (the connection
lost during COMMIT): the chain's state is the head row, read in every transaction,
never a copy in this process. A batch in doubt is looked up when the trail recovers
and the log says whether it landed; if it did, the trail holds events of calls that
were refused, never a call answered without its event.

Queries read every replica's events in ``pos`` order, one sequence that PostgreSQL
hands out as the events are inserted: the order they were written in, the replicas
merged (their ``time`` agrees up to the replicas' clocks). Rows carry ``pos`` as
``seq`` (the paging position) and the chain's own number as ``replica_seq``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import threading
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import conninfo as pg_conninfo

from waveform.archive.audit import (
    GENESIS,
    AuditEvent,
    Pending,
    Trail,
    canonical,
    event_digest,
    stamp,
)
from waveform.archive.clock import Clock, utcnow
from waveform.errors import DurabilityError, StorageError

__all__ = ["TABLE", "PostgresTrail", "default_replica", "verify_postgres"]

log = logging.getLogger("waveform.audit")

#: The events of every replica.
TABLE = "waveform_audit"
#: The last event of each replica's chain.
HEAD_TABLE = "waveform_audit_head"
#: Serialises replicas creating the tables at once (PostgreSQL's ``CREATE TABLE IF
#: NOT EXISTS`` is not safe against a concurrent one); an arbitrary constant.
_SCHEMA_LOCK = 0x5741_5645_4155_4454

_SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        pos BIGINT GENERATED ALWAYS AS IDENTITY,
        replica TEXT NOT NULL,
        seq BIGINT NOT NULL,
        time TIMESTAMPTZ NOT NULL,
        "user" TEXT NOT NULL,
        organisation TEXT NOT NULL,
        patient_id TEXT NOT NULL,
        prev TEXT NOT NULL,
        hash TEXT NOT NULL,
        event TEXT NOT NULL,
        PRIMARY KEY (replica, seq),
        UNIQUE (pos))""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_patient ON {TABLE} (patient_id, pos)",
    f'CREATE INDEX IF NOT EXISTS {TABLE}_user ON {TABLE} ("user", pos)',
    f"CREATE INDEX IF NOT EXISTS {TABLE}_organisation ON {TABLE} (organisation, pos)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_time ON {TABLE} (time)",
    f"""CREATE TABLE IF NOT EXISTS {HEAD_TABLE} (
        replica TEXT PRIMARY KEY,
        seq BIGINT NOT NULL,
        hash TEXT NOT NULL,
        time TIMESTAMPTZ)""",
)

_INSERT = (f'INSERT INTO {TABLE} (replica, seq, time, "user", organisation, patient_id, '
           "prev, hash, event) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)")

#: libpq settings the trail uses unless the connection string sets them: a dead
#: server or network is noticed in seconds, not at the kernel's TCP timeout, so
#: the trail reports failure (and health NOT_SERVING) instead of hanging calls.
_CONNECT_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "3",
    "keepalives_count": "3",
    "tcp_user_timeout": "15000",
    "application_name": "waveform-audit",
}

#: Idle query connections kept for the next query.
_POOL = 4


def default_replica() -> str:
    """A chain name of this process's own: the host name and a random suffix."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:12]}"


def _connect(conninfo: str) -> psycopg.Connection[Any]:
    params: dict[str, Any] = dict(_CONNECT_DEFAULTS)
    params.update(pg_conninfo.conninfo_to_dict(conninfo))
    return psycopg.connect(**params, autocommit=True)


def _close(con: psycopg.Connection[Any] | None) -> None:
    if con is None:
        return
    try:
        con.close()
    except psycopg.Error:
        pass  # the connection is gone either way


def _col(value: str) -> str:
    """A value as an indexed column holds it: PostgreSQL text cannot hold NUL (the
    event's JSON keeps the value exactly, escaped)."""
    return value.replace("\x00", "\ufffd")


def _when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


class PostgresTrail(Trail):
    """This replica's chain in PostgreSQL; queries read every replica's events."""

    def __init__(self, conninfo: str, clock: Clock = utcnow, *,
                 replica: str | None = None) -> None:
        """``conninfo``: a libpq connection string (a ``postgres:`` catalog's, without
        the prefix). ``replica``: this server's chain; a stable name continues the
        chain across restarts, None starts a new one (`default_replica`). Two processes
        given one name share its chain safely (the head row is locked), but wait on
        each other."""
        super().__init__(clock)
        self.conninfo = conninfo
        self.replica = replica or default_replica()
        self._writer: psycopg.Connection[Any] | None = None
        self._idle: list[psycopg.Connection[Any]] = []
        self._pool_lock = threading.Lock()
        self._closed = False
        #: (seq, hash) of the last event of a batch whose commit was cut off.
        self._in_doubt: tuple[int, str] | None = None
        try:
            self._writer = _connect(conninfo)
            with self._writer.transaction():
                self._writer.execute("SELECT pg_advisory_xact_lock(%s)", [_SCHEMA_LOCK])
                for stmt in _SCHEMA:
                    self._writer.execute(stmt)
                # A new chain starts at GENESIS; a chain whose head row is missing
                # while it holds events is not started again (verify reports it).
                self._writer.execute(
                    f"INSERT INTO {HEAD_TABLE} (replica, seq, hash) SELECT %s, 0, %s "
                    f"WHERE NOT EXISTS (SELECT 1 FROM {TABLE} WHERE replica = %s) "
                    "ON CONFLICT (replica) DO NOTHING", [self.replica, GENESIS, self.replica])
            self._seq, self._prev = self._head(self._writer)
        except (psycopg.Error, StorageError) as e:
            _close(self._writer)
            if isinstance(e, StorageError):
                raise
            raise StorageError(f"cannot open the audit trail in PostgreSQL: {e}") from e
        self._thread.start()

    # ------------------------------------------------------------------ writing
    def _head(self, con: psycopg.Connection[Any], lock: bool = False) -> tuple[int, str]:
        row = con.execute(f"SELECT seq, hash FROM {HEAD_TABLE} WHERE replica = %s"
                          + (" FOR UPDATE" if lock else ""), [self.replica]).fetchone()
        if row is None:
            raise StorageError(
                f"the audit chain of replica {self.replica!r} holds events but has no head "
                f"record in {HEAD_TABLE} (removed?); `waveform audit verify` checks it, and "
                "the replica can write under another name")
        return int(row[0]), str(row[1])

    def _connection(self) -> psycopg.Connection[Any]:
        if self._writer is None or self._writer.closed:
            self._writer = _connect(self.conninfo)
        return self._writer

    def _write(self, batch: list[Pending]) -> None:
        stage = "connect"
        seq, prev = 0, GENESIS
        try:
            con = self._connection()
            stage = "write"
            with con.transaction():
                seq, prev = self._head(con, lock=True)
                now = stamp(self._clock)
                at = _when(now)
                rows = []
                for ev, _ in batch:
                    seq += 1
                    ev.seq, ev.time, ev.prev = seq, now, prev
                    rec = self._record(ev)
                    ev.hash = rec["hash"] = event_digest(rec)
                    prev = ev.hash
                    rows.append((self.replica, seq, at, _col(ev.user), _col(ev.organisation),
                                 _col(ev.patient_id), ev.prev, ev.hash, canonical(rec)))
                with con.cursor() as cur:
                    cur.executemany(_INSERT, rows)
                con.execute(f"UPDATE {HEAD_TABLE} SET seq = %s, hash = %s, time = %s "
                            "WHERE replica = %s", [seq, prev, at, self.replica])
                stage = "commit"  # what fails from here on is the COMMIT itself
        except (psycopg.Error, StorageError) as e:
            _close(self._writer)
            self._writer = None
            if stage == "commit":
                self._in_doubt = (seq, prev)
            self._recoverable = True
            self._failed = e
            err = DurabilityError(f"the audit trail could not commit to PostgreSQL ({e}); "
                                  "nothing is returned without its audit event")
            for _, f in batch:
                f.set_exception(err)
            log.error("audit trail commit failed; patient data is refused until PostgreSQL "
                      "takes events again", exc_info=e,
                      extra={"replica": self.replica, "in_doubt": stage == "commit"})
            return
        self._seq, self._prev = seq, prev
        for ev, f in batch:
            f.set_result(ev)

    def _record(self, ev: AuditEvent) -> dict[str, Any]:
        rec = ev.record()
        rec["replica"] = self.replica
        return rec

    def _reopen(self) -> None:
        """Read the chain's head again (and settle a batch in doubt); take events again
        if that works."""
        try:
            con = self._connection()
            seq, prev = self._head(con)
            landed = None
            if self._in_doubt is not None:
                dseq, dhash = self._in_doubt
                row = con.execute(f"SELECT hash FROM {TABLE} WHERE replica = %s AND seq = %s",
                                  [self.replica, dseq]).fetchone()
                landed = row is not None and row[0] == dhash
        except (psycopg.Error, StorageError) as e:
            _close(self._writer)
            self._writer = None
            log.info("the audit trail still cannot be written: %s", e)
            return
        if self._in_doubt is not None:
            log.warning("an audit batch whose commit was cut off %s", "was committed: its "
                        "events are in the trail although their calls were refused"
                        if landed else "was not committed",
                        extra={"replica": self.replica, "seq": self._in_doubt[0]})
            self._in_doubt = None
        self._seq, self._prev = seq, prev
        log.warning("the audit trail can be written again",
                    extra={"replica": self.replica, "seq": seq})
        self._failed = None
        self._recoverable = False

    def close(self) -> None:
        self._stop_writer()
        _close(self._writer)
        self._writer = None
        with self._pool_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for con in idle:
            _close(con)

    @property
    def replica_seq(self) -> int:
        """The sequence number of this replica's last event that this process knows."""
        return self._seq

    # ------------------------------------------------------------------ reading
    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._pool_lock:
            if self._closed:
                raise StorageError("the audit trail is closed")
            con = self._idle.pop() if self._idle else None
        try:
            if con is None:
                con = _connect(self.conninfo)
            rows = con.execute(sql, params).fetchall()
        except psycopg.Error as e:
            _close(con)
            raise StorageError(f"reading the audit trail in PostgreSQL failed: {e}") from e
        with self._pool_lock:
            if not self._closed and len(self._idle) < _POOL:
                self._idle.append(con)
                con = None
        _close(con)
        return rows

    @property
    def last_seq(self) -> int:
        """The position of the last event committed by any replica (0: none)."""
        rows = self._fetch(f"SELECT coalesce(max(pos), 0) FROM {TABLE}", [])
        return int(rows[0][0])

    def query(
        self,
        *,
        patient_id: str = "",
        user: str = "",
        organisation: str = "",
        time_from: dt.datetime | None = None,
        time_to: dt.datetime | None = None,
        after_seq: int = 0,
        until_seq: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Every replica's events matching every filter, in ``pos`` order; ``seq`` in
        each row (and ``after_seq``/``until_seq``) is the position, ``replica`` and
        ``replica_seq`` name the event in its chain."""
        where = ["pos > %s"]
        params: list[Any] = [after_seq]
        if until_seq is not None:
            where.append("pos <= %s")
            params.append(until_seq)
        for col, value in (('"user"', user), ("organisation", organisation),
                           ("patient_id", patient_id)):
            if value:
                where.append(f"{col} = %s")
                params.append(_col(value))
        if time_from is not None:
            where.append("time >= %s")
            params.append(time_from)
        if time_to is not None:
            where.append("time < %s")
            params.append(time_to)
        rows = self._fetch(f"SELECT pos, event FROM {TABLE} WHERE {' AND '.join(where)} "
                           "ORDER BY pos LIMIT %s", [*params, limit])
        out = []
        for pos, text in rows:
            rec: dict[str, Any] = json.loads(text)
            rec["replica_seq"] = rec["seq"]
            rec["seq"] = int(pos)
            out.append(rec)
        return out


# ---------------------------------------------------------------------- verify
_ROWS = (f'SELECT replica, seq, time, "user", organisation, patient_id, prev, hash, event '
         f"FROM {TABLE} ORDER BY replica, seq")


def verify_postgres(conninfo: str) -> tuple[int, list[str]]:
    """Check every replica's chain in the database: (events checked, problems).

    Per chain: the sequence numbers run 1, 2, ... without a gap, each event's record
    is the row's (replica, number, and the indexed columns), chains to the one
    before, and hashes to its ``hash``; the last event is the one the head row
    records. A chain's first problem is reported (naming the replica and sequence
    number) and the walk goes on with the next chain. One snapshot is read, so
    replicas may keep writing meanwhile."""
    try:
        con = _connect(conninfo)
    except psycopg.Error as e:
        raise StorageError(f"cannot reach the audit trail in PostgreSQL: {e}") from e
    try:
        con.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with con.transaction():
            found = con.execute("SELECT to_regclass(%s), to_regclass(%s)",
                                [TABLE, HEAD_TABLE]).fetchone()
            if found is None or None in found:
                raise StorageError(f"this database holds no audit trail (no {TABLE} and "
                                   f"{HEAD_TABLE} tables)")
            heads = {str(r): (int(s), str(h)) for r, s, h in
                     con.execute(f"SELECT replica, seq, hash FROM {HEAD_TABLE}").fetchall()}
            with con.cursor(name="waveform_audit_verify") as cur:
                cur.itersize = 5000
                cur.execute(_ROWS)
                return _walk(cur, heads)
    except psycopg.Error as e:
        raise StorageError(f"reading the audit trail in PostgreSQL failed: {e}") from e
    finally:
        _close(con)


class _Chain:
    """The walk along one replica's chain."""

    def __init__(self, replica: str) -> None:
        self.replica = replica
        self.seq, self.prev = 0, GENESIS
        self.problem = ""

    def check(self, row: Sequence[Any]) -> None:
        _, seq, time, user, organisation, patient_id, prev, hash_, text = row
        r, expected = self.replica, self.seq + 1
        where = f"replica {r} event {seq}"
        if seq != expected:
            self.problem = (f"replica {r}: sequence number {seq} follows {self.seq}: event "
                            f"{expected} is missing or out of order")
            return
        try:
            rec = json.loads(text)
        except ValueError:
            rec = None
        if not isinstance(rec, dict):
            self.problem = f"{where}: its event is not a JSON record"
            return
        if rec.get("seq") != seq or rec.get("replica") != r:
            self.problem = (f"{where}: the row holds event {rec.get('seq')} of replica "
                            f"{rec.get('replica')} (events moved or reordered)")
            return
        if rec.get("prev") != self.prev:
            self.problem = (f"{where} does not chain to event {self.seq} (an earlier event "
                            "was changed or removed)")
            return
        if event_digest(rec) != rec.get("hash"):
            self.problem = f"{where} was modified (its hash does not match its content)"
            return
        try:
            rec_time: Any = _when(str(rec.get("time")))
        except ValueError:
            rec_time = rec.get("time")
        for name, column, value in (
                ("hash", hash_, rec.get("hash")), ("prev", prev, rec.get("prev")),
                ("time", time, rec_time), ("user", user, _col(str(rec.get("user")))),
                ("organisation", organisation, _col(str(rec.get("organisation")))),
                ("patient_id", patient_id, _col(str(rec.get("patient_id"))))):
            if column != value:
                self.problem = (f"{where}: its {name} column was changed ({column!r}; the "
                                f"event says {value!r})")
                return
        self.seq, self.prev = seq, rec["hash"]

    def end(self, head: tuple[int, str] | None) -> str:
        """The problem at the chain's end, if any, against its head row."""
        r = self.replica
        if head is None:
            return (f"replica {r}: its chain has no head record: whether events were "
                    "removed at its end cannot be told")
        h_seq, h_hash = head
        if h_seq > self.seq:
            return (f"replica {r}: the chain ends at event {self.seq} but its head records "
                    f"event {h_seq}: events {self.seq + 1}..{h_seq} were removed")
        if h_seq < self.seq:
            return (f"replica {r}: events {h_seq + 1}..{self.seq} follow the event its head "
                    "records (added outside the trail)")
        if h_hash != self.prev:
            return f"replica {r} event {self.seq} is not the event its head records"
        return ""


def _walk(rows: Iterable[Sequence[Any]], heads: dict[str, tuple[int, str]]
          ) -> tuple[int, list[str]]:
    checked, problems = 0, []
    chain: _Chain | None = None

    def finish(c: _Chain) -> None:
        head = heads.pop(c.replica, None)
        problem = c.problem or c.end(head)
        if problem:
            problems.append(problem)

    for row in rows:
        replica = str(row[0])
        if chain is None or chain.replica != replica:
            if chain is not None:
                finish(chain)
            chain = _Chain(replica)
        if chain.problem:
            continue
        checked += 1
        chain.check(row)
    if chain is not None:
        finish(chain)
    for replica, head in sorted(heads.items()):
        if head[0]:  # a chain whose every event is gone
            problems.append(_Chain(replica).end(head))
    return checked, problems
