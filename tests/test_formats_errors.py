"""Malformed cart files: a typed error naming the format, the field and the problem.

Specific defects per format first (with the message each must give), then seeded
mutations (truncations, byte flips, and for SCP-ECG edits behind valid CRCs, so
that the parser itself is reached): whatever happens, only a `WaveformError`
escapes.
"""

from __future__ import annotations

import random
import re
import struct
from collections.abc import Callable

import pytest

from tests.conftest import shared
from tests.test_formats_synthetic import (
    scp_bodies,
    scp_record,
    synthetic_aecg,
    synthetic_muse,
    synthetic_scp,
    synthetic_sierra,
)
from waveform.errors import InvalidArgument, InvalidFile, WaveformError
from waveform.formats import convert


def _edit(data: bytes, pattern: str, repl: str, *, encoding: str = "latin-1",
          count: int = 1) -> bytes:
    text = data.decode(encoding)
    edited, n = re.subn(pattern, repl, text, count=count, flags=re.S)
    assert n, f"{pattern!r} not found"
    return edited.encode(encoding)


MUSE = synthetic_muse()
SIERRA = synthetic_sierra()
AECG = synthetic_aecg()
SCP = synthetic_scp()


def _scp_edit(change: Callable[[dict[int, bytes]], object]) -> bytes:
    bodies = scp_bodies(SCP)
    change(bodies)
    return scp_record(bodies)


SCP_SUBTRACTED = synthetic_scp(subtract=True)


def _bimodal(interval: int = 8000, section4: Callable[[bytes], bytes] = lambda b: b,
             record: bytes = SCP_SUBTRACTED) -> bytes:
    """``record`` with Section 6 flagged bimodal at ``interval`` µs, Section 4 edited."""
    bodies = scp_bodies(record)
    bodies[6] = bodies[6][:2] + struct.pack("<HBB", interval, 2, 1) + bodies[6][6:]
    if 4 in bodies:
        bodies[4] = section4(bodies[4])
    return scp_record(bodies)


def _set_lead_sizes(bodies: dict[int, bytes], sizes: list[int]) -> None:
    bodies[6] = bodies[6][:6] + struct.pack("<12H", *sizes) + bodies[6][30:]


CASES: list[tuple[str, Callable[[], bytes], str]] = [
    # GE MUSE XML
    ("muse-base64", lambda: _edit(MUSE, r"<WaveFormData>.{8}", "<WaveFormData>@@@@!!!!"),
     r"ge-muse-xml: .*LeadData\[0\]/WaveFormData: not valid base64"),
    ("muse-crc", lambda: _edit(MUSE, r"<LeadDataCRC32>\d+", "<LeadDataCRC32>12345"),
     r"ge-muse-xml: .*LeadDataCRC32: CRC-32 12345 stated, \d+ computed"),
    ("muse-lead-count", lambda: _edit(MUSE, r"<NumberofLeads>8", "<NumberofLeads>12"),
     r"ge-muse-xml: .*NumberofLeads: says 12 leads, 8 LeadData are present"),
    ("muse-sample-count", lambda: _edit(MUSE, r"<LeadSampleCountTotal>5000",
                                        "<LeadSampleCountTotal>4000"),
     r"ge-muse-xml: .*WaveFormData: WaveFormData holds 10000 bytes, LeadSampleCountTotal "
     r"says 4000 samples"),
    ("muse-truncated", lambda: MUSE[: len(MUSE) // 2], r"ge-muse-xml: XML: not well-formed"),
    ("muse-entities", lambda: _edit(MUSE, r"<!DOCTYPE RestingECG SYSTEM \"restecg.dtd\">",
                                    '<!DOCTYPE RestingECG [<!ENTITY a "aaaa">]>'),
     r"ge-muse-xml: document type: declares entities"),
    ("muse-no-rhythm", lambda: _edit(MUSE, r"<WaveformType>Rhythm", "<WaveformType>Median"),
     r"ge-muse-xml: RestingECG/Waveform: no Rhythm waveform"),
    ("muse-date", lambda: _edit(MUSE, r"<AcquisitionDate>[^<]*", "<AcquisitionDate>13-45-2024"),
     r"ge-muse-xml: TestDemographics/AcquisitionDate: '13-45-2024' is not a date"),
    ("muse-exponent", lambda: _edit(MUSE, r"<SampleExponent>0", "<SampleExponent>400"),
     r"ge-muse-xml: .*SampleBase: sampling rate 500.0 x 10\^400 is not a rate"),
    ("muse-nan", lambda: _edit(MUSE, r"<QTInterval>380", "<QTInterval>nan"),
     r"ge-muse-xml: RestingECG/RestingECGMeasurements/QTInterval: 'nan' is not a finite"),
    # Philips Sierra XML (UTF-16)
    ("sierra-rate", lambda: _edit(SIERRA, 'samplespersecond="500"', 'samplespersecond="fast"',
                                  encoding="utf-16"),
     r"philips-sierra-xml: .*parsedwaveforms@samplespersecond: 'fast' is not a number"),
    ("sierra-lead-count", lambda: _edit(SIERRA, 'numberofleads="12"', 'numberofleads="11"',
                                        encoding="utf-16"),
     r"philips-sierra-xml: .*parsedwaveforms@numberofleads: numberofleads says 11, "
     r"leadlabels names 12"),
    ("sierra-version", lambda: _edit(SIERRA, r"<documentversion>1.04", "<documentversion>2.0",
                                     encoding="utf-16"),
     r"philips-sierra-xml: restingecgdata/documentinfo: 'PhilipsECG' version '2.0'"),
    ("sierra-short", lambda: _edit(SIERRA, r'resolution="5">(.{40}).*?</parsedwaveforms>',
                                   r'resolution="5">\1</parsedwaveforms>', encoding="utf-16"),
     r"philips-sierra-xml: .*parsedwaveforms: 30 bytes hold fewer than 12 leads of 5000"),
    ("sierra-base64", lambda: _edit(SIERRA, r'resolution="5">', 'resolution="5">*',
                                    encoding="utf-16"),
     r"philips-sierra-xml: .*parsedwaveforms: not valid base64"),
    ("sierra-compression", lambda: _edit(SIERRA, 'compression="None"', 'compression="ZIP"',
                                         encoding="utf-16"),
     r"philips-sierra-xml: .*@compression: compression 'ZIP'; XLI or none"),
    # HL7 aECG
    ("aecg-digit", lambda: _edit(AECG, r"<digits>(-?\d+) ", "<digits>1.5 "),
     r"hl7-aecg: .*value/digits: digit '1.5' is not an integer"),
    ("aecg-lengths", lambda: _edit(AECG, r"<digits>-?\d+ ", "<digits>"),
     r"hl7-aecg: .*sequenceSet\[0\]: leads hold different sample counts \[4999, 5000\]"),
    ("aecg-no-time", lambda: _edit(AECG, r'<code code="TIME_RELATIVE"/>.*?</sequence>',
                                   '<code code="OTHER"/><value/></sequence>'),
     r"hl7-aecg: .*sequenceSet\[0\]/component/sequence: no TIME_ABSOLUTE or TIME_RELATIVE"),
    ("aecg-scale", lambda: _edit(AECG, r'<scale value="2.5" unit="uV"/>',
                                 '<scale value="2.5" unit="mm"/>'),
     r"hl7-aecg: .*value/scale: scale 2.5 'mm', origin 0.0 'uV'"),
    ("aecg-timestamp", lambda: _edit(AECG, r'<center value="\d+"/>', '<center value="2024X"/>'),
     r"hl7-aecg: AnnotatedECG/effectiveTime/center@value: '2024X' is not an HL7 timestamp"),
    # SCP-ECG
    ("scp-record-crc", lambda: SCP[:-1] + bytes([SCP[-1] ^ 0xFF]),
     r"scp-ecg: record CRC: 0x[0-9A-F]{4} stored, 0x[0-9A-F]{4} computed"),
    ("scp-record-length", lambda: SCP + b"\0\0",
     rf"scp-ecg: record length: says {len(SCP)} bytes, the file holds {len(SCP) + 2}"),
    ("scp-section-crc", lambda: _section_flip(SCP),
     r"scp-ecg: Section 6 CRC: 0x[0-9A-F]{4} stored, 0x[0-9A-F]{4} computed"),
    ("scp-huffman-not-prefix-free", lambda: _scp_edit(lambda b: b.__setitem__(
        2, struct.pack("<HH", 1, 2) + struct.pack("<BBBhI", 1, 1, 1, 0, 0)
        + struct.pack("<BBBhI", 2, 2, 1, 1, 0))),
     r"scp-ecg: Section 2 table 1: code 0 is a prefix of code 00: not a Huffman table"),
    ("scp-huffman-table-count", lambda: _scp_edit(lambda b: b.__setitem__(2, b"\0\0")),
     r"scp-ecg: Section 2 number of tables: 0; expected 1..256 or 19999"),
    ("scp-huffman-switch", lambda: _scp_edit(lambda b: b.__setitem__(2, struct.pack(
        "<HH", 1, 1) + struct.pack("<BBBhI", 1, 1, 0, 5, 0))),
     r"scp-ecg: Section 2 table 1 code 1: switches to table 5; there are 1"),
    ("scp-lead-count", lambda: _scp_edit(lambda b: b.__setitem__(3, bytes((13,)) + b[3][1:])),
     r"scp-ecg: Section 3 number of leads: 13 leads of 9 bytes; the section holds 108"),
    ("scp-lead-bytes", lambda: _scp_edit(lambda b: _set_lead_sizes(b, [60000] * 12)),
     r"scp-ecg: Section 6 lead lengths: 720000 bytes of data for 12 leads"),
    ("scp-bit-stream", lambda: _scp_edit(lambda b: _set_lead_sizes(
        b, [700, *struct.unpack_from("<11H", b[6], 8)])),
     r"scp-ecg: Section 6 lead 1: the bit stream ends (inside a value )?after \d+ of 5000 samples"),
    ("scp-spans", lambda: _scp_edit(lambda b: b.__setitem__(
        3, b[3][:2] + struct.pack("<IIB", 1, 4000, 1) + b[3][11:])),
     r"scp-ecg: Section 3 leads: recorded over different spans \[\(1, 4000\), \(1, 5000\)\]"),
    ("scp-absurd-length", lambda: _scp_edit(lambda b: b.__setitem__(3, b[3][:2] + b"".join(
        struct.pack("<IIB", 1, 9_000_000, code) for code in b[3][10:110:9]))),
     r"scp-ecg: Section 6 lead 1: \d+ bytes of Huffman codes cannot hold 9000000 samples"),
    ("scp-no-rhythm", lambda: _scp_edit(lambda b: b.pop(6)),
     r"scp-ecg: Section 6: absent; it holds the rhythm data"),
    ("scp-date", lambda: _scp_edit(lambda b: b.__setitem__(1, b[1].replace(
        struct.pack("<BH", 25, 4) + struct.pack("<HBB", 2024, 3, 5),
        struct.pack("<BH", 25, 4) + struct.pack("<HBB", 2024, 13, 5)))),
     r"scp-ecg: Section 1 tag 25: 2024-13-5: month must be in 1..12"),
    ("scp-difference", lambda: _scp_edit(lambda b: b.__setitem__(
        6, b[6][:4] + b"\x07" + b[6][5:])),
     r"scp-ecg: Section 6 difference encoding: difference encoding 7; expected 0, 1 or 2"),
    ("scp-bimodal-without-reference", lambda: _bimodal(record=SCP),
     r"scp-ecg: Section 6 bimodal compression: used, but Sections 4 and 5 \(the protected "
     r"zones and the full sampling rate\) are not both present"),
    ("scp-bimodal-interval", lambda: _bimodal(3000),
     r"scp-ecg: Section 6 bimodal compression sample interval: 3000 µs is not 1 to 16 "
     r"times Section 5's 2000 µs"),
    ("scp-bimodal-no-protected-zones", lambda: _bimodal(section4=lambda b: b[:6 + 14 * 3]),
     r"scp-ecg: Section 4 protected zones: absent; bimodal compression stores the rhythm "
     r"at the full rate only inside them"),
    ("scp-bimodal-zones-overlap", lambda: _bimodal(section4=lambda b: b[:-8] + struct.pack(
        "<II", 2100, 3100)),
     r"scp-ecg: Section 4 protected zone 3: samples 2100..3100; expected an ordered zone "
     r"after sample 2150 and inside 1..5000"),
    ("scp-bimodal-zone-outside", lambda: _bimodal(section4=lambda b: b[:-8] + struct.pack(
        "<II", 4990, 5001)),
     r"scp-ecg: Section 4 protected zone 3: samples 4990..5001; expected an ordered zone "
     r"after sample 2150 and inside 1..5000"),
    ("scp-truncated", lambda: SCP[:1000],
     rf"scp-ecg: record length: says {len(SCP)} bytes, the file holds 1000"),
]


def _section_flip(data: bytes) -> bytes:
    """A byte of Section 6's data flipped, the record CRC made right again."""
    mutable = bytearray(data)
    mutable[-10] ^= 0x55
    from waveform.formats.scp import crc_ccitt

    mutable[0:2] = struct.pack("<H", crc_ccitt(bytes(mutable[2:])))
    return bytes(mutable)


@pytest.mark.parametrize(("make", "message"), [(m, msg) for _, m, msg in CASES],
                         ids=[name for name, _, _ in CASES])
def test_malformed_file_names_format_field_and_problem(
    make: Callable[[], bytes], message: str
) -> None:
    with pytest.raises(InvalidFile, match=message) as info:
        convert(make())
    assert isinstance(info.value, InvalidArgument)
    assert info.value.format in {"ge-muse-xml", "philips-sierra-xml", "hl7-aecg", "scp-ecg"}


def test_stated_format_that_does_not_fit() -> None:
    with pytest.raises(InvalidFile, match=r"scp-ecg: record length"):
        convert(MUSE, "scp-ecg")
    with pytest.raises(InvalidArgument, match=r"format 'edf' is not one we read"):
        convert(MUSE, "edf")


def test_real_xli_truncated_names_the_chunk() -> None:
    data = shared("other", "sierra_129DYPRG.XML").read_bytes()
    start = data.index(b"<parsedwaveforms")
    start = data.index(b">", start) + 1
    # Keep 4000 base64 characters (3000 bytes) of the first chunk: its LZW data is cut short.
    end = data.index(b"</parsedwaveforms>")
    text = re.sub(rb"\s+", b"", data[start:end])
    cut = data[:start] + text[:4000] + data[end:]
    with pytest.raises(InvalidFile, match=r"philips-sierra-xml: .*parsedwaveforms chunk \d+ at "
                       r"byte \d+: says \d+ bytes of LZW data, \d+ remain"):
        convert(cut)


# ---------------------------------------------------------------------------
# Mutations: whatever the damage, only a WaveformError escapes.

_MUTATIONS_PER_FORMAT = 24


def _mutants(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(_MUTATIONS_PER_FORMAT):
        if i % 3 == 0:
            out.append(data[: rng.randrange(len(data))])
        else:
            mutable = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                mutable[rng.randrange(len(mutable))] = rng.randrange(256)
            out.append(bytes(mutable))
    return out


def _scp_deep_mutants(seed: int) -> list[bytes]:
    """Edits of section bodies behind valid CRCs: the parser itself sees them."""
    rng = random.Random(seed)
    bodies = scp_bodies(synthetic_scp(subtract=True))
    out = []
    for i in range(_MUTATIONS_PER_FORMAT):
        changed = dict(bodies)
        number = rng.choice(sorted(changed))
        body = bytearray(changed[number])
        if i % 3 == 0:
            del body[rng.randrange(len(body)):]
        else:
            # Headers matter most: aim half of the flips at the first 40 bytes.
            limit = len(body) if i % 2 else min(len(body), 40)
            for _ in range(rng.randint(1, 3)):
                body[rng.randrange(limit)] = rng.randrange(256)
        changed[number] = bytes(body)
        out.append(scp_record(changed))
    return out


MUTANTS: dict[str, Callable[[], list[bytes]]] = {
    "ge-muse-xml": lambda: _mutants(MUSE, 1),
    "philips-sierra-xml": lambda: _mutants(SIERRA, 2),
    "hl7-aecg": lambda: _mutants(AECG, 3),
    "scp-ecg": lambda: _mutants(SCP, 4),
    "scp-ecg-behind-crc": lambda: _scp_deep_mutants(5),
}


@pytest.mark.parametrize("kind", sorted(MUTANTS))
def test_mutations_raise_only_waveform_errors(kind: str) -> None:
    outcomes = {"converted": 0, "refused": 0}
    for i, mutant in enumerate(MUTANTS[kind]()):
        try:
            convert(mutant)
        except WaveformError:
            outcomes["refused"] += 1
        except Exception as e:  # pragma: no cover - the failure this test exists for
            pytest.fail(f"{kind} mutant {i}: {type(e).__name__} escaped: {e}")
        else:
            outcomes["converted"] += 1
    assert outcomes["refused"] > 0, outcomes
