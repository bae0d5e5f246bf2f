"""Multi-lead QRS detection.

The classic Pan-Tompkins chain (J. Pan & W. J. Tompkins, "A real-time QRS
detection algorithm", IEEE Trans. Biomed. Eng. 32(3):230-236, 1985): band-pass,
derivative, squaring, moving-window integration, then adaptive signal/noise
peak levels with a 0.25 threshold, a 200 ms refractory period, T-wave
discrimination by slope within 360 ms, and search-back over 1.66 x the mean RR.
Two changes make it multi-lead and position-accurate:

- every lead's squared slope is normalised by its own typical beat energy
  (median of 1-second maxima) before the leads are summed, so a lead with
  large complexes does not drown the others and a QRS seen on most leads
  stands out against noise on one;
- the integrated envelope peaks up to half a window after the QRS, so each
  beat's position is refined to the largest normalised deflection of the
  band-passed leads within +-60 ms of the slope-energy maximum, near the R
  (or S) peak the reference annotations mark.

Every constant is a physiological time (refractory 200 ms, T-wave window
360 ms, QRS width ~100 ms) or Pan & Tompkins' own ratio.
"""

from __future__ import annotations

import numba
import numpy as np

from waveform.dsp.arrays import as_channels
from waveform.dsp.filters import FilterSpec, apply
from waveform.errors import InvalidArgument

__all__ = ["BAND", "detect", "energy", "locate"]

#: The detector's pass band (Hz): the diagnostic band the analysis filters with
#: anyway (one filter pass serves detection and measurement). The derivative that
#: follows weights each frequency by f, which favours the QRS (spectrum peaking
#: at 5-15 Hz, Thakor, Webster & Tompkins, IEEE TBME 31(10), 1984) over P and
#: T waves (< 8 Hz) and baseline, and the 40 Hz corner keeps muscle noise out.
BAND: tuple[float, float] = (0.67, 40.0)

_REFRACTORY_S = 0.2
_T_WAVE_S = 0.36
_MWI_S = 0.10
_REFINE_S = 0.06
_SEARCHBACK_RR = 1.66


@numba.njit(cache=True, nogil=True)
def energy(bp: np.ndarray, fs: float) -> np.ndarray:
    """Lead-normalised squared slope summed over leads, integrated over 100 ms.

    ``bp`` is (channels, samples), band-passed. Returns (2, samples): row 0 the
    summed normalised squared slope, row 1 its moving-window integral (centred).
    """
    n_ch, n = bp.shape
    out = np.zeros((2, n))
    if n < 3:
        return out
    w = max(int(fs), 4)
    n_win = max(n // w, 1)
    maxima = np.empty(n_win)
    scale = np.zeros(n_ch)
    par = np.zeros(n_ch)
    # The squared slope is recomputed in the second pass rather than stored:
    # a (channels, samples) scratch array costs more in memory traffic than
    # the subtraction it saves.
    for c in range(n_ch):
        total = 0.0
        for k in range(n_win):
            a = max(k * w, 1)
            b = n - 1 if k == n_win - 1 else (k + 1) * w
            m = 0.0
            for i in range(a, b):
                d = bp[c, i + 1] - bp[c, i - 1]
                v = d * d
                total += v
                if v > m:
                    m = v
            maxima[k] = m
        scale[c] = np.median(maxima)
        if total > 0.0:
            # Peak-to-average ratio of the squared slope: high when the lead's
            # energy is concentrated in its QRS complexes, low when noise fills
            # the time between them.
            par[c] = scale[c] / (total / n)
    best = par.max()
    for c in range(n_ch):
        if not scale[c] > 0.0 or not best > 0.0:
            continue  # a flat or NaN lead adds nothing
        # Leads are weighted by their peak-to-average ratio relative to the best
        # lead (squared, a signal-to-noise power ratio), so a lead whose QRS
        # barely rises above its noise cannot outvote a clean one.
        weight = (par[c] / best) ** 2
        inv = weight / scale[c]
        cap = 4.0 * weight
        for i in range(1, n - 1):
            d = bp[c, i + 1] - bp[c, i - 1]
            v = d * d * inv
            # A lead's share is capped so that an artefact many times larger
            # than its beats cannot outvote the other leads.
            if v > cap:
                v = cap
            out[0, i] += v
    half = max(int(_MWI_S * fs / 2), 1)
    acc = 0.0
    for i in range(min(half, n)):
        acc += out[0, i]
    for i in range(n):
        hi = i + half
        lo = i - half - 1
        if hi < n:
            acc += out[0, hi]
        if lo >= 0:
            acc -= out[0, lo]
        out[1, i] = acc / (2 * half + 1)
    return out


@numba.njit(cache=True, nogil=True)
def _candidates(env: np.ndarray, half: int) -> np.ndarray:
    # Maxima of the envelope that are the largest within +-half samples (the
    # earliest of equal values wins). Only a rising-then-not-rising sample can
    # be one, and a smooth envelope has few, so the window is scanned only there.
    n = env.shape[0]
    cand = np.empty(n, dtype=np.int64)
    m = 0
    for i in range(n):
        v = env[i]
        if not v > 0.0 or (i > 0 and env[i - 1] >= v) or (i + 1 < n and env[i + 1] > v):
            continue
        best = True
        for j in range(max(0, i - half), min(n, i + half + 1)):
            if env[j] > v or (env[j] == v and j < i):
                best = False
                break
        if best:
            cand[m] = i
            m += 1
    return cand[:m]


@numba.njit(cache=True, nogil=True)
def _slope_peak(slope: np.ndarray, pos: int, half: int) -> float:
    n = slope.shape[0]
    m = 0.0
    for j in range(max(0, pos - half), min(n, pos + half + 1)):
        if slope[j] > m:
            m = slope[j]
    return m


@numba.njit(cache=True, nogil=True)
def locate(env: np.ndarray, fs: float) -> np.ndarray:
    """Beat positions (envelope maxima) from ``energy``'s output, Pan-Tompkins rules."""
    slope = env[0]
    mwi = env[1]
    n = mwi.shape[0]
    refractory = int(_REFRACTORY_S * fs)
    cand = _candidates(mwi, max(int(0.1 * fs), 1))
    nc = cand.shape[0]
    beats = np.empty(nc, dtype=np.int64)
    if nc == 0:
        return beats
    amp = np.empty(nc)
    for k in range(nc):
        amp[k] = mwi[cand[k]]
    # Initial signal level: the median of the 1-s envelope maxima over the first
    # 8 s (a beat falls in nearly every second at any heart rate above 60/min),
    # noise level a tenth of it.
    w = max(int(fs), 1)
    n_init = max(min(n, 8 * w) // w, 1)
    first = np.empty(n_init)
    for k in range(n_init):
        first[k] = mwi[k * w:min(n, (k + 1) * w)].max()
    spk = np.median(first)
    npk = 0.1 * spk
    nb = 0
    rr_mean = 0.0
    slope_half = max(int(0.04 * fs), 1)
    last_slope = 0.0
    amp_last = 0.0
    k = 0
    while k < nc:
        pos = cand[k]
        th = npk + 0.25 * (spk - npk)
        # Search back: a gap much longer than the mean RR hides a missed beat;
        # take the largest skipped candidate above half the threshold.
        if nb >= 2 and rr_mean > 0 and pos - beats[nb - 1] > _SEARCHBACK_RR * rr_mean:
            best = -1
            for j in range(k - 1, -1, -1):
                q = cand[j]
                if q <= beats[nb - 1] + refractory:
                    break
                if pos - q > refractory and amp[j] >= 0.5 * th:
                    if best < 0 or amp[j] > amp[best]:
                        best = j
            if best >= 0:
                q = cand[best]
                beats[nb] = q
                nb += 1
                spk = 0.25 * amp[best] + 0.75 * spk
                amp_last = amp[best]
                last_slope = _slope_peak(slope, q, slope_half)
                rr_mean = 0.875 * rr_mean + 0.125 * (beats[nb - 1] - beats[nb - 2])
                continue  # re-examine the current candidate against the new beat
        a = amp[k]
        if a >= th:
            s = _slope_peak(slope, pos, slope_half)
            if nb > 0 and pos - beats[nb - 1] < refractory:
                # Two maxima within a refractory period: keep the larger.
                if a > amp_last:
                    beats[nb - 1] = pos
                    amp_last = a
                    last_slope = s
                k += 1
                continue
            if nb > 0 and pos - beats[nb - 1] < _T_WAVE_S * fs and s < 0.5 * last_slope:
                # Within 360 ms and with half the slope: a T wave.
                npk = 0.125 * a + 0.875 * npk
                k += 1
                continue
            beats[nb] = pos
            nb += 1
            amp_last = a
            last_slope = s
            spk = 0.125 * a + 0.875 * spk
            if nb >= 2:
                rr = beats[nb - 1] - beats[nb - 2]
                rr_mean = rr if nb == 2 else 0.875 * rr_mean + 0.125 * rr
        else:
            npk = 0.125 * a + 0.875 * npk
        k += 1
    return beats[:nb]


@numba.njit(cache=True, nogil=True)
def _refine(bp: np.ndarray, beats: np.ndarray, fs: float) -> np.ndarray:
    # Move each beat to the largest lead-normalised |deflection| within +-60 ms.
    n_ch, n = bp.shape
    scale = np.empty(n_ch)
    for c in range(n_ch):
        m = 0.0
        for i in range(n):
            v = abs(bp[c, i])
            if v > m:
                m = v
        scale[c] = 1.0 / m if m > 0 else 0.0
    half = max(int(_REFINE_S * fs), 1)
    out = np.empty_like(beats)
    for b in range(beats.shape[0]):
        p = beats[b]
        best = p
        best_v = -1.0
        for j in range(max(0, p - half), min(n, p + half + 1)):
            v = 0.0
            for c in range(n_ch):
                v += abs(bp[c, j]) * scale[c]
            if v > best_v:
                best_v = v
                best = j
        out[b] = best
    # Refinement can pull two neighbours onto one peak; keep one.
    m = 0
    for b in range(out.shape[0]):
        if m == 0 or out[b] - out[m - 1] >= int(_REFRACTORY_S * fs):
            out[m] = out[b]
            m += 1
    return out[:m]


def detect(x: np.ndarray, fs: float, band_passed: bool = False,
           finite: bool = False) -> np.ndarray:
    """int64 sample indices of the QRS complexes in ``x`` (channels, samples) or (samples,).

    ``x`` is in any one amplitude unit per lead (each lead is normalised). NaN
    samples (padding) count as zero. Set ``band_passed`` when ``x`` already went
    through the detector's `BAND` (the analysis does this once for all stages),
    and ``finite`` when the caller knows ``x`` holds no NaN.
    """
    if fs <= 0:
        raise InvalidArgument(f"sampling frequency must be positive, got {fs}")
    arr, _ = as_channels(x, "signal")
    if not finite and np.isnan(arr).any():
        arr = np.nan_to_num(arr)
    if arr.shape[1] < int(0.5 * fs):
        return np.empty(0, dtype=np.int64)
    if not band_passed:
        arr = apply(arr, FilterSpec(float(fs), BAND[0], BAND[1], None))
    arr = np.ascontiguousarray(arr)
    env = energy(arr, float(fs))
    beats = locate(env, float(fs))
    return _refine(arr, beats, float(fs))
