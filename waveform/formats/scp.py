"""SCP-ECG (EN 1064 / ISO 11073-91064): the record, its sections, and the samples.

The record starts with a CRC-CCITT of everything after it and the record length;
Section 0 points at the others, each with its own CRC, identifier and length.
Read here: 1 (patient and acquisition tags), 2 (Huffman tables), 3 (leads), 4
(QRS locations), 5 (reference beats), 6 (rhythm), 7 (global measurements), 8
(interpretation statements). Samples are Huffman decoded (`huffman`), then first
or second differences are summed; when Section 3 says reference beat subtraction
was used, the reference beat of type 0 is added back in each QRS's subtraction
zone (Section 4), exactly, in integers (at the greatest common divisor of the
two sections' amplitude units when they differ). With bimodal compression the
rhythm residual is stored decimated outside Section 4's protected zones: it is
rebuilt by the standard's interpolation and filter (`bimodal`) before the
reference beat is added, and the rhythm group is then marked DERIVED, since the
acquired samples cannot be recovered from it.
"""

from __future__ import annotations

import datetime as dt
import math
import struct
from dataclasses import dataclass

import numpy as np

from waveform.dicom.codes import LEAD_CODES
from waveform.errors import InvalidFile
from waveform.formats.base import Measurement, Reader, Reading, int16_group, measurement
from waveform.formats.bimodal import Zone, check_zones, expand, smooth, stored_count
from waveform.formats.huffman import Table, decode, parse_tables
from waveform.model import Channel, Code

__all__ = ["READER", "crc_ccitt"]

FORMAT = "scp-ecg"

_SECTION_HEADER = 16
_POINTER = 10
_UNDEFINED = frozenset({29999, 29998, 29997})

# Section 1 manufacturer codes (tag 14, byte 8).
_MANUFACTURERS: dict[int, str] = {
    1: "Burdick", 2: "Cambridge", 3: "Compumed", 4: "Datamed", 5: "Fukuda",
    6: "Hewlett-Packard", 7: "Marquette Electronics", 8: "Mortara Instrument",
    9: "Nihon Kohden", 10: "Okin", 11: "Quinton", 12: "Siemens", 13: "Spacelabs",
    14: "Telemed", 15: "Hellige", 16: "ESA-OTE", 17: "Schiller", 18: "Picker-Schwarzer",
    19: "Elettronica-Trentina", 20: "Zwonitz",
}
_SEX: dict[int, str] = {1: "M", 2: "F"}


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC = _crc_table()


def crc_ccitt(data: bytes) -> int:
    """CRC-CCITT (polynomial 0x1021, initial 0xFFFF), as SCP-ECG 5.3.2 defines it."""
    crc = 0xFFFF
    table = _CRC
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    return crc


def recognises(data: bytes) -> bool:
    # Bytes 2-5: the record length; then Section 0's header: CRC, identifier 0, a
    # length of 16 + 10 bytes per pointer (a damaged record is still recognised, so
    # that its error names what is wrong).
    if len(data) < 6 + _SECTION_HEADER:
        return False
    section, length = struct.unpack_from("<HI", data, 8)
    return section == 0 and length > _SECTION_HEADER and (
        length - _SECTION_HEADER) % _POINTER == 0 and length <= 16 + 10 * 256


@dataclass(frozen=True, slots=True)
class _Sections:
    bodies: dict[int, bytes]


def _sections(data: bytes) -> _Sections:
    if len(data) < 6 + _SECTION_HEADER:
        raise InvalidFile(FORMAT, "record", f"{len(data)} bytes; too short for a record")
    stored, length = struct.unpack_from("<HI", data, 0)
    if length != len(data):
        raise InvalidFile(FORMAT, "record length", f"says {length} bytes, the file holds "
                          f"{len(data)}")
    if (crc := crc_ccitt(data[2:])) != stored:
        raise InvalidFile(FORMAT, "record CRC", f"0x{stored:04X} stored, 0x{crc:04X} computed: "
                          "the file is damaged")
    zero = _section(data, 0, 7, None)
    if len(zero) % _POINTER:
        raise InvalidFile(FORMAT, "Section 0", f"{len(zero)} bytes of pointers; each has "
                          f"{_POINTER}")
    bodies: dict[int, bytes] = {0: zero}
    for i in range(len(zero) // _POINTER):
        number, size, index = struct.unpack_from("<HII", zero, i * _POINTER)
        if size == 0 or number == 0:
            continue
        if number in bodies:
            raise InvalidFile(FORMAT, f"Section 0 pointer {i + 1}", f"section {number} twice")
        bodies[number] = _section(data, number, index, size)
    return _Sections(bodies)


def _section(data: bytes, number: int, index: int, size: int | None) -> bytes:
    where = f"Section {number}"
    start = index - 1
    if start < 6 or start + _SECTION_HEADER > len(data):
        raise InvalidFile(FORMAT, where, f"starts at byte {index}, outside the record of "
                          f"{len(data)} bytes")
    stored, ident, length = struct.unpack_from("<HHI", data, start)
    if ident != number:
        raise InvalidFile(FORMAT, where, f"its header says section {ident}")
    if size is not None and length != size:
        raise InvalidFile(FORMAT, f"{where} length", f"Section 0 says {size} bytes, the "
                          f"section header {length}")
    if length < _SECTION_HEADER or start + length > len(data):
        raise InvalidFile(FORMAT, f"{where} length", f"{length} bytes from byte {index} pass "
                          f"the record's end ({len(data)} bytes)")
    if (crc := crc_ccitt(data[start + 2:start + length])) != stored:
        raise InvalidFile(FORMAT, f"{where} CRC", f"0x{stored:04X} stored, 0x{crc:04X} "
                          "computed: the section is damaged")
    return data[start + _SECTION_HEADER:start + length]


def _tags(body: bytes) -> dict[int, bytes]:
    tags: dict[int, bytes] = {}
    offset = 0
    while offset + 3 <= len(body):
        tag, size = struct.unpack_from("<BH", body, offset)
        if tag == 255:
            break
        offset += 3
        if offset + size > len(body):
            raise InvalidFile(FORMAT, f"Section 1 tag {tag}", f"{size} bytes pass the "
                              f"section's end ({len(body) - offset} remain)")
        tags.setdefault(tag, body[offset:offset + size])
        offset += size
    return tags


def _text(value: bytes | None) -> str:
    if not value:
        return ""
    return value.split(b"\0", 1)[0].decode("latin-1").strip()


def _date(tag: int, value: bytes | None) -> dt.date | None:
    if not value:
        return None
    if len(value) != 4:
        raise InvalidFile(FORMAT, f"Section 1 tag {tag}", f"{len(value)} bytes; a date has 4")
    year, month, day = struct.unpack("<HBB", value)
    if year == 0:
        return None
    try:
        return dt.date(year, month, day)
    except ValueError as e:
        raise InvalidFile(FORMAT, f"Section 1 tag {tag}", f"{year}-{month}-{day}: {e}") from None


def _time(value: bytes | None) -> dt.time:
    if not value:
        return dt.time()
    if len(value) != 3 or value[0] > 23 or value[1] > 59 or value[2] > 59:
        raise InvalidFile(FORMAT, "Section 1 tag 26", f"{value.hex(' ')} is no time of day")
    return dt.time(value[0], value[1], value[2])


def _device(value: bytes | None) -> tuple[str, str, str, str]:
    """(manufacturer, model, serial number, software) of tag 14 (the acquiring device)."""
    if not value or len(value) < 36:
        return "", "", "", ""
    maker = _MANUFACTURERS.get(value[7], "")
    model = _text(value[8:14])
    strings = value[36 + value[35]:].split(b"\0") if len(value) > 35 else []
    # After the analysing program's revision: serial number, system software,
    # SCP implementation software, manufacturer (5.4.3.1, tag 14).
    serial = _text(strings[0]) if len(strings) > 0 else ""
    software = _text(strings[1]) if len(strings) > 1 else ""
    named = _text(strings[3]) if len(strings) > 3 else ""
    return named or maker, model, serial, software


@dataclass(frozen=True, slots=True)
class _Lead:
    start: int
    end: int
    code: int


def _leads(body: bytes) -> tuple[list[_Lead], bool]:
    if len(body) < 2:
        raise InvalidFile(FORMAT, "Section 3", "truncated before the number of leads")
    count, flags = body[0], body[1]
    if count == 0 or len(body) < 2 + 9 * count:
        raise InvalidFile(FORMAT, "Section 3 number of leads", f"{count} leads of 9 bytes; the "
                          f"section holds {len(body) - 2}")
    leads = [_Lead(*struct.unpack_from("<IIB", body, 2 + 9 * i)) for i in range(count)]
    for i, lead in enumerate(leads):
        if not 1 <= lead.start <= lead.end or lead.end - lead.start >= 10_000_000:
            raise InvalidFile(FORMAT, f"Section 3 lead {i + 1}", f"samples {lead.start}.."
                              f"{lead.end}; expected 1 <= start <= end, < 10 million")
    return leads, bool(flags & 1)


def _channel(lead: _Lead, avm_nv: int) -> Channel:
    name = LEAD_CODES.get(("SCPECG", f"5.6.3-9-{lead.code}"))
    source = None if name else Code("SCPECG", f"5.6.3-9-{lead.code}", f"Lead {lead.code}")
    return Channel(label=name or f"lead {lead.code}", lead=name, source=source, units="uV",
                   sensitivity=avm_nv / 1000.0)


def _undifference(values: np.ndarray, order: int, where: str) -> np.ndarray:
    if order == 0:
        return values
    if order == 1:
        return np.cumsum(values)
    if order == 2:
        if values.size < 2:
            return values
        steps = np.empty_like(values)
        steps[0] = values[0]
        steps[1:] = (values[1] - values[0]) + np.cumsum(np.concatenate(([0], values[2:])))
        return np.cumsum(steps)
    raise InvalidFile(FORMAT, where, f"difference encoding {order}; expected 0, 1 or 2")


def _signals(body: bytes, section: int, counts: list[int], tables: tuple[Table, ...] | None,
             ) -> tuple[int, int, list[np.ndarray]]:
    """(AVM nV, sample interval µs, per-lead samples) of Section 5 or 6."""
    where = f"Section {section}"
    n = len(counts)
    if len(body) < 6 + 2 * n:
        raise InvalidFile(FORMAT, where, f"{len(body)} bytes; its header for {n} leads needs "
                          f"{6 + 2 * n}")
    avm, interval, order, bimodal = struct.unpack_from("<HHBB", body, 0)
    if avm == 0 or interval == 0:
        raise InvalidFile(FORMAT, f"{where} header", f"amplitude {avm} nV, interval {interval} "
                          "µs: both must be positive")
    if section == 5 and bimodal:
        raise InvalidFile(FORMAT, "Section 5 header", f"byte 6 is {bimodal}; only Section 6 "
                          "may use bimodal compression")
    sizes = struct.unpack_from(f"<{n}H", body, 6)
    offset = 6 + 2 * n
    if offset + sum(sizes) > len(body):
        raise InvalidFile(FORMAT, f"{where} lead lengths", f"{sum(sizes)} bytes of data for "
                          f"{n} leads; {len(body) - offset} remain")
    leads = []
    for i, (size, count) in enumerate(zip(sizes, counts, strict=True)):
        chunk = body[offset:offset + size]
        offset += size
        lead_where = f"{where} lead {i + 1}"
        if tables is None:
            if size < 2 * count:
                raise InvalidFile(FORMAT, lead_where, f"{size} bytes for {count} samples")
            values = np.frombuffer(chunk[:2 * count], dtype="<i2").astype(np.int64)
        else:
            values = decode(chunk, tables, count, lead_where)
        leads.append(_undifference(values, order, f"{where} difference encoding"))
    return avm, interval, leads


@dataclass(frozen=True, slots=True)
class _Qrs:
    kind: int
    start: int
    fiducial: int
    end: int


@dataclass(frozen=True, slots=True)
class _Reference:
    """Sections 4 and 5: the reference beats and where they were subtracted."""

    avm: int
    interval: int
    beats: list[np.ndarray]
    fiducial: int
    complexes: list[_Qrs]
    protected: list[Zone] | None  # absent from SCP-ECG 1.0 records


def _qrs(body: bytes) -> tuple[int, int, list[_Qrs], list[Zone] | None]:
    if len(body) < 6:
        raise InvalidFile(FORMAT, "Section 4", f"{len(body)} bytes; its header needs 6")
    length_ms, fiducial, count = struct.unpack_from("<HHH", body, 0)
    if len(body) < 6 + 14 * count:
        raise InvalidFile(FORMAT, "Section 4 number of QRS complexes", f"{count} of 14 bytes; "
                          f"{len(body) - 6} bytes remain")
    complexes = [_Qrs(*struct.unpack_from("<HIII", body, 6 + 14 * i)) for i in range(count)]
    # After the subtraction zones, each QRS's protected zone: first and last sample.
    zones = 6 + 14 * count
    protected = [Zone(*struct.unpack_from("<II", body, zones + 8 * i)) for i in range(count)] \
        if len(body) >= zones + 8 * count else None
    return length_ms, fiducial, complexes, protected


def _add_reference(rhythm: list[np.ndarray], beats: list[np.ndarray], fiducial: int,
                   complexes: list[_Qrs]) -> None:
    """Add the type-0 reference beat back where the cart subtracted it (5.10.2)."""
    for q in complexes:
        if q.kind != 0:
            continue
        n = len(rhythm[0])
        if not 1 <= q.start <= q.fiducial <= q.end <= n:
            raise InvalidFile(FORMAT, "Section 4 QRS subtraction zone", f"{q.start}.."
                              f"{q.end} around {q.fiducial} lies outside 1..{n}")
        lo = q.fiducial - fiducial + 1  # rhythm sample (1-based) of reference sample 1
        first, last = max(q.start, lo), min(q.end, lo + len(beats[0]) - 1)
        for r, b in zip(rhythm, beats, strict=True):
            r[first - 1:last] += b[first - lo:last - lo + 1]


def _measurements(body: bytes | None) -> tuple[Measurement, ...]:
    if not body or len(body) < 6 + 16:
        return ()
    blocks, spikes, rr, pp = struct.unpack_from("<BBHH", body, 0)
    p_on, p_off, q_on, q_off, t_off = struct.unpack_from("<5H", body, 6)
    p_axis, qrs_axis, t_axis = struct.unpack_from("<3h", body, 16)
    out: list[Measurement] = []

    def add(name: str, value: int | None, units: str, concept: str | None) -> None:
        if value is not None:
            out.append(measurement(name, float(value), units, concept))

    def known(*values: int) -> bool:
        return all(v not in _UNDEFINED for v in values)

    add("RR interval", rr if known(rr) else None, "ms", "rr")
    add("PP interval", pp if known(pp) else None, "ms", "pp")
    add("P duration", p_off - p_on if known(p_on, p_off) else None, "ms", None)
    add("PR interval", q_on - p_on if known(p_on, q_on) else None, "ms", "pr")
    add("QRS duration", q_off - q_on if known(q_on, q_off) else None, "ms", "qrs")
    add("QT interval", t_off - q_on if known(q_on, t_off) else None, "ms", "qt")
    for name, value, concept in (("P axis", p_axis, "p_axis"), ("QRS axis", qrs_axis, "qrs_axis"),
                                 ("T axis", t_axis, "t_axis")):
        add(name, value if known(value & 0xFFFF, value) else None, "deg", concept)
    # After the blocks: pacemaker spikes (4 + 6 bytes each), the QRS types, then
    # ventricular rate, atrial rate and QTc (5.10.5).
    offset = 6 + 16 * blocks + 10 * spikes
    if offset + 2 <= len(body):
        (n_qrs,) = struct.unpack_from("<H", body, offset)
        offset += 2 + n_qrs
        if offset + 6 <= len(body):
            vent, _atrial, qtc = struct.unpack_from("<HHH", body, offset)
            # A rate of 0 is how ECG Toolkit's writer leaves it unmeasured.
            add("Ventricular rate", vent if known(vent) and vent else None, "/min",
                "heart_rate")
            add("QTc", qtc if known(qtc) else None, "ms", "qtc")
    return tuple(out)


def _statements(body: bytes | None) -> tuple[str, ...]:
    if not body or len(body) < 9:
        return ()
    count = body[8]
    out = []
    offset = 9
    for _ in range(count):
        if offset + 3 > len(body):
            raise InvalidFile(FORMAT, "Section 8 statements", "truncated")
        _number, size = struct.unpack_from("<BH", body, offset)
        offset += 3
        if offset + size > len(body):
            raise InvalidFile(FORMAT, "Section 8 statement length", f"{size} bytes pass the "
                              "section's end")
        text = _text(body[offset:offset + size])
        offset += size
        if text:
            out.append(text)
    return tuple(out)


def _reference(bodies: dict[int, bytes], n: int, tables: tuple[Table, ...] | None,
               ) -> _Reference:
    length_ms, fiducial, complexes, protected = _qrs(bodies[4])
    avm, interval = struct.unpack_from("<HH", bodies[5], 0) if len(bodies[5]) >= 4 else (0, 0)
    if interval <= 0:
        raise InvalidFile(FORMAT, "Section 5 header", f"sample interval {interval} µs")
    samples = length_ms * 1000 // interval
    beats: list[np.ndarray] = []
    if samples > 0:
        avm, interval, beats = _signals(bodies[5], 5, [samples] * n, tables)
    return _Reference(avm, interval, beats, fiducial, complexes, protected)


def _bimodal_rhythm(body: bytes, count: int, n: int, reference: _Reference | None,
                    tables: tuple[Table, ...] | None) -> tuple[int, int, list[np.ndarray]]:
    """(AVM nV, full-rate interval µs, residual per lead) of a bimodal Section 6."""
    where = "Section 6 bimodal compression"
    if reference is None or not reference.beats:
        raise InvalidFile(FORMAT, where, "used, but Sections 4 and 5 (the protected zones "
                          "and the full sampling rate) are not both present")
    if reference.protected is None:
        raise InvalidFile(FORMAT, "Section 4 protected zones", "absent; bimodal compression "
                          "stores the rhythm at the full rate only inside them")
    if len(body) < 4:
        raise InvalidFile(FORMAT, "Section 6", f"{len(body)} bytes; its header needs 6")
    (interval,) = struct.unpack_from("<H", body, 2)
    factor, rest = divmod(interval, reference.interval)
    if rest or not 1 <= factor <= 16:
        raise InvalidFile(FORMAT, f"{where} sample interval", f"{interval} µs is not 1 to 16 "
                          f"times Section 5's {reference.interval} µs")
    zones = reference.protected
    check_zones(count, zones)
    avm, _, stored = _signals(body, 6, [stored_count(count, zones, factor)] * n, tables)
    # The filter does not cross the edges of a type-0 subtraction zone.
    cuts = [c for q in reference.complexes if q.kind == 0 for c in (q.start, q.end + 1)]
    return avm, reference.interval, [
        smooth(expand(values, count, zones, factor), zones, cuts) for values in stored]


def read(data: bytes) -> Reading:
    sections = _sections(bytes(data))
    bodies = sections.bodies
    for needed in (3, 6):
        if needed not in bodies:
            raise InvalidFile(FORMAT, f"Section {needed}", "absent; it holds the "
                              + ("leads" if needed == 3 else "rhythm data"))
    tables = parse_tables(bodies[2]) if 2 in bodies else None
    leads, subtracted = _leads(bodies[3])
    first = leads[0]
    if any((lead.start, lead.end) != (first.start, first.end) for lead in leads):
        spans = sorted({(lead.start, lead.end) for lead in leads})
        raise InvalidFile(FORMAT, "Section 3 leads", f"recorded over different spans {spans}; "
                          "only simultaneous leads fit a multiplex group")
    count = first.end - first.start + 1
    n = len(leads)
    reference = _reference(bodies, n, tables) if 4 in bodies and 5 in bodies else None
    if subtracted and reference is None:
        raise InvalidFile(FORMAT, "Section 3 flags", "say the reference beat was subtracted, "
                          "but Sections 4 and 5 are not both present")
    bimodal = len(bodies[6]) >= 6 and bodies[6][5] != 0
    if bimodal:
        avm, interval, rhythm = _bimodal_rhythm(bodies[6], count, n, reference, tables)
    else:
        avm, interval, rhythm = _signals(bodies[6], 6, [count] * n, tables)
    if subtracted and reference is not None and reference.beats:
        if reference.interval != interval:
            raise InvalidFile(FORMAT, "Section 5 header", f"sample interval "
                              f"{reference.interval} µs; the rhythm's is {interval} µs")
        # Both in integers of one unit: the greatest common divisor of the two.
        unit = math.gcd(avm, reference.avm)
        rhythm = [r * (avm // unit) for r in rhythm]
        beats = [b * (reference.avm // unit) for b in reference.beats]
        _add_reference(rhythm, beats, reference.fiducial, reference.complexes)
        avm = unit

    groups = [int16_group(FORMAT, "Section 6", "RHYTHM", 1e6 / interval,
                          [_channel(lead, avm) for lead in leads], rhythm,
                          originality="DERIVED" if bimodal else "ORIGINAL")]
    if reference is not None and reference.beats:
        groups.append(int16_group(FORMAT, "Section 5", "MEDIAN BEAT", 1e6 / reference.interval,
                                  [_channel(lead, reference.avm) for lead in leads],
                                  reference.beats, originality="DERIVED"))
    warnings = (f"{FORMAT}: Section 6 uses bimodal compression: the rhythm is the standard's "
                "reconstruction (interpolated and filtered outside the protected zones), not "
                "the acquired samples",) if bimodal else ()

    tags = _tags(bodies.get(1, b""))
    day = _date(25, tags.get(25))
    manufacturer, model, serial, software = _device(tags.get(14))
    last, given = _text(tags.get(0)), _text(tags.get(1))
    return Reading(
        groups=tuple(groups),
        acquisition_datetime=dt.datetime.combine(day, _time(tags.get(26))) if day else None,
        patient_id=_text(tags.get(2)),
        patient_name="^".join((last, given)) if given else last,
        birth_date=_date(5, tags.get(5)),
        sex=_SEX.get(tags[8][0], "") if tags.get(8) else "",
        manufacturer=manufacturer,
        model=model,
        device_serial_number=serial,
        software_versions=software,
        institution=_text(tags.get(16)),
        measurements=_measurements(bodies.get(7)),
        statements=_statements(bodies.get(8)),
        warnings=warnings,
    )


READER = Reader(FORMAT, "SCP-ECG", recognises, read, "Section 1 tag 25 (date of acquisition)")
