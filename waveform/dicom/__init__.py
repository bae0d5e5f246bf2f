"""DICOM waveform objects: decode (ours, numba), encode (pydicom), byte-exact retention."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from waveform.dicom.decode import decode
from waveform.dicom.retain import join, split

if TYPE_CHECKING:
    from waveform.model import Ecg

__all__ = ["decode", "encode", "join", "split"]


def encode(ecg: Ecg, transfer_syntax_uid: str | None = None, **kwargs: Any) -> bytes:
    """Encode ``ecg`` as a DICOM waveform object (see `waveform.dicom.encode`)."""
    from waveform.dicom.encode import encode as _encode

    return _encode(ecg, transfer_syntax_uid, **kwargs)
