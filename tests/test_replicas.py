"""The store on both backends, and several stores (replicas) on one PostgreSQL catalog
and one S3 bucket: each ECG stored once, readable byte for byte from every replica,
and a UID sent to two replicas at once stored once."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from concurrent.futures import Future
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Backend
from waveform.dicom import decode, encode
from waveform.dicom.synthetic import synthetic_ecg
from waveform.errors import Conflict
from waveform.store import Store
from waveform.store.store import IngestResult


def _obj(seed: int, uid: str | None = None) -> bytes:
    ecg = dataclasses.replace(synthetic_ecg(seed=seed, duration_s=1), patient_id=f"P{seed % 7}",
                              sop_instance_uid=uid or f"2.25.{9_000_000 + seed}")
    return encode(ecg)


def _open(b: Backend, **kw: object) -> Store:
    return Store.open(b.data_dir, catalog=b.catalog, data_path=b.data_path, analyze=None,
                      **kw)  # type: ignore[arg-type]


#: Several stores share a catalog only in PostgreSQL (an embedded catalog file
#: admits one process), so the replica tests take the cluster backend alone.
on_cluster = pytest.mark.parametrize("backend", ["cluster"], indirect=True)


def test_a_store_keeps_reads_and_compacts_on_each_backend(backend: Backend) -> None:
    objs = [_obj(k) for k in range(12)]
    with _open(backend, max_batch=4, auto_compact_commits=None) as s:
        results = s.ingest(objs[:6], "org-a") + s.ingest(objs[6:], "org-a")
        uids = [r.sop_instance_uid for r in results]
        for uid, obj in zip(uids, objs, strict=True):
            assert s.get_dicom(uid) == obj
        trace = s.get_trace(uids[3], units="raw")
        want = decode(objs[3]).groups[0].raw
        assert np.array_equal(trace.data, want)
        page = s.search(patient_id="P3")
        assert {r["sop_instance_uid"] for r in page.rows} == {
            u for u, k in zip(uids, range(12), strict=True) if k % 7 == 3}
        report = s.compact(target_bytes=1 << 30, min_files=2, grace_s=0)
        assert report.merged_files >= 2 and report.removed_files >= 2
        for uid, obj in zip(uids, objs, strict=True):  # the locators moved with the rows
            e = s.engine.locators.get(uid)
            assert e is not None and e == s.engine.lookup(uid)
            assert s.get_dicom(uid) == obj
    with _open(backend) as s:
        again = s.ingest(objs, "org-a")
        assert all(r.already_stored for r in again)
        assert s.sql("SELECT count(*) FROM lake.ecg")[0][0] == 12
        with pytest.raises(Conflict):
            s.ingest([_obj(99, uid=uids[0])], "org-a")


@on_cluster
def test_two_replicas_ingest_concurrently_each_ecg_once(backend: Backend) -> None:
    n = 400
    objs = [_obj(100 + k) for k in range(n)]
    with ExitStack() as stack:
        replicas = [stack.enter_context(_open(backend)) for _ in range(2)]
        futures: list[list[Future[IngestResult]]] = [[], []]

        def send(i: int) -> None:
            futures[i] = [replicas[i].submit(o, "org-a") for o in objs[i::2]]

        threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results = [f.result(60) for fs in futures for f in fs]
        assert not any(r.already_stored for r in results)
        assert len({r.sop_instance_uid for r in results}) == n
        for i, (uid, obj) in enumerate(zip((_uid(o) for o in objs), objs, strict=True)):
            # every ECG from either replica, byte for byte
            assert replicas[i % 2].get_dicom(uid) == obj
            assert replicas[(i + 1) % 2].get_dicom(uid) == obj
        assert replicas[0].sql("SELECT count(*), count(DISTINCT sop_instance_uid) "
                               "FROM lake.ecg")[0] == (n, n)


def _uid(obj: bytes) -> str:
    return str(decode(obj).sop_instance_uid)


@on_cluster
def test_the_same_uid_to_two_replicas_at_once_is_stored_once(backend: Backend) -> None:
    races = 100
    with ExitStack() as stack:
        replicas = [stack.enter_context(_open(backend, max_delay_ms=1)) for _ in range(2)]
        for k in range(races):
            obj = _obj(1000 + k)
            # Every tenth race: the second replica gets other bytes under the same UID.
            other = _obj(5000 + k, uid=_uid(obj)) if k % 10 == 0 else obj
            barrier = threading.Barrier(2)
            got: list[Future[IngestResult] | None] = [None, None]

            def send(i: int, data: bytes, barrier: threading.Barrier,
                     got: list[Future[IngestResult] | None]) -> None:
                barrier.wait()
                got[i] = replicas[i].submit(data, "org-a")

            threads = [threading.Thread(target=send, args=(i, d, barrier, got))
                       for i, d in enumerate((obj, other))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            outcomes: list[IngestResult | BaseException] = []
            for f in got:
                assert f is not None
                err = f.exception(60)
                outcomes.append(err if err is not None else f.result())
            stored = [o for o in outcomes
                      if isinstance(o, IngestResult) and not o.already_stored]
            assert len(stored) == 1, outcomes
            if other is obj:
                assert sum(isinstance(o, IngestResult) and o.already_stored
                           for o in outcomes) == 1
            else:
                assert sum(isinstance(o, Conflict) for o in outcomes) == 1
            uid = _uid(obj)
            assert replicas[0].sql("SELECT count(*) FROM lake.ecg WHERE sop_instance_uid = ?",
                                   [uid])[0][0] == 1
            winner = obj if stored[0].sha256 == _sha(obj) else other
            assert replicas[1].get_dicom(uid) == winner == replicas[0].get_dicom(uid)


def _sha(obj: bytes) -> str:
    import hashlib

    return hashlib.sha256(obj).hexdigest()


@on_cluster
def test_two_replicas_compacting_at_once_lose_nothing(backend: Backend) -> None:
    # Both merge the same small files at once: DuckLake lets one commit and refuses
    # the other (a conflict is given up, never a durability failure); every ECG stays
    # readable from both, once.
    from waveform.errors import StorageError

    objs = [_obj(3000 + k) for k in range(24)]
    with ExitStack() as stack:
        replicas = [stack.enter_context(_open(backend, auto_compact_commits=None))
                    for _ in range(2)]
        for k in range(0, 24, 3):
            replicas[k % 2].ingest(objs[k:k + 3], "org-a")
        outcomes: list[object] = [None, None]
        barrier = threading.Barrier(2)

        def compact(i: int) -> None:
            barrier.wait()
            try:
                outcomes[i] = replicas[i].compact(min_files=2, grace_s=60)
            except StorageError as e:
                outcomes[i] = e

        threads = [threading.Thread(target=compact, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert any(not isinstance(o, StorageError) and o.merged_files > 0  # type: ignore[attr-defined]
                   for o in outcomes), outcomes
        for obj in objs:
            uid = _uid(obj)
            assert replicas[0].get_dicom(uid) == obj == replicas[1].get_dicom(uid)
        assert replicas[1].sql("SELECT count(*), count(DISTINCT sop_instance_uid) "
                               "FROM lake.ecg")[0] == (24, 24)


@on_cluster
def test_compact_command_on_a_shared_catalog_beside_a_server(
        backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    from waveform.cli import main

    objs = [_obj(4000 + k) for k in range(12)]
    with _open(backend, auto_compact_commits=None) as server:
        for k in range(0, 12, 2):
            server.ingest(objs[k:k + 2], "org-a")
        assert main(["compact", "--catalog", backend.catalog, "--data",
                     backend.data_path]) == 0
        out = capsys.readouterr().out
        assert out.startswith("merged ") and not out.startswith("merged 0 ")
        # The server beside it still reads everything (the replaced files outlive the
        # merge by the grace period: a shared catalog is never compacted with none).
        for obj in objs:
            assert server.get_dicom(_uid(obj)) == obj
        assert server.sql("SELECT count(*) FROM lake.ecg")[0][0] == 12
    assert main(["compact", "--catalog", backend.catalog]) == 2


def test_two_stores_on_a_postgresql_catalog_over_a_shared_folder(
        postgres: object, tmp_path: Path) -> None:
    # The catalog in PostgreSQL, the data files in a folder both servers see.
    from tests.servers import PostgresServer

    assert isinstance(postgres, PostgresServer)
    catalog = "postgres:" + postgres.create_database(f"shared_{uuid.uuid4().hex[:12]}")
    objs = [_obj(5000 + k) for k in range(6)]
    with ExitStack() as stack:
        a, b = (stack.enter_context(Store.open(tmp_path, catalog=catalog, analyze=None))
                for _ in range(2))
        assert a.data_path == b.data_path == str(tmp_path / "lake") + "/"
        first = a.ingest(objs[:3], "org-a")
        second = b.ingest([*objs[3:], objs[0]], "org-a")
        assert [r.already_stored for r in second] == [False, False, False, True]
        for r, obj in zip(first + second[:3], objs, strict=True):
            assert a.get_dicom(r.sop_instance_uid) == obj == b.get_dicom(r.sop_instance_uid)
        assert b.sql("SELECT count(*), count(DISTINCT sop_instance_uid) FROM lake.ecg")[0] == (
            6, 6)
