"""The twelve leads to print, in millivolts, from an ECG's rhythm group.

Samples in any voltage unit are scaled to mV (`waveform.dsp.scale`); limb leads
the object lacks but that follow from I and II (III, aVR, aVL, aVF: Einthoven
and Goldberger) are derived (`waveform.dsp.leads`). Each lead is shifted by its
median so that the trace sits on its row's baseline, as a cart prints it; the
shape and the amplitudes are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from waveform.dsp import leads as _leads
from waveform.dsp import scale
from waveform.errors import UnsupportedObject
from waveform.model import LEADS, Ecg, WaveformGroup

__all__ = ["LeadSignals", "lead_signals"]


@dataclass(frozen=True, slots=True, eq=False)
class LeadSignals:
    """float64 mV per standard lead (baseline-centred), the rate, and what was derived."""

    group: WaveformGroup
    fs: float
    mv: dict[str, np.ndarray]
    derived: tuple[str, ...]

    @property
    def duration_s(self) -> float:
        return self.group.duration_s


def lead_signals(ecg: Ecg) -> LeadSignals:
    """The leads of ``ecg.rhythm`` in mV; `UnsupportedObject` if it holds no ECG lead."""
    group = ecg.rhythm
    if group is None:
        raise UnsupportedObject(
            f"object {ecg.sop_instance_uid} has no waveform group; nothing to print"
        )
    rows: dict[str, int] = {}
    for i, ch in enumerate(group.channels):
        units = None if ch.units is None else ch.units.strip()
        if ch.lead in LEADS and ch.lead not in rows and (units in scale.VOLT_TO_UV or not units):
            rows[ch.lead] = i
    if not rows:
        raise UnsupportedObject(
            f"rhythm group {group.label!r} of object {ecg.sop_instance_uid} holds no ECG lead "
            f"in a voltage unit (channels: {', '.join(group.leads) or 'none'}); "
            "the printout draws leads I..V6"
        )
    phys = group.physical()
    mv: dict[str, np.ndarray] = {}
    for lead, i in rows.items():
        factor = scale.uv_factor(group.channels[i].units) / 1000.0
        mv[lead] = phys[i] * factor
    derived: list[str] = []
    if "I" in mv and "II" in mv:
        missing = [k for k, lead in enumerate(_leads.DERIVED) if lead not in mv]
        if missing:
            d = _leads.derive_limb_leads(
                np.ascontiguousarray(mv["I"]), np.ascontiguousarray(mv["II"])
            )
            for k in missing:
                mv[_leads.DERIVED[k]] = d[k]
                derived.append(_leads.DERIVED[k])
    for lead, y in mv.items():
        finite = y[np.isfinite(y)]
        if finite.size:
            mv[lead] = y - float(np.median(finite))
    return LeadSignals(group, float(group.sampling_frequency), mv, tuple(derived))
