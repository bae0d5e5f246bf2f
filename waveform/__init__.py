"""waveform: the ECG service of a national imaging archive."""

from __future__ import annotations

__version__ = "0.1.0"
