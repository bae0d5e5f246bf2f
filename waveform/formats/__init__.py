"""The carts' own files: GE MUSE XML, Philips Sierra XML, HL7 aECG, SCP-ECG -> `Ecg` and DICOM.

`recognise` names the format of some bytes, `convert` reads them and encodes the
DICOM object the archive keeps beside the original file (see docs/formats.md).
"""

from __future__ import annotations

from waveform.formats.base import Measurement, Reader, Reading
from waveform.formats.registry import (
    DICOM,
    FORMATS,
    Converted,
    StatedFormat,
    cart_format,
    convert,
    recognise,
    stated_format,
)

__all__ = ["DICOM", "FORMATS", "Converted", "Measurement", "Reader", "Reading", "StatedFormat",
           "cart_format", "convert", "recognise", "stated_format"]
