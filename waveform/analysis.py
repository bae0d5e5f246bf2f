"""Ecg -> Summary: the measurements the archive serves, versioned.

The rhythm group is scaled to µV, resampled to 500 Hz, filtered once with the
diagnostic band (0.67-40 Hz zero-phase: AHA/ACCF/HRS recommendations,
Kligfield et al., Circulation 115:1306, 2007), and that one signal feeds beat
detection, the median beats, the fiducials and the measurements. Whatever
cannot be measured is absent with a reason; nothing is guessed.
Bump `ANALYSIS_VERSION` whenever a change can alter a stored summary: the
archive re-measures every ECG whose summary carries another version.
"""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np

from waveform.dsp import delineate, filters, leads, measure, pacer, qrs, quality, resample, scale
from waveform.dsp.arrays import as_channels
from waveform.errors import InvalidArgument
from waveform.model import LeadQuality, Measured, Summary, WaveformGroup

__all__ = ["ANALYSIS_FS", "ANALYSIS_VERSION", "analyze", "detect_beats"]

ANALYSIS_VERSION = "2.0.0"
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


def analyze(ecg: object) -> Summary:
    """Measure the rhythm group of ``ecg`` (a `waveform.model.Ecg`)."""
    g = getattr(ecg, "rhythm", None)
    if not isinstance(g, WaveformGroup):
        raise InvalidArgument("the ECG has no waveform group to analyse")
    rows = _voltage_rows(g)
    if not rows:
        raise InvalidArgument(f"group {g.label!r} has no channel in voltage units")
    chans = [g.channels[i] for i in rows]
    raw = g.raw if len(rows) == g.n_channels else g.raw[rows]
    uv = scale.to_microvolts(
        raw,
        [c.sensitivity for c in chans],
        [c.correction for c in chans],
        [c.baseline for c in chans],
        [c.units for c in chans],
        [c.padding for c in chans],
    )
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
    return _summarise(beats, bp_full, all_names, fs, fs0, lead_quality, vote, pulses, no_beats,
                      gaps)


def _rr_stats(rr: list[float]) -> tuple[float, float]:
    """Median and mean of RR intervals: plain floats (a few dozen beats)."""
    return statistics.median(rr), sum(rr) / len(rr)


def _p_repeats(bp: np.ndarray, beats: np.ndarray, pre: int, p_on: int, p_off: int,
               vote: np.ndarray, fs: float) -> float:
    """`delineate.wave_repeats` of the median beat's P span over ``beats``, the
    voting leads together. A P wave lies below 10-15 Hz: a 40 ms moving average
    (first zero at 25 Hz) keeps it and the f waves of atrial fibrillation, and
    takes out most of the muscle noise that would make a sinus beat's P wave
    look unlike the others'."""
    w = p_off - p_on + 1
    starts = beats - pre + p_on
    starts = starts[(starts >= 0) & (starts + w <= bp.shape[1])]
    return float(delineate.wave_repeats(bp, np.ascontiguousarray(starts, dtype=np.int64), w,
                                        np.flatnonzero(vote).astype(np.int64),
                                        max(round(0.04 * fs), 1)))


def _summarise(beats: np.ndarray, bp: np.ndarray, names: list[str], fs: float, fs0: float,
               lead_quality: tuple[LeadQuality, ...], vote: np.ndarray,
               pulses: np.ndarray, no_beats: str, gaps: np.ndarray | None) -> Summary:
    nb = beats.shape[0]
    orig = beats.copy() if fs0 == fs else np.round(beats * (fs0 / fs)).astype(np.int64)
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
    med = delineate.median_beats(np.ascontiguousarray(bp), use, pre, post)
    if not vote.any():
        vote = np.ones_like(vote)
    complete = not np.isnan(med[:, 0]).any()  # a median beat is all NaN or none
    pace = pacer.paced_lag(pulses, use, fs)
    fid = (delineate.fiducials(med, fs, pre, rr_s, vote, pace=pace) if complete
           else np.full(5, -1, dtype=np.int64))
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
    fl = fid.tolist()
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
        lead_quality=lead_quality,
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
