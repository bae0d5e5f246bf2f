"""DICOM waveform objects: decode (ours, numba), encode (pydicom), byte-exact retention."""

from __future__ import annotations

from waveform.dicom.decode import decode
from waveform.dicom.encode import encode
from waveform.dicom.retain import join, split

__all__ = ["decode", "encode", "join", "split"]
