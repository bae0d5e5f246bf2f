"""Median beats and their global fiducial points (P, QRS and T boundaries).

The median (representative) beat of each lead is the sample-wise median of the
beats aligned on their QRS fiducial; it keeps the waveform's shape while noise
and isolated ectopic beats fall away (the approach of the CSE study and of
IEC 60601-2-25 clause 201.12.4.4 "measurements on a representative beat").

Boundaries are global, from all leads at once, as the CSE convention asks
(J. L. Willems et al., "Common standards for quantitative electrocardiography:
goals and main results", Methods Inf. Med. 29(4):263-271, 1990: earliest onset
and latest offset over leads):

- QRS onset from all usable leads at once: walking back from the first steep
  sample of the sum of their absolute slopes, where that sum falls to a small
  fraction of its rise above its quietest 20 ms before the QRS (the PR
  segment's level) for longer than a short gap. A lead whose QRS starts before
  the others lifts the sum, as it sets a reader's earliest onset; one lead's
  noise is a small part of twelve leads' slopes;
- QRS offset per lead, where the lead's absolute slope, walking out from the
  last steep stretch of its QRS (half its QRS peak slope), falls to a fraction
  of that peak slope for longer than a short gap; the global offset is the
  second latest over the usable leads (the latest alone follows a single
  noisy lead);
- T offset per lead by the area indicator of Q. Zhang et al., "An algorithm
  for robust and efficient location of T-wave ends in electrocardiograms",
  IEEE Trans. Biomed. Eng. 53(12):2544-2552, 2006 (the end maximises the area
  between the wave and the level at the candidate point over a sliding
  window; insensitive to baseline and noise, and to the T wave's polarity),
  the global offset the third latest over leads whose T wave stands out (at
  least 50 µV from the PR level and from the line joining the ST level to the
  TP level: a flat T wave on a TP segment off the PR level does not vote);
- no boundary is moved by a reader margin: each point is where the signal
  itself starts or ends, the convention of the cart programs a clinician
  compares the archive with (within a few ms of GE's 12SL and a Mortara ELI on
  the QRS and QT, docs/accuracy.md). LUDB's cardiologists mark QRS
  complexes ~25 ms wider than this, around ones these programs call normal;
- P wave where the spatial magnitude before the QRS forms a peak well above
  the median beat's noise; its offset where it falls to a fraction of that
  peak, its onset where it falls to a fraction of its height above the floor
  the magnitude reaches before it (the TP segment need not sit at the PR
  segment's level, which the magnitude is measured from). No such peak
  (atrial fibrillation averages out in a median beat) means no P wave: the P
  fiducials are absent, not guessed.
"""

from __future__ import annotations

import numba
import numpy as np

from waveform.dsp.quality import mad_sigma
from waveform.errors import InvalidArgument

__all__ = ["EDGE_S", "FIDUCIALS", "PARAMS", "beat_fiducials", "fiducials", "median_beats",
           "wave_repeats"]

#: Order of the points `fiducials` returns.
FIDUCIALS: tuple[str, ...] = ("p_onset", "p_offset", "qrs_onset", "qrs_offset", "t_offset",
                              "t_peak")

# QRS: the fraction of the summed slope's rise above its PR-segment level that
# bounds the onset, the fraction of a lead's QRS peak slope that bounds its
# offset, the longest dip below either (s) that still counts as inside the
# complex, and the least peak slope, as a multiple of the lead's noise, for a
# lead to vote.
_QRS_ON_FRACTION = 0.03
_QRS_OFF_FRACTION = 0.05
_QRS_GAP_S = 0.004
_QRS_SNR = 10.0
# T end per lead: Zhang's sliding window (s), the least T amplitude (µV and
# multiple of the lead's noise) for a lead to vote.
_T_WINDOW_S = 0.10
_T_MIN_UV = 50.0
_T_SNR = 5.0
# A lead's largest deviation from the PR level this close (s) to the start of
# the T search is the ST segment's, not the T wave's peak (see `_t_end`).
_T_EDGE_S = 0.02
# Span (s) averaged for the ST level and the TP level that a T wave must stand
# out of (see `_t_end`).
_T_LEVEL_S = 0.010
# Which order statistic over leads makes the global point (0 = the latest
# offset, 1 = the second latest, ...).
_RANK_QRS_OFF = 1
_RANK_T_OFF = 2
# P wave: least spatial magnitude peak (µV) and its multiple of the noise, the
# fractions of its height that bound it (offset: of the peak; onset: of the
# height above the floor before it), and the share of that height below which
# a trough ends the onset walk.
_P_MIN_UV = 20.0
_P_SNR = 3.0
_P_FRACTION = 0.15
_P_ON_FRACTION = 0.10
_P_TROUGH = 0.3
# Paced beats: how far the 40 Hz filter smears a pacemaker pulse (s), the span
# after the pulse where the QRS's steepest point is not looked for.
_PULSE_SMEAR_S = 0.020


@numba.njit(cache=True, nogil=True)
def _exchange(src: np.ndarray, dst: np.ndarray, first: int, m: int) -> None:
    # One round of an odd-even transposition sort of the rows of ``src`` into
    # ``dst``: rows (k, k + 1) for k = first, first + 2, ... are compared
    # sample by sample; a row left out is copied. Writing to another buffer
    # lets the compiler vectorise the compare-exchange (in place, it does not).
    width = src.shape[1]
    if first == 1:
        for i in range(width):
            dst[0, i] = src[0, i]
    k = first
    while k + 1 < m:
        a = src[k]
        b = src[k + 1]
        lo = dst[k]
        hi = dst[k + 1]
        for i in range(width):
            u = a[i]
            v = b[i]
            lo[i] = u if u < v else v
            hi[i] = v if u < v else u
        k += 2
    if k < m:
        for i in range(width):
            dst[k, i] = src[k, i]


@numba.njit(cache=True, nogil=True)
def wave_repeats(x: np.ndarray, starts: np.ndarray, w: int, rows: np.ndarray,
                 k: int) -> float:
    """How alike one wave is from beat to beat: the median over beats of the
    correlation between the beat's span and the average of the other beats'.

    ``x`` (channels, samples); the span of each beat is ``x[rows, s:s + w]``
    for ``s`` in ``starts`` (all inside ``x``), the leads in ``rows`` taken
    together, each smoothed by a ``k``-sample moving average and less its
    mean. Leaving the beat out of the average keeps it from correlating with
    itself. Fewer than 3 beats, or a span no longer than ``k``: 1.0 (nothing
    to compare).
    """
    nb = starts.shape[0]
    nl = rows.shape[0]
    m = w - k + 1
    if nb < 3 or m < 2:
        return 1.0
    seg = np.empty((nb, nl, m))
    total = np.zeros((nl, m))
    for b in range(nb):
        for j in range(nl):
            xr = x[rows[j]]
            s0 = starts[b]
            acc = 0.0
            for i in range(k - 1):
                acc += xr[s0 + i]
            mean = 0.0
            for i in range(m):
                acc += xr[s0 + i + k - 1]
                seg[b, j, i] = acc / k
                mean += acc / k
                acc -= xr[s0 + i]
            mean /= m
            for i in range(m):
                seg[b, j, i] -= mean
                total[j, i] += seg[b, j, i]
    corr = np.empty(nb)
    for b in range(nb):
        num = 0.0
        ss = 0.0
        oo = 0.0
        for j in range(nl):
            for i in range(m):
                v = seg[b, j, i]
                o = (total[j, i] - v) / (nb - 1)
                num += v * o
                ss += v * v
                oo += o * o
        den = np.sqrt(ss * oo)
        corr[b] = num / den if den > 0.0 else 0.0
    return np.median(corr)


@numba.njit(cache=True, nogil=True)
def median_beats(x: np.ndarray, beats: np.ndarray, pre: int, post: int) -> np.ndarray:
    """(leads, pre + post) float32 median of the beats' windows [b - pre, b + post).

    Beats whose window leaves the signal are skipped; with none left the
    result is all NaN. ``x`` must be finite.
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
    h = m // 2
    one = np.empty((m, width), dtype=x.dtype)
    two = np.empty((m, width), dtype=x.dtype)
    for c in range(n_ch):
        xc = x[c]
        for k in range(m):
            s0 = use[k] - pre
            for i in range(width):
                one[k, i] = xc[s0 + i]
        # Odd-even transposition sort of the m windows, every sample at once:
        # m rounds of compare-exchange between neighbouring windows. No
        # branch depends on the data, so noise (which reorders the beats from
        # one sample to the next) costs nothing, unlike an insertion sort.
        src = one
        dst = two
        for r in range(m):
            _exchange(src, dst, r % 2, m)
            src, dst = dst, src
        if m % 2 == 1:
            for i in range(width):
                out[c, i] = src[h, i]
        else:
            for i in range(width):
                out[c, i] = 0.5 * (np.float64(src[h - 1, i]) + np.float64(src[h, i]))
    return out


@numba.njit(cache=True, nogil=True)
def _velocity(med: np.ndarray, lo: int, hi: int) -> np.ndarray:
    # Summed absolute slope of the leads over [lo, hi) (1 <= lo, hi <= n - 1;
    # zero elsewhere: only the QRS search reads it).
    n_ch, n = med.shape
    v = np.zeros(n)
    for c in range(n_ch):
        for i in range(lo, hi):
            v[i] += abs(med[c, i + 1] - med[c, i - 1]) * 0.5
    return v


@numba.njit(cache=True, nogil=True)
def _magnitude(med: np.ndarray, at: int, half: int, a: int, b: int) -> np.ndarray:
    # Spatial magnitude of the leads over [a, b) (zero elsewhere: only the P
    # and T searches read it) after subtracting each lead's level averaged over
    # [at - half, at + half] (the isoelectric reference).
    n_ch, n = med.shape
    lo = max(0, at - half)
    hi = min(n, at + half + 1)
    a = max(a, 0)
    b = min(b, n)
    mag = np.zeros(n)
    for c in range(n_ch):
        base = 0.0
        for i in range(lo, hi):
            base += med[c, i]
        base /= max(hi - lo, 1)
        for i in range(a, b):
            d = med[c, i] - base
            mag[i] += d * d
    for i in range(a, b):
        mag[i] = np.sqrt(mag[i])
    return mag


@numba.njit(cache=True, nogil=True)
def _lead_noise(med: np.ndarray, step: int) -> np.ndarray:
    # Each lead's noise sigma (µV), as the lead quality estimates it
    # (`quality.noise_sigma`), from every ``step``-th second difference.
    n_ch, n = med.shape
    out = np.zeros(n_ch)
    d = np.empty(max((n - 2 + step - 1) // step, 0))
    for c in range(n_ch):
        x = med[c]
        m = 0
        for i in range(1, n - 1, step):
            d[m] = abs(x[i + 1] - 2.0 * x[i] + x[i - 1])
            m += 1
        out[c] = mad_sigma(d[:m])
    return out


@numba.njit(cache=True, nogil=True)
def _ranked(vals: np.ndarray, rank: int, latest: bool, median_cap: bool) -> int:
    # The rank-th earliest (or latest) of vals, the extreme one when fewer. With
    # ``median_cap``, never past their median: the rank leaves out a lead or two
    # whose boundary strays beyond the others' (noise), and with few leads (the
    # two of a Holter) it would leave out the boundary itself and read the lead
    # that ends first; two leads give the middle of their two boundaries.
    m = vals.shape[0]
    if m == 0:
        return -1
    s = np.sort(vals)
    if latest:
        s = s[::-1]
    if not median_cap or 2 * rank < m - 1:
        return int(s[min(rank, m - 1)])
    return int(np.floor(0.5 * (s[(m - 1) // 2] + s[m // 2]) + 0.5))


@numba.njit(cache=True, nogil=True)
def _qrs_bounds(med: np.ndarray, peak: int, fs: float, use: np.ndarray, noise: np.ndarray,
                f_on: float, f_off: float, gap_s: float, snr: float,
                rank_off: int) -> tuple[int, int]:
    n_ch, n = med.shape
    w = int(0.08 * fs)
    lo = max(1, peak - w)
    hi = min(n - 1, peak + w)
    gap = max(int(gap_s * fs), 1)
    lim_on = max(1, peak - int(0.16 * fs))
    lim_off = min(n - 2, peak + int(0.2 * fs))
    offs = np.empty(n_ch)
    # Sum of the voting leads' absolute slopes, from the onset search's limit
    # to the end of the QRS window.
    vel = np.zeros(n)
    m = 0
    for c in range(n_ch):
        if not use[c]:
            continue
        x = med[c]
        top = 0.0
        for i in range(lo, hi):
            d = abs(x[i + 1] - x[i - 1]) * 0.5
            if d > top:
                top = d
        if not top > snr * noise[c] or not top > 0.0:
            continue
        for i in range(lim_on, hi):
            vel[i] += abs(x[i + 1] - x[i - 1]) * 0.5
        # The last steep sample: everything before it is QRS, however many
        # phases it has.
        b = -1
        for i in range(lo, hi):
            if abs(x[i + 1] - x[i - 1]) * 0.5 >= 0.5 * top:
                b = i
        off = b
        run = 0
        i = b
        while i < lim_off:
            i += 1
            if abs(x[i + 1] - x[i - 1]) * 0.5 <= f_off * top:
                run += 1
                if run > gap:
                    break
            else:
                run = 0
                off = i
        offs[m] = off
        m += 1
    if m == 0:
        return -1, -1
    # Onset: where the summed slope, walking back from its first steep sample,
    # falls to a fraction of its rise above the quietest 20 ms before the QRS.
    # A lead whose QRS starts early lifts the sum before the others move, as
    # it would lift a reader's earliest onset.
    top = 0.0
    for i in range(lo, hi):
        top = max(top, vel[i])
    a = lo
    while vel[a] < 0.5 * top:
        a += 1
    q_lo = max(1, peak - int(0.15 * fs))
    q_hi = min(hi, max(q_lo + max(int(0.02 * fs), 1), peak - int(0.02 * fs)))
    q = min(max(int(0.02 * fs), 1), q_hi - q_lo)
    base = 0.0
    if q > 0:
        acc = 0.0
        for i in range(q_lo, q_lo + q):
            acc += vel[i]
        base = acc
        for i in range(q_lo + q, q_hi):
            acc += vel[i] - vel[i - q]
            base = min(base, acc)
        base /= q
    cut = base + f_on * (top - base)
    on = a
    run = 0
    i = a
    while i > lim_on:
        i -= 1
        if vel[i] <= cut:
            run += 1
            if run > gap:
                break
        else:
            run = 0
            on = i
    return on, _ranked(offs[:m], rank_off, True, True)


@numba.njit(cache=True, nogil=True)
def _line_deviation(x: np.ndarray, lo: int, hi: int, h: int) -> float:
    # Largest |x - line| over [lo, hi), the line joining the mean levels of the
    # h samples from lo and of the h samples up to hi.
    a0 = 0.0
    for i in range(lo, lo + h):
        a0 += x[i]
    a0 /= h
    a1 = 0.0
    for i in range(hi - h + 1, hi + 1):
        a1 += x[i]
    a1 /= h
    step = (a1 - a0) / (hi - lo)
    top = 0.0
    for i in range(lo, hi):
        top = max(top, abs(x[i] - (a0 + step * (i - lo))))
    return top


@numba.njit(cache=True, nogil=True)
def _line_peak(x: np.ndarray, lo: int, hi: int, h: int) -> tuple[int, float, float]:
    # Where x is farthest from the line of `_line_deviation` over [lo, hi), the
    # sign of x - line there, and that distance.
    a0 = 0.0
    for i in range(lo, lo + h):
        a0 += x[i]
    a0 /= h
    a1 = 0.0
    for i in range(hi - h + 1, hi + 1):
        a1 += x[i]
    a1 /= h
    step = (a1 - a0) / (hi - lo)
    top = -1.0
    at = lo
    sign = 1.0
    for i in range(lo, hi):
        d = x[i] - (a0 + step * (i - lo))
        if abs(d) > top:
            top = abs(d)
            at = i
            sign = 1.0 if d > 0.0 else -1.0
    return at, sign, top


@numba.njit(cache=True, nogil=True)
def _t_end(med: np.ndarray, q_on: int, q_off: int, fs: float, rr_s: float, use: np.ndarray,
           noise: np.ndarray, window_s: float, min_uv: float, snr: float, rank: int) -> int:
    # Zhang et al. 2006: per lead, after the T peak, the end is the k that
    # maximises A(k) = sum over the window [k - W + 1, k] of (x(j) - x(k)),
    # signed by the T wave's polarity.
    n_ch, n = med.shape
    t_lo = q_off + int(0.06 * fs)
    t_hi = min(n - 1, q_on + int(min(0.75 * rr_s, 0.7) * fs))
    if t_hi - t_lo < int(0.05 * fs):
        return -1
    win = max(int(window_s * fs), 2)
    edge = max(int(_T_EDGE_S * fs), 1)
    iso_lo = max(0, q_on - int(0.02 * fs))
    ends = np.empty(n_ch)
    m = 0
    for c in range(n_ch):
        if not use[c]:
            continue
        x = med[c]
        base = 0.0
        for i in range(iso_lo, q_on + 1):
            base += x[i]
        base /= q_on + 1 - iso_lo
        tp = t_lo
        amp = 0.0
        for i in range(t_lo, t_hi):
            v = abs(x[i] - base)
            if v > amp:
                amp = v
                tp = i
        if amp < min_uv or amp < snr * noise[c]:
            continue
        # The T wave must also stand out of the line from the ST level to the
        # level at the end of the search window (the TP segment): measured from
        # the PR level alone, a TP segment off that level (atrial
        # repolarisation, drift) or an ST deviation passes for the T wave of a
        # lead whose T wave is flat, and its end lands anywhere.
        h = max(int(_T_LEVEL_S * fs), 1)
        if _line_deviation(x, t_lo, t_hi, h) < min_uv:
            continue
        sign = 1.0 if x[tp] > base else -1.0
        if tp < t_lo + edge:
            # The farthest point from the PR level is the start of the window: an
            # elevated or depressed ST segment (ischaemia, the ST-change Holters),
            # not a T peak, and the end of its slope would be taken for the T
            # wave's end. The T wave is then where the signal stands out most
            # from the ST-TP line.
            # A peak in the window's second half is no T wave's: its end and
            # the TP segment have to follow it inside the window.
            lp, lsign, _ = _line_peak(x, t_lo, t_hi, h)
            if 2 * (lp - t_lo) < t_hi - t_lo:
                tp, sign = lp, lsign
        # Running window sum: A(k) = S(k) - W' x(k), S the sum over the window.
        best = -np.inf
        bk = -1
        acc = 0.0
        start = tp
        for k in range(tp + 1, t_hi + 1):
            acc += x[k]
            if k - start + 1 > win:
                acc -= x[start]
                start += 1
            # The window is [start, k]; it starts at the T peak until it is full.
            area = sign * (acc - (k - start + 1) * x[k])
            if area > best:
                best = area
                bk = k
        if bk > 0:
            ends[m] = bk
            m += 1
    # The T end keeps the rank's extreme with few leads: on the QT Database's
    # tuning half the middle of two leads' ends read T ends 15 ms later on the
    # mean, but on its report half it read them 22 ms later and 7 ms wider
    # (docs/accuracy.md): not a rule that generalises.
    return _ranked(ends[:m], rank, True, False)


#: `beat_fiducials` measures the leads' noise once per this many beats, from at
#: most about this many second differences per lead.
_NOISE_BEATS = 16
_NOISE_SAMPLES = 1024
#: A beat this close (s) to the start or end of the signal has no marks
#: (`beat_fiducials`): the QRS onset is looked for up to 160 ms before it.
EDGE_S = 0.2

#: The constants above, in the order `fiducials` takes them.
PARAMS: tuple[float, ...] = (
    _QRS_ON_FRACTION, _QRS_OFF_FRACTION, _QRS_GAP_S, _QRS_SNR, _RANK_QRS_OFF,
    _T_WINDOW_S, _T_MIN_UV, _T_SNR, _RANK_T_OFF,
    _P_MIN_UV, _P_SNR, _P_FRACTION,
)


def fiducials(med: np.ndarray, fs: float, pre: int, rr_s: float,
              use: np.ndarray | None = None,
              params: tuple[float, ...] = PARAMS, pace: int = -1,
              noise: np.ndarray | None = None) -> np.ndarray:
    """int64 [P on, P off, QRS on, QRS off, T off, T peak] sample indices in the median beat.

    ``med`` is (leads, samples) µV aligned so that the QRS fiducial is at
    ``pre``; ``rr_s`` the mean RR interval (bounds the T wave search); ``use``
    marks the leads allowed to vote on the QRS and T boundaries (default all:
    leave out leads of poor quality); ``pace`` the samples from a pacemaker
    pulse to the fiducial when the median beat is paced
    (`waveform.dsp.pacer.paced_lag`), else -1; ``noise`` each lead's noise
    sigma (µV), by default estimated from ``med`` itself. -1 marks a point that
    could not be found.
    """
    m = np.ascontiguousarray(med, dtype=np.float64)
    u = np.ones(m.shape[0], dtype=np.bool_) if use is None else np.asarray(use, dtype=np.bool_)
    if u.shape[0] != m.shape[0]:
        raise InvalidArgument(f"use has {u.shape[0]} entries for {m.shape[0]} leads")
    sigma = (_lead_noise(m, 1) if noise is None
             else np.ascontiguousarray(noise, dtype=np.float64))
    if sigma.shape != (m.shape[0],):
        raise InvalidArgument(f"noise has shape {sigma.shape} for {m.shape[0]} leads")
    return _fiducials(m, float(fs), int(pre), float(rr_s), u, int(pace), sigma,
                      *(float(p) for p in params))


@numba.njit(cache=True, nogil=True)
def _fiducials(med: np.ndarray, fs: float, pre: int, rr_s: float, use: np.ndarray,
               pace: int, noise: np.ndarray, f_on: float, f_off: float, gap_s: float,
               qrs_snr: float, rank_off: float, t_window_s: float, t_min_uv: float, t_snr: float,
               rank_t: float, p_min_uv: float, p_snr: float, p_fraction: float) -> np.ndarray:
    out = np.full(6, -1, dtype=np.int64)
    n_ch, n = med.shape
    if n < 8 or np.isnan(med).any():
        return out
    # --- QRS: anchored on the spatial velocity peak near the fiducial ---
    w = int(0.06 * fs)
    lo = max(1, pre - w)
    hi = min(n - 1, pre + w)
    spike = pre - pace if 0 < pace < pre else -1
    if spike >= 0:
        # The filtered pulse is a wave of its own around the pulse; the QRS
        # it triggers comes after it.
        lo = max(lo, spike + int(_PULSE_SMEAR_S * fs))
        hi = max(hi, lo + 1)
    # (A beat too short for these spans still gets an answer, not a stray read.)
    lo = min(lo, n - 2)
    hi = min(max(hi, lo + 1), n - 1)
    v = _velocity(med, lo, hi)
    peak = lo
    for i in range(lo, hi):
        if v[i] > v[peak]:
            peak = i
    on0, off0 = _qrs_bounds(med, peak, fs, use, noise, f_on, f_off, gap_s, qrs_snr,
                            int(rank_off))
    if spike >= 0:
        # A paced QRS starts at the stimulus (its duration is measured from
        # the pulse, where LUDB's readers also mark it on the unfiltered
        # trace); the slope walk would run through the smeared pulse.
        on0 = spike
    if on0 < 0 or off0 < 0 or on0 >= peak or off0 <= peak:
        return out
    out[2] = on0
    out[3] = off0
    # --- T offset ---
    t_end = _t_end(med, on0, off0, fs, rr_s, use, noise, t_window_s, t_min_uv, t_snr,
                   int(rank_t))
    if t_end >= 0:
        out[4] = t_end
    iso_half = max(int(0.01 * fs), 1)
    iso = max(on0 - iso_half, 0)
    # The P search reads from 350 ms before the QRS onset, the T peak's up to
    # the T end.
    mag = _magnitude(med, iso, iso_half, on0 - int(0.35 * fs) - 1, max(on0, t_end) + 2)
    if t_end >= 0:
        # T peak: the largest spatial magnitude (from the PR level) between the
        # ST segment and the T end, the leads together (one mark per beat).
        tp = -1
        for i in range(min(off0 + int(0.06 * fs), t_end), t_end + 1):
            if tp < 0 or mag[i] > mag[tp]:
                tp = i
        out[5] = tp
    # --- P wave ---
    p_lo = max(1, on0 - int(0.35 * fs))
    # This beat's P wave comes after the previous beat's T wave, which ends one
    # RR before this beat's: at fast rates the window reaches into that T wave
    # (whose tail would be the largest magnitude there and hide the P wave of a
    # sinus tachycardia), so the search starts where it ended.
    prev_t = t_end - int(rr_s * fs) if t_end >= 0 else -1
    p_lo = max(p_lo, prev_t)
    p_hi = on0 - int(0.02 * fs)
    if p_hi - p_lo > int(0.05 * fs):
        pp = p_lo
        for i in range(p_lo, p_hi):
            if mag[i] > mag[pp]:
                pp = i
        # Noise of the median beat's magnitude: the first lead's noise (from
        # the second differences of the whole beat) summed over the leads.
        p_noise = noise[0] * np.sqrt(n_ch)
        amp = mag[pp]
        rise = amp
        inside = pp > p_lo + 2 and pp < p_hi - 2
        if not inside:
            # The largest magnitude is at the window's edge: a T wave of the
            # previous beat or the QRS upstroke reaching in, or a TP segment far
            # off the PR level (a Holter's baseline). A P wave may still stand
            # inside: the local maximum that rises most above the lowest
            # magnitude before it.
            low = mag[p_lo]
            best = 0.0
            for i in range(p_lo + 3, p_hi - 2):
                low = min(low, mag[i - 1])
                if mag[i] >= mag[i - 1] and mag[i] > mag[i + 1] and mag[i] - low > best:
                    best = mag[i] - low
                    pp = i
            inside = best > 0.0
            amp = mag[pp]
            rise = best
        if rise > p_min_uv and rise > p_snr * p_noise and inside:
            cut = p_fraction * amp
            # Walk out from the peak to the cut, or to the trough where the
            # P wave meets a neighbouring wave (the T wave at fast rates, a
            # TP level off the PR level) once past half the peak. A walk that
            # runs out of the window found no P wave, only a slope.
            a = pp
            while a > p_lo and mag[a] > cut and not (
                    mag[a] < 0.5 * amp and mag[a - 1] >= mag[a]):
                a -= 1
            # The onset itself is measured above the magnitude's floor before
            # the peak, not above zero: the magnitude is taken from the PR
            # segment's level, and the TP segment before the P wave often sits
            # off it (baseline drift, atrial repolarisation), which holds the
            # magnitude up and ends a walk to a fixed cut late.
            floor = mag[pp]
            for i in range(p_lo, pp):
                if mag[i] < floor:
                    floor = mag[i]
            cut_on = floor + _P_ON_FRACTION * (amp - floor)
            on_p = pp
            while on_p > p_lo and mag[on_p] > cut_on and not (
                    mag[on_p] - floor < _P_TROUGH * (amp - floor)
                    and mag[on_p - 1] >= mag[on_p]):
                on_p -= 1
            b = pp
            while b < on0 and mag[b] > cut and not (
                    mag[b] < 0.5 * amp and mag[b + 1] >= mag[b]):
                b += 1
            # (With a TP segment above the P wave, the walk to the cut runs
            # out of the window; the onset's walk to the floor does not.)
            if (a > p_lo or (rise < amp and on_p > p_lo)) and b < on0:
                out[0] = on_p
                out[1] = b
    return out


@numba.njit(cache=True, nogil=True)
def beat_fiducials(x: np.ndarray, beats: np.ndarray, fs: float, pre: int, post: int,
                   rr_s: np.ndarray, use: np.ndarray, pace: np.ndarray,
                   params: np.ndarray) -> np.ndarray:
    """(beats, 6) int64 `FIDUCIALS` of each beat of ``x`` (leads, samples; finite µV),
    as sample indices of ``x``, -1 where not found.

    Each beat is delineated on its own samples ``x[:, b - pre:b + post]`` (cut
    at the signal's ends) by the kernel `fiducials` applies to a median beat:
    one implementation for the median beat and for every beat. ``rr_s`` is
    each beat's RR interval (s) bounding its T wave search, ``pace`` each
    beat's pacemaker lag or -1, ``params`` `PARAMS` as a float64 array. A beat
    closer than `EDGE_S` to either end of ``x`` is not delineated (its QRS
    onset search would start outside the signal).
    """
    nb = beats.shape[0]
    n_ch, n = x.shape
    out = np.full((nb, 6), -1, dtype=np.int64)
    p = params
    edge = int(EDGE_S * fs)
    noise = np.zeros(n_ch)
    for k in range(nb):
        if k % _NOISE_BEATS == 0:
            # The noise of the leads over this beat and the next ones (a single
            # beat's 600 samples tell it no better, at several times the cost).
            lo = min(max(beats[k] - pre, 0), n)
            hi = max(min(beats[min(k + _NOISE_BEATS, nb) - 1] + post, n), lo)
            noise = _lead_noise(x[:, lo:hi], max((hi - lo) // _NOISE_SAMPLES, 1))
        b = beats[k]
        a = max(b - pre, 0)
        e = min(b + post, n)
        if b < edge or b + edge > n:
            continue
        w = np.empty((n_ch, e - a))
        for c in range(n_ch):
            for i in range(e - a):
                w[c, i] = x[c, a + i]
        f = _fiducials(w, fs, b - a, rr_s[k], use, pace[k], noise, p[0], p[1], p[2], p[3], p[4],
                       p[5], p[6], p[7], p[8], p[9], p[10], p[11])
        for j in range(6):
            if f[j] >= 0:
                out[k, j] = f[j] + a
    return out

