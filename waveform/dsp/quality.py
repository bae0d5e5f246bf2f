"""Per-lead signal quality: flat line, clipping, lead-off, HF noise, baseline wander.

One kernel measures five features per lead in one pass over 1-second windows;
a small table turns them into a 0..1 quality and the reason that limits it.
The thresholds are physiological or instrumental, not fitted to any database:
a QRS complex spans at least ~100 µV on a limb lead even in low-voltage ECGs
(low voltage is defined as < 500 µV limb QRS amplitude, Surawicz & Knilans,
"Chou's Electrocardiography", 2008); the AHA bandwidth for diagnostic ECGs is
0.05-150 Hz (Kligfield et al., Circulation 2007), so energy in the second
difference beyond what the QRS explains is noise; electrodes that come off show
up as NaN padding, a rail-to-rail flat line, or a DC offset of tens of mV.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numba
import numpy as np

from waveform.dsp.arrays import as_channels

__all__ = ["NOISE_FLOOR_SNR", "LeadQuality", "Reason", "assess", "features", "mad_sigma",
           "median_inplace", "noise_sigma"]


class Reason(IntEnum):
    """Why a lead's quality is below 1 (the worst limiting feature)."""

    OK = 0
    FLAT = 1
    CLIPPED = 2
    LEAD_OFF = 3
    NOISE = 4
    BASELINE_WANDER = 5


#: Signal-to-noise ratio (window amplitude over noise sigma) below which a lead
#: shows nothing but its noise: one second of white Gaussian noise spans about
#: 6.1 sigma peak to peak at 500 Hz (the expected range of 500 normal samples;
#: 6.5 sigma at 1000 Hz), so a window amplitude under 8 sigma is what noise alone
#: gives. A lead above it has some deflection that noise does not explain.
NOISE_FLOOR_SNR = 8.0

#: Feature columns `features` returns, in order.
_F_NAN, _F_AMP, _F_CLIP, _F_NOISE, _F_WANDER, _F_OFFSET = range(6)


@dataclass(frozen=True, slots=True)
class LeadQuality:
    """Quality 0..1 of one lead and the reason that limits it."""

    quality: float
    reason: Reason
    #: Share of the lead's samples that are padding (NaN).
    nan_share: float = 0.0
    #: Typical peak-to-peak amplitude of a 1 s window over the noise sigma.
    snr: float = 0.0


@numba.njit(cache=True, nogil=True)
def _kth(a: np.ndarray, k: int, even: bool) -> float:
    # The k-th smallest of ``a`` by Hoare's selection (quickselect) in place,
    # or, when ``even``, the mean of the (k-1)-th and k-th (np.median's rule).
    n = a.shape[0]
    lo = 0
    hi = n - 1
    while lo < hi:
        mid = (lo + hi) // 2
        # Median of three as the pivot keeps sorted runs linear.
        x, y, z = a[lo], a[mid], a[hi]
        pivot = max(min(x, y), min(max(x, y), z))
        i = lo
        j = hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    upper = a[k]
    if not even:
        return upper
    # The lower middle value is the largest one left of k.
    lower = a[0]
    for t in range(1, k):
        if a[t] > lower:
            lower = a[t]
    return 0.5 * (lower + upper)


#: Size of the sample `_select` draws to bracket the wanted rank.
_SAMPLE = 32


@numba.njit(cache=True, nogil=True)
def _count_le(a: np.ndarray, v: float) -> int:
    # Values <= v: branch-free, so it vectorises.
    le = 0
    for i in range(a.shape[0]):
        le += a[i] <= v
    return le


@numba.njit(cache=True, nogil=True)
def _count_lt(a: np.ndarray, lo: float, hi: float) -> tuple[int, int]:
    # (values < lo, values < hi) in one branch-free pass.
    below_lo = 0
    below_hi = 0
    for i in range(a.shape[0]):
        below_lo += a[i] < lo
        below_hi += a[i] < hi
    return below_lo, below_hi


@numba.njit(cache=True, nogil=True)
def _select(a: np.ndarray, k: int, even: bool) -> float:
    """The k-th smallest of ``a`` (no NaN), or when ``even`` the mean of the
    (k-1)-th and k-th; ``a`` is reordered in place (nothing is copied).

    Floyd & Rivest's sampling idea (Comm. ACM 18(3):165, 1975): the order
    statistics of a small sorted sample split the values into slices of about
    n / sample each. Branch-free counting passes binary-search the slice that
    holds the wanted rank(s); a branch-free pass packs that slice's values to
    the front of ``a``, and the same narrowing runs on them until few are left
    for quickselect. Quickselect on thousands of values is bound by its
    partition's branch mispredictions, worse still on ECG second differences,
    which are quantised into long runs of ties; a tied rank is found by the
    search itself. A small sample keeps its sort cheap; the second narrowing
    makes up for the wider slice.
    """
    sample = np.empty(_SAMPLE)
    while a.shape[0] >= 4 * _SAMPLE:
        n = a.shape[0]
        # Insertion sort as the sample is drawn (32 values).
        for t in range(_SAMPLE):
            v = a[(2 * t + 1) * n // (2 * _SAMPLE)]
            j = t
            while j > 0 and sample[j - 1] > v:
                sample[j] = sample[j - 1]
                j -= 1
            sample[j] = v
        # The ranks that must lie in the slice: k - 1 (even counts) to k.
        r_lo = k - 1 if even else k
        # The first sample value with more than k values at or below it: the
        # k-th smallest value is at most that.
        j_lo = 0
        j_hi = _SAMPLE - 1
        while j_lo < j_hi:
            mid = (j_lo + j_hi) // 2
            if _count_le(a, sample[mid]) > k:
                j_hi = mid
            else:
                j_lo = mid + 1
        if j_hi == 0 or (j_hi == _SAMPLE - 1 and _count_le(a, sample[j_hi]) <= k):
            break
        hi = sample[j_hi]
        lo = sample[j_hi - 1]
        below, below_hi = _count_lt(a, lo, hi)
        if below_hi <= r_lo:
            return hi  # every wanted rank holds this (tied) value
        if below > r_lo:
            break
        # Pack [lo, hi] to the front: always write, advance only when inside
        # (the write never reaches a value not yet read).
        m = 0
        for i in range(n):
            v = a[i]
            a[m] = v
            m += (v >= lo) & (v <= hi)
        a = a[:m]
        k -= below
        if 2 * m > n:
            break  # ties fill the slice: narrowing again would gain little
    return _kth(a, k, even)


@numba.njit(cache=True, nogil=True)
def median_inplace(a: np.ndarray) -> float:
    """np.median of ``a`` (no NaN), reordering ``a`` in place (nothing is copied)."""
    n = a.shape[0]
    if n == 0:
        return np.nan
    return _select(a, n // 2, n % 2 == 0)


@numba.njit(cache=True, nogil=True)
def _windows(xc: np.ndarray, w: int, lo_w: np.ndarray, hi_w: np.ndarray, means: np.ndarray,
             skip_nan: bool) -> bool:
    # Per 1 s window (the last one takes the remainder): least and largest
    # value and the mean, NaN left out when ``skip_nan``. Without it the loop
    # has no NaN test; False when a window's sum came out NaN (a NaN sample).
    n = xc.shape[0]
    n_win = lo_w.shape[0]
    finite = True
    for k in range(n_win):
        a = k * w
        seg = xc[a:n] if k == n_win - 1 else xc[a:a + w]
        wlo = np.inf
        whi = -np.inf
        s = 0.0
        m = 0
        if not skip_nan:
            for i in range(seg.shape[0]):
                v = seg[i]
                wlo = min(wlo, v)
                whi = max(whi, v)
                s += v
            m = seg.shape[0]
            finite &= not np.isnan(s)
        else:
            for i in range(seg.shape[0]):
                v = seg[i]
                if not np.isnan(v):
                    wlo = min(wlo, v)
                    whi = max(whi, v)
                    s += v
                    m += 1
        lo_w[k] = wlo
        hi_w[k] = whi
        means[k] = s / m if m > 0 else np.nan
    return finite


@numba.njit(cache=True, nogil=True)
def noise_sigma(x: np.ndarray, buf: np.ndarray) -> float:
    """Noise sigma (µV) of a NaN-free lead ``x`` from its second difference.

    For white noise of sigma s the second difference has sigma s * sqrt(6), and
    1.4826 * MAD estimates a Gaussian sigma; a QRS or a T wave moves few of the
    second differences, so their median stays the noise's. ``buf`` is scratch
    of at least ``len(x) - 2`` values.
    """
    n = x.shape[0]
    for i in range(1, n - 1):
        buf[i - 1] = abs(x[i + 1] - 2.0 * x[i] + x[i - 1])
    return mad_sigma(buf[:max(n - 2, 0)])


@numba.njit(cache=True, nogil=True)
def mad_sigma(d2: np.ndarray) -> float:
    """The white-noise sigma from absolute second differences ``d2`` (reordered)."""
    return 1.4826 * median_inplace(d2) / np.sqrt(6.0) if d2.shape[0] > 0 else 0.0


@numba.njit(cache=True, nogil=True)
def features(x: np.ndarray, fs: float) -> np.ndarray:
    """(channels, 6) features of ``x`` (channels, samples) in µV.

    Columns: NaN share; median over 1 s windows of the peak-to-peak amplitude
    (µV); share of samples held at the lead's extreme value (clipping); robust
    noise sigma from the second difference (µV, MAD-based, white-noise scaled);
    range of the 1 s window means (baseline wander, µV); level: median of the
    1 s window means (µV).
    """
    n_ch, n = x.shape
    w = max(int(fs), 4)
    n_win = max(n // w, 1)
    out = np.zeros((n_ch, 6))
    lo_w = np.empty(n_win)
    hi_w = np.empty(n_win)
    means = np.empty(n_win)
    buf = np.empty(n_win)
    d2 = np.empty(max(n - 2, 0))
    for c in range(n_ch):
        xc = x[c]
        if n < 3:
            out[c, _F_NAN] = 1.0
            continue
        # NaN (padding) is rare: the windows are first measured as if there
        # were none, and a NaN sum sends the lead through the NaN-aware loops.
        n_nan = 0
        if not _windows(xc, w, lo_w, hi_w, means, False):
            for i in range(n):
                n_nan += np.isnan(xc[i])
            if n_nan == n:
                out[c, _F_NAN] = 1.0
                continue
            if n_nan > 0:
                _windows(xc, w, lo_w, hi_w, means, True)
        out[c, _F_NAN] = n_nan / n
        lo = np.inf
        hi = -np.inf
        n_good = 0
        for k in range(n_win):
            lo = min(lo, lo_w[k])
            hi = max(hi, hi_w[k])
            buf[k] = hi_w[k] - lo_w[k] if hi_w[k] >= lo_w[k] else 0.0  # else no sample
        out[c, _F_AMP] = median_inplace(buf)
        for k in range(n_win):
            if not np.isnan(means[k]):
                buf[n_good] = means[k]
                n_good += 1
        good = buf[:n_good]
        out[c, _F_WANDER] = good.max() - good.min() if n_good > 1 else 0.0
        out[c, _F_OFFSET] = median_inplace(good) if n_good > 0 else 0.0
        # A sample held at an extreme lies in a window that reaches it.
        held = 0
        if hi > lo:
            for k in range(n_win):
                if lo_w[k] == lo or hi_w[k] == hi:
                    b = n if k == n_win - 1 else (k + 1) * w
                    for i in range(max(k * w, 1), b):
                        v = xc[i]
                        held += (v == xc[i - 1]) & ((v == hi) | (v == lo))
        out[c, _F_CLIP] = held / n
        if n_nan == 0:
            out[c, _F_NOISE] = noise_sigma(xc, d2)
            continue
        # The same estimate over the second differences that padding leaves whole.
        m = 0
        for i in range(1, n - 1):
            v = xc[i + 1] - 2.0 * xc[i] + xc[i - 1]
            if not np.isnan(v):
                d2[m] = abs(v)
                m += 1
        out[c, _F_NOISE] = mad_sigma(d2[:m])
    return out


@numba.njit(cache=True, nogil=True)
def _ramp(v: float, bad: float, good: float) -> float:
    return min(max((v - bad) / (good - bad), 0.0), 1.0)


@numba.njit(cache=True, nogil=True)
def _scores(f: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Per lead: the lowest of the scores in _ORDER and its index (the first of
    # equal scores), and the signal-to-noise ratio (window amplitude over the
    # noise sigma) that the noise score ramps. In the kernel: per-lead Python
    # arithmetic, or numpy on twelve values, cost more than `features` itself.
    n_ch = f.shape[0]
    q = np.empty(n_ch)
    worst = np.empty(n_ch, dtype=np.int64)
    snr = np.empty(n_ch)
    s = np.empty(5)
    for c in range(n_ch):
        nan = f[c, _F_NAN]
        amp = f[c, _F_AMP]
        snr[c] = amp / max(f[c, _F_NOISE], 1e-9)
        # Lead off: mostly padding, or a DC offset no electrode/skin contact gives.
        s[0] = min(_ramp(nan, 0.5, 0.05), _ramp(abs(f[c, _F_OFFSET]), 300_000.0, 50_000.0))
        s[1] = _ramp(amp, 15.0, 50.0)
        s[2] = _ramp(f[c, _F_CLIP], 0.02, 0.001)
        s[3] = _ramp(snr[c], 4.0, 20.0)
        s[4] = _ramp(f[c, _F_WANDER], 4000.0, 1000.0)
        w = 0
        for k in range(1, 5):
            if s[k] < s[w]:
                w = k
        q[c] = s[w]
        worst[c] = w
    return q, worst, snr


def assess(x: np.ndarray, fs: float) -> list[LeadQuality]:
    """Quality and limiting reason of each lead of ``x`` (channels, samples) in µV."""
    arr, _ = as_channels(x)
    f = features(arr, float(fs))
    q, worst, snr = _scores(f)
    return [LeadQuality(qq, _ORDER[w] if qq < 1.0 else Reason.OK, ns, sn)
            for qq, w, ns, sn in zip(q.tolist(), worst.tolist(), f[:, _F_NAN].tolist(),
                                     snr.tolist(), strict=True)]


#: The reasons in the order `assess` scores them (ties go to the first).
_ORDER = (Reason.LEAD_OFF, Reason.FLAT, Reason.CLIPPED, Reason.NOISE, Reason.BASELINE_WANDER)
