"""Consent, denials and documents on several servers (replicas) of one PostgreSQL
catalog and one S3 bucket: a change on one is in force on every other within a
second, every replica applies changes in the catalog's commit order (not by its
clock), no read answers from an older state, and two servers revising one document
at once make exactly one version n+1."""

from __future__ import annotations

import datetime as dt
import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, cast

import pyarrow as pa
import pytest

from tests.conftest import Backend
from tests.servers import PostgresServer
from waveform.archive import Archive, ManualClock, ReleaseDelays
from waveform.archive.consent import ConsentRegistry
from waveform.archive.documents import DocumentMeta, Documents
from waveform.archive.policy import CARE, Decision
from waveform.archive.refresh import Freshness, Refresher
from waveform.archive.tables import CONSENT, TABLES
from waveform.errors import Conflict, StorageError
from waveform.model import Identity
from waveform.store import Store, TableRef

on_cluster = pytest.mark.parametrize("backend", ["cluster"], indirect=True)

START = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
PATIENT = "PAT-0001"
STUDY = "2.25.777000111"
DR_A = Identity("org-a", "dr-a", "clinician")
DR_B = Identity("org-b", "dr-b", "clinician")
CITIZEN = Identity("citizens", "p-1", "citizen", patient_id=PATIENT)
#: What every replica must do within: the archive's promise.
LIMIT_S = 1.0


def _store(b: Backend, name: str) -> Store:
    return Store.open(b.data_dir / name, catalog=b.catalog, data_path=b.data_path,
                      analyze=None)


@contextmanager
def _replicas(b: Backend, n: int, clock: ManualClock | None = None,
              first: int = 0) -> Iterator[list[Archive]]:
    """``n`` servers' archives, each over its own store on the backend's catalog."""
    clock = clock or ManualClock(START)
    with ExitStack() as stack:
        out = []
        for i in range(first, first + n):
            store = stack.enter_context(_store(b, f"replica-{i}"))
            archive = Archive.open(store, b.data_dir / f"audit-{i}", clock=clock,
                                   release=ReleaseDelays(default_days=14))
            stack.callback(archive.close)
            out.append(archive)
        yield out


def _within(check: Callable[[], bool], since: float) -> float:
    """Seconds from ``since`` until ``check()`` holds (fails the test past the limit)."""
    while not check():
        if time.monotonic() - since > 2 * LIMIT_S:
            break
        time.sleep(0.005)
    took = time.monotonic() - since
    assert check() and took < LIMIT_S, f"not seen within {LIMIT_S} s (checked for {took:.2f} s)"
    return took


def _decision(archive: Archive, who: Identity, controller: str) -> Decision:
    """What ``archive`` decides for ``who`` reading an ECG ``controller`` archived."""
    with archive.access(who, CARE, "summary", patient_id=PATIENT) as acc:
        return acc.decide(controller, STUDY, PATIENT)


def _attach(archive: Archive, who: Identity, text: str, document_id: str = "",
            author: str = "Dr A", kind: str = "statement") -> DocumentMeta:
    with archive.access(who, CARE, "attach-document", patient_id=PATIENT) as acc:
        return archive.attach(acc, kind=kind, patient_id=PATIENT, study_instance_uid=STUDY,
                              accession_number="", visit_id="", author=author,
                              authored_at=None, title=f"{kind} {text}", text=text,
                              cda_xml=b"", document_id=document_id)


def _citizen_sees(archive: Archive) -> dict[str, dt.datetime]:
    """The documents the citizen's portal lists on ``archive``: id -> visible from."""
    with archive.access(CITIZEN, CARE, "my-examinations", patient_id=PATIENT) as acc:
        exams = archive.my_examinations(acc)
    return {v.meta.document_id: v.visible_to_patient_from for _, views, _, _ in exams
            for v in views}


# ----------------------------------------------------------------- consent and denials
@on_cluster
def test_consent_and_denials_on_one_replica_are_in_force_on_the_other_within_a_second(
        backend: Backend) -> None:
    with _replicas(backend, 2) as (a, b):
        assert _decision(b, DR_B, "org-a") == Decision(False, "no-consent")
        t0 = time.monotonic()
        a.consent.set_consent(PATIENT, True, "p-1", START)
        _within(lambda: b.consent.state(PATIENT).granted, t0)
        assert _decision(b, DR_B, "org-a") == Decision(True, "consent")

        # A denial of org-a on A: B refuses org-b's clinician org-a's ECG.
        t0 = time.monotonic()
        denied = a.consent.add_denial(PATIENT, "org-a", "", "p-1", START)
        (denial,) = denied.denials
        assert denial.organisation == "org-a"
        _within(lambda: not _decision(b, DR_B, "org-a").allowed, t0)
        assert _decision(b, DR_B, "org-a") == Decision(False, "denied-organisation")
        assert _decision(b, DR_B, "org-c") == Decision(True, "consent")
        assert b.consent.state(PATIENT) == a.consent.state(PATIENT)

        # Lifted on B, then consent withdrawn on B: A follows both.
        t0 = time.monotonic()
        b.consent.remove_denial(PATIENT, denial.denial_id, "p-1", START)
        _within(lambda: _decision(a, DR_B, "org-a").allowed, t0)
        assert a.consent.state(PATIENT).denials == ()
        t0 = time.monotonic()
        b.consent.set_consent(PATIENT, False, "p-1", START + dt.timedelta(hours=1))
        _within(lambda: not _decision(a, DR_B, "org-a").allowed, t0)
        assert _decision(a, DR_B, "org-a") == Decision(False, "no-consent")

        # A study denial on B, in force on A; the owner of the ECG still sees it.
        t0 = time.monotonic()
        study_denial = b.consent.add_denial(PATIENT, "", STUDY, "p-1", START).denials[-1]
        _within(lambda: bool(a.consent.state(PATIENT).denials), t0)
        a.consent.set_consent(PATIENT, True, "p-1", START + dt.timedelta(hours=2))
        assert _decision(a, DR_B, "org-a") == Decision(False, "denied-study")
        assert _decision(a, DR_A, "org-a") == Decision(True, "controller")
        _within(lambda: b.consent.state(PATIENT) == a.consent.state(PATIENT), time.monotonic())
        expected = a.consent.state(PATIENT)
        assert expected.granted and expected.denials == (study_denial,)

    # A server opened later holds the same state, from the rows in force only.
    with _replicas(backend, 1, first=2) as (c,):
        assert c.consent.state(PATIENT) == expected
        assert _decision(c, DR_B, "org-a") == Decision(False, "denied-study")


@on_cluster
def test_changes_apply_in_commit_order_whatever_the_writers_clocks(backend: Backend) -> None:
    """A server whose clock is behind commits after another: its change is the later one
    on every server, and after a restart (``seq`` is the writer's clock, not the order)."""
    with _replicas(backend, 2) as (a, b):
        a.consent.set_consent(PATIENT, True, "p-1", START)
        late = pa.Table.from_pylist([{"seq": 1, "patient_id": PATIENT, "granted": False,
                                      "changed_at": START, "changed_by": "p-1"}],
                                    schema=CONSENT)
        t0 = time.monotonic()
        b.store.commit_rows({"consent": late})
        _within(lambda: not a.consent.state(PATIENT).granted, t0)
        _within(lambda: not b.consent.state(PATIENT).granted, t0)
    with _replicas(backend, 1, first=2) as (c,):
        assert not c.consent.state(PATIENT).granted


@on_cluster
def test_no_read_answers_from_a_state_older_than_its_bound(backend: Backend) -> None:
    """With no background refresh at all, a read past ``max_age_s`` refreshes first."""
    freshness = Freshness(interval_s=0.1, max_age_s=0.4)
    with _replicas(backend, 1) as (a,), _store(backend, "follower") as store:
        refresher = Refresher(store, freshness)
        assert refresher.shared
        follower = ConsentRegistry(store, refresher)  # never started: no thread
        for granted in (True, False, True):
            a.consent.set_consent(PATIENT, granted, "p-1", START)
            time.sleep(freshness.max_age_s + 0.01)
            assert follower.state(PATIENT).granted is granted
        refresher.close()


@on_cluster
def test_reads_fail_while_the_catalog_is_away_and_resume_after(
        backend: Backend, postgres: PostgresServer) -> None:
    with _replicas(backend, 2) as (a, b):
        a.consent.set_consent(PATIENT, True, "p-1", START)
        _within(lambda: b.consent.state(PATIENT).granted, time.monotonic())
        postgres.stop()
        try:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 5:
                try:
                    b.consent.state(PATIENT)
                except StorageError as e:
                    refused_after = time.monotonic() - t0
                    assert "the catalog has not answered for" in str(e)
                    break
                time.sleep(0.02)
            else:
                pytest.fail("a replica answered consent for 5 s without its catalog")
            assert refused_after <= LIMIT_S
            assert b.refresher.age_s > b.refresher.freshness.max_age_s
            with pytest.raises(StorageError, match="cannot be checked"):
                b.documents.for_patient(PATIENT)
        finally:
            postgres.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                a.consent.set_consent(PATIENT, False, "p-1", START)
                break
            except StorageError:
                assert time.monotonic() < deadline, "the catalog did not come back"
                time.sleep(0.2)
        _within(lambda: not b.consent.state(PATIENT).granted, time.monotonic())
        assert b.refresher.age_s <= b.refresher.freshness.max_age_s


# ----------------------------------------------------------------------- documents
@on_cluster
def test_documents_and_releases_on_one_replica_are_seen_on_the_other(
        backend: Backend) -> None:
    clock = ManualClock(START)
    with _replicas(backend, 2, clock) as (a, b):
        t0 = time.monotonic()
        note = _attach(a, DR_A, "sinus rhythm, normal ECG")
        _within(lambda: b.documents.for_examination(STUDY) == [note.document_id], t0)
        assert b.documents.latest(note.document_id) == note
        with b.access(DR_A, CARE, "documents", patient_id=PATIENT) as acc:
            views, _, reporting = b.get_documents(acc, study_instance_uid=STUDY)
        assert [(v.meta, v.text) for v in views] == [(note, "sinus rhythm, normal ECG")]
        assert reporting == "Dr A"
        assert views[0].visible_to_patient_from == START + dt.timedelta(days=14)

        # The patient sees it on B once its release delay has passed, not before.
        assert _citizen_sees(b) == {}
        clock.advance(days=14)
        assert _citizen_sees(b) == {note.document_id: START + dt.timedelta(days=14)}

        # A second statement, released early on A: B shows it from the release on.
        second = _attach(a, DR_A, "follow-up: unchanged")
        _within(lambda: b.documents.latest(second.document_id) is not None, time.monotonic())
        assert second.document_id not in _citizen_sees(b)
        clock.advance(hours=1)
        with a.access(DR_A, CARE, "release-document", document_id=second.document_id) as acc:
            released = a.release_document(acc, second.document_id)
        assert released == START + dt.timedelta(days=14, hours=1)
        t0 = time.monotonic()
        _within(lambda: second.document_id in _citizen_sees(b), t0)
        assert _citizen_sees(b)[second.document_id] == released
        # The first release stands, on either server.
        clock.advance(hours=1)
        with b.access(DR_A, CARE, "release-document", document_id=second.document_id) as acc:
            assert b.release_document(acc, second.document_id) == released

    with _replicas(backend, 1, clock, first=2) as (c,):
        assert _citizen_sees(c) == {note.document_id: START + dt.timedelta(days=14),
                                    second.document_id: released}


class _RacingStore:
    """A store whose document commits wait, while ``racing`` is set, until every racer
    has read the latest version and chosen its number: a revision race every time."""

    def __init__(self, store: Store, barrier: threading.Barrier,
                 racing: threading.Event) -> None:
        self._store = store
        self._barrier = barrier
        self._racing = racing

    def sql(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        return self._store.sql(sql, params)

    def table(self, name: str) -> TableRef:
        return self._store.table(name)

    def commit_rows(self, tables: dict[str, pa.Table]) -> dict[str, str]:
        if "document" in tables and self._racing.is_set():
            self._barrier.wait(30)
        return self._store.commit_rows(tables)


def _latest_is(docs: Documents, meta: DocumentMeta) -> bool:
    return docs.latest(meta.document_id) == meta


def _race(revise: list[Callable[[], DocumentMeta]]) -> list[DocumentMeta | Exception]:
    outcomes: list[DocumentMeta | Exception] = [Conflict("not run")] * len(revise)

    def run(i: int) -> None:
        try:
            outcomes[i] = revise[i]()
        except (Conflict, StorageError) as e:
            outcomes[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(revise))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return outcomes


@on_cluster
def test_two_replicas_revising_one_document_at_once_make_one_version(
        backend: Backend) -> None:
    barrier, racing = threading.Barrier(2), threading.Event()
    with ExitStack() as stack:
        docs: list[Documents] = []
        for name in ("a", "b"):
            store = stack.enter_context(_store(backend, name))
            store.ensure_tables(TABLES)
            racer = cast(Store, _RacingStore(store, barrier, racing))
            refresher = Refresher(racer)
            docs.append(Documents(racer, refresher))
            refresher.start()
            stack.callback(refresher.close)
        a, b = docs

        def attach(d: Documents, text: str, author: str, document_id: str = ""
                   ) -> DocumentMeta:
            return d.attach(kind="statement", patient_id=PATIENT, study_instance_uid=STUDY,
                            accession_number="", visit_id="", organisation="org-a",
                            author=author, authored_at=START, stored_at=START,
                            stored_by=author, title="statement", text=text, cda_xml=b"",
                            document_id=document_id)

        doc = attach(a, "first reading", "Dr A").document_id
        racing.set()
        for version in (2, 3, 4):
            texts = (f"revision {version} from A", f"revision {version} from B")
            outcomes = _race([functools.partial(attach, a, texts[0], "Dr A", doc),
                              functools.partial(attach, b, texts[1], "Dr B", doc)])
            won = [o for o in outcomes if isinstance(o, DocumentMeta)]
            lost = [o for o in outcomes if isinstance(o, Exception)]
            assert len(won) == 1 and len(lost) == 1, outcomes
            assert won[0].version == version
            assert isinstance(lost[0], Conflict)
            assert f"its version {version} is that revision by {won[0].author}" in str(lost[0])
            winner_text = texts[0] if won[0].author == "Dr A" else texts[1]
            for d in docs:
                _within(functools.partial(_latest_is, d, won[0]), time.monotonic())
                assert [m.version for m in d.versions(doc)] == list(range(1, version + 1))
                assert d.texts([(doc, version)]) == {(doc, version): (winner_text, b"")}
        final = a.versions(doc)
        assert b.versions(doc) == final

    # A server opened later has the same versions, each the first committed.
    with _replicas(backend, 1, first=5) as (c,):
        assert c.documents.versions(doc) == final


@on_cluster
def test_free_revision_races_through_the_archive_never_share_a_version(
        backend: Backend) -> None:
    with _replicas(backend, 2) as (a, b):
        doc = _attach(a, DR_A, "v1").document_id
        _within(lambda: b.documents.latest(doc) is not None, time.monotonic())
        kept: list[DocumentMeta] = []
        for k in range(4):
            outcomes = _race([functools.partial(_attach, a, DR_A, f"a{k}", doc, "Dr A"),
                              functools.partial(_attach, b, DR_A, f"b{k}", doc, "Dr B")])
            assert all(isinstance(o, (DocumentMeta, Conflict)) for o in outcomes), outcomes
            assert any(isinstance(o, DocumentMeta) for o in outcomes)
            kept += [o for o in outcomes if isinstance(o, DocumentMeta)]
        _within(lambda: a.documents.versions(doc) == b.documents.versions(doc),
                time.monotonic())
        versions = a.documents.versions(doc)
        assert [m.version for m in versions] == list(range(1, len(versions) + 1))
        assert versions[1:] == sorted(kept, key=lambda m: m.version)
