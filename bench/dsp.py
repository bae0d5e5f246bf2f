"""Signal kernels and the whole analysis, timed beside their peers (one 12-lead ECG).

Rows: resampling 12 x 10,000 at 1000 -> 500 Hz vs scipy.signal.resample_poly;
zero-phase filtering 12 x 5,000 (0.67-40 Hz + 50 Hz notch) vs
scipy.signal.sosfiltfilt with the same SOS cascade (outputs checked equal), and
vs the usual scipy recipe (band-pass sosfiltfilt then notch filtfilt); beat detection (12 leads) vs
neurokit2.ecg_peaks and wfdb gqrs_detect (lead II each); analyze() vs
neurokit2.ecg_process on every lead. Inputs are LUDB record 2 when
../shared/data is present, else a synthetic 12-lead ECG. The numba JIT cost
is printed too: a fresh process with cache=True loads compiled kernels.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np

from bench._util import fmt_time, median_time, table


def _input() -> tuple[object, np.ndarray]:
    from bench.accuracy import WFDB, wfdb_ecg

    rec = WFDB / "ludb" / "2"
    if rec.with_suffix(".hea").exists():
        ecg = wfdb_ecg(rec)
    else:
        from tests.test_analysis import make_ecg, synthetic_ecg

        ecg = make_ecg(synthetic_ecg(np.full(11, 0.85))[0][:, :5000])
    g = ecg.rhythm
    assert g is not None
    x = (g.raw * np.array([c.sensitivity for c in g.channels])[:, None]
         + np.array([c.baseline for c in g.channels])[:, None]) * 1000.0
    return ecg, np.ascontiguousarray(x.astype(np.float32))


def _cpu_time(fn: Callable[[], object], repeat: int) -> float:
    """Median CPU time (s) of the calling thread over ``repeat`` runs of ``fn``."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    return float(np.median(times))


def _cold_start() -> float:
    """Seconds for a fresh interpreter to import and run analyze() once."""
    code = (
        "import time;t=time.perf_counter();import numpy as np;"
        "from waveform.analysis import detect_beats;"
        "from waveform.dsp import resample, filters;"
        "x=np.random.default_rng(0).standard_normal((12,5000));"
        "detect_beats(x,500.0);resample.resample(x,1000,500);"
        "print(time.perf_counter()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip())


def _many_records(analyze: Callable[[object], object], n: int,
                  repeat: int) -> tuple[int, float, float, float] | None:
    """CPU time of analyze() per LUDB record (records 1..n): median, 90th
    percentile and slowest over the records, each the median of ``repeat`` runs;
    None without the data."""
    from bench.accuracy import WFDB, wfdb_ecg

    records = [WFDB / "ludb" / str(i) for i in range(1, n + 1)]
    ecgs = [wfdb_ecg(r) for r in records if r.with_suffix(".hea").exists()]
    if not ecgs:
        return None
    per = np.array([_cpu_time(lambda e=e: analyze(e), repeat) for e in ecgs])
    return len(ecgs), float(np.median(per)), float(np.percentile(per, 90)), float(per.max())


def main(small: bool = False) -> None:
    import neurokit2 as nk
    from scipy import signal
    from wfdb import processing

    from waveform.analysis import analyze, detect_beats
    from waveform.dsp import filters, resample

    repeat = 3 if small else 50
    peer_repeat = 1 if small else 10
    ecg, x = _input()
    fs = 500.0
    x1000 = resample.resample(x, fs, 1000.0)
    rows = []

    def row(name: str, ours: float, peer: float | None, peer_name: str) -> None:
        if not peer:
            ratio = "-"
        elif peer >= ours:
            ratio = f"{peer / ours:.1f}x faster"
        else:
            ratio = f"{ours / peer:.1f}x slower"
        rows.append([name, fmt_time(ours), peer_name, fmt_time(peer) if peer else "-", ratio])

    t_ours = median_time(lambda: resample.resample_poly(x1000, 1, 2), repeat)
    t_peer = median_time(lambda: signal.resample_poly(x1000, 1, 2, axis=-1), repeat)
    row("resample 12x10000 1000->500 Hz", t_ours, t_peer, "scipy resample_poly")
    spec = filters.FilterSpec(fs, 0.67, 40.0, 50.0)
    # Like with like: scipy gets the very cascade ours runs (high-pass, low-pass
    # and the 50 Hz notch folded into one SOS), the same float32 input and the
    # same default padding; the outputs are checked equal before timing.
    sos = filters.design(spec).sos.copy()
    ours_y = filters.apply(x, spec)
    peer_y = signal.sosfiltfilt(sos, x, axis=-1)
    dev = float(np.abs(ours_y - peer_y).max() / np.abs(peer_y).max())
    if dev > 1e-5:
        raise AssertionError(f"filter outputs differ by {dev:.2e} of full scale")
    t_ours = median_time(lambda: filters.apply(x, spec), repeat)
    t_peer = median_time(lambda: signal.sosfiltfilt(sos, x, axis=-1), repeat)
    row(f"filter 12x5000 0.67-40 Hz + 50 Hz notch ({sos.shape[0]} sections, same SOS)",
        t_ours, t_peer, "scipy sosfiltfilt")
    # The usual scipy recipe: band-pass sosfiltfilt then a notch filtfilt (two passes).
    bp_sos = signal.butter(2, 0.67, "highpass", output="sos", fs=fs)
    bp_sos = np.vstack([bp_sos, signal.butter(4, 40.0, "lowpass", output="sos", fs=fs)])
    nb, na = signal.iirnotch(50.0, 30.0, fs=fs)
    t_peer = median_time(lambda: signal.filtfilt(nb, na, signal.sosfiltfilt(bp_sos, x, axis=-1),
                                                 axis=-1), repeat)
    row("  same filter", t_ours, t_peer, "scipy sosfiltfilt + notch filtfilt")
    t_design = median_time(lambda: filters.design.__wrapped__(spec), repeat)
    row("  filter design (cached in use)", t_design, None, "")
    lead_ii = np.ascontiguousarray(x[1].astype(np.float64))
    t_ours = median_time(lambda: detect_beats(x, fs), repeat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_nk = median_time(lambda: nk.ecg_peaks(lead_ii, sampling_rate=500), repeat)
        t_gq = median_time(lambda: processing.gqrs_detect(lead_ii / 1000.0, fs=fs),
                           peer_repeat, warmup=1)
        row("detect beats (ours 12 leads)", t_ours, t_nk, "neurokit2 ecg_peaks (1 lead)")
        row("detect beats (ours 12 leads)", t_ours, t_gq, "wfdb gqrs_detect (1 lead)")
        t_ours = median_time(lambda: analyze(ecg), repeat)
        t_peer = median_time(lambda: [nk.ecg_process(lead, sampling_rate=500)
                                      for lead in x.astype(np.float64)], peer_repeat, warmup=1)
    row("analyze() 12-lead 10 s", t_ours, t_peer, "neurokit2 ecg_process x12")
    cpu = _cpu_time(lambda: analyze(ecg), repeat)
    print(table(["operation", "ours", "peer", "peer time", "ratio"], rows))
    # On a shared machine wall time includes waiting for a core; the thread's
    # CPU time is what one analysis costs on one core (the kernels run in the
    # calling thread).
    print(f"\nanalyze(): median {fmt_time(t_ours)} wall, {fmt_time(cpu)} CPU on one core "
          f"(target <= 2 ms); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    spread = _many_records(analyze, 4 if small else 100, 1 if small else 5)
    if spread is not None:
        n, p50, p90, worst = spread
        print(f"analyze() over {n} LUDB records (CPU, median of {1 if small else 5} runs each): "
              f"median {fmt_time(p50)}, 90th percentile {fmt_time(p90)}, "
              f"slowest {fmt_time(worst)}")
    if not small:
        t0 = time.perf_counter()
        cold = _cold_start()
        print(f"\nfresh process, import + first calls (JIT cache warm): {fmt_time(cold)} "
              f"(measured in {time.perf_counter() - t0:.1f} s)")
