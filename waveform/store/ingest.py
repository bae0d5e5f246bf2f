"""The store's ingest path: claims, group commit, and the summaries' commits.

`submit` decodes and checks an object on the caller's thread and queues it; the
group-commit writer (`waveform.store.writer`) stages a group's data files on one
thread while the catalog commits the previous group on another. Before a group is
staged its UIDs are claimed in the locator index, so that several servers sent the
same UID store it once (`_claim`); after the lake commit the index is updated and
only then is anyone answered. `commit_summaries` is the measurement stage's way in.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from waveform.errors import (
    Conflict,
    DurabilityError,
    InvalidArgument,
    InvalidDicom,
    StorageError,
    UnsupportedObject,
    without_traceback,
)
from waveform.store import records as _records
from waveform.store.durable import discard, register, stage_tables
from waveform.store.engine import EPOCH, Engine, micros
from waveform.store.locators import CLAIM_TTL_S, Claim, Entry
from waveform.store.records import Prepared, prepare
from waveform.store.writer import GroupCommitWriter

__all__ = ["CLAIM_WAIT_S", "IngestPath", "IngestResult", "StagedIngest"]

log = logging.getLogger("waveform.store.store")

#: How long a writer waits for another server's claim of the same UID to be stored
#: before it answers "retry" (seconds).
CLAIM_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What an ingest answers. ``already_stored``: the same bytes were stored before
    (the other fields are those of the first ingest)."""

    sop_instance_uid: str
    sha256: str
    size: int
    ingested_at: dt.datetime | None  # None: a row committed without one (no object)
    already_stored: bool = False
    summary: dict[str, Any] | None = None
    #: The object's Patient ID, on the answer of the commit that stored it.
    patient_id: str = ""


def _result(e: Entry, uid: str, already: bool) -> IngestResult:
    at = None if e.ingested_us is None else EPOCH + dt.timedelta(microseconds=e.ingested_us)
    return IngestResult(uid, e.sha256, e.size, at, already)


@dataclass(slots=True)
class StagedIngest:
    """An ingest group whose data files are durable, waiting for its catalog commit.

    ``settled``: answers already known for some items (by position in ``items``):
    another server holds their UID. ``ours``: the items this commit stores."""

    path: IngestPath
    items: list[Prepared]
    ours: list[Prepared]
    paths: dict[str, str]
    settled: dict[int, IngestResult | Exception]

    def commit(self) -> list[IngestResult | Exception]:
        stored = iter(self.path.commit_group(self.ours, self.paths) if self.ours else ())
        return [self.settled[i] if i in self.settled else next(stored)
                for i in range(len(self.items))]

    def abort(self) -> None:
        if self.ours:
            self.path.abort_group(self.ours, self.paths)

class IngestPath:
    """Submits, claims and commits (thread-safe). ``on_committed`` is called with each
    committed group's items, after the commit and before anyone is answered (the
    measurement stage's queue, the compaction trigger)."""

    def __init__(self, engine: Engine, on_committed: Callable[[list[Prepared]], None],
                 **writer_options: Any) -> None:
        self._engine = engine
        self._on_committed = on_committed
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[str, Future[IngestResult]]] = {}
        #: UIDs whose current-version summary a commit of this process is writing.
        self._summary_claims: set[str] = set()
        #: A group failed to write (StorageError) and nothing has succeeded since.
        self._write_failing = False
        #: UIDs of a group whose catalog commit failed with an unknown outcome.
        self._uncertain: set[str] = set()
        self._writer_options = writer_options
        self._closed = False
        self._writer: GroupCommitWriter[Prepared, IngestResult] | None = GroupCommitWriter(
            stage=self._stage, **writer_options)

    def abort_group(self, items: list[Prepared], paths: dict[str, str]) -> None:
        """A staged group given up (the writer stopped before its commit)."""
        discard(self._engine.files, paths)
        self._engine.gate.committed()
        self.release(items)

    def submit(self, data: bytes | memoryview, organisation: str, *,
               format: str | None = None) -> Future[IngestResult]:
        """Queue one object for the next group commit; the future answers after it.

        The future raises what concerns this object: `Conflict` (same SOP Instance
        UID, other bytes), `InvalidDicom`/`UnsupportedObject`, `InvalidFile` (a
        cart's file, see `records.prepare`: ``format`` or the content says which),
        or the commit's `StorageError` (not stored, retry) / `DurabilityError`. The
        call itself raises what concerns the service: `Overloaded` (queue full),
        `DurabilityError` (the writer has stopped), `StorageError` (closed).
        """
        try:
            p = prepare(data, organisation, self._engine.clock(), format=format)
            return self.enqueue([p])[0]
        except (InvalidDicom, UnsupportedObject, InvalidArgument, Conflict) as e:
            f: Future[IngestResult] = Future()
            # Without its traceback: the frames would keep ``data`` alive (a cycle
            # through this frame's ``f``) until the collector runs.
            f.set_exception(without_traceback(e))
            return f

    def ingest(
        self,
        objects: Iterable[bytes | memoryview],
        organisation: str,
        *,
        timeout: float | None = None,
    ) -> list[IngestResult]:
        """Store a batch in one transaction: all of it, or (raising) none of it.

        Every object is decoded and checked (including conflicts) before anything
        is written; the first invalid one raises and nothing is stored.
        """
        now = self._engine.clock()
        prepared = [prepare(d, organisation, now) for d in objects]
        futures = self.enqueue(prepared)
        return [f.result(timeout) for f in futures]

    def enqueue(self, prepared: list[Prepared]) -> list[Future[IngestResult]]:
        if self._writer is None:
            raise StorageError("the store is closed")
        out: list[Future[IngestResult] | None] = [None] * len(prepared)
        fresh: list[Prepared] = []
        fresh_at: list[int] = []
        try:
            stored = self._engine.locators.get_many(p.sop_instance_uid for p in prepared)
        except StorageError:
            self._write_failing = True  # the index is unreachable: until a probe passes
            raise
        with self._lock:
            seen: dict[str, str] = {}
            for i, p in enumerate(prepared):
                uid = p.sop_instance_uid
                known = stored.get(uid)
                if known is None and uid in seen:
                    known_sha = seen[uid]
                elif known is not None:
                    known_sha = known.sha256
                elif uid in self._pending:
                    known_sha = self._pending[uid][0]
                else:
                    known_sha = None
                if known_sha is not None and known_sha != p.sha256:
                    raise _conflict(uid, p.sha256)
                if known is not None:
                    f: Future[IngestResult] = Future()
                    f.set_result(_result(known, uid, True))
                    out[i] = f
                elif uid in seen or uid in self._pending:
                    out[i] = None  # chained below to the first copy
                else:
                    seen[uid] = p.sha256
                    fresh.append(p)
                    fresh_at.append(i)
            futures = self._writer.submit(fresh) if fresh else []
            for p, f in zip(fresh, futures, strict=True):
                self._pending[p.sop_instance_uid] = (p.sha256, f)
                f.add_done_callback(self._settler(p.sop_instance_uid))
            for i, f in zip(fresh_at, futures, strict=True):
                out[i] = f
            for i, p in enumerate(prepared):
                if out[i] is None:
                    out[i] = _already(self._pending[p.sop_instance_uid][1])
        return [f for f in out if f is not None]

    def _settler(self, uid: str) -> Callable[[Future[IngestResult]], None]:
        def settle(_: Future[IngestResult]) -> None:
            with self._lock:
                self._pending.pop(uid, None)

        return settle

    def _stage(self, items: list[Prepared]) -> StagedIngest:
        """Staging thread: a group's UIDs claimed, then its data files written and made
        durable (steps 1-4 of the durability order), while the previous group commits."""
        try:
            ours, settled = self._claim(items)
        except StorageError:
            self._write_failing = True  # the index is unreachable: until a probe passes
            raise
        if not ours:
            return StagedIngest(self, items, ours, {}, settled)
        tables = _records.tables(ours)
        try:
            with self._engine.gate.staging():
                paths = stage_tables(self._engine.files, self._engine.data_path, tables)
        except BaseException as e:
            if isinstance(e, StorageError):
                self._write_failing = True  # a full disk, say: health says so until a probe
            self.release(ours)
            raise
        return StagedIngest(self, items, ours, paths, settled)

    def _claim(self, items: list[Prepared]
               ) -> tuple[list[Prepared], dict[int, IngestResult | Exception]]:
        """Claim the group's UIDs in the locator index: the items this process stores,
        and the answers of those another writer holds (stored: "already stored" or a
        conflict; claimed: waited for, up to `CLAIM_WAIT_S`)."""
        now_us = time.time_ns() // 1000
        held = self._engine.locators.claim(
            [(p.sop_instance_uid, p.sha256, p.size) for p in items], self._engine.owner, now_us)
        ours: list[Prepared] = []
        settled: dict[int, IngestResult | Exception] = {}
        for i, p in enumerate(items):
            c = held.get(p.sop_instance_uid)
            answer = None if c is None else self._held_elsewhere(p, c)
            if answer is None:
                ours.append(p)
            else:
                settled[i] = answer
        return ours, settled

    def _held_elsewhere(self, p: Prepared, c: Claim) -> IngestResult | Exception | None:
        """The answer for ``p`` whose UID ``c`` holds; None when this process took the
        claim over (its writer went silent and its commit never landed)."""
        uid = p.sop_instance_uid
        deadline = time.monotonic() + CLAIM_WAIT_S
        while True:
            if c.sha256 != p.sha256:
                return _conflict(uid, p.sha256)
            if c.entry is not None:
                return _result(c.entry, uid, True)
            now_us = time.time_ns() // 1000
            mine = c.owner == self._engine.owner
            if mine or c.claimed_us < now_us - CLAIM_TTL_S * 1e6:
                landed = self._engine.repair(uid)  # did that writer's commit land after all?
                if landed is not None:
                    return _result(landed, uid, True)
                cutoff = now_us + 1 if mine else now_us - int(CLAIM_TTL_S * 1e6)
                if self._engine.locators.take_over(uid, self._engine.owner, cutoff, now_us):
                    return None
            if time.monotonic() > deadline:
                return StorageError(f"SOP Instance UID {uid} is being stored by another "
                                    "server; retry")
            time.sleep(0.02)
            again = self._engine.locators.claim([(uid, p.sha256, p.size)], self._engine.owner,
                                                time.time_ns() // 1000)
            if uid not in again:
                return None  # its writer gave it up: ours now
            c = again[uid]

    def release(self, items: Sequence[Prepared]) -> None:
        """Give up the claims of a group that was not stored (best effort: a claim left
        behind goes stale and is taken over)."""
        try:
            self._engine.locators.release([p.sop_instance_uid for p in items], self._engine.owner)
        except StorageError as e:
            log.warning("claims of an unstored group stay until they go stale: %s", e)

    def commit_group(self, items: list[Prepared], paths: dict[str, str]) -> list[IngestResult]:
        """Commit thread: one catalog commit for a staged group, then the index."""
        results = []
        # The index is updated under the commit lock too, so that compaction never
        # sees a committed file whose locators are not in the index yet.
        try:
            with self._engine.gate.committing():
                try:
                    register(self._engine.cursor(), self._engine.files, paths)
                except DurabilityError:
                    # Its outcome is unknown: recovery asks the catalog for them.
                    with self._lock:
                        self._uncertain.update(p.sop_instance_uid for p in items)
                    raise
                except StorageError:
                    self._write_failing = True
                    self.release(items)
                    raise
                self._write_failing = False
                row = 0
                entries: dict[str, Entry] = {}
                for i, p in enumerate(items):
                    n = len(p.waveform_rows)
                    e = Entry(
                        p.sha256, p.size, micros(p.ecg_row["ingested_at"]),
                        (paths["ecg"], i),
                        (paths["header"], i),
                        [(paths["waveform"], row + k) for k in range(n)],
                    )
                    row += n
                    entries[p.sop_instance_uid] = e
                    results.append(dataclasses.replace(
                        _result(e, p.sop_instance_uid, False),
                        patient_id=p.ecg_row.get("patient_id") or ""))
                self._engine.index_stored(entries, paths.values(),
                                          {p.sop_instance_uid: p.ecg_row for p in items})
        finally:
            self._engine.gate.committed()
        self._engine.files.mark("ack")
        self._on_committed(items)
        return results

    def commit_summaries(self, table: pa.Table) -> int:
        """Durably commit ``summary`` rows and index those of the current version
        (rows of ECGs that already have a summary of it are dropped); the number
        of rows committed.

        Staged and committed like an ingest group: the file is written while an
        ingest commit may run, and only the catalog transaction takes the lock."""
        # Never a second summary of the current version: rows of ECGs that have one,
        # or that another commit of this process is writing now, are dropped.
        uids = table.column("sop_instance_uid").to_pylist()
        versions = table.column("analysis_version").to_pylist()
        current = self._engine.analysis_version
        have = (self._engine.locators.summaries([u for u, v in zip(uids, versions, strict=True)
                                          if v == current], current)
                if current is not None else {})
        with self._lock:
            keep = [i for i, (u, v) in enumerate(zip(uids, versions, strict=True))
                    if v != current or (u not in have and u not in self._summary_claims)]
            claimed = {uids[i] for i in keep if versions[i] == self._engine.analysis_version}
            self._summary_claims |= claimed
        try:
            if len(keep) < table.num_rows:
                table = table.take(pa.array(keep, pa.int64()))
                uids = [uids[i] for i in keep]
                versions = [versions[i] for i in keep]
            if table.num_rows == 0:
                return 0
            with self._engine.gate.staging():
                paths = stage_tables(self._engine.files, self._engine.data_path, {"summary": table})
            try:
                with self._engine.gate.committing():
                    register(self._engine.cursor(), self._engine.files, paths)
                    path = paths["summary"]
                    locs = {u: (path, i) for i, (u, v) in enumerate(zip(uids, versions,
                                                                        strict=True))
                            if current is not None and v == current}
                    try:
                        if current is not None:
                            self._engine.locators.set_summaries(current, locs, path)
                    except StorageError as e:  # committed: the next open takes it in
                        log.warning("the locator index missed summaries: %s", e)
            finally:
                self._engine.gate.committed()
            return table.num_rows
        finally:
            with self._lock:
                self._summary_claims -= claimed

    def recover(self) -> int:
        """After a passing probe: the UIDs of a commit of unknown outcome are looked up
        in the catalog (and indexed if it landed), and a stopped writer is replaced;
        how many UIDs were uncertain."""
        with self._lock:
            uncertain, self._uncertain = list(self._uncertain), set()
        for uid in uncertain:
            if self._engine.repair(uid) is None:
                self._engine.locators.release([uid], self._engine.owner)
        old = self._writer
        if old is not None and old.stopped is not None and not self._closed:
            old.close(5)
            self._writer = GroupCommitWriter(stage=self._stage, **self._writer_options)
        self._write_failing = False
        return len(uncertain)

    @property
    def writable(self) -> bool:
        """False while the store cannot write: the writer stopped after a failed fsync
        or commit, or the last group could not be written (a full disk), until a
        probe write succeeds and the store has recovered by itself (`Store`)."""
        writer = self._writer
        return not self._closed and not self._write_failing and (
            writer is not None and writer.stopped is None)

    @property
    def queued(self) -> int:
        """Objects submitted and not yet taken into a commit group."""
        return self._writer.queued if self._writer else 0

    @property
    def stopped(self) -> BaseException | None:
        """The `DurabilityError` that stopped the writer, if any."""
        return self._writer.stopped if self._writer else None

    def close(self) -> None:
        self._closed = True
        if self._writer is not None:
            self._writer.close()


def _conflict(uid: str, sha: str) -> Conflict:
    # Nothing of the stored object is told (it may be another organisation's): only
    # that its content differs.
    return Conflict(f"SOP Instance UID {uid} is already stored with other content than this "
                    f"object (SHA-256 {sha[:16]}...); send it with a new SOP Instance UID",
                    uid=uid)


def _already(first: Future[IngestResult]) -> Future[IngestResult]:
    """A future that answers as ``first`` does, marked already stored."""
    out: Future[IngestResult] = Future()

    def done(f: Future[IngestResult]) -> None:
        err = f.exception()
        if err is not None:
            out.set_exception(err)
        else:
            out.set_result(dataclasses.replace(f.result(), already_stored=True))

    first.add_done_callback(done)
    return out
