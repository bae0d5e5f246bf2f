"""The element walker: one numba pass over a DICOM data set (PS3.5 section 7).

`tokenize` returns a flat table of every element and item in document order:
tag, VR, value offset, value length, the token index of the enclosing item (or
-1 at the top level) and, for items and sequences, the index one past their last
descendant. Nothing is copied: values stay in the caller's buffer and are read
by offset. Errors come back as a code and a byte position; `TokenError` turns
them into a message naming the element.

Lengths are checked in 64-bit against the enclosing container before anything
is skipped, nesting is limited, and the output arrays are bounded by the input
size (an element takes at least 8 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from pydicom.datadict import DicomDictionary

from waveform.errors import InvalidDicom, LimitExceeded

__all__ = ["MAX_DEPTH", "Tokens", "tokenize", "vr_code", "vr_name"]

#: Nesting limit (sequences and items both count); waveform objects need 6.
MAX_DEPTH = 32

ITEM = np.uint32(0xFFFEE000)
ITEM_END = np.uint32(0xFFFEE00D)
SEQ_END = np.uint32(0xFFFEE0DD)
UNDEFINED = 0xFFFFFFFF


def vr_code(vr: str) -> int:
    """Two ASCII letters packed as the little-endian uint16 they are on disk."""
    return ord(vr[0]) | (ord(vr[1]) << 8)


def vr_name(code: int) -> str:
    if code == 0:
        return "--"
    return chr(code & 0xFF) + chr(code >> 8)


VR_SQ = vr_code("SQ")
VR_UN = vr_code("UN")
VR_ITEM = 1  # marks item tokens
# VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2), as a lookup table.
_LONG_VRS = np.zeros(65536, np.bool_)
for _vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"):
    _LONG_VRS[vr_code(_vr)] = True
# Implicit VR needs the dictionary to tell a defined-length sequence from bytes.
_SQ_TAGS = np.array(sorted(t for t, e in DicomDictionary.items() if e[0] == "SQ"), dtype=np.uint32)

# Error codes of the kernel; `TokenError.message` turns them into words.
OK, TRUNCATED, OVERRUN, DEPTH, STRAY_ITEM, STRAY_DELIM, UNDEF_LEN, ELEM_IN_SEQ, BAD_VR, \
    TOO_MANY = range(10)


@numba.njit(cache=True, nogil=True, inline="always")
def _u16(buf: np.ndarray, p: int, little: bool) -> int:
    if little:
        return int(buf[p]) | (int(buf[p + 1]) << 8)
    return (int(buf[p]) << 8) | int(buf[p + 1])


@numba.njit(cache=True, nogil=True, inline="always")
def _u32(buf: np.ndarray, p: int, little: bool) -> int:
    if little:
        return (int(buf[p]) | (int(buf[p + 1]) << 8) | (int(buf[p + 2]) << 16)
                | (int(buf[p + 3]) << 24))
    return ((int(buf[p]) << 24) | (int(buf[p + 1]) << 16) | (int(buf[p + 2]) << 8)
            | int(buf[p + 3]))


@numba.njit(cache=True, nogil=True)
def _contains(sorted_arr: np.ndarray, value: np.uint32 | int) -> bool:
    i = np.searchsorted(sorted_arr, value)
    return bool(i < sorted_arr.size and sorted_arr[i] == value)


@numba.njit(cache=True, nogil=True)
def _walk(buf, start, end, little, implicit, long_vrs, sq_tags, max_depth, max_tokens,
          tags, vrs, offs, lens, parent, last):  # pragma: no cover - compiled
    # Container stack: level 0 is the data set; each SQ and item pushes a level.
    st_end = np.empty(max_depth + 1, np.int64)     # end offset, -1 if undefined length
    st_kind = np.empty(max_depth + 1, np.int8)     # 0 data set, 1 sequence, 2 item
    st_tok = np.empty(max_depth + 1, np.int64)     # token of the container
    st_impl = np.empty(max_depth + 1, np.bool_)    # implicit VR inside (UN sequences)
    st_end[0] = end
    st_kind[0] = 0
    st_tok[0] = -1
    st_impl[0] = implicit
    depth = 0
    n = 0
    pos = start
    while True:
        # Close every defined-length container that ends here.
        while depth > 0 and st_end[depth] >= 0 and pos >= st_end[depth]:
            if pos > st_end[depth]:
                return n, OVERRUN, pos, st_tok[depth]
            last[st_tok[depth]] = n
            depth -= 1
        if depth == 0 and pos >= end:
            break
        if pos + 8 > end:
            return n, TRUNCATED, pos, -1
        if n >= max_tokens:
            return n, TOO_MANY, pos, -1
        tag = np.uint32((_u16(buf, pos, little) << 16) | _u16(buf, pos + 2, little))
        kind = st_kind[depth]
        if tag == ITEM:
            if kind != 1:
                return n, STRAY_ITEM, pos, -1
            length = _u32(buf, pos + 4, little)
            pos += 8
            tags[n] = tag
            vrs[n] = 1
            offs[n] = pos
            lens[n] = length
            parent[n] = st_tok[depth]
            last[n] = n + 1
            if depth >= max_depth:
                return n, DEPTH, pos - 8, -1
            depth += 1
            st_kind[depth] = 2
            st_tok[depth] = n
            st_impl[depth] = st_impl[depth - 1]
            if length == 0xFFFFFFFF:
                st_end[depth] = -1
            else:
                if pos + length > st_end[depth - 1] and st_end[depth - 1] >= 0:
                    return n, OVERRUN, pos - 8, st_tok[depth - 1]
                if pos + length > end:
                    return n, TRUNCATED, pos - 8, -1
                st_end[depth] = pos + length
            n += 1
            continue
        if tag == ITEM_END or tag == SEQ_END:
            want = 2 if tag == ITEM_END else 1
            if kind != want or st_end[depth] >= 0:
                return n, STRAY_DELIM, pos, -1
            pos += 8
            last[st_tok[depth]] = n
            depth -= 1
            continue
        if kind == 1:
            return n, ELEM_IN_SEQ, pos, st_tok[depth]
        impl = st_impl[depth]
        if impl:
            vr = 0
            length = _u32(buf, pos + 4, little)
            hdr = 8
        else:
            vr = int(buf[pos + 4]) | (int(buf[pos + 5]) << 8)
            c0 = buf[pos + 4]
            c1 = buf[pos + 5]
            if not (65 <= c0 <= 90 and 65 <= c1 <= 90):
                return n, BAD_VR, pos, -1
            if long_vrs[vr]:
                if pos + 12 > end:
                    return n, TRUNCATED, pos, -1
                length = _u32(buf, pos + 8, little)
                hdr = 12
            else:
                length = _u16(buf, pos + 6, little)
                hdr = 8
        pos += hdr
        tags[n] = tag
        vrs[n] = vr
        offs[n] = pos
        lens[n] = length
        parent[n] = st_tok[depth]
        last[n] = n + 1
        is_sq = vr == VR_SQ or (impl and _contains(sq_tags, tag))
        if length == 0xFFFFFFFF:
            # Undefined length is allowed only for sequences; an explicit UN of
            # undefined length is a sequence encoded in implicit VR (PS3.5 6.2.2).
            if not (is_sq or vr == VR_UN or (impl and (tag >> 16) % 2 == 1)):
                return n, UNDEF_LEN, pos - hdr, -1
            if depth >= max_depth:
                return n, DEPTH, pos - hdr, -1
            depth += 1
            st_kind[depth] = 1
            st_tok[depth] = n
            st_end[depth] = -1
            st_impl[depth] = impl or vr == VR_UN
            vrs[n] = VR_SQ if vr == 0 else vr
            n += 1
            continue
        cend = end
        for d in range(depth, 0, -1):
            if st_end[d] >= 0:
                cend = st_end[d]
                break
        if pos + length > cend:
            if pos + length > end:
                return n, TRUNCATED, pos - hdr, -1
            return n, OVERRUN, pos - hdr, st_tok[depth]
        if is_sq:
            if depth >= max_depth:
                return n, DEPTH, pos - hdr, -1
            depth += 1
            st_kind[depth] = 1
            st_tok[depth] = n
            st_end[depth] = pos + length
            st_impl[depth] = impl
            vrs[n] = VR_SQ
            n += 1
            continue
        pos += length
        n += 1
    if depth != 0:
        return n, TRUNCATED, pos, st_tok[depth]
    return n, OK, pos, -1


_FIRST_CAPACITY = 4096


@dataclass(frozen=True, slots=True)
class Tokens:
    """The element table of one data set (all arrays have length ``n``)."""

    tags: np.ndarray     # uint32 (group << 16 | element)
    vrs: np.ndarray      # uint16 packed VR letters; 0 implicit, 1 item
    offs: np.ndarray     # int64 value offset in the buffer
    lens: np.ndarray     # int64 value length (0xFFFFFFFF undefined)
    parent: np.ndarray   # int64 token index of the enclosing item, -1 top level
    last: np.ndarray     # int64 one past the last descendant token

    @property
    def n(self) -> int:
        return int(self.tags.size)


_MESSAGES = {
    TRUNCATED: "its value runs past the end of the data (a truncated object or a corrupt "
               "length)",
    OVERRUN: "its length runs past the end of the enclosing {container}",
    DEPTH: f"sequences are nested deeper than {MAX_DEPTH} levels",
    STRAY_ITEM: "an Item (FFFE,E000) appears outside a sequence",
    STRAY_DELIM: "a delimiter (FFFE,E00D/E0DD) does not close an open undefined-length "
                 "item or sequence",
    UNDEF_LEN: "undefined length (FFFFFFFF) is allowed only for sequences",
    ELEM_IN_SEQ: "a data element appears directly inside a sequence, where only Items "
                 "(FFFE,E000) may",
    BAD_VR: "the VR is not two upper-case letters (not explicit VR, or corrupt)",
    TOO_MANY: "the object holds more elements than the limit",
}


def tokenize(
    buf: np.ndarray,
    start: int,
    *,
    little: bool = True,
    implicit: bool = False,
    end: int | None = None,
    max_tokens: int | None = None,
) -> Tokens:
    """Walk the data set in ``buf[start:end]`` (a uint8 array).

    Raises `InvalidDicom` (or `LimitExceeded`) naming the position and the
    element at fault.
    """
    stop = buf.size if end is None else end
    bound = (stop - start) // 8 + 2  # an element takes at least 8 bytes
    limit = bound if max_tokens is None else min(bound, max_tokens)
    # Start small (large empty arrays cost page faults), grow once if needed.
    cap = min(limit, _FIRST_CAPACITY)
    while True:
        tags = np.empty(cap, np.uint32)
        vrs = np.empty(cap, np.uint16)
        offs = np.empty(cap, np.int64)
        lens = np.empty(cap, np.int64)
        parent = np.empty(cap, np.int64)
        last = np.empty(cap, np.int64)
        n, err, pos, container = _walk(buf, start, stop, little, implicit, _LONG_VRS, _SQ_TAGS,
                                       MAX_DEPTH, cap, tags, vrs, offs, lens, parent, last)
        if err == TOO_MANY and cap < limit:
            cap = limit
            continue
        break
    if err != OK:
        _raise(buf, err, pos, container, tags, n, little)
    return Tokens(tags[:n], vrs[:n], offs[:n], lens[:n], parent[:n], last[:n])


def tag_str(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _raise(buf: np.ndarray, err: int, pos: int, container: int, tags: np.ndarray, n: int,
           little: bool) -> None:
    where = f"at byte {pos}"
    if 0 <= pos and pos + 4 <= buf.size:
        # Python ints throughout: a numpy uint8 shifted past 8 bits overflows (NumPy 2).
        b = [int(v) for v in buf[pos:pos + 4]]
        g, e = ((b[0] | b[1] << 8, b[2] | b[3] << 8) if little
                else (b[0] << 8 | b[1], b[2] << 8 | b[3]))
        where = f"element {tag_str((g << 16) | e)} at byte {pos}"
    text = _MESSAGES[err]
    if err == OVERRUN:
        name = tag_str(int(tags[container])) if 0 <= container < n else "data set"
        text = text.format(container=name if container >= 0 else "data set")
    cls = LimitExceeded if err in (DEPTH, TOO_MANY) else InvalidDicom
    raise cls(f"{where}: {text}")
