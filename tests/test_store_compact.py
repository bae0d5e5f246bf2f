"""Compaction merges small files and removes old ones while readers and writers run."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

from waveform.dicom import decode, encode
from waveform.dicom.synthetic import synthetic_ecg
from waveform.store import Store


def _files_on_disk(path: Path) -> set[str]:
    return {os.path.join(d, n) for d, _, names in os.walk(path / "lake") for n in names}


def test_compaction_under_concurrent_readers_and_writers(tmp_path: Path) -> None:
    objs = [encode(synthetic_ecg(seed=i, duration_s=1.0).replace(patient_id=f"P{(7 * i) % 5}"))
            for i in range(40)]
    uids = [decode(o).sop_instance_uid for o in objs]
    s = Store.open(tmp_path, analyze=None, max_delay_ms=1)
    try:
        for o in objs[:24]:
            s.ingest([o], "org")  # one commit each: many small files
        before = s.sql("SELECT count(DISTINCT filename) FROM lake.waveform")[0][0]
        assert before == 24
        errors: list[BaseException] = []
        stop = threading.Event()

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                i = rng.randrange(24)
                try:
                    assert s.get_dicom(uids[i]) == objs[i]
                    s.get_trace(uids[i], leads=["II"])
                except BaseException as e:
                    errors.append(e)
                    return

        def writer() -> None:
            for o in objs[24:]:
                try:
                    s.ingest([o], "org")
                except BaseException as e:
                    errors.append(e)
                    return

        threads = [threading.Thread(target=reader, args=(k,)) for k in range(2)]
        threads.append(threading.Thread(target=writer))
        for t in threads:
            t.start()
        report = s.compact(min_files=2, grace_s=0)
        threads[-1].join()
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[:1]
        assert report.merged_files >= 24 * 3 and report.removed_files >= 24
        after = s.sql("SELECT count(DISTINCT filename) FROM lake.waveform")[0][0]
        assert after < before
        named = {r[0] for r in s.sql("SELECT filename FROM lake.ecg UNION ALL "
                                     "SELECT filename FROM lake.header UNION ALL "
                                     "SELECT filename FROM lake.waveform")}
        assert named <= _files_on_disk(tmp_path)
        for u, o in zip(uids, objs, strict=True):
            assert s.get_dicom(u) == o
        # Merged ecg files are sorted by patient, so one patient's rows are adjacent.
        for (f,) in s.sql("SELECT DISTINCT filename FROM lake.ecg"):
            pats = [r[0] for r in s.sql("SELECT patient_id FROM lake.ecg WHERE filename = ? "
                                        "ORDER BY file_row_number", [f])]
            assert pats == sorted(pats)
        assert s.sql("SELECT count(DISTINCT filename) FROM lake.ecg")[0][0] < 24
    finally:
        s.close()
    with Store.open(tmp_path, analyze=None) as s2:
        assert s2.sql("SELECT count(*), count(DISTINCT sop_instance_uid) FROM lake.ecg")[0] == (
            40, 40)
        for u, o in zip(uids, objs, strict=True):
            assert s2.get_dicom(u) == o


def test_background_compaction_starts_after_n_commits(tmp_path: Path) -> None:
    objs = [encode(synthetic_ecg(seed=100 + i, duration_s=1.0)) for i in range(8)]
    with Store.open(tmp_path, analyze=None, auto_compact_commits=8) as s:
        for o in objs[:7]:
            s.ingest([o], "org")
        assert s._compactor is None
        s.ingest([objs[7]], "org")  # the 8th commit starts it
        assert s._compactor is not None
        s._compactor.join(60)
        assert s.sql("SELECT count(DISTINCT filename) FROM lake.waveform")[0][0] == 1
        for o in objs:
            assert s.get_dicom(decode(o).sop_instance_uid) == o


def test_compact_dir_is_what_the_cli_calls(tmp_path: Path) -> None:
    from waveform.store import compact_dir

    objs = [encode(synthetic_ecg(seed=300 + i, duration_s=1.0)) for i in range(4)]
    with Store.open(tmp_path, analyze=None, auto_compact_commits=None) as s:
        for o in objs:
            s.ingest([o], "org")
    report = compact_dir(tmp_path, grace_s=0)
    assert report.merged_files == 12 and report.written_files == 3  # ecg, header, waveform
    assert report.removed_files == 12
    with Store.open(tmp_path, analyze=None) as s:
        assert s.sql("SELECT count(DISTINCT filename) FROM lake.ecg")[0][0] == 1
        for o in objs:
            assert s.get_dicom(decode(o).sop_instance_uid) == o
