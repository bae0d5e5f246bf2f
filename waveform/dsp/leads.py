"""Derived limb leads and the Einthoven / Goldberger consistency check.

The six limb leads span a plane with two degrees of freedom: from I and II,
III = II - I (Einthoven's law), aVR = -(I + II) / 2, aVL = I - II / 2 and
aVF = II - I / 2 (Goldberger's augmented leads). A recording whose stored limb
leads break these identities has a swapped or mislabelled electrode, or leads
that were filtered differently.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["DERIVED", "derive_limb_leads", "limb_residuals"]

#: Leads derivable from I and II, in the order `derive_limb_leads` returns them.
DERIVED: tuple[str, ...] = ("III", "aVR", "aVL", "aVF")


@numba.njit(cache=True, nogil=True)
def derive_limb_leads(lead_i: np.ndarray, lead_ii: np.ndarray) -> np.ndarray:
    """(4, samples) III, aVR, aVL, aVF from leads I and II (same dtype as I)."""
    n = lead_i.shape[0]
    out = np.empty((4, n), dtype=lead_i.dtype)
    for k in range(n):
        a = lead_i[k]
        b = lead_ii[k]
        out[0, k] = b - a
        out[1, k] = -(a + b) * 0.5
        out[2, k] = a - b * 0.5
        out[3, k] = b - a * 0.5
    return out


@numba.njit(cache=True, nogil=True)
def limb_residuals(lead_i: np.ndarray, lead_ii: np.ndarray, limb: np.ndarray) -> np.ndarray:
    """RMS of (stored - derived) for III, aVR, aVL, aVF over RMS of lead II.

    ``limb`` is (4, samples) with the stored III, aVR, aVL, aVF (rows of NaN
    where a lead is absent, giving NaN). About 0 for a consistent recording;
    a few percent from rounding of the stored integers; order 1 when an
    electrode is swapped.
    """
    n = lead_i.shape[0]
    ref = 0.0
    for k in range(n):
        ref += float(lead_ii[k]) ** 2
    ref = np.sqrt(ref / max(n, 1))
    derived = derive_limb_leads(lead_i.astype(np.float64), lead_ii.astype(np.float64))
    out = np.empty(4)
    for r in range(4):
        acc = 0.0
        for k in range(n):
            d = float(limb[r, k]) - derived[r, k]
            acc += d * d
        out[r] = np.sqrt(acc / max(n, 1)) / ref if ref > 0 else np.nan
    return out
