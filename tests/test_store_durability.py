"""The durability order, asserted on the recorded file operations, and a failure
injected at each of its steps through the file interface."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from waveform.dicom import decode, encode
from waveform.dicom.synthetic import synthetic_ecg
from waveform.errors import DurabilityError, StorageError
from waveform.store import Store
from waveform.store.files import LocalFiles
from waveform.store.testing import Failure, RecordingFiles
from waveform.store.writer import GroupCommitWriter


def _objs(n: int, seed: int = 0) -> list[bytes]:
    return [encode(synthetic_ecg(seed=seed + i, duration_s=1.0)) for i in range(n)]


def _open(path: Path, rec: RecordingFiles) -> Store:
    return Store.open(path, files=rec, analyze=None, max_delay_ms=1)


def _data_files(path: Path) -> set[str]:
    out = set()
    for d, _, names in os.walk(path / "lake"):
        out.update(os.path.join(d, n) for n in names)
    return out


def test_order_write_fsync_rename_fsync_dir_commit_ack(tmp_path: Path) -> None:
    rec = RecordingFiles(LocalFiles())
    with _open(tmp_path, rec) as s:
        rec.log.clear()
        fut = s.submit(_objs(1)[0], "org")
        fut.add_done_callback(lambda _: rec.log.append(("resolved", "")))
        r = fut.result(30)
        named = {row[0] for row in s.sql(
            "SELECT filename FROM lake.ecg UNION ALL SELECT filename FROM lake.header "
            "UNION ALL SELECT filename FROM lake.waveform")}
    log = rec.log
    pos = {e: i for i, e in enumerate(log)}
    finals = [p for op, p in log if op == "rename"]
    assert sorted(finals) == sorted(named) and len(finals) == 3  # ecg, header, waveform
    for final in finals:
        tmp = os.path.join(os.path.dirname(final), "." + os.path.basename(final) + ".tmp")
        assert pos[("write", tmp)] < pos[("fsync", tmp)] < pos[("rename", final)]
        assert pos[("rename", final)] < pos[("fsync_dir", os.path.dirname(final))]
    last_dir_sync = max(i for i, (op, _) in enumerate(log) if op == "fsync_dir")
    assert last_dir_sync < pos[("commit", "")] < pos[("committed", "")] < pos[("ack", "")]
    assert pos[("ack", "")] < pos[("resolved", "")]
    assert not r.already_stored


STEPS = [
    ("write", 1, StorageError), ("write", 2, StorageError),
    ("fsync", 1, DurabilityError), ("fsync", 2, DurabilityError),
    ("write", 3, StorageError), ("fsync", 3, DurabilityError),
    ("rename", 1, StorageError), ("rename", 2, StorageError), ("rename", 3, StorageError),
    ("fsync_dir", 1, DurabilityError), ("fsync_dir", 3, DurabilityError),
    ("commit", 1, DurabilityError),
]


@pytest.mark.parametrize(("op", "nth", "error"), STEPS, ids=[f"{o}-{n}" for o, n, _ in STEPS])
def test_failure_at_each_step_fails_the_batch_and_leaves_nothing(
    tmp_path: Path, op: str, nth: int, error: type[Exception]
) -> None:
    objs = _objs(3)
    uids = [decode(o).sop_instance_uid for o in objs]
    rec = RecordingFiles(LocalFiles())
    s = _open(tmp_path, rec)
    try:
        rec.failures.append(Failure(op, nth))
        rec.log.clear()
        with pytest.raises(error):
            s.ingest(objs, "org")  # one job: the three share one commit
        assert ("failed:" + op) in [e[0] for e in rec.log]
        assert ("ack", "") not in rec.log
        assert not any(s.contains(u) for u in uids)
        assert s.sql("SELECT count(*) FROM lake.ecg")[0][0] == 0
        if error is DurabilityError:
            # Never retried: the failing fsync happened once, and the writer stopped.
            failed_path = rec.ops("failed:" + op)[0][1]
            assert rec.ops(op).count((op, failed_path)) == 1
            assert isinstance(s.stopped, DurabilityError)
            with pytest.raises(DurabilityError, match="writer stopped"):
                s.submit(_objs(1, seed=50)[0], "org")
        else:
            # Nothing stored and safe to retry: the same store takes the batch now.
            s.ingest(objs, "org")
            assert all(s.contains(u) for u in uids)
    finally:
        s.close()
    with Store.open(tmp_path, analyze=None) as s2:
        stored = s2.sql("SELECT count(*) FROM lake.ecg")[0][0]
        assert stored == (0 if error is DurabilityError else 3)
        named = {r[0] for r in s2.sql(
            "SELECT filename FROM lake.ecg UNION ALL SELECT filename FROM lake.header "
            "UNION ALL SELECT filename FROM lake.waveform")}
        s2.compact(grace_s=0)
        assert _data_files(tmp_path) == named  # no orphan, no temporary file left
        r = s2.ingest(_objs(1, seed=90), "org")[0]
        assert s2.contains(r.sop_instance_uid)


def test_every_request_of_a_failed_group_fails_and_durability_errors_stop_the_writer() -> None:
    calls: list[list[int]] = []

    def flush(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            raise StorageError("disk full")
        if len(calls) == 2:
            raise DurabilityError("fsync failed")
        return items

    w: GroupCommitWriter[int, int] = GroupCommitWriter(flush, max_objects=3, max_delay_s=5.0)
    try:
        first = [f for i in range(3) for f in w.submit([i])]  # grouped: N=3 reached
        for f in first:
            with pytest.raises(StorageError, match="disk full"):
                f.result(10)
        second = [f for i in range(3) for f in w.submit([i])]
        for f in second:
            with pytest.raises(DurabilityError, match="fsync failed"):
                f.result(10)
        assert calls == [[0, 1, 2], [0, 1, 2]]
        with pytest.raises(DurabilityError, match="writer stopped"):
            w.submit([9])
    finally:
        w.close(5)


def test_group_flushes_after_the_delay_with_fewer_than_n() -> None:
    seen: list[list[int]] = []
    w: GroupCommitWriter[int, int] = GroupCommitWriter(
        lambda items: seen.append(items) or items, max_objects=100, max_delay_s=0.05)
    try:
        futures = [w.submit([i])[0] for i in range(5)]
        assert [f.result(10) for f in futures] == list(range(5))
        assert sum(len(s) for s in seen) == 5 and len(seen) < 5
    finally:
        w.close(5)
