"""Following the catalog: the archive's in-memory state kept within a second of every
server's commits.

Consent, denials and documents are rows of catalog tables that every replica
appends to, and each replica keeps what the policy needs in memory. A `Refresher`
brings that memory up to date with the catalog, the same way for every change,
this server's own included:

- **Commit order is the order.** DuckLake numbers its commits (snapshots) in the
  order the catalog serialised them, and every row carries the snapshot that added
  it (the ``snapshot_id`` column) and a row id that grows with it. Rows are applied
  by ``(snapshot_id, rowid)``, so every replica applies the same rows in the same
  order, whatever the servers' clocks say (``seq`` is a clock reading of the process
  that wrote the row, and two servers' clocks do not order their commits).
- **What changed is asked of the catalog's commit log.** Every `interval_s` one
  indexed query lists the commits after the last one seen (``ducklake_snapshot_changes``,
  in DuckLake's metadata database: its primary key is the snapshot id) and the tables
  each touched; only the followed tables that changed are read, and only their
  files added by those commits (``snapshot_id`` prunes by file). Ingest commits
  many snapshots a second; they cost that one query.
- **Staleness is bounded, not hoped for.** `ensure_fresh` (called by every read of
  the state) answers from memory only if a refresh that began at most
  `max_age_s` ago has been applied; otherwise it refreshes there and then, and if
  the catalog does not answer it raises `StorageError` (the service answers
  ``UNAVAILABLE``) rather than decide from a state that may miss a denial.
- **Writes go through the same door.** A change is committed, then `refresh` applies
  it (with whatever others committed before it) in commit order, so a concurrent
  change on another server can never be applied before an earlier one.

An embedded catalog (a DuckDB file) admits one process, so nobody else can change
it: there is no background thread and no staleness to bound, and writes still
apply through `refresh`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from waveform.errors import StorageError
from waveform.store import Store, TableRef
from waveform.store.tables import CATALOG

__all__ = ["Follower", "Freshness", "Refresher", "Row"]

log = logging.getLogger("waveform.archive")

#: DuckLake's own tables the commit log is read from (its metadata database).
_SNAPSHOTS = CATALOG.metadata("ducklake_snapshot")
_CHANGES = CATALOG.metadata("ducklake_snapshot_changes")
_TABLES = CATALOG.metadata("ducklake_table")

#: One entry of ``changes_made`` that names a table by id (``inserted_into_table:8``,
#: ``deleted_from_table:8``, ...); created tables are named by name instead.
_TABLE_CHANGE = re.compile(r"([a-z_]+):(\d+)(?=,|$)")

#: A row as a follower receives it: ``(snapshot_id, rowid, *columns)``.
Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Freshness:
    """How far behind the catalog a replica's state may be.

    ``interval_s``: how often the catalog is asked what changed. ``max_age_s``: no
    read answers from a state refreshed longer ago (it refreshes first, or fails).
    The sum of the two and a query's time stays below the one second the archive
    promises between a change on one server and its effect on all.
    """

    interval_s: float = 0.25
    max_age_s: float = 0.75

    def __post_init__(self) -> None:
        if not 0 < self.interval_s < self.max_age_s:
            raise ValueError(f"freshness: interval_s {self.interval_s} must be > 0 and "
                             f"below max_age_s {self.max_age_s}")


class Follower(Protocol):
    """State kept from catalog tables: loaded once, then fed what others commit."""

    def followed(self) -> dict[str, Sequence[str]]:
        """The tables followed and the columns each row is fed with."""
        ...

    def load(self, snapshot: int) -> None:
        """Build the state from the rows of snapshot ``snapshot`` and before."""
        ...

    def apply(self, table: str, rows: list[Row]) -> None:
        """Apply rows committed after the state's snapshot, in commit order."""
        ...


class Refresher:
    """Keeps `Follower` states current with the catalog (see the module docstring)."""

    def __init__(self, store: Store, freshness: Freshness | None = None) -> None:
        self._store = store
        self.freshness = freshness or Freshness()
        self._followers: list[Follower] = []
        #: Held while rows are read and applied: one refresh at a time, in order.
        self._lock = threading.Lock()
        #: The last snapshot whose changes are applied (-1: none read yet).
        self._snapshot = -1
        #: `time.monotonic()` when the last refresh that succeeded began.
        self._fresh_at = float("-inf")
        self._table_ids: dict[int, str] = {}
        #: The followed tables' handles, made once (a reserved one's asks the catalog).
        self._tables: dict[str, TableRef] = {}
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing_since: float | None = None
        catalog = store.sql(f"SELECT catalog_type FROM ducklake_settings('{CATALOG.name}')")
        #: Whether other processes may commit to this catalog (not a DuckDB file).
        self.shared = bool(catalog) and catalog[0][0] != "duckdb"

    @property
    def snapshot(self) -> int:
        """The catalog snapshot the state is current with."""
        return self._snapshot

    @property
    def age_s(self) -> float:
        """Seconds since the refresh the state comes from began (0 when nobody else can
        change the catalog). Above `Freshness.max_age_s`, reads refresh or fail: a
        health check can report the server not serving."""
        return time.monotonic() - self._fresh_at if self.shared else 0.0

    def follow(self, follower: Follower) -> None:
        """Add ``follower``, loaded as of the snapshot the others are at (before `start`)."""
        if self._thread is not None:
            raise RuntimeError("followers are added before the refresher starts")
        with self._lock:
            if self._snapshot < 0:
                began = time.monotonic()
                got = self._store.sql(f"SELECT max(snapshot_id) FROM {_SNAPSHOTS}")
                self._snapshot = int(got[0][0] or 0)
                self._fresh_at = began
            follower.load(self._snapshot)
            self._followers.append(follower)

    def start(self) -> None:
        """Follow the other servers' commits in the background (a shared catalog only)."""
        if self.shared and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="waveform-archive-refresh",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(10)

    # ------------------------------------------------------------------ reading
    def rows(self, table: str, columns: Sequence[str], after: int, upto: int, *,
             where: str = "", params: Sequence[Any] = (), last_of: str = "") -> list[Row]:
        """``(snapshot_id, rowid, *columns)`` of ``table``'s rows added by snapshots
        ``after`` < s <= ``upto`` (and matching ``where``), in commit order; with
        ``last_of``, only the last committed row of each value of that column."""
        cols = ", ".join(("snapshot_id", "rowid", *columns))
        extra = f" AND ({where})" if where else ""
        qualify = (f" QUALIFY row_number() OVER (PARTITION BY {last_of} "
                   "ORDER BY snapshot_id DESC, rowid DESC) = 1") if last_of else ""
        ref = self._tables.get(table)
        if ref is None:
            ref = self._tables[table] = self._store.table(table)
        return self._store.sql(
            f"SELECT {cols} FROM {ref.sql} WHERE snapshot_id > ? AND snapshot_id <= ?"
            f"{extra}{qualify} ORDER BY snapshot_id, rowid", [after, upto, *params])

    def ensure_fresh(self) -> None:
        """Return once the state includes every commit made more than `max_age_s` ago;
        `StorageError` if the catalog cannot say what those are."""
        if not self.shared:
            return
        now = time.monotonic()
        if now - self._fresh_at <= self.freshness.max_age_s:
            return
        try:
            self._refresh(self.freshness.max_age_s, now - self.freshness.max_age_s)
        except StorageError as e:
            raise StorageError(
                f"consent, denials and documents cannot be checked: the catalog has not "
                f"answered for {time.monotonic() - self._fresh_at:.1f} s, and another "
                f"server may have changed them ({e})") from e

    def refresh(self) -> None:
        """Apply every commit made before now (a writer's own change, say);
        `StorageError` if the catalog does not answer."""
        self._refresh(None, time.monotonic())

    # ------------------------------------------------------------------ internals
    def _refresh(self, wait_s: float | None, enough: float) -> None:
        """Refresh unless a refresh that began at ``enough`` or later has been applied
        (by another thread, while this one waited ``wait_s`` at most for it)."""
        if not self._lock.acquire(timeout=-1 if wait_s is None else wait_s):
            raise StorageError(f"a catalog query has not returned in {wait_s:.2f} s")
        try:
            if self._fresh_at < enough:
                self._poll()
        finally:
            self._lock.release()

    def _poll(self) -> None:
        began = time.monotonic()
        changes = self._store.sql(
            f"SELECT snapshot_id, changes_made FROM {_CHANGES} "
            "WHERE snapshot_id > ? ORDER BY snapshot_id", [self._snapshot])
        if changes:
            upto = int(changes[-1][0])
            touched = self._touched([c for _, c in changes])
            # Everything is read before anything is applied: a query that fails leaves
            # the state as it was, to be tried again from the same snapshot.
            fed: list[tuple[Follower, str, list[Row]]] = []
            for follower in self._followers:
                for table, columns in follower.followed().items():
                    if table in touched:
                        fed.append((follower, table,
                                    self.rows(table, columns, self._snapshot, upto)))
            for follower, table, rows in fed:
                if rows:
                    follower.apply(table, rows)
            self._snapshot = upto
        self._fresh_at = began

    def _touched(self, changes: list[str | None]) -> set[str]:
        """The tables ``changes`` name (every followed table if one cannot be read)."""
        unreadable = any(c is None for c in changes)
        if unreadable or not self._table_ids or any(
                "created_table" in c or "dropped_table" in c for c in changes if c):
            self._table_ids = {
                int(i): str(n) for i, n in self._store.sql(
                    f"SELECT table_id, table_name FROM {_TABLES} "
                    "WHERE end_snapshot IS NULL")}
        if unreadable:
            return set(self._table_ids.values())
        return {self._table_ids[int(i)] for c in changes if c
                for _, i in _TABLE_CHANGE.findall(c) if int(i) in self._table_ids}

    def _run(self) -> None:
        while not self._closed.wait(self.freshness.interval_s):
            try:
                self._refresh(None, time.monotonic())
            except StorageError as e:
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning("the catalog does not answer; reads of consent and "
                                "documents fail until it does: %s", e)
                continue
            if self._failing_since is not None:
                log.warning("the catalog answers again after %.1f s",
                            time.monotonic() - self._failing_since)
                self._failing_since = None
