"""Ecg -> Summary: the measurements the archive serves, versioned.

The rhythm group is scaled to µV, resampled to 500 Hz, filtered once with the
diagnostic band (0.67-40 Hz zero-phase: AHA/ACCF/HRS recommendations,
Kligfield et al., Circulation 115:1306, 2007), and that one signal feeds beat
detection, the median beats, the fiducials and the measurements. Whatever
cannot be measured is absent with a reason; nothing is guessed.

`delineate` gives every beat's own boundaries (`BeatMarks`), found by the
kernel that delineates the median beat, run on each beat's samples
(`waveform.dsp.delineate.beat_fiducials`); `analyze` keeps the same marks in
the summary (`Summary.beat_marks`), so both share one preparation (`_prepare`)
and one per-beat path (`_marks`).
Bump `ANALYSIS_VERSION` whenever a change can alter a stored summary: the
archive re-measures every ECG whose summary carries another version.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass

import numpy as np

from waveform.dsp import delineate as waves
from waveform.dsp import filters, leads, measure, pacer, qrs, quality, resample, scale
from waveform.dsp.arrays import as_channels
from waveform.errors import InvalidArgument
from waveform.model import LeadQuality, Measured, Summary, WaveformGroup

__all__ = ["ANALYSIS_FS", "ANALYSIS_VERSION", "MARKS", "BeatMarks", "analyze", "beat_marks",
           "delineate", "detect_beats"]

ANALYSIS_VERSION = "2.1.1"
#: Rate every rhythm group is analysed at (Hz).
ANALYSIS_FS = 500.0
#: The diagnostic filter every stage shares.
_BAND = (0.67, 40.0)
#: Median beat window around the QRS fiducial (s): room for a long PR before
#: and a long QT after.
_PRE_S = 0.5
_POST_S = 0.7
#: A beat is premature when it comes this much earlier than the median RR
#: (the usual 20% prematurity criterion of Holter analysis).
_PREMATURE = 0.8
#: Median successive RR difference over the median RR above which a rhythm
#: with no P wave is irregularly irregular (atrial fibrillation): its beats
#: have no expected time to come early against, so their class is unknown.
#: On the tuning half of LUDB, atrial fibrillation 0.26-0.68; flutter, paced
#: and other rhythms without a P wave at most 0.03, sinus arrhythmia 0.08.
_IRREGULAR = 0.1
#: Least median correlation between each beat's P span and the other beats'
#: average (`_p_repeats`) for the median beat's P wave to count: a sinus P wave
#: repeats beat after beat, while what atrial fibrillation leaves in a median
#: beat is an average of waves that do not. The middle of the gap on the tuning
#: half of LUDB: sinus rhythm 0.77-1.00, atrial fibrillation at most 0.45.
_P_REPEATS = 0.6
#: The span `_p_repeats` compares starts this long (s) before the P onset: the
#: P wave's rise out of the TP segment is part of what repeats in sinus rhythm
#: and what f waves do not (the span `_P_REPEATS` was measured on).
_P_LEAD_IN_S = 0.016
#: A lead quality reason's name (the enum's ``.name`` is a slow property).
_REASON_NAMES = {r: r.name for r in quality.Reason}
#: Least lead quality (0..1) for a lead to vote on the global boundaries.
_VOTE_QUALITY = 0.5


def _filtered(x: np.ndarray, fs: float) -> np.ndarray:
    return filters.apply(x, filters.FilterSpec(fs, _BAND[0], _BAND[1], None))


def detect_beats(signal: np.ndarray, fs: float) -> np.ndarray:
    """int64 sample indices of the QRS complexes in a (channels, samples) or 1-D signal.

    Any amplitude unit (each lead is normalised); all leads vote. The signal is
    filtered as `analyze` does, then `waveform.dsp.qrs.detect` finds the beats.
    """
    arr2, _ = as_channels(signal, "signal")
    if fs <= 0:
        raise InvalidArgument(f"sampling frequency must be positive, got {fs}")
    if np.isnan(arr2).any():
        arr2 = np.nan_to_num(arr2)
    if arr2.shape[1] < int(0.5 * fs):
        return np.empty(0, dtype=np.int64)
    return qrs.detect(_filtered(arr2, float(fs)), float(fs), band_passed=True, finite=True)


def _voltage_rows(g: WaveformGroup) -> list[int]:
    rows = []
    for i, c in enumerate(g.channels):
        if c.units is None or c.units.strip() in scale.VOLT_TO_UV:
            rows.append(i)
    return rows


def _complete_limb_leads(x: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Add III, aVR, aVL, aVF from I and II when they are missing."""
    if "I" not in names or "II" not in names:
        return x, names
    missing = [k for k, lead in enumerate(leads.DERIVED) if lead not in names]
    if not missing:
        return x, names
    d = leads.derive_limb_leads(x[names.index("I")], x[names.index("II")])
    return (np.vstack([x, d[missing]]), names + [leads.DERIVED[k] for k in missing])


def _absent(reason: str) -> Measured:
    return Measured(None, reason)


def _ms(v: float | None, reason: str, nd: int = 1) -> Measured:
    return Measured(round(float(v), nd), "") if v is not None else Measured(None, reason)


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A rhythm group ready to measure: what `analyze` and `delineate` share."""

    bp: np.ndarray  # filtered µV at ANALYSIS_FS, derived limb leads added
    names: list[str]
    fs: float
    fs0: float
    beats: np.ndarray  # at ANALYSIS_FS
    vote: np.ndarray
    pulses: np.ndarray  # at ANALYSIS_FS
    lead_quality: tuple[LeadQuality, ...]
    no_beats: str
    gaps: np.ndarray | None


def _prepare(ecg: object) -> _Prepared:
    g = getattr(ecg, "rhythm", None)
    if not isinstance(g, WaveformGroup):
        raise InvalidArgument("the ECG has no waveform group to analyse")
    rows = _voltage_rows(g)
    if not rows:
        raise InvalidArgument(f"group {g.label!r} has no channel in voltage units")
    chans = [g.channels[i] for i in rows]
    # The one scaling of the group (G.711, Waveform Bits Stored, padding), as the
    # printout and GetTrace apply it.
    uv = g.microvolts(None if len(rows) == g.n_channels else rows)
    fs0 = float(g.sampling_frequency)
    # Stretches where no lead recorded anything (every lead's padding value): an
    # interval between two beats across one is not an RR interval. Running
    # count of such samples, at the group's own rate.
    gaps = None
    if any(c.padding is not None for c in chans):
        silent = np.isnan(uv).all(axis=0)
        if silent.any():
            gaps = np.concatenate(([0], np.cumsum(silent)))
    # Pacemaker pulses are found at the recording's own rate: the resampler's
    # anti-alias filter rings around a step and the diagnostic filter smears
    # it (NaN padding never votes for a pulse).
    pulses = pacer.pulses(uv, fs0)
    if fs0 != ANALYSIS_FS:
        uv = resample.resample(np.nan_to_num(uv), fs0, ANALYSIS_FS)
        pulses = np.round(pulses * (ANALYSIS_FS / fs0)).astype(np.int64)
    fs = ANALYSIS_FS
    names = [c.name or f"ch{i + 1}" for i, c in enumerate(chans)]
    lq = quality.assess(uv, fs)
    lead_quality = tuple(
        LeadQuality(n, round(q.quality, 3), _REASON_NAMES[q.reason])
        for n, q in zip(names, lq, strict=True)
    )
    # Padding (NaN) is rare; the quality features already counted it.
    if any(q.nan_share > 0.0 for q in lq):
        uv = np.nan_to_num(uv)
    bp = _filtered(uv, fs)
    if any(q.snr >= quality.NOISE_FLOOR_SNR for q in lq):
        # Leads with nothing usable (flat, off) would only add noise to the vote.
        usable = [q.quality > 0.0 for q in lq]
        det_in = bp if all(usable) or not any(usable) else np.ascontiguousarray(bp[usable])
        beats = qrs.detect(det_in, fs, band_passed=True, finite=True)
        no_beats = "fewer than 2 beats detected"
    else:
        # Every lead is at its noise floor: a detector would find "beats" in
        # noise; the rhythm is not measured rather than guessed.
        beats = np.empty(0, dtype=np.int64)
        no_beats = "no lead shows a signal above its noise (see the lead quality)"
    bp_full, all_names = _complete_limb_leads(bp, names)
    # Leads of poor quality do not vote on the boundaries; derived limb leads
    # are as good as I and II together.
    good = {n: q.quality >= _VOTE_QUALITY for n, q in zip(names, lq, strict=True)}
    both = good.get("I", False) and good.get("II", False)
    vote = np.array([good.get(n, both) for n in all_names], dtype=np.bool_)
    if not vote.any():
        vote = np.ones_like(vote)
    return _Prepared(np.ascontiguousarray(bp_full), all_names, fs, fs0, beats, vote, pulses,
                     lead_quality, no_beats, gaps)


def analyze(ecg: object) -> Summary:
    """Measure the rhythm group of ``ecg`` (a `waveform.model.Ecg`)."""
    prep = _prepare(ecg)
    return _summarise(prep, *_marks(prep))


def delineate(ecg: object) -> tuple[BeatMarks, ...]:
    """The wave boundaries of every beat of the rhythm group of ``ecg`` (a
    `waveform.model.Ecg`): one `BeatMarks` per detected beat, sample indices
    at the group's own rate, each mark global over the leads.

    The same marks as `analyze(ecg)` stores in its summary (`beat_marks`), without
    the median beat and the global measurements.
    """
    prep = _prepare(ecg)
    orig = _at_own_rate(prep.beats, prep)
    return _records(orig, *_marks(prep))


#: The per-beat marks, in the order of `Summary.beat_marks`'s columns.
MARKS: tuple[str, ...] = ("p_onset", "p_offset", "qrs_onset", "qrs_offset", "t_peak",
                          "t_offset")
_FROM_FIDUCIALS = np.array([waves.FIDUCIALS.index(m) for m in MARKS], dtype=np.int64)
_PARAMS = np.asarray(waves.PARAMS, dtype=np.float64)
#: Why a beat's mark is absent (`Summary.beat_mark_why` indexes this).
_MARK_REASONS: tuple[str, ...] = (
    "the QRS complex of this beat was not delineated",
    "no T wave end found after this beat's QRS complex",
    "no P wave found before this beat's QRS complex",
    "no P wave that repeats from beat to beat around this beat (atrial fibrillation or "
    "flutter, or noise as large as the P wave)",
    "the beat is too close to the start or end of the recording to delineate",
)
_NO_QRS, _NO_T, _NO_P, _P_NOT_REPEATING, _AT_EDGE = range(5)
#: Beats are delineated in blocks of at most this many (about 30 s at rest): the
#: pacemaker lag and the P wave's repetition are asked of each block, so a
#: Holter record's paced stretches and atrial fibrillation episodes are told
#: apart from the rest (in a 10 s ECG the block is the whole record, as for
#: the median beat).
_BLOCK_BEATS = 32


@dataclass(frozen=True, slots=True)
class BeatMarks:
    """The wave boundaries of one beat, global over the leads (one mark per beat).

    Sample indices at the rhythm group's own rate; None where not found,
    `reason` says why.
    """

    beat: int
    p_onset: int | None
    p_offset: int | None
    qrs_onset: int | None
    qrs_offset: int | None
    t_peak: int | None
    t_offset: int | None
    #: (mark, why) for each absent mark, in `MARKS` order.
    missing: tuple[tuple[str, str], ...] = ()

    def reason(self, mark: str) -> str:
        """Why ``mark`` (one of `MARKS`) is absent; "" when it was found."""
        if mark not in MARKS:
            raise InvalidArgument(f"{mark!r} is not a beat mark (one of {', '.join(MARKS)})")
        return dict(self.missing).get(mark, "")


def _at_own_rate(idx: np.ndarray, prep: _Prepared) -> np.ndarray:
    """Sample indices at ANALYSIS_FS as indices at the group's own rate (-1 stays)."""
    if prep.fs0 == prep.fs:
        return idx.copy()
    out = np.round(idx * (prep.fs0 / prep.fs)).astype(np.int64)
    out[idx < 0] = -1
    return out


def _middle(v: np.ndarray) -> int:
    """The upper median of a few integers (np.median costs more than the sort)."""
    return int(np.sort(v)[v.shape[0] // 2])


def _marks(prep: _Prepared) -> tuple[np.ndarray, np.ndarray]:
    """Each beat's `MARKS` at the group's own rate (beats, 6; -1 absent) and why
    each absent one is (an index into `_MARK_REASONS`; -1 present)."""
    beats, fs = prep.beats, prep.fs
    nb = beats.shape[0]
    if nb == 0:
        return np.empty((0, 6), dtype=np.int64), np.empty((0, 6), dtype=np.int8)
    # The T wave lies before the next beat: its RR bounds the search.
    rr = np.diff(beats) / fs
    rr_next = np.append(rr, rr[-1]) if nb >= 2 else np.ones(1)
    blocks = ([np.arange(nb)] if nb <= _BLOCK_BEATS
              else np.array_split(np.arange(nb), -(-nb // _BLOCK_BEATS)))
    pace = np.full(nb, -1, dtype=np.int64)
    if prep.pulses.shape[0]:
        lags = pacer.beat_lags(prep.pulses, beats, fs)
        tol = pacer.lag_tolerance(fs)
        for blk in blocks:
            lag = pacer.paced_lag(prep.pulses, beats[blk], fs)
            if lag >= 0:
                close = blk[np.abs(lags[blk] - lag) <= tol]
                pace[close] = lags[close]
    pre, post = int(_PRE_S * fs), int(_POST_S * fs)
    fid = waves.beat_fiducials(prep.bp, beats, fs, pre, post, rr_next, prep.vote, pace,
                                   _PARAMS)
    m = fid[:, _FROM_FIDUCIALS]
    why = np.full((nb, 6), -1, dtype=np.int8)
    no_qrs = m[:, 2] < 0
    why[no_qrs] = _NO_QRS
    edge = round(waves.EDGE_S * fs)
    why[(beats < edge) | (beats + edge > prep.bp.shape[1])] = _AT_EDGE
    why[~no_qrs & (m[:, 5] < 0), 4:] = _NO_T
    why[~no_qrs & (m[:, 0] < 0), :2] = _NO_P
    lead_in = round(_P_LEAD_IN_S * fs)
    for blk in blocks:
        have = blk[m[blk, 0] >= 0]
        if have.shape[0] < 3:
            continue
        # The block's P span relative to its beats, tested as the median beat's is.
        on = _middle(beats[have] - m[have, 0]) + lead_in
        off = _middle(m[have, 1] - beats[have])
        if _p_repeats(prep.bp, beats[blk], 0, -on, off, prep.vote, fs) < _P_REPEATS:
            m[have, :2] = -1
            why[have, :2] = _P_NOT_REPEATING
    return _at_own_rate(m, prep), why


def _records(beats: np.ndarray, marks: np.ndarray, why: np.ndarray,
             reasons: tuple[str, ...] = _MARK_REASONS) -> tuple[BeatMarks, ...]:
    out = []
    for b, row, w in zip(beats.tolist(), marks.tolist(), why.tolist(), strict=True):
        p_on, p_off, q_on, q_off, t_pk, t_off = (v if v >= 0 else None for v in row)
        missing = tuple((name, reasons[k]) for name, k in zip(MARKS, w, strict=True) if k >= 0)
        out.append(BeatMarks(b, p_on, p_off, q_on, q_off, t_pk, t_off, missing))
    return tuple(out)


def beat_marks(summary: Summary) -> tuple[BeatMarks, ...]:
    """The per-beat marks a `Summary` carries, as `delineate` returns them."""
    return _records(summary.beats, summary.beat_marks, summary.beat_mark_why,
                    summary.beat_mark_reasons)


def _rr_stats(rr: list[float]) -> tuple[float, float]:
    """Median and mean of RR intervals: plain floats (a few dozen beats)."""
    return statistics.median(rr), sum(rr) / len(rr)


def _p_repeats(bp: np.ndarray, beats: np.ndarray, pre: int, p_on: int, p_off: int,
               vote: np.ndarray, fs: float) -> float:
    """`waves.wave_repeats` of the median beat's P span over ``beats``, the
    voting leads together. A P wave lies below 10-15 Hz: a 40 ms moving average
    (first zero at 25 Hz) keeps it and the f waves of atrial fibrillation, and
    takes out most of the muscle noise that would make a sinus beat's P wave
    look unlike the others'."""
    w = p_off - p_on + 1
    starts = beats - pre + p_on
    starts = starts[(starts >= 0) & (starts + w <= bp.shape[1])]
    return float(waves.wave_repeats(bp, np.ascontiguousarray(starts, dtype=np.int64), w,
                                        np.flatnonzero(vote).astype(np.int64),
                                        max(round(0.04 * fs), 1)))


def _summarise(prep: _Prepared, marks: np.ndarray, mark_why: np.ndarray) -> Summary:
    beats, bp, names, fs, fs0 = prep.beats, prep.bp, prep.names, prep.fs, prep.fs0
    vote, pulses, no_beats, gaps = prep.vote, prep.pulses, prep.no_beats, prep.gaps
    nb = beats.shape[0]
    orig = _at_own_rate(beats, prep)
    pre, post = int(_PRE_S * fs), int(_POST_S * fs)
    classes = ["U"] * nb
    pairs = list(itertools.pairwise(beats.tolist()))
    # An interval across a stretch no lead recorded is not an RR interval; the
    # beat after it has no class.
    bridged = ([False] * len(pairs) if gaps is None else
               [bool(gaps[b + 1] - gaps[a] > 0) for a, b in itertools.pairwise(orig.tolist())])
    rr = [(b - a) / fs for (a, b), gap in zip(pairs, bridged, strict=True) if not gap]
    if rr:
        rr_med, rr_s = _rr_stats(rr)
        for k, ((a, b), gap) in enumerate(zip(pairs, bridged, strict=True), start=1):
            if not gap:
                classes[k] = "P" if (b - a) / fs < _PREMATURE * rr_med else "N"
        rate = _ms(60.0 / rr_s, "", 1)
        rate_min = _ms(60.0 / max(rr), "", 1)
        rate_max = _ms(60.0 / min(rr), "", 1)
        rr_mean = _ms(rr_s * 1000.0, "", 1)
        sd = (math.sqrt(sum((v - rr_s) ** 2 for v in rr) / (len(rr) - 1)) * 1000.0
              if len(rr) >= 2 else None)
        rr_sd = _ms(sd, "fewer than 3 beats")
    else:
        why = no_beats if nb < 2 else "no two successive beats without a gap in the recording"
        rate = rate_min = rate_max = rr_mean = rr_sd = _absent(why)
        rr_s = 1.0
    normal = beats[np.array([c == "N" for c in classes], dtype=np.bool_)] if nb >= 2 else beats
    use = normal if normal.shape[0] >= 3 else beats
    med = waves.median_beats(bp, use, pre, post)
    complete = not np.isnan(med[:, 0]).any()  # a median beat is all NaN or none
    pace = pacer.paced_lag(pulses, use, fs)
    fid = (waves.fiducials(med, fs, pre, rr_s, vote, pace=pace) if complete
           else np.full(6, -1, dtype=np.int64))
    to_ms = 1000.0 / fs
    no_median = "" if complete else "no complete beat for a median beat"
    no_p = "no P wave on the median beat (atrial fibrillation, flutter or P below noise)"
    if fid[0] >= 0 and _p_repeats(bp, use, pre, max(int(fid[0]) - round(_P_LEAD_IN_S * fs), 0),
                                  int(fid[1]), vote, fs) < _P_REPEATS:
        fid[0] = fid[1] = -1
        no_p = ("no P wave that repeats from beat to beat (atrial fibrillation or flutter, or "
                "noise as large as the P wave: the median beat's is an average of unlike waves)")
    if fid[0] < 0 and len(rr) >= 3:
        # No P wave and irregular RR: "premature" would only say "shorter
        # than the median", which half of an atrial fibrillation's beats are.
        if statistics.median(abs(b - a) for a, b in itertools.pairwise(rr)) > _IRREGULAR * rr_med:
            classes = ["U"] * nb
    reasons = {
        0: no_median or no_p,
        1: no_median or no_p,
        2: no_median or "QRS onset not found on the median beat",
        3: no_median or "QRS offset not found on the median beat",
        4: no_median or "T wave end not found on the median beat",
    }
    fl = fid[:5].tolist()
    pts = [_ms(fl[k] * to_ms if fl[k] >= 0 else None, reasons[k]) for k in range(5)]
    p_on, _, q_on, q_off, t_off = fl
    pr = _ms((q_on - p_on) * to_ms if p_on >= 0 and q_on >= 0 else None, reasons[0])
    qrs_d = _ms((q_off - q_on) * to_ms if q_on >= 0 and q_off >= 0 else None,
                reasons[2] if q_on < 0 else reasons[3])
    qt_v = (t_off - q_on) * to_ms if q_on >= 0 and t_off >= 0 else None
    qt = _ms(qt_v, reasons[4] if q_on >= 0 else reasons[2])
    if qt_v is not None and rr:
        c = measure.qtc(qt_v, rr_s)
        qtcs = {k: _ms(v, "") for k, v in c.items()}
    else:
        why = qt.reason or rate.reason
        qtcs = {k: _absent(why) for k in measure.QTC_FORMULAS}
    axes = _axes(med, names, fl)
    return Summary(
        analysis_version=ANALYSIS_VERSION,
        sampling_frequency=fs0,
        beats=orig,
        beat_classes=tuple(classes),
        heart_rate_bpm=rate,
        heart_rate_min_bpm=rate_min,
        heart_rate_max_bpm=rate_max,
        rr_mean_ms=rr_mean,
        rr_sd_ms=rr_sd,
        median_leads=tuple(names),
        median_fs=fs,
        median_beat=med,
        p_onset_ms=pts[0],
        p_offset_ms=pts[1],
        qrs_onset_ms=pts[2],
        qrs_offset_ms=pts[3],
        t_offset_ms=pts[4],
        pr_ms=pr,
        qrs_ms=qrs_d,
        qt_ms=qt,
        qtc_bazett_ms=qtcs["bazett"],
        qtc_fridericia_ms=qtcs["fridericia"],
        qtc_framingham_ms=qtcs["framingham"],
        qtc_hodges_ms=qtcs["hodges"],
        p_axis_deg=axes[0],
        qrs_axis_deg=axes[1],
        t_axis_deg=axes[2],
        lead_quality=prep.lead_quality,
        beat_marks=marks,
        beat_mark_why=mark_why,
        beat_mark_reasons=_MARK_REASONS,
    )


#: Why the P, QRS and T axes are absent when their span is not delineated.
_AXIS_ABSENT = ("no P wave on the median beat", "",
                "T wave end not found on the median beat")


def _axes(med: np.ndarray, names: list[str], fid: list[int]) -> list[Measured]:
    if "I" not in names or "aVF" not in names:
        return [_absent("leads I and aVF (or I and II) are needed for a frontal axis")] * 3
    p_on, p_off, q_on, q_off, t_off = fid
    if q_on < 0 or q_off < 0:
        return [_absent("QRS not delineated on the median beat")] * 3
    spans = np.array([[p_on, p_off], [q_on, q_off + 1], [q_off, t_off]], dtype=np.int64)
    areas = measure.net_areas(med, names.index("I"), names.index("aVF"), spans, q_on).tolist()
    out = []
    for (ai, af), why in zip(areas, _AXIS_ABSENT, strict=True):
        if math.isnan(ai):
            out.append(_absent(why))
            continue
        ax = measure.axis_from_areas(ai, af)
        out.append(Measured(ax, "") if ax is not None else _absent("no net deflection"))
    return out
