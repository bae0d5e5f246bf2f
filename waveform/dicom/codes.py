"""Tables from the standard: waveform SOP classes, transfer syntaxes, lead codes.

Each table can be checked against PS3.4 (SOP classes), PS3.5 (transfer
syntaxes), PS3.3 A.34 (the waveform IODs and their limits) and PS3.16 CID 3001
(ECG leads) at a glance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "LEAD_CODES",
    "SOP_CLASSES",
    "TRANSFER_SYNTAXES",
    "SopClass",
    "TransferSyntax",
    "lead_from_code",
    "lead_from_text",
]


@dataclass(frozen=True, slots=True)
class SopClass:
    """A waveform storage SOP class and the IOD limits of PS3.3 A.34."""

    uid: str
    name: str
    max_groups: int | None
    max_channels: int | None
    max_samples: int | None
    interpretations: frozenset[str]
    ecg: bool


_ALL = frozenset({"SB", "UB", "MB", "AB", "SS", "US", "SL", "UL", "SV", "UV"})
_SS = frozenset({"SS"})
_SB_SS = frozenset({"SB", "SS"})
_SB_SS_SL = frozenset({"SB", "SS", "SL"})
_SB_SS_SL_SV = frozenset({"SB", "SS", "SL", "SV"})

SOP_CLASSES: dict[str, SopClass] = {
    s.uid: s
    for s in (
        # PS3.3 A.34.3: 1-5 groups, 1-13 channels, <= 16384 samples, SS only.
        SopClass("1.2.840.10008.5.1.4.1.1.9.1.1", "12-lead ECG Waveform Storage",
                 5, 13, 16384, _SS, True),
        # A.34.4: 1-4 groups, 1-24 channels, SB or SS.
        SopClass("1.2.840.10008.5.1.4.1.1.9.1.2", "General ECG Waveform Storage",
                 4, 24, None, _SB_SS, True),
        # A.34.5: 1 group, 1-12 channels, SB or SS, <= 24 h at <= 1000 Hz.
        SopClass("1.2.840.10008.5.1.4.1.1.9.1.3", "Ambulatory ECG Waveform Storage",
                 1, 12, None, _SB_SS, True),
        # A.34.12: General 32-bit ECG: SB, SS, SL or SV.
        SopClass("1.2.840.10008.5.1.4.1.1.9.1.4", "General 32-bit ECG Waveform Storage",
                 4, 24, None, _SB_SS_SL_SV, True),
        SopClass("1.2.840.10008.5.1.4.1.1.9.2.1", "Hemodynamic Waveform Storage",
                 4, 8, None, _SB_SS, True),
        SopClass("1.2.840.10008.5.1.4.1.1.9.3.1", "Cardiac Electrophysiology Waveform Storage",
                 4, None, None, _SB_SS, True),
        SopClass("1.2.840.10008.5.1.4.1.1.9.5.1", "Arterial Pulse Waveform Storage",
                 1, 1, None, frozenset({"SB", "UB", "SS", "US"}), False),
        SopClass("1.2.840.10008.5.1.4.1.1.9.6.1", "Respiratory Waveform Storage",
                 1, 1, None, frozenset({"SB", "UB", "SS", "US"}), False),
        SopClass("1.2.840.10008.5.1.4.1.1.9.6.2", "Multi-channel Respiratory Waveform Storage",
                 None, None, None, _ALL, False),
        SopClass("1.2.840.10008.5.1.4.1.1.9.8.1", "Body Position Waveform Storage",
                 None, None, None, _ALL, False),
    )
}


@dataclass(frozen=True, slots=True)
class TransferSyntax:
    uid: str
    name: str
    implicit_vr: bool
    little_endian: bool
    deflated: bool = False


TRANSFER_SYNTAXES: dict[str, TransferSyntax] = {
    t.uid: t
    for t in (
        TransferSyntax("1.2.840.10008.1.2", "Implicit VR Little Endian", True, True),
        TransferSyntax("1.2.840.10008.1.2.1", "Explicit VR Little Endian", False, True),
        TransferSyntax("1.2.840.10008.1.2.1.99", "Deflated Explicit VR Little Endian",
                       False, True, deflated=True),
        TransferSyntax("1.2.840.10008.1.2.2", "Explicit VR Big Endian", False, False),
    )
}

# Lead codes: CID 3001. MDC values "2:n" and SCP-ECG values "5.6.3-9-n" share n.
_LEAD_NUMBERS: dict[int, str] = {
    1: "I", 2: "II", 3: "V1", 4: "V2", 5: "V3", 6: "V4", 7: "V5", 8: "V6",
    61: "III", 62: "aVR", 63: "aVL", 64: "aVF",
}

LEAD_CODES: dict[tuple[str, str], str] = {}
for _n, _lead in _LEAD_NUMBERS.items():
    LEAD_CODES[("MDC", f"2:{_n}")] = _lead
    LEAD_CODES[("SCPECG", f"5.6.3-9-{_n}")] = _lead
    # MDC's numeric form: partition 2 (MDC_ECG_LEAD), code n -> 2 * 65536 + n.
    LEAD_CODES[("MDC", str(2 * 65536 + _n))] = _lead


def lead_from_code(scheme: str, value: str) -> str | None:
    """Standard lead name for a CID 3001 code, else None."""
    return LEAD_CODES.get((scheme.strip().upper(), value.strip()))


_LEAD_TEXT = re.compile(
    r"^(?:(?:ecg\s+)?lead\s+)?(?P<name>i{1,3}|avr|avl|avf|v[1-6])(?:\s+lead)?$", re.IGNORECASE
)
_CANONICAL = {name.upper(): name for name in _LEAD_NUMBERS.values()}


def lead_from_text(text: str) -> str | None:
    """Standard lead name written as text ("Lead II", "aVR", "V1"), else None."""
    m = _LEAD_TEXT.match(text.strip())
    if m is None:
        return None
    return _CANONICAL[m.group("name").upper()]
