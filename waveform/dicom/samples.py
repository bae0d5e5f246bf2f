"""From a decoded group's stored samples to physical values (PS3.3 C.10.9.1.4-5).

The stored integers are kept as they are (``WaveformGroup.raw``); the one scaling
kernel, `waveform.dsp.scale`, turns them into physical values for every consumer
(`WaveformGroup.physical`, `WaveformGroup.microvolts`). This module keeps the
DICOM-facing names: the G.711 tables and `physical(group)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from waveform.dsp.scale import ALAW, ULAW

if TYPE_CHECKING:
    from waveform.model import WaveformGroup

__all__ = ["ALAW", "ULAW", "physical"]


def physical(group: WaveformGroup) -> np.ndarray:
    """float64 (channels, samples) of ``group`` in each channel's units."""
    return group.physical()
