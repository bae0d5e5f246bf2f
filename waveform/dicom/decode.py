"""`decode(bytes) -> Ecg`: the hot path from a DICOM waveform object to the model.

One numba pass (`tokenize`) lists every element; a second (`gather`) finds, for
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
import struct
import warnings
import zlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydicom.uid import UID

from waveform.dicom.annotations import LazyAnnotations
from waveform.dicom.codes import (
    SOP_CLASSES,
    TRANSFER_SYNTAXES,
    SopClass,
    TransferSyntax,
    lead_from_code,
    lead_from_text,
)
from waveform.dicom.tokenize import Tokens, tokenize
from waveform.dicom.values import (
    Fields,
    Reader,
    codes,
    items_of,
    parse_ds,
    tag,
    text_decoder,
    wanted,
)
from waveform.dsp.scale import padding_note
from waveform.errors import InvalidDicom, LimitExceeded, UnsupportedObject
from waveform.model import SAMPLE_DTYPES, Annotation, Channel, Ecg, WaveformGroup

__all__ = ["MAX_INFLATED_RATIO", "decode", "locate"]

#: A deflated body may expand to at most this many times its compressed size.
MAX_INFLATED_RATIO = 64
_MIN_INFLATE_CAP = 64 << 20

EXPLICIT_LE = TRANSFER_SYNTAXES["1.2.840.10008.1.2.1"]
IMPLICIT_LE = TRANSFER_SYNTAXES["1.2.840.10008.1.2"]
EXPLICIT_BE = TRANSFER_SYNTAXES["1.2.840.10008.1.2.2"]


def _uid_name(uid: str) -> str:
    """The standard's name for ``uid`` (pydicom's table), quietly, for messages."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return UID(uid).name



# --- the elements we read, per kind of item ----------------------------------------------
ROOT = {
    "charset": tag(0x0008, 0x0005), "sop_class": tag(0x0008, 0x0016),
    "sop_instance": tag(0x0008, 0x0018), "study_date": tag(0x0008, 0x0020),
    "acq_date": tag(0x0008, 0x0022), "content_date": tag(0x0008, 0x0023),
    "acq_datetime": tag(0x0008, 0x002A), "study_time": tag(0x0008, 0x0030),
    "acq_time": tag(0x0008, 0x0032), "content_time": tag(0x0008, 0x0033),
    "accession": tag(0x0008, 0x0050), "manufacturer": tag(0x0008, 0x0070),
    "institution": tag(0x0008, 0x0080), "referring": tag(0x0008, 0x0090),
    "study_description": tag(0x0008, 0x1030), "reading": tag(0x0008, 0x1060),
    "operator": tag(0x0008, 0x1070), "model": tag(0x0008, 0x1090),
    "patient_name": tag(0x0010, 0x0010), "patient_id": tag(0x0010, 0x0020),
    "issuer": tag(0x0010, 0x0021), "birth_date": tag(0x0010, 0x0030),
    "sex": tag(0x0010, 0x0040), "serial": tag(0x0018, 0x1000),
    "software": tag(0x0018, 0x1020), "study_uid": tag(0x0020, 0x000D),
    "series_uid": tag(0x0020, 0x000E), "annotations": tag(0x0040, 0xB020),
    "waveforms": tag(0x5400, 0x0100),
}
GROUP = {
    "time_offset": tag(0x0018, 0x1068), "trigger_offset": tag(0x0018, 0x1069),
    "originality": tag(0x003A, 0x0004), "n_channels": tag(0x003A, 0x0005),
    "n_samples": tag(0x003A, 0x0010), "fs": tag(0x003A, 0x001A),
    "label": tag(0x003A, 0x0020), "channels": tag(0x003A, 0x0200),
    "bits": tag(0x5400, 0x1004), "interpretation": tag(0x5400, 0x1006),
    "padding": tag(0x5400, 0x100A), "data": tag(0x5400, 0x1010),
}
CHANNEL = {
    "label": tag(0x003A, 0x0203), "source": tag(0x003A, 0x0208),
    "sensitivity": tag(0x003A, 0x0210), "units": tag(0x003A, 0x0211),
    "correction": tag(0x003A, 0x0212), "baseline": tag(0x003A, 0x0213),
    "time_skew": tag(0x003A, 0x0214), "sample_skew": tag(0x003A, 0x0215),
    "bits_stored": tag(0x003A, 0x021A), "filter_low": tag(0x003A, 0x0220),
    "filter_high": tag(0x003A, 0x0221), "notch": tag(0x003A, 0x0222),
}


_ROOT_KEYS, _ROOT_TAGS = wanted(ROOT)
_GROUP_KEYS, _GROUP_TAGS = wanted(GROUP)
_CHANNEL_KEYS, _CHANNEL_TAGS = wanted(CHANNEL)


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
_META_HEAD = struct.Struct("<HH2sH")
_U32 = struct.Struct("<I")
_META_LONG_VRS = frozenset({b"OB", b"OW", b"UN", b"UT", b"SQ", b"UC", b"UR", b"OD", b"OF", b"OL",
                            b"OV", b"SV", b"UV"})


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
        group, element, vr, short_len = _META_HEAD.unpack_from(data, pos)
        if group != 0x0002:
            break
        if vr in _META_LONG_VRS:
            if pos + 12 > end:
                raise InvalidDicom(f"File Meta element (0002,{element:04X}) at byte {pos} is "
                                   "truncated")
            (length,) = _U32.unpack_from(data, pos + 8)
            pos += 12
        else:
            length = short_len
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


#: What a file that is not DICOM often is, by its first bytes (offset, signature).
_NOT_DICOM: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"GIF8", "a GIF image"),
    (0, b"%PDF-", "a PDF document"),
    (0, b"PK\x03\x04", "a ZIP archive"),
    (0, b"\x1f\x8b", "gzip data"),
    (0, b"\xef\xbb\xbf<", "XML (a cart's XML export? MUSE, Sierra and HL7 aECG are not DICOM)"),
    (0, b"<", "XML (a cart's XML export? MUSE, Sierra and HL7 aECG are not DICOM)"),
    (0, b"{", "JSON"),
    (16, b"SCPECG", "an SCP-ECG file (EN 1064), not DICOM"),
)


def _not_dicom(data: bytes | memoryview) -> InvalidDicom:
    head = bytes(data[:32])
    what = next((name for at, sig, name in _NOT_DICOM if head[at:at + len(sig)] == sig), None)
    shown = " ".join(f"{b:02X}" for b in head[:8])
    return InvalidDicom(
        "not a DICOM object" + (f": it looks like {what}" if what else "") + " "
        + f"(it starts with {shown}: no DICM preamble, no File Meta Information and no "
        "data set element of group 0008 or below, where every DICOM object begins)")


def _sniff(buf: np.ndarray, start: int, data: bytes | memoryview = b"") -> TransferSyntax:
    """Transfer syntax of a data set without File Meta Information (PS3.10 allows
    only implicit VR LE there; explicit VR and big endian are recognised too).
    Every object holds SOP Class UID (0008,0016), so its first element is of group
    0008 or below: anything else is not DICOM, and is said to be so."""
    if buf.size < start + 8:
        if buf.size and len(data) and any(bytes(data[at:at + len(sig)]) == sig
                                          for at, sig, _ in _NOT_DICOM):
            raise _not_dicom(data)
        raise InvalidDicom(f"the object is {buf.size} bytes long, too short to hold a data set")
    little_group = int(buf[start]) | int(buf[start + 1]) << 8
    if start == 0 and (min(little_group, int(buf[0]) << 8 | int(buf[1])) > 0x0008
                       or any(bytes(data[at:at + len(sig)]) == sig for at, sig, _ in _NOT_DICOM)):
        raise _not_dicom(data)
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
            name = _uid_name(ts_uid) if ts_uid else "empty"
            raise UnsupportedObject(
                f"Transfer Syntax UID (0002,0010) is {ts_uid!r} ({name}); waveforms are accepted "
                "in Implicit VR LE, Explicit VR LE, Deflated Explicit VR LE and Explicit VR BE"
            )
    else:
        ts = _sniff(buf, start, data)
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
    r = Reader(body, buf, ts, tokens)
    f = Fields(tokens, _ROOT_ITEMS, _ROOT_TAGS, _ROOT_KEYS, "data set")
    o, n = f.offs[0], f.lens[0]

    def val(key: str, text: bool = False) -> str:
        k = _ROOT_INDEX[key]
        return r.string(o[k], n[k], text=text)

    def has(key: str) -> bool:
        return o[_ROOT_INDEX[key]] >= 0

    charset = val("charset")
    if charset:
        try:
            r.text = text_decoder(charset)
            r.charset = charset
        except (LookupError, ValueError) as exc:
            r.warnings.append(f"Specific Character Set {charset!r} is unknown ({exc}); "
                              "text read as ISO 8859-1")
    sop_class_uid = val("sop_class")
    sop_class = SOP_CLASSES.get(sop_class_uid)
    if sop_class is None:
        if not sop_class_uid:
            raise InvalidDicom("SOP Class UID (0008,0016) is missing or empty")
        raise UnsupportedObject(
            f"SOP Class UID (0008,0016) {sop_class_uid} ({_uid_name(sop_class_uid)}) is not a "
            "waveform storage class this archive keeps"
        )
    sop_uid = val("sop_instance")
    if not sop_uid:
        raise InvalidDicom("SOP Instance UID (0008,0018) is missing or empty")
    for key, label in (("sop_instance", "SOP Instance UID (0008,0018)"),
                       ("study_uid", "Study Instance UID (0020,000D)"),
                       ("series_uid", "Series Instance UID (0020,000E)")):
        v = val(key)
        if v and (len(v) > 64 or not _UID.match(v)):
            r.warnings.append(f"{label} {v!r} is not a valid UID (PS3.5 9.1: digits and single "
                              "dots, no empty or zero-led components, at most 64 characters)")
    for key, label in (("patient_id", "Patient ID (0010,0020)"),
                       ("referring", "Referring Physician's Name (0008,0090)"),
                       ("accession", "Accession Number (0008,0050)"),
                       ("study_uid", "Study Instance UID (0020,000D)")):
        if not has(key):
            r.warnings.append(f"{label} is absent (must be present)")

    if not has("waveforms"):
        raise InvalidDicom("the object has no Waveform Sequence (5400,0100)")
    groups = _groups(r, tokens, int(f.idx[0, _ROOT_INDEX["waveforms"]]), sop_class)
    ann_seq = int(f.idx[0, _ROOT_INDEX["annotations"]])
    annotations: Sequence[Annotation] = ()
    if ann_seq >= 0:
        annotations = LazyAnnotations(r, tokens, items_of(tokens, ann_seq))

    acquired = None
    if has("acq_datetime"):
        acquired = _parse_dt(val("acq_datetime"))
        if acquired is None:
            r.warnings.append(f"Acquisition DateTime (0008,002A) {val('acq_datetime')!r} is not "
                              "a DICOM DT value; ignored")
    for d, t in (("acq_date", "acq_time"), ("content_date", "content_time"),
                 ("study_date", "study_time")):
        if acquired is None and has(d):
            acquired = _combine(val(d), val(t))
    birth = None
    if val("birth_date"):
        birth = _parse_da(val("birth_date"))
        if birth is None:
            r.warnings.append(f"Patient's Birth Date (0010,0030) {val('birth_date')!r} is not a "
                              "DICOM DA value; ignored")
    return Ecg(
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_uid,
        study_instance_uid=val("study_uid"),
        series_instance_uid=val("series_uid"),
        patient_id=val("patient_id", True),
        patient_id_issuer=val("issuer", True),
        patient_name=val("patient_name", True),
        birth_date=birth,
        sex=val("sex"),
        accession_number=val("accession", True),
        acquisition_datetime=acquired,
        study_description=val("study_description", True),
        institution=val("institution", True),
        manufacturer=val("manufacturer", True),
        model=val("model", True),
        software_versions=val("software", True),
        device_serial_number=val("serial", True),
        operator=val("operator", True),
        reading_physician=val("reading", True),
        referring_physician=val("referring", True),
        annotations=annotations,
        groups=groups,
        transfer_syntax_uid=ts.uid,
        specific_character_set=charset,
        warnings=tuple(r.warnings),
    )


_ROOT_ITEMS = np.array([-1], np.int64)
_ROOT_INDEX = {k: i for i, k in enumerate(_ROOT_KEYS)}
_G = {k: i for i, k in enumerate(_GROUP_KEYS)}
_C = {k: i for i, k in enumerate(_CHANNEL_KEYS)}
def _groups(r: Reader, tokens: Tokens, seq: int, sop: SopClass) -> tuple[WaveformGroup, ...]:
    items = items_of(tokens, seq)
    if items.size == 0:
        raise InvalidDicom("Waveform Sequence (5400,0100) holds no multiplex group items")
    if sop.max_groups is not None and items.size > sop.max_groups:
        r.warnings.append(f"{items.size} multiplex groups exceed the {sop.max_groups} the "
                          f"{sop.name} IOD allows")
    f = Fields(tokens, items, _GROUP_TAGS, _GROUP_KEYS, "Waveform Sequence (5400,0100)")
    return tuple(_group(r, tokens, f, gi, sop) for gi in range(items.size))


def _group(r: Reader, tokens: Tokens, f: Fields, gi: int, sop: SopClass) -> WaveformGroup:
    where = f"multiplex group {gi + 1}"
    o, n, v = f.offs[gi], f.lens[gi], f.vrs[gi]
    for key, name in _GROUP_REQUIRED:
        if o[_G[key]] < 0:
            raise InvalidDicom(f"{where}: {name} is missing (Type 1)")

    def uint(key: str, name: str) -> int:
        k = _G[key]
        return r.uint(o[k], n[k], v[k], f"{where}: {name}")

    n_ch = uint("n_channels", "Number of Waveform Channels (003A,0005)")
    n_s = uint("n_samples", "Number of Waveform Samples (003A,0010)")
    bits = uint("bits", "Waveform Bits Allocated (5400,1004)")
    interp = r.string(o[_G["interpretation"]], n[_G["interpretation"]])
    fs = r.ds(o[_G["fs"]], n[_G["fs"]], f"{where}: Sampling Frequency (003A,001A)")
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
    ch_seq = int(f.idx[gi, _G["channels"]])
    ch_items = items_of(tokens, ch_seq)
    if ch_items.size != n_ch:
        raise InvalidDicom(
            f"{where}: Number of Waveform Channels (003A,0005) is {n_ch} but the Channel "
            f"Definition Sequence (003A,0200) holds {ch_items.size} items"
        )
    # Samples: lengths in Python integers (no overflow) before any view is made.
    size = dtype.itemsize
    expected = n_ch * n_s * size
    offset, have = o[_G["data"]], n[_G["data"]]
    if have < expected:
        raise InvalidDicom(
            f"{where}: Waveform Data (5400,1010) holds {have} bytes but {n_ch} channels x "
            f"{n_s} samples x {size} bytes need {expected}"
        )
    extra = have - expected
    if extra > 1 or (extra == 1 and expected % 2 == 0):
        r.warnings.append(f"{where}: Waveform Data holds {extra} bytes more than "
                          f"{n_ch} x {n_s} samples need; they are ignored")
    order: Literal["<", ">"] = "<" if r.little else ">"
    if r.little:
        flat = np.frombuffer(r.data, dtype, count=n_ch * n_s, offset=offset)
    else:
        flat = np.frombuffer(r.data, dtype.newbyteorder(order), count=n_ch * n_s, offset=offset)
        flat = flat.astype(dtype)  # native byte order for the kernels
    raw = flat.reshape(n_s, n_ch).T
    if raw.flags.writeable:
        raw.flags.writeable = False

    padding: int | None = None
    kp = _G["padding"]
    if o[kp] >= 0:
        if n[kp] >= size:
            pb = r.raw(o[kp], size)
            padding = int(np.frombuffer(pb, dtype.newbyteorder(order))[0])
        else:
            r.warnings.append(f"{where}: Waveform Padding Value (5400,100A) has {n[kp]} bytes, "
                              f"fewer than a {size}-byte sample; ignored")
    if padding is not None:
        # A declared padding value the signal itself takes is a sample (dsp.scale).
        note = padding_note(raw, padding)
        if note is not None:
            r.warnings.append(f"{where}: {note}")
            padding = None
    channels = _channels(r, tokens, ch_seq, ch_items, fs, padding, where, sop.ecg)
    offset_ms = r.ds(o[_G["time_offset"]], n[_G["time_offset"]],
                        f"{where}: Multiplex Group Time Offset", 0.0)
    return WaveformGroup(
        label=r.string(o[_G["label"]], n[_G["label"]], text=True),
        sampling_frequency=float(fs),
        channels=channels,
        raw=raw,
        interpretation=interp,
        time_offset=float(offset_ms or 0.0),
        originality=r.string(o[_G["originality"]], n[_G["originality"]]) or "ORIGINAL",
        trigger_time_offset=r.ds(o[_G["trigger_offset"]], n[_G["trigger_offset"]],
                                    f"{where}: Trigger Time Offset"),
    )


_GROUP_REQUIRED = (
    ("n_channels", "Number of Waveform Channels (003A,0005)"),
    ("n_samples", "Number of Waveform Samples (003A,0010)"),
    ("bits", "Waveform Bits Allocated (5400,1004)"),
    ("interpretation", "Waveform Sample Interpretation (5400,1006)"),
    ("fs", "Sampling Frequency (003A,001A)"),
    ("channels", "Channel Definition Sequence (003A,0200)"),
    ("data", "Waveform Data (5400,1010)"),
)
_DS_COLUMNS = ("sensitivity", "correction", "baseline", "time_skew", "sample_skew",
               "filter_low", "filter_high", "notch")


_CHANNEL_CACHE: dict[bytes, tuple[tuple[Channel, ...], tuple[str, ...]]] = {}
_CHANNEL_CACHE_LIMIT = 1024


def _channels(r: Reader, tokens: Tokens, seq: int, items: np.ndarray, fs: float,
              padding: int | None, where: str, ecg: bool) -> tuple[Channel, ...]:
    """The channel definitions of one group.

    A cart sends the same definitions with every ECG (often for both of its
    groups), so decoded ones are kept keyed by their encoded bytes and by
    everything else their decoding depends on.
    """
    end_tok = int(tokens.last[seq]) - 1
    start = int(tokens.offs[seq])
    stop = int(tokens.offs[end_tok]) + (int(tokens.lens[end_tok]) if end_tok > seq else 0)
    key = b"".join((r.raw(start, stop - start), b"|", r.little.to_bytes(1, "little"),
                    r.implicit.to_bytes(1, "little"), r.charset.encode(), repr(fs).encode(),
                    repr(padding).encode(), bytes([ecg])))
    hit = _CHANNEL_CACHE.get(key)
    if hit is None:
        warnings_before = len(r.warnings)
        channels = _decode_channels(r, tokens, items, fs, padding, where, ecg)
        if len(_CHANNEL_CACHE) >= _CHANNEL_CACHE_LIMIT:
            _CHANNEL_CACHE.clear()
        # Warnings are kept with the group's name as a placeholder: the same
        # definitions serve every group (rhythm and median) and every object.
        notes = tuple(w.replace(where, "\0") for w in r.warnings[warnings_before:])
        hit = _CHANNEL_CACHE[key] = (channels, notes)
    else:
        r.warnings.extend(w.replace("\0", where) for w in hit[1])
    return hit[0]


def _decode_channels(r: Reader, tokens: Tokens, items: np.ndarray, fs: float,
                     padding: int | None, where: str, ecg: bool) -> tuple[Channel, ...]:
    """``ecg``: an IOD of `SopClass.ecg`, whose channels are measured potentials
    (or pressures), so that Channel Sensitivity is required (Type 1C: samples in
    defined units)."""
    f = Fields(tokens, items, _CHANNEL_TAGS, _CHANNEL_KEYS, f"{where} channel definitions")
    sources = codes(r, tokens, f.idx[:, _C["source"]].copy(), f"{where} channel sources")
    units = codes(r, tokens, f.idx[:, _C["units"]].copy(), f"{where} channel units")
    cols = [_C[k] for k in _DS_COLUMNS]
    offs = np.array(f.offs, np.int64)[:, cols]
    lens = np.array(f.lens, np.int64)[:, cols]
    values, status = parse_ds(r.buf, offs, lens)
    if (status == 2).any():  # not on the exact fast path: let Python parse (or refuse)
        for ci, k in zip(*np.nonzero(status == 2), strict=True):
            name = f"{where} channel {ci + 1} {_DS_COLUMNS[k]}"
            parsed = r.ds(int(offs[ci, k]), int(lens[ci, k]), name)
            values[ci, k] = np.nan if parsed is None else parsed
            status[ci, k] = 1 if parsed is None else 0
    table = values.tolist()
    absent = (status == 1).tolist()
    out = []
    for ci in range(items.size):
        o, n = f.offs[ci], f.lens[ci]
        val, miss = table[ci], absent[ci]
        source, unit = sources[ci], units[ci]
        label = r.string(o[_C["label"]], n[_C["label"]], text=True)
        lead = None
        if source is not None:
            lead = lead_from_code(source.scheme, source.value) or lead_from_text(source.meaning)
        else:
            r.warnings.append(f"{where} channel {ci + 1}: Channel Source Sequence (003A,0208) is "
                              "missing (Type 1)")
        if lead is None and label:
            lead = lead_from_text(label)
        if not miss[0] and units[ci] is None:
            r.warnings.append(f"{where} channel {ci + 1}: Channel Sensitivity Units Sequence "
                              "(003A,0211) is missing; units unknown")
        elif miss[0] and ecg:
            r.warnings.append(f"{where} channel {ci + 1}: Channel Sensitivity (003A,0210) is "
                              "missing (Type 1C, required for samples in defined units): the "
                              "samples are taken as they are, 1 per unit")
        skew = val[3] if not miss[3] else (val[4] / fs if not miss[4] else 0.0)
        kb = _C["bits_stored"]
        bits_stored = (r.uint(o[kb], n[kb], f.vrs[ci][kb], f"{where} Waveform Bits Stored")
                       if o[kb] >= 0 else None)
        out.append(Channel(
            label=label,
            source=source,
            lead=lead,
            units=None if unit is None else unit.value,
            sensitivity=1.0 if miss[0] else val[0],
            correction=1.0 if miss[1] else val[1],
            baseline=0.0 if miss[2] else val[2],
            skew=skew,
            filter_low_hz=None if miss[5] else val[5],
            filter_high_hz=None if miss[6] else val[6],
            notch_hz=None if miss[7] else val[7],
            bits_stored=bits_stored,
            padding=padding,
        ))
    return tuple(out)


