"""The audit trail of several replicas in PostgreSQL (waveform.archive.audit_pg): one
hash chain per replica written concurrently, `verify` over every chain (tampering,
removal, reordering named by replica and sequence number), no acknowledged event lost
to a SIGKILL, PostgreSQL stopped and started again, and queries over every replica.

A real PostgreSQL (the session's `postgres` fixture) with a fresh database per test.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.servers import PostgresServer
from waveform import cli
from waveform.archive import AuditEvent, ManualClock
from waveform.archive.audit import GENESIS, event_digest, open_trail, verify
from waveform.archive.audit_pg import PostgresTrail
from waveform.errors import DurabilityError, StorageError

T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def dsn(postgres: PostgresServer) -> str:
    """A fresh database's libpq string."""
    return postgres.create_database(f"audit_{uuid.uuid4().hex[:12]}")


def _event(i: int, patient: str = "P1", user: str = "dr-a", org: str = "org-a") -> AuditEvent:
    return AuditEvent(user=user, organisation=org, role="clinician", action="trace",
                      outcome="allowed", rule="controller", patient_id=patient,
                      objects=[f"1.2.{i}"])


def _trail(dsn: str, replica: str, clock: ManualClock | None = None) -> PostgresTrail:
    trail = open_trail("postgres:" + dsn, clock or ManualClock(T0), replica=replica)
    assert isinstance(trail, PostgresTrail)
    return trail


def _sql(dsn: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as con:
        cur = con.execute(sql, params)  # type: ignore[arg-type]
        return list(cur.fetchall()) if cur.description else []


# ----------------------------------------------------------------------------- writing


def test_two_replicas_write_concurrently_each_on_its_own_chain(dsn: str) -> None:
    a, b = _trail(dsn, "replica-a"), _trail(dsn, "replica-b")
    acked: dict[str, list[AuditEvent]] = {"replica-a": [], "replica-b": []}
    lock = threading.Lock()

    def work(trail: PostgresTrail, t: int) -> None:
        for i in range(150):
            ev = trail.append(_event(i, patient=f"P{t}", user=f"u{t}"))
            with lock:
                acked[trail.replica].append(ev)

    threads = [threading.Thread(target=work, args=(tr, t))
               for tr in (a, b) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert (a.replica_seq, b.replica_seq) == (600, 600)
    a.close()
    b.close()
    for replica, events in acked.items():
        events.sort(key=lambda e: e.seq)
        assert [e.seq for e in events] == list(range(1, 601))
        assert events[0].prev == GENESIS
        assert all(y.prev == x.hash for x, y in itertools.pairwise(events))
        rows = _sql(dsn, "SELECT seq, hash FROM waveform_audit WHERE replica = %s ORDER BY seq",
                    (replica,))
        assert rows == [(e.seq, e.hash) for e in events]
        assert _sql(dsn, "SELECT seq, hash FROM waveform_audit_head WHERE replica = %s",
                    (replica,)) == [(600, events[-1].hash)]
    assert verify("postgres:" + dsn) == (1200, [])


def test_a_replica_reopened_continues_its_chain(dsn: str) -> None:
    trail = _trail(dsn, "r1")
    first = [trail.append(_event(i)) for i in range(3)]
    trail.close()
    trail = _trail(dsn, "r1")
    assert trail.replica_seq == 3
    ev = trail.append(_event(3))
    trail.close()
    assert (ev.seq, ev.prev) == (4, first[-1].hash)
    rec = json.loads(_sql(dsn, "SELECT event FROM waveform_audit WHERE seq = 4")[0][0])
    assert rec["replica"] == "r1" and rec["hash"] == ev.hash == event_digest(rec)
    assert verify("postgres:" + dsn) == (4, [])


def test_a_replica_without_a_name_starts_a_chain_of_its_own(dsn: str) -> None:
    one = open_trail("postgres:" + dsn)
    two = open_trail("postgres:" + dsn)
    assert isinstance(one, PostgresTrail) and isinstance(two, PostgresTrail)
    assert one.replica != two.replica
    assert one.append(_event(1)).seq == two.append(_event(2)).seq == 1
    one.close()
    two.close()
    assert verify("postgres:" + dsn) == (2, [])


# ------------------------------------------------------------------------------ verify


def _two_chains(dsn: str, n: int = 6) -> None:
    a, b = _trail(dsn, "A"), _trail(dsn, "B")
    for i in range(n):
        a.append(_event(i))
        b.append(_event(100 + i))
    a.close()
    b.close()
    assert verify("postgres:" + dsn) == (2 * n, [])


def _rehash_event_3(dsn: str) -> None:
    rec = json.loads(_sql(dsn, "SELECT event FROM waveform_audit WHERE replica = 'A' "
                               "AND seq = 3")[0][0])
    rec["user"] = "someone-else"
    rec["hash"] = event_digest(rec)
    _sql(dsn, "UPDATE waveform_audit SET event = %s, hash = %s, \"user\" = %s "
              "WHERE replica = 'A' AND seq = 3",
         (json.dumps(rec, sort_keys=True, separators=(",", ":")), rec["hash"], rec["user"]))


TAMPERING = {
    "event-edited": (
        lambda dsn: _sql(dsn, "UPDATE waveform_audit SET event = replace(event, 'dr-a', "
                              "'dr-x') WHERE replica = 'A' AND seq = 3"),
        "replica A event 3 was modified (its hash does not match its content)"),
    "column-edited": (
        lambda dsn: _sql(dsn, "UPDATE waveform_audit SET patient_id = 'P9' "
                              "WHERE replica = 'B' AND seq = 2"),
        "replica B event 2: its patient_id column was changed ('P9'; the event says 'P1')"),
    "event-removed": (
        lambda dsn: _sql(dsn, "DELETE FROM waveform_audit WHERE replica = 'A' AND seq = 4"),
        "replica A: sequence number 5 follows 3: event 4 is missing or out of order"),
    "last-event-removed": (
        lambda dsn: _sql(dsn, "DELETE FROM waveform_audit WHERE replica = 'B' AND seq = 6"),
        "replica B: the chain ends at event 5 but its head records event 6: "
        "events 6..6 were removed"),
    "reordered": (
        lambda dsn: _sql(dsn, "UPDATE waveform_audit SET seq = -2 WHERE replica = 'A' AND "
                              "seq = 2; UPDATE waveform_audit SET seq = 2 WHERE replica = 'A' "
                              "AND seq = 3; UPDATE waveform_audit SET seq = 3 "
                              "WHERE replica = 'A' AND seq = -2"),
        "replica A event 2: the row holds event 3 of replica A (events moved or reordered)"),
    "rehashed": (
        _rehash_event_3,
        "replica A event 4 does not chain to event 3 (an earlier event was changed or "
        "removed)"),
    "head-removed": (
        lambda dsn: _sql(dsn, "DELETE FROM waveform_audit_head WHERE replica = 'B'"),
        "replica B: its chain has no head record: whether events were removed at its end "
        "cannot be told"),
    "every-event-removed": (
        lambda dsn: _sql(dsn, "DELETE FROM waveform_audit WHERE replica = 'B'"),
        "replica B: the chain ends at event 0 but its head records event 6: events 1..6 "
        "were removed"),
}


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_verify_names_the_replica_and_event_changed(dsn: str, kind: str) -> None:
    _two_chains(dsn)
    tamper, message = TAMPERING[kind]
    tamper(dsn)
    _, problems = verify("postgres:" + dsn)
    assert problems == [message]  # the other chain is intact: one problem only


def test_verify_reads_one_snapshot_while_replicas_write(dsn: str) -> None:
    a, b = _trail(dsn, "A"), _trail(dsn, "B")
    stop = threading.Event()

    def work(trail: PostgresTrail) -> None:
        i = 0
        while not stop.is_set():
            trail.append(_event(i))
            i += 1

    threads = [threading.Thread(target=work, args=(t,)) for t in (a, b)]
    for th in threads:
        th.start()
    try:
        time.sleep(0.3)
        results = [verify("postgres:" + dsn) for _ in range(5)]
    finally:
        stop.set()
        for th in threads:
            th.join()
    a.close()
    b.close()
    assert all(problems == [] for _, problems in results)
    assert results[0][0] > 0 and results[-1][0] >= results[0][0]


def test_the_command_checks_every_replica(dsn: str, capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    _two_chains(dsn)
    assert cli.main(["audit", "verify", "--catalog", "postgres:" + dsn]) == 0
    out = capsys.readouterr().out
    assert out == "the PostgreSQL audit trail: 12 events, every replica's chain is intact\n"
    _sql(dsn, "DELETE FROM waveform_audit WHERE replica = 'A' AND seq = 2")
    assert cli.main(["audit", "verify", "--catalog", "postgres:" + dsn]) == 1
    err = capsys.readouterr().err
    assert err == ("waveform audit verify: the PostgreSQL audit trail: replica A: sequence "
                   "number 3 follows 1: event 2 is missing or out of order\n")
    assert "dbname" not in err  # the connection string (a password, maybe) is not shown
    # The directory form still works, and a database without a trail is refused.
    trail = open_trail(tmp_path / "audit", ManualClock(T0))
    trail.append(_event(1))
    trail.close()
    assert cli.main(["audit", "verify", "--audit", str(tmp_path / "audit")]) == 0
    assert "1 events, the chain is intact" in capsys.readouterr().out
    empty = dsn.replace(dsn.split()[0], "dbname=postgres")
    assert cli.main(["audit", "verify", "--catalog", "postgres:" + empty]) == 1
    assert "holds no audit trail" in capsys.readouterr().err


# --------------------------------------------------------------------------- durability

_WRITER = """
import sys, threading
from waveform.archive.audit import AuditEvent, open_trail

trail = open_trail("postgres:" + sys.argv[1], replica=sys.argv[2])
lock = threading.Lock()

def work(t):
    for i in range(100000):
        ev = trail.append(AuditEvent(user=f"u{t}", organisation="org-a", role="clinician",
                                     action="trace", outcome="allowed", rule="controller",
                                     patient_id="P1", objects=[f"{t}.{i}"]))
        with lock:
            print(ev.seq, ev.hash, flush=True)

for t in range(4):
    threading.Thread(target=work, args=(t,), daemon=True).start()
threading.Event().wait()
"""


def _acknowledged_then_killed(dsn: str, replica: str, after: int) -> dict[int, str]:
    """Run a writer process; SIGKILL it once ``after`` events were acknowledged; every
    (seq, hash) it printed, i.e. acknowledged, before it died."""
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, dsn, replica], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acked: dict[int, str] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seq, digest = line.split()
            acked[int(seq)] = digest
            if len(acked) >= after:
                os.kill(proc.pid, signal.SIGKILL)
                break
        else:
            pytest.fail(f"the writer ended before {after} events: {proc.stderr.read()}")  # type: ignore[union-attr]
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    for line in rest.splitlines():  # printed whole before the kill: acknowledged too
        parts = line.split()
        if len(parts) == 2 and len(parts[1]) == 64:
            acked[int(parts[0])] = parts[1]
    return acked


def test_a_killed_replica_loses_no_acknowledged_event(dsn: str) -> None:
    acked: dict[int, str] = {}
    for trial in range(4):  # the same chain, killed and reopened each time
        got = _acknowledged_then_killed(dsn, "killed", after=200 + 50 * trial)
        assert not set(got) & set(acked)  # a reopened chain never reuses a number
        acked.update(got)
        stored = dict(_sql(dsn, "SELECT seq, hash FROM waveform_audit WHERE replica = 'killed'"))
        assert {s: stored.get(s) for s in acked} == acked
        n, problems = verify("postgres:" + dsn)
        assert problems == [] and n == len(stored) >= len(acked)


def test_postgres_stopped_fails_events_and_the_trail_recovers(
        dsn: str, postgres: PostgresServer) -> None:
    trail = _trail(dsn, "A")
    ok = [trail.append(_event(i)) for i in range(3)]
    assert trail.failed is None
    postgres.stop()
    try:
        with pytest.raises(DurabilityError, match="could not commit to PostgreSQL"):
            trail.append(_event(3))
        assert trail.failed is not None
        with pytest.raises(StorageError, match="cannot be written"):
            trail.append(_event(4))
        with pytest.raises(StorageError, match="reading the audit trail"):
            trail.query()
        time.sleep(1.2)  # retries while PostgreSQL is away fail and keep the trail failed
        assert trail.failed is not None
    finally:
        postgres.start()
    deadline = time.monotonic() + 20
    while trail.failed is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert trail.failed is None
    ev = trail.append(_event(5))
    assert (ev.seq, ev.prev) == (4, ok[-1].hash)
    trail.close()
    objects = [json.loads(e)["objects"] for (e,) in
               _sql(dsn, "SELECT event FROM waveform_audit ORDER BY seq")]
    assert objects == [["1.2.0"], ["1.2.1"], ["1.2.2"], ["1.2.5"]]  # nothing refused landed
    assert verify("postgres:" + dsn) == (4, [])


def test_an_event_that_cannot_be_stored_fails_alone(dsn: str) -> None:
    # PostgreSQL text holds no NUL: the indexed column gets U+FFFD, the event its exact
    # value (JSON-escaped); queries find it by the value given.
    trail = _trail(dsn, "A")
    ev = trail.append(_event(1, patient="P\x00X"))
    assert [r["replica_seq"] for r in trail.query(patient_id="P\x00X")] == [ev.seq]
    assert trail.query(patient_id="P\x00X")[0]["patient_id"] == "P\x00X"
    trail.close()
    assert verify("postgres:" + dsn) == (1, [])


# ------------------------------------------------------------------------------ queries


@pytest.fixture
def written(dsn: str) -> Iterator[tuple[PostgresTrail, PostgresTrail, list[dict[str, object]]]]:
    """Two replicas' trails and what each wrote, in order (the oracle for queries)."""
    clock_a, clock_b = ManualClock(T0), ManualClock(T0)
    a, b = _trail(dsn, "A", clock_a), _trail(dsn, "B", clock_b)
    log: list[dict[str, object]] = []
    for i in range(40):
        trail = a if i % 3 else b
        clock_a.advance(minutes=1)
        clock_b.advance(minutes=1)
        ev = trail.append(_event(i, patient=f"P{i % 4}", user=f"u{i % 2}",
                                 org="org-a" if i < 25 else "org-b"))
        log.append({"replica": trail.replica, "replica_seq": ev.seq, "patient_id": ev.patient_id,
                    "user": ev.user, "organisation": ev.organisation,
                    "time": T0 + dt.timedelta(minutes=i + 1), "objects": ev.objects})
    yield a, b, log
    a.close()
    b.close()


def _ids(rows: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(r["replica"], r["replica_seq"]) for r in rows]


def test_queries_see_every_replica_merged_in_order(
        written: tuple[PostgresTrail, PostgresTrail, list[dict[str, object]]]) -> None:
    a, b, log = written
    everything = a.query(limit=1000)
    assert _ids(everything) == _ids(log)  # both replicas, in the order written
    assert b.query(limit=1000) == everything
    assert [r["seq"] for r in everything] == sorted(r["seq"] for r in everything)  # type: ignore[type-var]
    assert a.last_seq == b.last_seq == everything[-1]["seq"]
    assert _ids(b.query(patient_id="P1", limit=1000)) == _ids(
        [e for e in log if e["patient_id"] == "P1"])
    assert _ids(a.query(user="u0", organisation="org-b", limit=1000)) == _ids(
        [e for e in log if e["user"] == "u0" and e["organisation"] == "org-b"])
    window = a.query(time_from=T0 + dt.timedelta(minutes=10),
                     time_to=T0 + dt.timedelta(minutes=13))
    assert _ids(window) == _ids(log[9:12])
    assert {str(r["replica"]) for r in window} == {"A", "B"}
    row = everything[7]
    assert (row["objects"], row["emergency"], row["time"]) == (
        ["1.2.7"], False, "2026-03-01T08:08:00Z")


def test_queries_page_by_position(
        written: tuple[PostgresTrail, PostgresTrail, list[dict[str, object]]]) -> None:
    a, b, log = written
    until = a.last_seq
    pages, after = [], 0
    while True:
        page = b.query(after_seq=after, until_seq=until, limit=7)
        if not page:
            break
        if not pages:
            a.append(_event(99))  # written after the first page: not in this paging
        pages.append(page)
        after = int(page[-1]["seq"])  # type: ignore[call-overload]
    assert [len(p) for p in pages] == [7, 7, 7, 7, 7, 5]
    assert _ids([r for p in pages for r in p]) == _ids(log)
    assert len(b.query(after_seq=until)) == 1
