"""`decode(bytes) -> Ecg`: the hot path from a DICOM waveform object to the model.

One numba pass (`tokenize`) lists every element; a second (`_gather`) finds, for
each item of interest, the elements we read; values are then read straight from
the buffer and the samples are viewed, not copied. pydicom is the oracle in the
tests, not a dependency of this path.

Real carts send imperfect objects. What can be decoded without guessing is
accepted and each deviation is recorded in ``Ecg.warnings``; what cannot is
refused with `InvalidDicom` naming the element, the value and what was expected.
"""

from __future__ import annotations

import datetime as dt
import re
import zlib
from collections.abc import Callable
import numba
import numpy as np
from pydicom.uid import UID

from waveform.dicom.codes import (
    SOP_CLASSES,
    TRANSFER_SYNTAXES,
    SopClass,
    TransferSyntax,
    lead_from_code,
    lead_from_text,
)
from waveform.dicom.tokenize import (
    Tokens,
    tag_str,
    tokenize,
    vr_code,
)
from waveform.errors import InvalidDicom, LimitExceeded, UnsupportedObject
from waveform.model import SAMPLE_DTYPES, Annotation, Channel, Code, Ecg, WaveformGroup

__all__ = ["MAX_INFLATED_RATIO", "decode", "locate"]

#: A deflated body may expand to at most this many times its compressed size.
MAX_INFLATED_RATIO = 64
_MIN_INFLATE_CAP = 64 << 20

EXPLICIT_LE = TRANSFER_SYNTAXES["1.2.840.10008.1.2.1"]
IMPLICIT_LE = TRANSFER_SYNTAXES["1.2.840.10008.1.2"]
EXPLICIT_BE = TRANSFER_SYNTAXES["1.2.840.10008.1.2.2"]


def _t(group: int, element: int) -> int:
    return (group << 16) | element


# --- the elements we read, per kind of item ----------------------------------------------
ROOT = {
    "charset": _t(0x0008, 0x0005), "sop_class": _t(0x0008, 0x0016),
    "sop_instance": _t(0x0008, 0x0018), "study_date": _t(0x0008, 0x0020),
    "acq_date": _t(0x0008, 0x0022), "content_date": _t(0x0008, 0x0023),
    "acq_datetime": _t(0x0008, 0x002A), "study_time": _t(0x0008, 0x0030),
    "acq_time": _t(0x0008, 0x0032), "content_time": _t(0x0008, 0x0033),
    "accession": _t(0x0008, 0x0050), "manufacturer": _t(0x0008, 0x0070),
    "institution": _t(0x0008, 0x0080), "referring": _t(0x0008, 0x0090),
    "study_description": _t(0x0008, 0x1030), "reading": _t(0x0008, 0x1060),
    "operator": _t(0x0008, 0x1070), "model": _t(0x0008, 0x1090),
    "patient_name": _t(0x0010, 0x0010), "patient_id": _t(0x0010, 0x0020),
    "issuer": _t(0x0010, 0x0021), "birth_date": _t(0x0010, 0x0030),
    "sex": _t(0x0010, 0x0040), "serial": _t(0x0018, 0x1000),
    "software": _t(0x0018, 0x1020), "study_uid": _t(0x0020, 0x000D),
    "series_uid": _t(0x0020, 0x000E), "annotations": _t(0x0040, 0xB020),
    "waveforms": _t(0x5400, 0x0100),
}
GROUP = {
    "time_offset": _t(0x0018, 0x1068), "trigger_offset": _t(0x0018, 0x1069),
    "originality": _t(0x003A, 0x0004), "n_channels": _t(0x003A, 0x0005),
    "n_samples": _t(0x003A, 0x0010), "fs": _t(0x003A, 0x001A),
    "label": _t(0x003A, 0x0020), "channels": _t(0x003A, 0x0200),
    "bits": _t(0x5400, 0x1004), "interpretation": _t(0x5400, 0x1006),
    "padding": _t(0x5400, 0x100A), "data": _t(0x5400, 0x1010),
}
CHANNEL = {
    "label": _t(0x003A, 0x0203), "source": _t(0x003A, 0x0208),
    "sensitivity": _t(0x003A, 0x0210), "units": _t(0x003A, 0x0211),
    "correction": _t(0x003A, 0x0212), "baseline": _t(0x003A, 0x0213),
    "time_skew": _t(0x003A, 0x0214), "sample_skew": _t(0x003A, 0x0215),
    "bits_stored": _t(0x003A, 0x021A), "filter_low": _t(0x003A, 0x0220),
    "filter_high": _t(0x003A, 0x0221), "notch": _t(0x003A, 0x0222),
}
CODE = {
    "value": _t(0x0008, 0x0100), "scheme": _t(0x0008, 0x0102),
    "meaning": _t(0x0008, 0x0104), "long_value": _t(0x0008, 0x0119),
    "urn_value": _t(0x0008, 0x0120),
}
ANNOTATION = {
    "units": _t(0x0040, 0x08EA), "channels": _t(0x0040, 0xA0B0),
    "concept_name": _t(0x0040, 0xA043), "temporal": _t(0x0040, 0xA130),
    "positions": _t(0x0040, 0xA132), "offsets": _t(0x0040, 0xA138),
    "concept": _t(0x0040, 0xA168), "group": _t(0x0040, 0xA180),
    "numeric": _t(0x0040, 0xA30A), "text": _t(0x0070, 0x0006),
}


def _wanted(table: dict[str, int]) -> tuple[list[str], np.ndarray]:
    return list(table), np.array(list(table.values()), np.uint32)


_ROOT_KEYS, _ROOT_TAGS = _wanted(ROOT)
_GROUP_KEYS, _GROUP_TAGS = _wanted(GROUP)
_CHANNEL_KEYS, _CHANNEL_TAGS = _wanted(CHANNEL)
_CODE_KEYS, _CODE_TAGS = _wanted(CODE)
_ANN_KEYS, _ANN_TAGS = _wanted(ANNOTATION)


@numba.njit(cache=True, nogil=True)
def _gather(tags, parent, items, wanted):  # pragma: no cover - compiled
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
def _first_items(tags, last, seqs):  # pragma: no cover - compiled
    """Token of the first Item of each sequence token in ``seqs`` (-1 if none)."""
    out = np.full(seqs.size, -1, np.int64)
    for i in range(seqs.size):
        s = seqs[i]
        if s >= 0 and last[s] > s + 1 and tags[s + 1] == 0xFFFEE000:
            out[i] = s + 1
    return out


def _items_of(tokens: Tokens, seq: int) -> np.ndarray:
    """Item tokens directly inside sequence token ``seq``."""
    lo, hi = seq + 1, int(tokens.last[seq])
    idx = np.flatnonzero(tokens.parent[lo:hi] == seq)
    return idx + lo


# --- text encodings ----------------------------------------------------------------------
_PY_CODECS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1",
              "ISO_IR 192": "utf-8", "ISO_IR 101": "iso8859-2", "ISO_IR 144": "iso8859-5",
              "ISO_IR 148": "iso8859-9", "ISO_IR 203": "iso8859-15", "GB18030": "gb18030",
              "GBK": "gbk"}


def _text_decoder(charset: str) -> Callable[[bytes], str]:
    terms = [t.strip() for t in charset.split("\\")]
    if len(terms) == 1 and terms[0] in _PY_CODECS:
        codec = _PY_CODECS[terms[0]]
        return lambda b: b.decode(codec, errors="replace")
    from pydicom.charset import convert_encodings, decode_bytes

    encodings = convert_encodings(terms)
    return lambda b: decode_bytes(b, encodings, {0x5E, 0x3D})


# --- dates and times (PS3.5 6.2) ---------------------------------------------------------
_DT = re.compile(
    r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?(?:([+-])(\d{2})(\d{2}))?$"
)
_TM = re.compile(r"^(\d{2})(?::?(\d{2}))?(?::?(\d{2}))?(?:\.(\d{1,6}))?$")


def _parse_da(text: str) -> dt.date | None:
    s = text.strip().replace(".", "")  # ACR-NEMA "YYYY.MM.DD" still seen from old carts
    if len(s) != 8 or not s.isdigit():
        return None
    try:
        return dt.date(int(s[:4]), int(s[4:6]), int(s[6:8]))
    except ValueError:
        return None


def _parse_dt(text: str) -> dt.datetime | None:
    m = _DT.match(text.strip())
    if m is None:
        return None
    y, mo, d, h, mi, s, frac, sign, tzh, tzm = m.groups()
    tz = None
    if sign:
        delta = dt.timedelta(hours=int(tzh), minutes=int(tzm))
        tz = dt.timezone(-delta if sign == "-" else delta)
    try:
        return dt.datetime(int(y), int(mo or 1), int(d or 1), int(h or 0), int(mi or 0),
                           min(int(s or 0), 59), int((frac or "0").ljust(6, "0")), tzinfo=tz)
    except ValueError:
        return None


def _combine(date: str, time: str) -> dt.datetime | None:
    d = _parse_da(date)
    if d is None:
        return None
    m = _TM.match(time.strip())
    if m is None:
        return dt.datetime(d.year, d.month, d.day)
    h, mi, s, frac = m.groups()
    try:
        return dt.datetime(d.year, d.month, d.day, int(h), int(mi or 0), min(int(s or 0), 59),
                           int((frac or "0").ljust(6, "0")))
    except ValueError:
        return None


_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


# --- the reader --------------------------------------------------------------------------
class _Reader:
    """Values of one object, read by token index from its buffer."""

    __slots__ = ("buf", "data", "little", "implicit", "tokens", "text", "warnings")

    def __init__(self, data: bytes | memoryview, buf: np.ndarray, ts: TransferSyntax,
                 tokens: Tokens) -> None:
        self.data = data
        self.buf = buf
        self.little = ts.little_endian
        self.implicit = ts.implicit_vr
        self.tokens = tokens
        self.text: Callable[[bytes], str] = _text_decoder("")
        self.warnings: list[str] = []

    def raw(self, i: int) -> bytes:
        o = int(self.tokens.offs[i])
        return bytes(self.data[o:o + int(self.tokens.lens[i])])

    def str(self, i: int, *, text: bool = False) -> str:
        """A string value (all values of a multi-valued element, backslash-joined)."""
        if i < 0:
            return ""
        b = self.raw(i)
        s = self.text(b) if text else b.decode("latin-1")
        return s.rstrip(" \x00").lstrip(" ")

    def float(self, i: int, name: str, default: float | None = None) -> float | None:
        """First value of a DS element (None or ``default`` when absent or empty)."""
        if i < 0:
            return default
        b = self.raw(i)
        first = b.split(b"\\", 1)[0].strip(b" \x00")
        if not first:
            return default
        try:
            return float(first)
        except ValueError:
            raise InvalidDicom(
                f"{name} {tag_str(int(self.tokens.tags[i]))} holds {first!r}, "
                "expected a decimal number (DS)"
            ) from None

    def floats(self, i: int) -> tuple[float, ...]:
        if i < 0:
            return ()
        vr = int(self.tokens.vrs[i])
        if vr in (vr_code("FD"), vr_code("FL")):
            kind = "d" if vr == vr_code("FD") else "f"
            order = "<" if self.little else ">"
            return tuple(float(x) for x in np.frombuffer(self.raw(i), order + kind))
        out = []
        for part in self.raw(i).split(b"\\"):
            part = part.strip(b" \x00")
            if part:
                try:
                    out.append(float(part))
                except ValueError:
                    self.warnings.append(
                        f"{tag_str(int(self.tokens.tags[i]))} value {part!r} is not a number; "
                        "ignored")
        return tuple(out)

    def uint(self, i: int, name: str, width: int) -> int:
        """An unsigned integer of binary VR (US/UL/UV); IS strings are tolerated."""
        b = self.raw(i)
        vr = int(self.tokens.vrs[i])
        if vr == vr_code("IS") or vr == vr_code("DS"):
            try:
                return int(float(b.strip(b" \x00").split(b"\\")[0]))
            except ValueError:
                raise InvalidDicom(
                    f"{name} {tag_str(int(self.tokens.tags[i]))} holds {b!r}, expected an integer"
                ) from None
        if len(b) not in (2, 4, 8):
            raise InvalidDicom(
                f"{name} {tag_str(int(self.tokens.tags[i]))} has length {len(b)}, "
                f"expected {width} bytes"
            )
        return int.from_bytes(b, "little" if self.little else "big")

    def uints(self, i: int, width: int) -> tuple[int, ...]:
        if i < 0:
            return ()
        b = self.raw(i)
        vr = int(self.tokens.vrs[i])
        if vr == vr_code("IS"):
            return tuple(int(x) for x in b.split(b"\\") if x.strip(b" \x00"))
        if vr == vr_code("US"):
            width = 2
        elif vr == vr_code("UL"):
            width = 4
        order = "<" if self.little else ">"
        usable = len(b) - len(b) % width
        return tuple(int(x) for x in np.frombuffer(b[:usable], f"{order}u{width}"))


def _check_unique(r: _Reader, out: np.ndarray, keys: list[str], tags: np.ndarray,
                  where: str) -> None:
    if (out == -2).any():
        rows, cols = np.nonzero(out == -2)
        k = int(cols[0])
        raise InvalidDicom(
            f"{where}: element {tag_str(int(tags[k]))} ({keys[k]}) appears more than once "
            f"in item {int(rows[0]) + 1}; its value would be a guess"
        )


def _meta(data: bytes | memoryview, buf: np.ndarray) -> tuple[int, dict[int, bytes]]:
    """Offset of the data set and the File Meta Information elements (PS3.10 7.1)."""
    start = 0
    if buf.size >= 132 and bytes(data[128:132]) == b"DICM":
        start = 132
    elif buf.size >= 4 and bytes(data[0:4]) == b"DICM":
        start = 4
    meta: dict[int, bytes] = {}
    pos = start
    end = buf.size
    # The meta group is always explicit VR little endian.
    while pos + 8 <= end:
        group = int(buf[pos]) | int(buf[pos + 1]) << 8
        if group != 0x0002:
            break
        element = int(buf[pos + 2]) | int(buf[pos + 3]) << 8
        vr = bytes(data[pos + 4:pos + 6])
        if vr in (b"OB", b"OW", b"UN", b"UT", b"SQ", b"UC", b"UR"):
            if pos + 12 > end:
                raise InvalidDicom(f"File Meta element (0002,{element:04X}) at byte {pos} is "
                                   "truncated")
            length = int.from_bytes(data[pos + 8:pos + 12], "little")
            pos += 12
        else:
            length = int.from_bytes(data[pos + 6:pos + 8], "little")
            pos += 8
        if length == 0xFFFFFFFF or pos + length > end:
            raise InvalidDicom(
                f"File Meta element (0002,{element:04X}) at byte {pos} has length {length}, "
                f"past the end of the object ({end} bytes)"
            )
        meta[element] = bytes(data[pos:pos + length])
        pos += length
    if start == 132 and not meta:
        raise InvalidDicom("the object has a DICM preamble but no File Meta Information "
                           "(0002,xxxx) elements")
    return pos, meta


def _sniff(buf: np.ndarray, start: int) -> TransferSyntax:
    """Transfer syntax of a data set without File Meta Information (PS3.10 allows
    only implicit VR LE there; explicit VR and big endian are recognised too)."""
    if buf.size < start + 8:
        raise InvalidDicom(f"the object is {buf.size} bytes long, too short to hold a data set")
    little_group = int(buf[start]) | int(buf[start + 1]) << 8
    explicit = 65 <= buf[start + 4] <= 90 and 65 <= buf[start + 5] <= 90
    if little_group > 0x00FF and (int(buf[start]) << 8 | int(buf[start + 1])) <= 0x00FF:
        return EXPLICIT_BE
    return EXPLICIT_LE if explicit else IMPLICIT_LE


def _inflate(body: bytes | memoryview) -> bytes:
    cap = max(_MIN_INFLATE_CAP, MAX_INFLATED_RATIO * len(body))
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = d.decompress(body, cap)
    except zlib.error as e:
        raise InvalidDicom(f"the deflated data set cannot be inflated: {e}") from None
    if d.unconsumed_tail:
        raise LimitExceeded(
            f"the deflated data set inflates to more than {cap} bytes "
            f"({MAX_INFLATED_RATIO}x its {len(body)} compressed bytes)"
        )
    return out


def locate(data: bytes | memoryview) -> tuple[bytes | memoryview, np.ndarray, TransferSyntax,
                                             Tokens, int]:
    """Find the data set: (buffer holding it, uint8 view, syntax, tokens, body start).

    For a deflated object the buffer is the inflated data set, not ``data``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidDicom(f"expected bytes, got {type(data).__name__}")
    buf = np.frombuffer(data, np.uint8)
    start, meta = _meta(data, buf)
    if 0x0010 in meta:
        ts_uid = meta[0x0010].rstrip(b" \x00").decode("latin-1")
        ts = TRANSFER_SYNTAXES.get(ts_uid)
        if ts is None:
            name = UID(ts_uid).name if ts_uid else "empty"
            raise UnsupportedObject(
                f"Transfer Syntax UID (0002,0010) is {ts_uid!r} ({name}); waveforms are accepted "
                "in Implicit VR LE, Explicit VR LE, Deflated Explicit VR LE and Explicit VR BE"
            )
    else:
        ts = _sniff(buf, start)
    if ts.deflated:
        data = _inflate(data[start:])
        buf = np.frombuffer(data, np.uint8)
        start = 0
    tokens = tokenize(buf, start, little=ts.little_endian, implicit=ts.implicit_vr)
    return data, buf, ts, tokens, start


def decode(data: bytes | memoryview) -> Ecg:
    """Decode a DICOM waveform object (with or without preamble and meta header).

    Raises `UnsupportedObject` for objects that are not a waveform SOP class we
    keep, and `InvalidDicom` for objects that cannot be decoded without guessing.
    """
    body, buf, ts, tokens, _ = locate(data)
    r = _Reader(body, buf, ts, tokens)
    root_items = np.array([-1], np.int64)
    root = _gather(tokens.tags, tokens.parent, root_items, _ROOT_TAGS)
    _check_unique(r, root, _ROOT_KEYS, _ROOT_TAGS, "data set")
    e = dict(zip(_ROOT_KEYS, root[0].tolist(), strict=True))
    charset = r.str(e["charset"])
    if charset:
        try:
            r.text = _text_decoder(charset)
        except (LookupError, ValueError) as exc:
            r.warnings.append(f"Specific Character Set {charset!r} is unknown ({exc}); "
                              "text read as ISO 8859-1")

    sop_class_uid = r.str(e["sop_class"])
    sop_class = SOP_CLASSES.get(sop_class_uid)
    if sop_class is None:
        if not sop_class_uid:
            raise InvalidDicom("SOP Class UID (0008,0016) is missing or empty")
        raise UnsupportedObject(
            f"SOP Class UID (0008,0016) {sop_class_uid} ({UID(sop_class_uid).name}) is not a "
            "waveform storage class this archive keeps"
        )
    sop_uid = r.str(e["sop_instance"])
    if not sop_uid:
        raise InvalidDicom("SOP Instance UID (0008,0018) is missing or empty")
    for key, label in (("sop_instance", "SOP Instance UID (0008,0018)"),
                       ("study_uid", "Study Instance UID (0020,000D)"),
                       ("series_uid", "Series Instance UID (0020,000E)")):
        v = r.str(e[key])
        if v and (len(v) > 64 or not _UID.match(v)):
            r.warnings.append(f"{label} {v!r} is not a valid UID (PS3.5 9.1: digits and single "
                              "dots, no empty or zero-led components, at most 64 characters)")
    for key, label in (("patient_id", "Patient ID (0010,0020)"),
                       ("referring", "Referring Physician's Name (0008,0090)"),
                       ("accession", "Accession Number (0008,0050)")):
        if e[key] < 0:
            r.warnings.append(f"{label} is absent (Type 2: must be present, may be empty)")

    if e["waveforms"] < 0:
        raise InvalidDicom("the object has no Waveform Sequence (5400,0100)")
    groups = _groups(r, tokens, e["waveforms"], sop_class)
    annotations = _annotations(r, tokens, e["annotations"]) if e["annotations"] >= 0 else ()

    acquired = None
    if e["acq_datetime"] >= 0:
        acquired = _parse_dt(r.str(e["acq_datetime"]))
        if acquired is None:
            r.warnings.append(f"Acquisition DateTime (0008,002A) {r.str(e['acq_datetime'])!r} "
                              "is not a DICOM DT value; ignored")
    for d, t in (("acq_date", "acq_time"), ("content_date", "content_time"),
                 ("study_date", "study_time")):
        if acquired is None and e[d] >= 0:
            acquired = _combine(r.str(e[d]), r.str(e[t]))
    birth = None
    if e["birth_date"] >= 0 and r.str(e["birth_date"]):
        birth = _parse_da(r.str(e["birth_date"]))
        if birth is None:
            r.warnings.append(f"Patient's Birth Date (0010,0030) {r.str(e['birth_date'])!r} is "
                              "not a DICOM DA value; ignored")

    return Ecg(
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_uid,
        study_instance_uid=r.str(e["study_uid"]),
        series_instance_uid=r.str(e["series_uid"]),
        patient_id=r.str(e["patient_id"], text=True),
        patient_id_issuer=r.str(e["issuer"], text=True),
        patient_name=r.str(e["patient_name"], text=True),
        birth_date=birth,
        sex=r.str(e["sex"]),
        accession_number=r.str(e["accession"], text=True),
        acquisition_datetime=acquired,
        study_description=r.str(e["study_description"], text=True),
        institution=r.str(e["institution"], text=True),
        manufacturer=r.str(e["manufacturer"], text=True),
        model=r.str(e["model"], text=True),
        software_versions=r.str(e["software"], text=True),
        device_serial_number=r.str(e["serial"], text=True),
        operator=r.str(e["operator"], text=True),
        reading_physician=r.str(e["reading"], text=True),
        referring_physician=r.str(e["referring"], text=True),
        annotations=annotations,
        groups=groups,
        transfer_syntax_uid=ts.uid,
        specific_character_set=charset,
        warnings=tuple(r.warnings),
    )


def _codes(r: _Reader, tokens: Tokens, seqs: np.ndarray, where: str) -> list[Code | None]:
    """The first coded entry of each sequence token in ``seqs`` (None if absent)."""
    items = _first_items(tokens.tags, tokens.last, seqs)
    out: list[Code | None] = [None] * seqs.size
    present = np.flatnonzero(items >= 0)
    if present.size == 0:
        return out
    g = _gather(tokens.tags, tokens.parent, items[present], _CODE_TAGS)
    _check_unique(r, g, _CODE_KEYS, _CODE_TAGS, where)
    for row, k in zip(g.tolist(), present.tolist(), strict=True):
        value = r.str(row[0]) or r.str(row[3]) or r.str(row[4])
        out[k] = Code(r.str(row[1]), value, r.str(row[2], text=True))
    return out


def _groups(r: _Reader, tokens: Tokens, seq: int, sop: SopClass) -> tuple[WaveformGroup, ...]:
    items = _items_of(tokens, seq)
    if items.size == 0:
        raise InvalidDicom("Waveform Sequence (5400,0100) holds no multiplex group items")
    if sop.max_groups is not None and items.size > sop.max_groups:
        r.warnings.append(f"{items.size} multiplex groups exceed the {sop.max_groups} the "
                          f"{sop.name} IOD allows")
    g = _gather(tokens.tags, tokens.parent, items, _GROUP_TAGS)
    _check_unique(r, g, _GROUP_KEYS, _GROUP_TAGS, "Waveform Sequence (5400,0100)")
    out = []
    for gi, row in enumerate(g.tolist()):
        out.append(_group(r, tokens, gi, dict(zip(_GROUP_KEYS, row, strict=True)), sop))
    return tuple(out)


def _required(e: dict[str, int], key: str, name: str, where: str) -> int:
    i = e[key]
    if i < 0:
        raise InvalidDicom(f"{where}: {name} is missing (Type 1)")
    return i


def _group(r: _Reader, tokens: Tokens, gi: int, e: dict[str, int], sop: SopClass
           ) -> WaveformGroup:
    where = f"multiplex group {gi + 1}"
    n_ch = r.uint(_required(e, "n_channels", "Number of Waveform Channels (003A,0005)", where),
                  "Number of Waveform Channels", 2)
    n_s = r.uint(_required(e, "n_samples", "Number of Waveform Samples (003A,0010)", where),
                 "Number of Waveform Samples", 4)
    bits = r.uint(_required(e, "bits", "Waveform Bits Allocated (5400,1004)", where),
                  "Waveform Bits Allocated", 2)
    interp = r.str(_required(e, "interpretation", "Waveform Sample Interpretation (5400,1006)",
                             where))
    fs = r.float(_required(e, "fs", "Sampling Frequency (003A,001A)", where),
                 "Sampling Frequency")
    dtype = SAMPLE_DTYPES.get((bits, interp))
    if dtype is None:
        allowed = ", ".join(f"{i} with {b} bits" for b, i in SAMPLE_DTYPES)
        raise InvalidDicom(
            f"{where}: Waveform Sample Interpretation (5400,1006) {interp!r} with Waveform Bits "
            f"Allocated (5400,1004) {bits} is not allowed (expected one of: {allowed})"
        )
    if interp not in sop.interpretations:
        r.warnings.append(f"{where}: sample interpretation {interp} is not one the {sop.name} "
                          f"IOD allows ({', '.join(sorted(sop.interpretations))})")
    if fs is None or not (fs > 0 and np.isfinite(fs)):
        raise InvalidDicom(f"{where}: Sampling Frequency (003A,001A) is {fs!r}, expected a "
                           "positive number of samples per second")
    if n_ch == 0:
        raise InvalidDicom(f"{where}: Number of Waveform Channels (003A,0005) is 0, expected "
                           "at least 1")
    if sop.max_samples is not None and n_s > sop.max_samples:
        raise LimitExceeded(
            f"{where}: Number of Waveform Samples (003A,0010) is {n_s}, more than the "
            f"{sop.max_samples} the {sop.name} IOD allows"
        )
    if sop.max_channels is not None and n_ch > sop.max_channels:
        r.warnings.append(f"{where}: {n_ch} channels exceed the {sop.max_channels} the "
                          f"{sop.name} IOD allows")
    # Channel definitions.
    ch_seq = _required(e, "channels", "Channel Definition Sequence (003A,0200)", where)
    ch_items = _items_of(tokens, ch_seq)
    if ch_items.size != n_ch:
        raise InvalidDicom(
            f"{where}: Number of Waveform Channels (003A,0005) is {n_ch} but the Channel "
            f"Definition Sequence (003A,0200) holds {ch_items.size} items"
        )
    # Samples: lengths in Python integers (no overflow) before any view is made.
    data_i = _required(e, "data", "Waveform Data (5400,1010)", where)
    size = dtype.itemsize
    expected = n_ch * n_s * size
    have = int(tokens.lens[data_i])
    if have < expected:
        raise InvalidDicom(
            f"{where}: Waveform Data (5400,1010) holds {have} bytes but {n_ch} channels x "
            f"{n_s} samples x {size} bytes need {expected}"
        )
    extra = have - expected
    if extra > 1 or (extra == 1 and expected % 2 == 0):
        r.warnings.append(f"{where}: Waveform Data holds {have - expected} bytes more than "
                          f"{n_ch} x {n_s} samples need; they are ignored")
    offset = int(tokens.offs[data_i])
    order = "<" if r.little else ">"
    if not r.little and size > 1 and int(tokens.vrs[data_i]) == vr_code("OB"):
        r.warnings.append(f"{where}: Waveform Data is OB in a big endian object; "
                          "its samples are read as big endian values")
    flat = np.frombuffer(r.data, dtype.newbyteorder(order), count=n_ch * n_s, offset=offset)
    if not r.little and size > 1:
        flat = flat.astype(dtype)  # native order for the kernels
    raw = flat.reshape(n_s, n_ch).T
    raw.flags.writeable = False

    padding: int | None = None
    if e["padding"] >= 0:
        pb = r.raw(e["padding"])
        if len(pb) >= size:
            padding = int(np.frombuffer(pb[:size], dtype.newbyteorder(order))[0])
        else:
            r.warnings.append(f"{where}: Waveform Padding Value (5400,100A) has {len(pb)} bytes, "
                              f"fewer than a {size}-byte sample; ignored")
    channels = _channels(r, tokens, ch_items, fs, padding, where)
    offset_s = r.float(e["time_offset"], "Multiplex Group Time Offset", 0.0)
    return WaveformGroup(
        label=r.str(e["label"], text=True),
        sampling_frequency=float(fs),
        channels=channels,
        raw=raw,
        interpretation=interp,
        time_offset=float(offset_s or 0.0),
        originality=r.str(e["originality"]) or "ORIGINAL",
        trigger_time_offset=(None if e["trigger_offset"] < 0 else
                             r.float(e["trigger_offset"], "Trigger Time Offset")),
    )


def _channels(r: _Reader, tokens: Tokens, items: np.ndarray, fs: float, padding: int | None,
              where: str) -> tuple[Channel, ...]:
    g = _gather(tokens.tags, tokens.parent, items, _CHANNEL_TAGS)
    _check_unique(r, g, _CHANNEL_KEYS, _CHANNEL_TAGS, f"{where} channel definitions")
    sources = _codes(r, tokens, g[:, 1].copy(), f"{where} channel sources")
    units = _codes(r, tokens, g[:, 3].copy(), f"{where} channel units")
    out = []
    for ci, row in enumerate(g.tolist()):
        e = dict(zip(_CHANNEL_KEYS, row, strict=True))
        cw = f"{where} channel {ci + 1}"
        source = sources[ci]
        label = r.str(e["label"], text=True)
        lead = lead_from_code(source.scheme, source.value) if source else None
        if lead is None and source is not None:
            lead = lead_from_text(source.meaning)
        if lead is None and label:
            lead = lead_from_text(label)
        if source is None:
            r.warnings.append(f"{cw}: Channel Source Sequence (003A,0208) is missing (Type 1)")
        sens = r.float(e["sensitivity"], "Channel Sensitivity", 1.0)
        if e["sensitivity"] >= 0 and units[ci] is None:
            r.warnings.append(f"{cw}: Channel Sensitivity Units Sequence (003A,0211) is missing; "
                              "units unknown")
        skew = r.float(e["time_skew"], "Channel Time Skew")
        if skew is None:
            sample_skew = r.float(e["sample_skew"], "Channel Sample Skew")
            skew = 0.0 if sample_skew is None else sample_skew / fs
        bits_stored = None
        if e["bits_stored"] >= 0:
            bits_stored = r.uint(e["bits_stored"], "Waveform Bits Stored", 2)
        out.append(Channel(
            label=label,
            source=source,
            lead=lead,
            units=units[ci].value if units[ci] is not None else None,
            sensitivity=_f(sens, 1.0),
            correction=_f(r.float(e["correction"], "Channel Sensitivity Correction Factor",
                                  1.0), 1.0),
            baseline=_f(r.float(e["baseline"], "Channel Baseline", 0.0), 0.0),
            skew=float(skew),
            filter_low_hz=r.float(e["filter_low"], "Filter Low Frequency"),
            filter_high_hz=r.float(e["filter_high"], "Filter High Frequency"),
            notch_hz=r.float(e["notch"], "Notch Filter Frequency"),
            bits_stored=bits_stored,
            padding=padding,
        ))
    return tuple(out)


def _f(v: float | None, default: float) -> float:
    return default if v is None else v


def _annotations(r: _Reader, tokens: Tokens, seq: int) -> tuple[Annotation, ...]:
    items = _items_of(tokens, seq)
    if items.size == 0:
        return ()
    g = _gather(tokens.tags, tokens.parent, items, _ANN_TAGS)
    where = "Waveform Annotation Sequence (0040,B020)"
    _check_unique(r, g, _ANN_KEYS, _ANN_TAGS, where)
    k = {name: i for i, name in enumerate(_ANN_KEYS)}
    names = _codes(r, tokens, g[:, k["concept_name"]].copy(), where)
    values = _codes(r, tokens, g[:, k["concept"]].copy(), where)
    units = _codes(r, tokens, g[:, k["units"]].copy(), where)
    out = []
    for ai, row in enumerate(g.tolist()):
        numeric = r.floats(row[k["numeric"]])
        chans = r.uints(row[k["channels"]], 2)
        group = row[k["group"]]
        out.append(Annotation(
            text=r.str(row[k["text"]], text=True) if row[k["text"]] >= 0 else None,
            concept=names[ai],
            value_code=values[ai],
            value=numeric[0] if numeric else None,
            units=units[ai].value if units[ai] is not None else None,
            group_number=r.uints(group, 2)[0] if group >= 0 and r.uints(group, 2) else None,
            channels=tuple(zip(chans[0::2], chans[1::2], strict=False)),
            temporal_range_type=r.str(row[k["temporal"]]) or None,
            sample_positions=r.uints(row[k["positions"]], 4),
            time_offsets=r.floats(row[k["offsets"]]),
        ))
    return tuple(out)

