"""Median beats and their global fiducial points (P, QRS and T boundaries).

The median (representative) beat of each lead is the sample-wise median of the
beats aligned on their QRS fiducial; it keeps the waveform's shape while noise
and isolated ectopic beats fall away (the approach of the CSE study and of
IEC 60601-2-25 clause 201.12.4.4 "measurements on a representative beat").

Boundaries are global, from all leads at once, as the CSE convention asks
(J. L. Willems et al., "Common standards for quantitative electrocardiography:
goals and main results", Methods Inf. Med. 29(4):263-271, 1990: earliest onset
and latest offset over leads):

- QRS onset and offset where the spatial velocity (sum over leads of the
  absolute slope) rises above, and finally stays below, a fraction of its QRS
  peak for longer than a short gap (the summed slope of the leads dips briefly
  at the R peak, hence the gap);
- T offset by the tangent method (the steepest descent after the T peak meets
  the isoelectric level, E. Lepeschkin & B. Surawicz, Circulation 6:378, 1952),
  applied to the spatial magnitude of the baseline-corrected leads;
- P wave where the spatial magnitude before the QRS forms a peak well above
  the median beat's noise; its onset and offset where it falls to a fraction
  of that peak. No such peak (atrial fibrillation averages out in a median
  beat) means no P wave: the P fiducials are absent, not guessed.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["FIDUCIALS", "fiducials", "median_beats"]

#: Order of the points `fiducials` returns.
FIDUCIALS: tuple[str, ...] = ("p_onset", "p_offset", "qrs_onset", "qrs_offset", "t_offset")

# Fractions of the QRS velocity peak that bound the QRS, and the longest dip
# below it (s) that still counts as inside the complex.
_QRS_FRACTION = 0.03
_QRS_GAP_S = 0.008
# P wave: least spatial magnitude peak (µV) and its multiple of the noise, and
# the fraction of its peak that bounds it.
_P_MIN_UV = 20.0
_P_SNR = 3.0
_P_FRACTION = 0.15


@numba.njit(cache=True, nogil=True)
def median_beats(x: np.ndarray, beats: np.ndarray, pre: int, post: int) -> np.ndarray:
    """(leads, pre + post) float32 median of the beats' windows [b - pre, b + post).

    Beats whose window leaves the signal are skipped; with none left the
    result is all NaN.
    """
    n_ch, n = x.shape
    width = pre + post
    use = np.empty(beats.shape[0], dtype=np.int64)
    m = 0
    for b in beats:
        if b - pre >= 0 and b + post <= n:
            use[m] = b
            m += 1
    out = np.full((n_ch, width), np.nan, dtype=np.float32)
    if m == 0:
        return out
    col = np.empty(m)
    for c in range(n_ch):
        for i in range(width):
            for k in range(m):
                col[k] = x[c, use[k] - pre + i]
            # Insertion sort: a handful to a few dozen beats.
            for a in range(1, m):
                v = col[a]
                j = a - 1
                while j >= 0 and col[j] > v:
                    col[j + 1] = col[j]
                    j -= 1
                col[j + 1] = v
            if m % 2 == 1:
                out[c, i] = col[m // 2]
            else:
                out[c, i] = 0.5 * (col[m // 2 - 1] + col[m // 2])
    return out


@numba.njit(cache=True, nogil=True)
def _velocity(med: np.ndarray) -> np.ndarray:
    n_ch, n = med.shape
    v = np.zeros(n)
    for c in range(n_ch):
        for i in range(1, n - 1):
            v[i] += abs(med[c, i + 1] - med[c, i - 1]) * 0.5
    v[0] = v[1]
    v[n - 1] = v[n - 2]
    return v


@numba.njit(cache=True, nogil=True)
def _magnitude(med: np.ndarray, at: int, half: int) -> np.ndarray:
    # Spatial magnitude of the leads after subtracting each lead's level
    # averaged over [at - half, at + half] (the isoelectric reference).
    n_ch, n = med.shape
    lo = max(0, at - half)
    hi = min(n, at + half + 1)
    mag = np.zeros(n)
    for c in range(n_ch):
        base = 0.0
        for i in range(lo, hi):
            base += med[c, i]
        base /= max(hi - lo, 1)
        for i in range(n):
            d = med[c, i] - base
            mag[i] += d * d
    for i in range(n):
        mag[i] = np.sqrt(mag[i])
    return mag


#: The constants above, in the order `fiducials` takes them.
PARAMS: tuple[float, ...] = (_QRS_FRACTION, _QRS_GAP_S, _P_MIN_UV, _P_SNR, _P_FRACTION)


def fiducials(med: np.ndarray, fs: float, pre: int, rr_s: float,
              params: tuple[float, ...] = PARAMS) -> np.ndarray:
    """int64 [P on, P off, QRS on, QRS off, T off] sample indices in the median beat.

    ``med`` is (leads, samples) µV aligned so that the QRS fiducial is at
    ``pre``; ``rr_s`` the mean RR interval (bounds the T wave search). -1
    marks a point that could not be found.
    """
    return _fiducials(med, float(fs), int(pre), float(rr_s), *params)


@numba.njit(cache=True, nogil=True)
def _fiducials(med: np.ndarray, fs: float, pre: int, rr_s: float, qrs_fraction: float,
               qrs_gap_s: float, p_min_uv: float, p_snr: float, p_fraction: float
               ) -> np.ndarray:
    out = np.full(5, -1, dtype=np.int64)
    n_ch, n = med.shape
    if n < 8 or np.isnan(med).any():
        return out
    v = _velocity(med)
    # --- QRS ---
    w = int(0.06 * fs)
    lo = max(1, pre - w)
    hi = min(n - 1, pre + w)
    peak = lo
    for i in range(lo, hi):
        if v[i] > v[peak]:
            peak = i
    floor = np.percentile(v, 10.0)
    thr = floor + qrs_fraction * (v[peak] - floor)
    gap = max(int(qrs_gap_s * fs), 1)
    lim_on = max(0, peak - int(0.16 * fs))
    on = peak
    run = 0
    i = peak
    while i > lim_on:
        i -= 1
        if v[i] <= thr:
            run += 1
            if run > gap:
                break
        else:
            run = 0
            on = i
    lim_off = min(n - 1, peak + int(0.2 * fs))
    off = peak
    run = 0
    i = peak
    while i < lim_off:
        i += 1
        if v[i] <= thr:
            run += 1
            if run > gap:
                break
        else:
            run = 0
            off = i
    if on >= peak or off <= peak:
        return out
    out[2] = on
    out[3] = off
    iso_half = max(int(0.01 * fs), 1)
    iso = max(on - iso_half, 0)
    mag = _magnitude(med, iso, iso_half)
    # --- T offset: tangent at the steepest descent after the T peak ---
    t_lo = off + int(0.06 * fs)
    t_hi = min(n - 2, on + int(min(0.75 * rr_s, 0.7) * fs))
    if t_hi - t_lo > int(0.05 * fs):
        tp = t_lo
        for i in range(t_lo, t_hi):
            if mag[i] > mag[tp]:
                tp = i
        best = 0.0
        bi = -1
        for i in range(tp + 1, t_hi):
            s = mag[i - 1] - mag[i + 1]
            if s > best:
                best = s
                bi = i
        if bi > 0 and best > 0.0:
            slope = best * 0.5  # µV per sample
            t_end = bi + int(np.round(mag[bi] / slope))
            if t_end < n:
                out[4] = t_end
    # --- P wave ---
    p_lo = max(1, on - int(0.35 * fs))
    p_hi = on - int(0.02 * fs)
    if p_hi - p_lo > int(0.05 * fs):
        pp = p_lo
        for i in range(p_lo, p_hi):
            if mag[i] > mag[pp]:
                pp = i
        # Noise of the median beat: the magnitude's wiggle around a smooth
        # trend, from second differences on the whole beat.
        d = np.empty(n - 2)
        for i in range(1, n - 1):
            d[i - 1] = abs(med[0, i + 1] - 2.0 * med[0, i] + med[0, i - 1])
        noise = 1.4826 * np.median(d) / np.sqrt(6.0) * np.sqrt(n_ch)
        amp = mag[pp]
        # A real P peak stands inside the window, not at its edge (a T wave
        # of the previous beat or the QRS upstroke reaching in).
        if amp > p_min_uv and amp > p_snr * noise and pp > p_lo + 2 and pp < p_hi - 2:
            cut = p_fraction * amp
            # Walk out from the peak to the cut, or to the trough where the
            # P wave meets a neighbouring wave (the T wave at fast rates, a
            # TP level off the PR level) once past half the peak.
            a = pp
            while a > p_lo and mag[a] > cut and not (
                    mag[a] < 0.5 * amp and mag[a - 1] >= mag[a]):
                a -= 1
            b = pp
            while b < on and mag[b] > cut and not (
                    mag[b] < 0.5 * amp and mag[b + 1] >= mag[b]):
                b += 1
            if a > p_lo and b < on:
                out[0] = a
                out[1] = b
    return out
