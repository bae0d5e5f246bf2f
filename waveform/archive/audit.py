"""The audit trail: an append-only, hash-chained journal of every patient-data call.

Events are JSON lines in segment files (``00000001.jsonl``, ...) in one
directory. A writer thread takes the events of concurrent calls, appends them,
fsyncs, records the last event in ``HEAD`` (a small file replaced by rename),
and only then answers: a call returns data only after its
event is on disk (the same discipline as an ingested ECG). Each event carries
``prev`` (the hash of the event before it) and ``hash``, the SHA-256 of its
canonical JSON without ``hash``; `verify` walks the chain, so a modified, removed
or reordered event, and a removed last event (``HEAD`` then points past the end),
are found. Nothing in the service changes or deletes an event.

Why a journal and not a catalog table: every read call appends an event, and a
catalog commit costs tens of milliseconds while an appended, fsynced batch of
lines costs a few (measured in docs/access.md). Queries read the segments with
DuckDB.

Several servers on one PostgreSQL catalog keep the trail in that database instead
(`waveform.archive.audit_pg`): one chain per replica, the same group commit. Both
are a `Trail`; `open_trail` picks one by location, `verify` checks either.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import logging
import os
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from waveform.archive.clock import Clock, utcnow
from waveform.errors import DurabilityError, StorageError

__all__ = [
    "GENESIS",
    "POSTGRES",
    "AuditEvent",
    "AuditTrail",
    "Pending",
    "Trail",
    "canonical",
    "event_digest",
    "open_trail",
    "stamp",
    "verify",
]

log = logging.getLogger("waveform.audit")

#: The ``prev`` of the first event.
GENESIS = "0" * 64
_SEGMENT_BYTES = 64 << 20
_BATCH = 1024
#: How often a trail stopped by a full disk tries to write again (seconds).
RETRY_S = 0.5
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@dataclass(slots=True)
class AuditEvent:
    """One access: who, for what purpose, which patient and objects, and the decision."""

    user: str
    organisation: str
    role: str
    action: str
    outcome: str  # "allowed", "denied" or "failed"
    rule: str
    patient_id: str = ""
    objects: list[str] = field(default_factory=list)
    purpose: str = "care"
    reason: str = ""
    emergency: bool = False
    # Set by the trail when written.
    seq: int = 0
    time: str = ""
    prev: str = ""
    hash: str = ""

    def record(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "time": self.time, "user": self.user,
            "organisation": self.organisation, "role": self.role, "purpose": self.purpose,
            "reason": self.reason, "patient_id": self.patient_id, "objects": list(self.objects),
            "action": self.action, "outcome": self.outcome, "rule": self.rule,
            "emergency": self.emergency, "prev": self.prev, "hash": self.hash,
        }


def canonical(record: dict[str, Any]) -> str:
    """An event's record as the trail stores it and hashes it: one line of JSON, keys
    sorted, no spaces."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_digest(record: dict[str, Any]) -> str:
    """An event's ``hash``: the SHA-256 of its canonical record without ``hash``."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body).encode()).hexdigest()


def _segments(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.jsonl") if p.stem.isdigit())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_head(directory: Path) -> dict[str, Any] | None:
    try:
        head: dict[str, Any] = json.loads((directory / "HEAD").read_text())
    except FileNotFoundError:
        return None
    except ValueError:  # cut by a crash before the trail was opened again
        return {"seq": 0, "hash": GENESIS, "unreadable": True}
    return head


#: An event waiting for the writer, and the future its call waits on.
Pending = tuple[AuditEvent, Future[AuditEvent]]


def stamp(clock: Clock) -> str:
    """The time an event is written, as the trail records it (UTC, ISO 8601, ``Z``)."""
    return clock().astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


class Trail(ABC):
    """What the archive needs of an audit trail: `record`/`append` answer only once the
    event is durable, `failed` says when none can be, `query` reads events back.

    One writer thread takes the events of concurrent calls in batches (group commit):
    `_write` makes a batch durable and answers its futures. After a failure that
    leaves nothing uncertain, the subclass sets ``_recoverable`` and the thread calls
    `_reopen` every `RETRY_S` seconds while no event comes."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._queue: queue.Queue[Pending | None] = queue.Queue()
        self._failed: BaseException | None = None
        #: The failure can pass: `_reopen` is tried every `RETRY_S`.
        self._recoverable = False
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)

    def record(self, event: AuditEvent) -> Future[AuditEvent]:
        """Queue ``event``; the future answers once it is durable (or raises StorageError)."""
        f: Future[AuditEvent] = Future()
        if self._failed is not None:
            f.set_exception(StorageError(f"the audit trail cannot be written ({self._failed}); "
                                        "nothing is returned without its audit event"))
            return f
        self._queue.put((event, f))
        return f

    def append(self, event: AuditEvent, timeout: float | None = 30.0) -> AuditEvent:
        """Write ``event`` and wait until it is durable."""
        return self.record(event).result(timeout)

    def _run(self) -> None:
        while True:
            if self._failed is not None and self._recoverable:
                try:
                    item = self._queue.get(timeout=RETRY_S)
                except queue.Empty:
                    self._reopen()
                    continue
            else:
                item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < _BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            batch = [b for b in batch if b[1].set_running_or_notify_cancel()]
            if not batch:
                continue
            if self._failed is not None:
                for _, f in batch:
                    f.set_exception(StorageError(f"the audit trail cannot be written "
                                                 f"({self._failed})"))
                continue
            try:
                self._write(batch)
            except Exception as e:  # a bug, or an event that cannot be encoded
                log.exception("the audit writer failed on a batch; its calls are refused")
                for _, f in batch:
                    if not f.done():
                        f.set_exception(StorageError(f"the audit event could not be "
                                                     f"written ({e!r})"))

    @abstractmethod
    def _write(self, batch: list[Pending]) -> None:
        """Make ``batch`` durable, in order, chained; then answer each future (or fail
        them all, set ``_failed``, and leave nothing acknowledged)."""

    @abstractmethod
    def _reopen(self) -> None:
        """Try to write again after a recoverable failure (clear ``_failed`` if so)."""

    def _stop_writer(self) -> None:
        self._queue.put(None)
        self._thread.join(30)

    @abstractmethod
    def close(self) -> None: ...

    @property
    def failed(self) -> BaseException | None:
        """Why events cannot be written now (None: they can)."""
        return self._failed

    @property
    @abstractmethod
    def last_seq(self) -> int:
        """Where the trail ends now: the ``until_seq`` of a query that reads it all."""

    @abstractmethod
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
        """Events matching every given filter, oldest first, with ``seq`` after
        ``after_seq`` and up to ``until_seq`` (default: `last_seq`)."""


class AuditTrail(Trail):
    """Appends events durably, in order, chained, to files in one directory; answers
    queries over them."""

    def __init__(self, directory: str | os.PathLike[str], clock: Clock = utcnow, *,
                 segment_bytes: int = _SEGMENT_BYTES,
                 fsync: Callable[[int], None] = os.fsync) -> None:
        """``fsync`` is a seam: tests pass one that fails, to see nothing returned."""
        super().__init__(clock)
        self.directory = Path(directory)
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self.directory.mkdir(parents=True, exist_ok=True)
        self._seq, self._prev = 0, GENESIS
        self._segment = self._recover()
        self._fd = os.open(self._segment, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._size = os.fstat(self._fd).st_size
        if self._seq:
            self._write_head(self._seq, self._prev)
        self._duck = duckdb.connect(config={"autoinstall_known_extensions": False})
        self._thread.start()

    # ------------------------------------------------------------------ writing
    def _recover(self) -> Path:
        """Find the chain's end; drop a torn last line (a write a crash cut, never answered)."""
        segments = _segments(self.directory)
        if not segments:
            return self.directory / f"{1:08d}.jsonl"
        last = segments[-1]
        data = last.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            log.warning("audit segment %s ends in a torn line (%d bytes); removed: it was "
                        "never acknowledged", last.name, len(data) - keep)
            with open(last, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
            data = data[:keep]
        lines = data.splitlines()
        if not lines and len(segments) > 1:
            lines = segments[-2].read_bytes().splitlines()
        if lines:
            rec = json.loads(lines[-1])
            self._seq, self._prev = int(rec["seq"]), str(rec["hash"])
        return last

    def _write(self, batch: list[Pending]) -> None:
        seq, prev = self._seq, self._prev
        lines = []
        now = stamp(self._clock)
        for ev, _ in batch:
            seq += 1
            ev.seq, ev.time, ev.prev = seq, now, prev
            rec = ev.record()
            ev.hash = rec["hash"] = event_digest(rec)
            prev = ev.hash
            lines.append(canonical(rec))
        data = ("\n".join(lines) + "\n").encode()
        fsync_failed = False
        try:
            if self._size and self._size + len(data) > self._segment_bytes:
                self._rotate()
            os.write(self._fd, data)
            try:
                self._fsync(self._fd)
            except OSError:
                fsync_failed = True
                raise
            self._size += len(data)
            self._write_head(seq, prev)
        except OSError as e:
            # Space refused before or after the fsync (never a failed fsync, whose
            # outcome cannot be known): once space is back, the trail reopens from
            # what its file holds (`_reopen`).
            self._recoverable = e.errno in _NO_SPACE and not fsync_failed
            self._failed = e
            err = DurabilityError(f"the audit trail could not be made durable ({e}); "
                                  "nothing is returned without its audit event")
            for _, f in batch:
                f.set_exception(err)
            log.error("audit trail write failed; patient data is refused from now on",
                      exc_info=e)
            return
        self._seq, self._prev = seq, prev
        for ev, f in batch:
            f.set_result(ev)

    def _reopen(self) -> None:
        """After a write refused for lack of space (never after a failed fsync, whose
        outcome cannot be known): find the chain's end again (a torn last line is
        dropped), fsync it, and take events again."""
        try:
            os.close(self._fd)
        except OSError:
            pass
        try:
            self._segment = self._recover()
            self._fd = os.open(self._segment, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            self._fsync(self._fd)
            self._size = os.fstat(self._fd).st_size
            self._write_head(self._seq, self._prev)
        except OSError as e:
            log.info("the audit trail still cannot be written: %s", e)
            return
        log.warning("the audit trail can be written again", extra={"seq": self._seq})
        self._failed = None
        self._recoverable = False

    def _rotate(self) -> None:
        os.close(self._fd)
        n = int(self._segment.stem) + 1
        self._segment = self.directory / f"{n:08d}.jsonl"
        self._fd = os.open(self._segment, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._size = 0
        _fsync_dir(self.directory)

    def _write_head(self, seq: int, last_hash: str) -> None:
        # One fsync a batch (the events'): HEAD is replaced but not fsynced. After a
        # crash it may name an earlier event (which `verify` accepts: it checks that
        # event) or be lost; opening the trail writes it again from the fsynced
        # events. It never runs ahead of them: they are fsynced before it is written.
        tmp = self.directory / ".HEAD.tmp"
        tmp.write_text(json.dumps({"seq": seq, "hash": last_hash}))
        os.replace(tmp, self.directory / "HEAD")

    def close(self) -> None:
        self._stop_writer()
        try:
            os.close(self._fd)
        except OSError:
            pass
        self._duck.close()

    @property
    def last_seq(self) -> int:
        """The sequence number of the last durable event."""
        return self._seq

    # ------------------------------------------------------------------ reading
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
        """Events matching every given filter, oldest first, after ``after_seq`` and up to
        ``until_seq`` (default: the last event written)."""
        files = [str(p) for p in _segments(self.directory)]
        if not files:
            return []
        where = ["seq > ?", "seq <= ?"]
        params: list[Any] = [after_seq, self._seq if until_seq is None else until_seq]
        for col, value in (("patient_id", patient_id), ("user", user),
                           ("organisation", organisation)):
            if value:
                where.append(f'"{col}" = ?')
                params.append(value)
        if time_from is not None:
            where.append("CAST(time AS TIMESTAMPTZ) >= ?")
            params.append(time_from)
        if time_to is not None:
            where.append("CAST(time AS TIMESTAMPTZ) < ?")
            params.append(time_to)
        columns = ", ".join(f"'{k}': '{t}'" for k, t in _COLUMNS)
        sql = (f"SELECT * FROM read_json(?, format = 'newline_delimited', "
               f"columns = {{{columns}}}) WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?")
        try:
            cur = self._duck.cursor()
            try:
                res = cur.execute(sql, [files, *params, limit])
                names = [d[0] for d in res.description]
                return [dict(zip(names, r, strict=True)) for r in res.fetchall()]
            finally:
                cur.close()
        except duckdb.Error as e:
            raise StorageError(f"reading the audit trail failed: {e}") from e


_COLUMNS: Sequence[tuple[str, str]] = (
    ("seq", "BIGINT"), ("time", "VARCHAR"), ("user", "VARCHAR"), ("organisation", "VARCHAR"),
    ("role", "VARCHAR"), ("purpose", "VARCHAR"), ("reason", "VARCHAR"),
    ("patient_id", "VARCHAR"), ("objects", "VARCHAR[]"), ("action", "VARCHAR"),
    ("outcome", "VARCHAR"), ("rule", "VARCHAR"), ("emergency", "BOOLEAN"),
    ("prev", "VARCHAR"), ("hash", "VARCHAR"),
)


#: The prefix of a trail kept in PostgreSQL (as a catalog's: ``postgres:`` + libpq string).
POSTGRES = "postgres:"


def open_trail(location: str | os.PathLike[str], clock: Clock = utcnow, *,
               replica: str | None = None) -> Trail:
    """The trail at ``location``: ``postgres:`` and a libpq connection string (the
    catalog's) for the trail of several replicas in that database, where ``replica``
    names this server's chain (default: a new chain for this process); any other
    location is a directory of journal files (``replica`` is not used)."""
    text = os.fspath(location)
    if text.startswith(POSTGRES):
        from waveform.archive.audit_pg import PostgresTrail

        return PostgresTrail(text.removeprefix(POSTGRES), clock, replica=replica)
    return AuditTrail(text, clock)


def verify(location: str | os.PathLike[str]) -> tuple[int, list[str]]:
    """Check a whole trail: (events checked, problems). No problems: it is intact.

    ``location`` as `open_trail` takes it: in PostgreSQL every replica's chain is
    checked; a directory's chain is walked here."""
    text = os.fspath(location)
    if text.startswith(POSTGRES):
        from waveform.archive.audit_pg import verify_postgres

        return verify_postgres(text.removeprefix(POSTGRES))
    return _verify_directory(Path(text))


def _verify_directory(directory: Path) -> tuple[int, list[str]]:
    """Walk the journal's chain and check it against ``HEAD``."""
    problems: list[str] = []
    head = _read_head(directory)
    seq, prev, n = 0, GENESIS, 0
    for segment in _segments(directory):
        for lineno, line in enumerate(segment.read_bytes().splitlines(), 1):
            where = f"{segment.name} line {lineno}"
            try:
                rec = json.loads(line)
            except ValueError:
                problems.append(f"{where}: not a JSON event (after sequence number {seq})")
                return n, problems
            n += 1
            got = int(rec.get("seq", -1))
            if got != seq + 1:
                problems.append(f"{where}: sequence number {got} follows {seq}: event "
                                f"{seq + 1} is missing or out of order")
                return n, problems
            if rec.get("prev") != prev:
                problems.append(f"{where}: event {got} does not chain to event {seq} "
                                "(an earlier event was changed or removed)")
                return n, problems
            if event_digest(rec) != rec.get("hash"):
                problems.append(f"{where}: event {got} was modified (its hash does not "
                                "match its content)")
                return n, problems
            if head is not None and got == int(head["seq"]) and rec["hash"] != head["hash"]:
                problems.append(f"{where}: event {got} is not the event HEAD recorded")
                return n, problems
            seq, prev = got, rec["hash"]
    if head is not None and head.get("unreadable"):
        problems.append("HEAD is unreadable (a crash before the trail was opened again?); "
                        "whether events were removed at the end cannot be told")
    elif head is not None and int(head["seq"]) > seq:
        problems.append(f"the trail ends at event {seq} but HEAD records event {head['seq']}: "
                        f"events {seq + 1}..{head['seq']} were removed")
    elif head is None and seq:
        problems.append("HEAD is missing: whether events were removed at the end cannot "
                        "be told")
    return n, problems
