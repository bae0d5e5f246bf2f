"""Reading values out of a tokenised object: the machinery the decoders share.

`gather` finds, for every item of one kind at once, the elements we read;
`Fields` turns that into (offset, length) lists; `Reader` reads typed values at
those positions, copying no more than the value itself.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Literal

import numba
import numpy as np

from waveform.dicom.codes import TransferSyntax
from waveform.dicom.tokenize import Tokens, tag_str, vr_code
from waveform.errors import InvalidDicom
from waveform.model import Code

__all__ = ["CODE", "Fields", "Reader", "codes", "first_items", "gather", "items_of", "parse_ds",
           "tag", "text_decoder", "wanted"]


def tag(group: int, element: int) -> int:
    """The uint32 of tag (group, element), as `tokenize` reports it."""
    return (group << 16) | element


def wanted(table: dict[str, int]) -> tuple[list[str], np.ndarray]:
    """(keys, tags) of a table of the elements read from one kind of item."""
    return list(table), np.array(list(table.values()), np.uint32)


CODE = {
    "value": tag(0x0008, 0x0100), "scheme": tag(0x0008, 0x0102),
    "meaning": tag(0x0008, 0x0104), "long_value": tag(0x0008, 0x0119),
    "urn_value": tag(0x0008, 0x0120),
}
_CODE_KEYS, _CODE_TAGS = wanted(CODE)


@numba.njit(cache=True, nogil=True)
def gather(tags, parent, items, wanted):  # pragma: no cover - compiled
    """out[i, k]: token of the element ``wanted[k]`` directly inside ``items[i]``
    (-1 absent, -2 present more than once). ``items[i] == -1`` is the data set."""
    n = tags.size
    out = np.full((items.size, wanted.size), -1, np.int64)
    row = np.full(n + 1, -1, np.int64)  # row[p + 1] for parent token p (p = -1: data set)
    for i in range(items.size):
        row[items[i] + 1] = i
    for j in range(n):
        r = row[parent[j] + 1]
        if r < 0:
            continue
        t = tags[j]
        for k in range(wanted.size):
            if wanted[k] == t:
                out[r, k] = j if out[r, k] == -1 else -2
                break
    return out


@numba.njit(cache=True, nogil=True)
def first_items(tags, last, seqs):  # pragma: no cover - compiled
    """Token of the first Item of each sequence token in ``seqs`` (-1 if none)."""
    out = np.full(seqs.size, -1, np.int64)
    for i in range(seqs.size):
        s = seqs[i]
        if s >= 0 and last[s] > s + 1 and tags[s + 1] == 0xFFFEE000:
            out[i] = s + 1
    return out


@numba.njit(cache=True, nogil=True)
def _children(parent, last, seq):  # pragma: no cover - compiled
    lo = seq + 1
    hi = last[seq]
    count = 0
    for j in range(lo, hi):
        if parent[j] == seq:
            count += 1
    out = np.empty(count, np.int64)
    k = 0
    for j in range(lo, hi):
        if parent[j] == seq:
            out[k] = j
            k += 1
    return out


def items_of(tokens: Tokens, seq: int) -> np.ndarray:
    """Item tokens directly inside sequence token ``seq``."""
    return _children(tokens.parent, tokens.last, seq)


# --- text encodings ----------------------------------------------------------------------
_PY_CODECS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1",
              "ISO_IR 192": "utf-8", "ISO_IR 101": "iso8859-2", "ISO_IR 144": "iso8859-5",
              "ISO_IR 148": "iso8859-9", "ISO_IR 203": "iso8859-15", "GB18030": "gb18030",
              "GBK": "gbk"}


def text_decoder(charset: str) -> Callable[[bytes], str]:
    terms = [t.strip() for t in charset.split("\\")]
    if len(terms) == 1 and terms[0] in _PY_CODECS:
        codec = _PY_CODECS[terms[0]]
        return lambda b: b.decode(codec, errors="replace")
    from pydicom.charset import convert_encodings, decode_bytes

    encodings = convert_encodings(terms)
    return lambda b: decode_bytes(b, encodings, {0x5E, 0x3D})


class Reader:
    """Values of one object, read by (offset, length) from its buffer.

    A value at offset -1 is absent. ``text`` decodes text VRs with the object's
    Specific Character Set; other strings are ASCII (read as ISO 8859-1).
    """

    __slots__ = ("buf", "charset", "data", "implicit", "little", "order", "text", "tokens",
                 "warnings")

    def __init__(self, data: bytes | memoryview, buf: np.ndarray, ts: TransferSyntax,
                 tokens: Tokens) -> None:
        self.data = data if isinstance(data, bytes) else memoryview(data).cast("B")
        self.buf = buf
        self.little = ts.little_endian
        self.order: Literal["little", "big"] = "little" if ts.little_endian else "big"
        self.implicit = ts.implicit_vr
        self.tokens = tokens
        self.text: Callable[[bytes], str] = text_decoder("")
        self.charset = ""
        self.warnings: list[str] = []

    def raw(self, o: int, n: int) -> bytes:
        b = self.data[o:o + n]
        return b if isinstance(b, bytes) else bytes(b)

    def string(self, o: int, n: int, *, text: bool = False) -> str:
        """A string value (all values of a multi-valued element, backslash-joined)."""
        if o < 0 or n == 0:
            return ""
        b = self.raw(o, n)
        s = self.text(b) if text else b.decode("latin-1")
        return s.rstrip(" \x00").lstrip(" ")

    def ds(self, o: int, n: int, name: str, default: float | None = None) -> float | None:
        """First value of a DS element (``default`` when absent or empty)."""
        if o < 0:
            return default
        b = self.raw(o, n)
        first = b.split(b"\\", 1)[0].strip(b" \x00")
        if not first:
            return default
        try:
            return float(first)
        except ValueError:
            raise InvalidDicom(f"{name} holds {first!r}, expected a decimal number (DS)") from None

    def floats(self, o: int, n: int, vr: int) -> tuple[float, ...]:
        if o < 0:
            return ()
        b = self.raw(o, n)
        if vr == _VR_FD or vr == _VR_FL:
            fmt = ("<" if self.little else ">") + ("d" if vr == _VR_FD else "f") * (n // (
                8 if vr == _VR_FD else 4))
            return struct.unpack(fmt, b[:struct.calcsize(fmt)])
        out = []
        for part in b.split(b"\\"):
            part = part.strip(b" \x00")
            if part:
                try:
                    out.append(float(part))
                except ValueError:
                    self.warnings.append(f"value {part!r} is not a decimal number; ignored")
        return tuple(out)

    def uint(self, o: int, n: int, vr: int, name: str) -> int:
        """An unsigned integer of binary VR (US/UL/UV); IS strings are tolerated."""
        b = self.raw(o, n)
        if vr == _VR_IS or vr == _VR_DS:
            try:
                return int(float(b.strip(b" \x00").split(b"\\")[0]))
            except ValueError:
                raise InvalidDicom(f"{name} holds {b!r}, expected an integer") from None
        if n not in (2, 4, 8):
            raise InvalidDicom(f"{name} has a value of {n} bytes, expected 2, 4 or 8")
        return int.from_bytes(b, self.order)

    def uints(self, o: int, n: int, vr: int, width: int) -> tuple[int, ...]:
        """All values of a US/UL element; ``width`` applies when the VR is implicit."""
        if o < 0:
            return ()
        b = self.raw(o, n)
        if vr == _VR_IS:
            return tuple(int(x) for x in b.split(b"\\") if x.strip(b" \x00"))
        if vr:
            width = 4 if vr == _VR_UL else 2
        fmt = ("<" if self.little else ">") + ("I" if width == 4 else "H") * (n // width)
        return struct.unpack(fmt, b[:struct.calcsize(fmt)])


_VR_FD, _VR_FL, _VR_IS, _VR_DS, _VR_UL = (vr_code(v) for v in ("FD", "FL", "IS", "DS", "UL"))


@numba.njit(cache=True, nogil=True)
def _locations(idx, offs, lens, vrs):  # pragma: no cover - compiled
    """Value offset (-1 absent), length and VR of each gathered token; any duplicate?"""
    rows, cols = idx.shape
    o = np.full((rows, cols), -1, np.int64)
    n = np.zeros((rows, cols), np.int64)
    v = np.zeros((rows, cols), np.int64)
    dup = False
    for i in range(rows):
        for k in range(cols):
            j = idx[i, k]
            if j >= 0:
                o[i, k] = offs[j]
                n[i, k] = lens[j]
                v[i, k] = vrs[j]
            elif j == -2:
                dup = True
    return o, n, v, dup


class Fields:
    """For each item of one kind, where each wanted element's value is."""

    __slots__ = ("idx", "lens", "offs", "vrs")

    def __init__(self, tokens: Tokens, items: np.ndarray, wanted: np.ndarray, keys: list[str],
                 where: str) -> None:
        idx = gather(tokens.tags, tokens.parent, items, wanted)
        offs, lens, vrs, dup = _locations(idx, tokens.offs, tokens.lens, tokens.vrs)
        if dup:
            rows, cols = np.nonzero(idx == -2)
            k = int(cols[0])
            raise InvalidDicom(
                f"{where}: element {tag_str(int(wanted[k]))} ({keys[k]}) appears more than "
                f"once in item {int(rows[0]) + 1}; its value would be a guess"
            )
        self.idx = idx
        self.offs: list[list[int]] = offs.tolist()
        self.lens: list[list[int]] = lens.tolist()
        self.vrs: list[list[int]] = vrs.tolist()


_CODE_CACHE: dict[bytes, Code] = {}
_CODE_CACHE_LIMIT = 4096


def codes(r: Reader, tokens: Tokens, seqs: np.ndarray, where: str) -> list[Code | None]:
    """The first coded entry of each sequence token in ``seqs`` (None if absent).

    Codes repeat across objects (leads, units, measurement names), so decoded
    ones are kept keyed by their encoded item bytes.
    """
    items = first_items(tokens.tags, tokens.last, seqs)
    out: list[Code | None] = [None] * seqs.size
    present = np.flatnonzero(items >= 0)
    if present.size == 0:
        return out
    it = items[present]
    ends = tokens.last[it] - 1
    starts = tokens.offs[it].tolist()
    stops = (tokens.offs[ends] + np.where(ends > it, tokens.lens[ends], 0)).tolist()
    flag = (b"L" if r.little else b"B") + (b"I" if r.implicit else b"E") + r.charset.encode()
    keys = [flag + r.raw(a, b - a) for a, b in zip(starts, stops, strict=True)]
    missing = [i for i, k in enumerate(keys) if k not in _CODE_CACHE]
    if missing:
        if len(_CODE_CACHE) > _CODE_CACHE_LIMIT:
            _CODE_CACHE.clear()
        f = Fields(tokens, it[missing], _CODE_TAGS, _CODE_KEYS, where)
        for row, i in enumerate(missing):
            o, n = f.offs[row], f.lens[row]
            value = r.string(o[0], n[0]) or r.string(o[3], n[3]) or r.string(o[4], n[4])
            meaning = r.string(o[2], n[2], text=True)
            _CODE_CACHE[keys[i]] = Code(r.string(o[1], n[1]), value, meaning)
    for i, k in enumerate(present.tolist()):
        out[k] = _CODE_CACHE[keys[i]]
    return out




_POW10 = np.array([10.0 ** k for k in range(23)])


@numba.njit(cache=True, nogil=True)
def parse_ds(buf, offs, lens):  # pragma: no cover - compiled
    """First value of each DS string at (offs, lens); status 0 parsed, 1 absent or
    empty, 2 left to Python.

    Only Clinger's exact fast path is taken here (integer mantissa < 2**53 and a
    decimal exponent within +-22: one correctly rounded IEEE operation), so every
    value equals Python's ``float()``; anything else is status 2.
    """
    rows, cols = offs.shape
    values = np.zeros((rows, cols), np.float64)
    status = np.ones((rows, cols), np.int8)
    for i in range(rows):
        for j in range(cols):
            o = offs[i, j]
            if o < 0:
                continue
            end = o + lens[i, j]
            p = o
            while p < end and (buf[p] == 32 or buf[p] == 0):
                p += 1
            if p >= end or buf[p] == 92:  # empty, or empty first value
                continue
            neg = False
            if buf[p] == 45 or buf[p] == 43:
                neg = buf[p] == 45
                p += 1
            mant = 0
            digits = 0
            exp10 = 0
            seen_point = False
            ok = True
            while p < end:
                c = buf[p]
                if 48 <= c <= 57:
                    if mant < 900719925474099:  # keeps mant*10+9 < 2**53
                        mant = mant * 10 + (c - 48)
                        if seen_point:
                            exp10 -= 1
                    else:
                        ok = False
                        break
                    digits += 1
                elif c == 46 and not seen_point:
                    seen_point = True
                else:
                    break
                p += 1
            if ok and p < end and (buf[p] == 101 or buf[p] == 69):
                p += 1
                eneg = False
                if p < end and (buf[p] == 45 or buf[p] == 43):
                    eneg = buf[p] == 45
                    p += 1
                e = 0
                edigits = 0
                while p < end and 48 <= buf[p] <= 57 and edigits < 4:
                    e = e * 10 + (buf[p] - 48)
                    edigits += 1
                    p += 1
                if edigits == 0:
                    ok = False
                exp10 += -e if eneg else e
            while ok and p < end and (buf[p] == 32 or buf[p] == 0):
                p += 1
            if not ok or digits == 0 or (p < end and buf[p] != 92) or exp10 > 22 or exp10 < -22:
                status[i, j] = 2
                continue
            x = float(mant)
            if exp10 > 0:
                x = x * _POW10[exp10]
            elif exp10 < 0:
                x = x / _POW10[-exp10]
            values[i, j] = -x if neg else x
            status[i, j] = 0
    return values, status
