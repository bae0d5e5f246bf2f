"""Intervals, heart-rate corrected QT and frontal-plane axes.

QTc formulas (RR in seconds, QT in ms):
- Bazett, Heart 7:353, 1920: QT / sqrt(RR);
- Fridericia, Acta Med Scand 53:469, 1920: QT / RR^(1/3);
- Framingham (Sagie et al., Am J Cardiol 70:797, 1992): QT + 154 (1 - RR);
- Hodges et al., J Am Coll Cardiol 1:694, 1983: QT + 1.75 (HR - 60).
The frontal axis is the direction of the net area of a wave in leads I and aVF
(atan2(aVF, I), degrees, -90..180 convention of the hexaxial reference system).
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["QTC_FORMULAS", "axis_from_areas", "frontal_axis", "net_areas", "qtc"]

#: Name -> f(QT ms, RR s) -> QTc ms.
QTC_FORMULAS = {
    "bazett": lambda qt, rr: qt / math.sqrt(rr),
    "fridericia": lambda qt, rr: qt / rr ** (1.0 / 3.0),
    "framingham": lambda qt, rr: qt + 154.0 * (1.0 - rr),
    "hodges": lambda qt, rr: qt + 1.75 * (60.0 / rr - 60.0),
}


def qtc(qt_ms: float, rr_s: float) -> dict[str, float]:
    """QTc by every formula of `QTC_FORMULAS`."""
    return {name: float(f(qt_ms, rr_s)) for name, f in QTC_FORMULAS.items()}


def frontal_axis(lead_i: np.ndarray, lead_avf: np.ndarray, start: int, stop: int,
                 baseline_i: float, baseline_avf: float) -> float | None:
    """Axis in degrees from the net areas of I and aVF over [start, stop).

    None when both areas vanish (no direction to speak of).
    """
    a_i = float(np.sum(lead_i[start:stop] - baseline_i))
    a_f = float(np.sum(lead_avf[start:stop] - baseline_avf))
    return axis_from_areas(a_i, a_f)


def axis_from_areas(area_i: float, area_avf: float) -> float | None:
    """Axis in degrees (-90..180) of the net areas in I and aVF; None when both vanish."""
    if area_i == 0.0 and area_avf == 0.0:
        return None
    deg = math.degrees(math.atan2(area_avf, area_i))
    # Report on the -90..+180 range cardiologists use.
    if deg < -90.0:
        deg += 360.0
    return round(deg, 1)


@numba.njit(cache=True, nogil=True)
def net_areas(med: np.ndarray, li: int, lf: int, spans: np.ndarray, q_on: int) -> np.ndarray:
    """(spans, 2) net areas of leads ``li`` and ``lf`` of ``med`` over each
    [start, stop) of ``spans`` (spans, 2), less the level of the 5 samples
    before ``q_on`` (the PR segment); NaN for a span that is not one (a bound
    below 0, or stop <= start).

    Running float64 sums of each lead: every area is a difference of two.
    """
    n = med.shape[1]
    ci = np.zeros(n + 1)
    cf = np.zeros(n + 1)
    for k in range(n):
        ci[k + 1] = ci[k] + med[li, k]
        cf[k + 1] = cf[k] + med[lf, k]
    iso = max(q_on - 5, 0)
    bi = (ci[q_on] - ci[iso]) / (q_on - iso) if q_on > 0 else 0.0
    bf = (cf[q_on] - cf[iso]) / (q_on - iso) if q_on > 0 else 0.0
    out = np.full((spans.shape[0], 2), np.nan)
    for s in range(spans.shape[0]):
        a = spans[s, 0]
        b = spans[s, 1]
        if a < 0 or b < 0 or b <= a:
            continue
        out[s, 0] = ci[b] - ci[a] - (b - a) * bi
        out[s, 1] = cf[b] - cf[a] - (b - a) * bf
    return out
