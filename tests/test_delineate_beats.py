"""Per-beat wave boundaries: `waveform.analysis.delineate`, its kernel against a numpy
reference, the marks a Summary carries, and real annotations (QT Database)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import shared
from tests.test_analysis import FS, make_ecg, synthetic_ecg
from tests.test_pacer import _paced
from waveform.analysis import (
    MARKS,
    BeatMarks,
    _filtered,
    analyze,
    beat_marks,
    delineate,
    detect_beats,
)
from waveform.dsp import delineate as waves
from waveform.errors import InvalidArgument
from waveform.model import Summary

PRE, POST = 250, 350


def _noise_reference(x: np.ndarray, step: int) -> np.ndarray:
    """numpy: 1.4826 MAD of every step-th second difference over sqrt(6), per lead."""
    d2 = np.abs(x[:, 2:] - 2.0 * x[:, 1:-1] + x[:, :-2])[:, ::step]
    return 1.4826 * np.median(d2, axis=1) / np.sqrt(6.0)


def test_lead_noise_matches_numpy() -> None:
    x = np.random.default_rng(4).normal(0.0, 7.0, (5, 1001))
    for step in (1, 2, 3):
        np.testing.assert_allclose(waves._lead_noise(x, step), _noise_reference(x, step),
                                   rtol=1e-12)


def test_beat_fiducials_equal_the_median_beat_kernel_on_each_beat_window() -> None:
    # The oracle: numpy cuts each beat's window and measures the noise over the
    # beats' block; `fiducials` (the median beat's kernel) delineates the window.
    x, _ = synthetic_ecg(np.random.default_rng(5).uniform(0.6, 1.1, 20), noise_uv=15.0)
    bp = np.ascontiguousarray(_filtered(x, FS))
    beats = detect_beats(x, FS)
    rr = np.append(np.diff(beats) / FS, 0.8)
    use = np.ones(12, dtype=np.bool_)
    use[3] = False
    pace = np.full(beats.shape[0], -1, dtype=np.int64)
    got = waves.beat_fiducials(bp, beats, FS, PRE, POST, rr, use, pace,
                               np.asarray(waves.PARAMS, dtype=np.float64))
    n = bp.shape[1]
    edge = int(waves.EDGE_S * FS)
    block = waves._NOISE_BEATS
    for k, b in enumerate(beats.tolist()):
        if b < edge or b + edge > n:
            assert (got[k] == -1).all()
            continue
        k0 = k - k % block
        lo = max(int(beats[k0]) - PRE, 0)
        hi = min(int(beats[min(k0 + block, beats.shape[0]) - 1]) + POST, n)
        noise = _noise_reference(bp[:, lo:hi], max((hi - lo) // waves._NOISE_SAMPLES, 1))
        a, e = max(b - PRE, 0), min(b + POST, n)
        want = waves.fiducials(bp[:, a:e], FS, b - a, float(rr[k]), use, noise=noise)
        assert list(got[k]) == [v + a if v >= 0 else -1 for v in want], k
    # Every inner beat's QRS and T, and the P wave of most (noise of 15 µV).
    assert (got[1:-1, 2:] >= 0).all()
    assert (got[1:-1, :2] >= 0).all(axis=1).mean() >= 0.8


@pytest.mark.parametrize("fs", [500.0, 250.0])
def test_delineate_finds_the_synthetic_waves_at_the_groups_rate(fs: float) -> None:
    # Gaussian waves (synthetic_ecg): P centred 160 ms before R (width 25 ms), q
    # at -25 ms, R, s at +30 ms, T at +270 ms (width 50 ms). A Gaussian of width
    # w is at 5% of its height w * sqrt(ln 20) from its centre.
    x, r = synthetic_ecg(np.full(11, 0.8))
    if fs != FS:
        from scipy.signal import resample_poly

        x = resample_poly(x, 1, 2, axis=1)
        r = np.round(r / 2).astype(np.int64)
    marks = delineate(make_ecg(x, fs))
    assert len(marks) == r.shape[0]
    h = np.sqrt(np.log(20.0))
    expected = {"p_onset": -0.160 - 0.025 * h, "p_offset": -0.160 + 0.025 * h,
                "qrs_onset": -0.025 - 0.008 * h, "qrs_offset": 0.030 + 0.009 * h,
                "t_peak": 0.270, "t_offset": 0.270 + 0.050 * h}
    tol = {"p_onset": 0.014, "p_offset": 0.014, "qrs_onset": 0.006, "qrs_offset": 0.008,
           "t_peak": 0.006, "t_offset": 0.020}
    for m, beat in zip(marks[1:-1], r[1:-1], strict=True):
        assert abs(m.beat - beat) <= 0.01 * fs
        assert m.missing == ()
        for name, at in expected.items():
            v = getattr(m, name)
            assert v is not None and abs((v - beat) / fs - at) <= tol[name], (name, v, beat)


def test_delineate_gives_the_marks_analyze_stores_in_its_summary() -> None:
    x, _ = synthetic_ecg(np.random.default_rng(2).uniform(0.6, 1.0, 14), noise_uv=20.0)
    ecg = make_ecg(x)
    s = analyze(ecg)
    marks = delineate(ecg)
    assert beat_marks(s) == marks
    assert [m.beat for m in marks] == s.beats.tolist()
    assert s.beat_marks.shape == (len(marks), len(MARKS))
    back = Summary.from_dict(s.to_dict())
    assert back == s and beat_marks(back) == marks


def test_absent_marks_say_why() -> None:
    # No P wave at all, and a recording that starts 40 ms before its first R.
    x, r = synthetic_ecg(np.full(9, 0.8), p_wave=False)
    x = x[:, int(r[0] - 0.04 * FS):]
    marks = delineate(make_ecg(x))
    first = marks[0]
    assert first.qrs_onset is None
    assert first.reason("qrs_onset") == ("the beat is too close to the start or end of the "
                                         "recording to delineate")
    # Noise passes for a P wave on some beats, but it does not repeat from beat
    # to beat: no beat keeps a P wave.
    why = {"no P wave found before this beat's QRS complex",
           "no P wave that repeats from beat to beat around this beat (atrial fibrillation "
           "or flutter, or noise as large as the P wave)"}
    for m in marks[1:-1]:
        assert m.qrs_onset is not None and m.p_onset is None and m.p_offset is None
        assert m.reason("p_onset") in why and m.reason("qrs_onset") == ""
    inner = marks[3]
    with pytest.raises(InvalidArgument, match="'pr' is not a beat mark"):
        inner.reason("pr")


def test_a_paced_beat_starts_its_qrs_at_the_pulse() -> None:
    x, _, pulse = _paced(np.full(10, 0.8), lag_s=0.06)
    marks = delineate(make_ecg(x))
    for m in marks[1:-1]:
        k = int(np.argmin(np.abs(pulse - m.beat)))
        assert m.qrs_onset == pulse[k]


def test_beat_marks_is_a_frozen_value() -> None:
    m = BeatMarks(10, None, None, 5, 15, 60, 90, (("p_onset", "x"), ("p_offset", "x")))
    with pytest.raises(AttributeError):
        m.beat = 3  # type: ignore[misc]
    assert m.reason("p_offset") == "x"


@pytest.mark.parametrize("record", ["sel100", "sel306"])
def test_qtdb_marks_against_annotator_1(record: str) -> None:
    # Report-half records (even numbers) of the QT Database: every beat
    # annotator 1 marked is found, and each boundary's error (ms) is bounded.
    shared("wfdb", "qtdb", f"{record}.hea")
    from bench.accuracy import BOUNDARIES, boundary_errors, evaluate_qtdb

    res = evaluate_qtdb(record, peers=False)
    assert res.fs == 250.0
    assert (res.marks["waveform"][:, 0] >= 0).all()
    limits = {"qrs_onset": (8.0, 10.0), "qrs_offset": (6.0, 10.0), "t_offset": (16.0, 22.0)}
    for col, name in enumerate(BOUNDARIES, start=1):
        if name not in limits:
            continue
        per, marked, found = boundary_errors([res], "waveform", col)
        d = np.concatenate(per)
        assert found == marked >= 30
        mean_lim, sd_lim = limits[name]
        assert abs(d.mean()) <= mean_lim and d.std(ddof=1) <= sd_lim, (name, d.mean(),
                                                                        d.std(ddof=1))
