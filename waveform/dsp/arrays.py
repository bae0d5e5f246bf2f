"""The one shape the kernels take: (channels, samples), C-contiguous, float."""

from __future__ import annotations

import numpy as np

from waveform.errors import InvalidArgument

__all__ = ["as_channels"]


def as_channels(x: np.ndarray, what: str = "x") -> tuple[np.ndarray, bool]:
    """``x`` as a C-contiguous (channels, samples) array, and whether it was 1-D.

    float32 stays float32 (half the memory a kernel streams through), float64
    stays float64, any other dtype becomes float64. ``what`` names the argument
    in the error for any other number of dimensions.
    """
    arr = np.asarray(x)
    if arr.ndim not in (1, 2):
        raise InvalidArgument(f"{what} must be 1-D or (channels, samples), got shape {arr.shape}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    one_d = arr.ndim == 1
    return np.ascontiguousarray(arr.reshape(1, -1) if one_d else arr), one_d
