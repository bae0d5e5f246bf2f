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

__all__ = ["LeadQuality", "Reason", "assess", "features"]


class Reason(IntEnum):
    """Why a lead's quality is below 1 (the worst limiting feature)."""

    OK = 0
    FLAT = 1
    CLIPPED = 2
    LEAD_OFF = 3
    NOISE = 4
    BASELINE_WANDER = 5


#: Feature columns `features` returns, in order.
_F_NAN, _F_AMP, _F_CLIP, _F_NOISE, _F_WANDER, _F_OFFSET = range(6)


@dataclass(frozen=True, slots=True)
class LeadQuality:
    """Quality 0..1 of one lead and the reason that limits it."""

    quality: float
    reason: Reason


@numba.njit(cache=True, nogil=True)
def _median_inplace(a: np.ndarray) -> float:
    # Median by Hoare's selection (quickselect) in place: the caller's scratch
    # buffer is reordered, nothing is copied (np.median copies and was most of
    # this kernel's time).
    n = a.shape[0]
    if n == 0:
        return np.nan
    k = n // 2
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
    if n % 2 == 1:
        return upper
    # Even count: the mean of the two middle values, as np.median; the lower
    # one is the largest value left of k.
    lower = a[0]
    for t in range(1, k):
        if a[t] > lower:
            lower = a[t]
    return 0.5 * (lower + upper)


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
    for c in range(n_ch):
        xc = x[c]
        n_nan = 0
        lo = np.inf
        hi = -np.inf
        for i in range(n):
            v = xc[i]
            if np.isnan(v):
                n_nan += 1
            else:
                lo = min(lo, v)
                hi = max(hi, v)
        out[c, _F_NAN] = n_nan / max(n, 1)
        if n_nan == n or n < 3:
            out[c, _F_NAN] = 1.0
            continue
        ptp = np.empty(n_win)
        means = np.empty(n_win)
        for k in range(n_win):
            a = k * w
            b = n if k == n_win - 1 else a + w
            wlo = np.inf
            whi = -np.inf
            s = 0.0
            m = 0
            for i in range(a, b):
                v = xc[i]
                if not np.isnan(v):
                    wlo = min(wlo, v)
                    whi = max(whi, v)
                    s += v
                    m += 1
            ptp[k] = whi - wlo if m > 0 else 0.0
            means[k] = s / m if m > 0 else np.nan
        out[c, _F_AMP] = np.median(ptp)
        good = means[~np.isnan(means)]
        out[c, _F_WANDER] = good.max() - good.min() if good.size > 1 else 0.0
        held = 0
        for i in range(1, n):
            v = xc[i]
            if v == xc[i - 1] and (v == hi or v == lo) and hi > lo:
                held += 1
        out[c, _F_CLIP] = held / n
        d2 = np.empty(n - 2)
        m = 0
        for i in range(1, n - 1):
            v = xc[i + 1] - 2.0 * xc[i] + xc[i - 1]
            if not np.isnan(v):
                d2[m] = abs(v)
                m += 1
        # For white noise of sigma s the second difference has sigma s*sqrt(6);
        # 1.4826 * MAD estimates a Gaussian sigma.
        out[c, _F_NOISE] = 1.4826 * _median_inplace(d2[:m]) / np.sqrt(6.0) if m > 0 else 0.0
        out[c, _F_OFFSET] = np.median(good) if good.size > 0 else 0.0
    return out


def _ramp(v: float, bad: float, good: float) -> float:
    """0 at ``bad``, 1 at ``good``, linear between (either direction)."""
    if bad == good:
        return 1.0 if v >= good else 0.0
    t = (v - bad) / (good - bad)
    return float(min(max(t, 0.0), 1.0))


def assess(x: np.ndarray, fs: float) -> list[LeadQuality]:
    """Quality and limiting reason of each lead of ``x`` (channels, samples) in µV."""
    arr = np.ascontiguousarray(x, dtype=np.float32 if x.dtype == np.float32 else np.float64)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    f = features(arr, float(fs))
    result = []
    for row in f:
        amp = row[_F_AMP]
        scores = {
            # Lead off: mostly padding, or a DC offset no electrode/skin contact gives.
            Reason.LEAD_OFF: min(_ramp(row[_F_NAN], 0.5, 0.05),
                                 _ramp(abs(row[_F_OFFSET]), 300_000.0, 50_000.0)),
            Reason.FLAT: _ramp(amp, 15.0, 50.0),
            Reason.CLIPPED: _ramp(row[_F_CLIP], 0.02, 0.001),
            # Signal-to-noise of the window amplitude over the noise sigma.
            Reason.NOISE: _ramp(amp / max(row[_F_NOISE], 1e-9), 4.0, 20.0),
            Reason.BASELINE_WANDER: _ramp(row[_F_WANDER], 4000.0, 1000.0),
        }
        reason = min(scores, key=lambda r: scores[r])
        q = scores[reason]
        result.append(LeadQuality(q, reason if q < 1.0 else Reason.OK))
    return result
