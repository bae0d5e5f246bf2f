"""Philips XLI: the compression of Sierra XML waveforms (LZW, then second differences).

The decoded ``parsedwaveforms`` bytes are one chunk per lead: an 8-byte header
(little-endian int32 size of the LZW data, two bytes not used here, the int16
first residual), then LZW codes of 10 bits, most significant bit first (0-255
literal bytes, 256-1022 built as the data is read, 1023 or the end of the data
stops). The decompressed bytes hold the high bytes of all 16-bit values, then
the low bytes. Value 0 and 1 are samples; each later value is the residual of a
second-order predictor (offset by 64, lagging one place), as the open reader
sierra-ecg-tools documents the format.
"""

from __future__ import annotations

import numpy as np

from waveform.errors import InvalidFile

__all__ = ["decode_xli"]

_BITS = 10
_MAX_CODE = (1 << _BITS) - 2
_HEADER = 8


def _lzw(chunk: bytes, fmt: str, where: str) -> bytearray:
    out = bytearray()
    table: list[bytes] = [bytes((i,)) for i in range(256)]
    previous = b""
    acc = 0
    nbits = 0
    for byte in chunk:
        acc = (acc << 8) | byte
        nbits += 8
        while nbits >= _BITS:
            nbits -= _BITS
            code = (acc >> nbits) & ((1 << _BITS) - 1)
            acc &= (1 << nbits) - 1
            if code > _MAX_CODE:
                return out
            if code < len(table):
                entry = table[code]
            elif code == len(table) and previous:
                entry = previous + previous[:1]
            else:
                raise InvalidFile(fmt, where, f"LZW code {code} refers to no entry "
                                  f"(the table holds {len(table)})")
            if previous and len(table) <= _MAX_CODE:
                table.append(previous + entry[:1])
            previous = entry
            out += entry
    return out


def _undelta(values: np.ndarray, first: int) -> np.ndarray:
    """Samples from XLI residuals: z[i] = 2 z[i-1] - z[i-2] - d[i], d[2] = first,
    d[i] = values[i-1] - 64 (exact in int64: two cumulative sums)."""
    n = values.size
    z = values.astype(np.int64)
    if n <= 2:
        return z
    d = np.empty(n - 2, dtype=np.int64)
    d[0] = first
    d[1:] = z[2:n - 1] - 64
    steps = (z[1] - z[0]) - np.cumsum(d)
    out = np.empty(n, dtype=np.int64)
    out[:2] = z[:2]
    out[2:] = z[1] + np.cumsum(steps)
    return out


def decode_xli(data: bytes, fmt: str, field: str) -> list[np.ndarray]:
    """The leads' samples (int64, exact) of XLI-compressed ``data``."""
    leads: list[np.ndarray] = []
    offset = 0
    while offset < len(data):
        where = f"{field} chunk {len(leads) + 1} at byte {offset}"
        if len(data) - offset < _HEADER:
            raise InvalidFile(fmt, where, f"{len(data) - offset} bytes left, a chunk header "
                              f"needs {_HEADER}")
        size = int.from_bytes(data[offset:offset + 4], "little", signed=True)
        first = int.from_bytes(data[offset + 6:offset + 8], "little", signed=True)
        offset += _HEADER
        if size < 0 or size > len(data) - offset:
            raise InvalidFile(fmt, where, f"says {size} bytes of LZW data, "
                              f"{len(data) - offset} remain")
        raw = _lzw(data[offset:offset + size], fmt, where)
        offset += size
        if len(raw) % 2:
            raw.append(0)
        half = len(raw) // 2
        planes = np.frombuffer(bytes(raw), dtype=np.uint8)
        values = ((planes[:half].astype(np.uint16) << 8) | planes[half:]).view(np.int16)
        leads.append(_undelta(values, first))
    return leads
