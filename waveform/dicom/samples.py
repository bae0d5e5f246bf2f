"""From stored samples to physical values (PS3.3 C.10.9.1.4 and C.10.9.1.5).

The stored integers are kept as they are (``WaveformGroup.raw``); `physical`
undoes their storage form and scales them in one numba pass per group:

1. mu-law (MB) and A-law (AB) codes are expanded to 16-bit linear PCM
   (ITU-T G.711; the expansion used by common codecs, left-justified to 16 bits);
2. other samples are sign-extended (signed) or masked (unsigned) from Waveform
   Bits Stored when it is below Waveform Bits Allocated;
3. samples equal to the Waveform Padding Value become NaN;
4. value = sample * Channel Sensitivity * Channel Sensitivity Correction Factor
   + Channel Baseline, evaluated in float64 in that order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numba
import numpy as np

if TYPE_CHECKING:
    from waveform.model import WaveformGroup

__all__ = ["ALAW", "ULAW", "physical", "scale_kernel"]


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


@numba.njit(cache=True, nogil=True)
def scale_kernel(raw, table, shift, signed, mask, has_pad, pad, sens, corr, base,
                 out):  # pragma: no cover - compiled
    """out[c, s] = f(raw[c, s]) * sens[c] * corr[c] + base[c].

    ``table`` (256 entries) expands companded 8-bit codes when non-empty;
    ``shift`` > 0 sign-extends from (64 - shift) bits (signed) or applies
    ``mask`` (unsigned); padding samples (compared before any of this) are NaN.
    Channel-major so that the output is written contiguously.
    """
    n_ch, n_s = raw.shape
    plain = table.size != 256 and shift == 0 and not has_pad
    for c in range(n_ch):
        sc = sens[c]
        cc = corr[c]
        bc = base[c]
        row = out[c]
        if plain:
            for s in range(n_s):
                row[s] = np.float64(raw[c, s]) * sc * cc + bc
            continue
        for s in range(n_s):
            v = raw[c, s]
            if has_pad and v == pad:
                row[s] = np.nan
                continue
            if table.size == 256:
                x = table[np.int64(v) & 0xFF]
            elif shift > 0:
                if signed:
                    x = np.float64((np.int64(v) << shift) >> shift)
                else:
                    x = np.float64(np.uint64(v) & np.uint64(mask))
            else:
                x = np.float64(v)
            row[s] = x * sc * cc + bc


_EMPTY = np.empty(0, np.float64)


def physical(group: WaveformGroup) -> np.ndarray:
    """float64 (channels, samples) of ``group`` in each channel's units."""
    raw = group.raw
    n_ch = raw.shape[0]
    sens = np.fromiter((c.sensitivity for c in group.channels), np.float64, n_ch)
    corr = np.fromiter((c.correction for c in group.channels), np.float64, n_ch)
    base = np.fromiter((c.baseline for c in group.channels), np.float64, n_ch)
    interp = group.interpretation
    table = ULAW if interp == "MB" else ALAW if interp == "AB" else _EMPTY
    bits = raw.dtype.itemsize * 8
    signed = raw.dtype.kind == "i"
    # Bits Stored is per channel in the standard but one value in practice; the
    # narrowest declared width is applied to the whole group.
    stored = [c.bits_stored for c in group.channels if c.bits_stored]
    bits_stored = min(stored) if stored else bits
    shift = 0
    mask = 0
    if table.size == 0 and 0 < bits_stored < bits:
        # Signed: shift into the int64 sign bit and back (sign extension).
        # Unsigned: keep the low bits_stored bits.
        shift = 64 - bits_stored
        mask = (1 << bits_stored) - 1
    pads = {c.padding for c in group.channels if c.padding is not None}
    has_pad = len(pads) == 1
    pad = pads.pop() if has_pad else 0
    out = np.empty(raw.shape, np.float64)
    if raw.size:
        scale_kernel(raw, table, shift, signed, mask, has_pad, raw.dtype.type(pad) if has_pad
                     else raw.dtype.type(0), sens, corr, base, out)
    return out
