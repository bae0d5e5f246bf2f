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

import numpy as np

__all__ = ["QTC_FORMULAS", "axis_from_areas", "frontal_axis", "qtc"]

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
