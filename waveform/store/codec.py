"""Lossless encodings of a multiplex group's sample bytes (the ``waveform.samples`` column).

A codec turns the exact bytes of one group's WaveformData (multiplexed: sample
major, channel minor, in the object's byte order) into a compressed blob and back,
byte for byte. Codecs are found by name in `CODECS`; the name is stored beside the
blob, so files written with an older default stay readable.

The default, ``delta-zz-shuffle-zstd``, was chosen by measurement on LUDB (12
leads, 500 Hz, 10 s; `bench/store.py` prints the table, `docs/storage.md` records
it): per channel, first differences in time (ECG samples are smooth, so the
differences are small), zig-zag mapped so that small negative numbers have zero
high bytes, the bytes shuffled into planes (all low bytes, then all high bytes),
then zstd. Integer arithmetic wraps, so every step is exactly invertible for any
input. Bytes that do not divide into whole samples fall back to plain zstd.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Protocol

import numba
import numpy as np
import pyarrow as pa

__all__ = [
    "CODECS",
    "DEFAULT_CODEC",
    "Codec",
    "DeltaShuffleCodec",
    "EncodedSamples",
    "ZstdCodec",
    "codec",
    "decode_channels",
    "decode_samples",
    "encode_samples",
    "warm_up",
]


@dataclass(frozen=True, slots=True)
class EncodedSamples:
    """A blob and what is needed to turn it back into the original bytes."""

    codec: str
    blob: bytes
    nbytes: int


class Codec(Protocol):
    """Encode a group's sample bytes losslessly; ``decode(encode(x)) == x``."""

    @property
    def name(self) -> str: ...

    def encode(self, data: bytes | memoryview, dtype: np.dtype[Any], n_channels: int) -> bytes: ...

    def decode(self, blob: bytes, nbytes: int, dtype: np.dtype[Any], n_channels: int) -> bytes: ...

    def decode_channels(
        self, blob: bytes, nbytes: int, dtype: np.dtype[Any], n_channels: int
    ) -> np.ndarray:
        """The decoded samples as a read-only (channels, samples) array of ``dtype``."""
        ...


@functools.cache
def _zstd_codec(level: int) -> pa.Codec:
    return pa.Codec("zstd", compression_level=level)


def _zstd(data: bytes | memoryview | np.ndarray, level: int) -> bytes:
    return bytes(_zstd_codec(level).compress(data, asbytes=True))


def _unzstd(blob: bytes, nbytes: int) -> bytes:
    return bytes(_zstd_codec(3).decompress(blob, decompressed_size=nbytes, asbytes=True))


@dataclass(frozen=True, slots=True)
class ZstdCodec:
    """zstd of the bytes as they are: the fallback, and the baseline in the table."""

    name: str = "zstd"
    level: int = 3

    def encode(self, data: bytes | memoryview, dtype: np.dtype[Any], n_channels: int) -> bytes:
        return _zstd(data, self.level)

    def decode(self, blob: bytes, nbytes: int, dtype: np.dtype[Any], n_channels: int) -> bytes:
        return _unzstd(blob, nbytes)

    def decode_channels(
        self, blob: bytes, nbytes: int, dtype: np.dtype[Any], n_channels: int
    ) -> np.ndarray:
        return _channels_view(_unzstd(blob, nbytes), dtype, n_channels)


# Kernels: plain arrays in and out. Values are viewed as unsigned integers so that
# subtraction and addition wrap (two's complement) and every step is a bijection.
# One pass each way: delta, zig-zag and byte shuffle fused, so that decoding one
# 12-lead ECG stays well under a millisecond.


@numba.njit(cache=True, nogil=True)
def _encode_kernel(x: np.ndarray, item: int, zigzag: bool) -> np.ndarray:  # pragma: no cover
    """(samples, channels) unsigned -> byte planes (item, channels * samples).

    Plane k holds byte k of every channel-major first difference. Arithmetic is
    done in uint64 and masked to the sample width, which is wrapping arithmetic.
    """
    n, c = x.shape
    bits = item * 8
    mask = np.uint64(0xFFFFFFFFFFFFFFFF) >> np.uint64(64 - bits)
    top = np.uint64(bits - 1)
    one = np.uint64(1)
    out = np.empty((item, c * n), dtype=np.uint8)
    for j in range(c):
        prev = np.uint64(0)
        for i in range(n):
            v = np.uint64(x[i, j])
            d = (v - prev) & mask
            prev = v
            if zigzag:
                # (d << 1) ^ (d >> bits-1, arithmetic): the sign bit smeared.
                smear = mask if (d >> top) & one else np.uint64(0)
                d = ((d << one) & mask) ^ smear
            k0 = j * n + i
            for k in range(item):
                out[k, k0] = np.uint8((d >> np.uint64(8 * k)) & np.uint64(0xFF))
    return out


@numba.njit(cache=True, nogil=True)
def _decode_kernel(planes: np.ndarray, out: np.ndarray, zigzag: bool) -> None:  # pragma: no cover
    """Inverse of `_encode_kernel`, written into ``out`` (samples, channels)."""
    n, c = out.shape
    item = planes.shape[0]
    bits = item * 8
    mask = np.uint64(0xFFFFFFFFFFFFFFFF) >> np.uint64(64 - bits)
    one = np.uint64(1)
    for j in range(c):
        acc = np.uint64(0)
        for i in range(n):
            k0 = j * n + i
            d = np.uint64(planes[0, k0])
            for k in range(1, item):
                d |= np.uint64(planes[k, k0]) << np.uint64(8 * k)
            if zigzag:
                d = (d >> one) ^ (mask if d & one else np.uint64(0))
            acc = (acc + d) & mask
            out[i, j] = acc


@numba.njit(cache=True, nogil=True)
def _encode16(x: np.ndarray, zigzag: bool) -> np.ndarray:  # pragma: no cover
    """`_encode_kernel` for 2-byte samples (every ECG we have seen): the same
    planes, in 32-bit arithmetic masked to 16 bits, about 3x faster."""
    n, c = x.shape
    out = np.empty((2, c * n), dtype=np.uint8)
    lo = out[0]
    hi = out[1]
    for j in range(c):
        prev = np.int32(0)
        base = j * n
        for i in range(n):
            v = np.int32(x[i, j])
            d = (v - prev) & 0xFFFF
            prev = v
            if zigzag:
                d = ((d << 1) & 0xFFFF) ^ (0xFFFF if d & 0x8000 else 0)
            lo[base + i] = d & 0xFF
            hi[base + i] = d >> 8
    return out


@numba.njit(cache=True, nogil=True)
def _decode16(planes: np.ndarray, out: np.ndarray, zigzag: bool) -> None:  # pragma: no cover
    """Inverse of `_encode16`, written into ``out`` (samples, channels; any layout:
    `decode_channels` passes the transpose of a channel-major array, so that each
    channel is written in order).

    Two passes per channel: the differences first (no dependency between samples,
    so the loop vectorises), then their running sum, a chain of one addition a
    sample; fused, the loop carried the zig-zag and the mask too (about 1.8x
    slower for a 12-lead 10 s 500 Hz group).
    """
    n, c = out.shape
    lo = planes[0]
    hi = planes[1]
    d = np.empty(n, dtype=np.int64)
    for j in range(c):
        base = j * n
        for i in range(n):
            v = np.int64(lo[base + i]) | (np.int64(hi[base + i]) << 8)
            if zigzag:
                v = (v >> 1) ^ (-(v & 1) & 0xFFFF)
            d[i] = v
        acc = np.int64(0)
        for i in range(n):
            acc += d[i]  # wraps at 2**63 only after 2**47 samples of 0xFFFF
            out[i, j] = acc & 0xFFFF


def _uint(itemsize: int) -> np.dtype[Any]:
    return np.dtype(f"<u{itemsize}")


@dataclass(frozen=True, slots=True)
class DeltaShuffleCodec:
    """Per-channel delta (optionally zig-zag), byte shuffle, zstd."""

    name: str = "delta-zz-shuffle-zstd"
    zigzag: bool = True
    #: zstd level 1, not 3: 40% less encode time on the ingest path for 2% more
    #: bytes on LUDB (4.53x against 4.63x; docs/storage.md). Decoding does not
    #: depend on the level, so rows written at any level stay readable.
    level: int = 1

    def encode(self, data: bytes | memoryview, dtype: np.dtype[Any], n_channels: int) -> bytes:
        item = dtype.itemsize
        n = len(data)
        if n_channels <= 0 or n % (item * n_channels):
            raise ValueError(
                f"{n} sample bytes do not divide into {n_channels} channels of {item} bytes"
            )
        # Byte order is part of the stored bytes; arithmetic happens on native
        # little-endian values and the original order is restored on decode.
        x = np.frombuffer(data, dtype=dtype.newbyteorder("<") if item > 1 else dtype)
        if dtype.byteorder == ">":
            x = np.frombuffer(data, dtype=dtype).astype(dtype.newbyteorder("<"))
        u = x.view(_uint(item)).reshape(-1, n_channels)
        planes = _encode16(u, self.zigzag) if item == 2 else _encode_kernel(u, item, self.zigzag)
        return _zstd(planes, self.level)

    def _decode_into(self, blob: bytes, nbytes: int, out: np.ndarray) -> None:
        """Decode into ``out`` (samples, channels) of unsigned integers, any layout."""
        item = out.dtype.itemsize
        planes = np.frombuffer(_unzstd(blob, nbytes), dtype=np.uint8).reshape(item, -1)
        if item == 2:
            _decode16(planes, out, self.zigzag)
        else:
            _decode_kernel(planes, out, self.zigzag)

    def decode(self, blob: bytes, nbytes: int, dtype: np.dtype[Any], n_channels: int) -> bytes:
        item = dtype.itemsize
        x = np.empty((nbytes // (item * n_channels), n_channels), dtype=_uint(item))
        self._decode_into(blob, nbytes, x)
        if dtype.byteorder == ">":
            return x.view(dtype.newbyteorder("<")).astype(dtype).tobytes()
        return x.tobytes()

    def decode_channels(
        self, blob: bytes, nbytes: int, dtype: np.dtype[Any], n_channels: int
    ) -> np.ndarray:
        # Channel-major: each channel is decoded into contiguous memory (the
        # kernel writes in order) and is contiguous for whoever reads it next.
        item = dtype.itemsize
        x = np.empty((n_channels, nbytes // (item * n_channels)), dtype=_uint(item))
        self._decode_into(blob, nbytes, x.T)
        out = x.view(dtype.newbyteorder("<")).astype(dtype) if dtype.byteorder == ">" \
            else x.view(dtype)
        out.flags.writeable = False
        return out


def _channels_view(data: bytes, dtype: np.dtype[Any], n_channels: int) -> np.ndarray:
    """Multiplexed sample bytes as a (channels, samples) view: the transpose."""
    return np.frombuffer(data, dtype=dtype).reshape(-1, n_channels).T


#: Every codec a stored row may name, by name. Add, never remove or change.
CODECS: dict[str, Codec] = {
    c.name: c
    for c in (
        ZstdCodec(),
        DeltaShuffleCodec(),
        DeltaShuffleCodec(name="delta-shuffle-zstd", zigzag=False),
    )
}

DEFAULT_CODEC = "delta-zz-shuffle-zstd"


def codec(name: str) -> Codec:
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(
            f"unknown sample codec {name!r}; this version reads {sorted(CODECS)}"
        ) from None


def encode_samples(
    data: bytes | memoryview,
    dtype: np.dtype[Any],
    n_channels: int,
    name: str = DEFAULT_CODEC,
) -> EncodedSamples:
    """Encode one group's sample bytes, falling back to zstd when they are ragged."""
    n = len(data)
    c = codec(name)
    if n_channels <= 0 or n % (dtype.itemsize * n_channels) or dtype.kind not in "iu":
        c = CODECS["zstd"]
    return EncodedSamples(c.name, c.encode(data, dtype, n_channels), n)


def decode_samples(
    enc: EncodedSamples, dtype: np.dtype[Any], n_channels: int
) -> bytes:
    """The exact bytes that `encode_samples` was given."""
    out = codec(enc.codec).decode(enc.blob, enc.nbytes, dtype, n_channels)
    if len(out) != enc.nbytes:
        raise ValueError(
            f"codec {enc.codec!r} decoded {len(out)} bytes, the row records {enc.nbytes}"
        )
    return out


def decode_channels(
    enc: EncodedSamples, dtype: np.dtype[Any], n_channels: int
) -> np.ndarray:
    """The samples `encode_samples` was given as a read-only (channels, samples)
    array of ``dtype``: the values of ``decode_samples`` without the bytes (for
    measuring and traces, where the multiplexed byte order is not needed)."""
    out = codec(enc.codec).decode_channels(enc.blob, enc.nbytes, dtype, n_channels)
    if out.nbytes != enc.nbytes:
        raise ValueError(
            f"codec {enc.codec!r} decoded {out.nbytes} bytes, the row records {enc.nbytes}"
        )
    return out


def warm_up() -> None:
    """Load the compiled kernels (from numba's cache) now rather than in the first
    ingest or read: about a second on a busy machine."""
    x = np.arange(24, dtype="<i2").tobytes()
    for dtype in ("<i2", "<i4"):
        enc = encode_samples(x, np.dtype(dtype), 2)
        decode_samples(enc, np.dtype(dtype), 2)
        decode_channels(enc, np.dtype(dtype), 2)
