"""Pacemaker pulses: where they are, and whether a median beat is paced.

A pacemaker stimulus is a 0.1-2 ms pulse (the range IEC 60601-2-25 asks an
electrocardiograph to handle). On the body surface it is a step far
steeper than any cardiac deflection, from a flat baseline (the stimulus fires
into the isoelectric line before the beat it triggers), seen on most leads at
the same instant (one electric field, projected on every lead). The 40 Hz
diagnostic filter smears it into a 20-30 ms wave that a slope walk takes for
the start of the QRS, so pulses are found on the signal before that filter,
and at the recording's own rate: a resampler's anti-alias filter rings before
and after a step (Gibbs), which leaves the milliseconds before it anything
but calm. NaN samples (padding) never vote.

`pulses` finds them: at each sample, a lead votes for a pulse when its
one-sample step is many times larger than any step in the 4-20 ms before it
(a QRS or a T wave steepens gradually; a pulse jumps); a pulse needs the vote
of half the leads. `paced_lag` then asks the question the delineation needs:
do most of the beats that make the median beat follow a pulse at one fixed
lag (the pacemaker's stimulus-to-fiducial time)? Only then is the median
beat's QRS taken to start at the pulse; a lone pulse-like artefact, or a
pulse that does not precede the beats at a fixed lag (a failed capture, an
atrial pulse before a variable AV conduction), changes nothing.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["beat_lags", "lag_tolerance", "paced_lag", "pulses"]

#: A lead votes when its step exceeds this multiple of the largest step in the
#: window before it (plus the floor below).
_STEP_RATIO = 8.0
#: Floor (µV) added to the preceding steps, so that a flat, quantised baseline
#: (steps of 0-2 µV) does not turn a 20 µV wiggle into a pulse.
_FLOOR_UV = 10.0
#: The window before a step that must be calm (s): from 20 ms to 4 ms before.
_CALM_FROM_S = 0.020
_CALM_TO_S = 0.004
#: A pulse is the earliest step of a burst; steps within this time after one
#: belong to it (its recovery).
_PULSE_S = 0.010
#: Beats: a pulse counts for a beat when it comes this long or less before the
#: beat's fiducial (the largest deflection of a wide paced QRS can lie 150 ms
#: after the stimulus), and the median beat is paced when at least this share of
#: its beats has one within the lag tolerance of their median lag.
_MAX_LAG_S = 0.20
_LAG_TOLERANCE_S = 0.012
_PACED_SHARE = 0.5


#: A step can only be a pulse when it is above the floor times the ratio, so
#: the calm window is looked at only there (a few samples per second).
_LEAST_UV = _STEP_RATIO * _FLOOR_UV


#: Steps screened at once by their largest (a vector's worth of float32).
_BLOCK = 16


@numba.njit(cache=True, nogil=True, fastmath=True)
def _screen(xc: np.ndarray, a: int, tops: np.ndarray) -> None:
    # tops[k]: the largest step in block k of _BLOCK steps from sample a. Full
    # blocks have a fixed trip count and stay in the input's precision, so the
    # loop vectorises (4x faster than a scalar max). Fast math assumes no NaN:
    # a NaN can only make a block be skipped or looked at; the vote itself is
    # exact (`_votes`).
    n = xc.shape[0]
    for k in range(tops.shape[0]):
        i0 = a + k * _BLOCK
        d = xc[i0 + 1] - xc[i0]
        top = max(d, -d)
        if i0 + _BLOCK < n:
            for j in range(1, _BLOCK):
                d = xc[i0 + j + 1] - xc[i0 + j]
                top = max(top, max(d, -d))
        else:
            for i in range(i0 + 1, n - 1):
                d = xc[i + 1] - xc[i]
                top = max(top, max(d, -d))
        tops[k] = top


@numba.njit(cache=True, nogil=True)
def _votes(xc: np.ndarray, i: int, a: int, b: int) -> bool:
    # Whether the step after sample i is a pulse's edge on this lead: large,
    # and many times any step from a to b samples before it. The calm window
    # is walked back from the step and left at the first step large enough to
    # disqualify it (inside a QRS, at once).
    d = abs(xc[i + 1] - xc[i])
    if not d > _LEAST_UV:
        return False
    lim = d / _STEP_RATIO - _FLOOR_UV
    for j in range(i - b, i - a - 1, -1):
        if abs(xc[j + 1] - xc[j]) >= lim:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def pulses(x: np.ndarray, fs: float) -> np.ndarray:
    """int64 sample indices of pacemaker pulses in ``x`` (leads, samples), µV, not low-passed.

    The index is the last sample before the step.
    """
    n_ch, n = x.shape
    out = np.empty(0, dtype=np.int64)
    if n < 4 or n_ch == 0:
        return out
    a = max(int(_CALM_FROM_S * fs + 0.5), 2)
    b = max(int(_CALM_TO_S * fs + 0.5), 1)
    if n - 1 <= a:
        return out
    need = (n_ch + 1) // 2
    votes = np.zeros(n, dtype=np.int32)
    # A pulse has the votes of half the leads, so at least one of any
    # n_ch - need + 1 leads votes for it: those are searched throughout, the
    # others only next to the steps they found.
    first = n_ch - need + 1
    cand = np.empty(n, dtype=np.int64)
    nc = 0
    tops = np.empty((n - 1 - a + _BLOCK - 1) // _BLOCK)
    for c in range(first):
        xc = x[c]
        last = -n
        # Blocks of 16 steps are screened by their largest step first; few
        # blocks pass (those with a QRS upstroke or a pulse).
        _screen(xc, a, tops)
        for k in range(tops.shape[0]):
            i0 = a + k * _BLOCK
            i1 = min(i0 + _BLOCK, n - 1)
            if tops[k] > _LEAST_UV:
                for i in range(i0, i1):
                    if _votes(xc, i, a, b) and i - last > 1:
                        # One vote per lead and pulse: a pulse's steep edge
                        # may span two samples after resampling.
                        if votes[i] == 0 and votes[i - 1] == 0:
                            cand[nc] = i
                            nc += 1
                        votes[i] += 1
                        last = i
    for c in range(first, n_ch):
        xc = x[c]
        for k in range(nc):
            i = cand[k]
            for j in range(max(i - 1, a), min(i + 2, n - 1)):
                if _votes(xc, j, a, b):
                    votes[j] += 1
                    break
    found = np.empty(n, dtype=np.int64)
    m = 0
    span = max(int(_PULSE_S * fs + 0.5), 1)
    i = 0
    while i < n - 1:
        # Leads may see the edge one sample apart.
        v = votes[i] + votes[i + 1]
        if v >= need:
            found[m] = i if votes[i] >= votes[i + 1] else i + 1
            m += 1
            i += span
        else:
            i += 1
    return found[:m].copy()


@numba.njit(cache=True, nogil=True)
def beat_lags(pulse: np.ndarray, beats: np.ndarray, fs: float) -> np.ndarray:
    """int64 samples from the last pacemaker pulse at most 200 ms before each beat's
    fiducial to that fiducial, -1 for a beat with none.

    ``pulse`` from `pulses`, ``beats`` sorted fiducials at the same rate.
    """
    nb = beats.shape[0]
    lags = np.full(nb, -1, dtype=np.int64)
    max_lag = int(_MAX_LAG_S * fs)
    k = 0
    for j in range(nb):
        b = beats[j]
        while k < pulse.shape[0] and pulse[k] < b - max_lag:
            k += 1
        # The last pulse before the beat (a ventricular pulse follows an
        # atrial one in dual-chamber pacing).
        q = k
        while q < pulse.shape[0] and pulse[q] <= b:
            lags[j] = b - pulse[q]
            q += 1
    return lags


@numba.njit(cache=True, nogil=True)
def lag_tolerance(fs: float) -> int:
    """Samples by which a beat's lag (`beat_lags`) may differ from the paced lag."""
    return int(_LAG_TOLERANCE_S * fs + 0.5)


@numba.njit(cache=True, nogil=True)
def paced_lag(pulse: np.ndarray, beats: np.ndarray, fs: float) -> int:
    """Samples from the pacemaker pulse to the fiducial of a paced median beat, or -1.

    ``pulse`` from `pulses`, ``beats`` the fiducials the median beat is made
    of (both sorted, same rate).
    """
    nb = beats.shape[0]
    if nb == 0 or pulse.shape[0] == 0:
        return -1
    lags = beat_lags(pulse, beats, fs)
    have = lags[lags >= 0]
    if have.shape[0] < _PACED_SHARE * nb:
        return -1
    lag = int(np.median(have))
    tol = lag_tolerance(fs)
    close = 0
    for v in have:
        if abs(v - lag) <= tol:
            close += 1
    if close < _PACED_SHARE * nb:
        return -1
    return lag
