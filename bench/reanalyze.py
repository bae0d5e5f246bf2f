"""Batch re-analysis: ECGs/s with 1 and 2 local workers and a Dask cluster of 2.

The archive holds 12-lead 500 Hz 10 s ECGs (our encoder's synthetic ECGs, each
copy with its own UID and samples), ingested without summaries. Each row runs
the whole job (plan, workers reading Parquet, decode, analyze, summary rows, the
driver's commits) under its own analysis version, with warm workers; the peer
is `analyze()` alone in one process on already decoded ECGs. Targets: >= 400
ECGs/s per worker and >= 1.7x from 1 to 2 workers; when one is missed the
bench says by how much and where the time goes (per ECG, per stage).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench._util import table
from waveform.analysis import analyze
from waveform.dicom import decode
from waveform.reanalyze import DaskEngine, Engine, JobResult, LocalEngine, run
from waveform.reanalyze.progress import LogLines
from waveform.reanalyze.testing import objects
from waveform.reanalyze.worker import STAGES
from waveform.store import Store

#: Targets of issue 8 on this 2-core machine.
PER_WORKER_TARGET = 400.0
SCALING_TARGET = 1.7
#: Summaries per commit: the command's default.
COMMIT_ROWS = 1024


def _archive(path: Path, n: int) -> None:
    objs = objects(n)
    with Store.open(path, analyze=None, measure=False) as store:
        for k in range(0, n, 256):
            store.ingest(objs[k:k + 256], "bench")


def analyze_rate(n: int) -> float:
    """ECGs/s of `analyze()` alone, one process, decoded ECGs."""
    ecgs = [decode(o) for o in objects(min(n, 64), seed=9)]
    analyze(ecgs[0])
    t0 = time.perf_counter()
    done = 0
    while done < n:
        analyze(ecgs[done % len(ecgs)])
        done += 1
    return done / (time.perf_counter() - t0)


def _dask(workers: int) -> Engine | None:
    try:
        return DaskEngine(workers=workers)
    except Exception as e:  # the extra is not installed: the row says so
        print(f"dask row skipped: {e}")
        return None


def _timed(store: Store, engine: Engine, version: str, n: int) -> JobResult:
    with open(os.devnull, "w") as sink:
        result = run(store, engine, version=version,
                     unit_ecgs=max(8, min(128, n // (4 * engine.workers))),
                     commit_rows=COMMIT_ROWS, progress=LogLines(sink, every_s=3600))
    if result.committed != n:
        raise AssertionError(f"{version}: {result.committed} of {n} summaries committed")
    return result


def main(small: bool = False) -> None:
    n = 48 if small else 2000
    peer = analyze_rate(32 if small else 300)
    configs: list[tuple[str, int, Callable[[], Engine | None]]] = [
        ("local", 1, lambda: LocalEngine(1)),
        ("local", 2, lambda: LocalEngine(2)),
        ("dask LocalCluster", 2, lambda: _dask(2)),
    ]
    results: list[tuple[str, int, JobResult]] = []
    with tempfile.TemporaryDirectory() as tmp:
        _archive(Path(tmp) / "data", n)
        with Store.open(Path(tmp) / "data", analyze=None, measure=False) as store:
            for i, (name, workers, make) in enumerate(configs):
                engine = make()
                if engine is None:
                    continue
                with engine:
                    results.append((name, workers, _timed(store, engine, f"bench-{i}", n)))
    base = next((r.rate for name, w, r in results if name == "local" and w == 1), 0.0)
    rows: list[list[object]] = [["analyze() alone, 1 process (peer)", 1, f"{peer:.0f}",
                                 f"{peer:.0f}", "-"]]
    for name, workers, r in results:
        rows.append([f"reanalyze, {name}", workers, f"{r.rate:.0f}", f"{r.rate / workers:.0f}",
                     f"{r.rate / base:.2f}x" if base else "-"])
    print(f"Re-analysis of {n} 12-lead 500 Hz 10 s ECGs (whole job: plan, read Parquet, "
          "decode, analyze, summary rows, commits)\n")
    print(table(["engine", "workers", "ECGs/s", "per worker", "vs 1 worker"], rows))
    print()
    _diagnose(results, peer, base, n)


def _diagnose(results: list[tuple[str, int, JobResult]], peer: float, base: float,
              n: int) -> None:
    per_ecg = []
    for name, workers, r in results:
        ms = {k: 1000 * r.stages.get(k, 0.0) / n for k in STAGES}
        per_ecg.append([f"{name}, {workers}", *[f"{ms[k]:.2f}" for k in STAGES],
                        f"{1000 * r.commit_seconds / n:.2f}", f"{1000 * r.plan_seconds / n:.2f}",
                        f"{1000 * r.seconds * workers / n:.2f}",
                        f"{1000 * r.worker_cpu_seconds / n:.2f}",
                        f"{1000 * r.driver_cpu_seconds / n:.2f}"])
    print("Where the time goes, ms per ECG (worker stages: wall clock summed over workers; "
          "rows = summary rows; driver commit and plan; wall x workers; CPU time of the "
          "workers and of the driver process)\n")
    print(table(["run", *STAGES, "commit", "plan", "wall x workers", "worker CPU",
                 "driver CPU"], per_ecg))
    print()
    one = next((r for name, w, r in results if name == "local" and w == 1), None)
    two = next((r for name, w, r in results if name == "local" and w == 2), None)
    if one is not None:
        if one.rate >= PER_WORKER_TARGET:
            print(f"per worker: {one.rate:.0f} ECGs/s, target {PER_WORKER_TARGET:.0f} met")
        else:
            ms = {k: 1000 * one.stages.get(k, 0.0) / n for k in STAGES}
            worst = max(ms, key=lambda k: ms[k])
            print(f"per worker: {one.rate:.0f} ECGs/s, target {PER_WORKER_TARGET:.0f} missed "
                  f"by {PER_WORKER_TARGET / max(one.rate, 1e-9):.1f}x: the budget is "
                  f"{1000 / PER_WORKER_TARGET:.1f} ms per ECG; analyze() alone takes "
                  f"{1000 / peer:.1f} ms here, the largest stage is {worst} "
                  f"({ms[worst]:.1f} ms)")
    if two is not None:
        # Two workers and the driver on two otherwise free cores: each ECG costs
        # W + D of CPU, so 2 workers give at most 2 / (W + D) against 1 / W.
        w, d = two.worker_cpu_seconds / n, two.driver_cpu_seconds / n
        if w > 0:
            print(f"CPU per ECG with 2 workers: worker {1000 * w:.2f} ms, driver "
                  f"{1000 * d:.2f} ms: on 2 free cores 1 -> 2 workers could give at most "
                  f"{min(2.0, 2 * w / (w + d)):.2f}x")
    if one is not None and two is not None and base:
        ratio = two.rate / base
        verdict = "met" if ratio >= SCALING_TARGET else "missed"
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"1 -> 2 workers: {ratio:.2f}x, target {SCALING_TARGET}x {verdict}"
              + ("" if ratio >= SCALING_TARGET else
                 f" by {SCALING_TARGET / ratio:.2f}x: {os.cpu_count()} cores shared by the 2 "
                 f"workers, the driver (commits {1000 * two.commit_seconds / n:.2f} ms per "
                 f"ECG) and other processes (load average {load:.1f} at the end)"))
