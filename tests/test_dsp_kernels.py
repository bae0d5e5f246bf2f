"""The numba kernels against their numpy/scipy references."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal

from waveform.analysis import detect_beats
from waveform.dsp import delineate, filters, leads, measure, qrs, quality, resample, scale
from waveform.errors import InvalidArgument

RNG = np.random.default_rng(20240611)


# --- scale -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("units", "factor"), [("uV", 1.0), ("mV", 1e3), ("V", 1e6), ("nV", 1e-3), (None, 1.0)]
)
def test_scale_matches_numpy(units: str | None, factor: float) -> None:
    raw = RNG.integers(-32768, 32767, size=(3, 100), dtype=np.int16)
    sens = np.array([2.5, 0.5, 1.0])
    corr = np.array([1.0, 1.1, 0.9])
    base = np.array([0.0, -3.0, 7.0])
    got = scale.to_microvolts(raw, sens, corr, base, [units] * 3)
    want = (raw * (sens * corr)[:, None] + base[:, None]) * factor
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_scale_padding_is_nan() -> None:
    raw = np.array([[1, -32768, 3], [-32768, 2, 2]], dtype=np.int16)
    got = scale.to_microvolts(raw, [1.0, 1.0], padding=[-32768, None])
    assert np.isnan(got[0, 1]) and not np.isnan(got[1, 0])


def test_twelve_bit_samples_in_int16_are_sign_extended_everywhere() -> None:
    """A 12-bit cart that stores 0x0FFF (-1), 0x0800 (-2048) and 1 in int16 without
    sign extension: the printout's physical values and the analysis' microvolts
    come from one kernel and agree."""
    from waveform.model import Channel, WaveformGroup

    raw = np.array([[0x0FFF, 0x0800, 1, 0x07FF]], dtype=np.int16)
    got = scale.to_physical(raw, [1.0], interpretation="SS", bits_stored=12)
    assert got.tolist() == [[-1.0, -2048.0, 1.0, 2047.0]]
    group = WaveformGroup("RHYTHM", 500.0, (Channel(lead="II", units="uV", bits_stored=12),),
                          raw, "SS")
    assert group.physical().tolist() == [[-1.0, -2048.0, 1.0, 2047.0]]
    assert group.microvolts().tolist() == [[-1.0, -2048.0, 1.0, 2047.0]]
    # Unsigned samples are masked to their stored bits instead.
    u = scale.to_physical(np.array([[0xF0FF]], np.uint16), [1.0], bits_stored=12)
    assert u.tolist() == [[0x00FF]]  # the high nibble is not part of the sample


@pytest.mark.parametrize(("interpretation", "table"), [("MB", "ULAW"), ("AB", "ALAW")])
def test_companded_codes_are_expanded_by_g711(interpretation: str, table: str) -> None:
    codes = np.arange(256, dtype=np.uint8).reshape(1, -1)
    got = scale.to_physical(codes, [0.5], [2.0], [1.0], interpretation=interpretation)
    expanded = getattr(scale, table)
    np.testing.assert_array_equal(got[0], expanded * 0.5 * 2.0 + 1.0)
    # G.711 reference points: the largest magnitudes and the two smallest steps.
    if interpretation == "MB":
        assert (expanded[0x00], expanded[0x80], expanded[0xFF]) == (-32124, 32124, 0)
    else:
        assert (expanded[0x55], expanded[0xD5], expanded[0x2A]) == (-8, 8, -32256)


def test_padding_compared_before_the_storage_form() -> None:
    raw = np.array([[0x0FFF, 0x0800, 5]], dtype=np.int16)
    got = scale.to_physical(raw, [2.0], padding=[0x0800], bits_stored=12)
    assert got[0, 0] == -2.0 and np.isnan(got[0, 1]) and got[0, 2] == 10.0


def test_padding_inside_the_signal_is_named() -> None:
    signal = np.array([[-5, 0, 3, 0, -1], [2, 2, 2, 2, 2]], dtype=np.int16)
    note = scale.padding_note(signal, 0)
    assert note is not None and "2 samples hold it" in note
    edges = np.array([[-32768, -32768, 3, -2, 4]], dtype=np.int16)
    assert scale.padding_note(edges, -32768) is None
    assert scale.padding_note(np.array([[0, 0, 3, 4]], np.int16), 0) is None  # below all


def test_scale_rejects_non_voltage() -> None:
    with pytest.raises(InvalidArgument, match=r"'mm\[Hg\]' are not a voltage"):
        scale.to_microvolts(np.zeros((1, 4), np.int16), [1.0], units=["mm[Hg]"])


# --- resample --------------------------------------------------------------


@pytest.mark.parametrize(
    ("up", "down", "n"),
    [(1, 2, 10000), (25, 18, 3600), (1, 2, 1), (1, 2, 7), (2, 1, 5), (500, 257, 1000),
     (5, 2, 2000), (1, 4, 999)],
    ids=lambda v: str(v),
)
def test_resample_equals_scipy(up: int, down: int, n: int) -> None:
    x = RNG.standard_normal((3, n))
    got = resample.resample_poly(x, up, down)
    want = signal.resample_poly(x, up, down, axis=-1)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize(("fs_in", "fs_out"), [(1000, 500), (360, 500), (500, 250), (257, 500)])
def test_resample_rates(fs_in: int, fs_out: int) -> None:
    x = RNG.standard_normal((2, 3 * fs_in)).astype(np.float32)
    got = resample.resample(x, fs_in, fs_out)
    up, down = resample.rational_ratio(fs_in, fs_out)
    want = signal.resample_poly(x.astype(np.float64), up, down, axis=-1)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6 * np.abs(want).max())


@settings(max_examples=30, deadline=None)
@given(
    f=st.floats(0.5, 20.0),
    pair=st.sampled_from([(1000, 500), (360, 500), (500, 250), (257, 500), (200, 500)]),
)
def test_resample_preserves_band_limited_sine(f: float, pair: tuple[int, int]) -> None:
    fs_in, fs_out = pair
    t_in = np.arange(4 * fs_in) / fs_in
    y = resample.resample(np.sin(2 * np.pi * f * t_in), fs_in, fs_out)
    t_out = np.arange(y.shape[0]) / fs_out
    core = slice(fs_out // 2, -fs_out // 2)  # away from the zero-padded edges
    np.testing.assert_allclose(y[core], np.sin(2 * np.pi * f * t_out[core]), atol=2e-3)


# --- filters ---------------------------------------------------------------

SPECS = [
    filters.FilterSpec(500.0, 0.5, 40.0, None),
    filters.FilterSpec(500.0, 0.67, 150.0, 50.0),
    filters.FilterSpec(500.0, 0.5, 100.0, 60.0),
    filters.FilterSpec(1000.0, 0.67, 40.0, 50.0),
    filters.FilterSpec(360.0, None, 40.0, 60.0, harmonics=False),
    filters.FilterSpec(250.0, 0.5, None, 50.0),
]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_filter_equals_scipy_sosfiltfilt(spec: filters.FilterSpec) -> None:
    x = np.cumsum(RNG.standard_normal((4, 3000)), axis=1) * 20.0
    d = filters.design(spec)
    got = filters.apply(x, spec)
    want = signal.sosfiltfilt(d.sos.copy(), x, axis=-1)
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(x).max())
    got32 = filters.apply(x.astype(np.float32), spec)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, want, atol=1e-5 * np.abs(x).max())


def test_filter_design_is_cached() -> None:
    assert filters.design(SPECS[0]) is filters.design(SPECS[0])


def test_notch_removes_mains_and_keeps_ecg_band() -> None:
    fs = 500.0
    t = np.arange(5000) / fs
    ecg_band = np.sin(2 * np.pi * 10 * t)
    x = ecg_band + 0.5 * np.sin(2 * np.pi * 50 * t) + 0.2 * np.sin(2 * np.pi * 100 * t)
    y = filters.apply(x, filters.FilterSpec(fs, None, None, 50.0))
    core = slice(500, -500)
    np.testing.assert_allclose(y[core], ecg_band[core], atol=0.02)


def test_sosfiltfilt_custom_sos() -> None:
    sos = signal.butter(3, [1, 30], "bandpass", fs=250, output="sos")
    x = RNG.standard_normal(1000)
    np.testing.assert_allclose(
        filters.sosfiltfilt(x, sos), signal.sosfiltfilt(sos, x), atol=1e-10
    )


def test_filter_rejects_bad_corner() -> None:
    with pytest.raises(InvalidArgument, match=r"high-pass 300\.0 Hz outside"):
        filters.design(filters.FilterSpec(500.0, 300.0, None, None))


# --- leads -----------------------------------------------------------------


def test_derived_leads_follow_einthoven_and_goldberger() -> None:
    i, ii = RNG.standard_normal((2, 500))
    iii, avr, avl, avf = leads.derive_limb_leads(i, ii)
    np.testing.assert_allclose(iii, ii - i)
    np.testing.assert_allclose(avr, -(i + ii) / 2)
    np.testing.assert_allclose(avl, i - ii / 2)
    np.testing.assert_allclose(avf, ii - i / 2)
    np.testing.assert_allclose(avr + avl + avf, 0, atol=1e-12)


def test_limb_residuals_flag_swapped_electrodes() -> None:
    i, ii = RNG.standard_normal((2, 500))
    limb = leads.derive_limb_leads(i, ii)
    assert np.all(leads.limb_residuals(i, ii, limb) < 1e-12)
    # Left/right arm reversal: I is inverted, II and III swap.
    swapped = leads.derive_limb_leads(-i, ii - i)
    r = leads.limb_residuals(i, ii, swapped)
    assert r[:3].min() > 0.3
    assert r[3] < 1e-12  # aVF sits on the axis an arm swap mirrors about


# --- quality ---------------------------------------------------------------


def _ecg_like(n: int = 5000, fs: float = 500.0) -> np.ndarray:
    t = np.arange(n) / fs
    beats = np.zeros(n)
    for c in np.arange(0.4, n / fs, 0.8):
        beats += 1000 * np.exp(-(((t - c) / 0.012) ** 2))
    return beats + RNG.normal(0, 5, n)


def test_quality_reasons() -> None:
    fs = 500.0
    clean = _ecg_like()
    flat = np.full(5000, 12.0) + RNG.normal(0, 0.5, 5000)
    clipped = np.clip(_ecg_like(), None, 400.0)
    noisy = _ecg_like() + RNG.normal(0, 150, 5000)
    wander = _ecg_like() + 4000 * np.sin(2 * np.pi * 0.15 * np.arange(5000) / fs)
    off = np.full(5000, np.nan)
    x = np.vstack([clean, flat, clipped, noisy, wander, off])
    got = quality.assess(x, fs)
    assert got[0].quality == 1.0 and got[0].reason == quality.Reason.OK
    want = [quality.Reason.FLAT, quality.Reason.CLIPPED, quality.Reason.NOISE,
            quality.Reason.BASELINE_WANDER, quality.Reason.LEAD_OFF]
    assert [g.reason for g in got[1:]] == want
    assert all(g.quality < 0.5 for g in got[1:])
    assert [g.nan_share for g in got] == [0.0] * 5 + [1.0]


@pytest.mark.parametrize("fs", [250.0, 500.0, 1000.0])
def test_white_noise_stays_under_the_noise_floor(fs: float) -> None:
    # The floor's reasoning: 1 s of white noise spans ~6-7 sigma peak to peak,
    # whatever its level; an ECG's QRS rises far above its noise.
    for seed in range(3):
        noise = np.random.default_rng(seed).standard_normal((12, int(10 * fs)))
        for scale_uv in (5.0, 100.0, 3000.0):
            snr = [q.snr for q in quality.assess(noise * scale_uv, fs)]
            assert 5.0 < min(snr) and max(snr) < quality.NOISE_FLOOR_SNR
    ecg = np.vstack([_ecg_like()] * 3)
    assert min(q.snr for q in quality.assess(ecg, 500.0)) > 10 * quality.NOISE_FLOOR_SNR


def _scores_numpy(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The quality scores of `quality.assess`, written with numpy on all leads."""
    nan, amp, clip, noise, wander, offset = f.T

    def ramp(v: np.ndarray, bad: float, good: float) -> np.ndarray:
        return np.clip((v - bad) / (good - bad), 0.0, 1.0)

    scores = np.stack([
        np.minimum(ramp(nan, 0.5, 0.05), ramp(np.abs(offset), 300_000.0, 50_000.0)),
        ramp(amp, 15.0, 50.0),
        ramp(clip, 0.02, 0.001),
        ramp(amp / np.maximum(noise, 1e-9), 4.0, 20.0),
        ramp(wander, 4000.0, 1000.0),
    ], axis=1)
    worst = scores.argmin(axis=1)
    return scores[np.arange(len(worst)), worst], worst


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_quality_scores_equal_numpy(seed: int) -> None:
    # Features spread over every ramp's bad..good span, ties at the ends included.
    rng = np.random.default_rng(seed)
    n = 16
    f = np.column_stack([
        rng.choice([0.0, 0.05, 0.3, 0.6, 1.0], n),
        rng.uniform(0.0, 80.0, n),
        rng.choice([0.0, 0.0005, 0.01, 0.05], n),
        rng.uniform(0.0, 10.0, n),
        rng.uniform(0.0, 6000.0, n),
        rng.uniform(-400_000.0, 400_000.0, n),
    ])
    q, worst, snr = quality._scores(f)
    want_q, want_worst = _scores_numpy(f)
    np.testing.assert_array_equal(q, want_q)
    np.testing.assert_array_equal(worst, want_worst)
    np.testing.assert_array_equal(snr, f[:, 1] / np.maximum(f[:, 3], 1e-9))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 600), st.integers(0, 2**32 - 1))
def test_noise_sigma_equals_numpy(n: int, seed: int) -> None:
    # The lead quality and the delineation share one noise estimate.
    x = _ecg_like()[:n] + np.random.default_rng(seed).normal(0, 7, n)
    want = 1.4826 * np.median(np.abs(np.diff(x, 2))) / np.sqrt(6.0) if n >= 3 else 0.0
    assert quality.noise_sigma(x, np.empty(max(n - 2, 0))) == pytest.approx(want, rel=1e-12)
    if n >= 3:
        assert quality.features(x[None, :], 500.0)[0, 3] == pytest.approx(want, rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-3, 3) | st.floats(-1e6, 1e6), min_size=1, max_size=300))
def test_median_selection_equals_numpy(values: list[float]) -> None:
    a = np.array(values, dtype=np.float64)
    assert quality.median_inplace(a.copy()) == np.median(a)


@settings(max_examples=100, deadline=None)
@given(st.integers(128, 6000), st.integers(0, 2**32 - 1), st.sampled_from(["normal", "ties",
                                                                        "sorted", "heavy",
                                                                        "few"]))
def test_sampled_median_equals_numpy(n: int, seed: int, kind: str) -> None:
    # Past 128 values the median brackets a sample and selects inside it;
    # quantised values (long runs of ties, down to a few distinct values) and
    # sorted runs are the hard cases.
    rng = np.random.default_rng(seed)
    a = {"normal": lambda: rng.standard_normal(n),
         "ties": lambda: np.round(np.abs(rng.standard_normal(n)) * 3) / 7,
         "sorted": lambda: np.sort(rng.standard_normal(n)),
         "heavy": lambda: np.abs(rng.standard_cauchy(n)),
         "few": lambda: rng.integers(0, 3, n).astype(np.float64)}[kind]()
    assert quality.median_inplace(a.copy()) == np.median(a)


def test_quality_features_match_numpy() -> None:
    fs = 500.0
    x = np.vstack([_ecg_like(), _ecg_like() + 20_000.0])
    f = quality.features(x, fs)
    d2 = np.abs(np.diff(x, 2, axis=1))
    np.testing.assert_allclose(f[:, 3], 1.4826 * np.median(d2, axis=1) / np.sqrt(6.0))
    means = x[:, : 10 * 500].reshape(2, 10, 500).mean(axis=2)
    np.testing.assert_allclose(f[:, 5], np.median(means, axis=1))
    np.testing.assert_allclose(f[:, 4], np.ptp(means, axis=1))


# --- wave areas ----------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_net_areas_equal_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    med = (rng.standard_normal((12, 600)) * 300).astype(np.float32)
    q_on = int(rng.integers(0, 300))
    spans = rng.integers(-5, 601, size=(4, 2))
    got = measure.net_areas(med, 0, 5, spans, q_on)
    x = med[[0, 5]].astype(np.float64)
    iso = max(q_on - 5, 0)
    base = x[:, iso:q_on].mean(axis=1) if q_on > 0 else np.zeros(2)
    for (a, b), row in zip(spans, got, strict=True):
        if a < 0 or b < 0 or b <= a:
            assert np.isnan(row).all()
        else:
            want = x[:, a:b].sum(axis=1) - (b - a) * base
            np.testing.assert_allclose(row, want, rtol=1e-9, atol=1e-6 * np.abs(x).sum())


# --- median beats ----------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(0, 2**32 - 1), st.booleans())
def test_median_beats_equal_numpy_exactly(n_beats: int, seed: int, ties: bool) -> None:
    # Every beat count (odd and even), beats near both ends (skipped), and
    # quantised samples with many ties: the float32 median of each sample is
    # np.median's, bit for bit.
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 12_000)) * 200
    if ties:
        x = np.round(x / 50) * 50
    x = x.astype(np.float32)
    beats = np.sort(rng.integers(0, 12_000, n_beats))
    pre, post = 150, 250
    got = delineate.median_beats(x, beats, pre, post)
    ok = [b for b in beats if b - pre >= 0 and b + post <= x.shape[1]]
    if not ok:
        assert np.isnan(got).all()
        return
    stack = np.stack([x[:, b - pre:b + post] for b in ok]).astype(np.float64)
    np.testing.assert_array_equal(got, np.median(stack, axis=0).astype(np.float32))


@pytest.mark.parametrize("call", [
    lambda x: filters.apply(x, filters.FilterSpec(500.0, 0.5, 40.0, None)),
    lambda x: resample.resample_poly(x, 1, 2),
    lambda x: qrs.detect(x, 500.0),
    lambda x: detect_beats(x, 500.0),
], ids=["filter", "resample", "qrs", "detect_beats"])
def test_kernels_take_one_lead_or_channels_and_refuse_other_shapes(
        call: Callable[[np.ndarray], np.ndarray]) -> None:
    rng = np.random.default_rng(7)
    two = rng.normal(size=(2, 2000)).astype(np.float32)
    # One lead as a 1-D array gives what it gives as a row of a (1, n) array.
    a, b = call(two[0]), call(two[:1])
    np.testing.assert_array_equal(a, b if a.ndim == b.ndim else b[0])
    # Integer samples are taken as float64; a strided view as its copy.
    np.testing.assert_array_equal(call(np.round(two * 100).astype(np.int16)),
                                  call(np.round(two * 100).astype(np.float64)))
    np.testing.assert_array_equal(call(np.asfortranarray(two)), call(two.copy()))
    for bad in (np.zeros((2, 3, 100)), np.float64(1.0)):
        with pytest.raises(InvalidArgument, match=r"must be 1-D or \(channels, samples\)") as e:
            call(bad)
        assert str(e.value).endswith(f"got shape {np.shape(bad)}")


def _wave_repeats_numpy(x: np.ndarray, starts: np.ndarray, w: int, rows: np.ndarray,
                        k: int) -> float:
    seg = x[rows[:, None, None], starts[None, :, None] + np.arange(w)[None, None, :]]
    c = np.cumsum(seg, axis=2)
    seg = (c[:, :, k - 1:] - np.concatenate((np.zeros_like(c[:, :, :1]), c[:, :, :-k]),
                                             axis=2)) / k
    seg = seg - seg.mean(axis=2, keepdims=True)
    others = (seg.sum(axis=1, keepdims=True) - seg) / (starts.size - 1)
    num = np.einsum("lbw,lbw->b", seg, others)
    den = np.sqrt(np.einsum("lbw,lbw->b", seg, seg) * np.einsum("lbw,lbw->b", others, others))
    return float(np.median(np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(3, 15), st.integers(20, 80), st.integers(1, 25))
def test_wave_repeats_matches_numpy(seed: int, nb: int, w: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(5, 3000)) + np.sin(np.arange(3000) / 7.0)
    starts = np.sort(rng.choice(3000 - w, nb, replace=False)).astype(np.int64)
    rows = np.array([0, 2, 3], dtype=np.int64)
    got = delineate.wave_repeats(x, starts, w, rows, k)
    if w - k + 1 < 2:
        assert got == 1.0
    else:
        assert got == pytest.approx(_wave_repeats_numpy(x, starts, w, rows, k), abs=1e-9)
    assert delineate.wave_repeats(x, starts[:2], w, rows, k) == 1.0
