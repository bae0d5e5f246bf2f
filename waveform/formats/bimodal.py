"""SCP-ECG bimodal compression: the full-rate residual rebuilt from its decimated form.

With bimodal compression (Section 6 byte 6 = 1) a cart stores the rhythm residual
(the rhythm less the type-0 reference beat over each subtraction zone) at the full
rate only inside the protected zones that Section 4 lists after the subtraction
zones (one per QRS complex, first and last sample); between them it stores one
value per ``factor`` samples, ``factor`` being Section 6's sample interval over
Section 5's (the reference beats keep the acquisition rate). A stretch of ``n``
samples between protected zones holds ``n // factor`` decimated values followed
by ``n % factor`` samples as they were.

EN 1064's decoder rebuilds the residual in three steps, done here as the OpenECG
reference decoder (E. Cervesato, ``scp-decode``) does them, in integers:

1. ``expand``: each decimated stretch is linearly interpolated back to the full
   rate, each value standing at the middle of the ``factor`` samples it replaced:
   its first value ``factor // 2`` times at the start (twice for the usual factor
   4), its last value for the rest of the last block at the end, and ``factor``
   samples from each value towards the next in between, truncated towards zero as
   the reference decoder's float-to-integer conversion does (that decoder is
   written for factor 4 only);
2. ``smooth``: outside the protected zones (their first and last samples
   included), a three-sample moving average rounded to the nearest integer, that
   keeps the first and last sample of each stretch and does not cross the edge of
   a type-0 subtraction zone, where adding the reference beat back leaves a step;
3. the reference beat is added back (``scp._add_reference``).

The result is not the acquired signal: outside the protected zones it is a
low-pass, decimated approximation (PixelMed's PFE105: 8.5-9.3 µV RMS against the
acquired samples, docs/formats.md). The reference decoder's optional extra
low-pass filter is not part of the standard and is not applied.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from waveform.errors import InvalidFile

__all__ = ["Zone", "check_zones", "expand", "smooth", "stored_count"]

FORMAT = "scp-ecg"


@dataclass(frozen=True, slots=True)
class Zone:
    """Samples ``first``..``last`` (1-based, inclusive) of a lead."""

    first: int
    last: int


def _stretches(n: int, zones: Sequence[Zone]) -> list[tuple[bool, int]]:
    """(protected, length) of the stretches that make up samples 1..n, in order."""
    out: list[tuple[bool, int]] = []
    start = 1
    for zone in zones:
        out.append((False, zone.first - start))
        out.append((True, zone.last - zone.first + 1))
        start = zone.last + 1
    out.append((False, n - start + 1))
    return [(kind, length) for kind, length in out if length > 0]


def check_zones(n: int, zones: Sequence[Zone]) -> None:
    """Protected zones must lie inside 1..n, in order, without overlap."""
    previous = 0
    for i, zone in enumerate(zones):
        if not previous < zone.first <= zone.last <= n:
            raise InvalidFile(FORMAT, f"Section 4 protected zone {i + 1}",
                              f"samples {zone.first}..{zone.last}; expected an ordered zone "
                              f"after sample {previous} and inside 1..{n}")
        previous = zone.last


def stored_count(n: int, zones: Sequence[Zone], factor: int) -> int:
    """How many values a lead of ``n`` samples holds in Section 6."""
    return sum(length if protected else length // factor + length % factor
               for protected, length in _stretches(n, zones))


def _interpolate(values: np.ndarray, factor: int) -> np.ndarray:
    """``len(values) * factor`` samples of one decimated stretch."""
    half = factor // 2
    head, tail = np.repeat(values[:1], half), np.repeat(values[-1:], factor - half)
    steps = np.arange(factor, dtype=np.int64)
    left, right = values[:-1, None], values[1:, None]
    # left + j (right - left) / factor, truncated towards zero, in exact integers.
    scaled = left * factor + steps * (right - left)
    between = (np.sign(scaled) * (np.abs(scaled) // factor)).reshape(-1)
    return np.concatenate((head, between, tail))


def expand(values: np.ndarray, n: int, zones: Sequence[Zone], factor: int) -> np.ndarray:
    """The ``n`` full-rate residual samples of one lead's ``stored_count`` values."""
    out = np.empty(n, dtype=np.int64)
    read = write = 0
    for protected, length in _stretches(n, zones):
        if protected:
            out[write:write + length] = values[read:read + length]
            read += length
        else:
            decimated, kept = divmod(length, factor)
            if decimated:
                out[write:write + decimated * factor] = _interpolate(
                    values[read:read + decimated], factor)
                read += decimated
            # The last length % factor samples were stored as they are.
            out[write + decimated * factor:write + length] = values[read:read + kept]
            read += kept
        write += length
    return out


def _average(x: np.ndarray, first: int, last: int, out: np.ndarray) -> None:
    """Three-sample mean over x[first+1 .. last-1] (0-based), rounded to nearest."""
    if last - first >= 2:
        total = x[first:last - 1] + x[first + 1:last] + x[first + 2:last + 1]
        out[first + 1:last] = (total + 1) // 3  # a third never ties: this is nearest


def smooth(x: np.ndarray, zones: Sequence[Zone], cuts: Sequence[int]) -> np.ndarray:
    """``x`` low-pass filtered outside the protected zones' interiors.

    ``cuts`` are the 1-based samples that start a new stretch of the filter (each
    type-0 subtraction zone's first sample and the sample after its last).
    """
    n = len(x)
    out = x.copy()
    bounds = [1] + [b for z in zones for b in (z.first, z.last)] + [n]
    edges = sorted(set(cuts))
    for lo, hi in zip(bounds[::2], bounds[1::2], strict=True):
        starts = [lo] + [c for c in edges if lo < c <= hi] + [hi + 1]
        for a, b in itertools.pairwise(starts):
            _average(x, a - 1, b - 2, out)
    return out
