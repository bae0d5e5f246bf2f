"""Pacemaker pulses: found where injected, none on unpaced ECGs, and the paced QRS onset."""

from __future__ import annotations

import numpy as np
import pytest

from bench.accuracy import WFDB, ludb_paced
from tests.conftest import shared
from tests.test_analysis import FS, make_ecg, synthetic_ecg
from waveform.analysis import analyze, detect_beats
from waveform.dsp import delineate, pacer


def _paced(rr: np.ndarray, lag_s: float = 0.06, amp_uv: float = 800.0, seed: int = 0,
           fs: float = FS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A synthetic 12-lead ECG with a pacemaker pulse ``lag_s`` before every R.

    The pulse is a one-sample step decaying with a 4 ms time constant (a 0.5 ms
    stimulus seen through a recorder's AC coupling), of one sign per lead as
    one field projects on every lead. Returns (x µV, R indices, pulse indices).
    """
    x, r = synthetic_ecg(rr, fs=fs, seed=seed, p_wave=False)
    pulse = r - round(lag_s * fs)
    sign = np.where(np.arange(12) % 2 == 0, 1.0, -1.0)
    gain = np.linspace(0.5, 1.0, 12)
    k = round(0.012 * fs)
    tail = amp_uv * np.exp(-np.arange(k) / (0.004 * fs))
    for p in pulse:
        x[:, p + 1:p + 1 + k] += (sign * gain)[:, None] * tail[None, :]
    return x, r, pulse


def test_pulses_found_at_the_injected_samples() -> None:
    x, _, pulse = _paced(np.full(10, 0.8))
    got = pacer.pulses(np.ascontiguousarray(x), FS)
    np.testing.assert_array_equal(got, pulse)


def test_small_pulses_on_few_leads_are_not_pulses() -> None:
    x, _, _ = _paced(np.full(10, 0.8))
    # The same pulses on 5 of 12 leads only (not one field on every lead).
    y, _ = synthetic_ecg(np.full(10, 0.8), p_wave=False)
    y[:5] = x[:5]
    assert pacer.pulses(np.ascontiguousarray(y), FS).shape == (0,)


@pytest.mark.parametrize("noise_uv", [5.0, 30.0])
def test_no_pulses_on_unpaced_ecgs(noise_uv: float) -> None:
    rng = np.random.default_rng(1)
    x, _ = synthetic_ecg(rng.uniform(0.5, 1.2, 12), noise_uv=noise_uv, seed=2)
    assert pacer.pulses(np.ascontiguousarray(x), FS).shape == (0,)


def test_paced_lag_needs_a_fixed_lag_before_most_beats() -> None:
    beats = np.arange(1, 11, dtype=np.int64) * 400
    fixed = beats - 30
    assert pacer.paced_lag(fixed, beats, FS) == 30
    # Pulses before only 4 of 10 beats: the median beat is not paced.
    assert pacer.paced_lag(fixed[:4], beats, FS) == -1
    # A pulse before every beat, at lags 20-110 samples (no capture, or a
    # pulse that happens to fall before unrelated beats): not paced.
    wander = beats - np.array([20, 110, 45, 90, 30, 70, 100, 25, 60, 80])
    assert pacer.paced_lag(wander, beats, FS) == -1
    # An atrial pulse before each ventricular one: the later one counts.
    both = np.sort(np.concatenate([fixed, beats - 90]))
    assert pacer.paced_lag(both, beats, FS) == 30
    assert pacer.paced_lag(np.empty(0, dtype=np.int64), beats, FS) == -1


def test_paced_median_beat_starts_its_qrs_at_the_pulse() -> None:
    x, _, _ = _paced(np.full(12, 0.8), lag_s=0.06)
    from waveform.analysis import _filtered

    bp = np.ascontiguousarray(_filtered(x, FS))
    beats = detect_beats(x, FS)
    pulse = pacer.pulses(np.ascontiguousarray(x), FS)
    lag = pacer.paced_lag(pulse, beats, FS)
    assert abs(lag - 0.06 * FS) <= 0.01 * FS  # the fiducial sits at the R peak
    pre, post = int(0.5 * FS), int(0.7 * FS)
    med = delineate.median_beats(bp, beats, pre, post)
    paced = delineate.fiducials(med, FS, pre, 0.8, pace=lag)
    assert paced[2] == pre - lag
    # Without the pulse's position the smeared pulse is taken for QRS: the
    # onset lands before the stimulus.
    plain = delineate.fiducials(med, FS, pre, 0.8)
    assert plain[2] < pre - lag
    assert paced[3] == plain[3]  # the offset does not depend on it


def test_ludb_pulses_only_on_paced_records() -> None:
    shared("wfdb", "ludb", "1.hea")
    import wfdb

    paced = ludb_paced()
    found = set()
    for k in range(1, 101):
        r = wfdb.rdrecord(str(WFDB / "ludb" / str(k)))
        x = np.ascontiguousarray(np.nan_to_num(r.p_signal.T) * 1000.0)
        beats = detect_beats(x, r.fs)
        if pacer.paced_lag(pacer.pulses(x, r.fs), beats, r.fs) >= 0:
            found.add(k)
    assert found <= paced
    # The unipolar ventricular pacing with visible pulses (34, 72, 74 report
    # set; 45 tuning); bipolar (90) and biventricular (93) pulses are too small
    # at 500 Hz.
    assert {34, 45, 72, 74} <= found


def test_bench_counts_beats_after_a_pulse() -> None:
    shared("wfdb", "ludb", "34.hea")
    from bench.accuracy import ludb_pacing, pulses_before_beats

    assert pulses_before_beats(WFDB / "ludb" / "34") == (10, 10)
    assert pulses_before_beats(WFDB / "ludb" / "1")[0] == 0
    assert ludb_pacing()[90] == "Bipolar ventricular pacing"


def test_pulses_are_found_at_the_recordings_own_rate() -> None:
    # A cart's 1000 Hz recording with 0.5 ms pulses. Resampled to 500 Hz first,
    # the pulses are not found: the anti-alias filter rings before each step,
    # so the 20 ms before it are not calm. At 1000 Hz they are, sample for sample.
    from waveform.dsp import resample

    fs = 1000.0
    x, _, pulse = _paced(np.full(12, 0.8), lag_s=0.1, fs=fs)
    np.testing.assert_array_equal(pacer.pulses(np.ascontiguousarray(x), fs), pulse)
    at_500 = resample.resample(x.astype(np.float32), fs, FS)
    assert pacer.pulses(np.ascontiguousarray(at_500), FS).shape == (0,)


@pytest.mark.parametrize("n", [12, 27, 28, 100, 5001])
def test_block_screen_matches_numpy(n: int) -> None:
    x = np.random.default_rng(n).normal(0, 50, n).astype(np.float32)
    a = 10
    tops = np.empty(max((n - 1 - a + pacer._BLOCK - 1) // pacer._BLOCK, 0))
    pacer._screen(x, a, tops)
    steps = np.abs(np.diff(x.astype(np.float64)))[a:]
    want = [steps[k:k + pacer._BLOCK].max() for k in range(0, steps.shape[0], pacer._BLOCK)]
    np.testing.assert_allclose(tops, want, rtol=1e-6)


def test_analyze_starts_a_paced_qrs_at_the_pulse_at_1000_hz() -> None:
    # A cart's 1000 Hz recording: analyze() finds the pulses at 1000 Hz,
    # before resampling and filtering, and starts the QRS at them.
    fs = 1000.0
    x, _, pulse = _paced(np.full(12, 0.8), lag_s=0.1, fs=fs)
    s = analyze(make_ecg(x, fs))
    beats = np.asarray(s.beats)
    lag_ms = float(np.median(beats - pulse[:beats.shape[0]]))  # 1 sample = 1 ms
    assert 95.0 <= lag_ms <= 105.0
    assert s.qrs_onset_ms.value is not None
    assert abs(s.qrs_onset_ms.value - (500.0 - lag_ms)) <= 4.0
    # Unpaced, the same ECG's QRS starts where its Q wave does, 25 ms before R.
    y, _ = synthetic_ecg(np.full(12, 0.8), fs=fs, p_wave=False)
    plain = analyze(make_ecg(y, fs))
    assert plain.qrs_onset_ms.value is not None
    assert plain.qrs_onset_ms.value > s.qrs_onset_ms.value + 30.0
