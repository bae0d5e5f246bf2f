"""Byte-exact retention: cut the samples out of an object and put them back.

The archive keeps the samples of each multiplex group as compressed, queryable
columns and the rest of the object (the "header") beside them. `split` returns
the header and, per group, exactly its channels x samples x bytes of Waveform
Data in the object's byte order (for a little endian object that is
``group.raw.T.tobytes()``); `join` restores the original bytes.

The header is the object with those ranges removed, followed by a trailer that
says where they were::

    header = object minus ranges | (offset u64, length u64) * n | n u32 | b"WFSPLIT1"

A deflated object cannot be cut without re-deflating it, so it is kept whole:
its header is the object and there are no ranges.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from waveform.dicom.decode import _G, _GROUP_KEYS, _GROUP_TAGS, locate
from waveform.dicom.values import Fields, Reader, gather, items_of
from waveform.errors import InvalidArgument, InvalidDicom
from waveform.model import SAMPLE_DTYPES

__all__ = ["MAGIC", "join", "sample_ranges", "split"]

MAGIC = b"WFSPLIT1"
_RANGE = struct.Struct("<QQ")
_COUNT = struct.Struct("<I")


def sample_ranges(data: bytes | memoryview) -> list[tuple[int, int]]:
    """(offset, length) in ``data`` of each multiplex group's sample bytes."""
    body, buf, ts, tokens, _ = locate(data)
    if ts.deflated:
        return []
    r = Reader(body, buf, ts, tokens)
    root = gather(tokens.tags, tokens.parent, np.array([-1], np.int64),
                   np.array([0x54000100], np.uint32))
    seq = int(root[0, 0])
    if seq < 0:
        raise InvalidDicom("the object has no Waveform Sequence (5400,0100)")
    items = items_of(tokens, seq)
    f = Fields(tokens, items, _GROUP_TAGS, _GROUP_KEYS, "Waveform Sequence (5400,0100)")
    out = []
    for gi, row in enumerate(f.idx.tolist()):
        e = dict(zip(_GROUP_KEYS, row, strict=True))
        where = f"multiplex group {gi + 1}"
        if min(e["n_channels"], e["n_samples"], e["bits"], e["interpretation"], e["data"]) < 0:
            raise InvalidDicom(f"{where} lacks one of Number of Waveform Channels, Number of "
                               "Waveform Samples, Bits Allocated, Sample Interpretation or Data")
        o, n, v = f.offs[gi], f.lens[gi], f.vrs[gi]
        n_ch = r.uint(o[_G["n_channels"]], n[_G["n_channels"]], v[_G["n_channels"]],
                      "Number of Waveform Channels")
        n_s = r.uint(o[_G["n_samples"]], n[_G["n_samples"]], v[_G["n_samples"]],
                     "Number of Waveform Samples")
        bits = r.uint(o[_G["bits"]], n[_G["bits"]], v[_G["bits"]], "Waveform Bits Allocated")
        ki = _G["interpretation"]
        dtype = SAMPLE_DTYPES.get((bits, r.string(o[ki], n[ki])))
        if dtype is None:
            raise InvalidDicom(f"{where}: unsupported sample format ({bits} bits)")
        length = n_ch * n_s * dtype.itemsize
        if length > int(tokens.lens[e["data"]]):
            raise InvalidDicom(f"{where}: Waveform Data (5400,1010) holds "
                               f"{int(tokens.lens[e['data']])} bytes, fewer than the {length} "
                               "its channels and samples need")
        out.append((int(tokens.offs[e["data"]]), length))
    return out


def split(data: bytes | memoryview) -> tuple[bytes, list[memoryview]]:
    """(header, sample bytes of each group); ``join(*split(x)) == x``."""
    mv = memoryview(data).cast("B")
    ranges = sample_ranges(mv)
    parts: list[bytes | memoryview] = []
    groups: list[memoryview] = []
    pos = 0
    for off, length in sorted(ranges):
        parts.append(mv[pos:off])
        groups.append(mv[off:off + length])
        pos = off + length
    parts.append(mv[pos:])
    trailer = b"".join(_RANGE.pack(o, n) for o, n in sorted(ranges))
    header = b"".join([*parts, trailer, _COUNT.pack(len(ranges)), MAGIC])
    return header, groups


def join(header: bytes | memoryview, groups: Sequence[bytes | memoryview | np.ndarray]) -> bytes:
    """The original object from `split`'s header and the groups' sample bytes."""
    h = memoryview(header).cast("B")
    tail = len(MAGIC) + _COUNT.size
    if len(h) < tail or bytes(h[-len(MAGIC):]) != MAGIC:
        raise InvalidArgument("header does not end with the split trailer (WFSPLIT1); "
                              "it was not made by waveform.dicom.split")
    (count,) = _COUNT.unpack(h[-tail:-len(MAGIC)])
    table_start = len(h) - tail - count * _RANGE.size
    if table_start < 0:
        raise InvalidArgument(f"split trailer declares {count} ranges, more than the header holds")
    if count != len(groups):
        raise InvalidArgument(f"header was split into {count} sample ranges but {len(groups)} "
                              "groups were given")
    ranges = [_RANGE.unpack_from(h, table_start + i * _RANGE.size) for i in range(count)]
    parts: list[bytes | memoryview] = []
    pos_obj = 0
    pos_hdr = 0
    for i, (off, length) in enumerate(ranges):
        gi = groups[i]
        buf: bytes | memoryview = (np.ascontiguousarray(gi).tobytes() if isinstance(gi, np.ndarray)
                                   else gi)
        g = memoryview(buf).cast("B")
        if len(g) != length:
            raise InvalidArgument(f"group {i + 1} has {len(g)} sample bytes, the header expects "
                                  f"{length}")
        gap = off - pos_obj
        if gap < 0 or pos_hdr + gap > table_start:
            raise InvalidArgument("split trailer ranges are out of order or past the header")
        parts.append(h[pos_hdr:pos_hdr + gap])
        parts.append(g)
        pos_hdr += gap
        pos_obj = off + length
    parts.append(h[pos_hdr:table_start])
    return b"".join(parts)
