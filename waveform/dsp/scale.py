"""Stored samples -> physical values: the one scaling kernel.

Every consumer (the analysis, `GetTrace`, the printout, WFDB export) turns stored
integers into physical values here, so that they agree to the bit. Per channel,
in this order (PS3.3 C.10.9.1.4 and C.10.9.1.5):

1. samples equal to the padding value are NaN (PS3.3 C.10.9.1.6: no sample),
   compared in the stored form, before anything else;
2. mu-law (MB) and A-law (AB) codes are expanded to 16-bit linear PCM (ITU-T
   G.711; the expansion used by common codecs, left-justified to 16 bits);
3. other samples are sign-extended (signed) or masked (unsigned) from Waveform
   Bits Stored when it is below Waveform Bits Allocated (a 12-bit cart storing
   0x0FFF in int16 means -1);
4. value = sample * Channel Sensitivity * Channel Sensitivity Correction Factor
   + Channel Baseline, in float64 in that order; `to_microvolts` then multiplies
   by the unit's factor to µV (UCUM codes, PS3.16 CID 3082) and gives float32.

Whether a declared padding value is padding at all is decided once, when an
object is decoded (`padding_note`): a value the signal itself takes is a sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

from waveform.errors import InvalidArgument

__all__ = ["ALAW", "ULAW", "VOLT_TO_UV", "padding_note", "scale_kernel", "storage_form",
           "to_microvolts", "to_physical", "uv_factor"]

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


def _ulaw_table() -> np.ndarray:
    # G.711 mu-law expansion: complement, then sign, 3-bit segment, 4-bit step.
    codes = ~np.arange(256, dtype=np.int64) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign != 0, -magnitude, magnitude).astype(np.float64)


def _alaw_table() -> np.ndarray:
    # G.711 A-law expansion: even bits inverted (XOR 0x55), then sign/segment/step.
    codes = np.arange(256, dtype=np.int64) ^ 0x55
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(sign != 0, magnitude, -magnitude).astype(np.float64)


ULAW = _ulaw_table()
ALAW = _alaw_table()
ULAW.flags.writeable = False
ALAW.flags.writeable = False
_LINEAR = np.empty(0, np.float64)

#: Sample interpretation -> its G.711 expansion table (empty: linear samples).
_COMPANDING: dict[str, np.ndarray] = {"MB": ULAW, "AB": ALAW}


@numba.njit(cache=True, nogil=True)
def scale_kernel(raw, table, shift, signed, mask, has_pad, pad, sens, corr, base, factor,
                 out):  # pragma: no cover - compiled
    """out[c, s] = (f(raw[c, s]) * sens[c] * corr[c] + base[c]) * factor[c].

    ``table`` (256 entries) expands companded 8-bit codes when non-empty;
    ``shift`` > 0 sign-extends from (64 - shift) bits (signed) or applies
    ``mask`` (unsigned); a sample equal to ``pad[c]`` where ``has_pad[c]`` is NaN
    (compared before any of this). Channel-major: the output is written contiguously.
    """
    n_ch, n_s = raw.shape
    companded = table.size == 256
    for c in range(n_ch):
        sc = sens[c]
        cc = corr[c]
        bc = base[c]
        fc = factor[c]
        row = out[c]
        padded = has_pad[c]
        pc = pad[c]
        if not companded and shift == 0 and not padded:
            # The common case has no branch in its loop and vectorises.
            for s in range(n_s):
                row[s] = (np.float64(raw[c, s]) * sc * cc + bc) * fc
            continue
        for s in range(n_s):
            v = raw[c, s]
            if padded and v == pc:
                row[s] = np.nan
                continue
            if companded:
                x = table[np.int64(v) & 0xFF]
            elif shift > 0:
                if signed:
                    x = np.float64((np.int64(v) << shift) >> shift)
                else:
                    x = np.float64(np.uint64(v) & np.uint64(mask))
            else:
                x = np.float64(v)
            row[s] = (x * sc * cc + bc) * fc


def storage_form(interpretation: str, dtype: np.dtype[np.generic], bits_stored: int | None
                 ) -> tuple[np.ndarray, int, int]:
    """(G.711 table or empty, sign-extension shift, unsigned mask) of samples stored
    as ``interpretation`` in ``dtype`` with ``bits_stored`` significant bits."""
    table = _COMPANDING.get(interpretation, _LINEAR)
    bits = dtype.itemsize * 8
    if table.size or not bits_stored or not 0 < bits_stored < bits:
        return table, 0, 0
    # Signed: shift into the int64 sign bit and back. Unsigned: keep the low bits.
    return table, 64 - bits_stored, (1 << bits_stored) - 1


def _per_channel(name: str, values: Sequence[float] | np.ndarray | None, n_ch: int,
                 default: float) -> np.ndarray:
    if values is None:
        return np.full(n_ch, default)
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.shape[0] != n_ch:
        raise InvalidArgument(f"{name} has {arr.shape[0]} values for {n_ch} channels")
    return arr


def to_physical(raw: np.ndarray, sensitivity: Sequence[float] | np.ndarray,
                correction: Sequence[float] | np.ndarray | None = None,
                baseline: Sequence[float] | np.ndarray | None = None, *,
                padding: Sequence[int | None] | None = None, interpretation: str = "",
                bits_stored: int | None = None,
                factor: Sequence[float] | np.ndarray | None = None,
                dtype: type[np.floating] = np.float64) -> np.ndarray:
    """(channels, samples) of ``raw`` in each channel's units (times ``factor``),
    as ``dtype``: the steps of the module docstring, in one numba pass."""
    raw = np.asarray(raw)
    if raw.ndim != 2:
        raise InvalidArgument(f"raw must be (channels, samples), got shape {raw.shape}")
    n_ch = raw.shape[0]
    sens = _per_channel("sensitivity", sensitivity, n_ch, 1.0)
    corr = _per_channel("correction", correction, n_ch, 1.0)
    base = _per_channel("baseline", baseline, n_ch, 0.0)
    fac = _per_channel("factor", factor, n_ch, 1.0)
    pads = list(padding) if padding is not None else [None] * n_ch
    if len(pads) != n_ch:
        raise InvalidArgument(f"padding has {len(pads)} values for {n_ch} channels")
    if not np.issubdtype(raw.dtype, np.integer):
        raw = raw.astype(np.float64)
        table, shift, mask = _LINEAR, 0, 0
    else:
        table, shift, mask = storage_form(interpretation, raw.dtype, bits_stored)
    pad = np.array([0 if p is None else p for p in pads], dtype=raw.dtype)
    has_pad = np.array([p is not None for p in pads], dtype=np.bool_)
    out = np.empty(raw.shape, dtype)
    if raw.size:
        scale_kernel(raw, table, shift, raw.dtype.kind == "i", mask, has_pad, pad, sens, corr,
                     base, fac, out)
    return out


def to_microvolts(
    raw: np.ndarray,
    sensitivity: np.ndarray | list[float],
    correction: np.ndarray | list[float] | None = None,
    baseline: np.ndarray | list[float] | None = None,
    units: list[str | None] | tuple[str | None, ...] | None = None,
    padding: list[int | None] | tuple[int | None, ...] | None = None,
    *,
    interpretation: str = "",
    bits_stored: int | None = None,
) -> np.ndarray:
    """float32 (channels, samples) in µV from integer ``raw`` (channels, samples):
    `to_physical` times each channel's unit factor (`uv_factor`). Pass the group's
    ``interpretation`` and ``bits_stored`` (`WaveformGroup.microvolts` does) so that
    companded and narrower-than-allocated samples are read as stored."""
    raw = np.asarray(raw)
    n_ch = raw.shape[0] if raw.ndim == 2 else 0
    unit_list = list(units) if units is not None else [None] * n_ch
    if len(unit_list) != n_ch:
        raise InvalidArgument(f"units has {len(unit_list)} values for {n_ch} channels")
    return to_physical(raw, sensitivity, correction, baseline, padding=padding,
                       interpretation=interpretation, bits_stored=bits_stored,
                       factor=[uv_factor(u) for u in unit_list], dtype=np.float32)


@numba.njit(cache=True, nogil=True)
def _padding_inside(raw, pad):  # pragma: no cover - compiled
    """(samples equal to ``pad``, whether ``pad`` lies strictly between the lowest
    and highest other sample of some channel that holds it)."""
    n_ch, n_s = raw.shape
    total = 0
    inside = False
    for c in range(n_ch):
        count = 0
        below = False
        above = False
        for s in range(n_s):
            v = raw[c, s]
            if v == pad:
                count += 1
            elif v < pad:
                below = True
            else:
                above = True
        total += count
        if count and below and above:
            inside = True
    return total, inside


def padding_note(raw: np.ndarray, pad: int) -> str | None:
    """Why ``pad``, a group's declared Waveform Padding Value, is not padding in
    ``raw`` (channels, samples), or None when it is.

    Padding fills what a channel did not record, so a padder chooses a value the
    signal never takes (the type's extreme, -32768 for SS). When a channel holds
    the value with samples below and above it, the signal takes it: the cart
    declared a padding value it does not use (the ECG Toolkit example declares 0
    and its leads cross zero 1,269 times), and those samples are measurements.
    """
    raw = np.asarray(raw)
    if raw.ndim != 2 or not raw.size:
        return None
    count, inside = _padding_inside(raw, raw.dtype.type(pad))
    if not inside:
        return None
    return (f"Waveform Padding Value (5400,100A) {pad} lies inside the signal ({count:,} "
            "samples hold it, with samples below and above it in the same channel): they "
            "are taken as measured values, not as padding")
