"""The formats we read, recognised by content, and the conversion of a file to DICOM.

`FORMATS` is the registry: one `Reader` per cart format (plus DICOM itself,
which passes through untouched). `recognise` looks at the content only, never at
a file name; `convert` gives the `Ecg`, the DICOM bytes our encoder makes of it
and the original bytes, unchanged. The same input gives byte-identical DICOM.
"""

from __future__ import annotations

from dataclasses import dataclass

from waveform.dicom.decode import decode
from waveform.dicom.encode import encode
from waveform.errors import InvalidArgument, UnknownFormat
from waveform.formats import aecg, muse, scp, sierra
from waveform.formats.base import Measurement, Reader, assemble
from waveform.formats.xmltree import root_name
from waveform.model import Ecg

__all__ = ["DICOM", "FORMATS", "Converted", "StatedFormat", "cart_format", "convert",
           "recognise", "stated_format"]

DICOM = "dicom"

#: The cart formats, by the name `recognise` returns and `convert` accepts.
FORMATS: dict[str, Reader] = {
    r.name: r for r in (muse.READER, sierra.READER, aecg.READER, scp.READER)
}

#: What other content looks like, by its leading bytes, to say so in the error.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"%PDF-", "a PDF document"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip stream"),
    (b"{", "JSON"),
    (b"MSH|", "an HL7 v2 message"),
)


@dataclass(frozen=True, slots=True)
class Converted:
    """One file converted: its format, the `Ecg`, our DICOM, and the file as received."""

    format: str
    ecg: Ecg
    dicom: bytes
    original: bytes
    measurements: tuple[Measurement, ...] = ()
    statements: tuple[str, ...] = ()


def _is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def recognise(data: bytes) -> str:
    """The format of ``data``: "dicom" or a name in `FORMATS`; else `UnknownFormat`."""
    if _is_dicom(data):
        return DICOM
    for name, reader in FORMATS.items():
        if reader.recognises(data):
            return name
    raise UnknownFormat(f"the content is no ECG format we read ({_looks_like(data)}); "
                        f"expected {DICOM} (Part 10, 'DICM' at byte 128) or "
                        + ", ".join(f"{r.title} ({n})" for n, r in FORMATS.items()))


def cart_format(data: bytes | memoryview) -> str | None:
    """The cart format (a name in `FORMATS`) of ``data`` by its content, or None: a
    DICOM object (Part 10 or a bare data set) or anything else, which the DICOM
    decoder then accepts or refuses with its own message. Reads at most 4 KiB."""
    if len(data) >= 132 and bytes(data[128:132]) == b"DICM":
        return None
    head = bytes(data[:4096])
    for name, reader in FORMATS.items():
        if reader.recognises(head):
            return name
    return None


class StatedFormat(bytes):
    """The bytes of a file whose sender stated its format (an `IngestRequest`'s
    ``format``): they travel as bytes through the intake to the store, which reads
    them as that format (`stated_format`) instead of recognising it."""

    format: str

    def __new__(cls, data: bytes | memoryview, format: str) -> StatedFormat:
        out = super().__new__(cls, data)
        out.format = format
        return out


def stated_format(data: bytes | memoryview) -> str | None:
    """The format stated for ``data`` (`StatedFormat`), or None."""
    return data.format if isinstance(data, StatedFormat) else None


def _looks_like(data: bytes) -> str:
    if not data:
        return "it is empty"
    for magic, what in _SIGNATURES:
        if data.startswith(magic):
            return f"it looks like {what}"
    root = root_name(data)
    if root is not None:
        return f"it is XML with root element <{root}>"
    return f"it starts with bytes {data[:8].hex(' ')}"


def convert(data: bytes, format: str | None = None) -> Converted:
    """``data`` read as ``format`` (recognised from the content when None) and encoded.

    DICOM input is returned as it is (``dicom`` is ``data``), decoded for ``ecg``.
    """
    data = bytes(data)
    name = format or recognise(data)
    if name == DICOM:
        return Converted(DICOM, decode(data), data, data)
    reader = FORMATS.get(name)
    if reader is None:
        raise InvalidArgument(f"format {name!r} is not one we read; expected {DICOM} or "
                              + ", ".join(FORMATS))
    reading = reader.read(data)
    ecg = assemble(name, data, reading, reader.date_field)
    return Converted(name, ecg, encode(ecg), data, reading.measurements, reading.statements)
