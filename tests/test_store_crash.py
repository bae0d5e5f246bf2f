"""Crash safety: a writer process under continuous ingest is SIGKILLed at random
(seeded) moments; every acknowledged object must survive, byte for byte, once."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

TRIALS = int(os.environ.get("WAVEFORM_CRASH_TRIALS", "20"))


def _analyze(ecg: Any) -> dict[str, Any]:
    return {"heart_rate_bpm": float(ecg.rhythm.n_samples % 100)}


def _child() -> None:
    """Ingest forever from 3 threads; print "uid sha256" for every acknowledged object."""
    from waveform.dicom import encode
    from waveform.dicom.synthetic import synthetic_ecg
    from waveform.store import Store

    data_dir, first_seed = sys.argv[1], int(sys.argv[2])
    store = Store.open(data_dir, analyze=_analyze, analysis_version="crash-1", max_delay_ms=3,
                       max_batch=16)
    out = threading.Lock()
    print("ready", flush=True)

    def worker(k: int) -> None:
        seed = first_seed + k
        while True:
            data = encode(synthetic_ecg(seed=seed, duration_s=1.0 + (seed % 5)))
            r = store.submit(data, f"org-{seed % 3}").result()
            with out:
                sys.stdout.write(f"{r.sop_instance_uid} {r.sha256}\n")
                sys.stdout.flush()
            if seed % 7 == 0:  # a duplicate now and then: must stay stored once
                store.submit(data, "dup").result()
            seed += 3

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _run_until_killed(data_dir: Path, first_seed: int, kill_after: float) -> list[tuple[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "from tests.test_store_crash import _child; _child()",
         str(data_dir), str(first_seed)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            raise AssertionError(f"writer did not start: {line!r} {proc.stderr.read()}")  # type: ignore[union-attr]
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
        reader.start()
        time.sleep(kill_after)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        reader.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return [tuple(line.split()) for line in lines if line.strip()]  # type: ignore[misc]


@pytest.mark.slow
def test_acknowledged_objects_survive_sigkill(tmp_path: Path) -> None:
    from waveform.store import Store

    rng = random.Random(20261125)
    acked: dict[str, str] = {}
    for trial in range(TRIALS):
        got = _run_until_killed(tmp_path, first_seed=trial * 100_000,
                                kill_after=rng.uniform(0.05, 1.5))
        for uid, sha in got:
            assert acked.setdefault(uid, sha) == sha
        with Store.open(tmp_path, analyze=_analyze, analysis_version="crash-1") as s:
            rows = s.sql("SELECT sop_instance_uid FROM lake.ecg")
            uids = [r[0] for r in rows]
            assert len(uids) == len(set(uids)), f"trial {trial}: an object is stored twice"
            groups = s.sql("SELECT sop_instance_uid, group_index, count(*) FROM lake.waveform "
                           "GROUP BY ALL HAVING count(*) > 1")
            assert groups == []
            missing = [u for u in acked if u not in set(uids)]
            assert not missing, f"trial {trial}: acknowledged but lost: {missing[:3]}"
            for uid, sha in acked.items():
                assert hashlib.sha256(s.get_dicom(uid)).hexdigest() == sha
            assert s.search(limit=5).rows or not uids
    assert len(acked) > TRIALS  # the kills did land during ingest, not before it
