"""Raw integer samples -> float32 microvolts.

Physical value = raw * sensitivity * correction + baseline, in the channel's
units (DICOM PS3.3 C.10.9.1.4.3); we then convert every voltage unit to µV so
that everything downstream (filters, thresholds, measurements) works in one unit.
Units are UCUM codes (DICOM uses UCUM for Channel Sensitivity Units, PS3.16 CID 3082).
"""

from __future__ import annotations

import numba
import numpy as np

from waveform.errors import InvalidArgument

__all__ = ["VOLT_TO_UV", "to_microvolts", "uv_factor"]

#: UCUM voltage unit -> factor to microvolts. A table, not a chain of ifs, so
#: that it can be checked against UCUM's prefixes at a glance.
VOLT_TO_UV: dict[str, float] = {
    "V": 1e6,
    "dV": 1e5,
    "cV": 1e4,
    "mV": 1e3,
    "uV": 1.0,
    "µV": 1.0,  # seen in the wild although UCUM spells it "uV"
    "nV": 1e-3,
    "pV": 1e-6,
    "kV": 1e9,
}


def uv_factor(units: str | None) -> float:
    """Factor that turns a value in ``units`` into microvolts.

    ``None`` (no Channel Sensitivity Units) is taken as µV, the unit every ECG
    cart we have seen uses when it omits the attribute.
    """
    if units is None or units == "":
        return 1.0
    key = units.strip()
    factor = VOLT_TO_UV.get(key)
    if factor is None:
        raise InvalidArgument(
            f"channel units {units!r} are not a voltage; expected one of {sorted(VOLT_TO_UV)}"
        )
    return factor


@numba.njit(cache=True, nogil=True)
def _scale(
    raw: np.ndarray,
    gain: np.ndarray,
    offset: np.ndarray,
    padding: np.ndarray,
    has_padding: np.ndarray,
) -> np.ndarray:
    n_ch, n = raw.shape
    out = np.empty((n_ch, n), dtype=np.float32)
    for c in range(n_ch):
        g = gain[c]
        o = offset[c]
        pad = padding[c]
        row = raw[c]
        dst = out[c]
        if has_padding[c]:
            for i in range(n):
                v = row[i]
                dst[i] = np.nan if v == pad else np.float32(v * g + o)
        else:
            # Without a padding value the loop has no branch and vectorises.
            for i in range(n):
                dst[i] = np.float32(row[i] * g + o)
    return out


def to_microvolts(
    raw: np.ndarray,
    sensitivity: np.ndarray | list[float],
    correction: np.ndarray | list[float] | None = None,
    baseline: np.ndarray | list[float] | None = None,
    units: list[str | None] | tuple[str | None, ...] | None = None,
    padding: list[int | None] | tuple[int | None, ...] | None = None,
) -> np.ndarray:
    """float32 (channels, samples) in µV from integer ``raw`` (channels, samples).

    Per channel: ``(raw * sensitivity * correction + baseline) * uv_factor(units)``;
    samples equal to the channel's padding value become NaN (they carry no
    measurement, PS3.3 C.10.9.1.6).
    """
    raw = np.asarray(raw)
    if raw.ndim != 2:
        raise InvalidArgument(f"raw must be (channels, samples), got shape {raw.shape}")
    n_ch = raw.shape[0]
    sens = np.asarray(sensitivity, dtype=np.float64).reshape(-1)
    corr = (
        np.ones(n_ch) if correction is None else np.asarray(correction, np.float64).reshape(-1)
    )
    base = np.zeros(n_ch) if baseline is None else np.asarray(baseline, np.float64).reshape(-1)
    for name, arr in (("sensitivity", sens), ("correction", corr), ("baseline", base)):
        if arr.shape[0] != n_ch:
            raise InvalidArgument(f"{name} has {arr.shape[0]} values for {n_ch} channels")
    unit_list = list(units) if units is not None else [None] * n_ch
    if len(unit_list) != n_ch:
        raise InvalidArgument(f"units has {len(unit_list)} values for {n_ch} channels")
    f = np.array([uv_factor(u) for u in unit_list])
    pads = list(padding) if padding is not None else [None] * n_ch
    pad_val = np.array([0 if p is None else p for p in pads], dtype=np.int64)
    has_pad = np.array([p is not None for p in pads], dtype=np.bool_)
    if not np.issubdtype(raw.dtype, np.integer):
        raw = raw.astype(np.float64)
    return _scale(raw, sens * corr * f, base * f, pad_val, has_pad)
