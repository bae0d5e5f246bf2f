"""A Bland-Altman figure of a `Comparison`: one panel per measurement.

Each panel plots, for every ECG both versions measured, the difference (new -
old) against the mean of the two, with the mean difference and the limits of
agreement (mean ± 1.96 SD; Bland and Altman, Lancet 1986;327:307-310).
"""

from __future__ import annotations

import math
import os
from typing import BinaryIO

import numpy as np

from waveform.reanalyze.compare import Comparison

__all__ = ["bland_altman"]


def bland_altman(comparison: Comparison, path: str | os.PathLike[str] | BinaryIO, *,
                 dpi: int = 100) -> None:
    """Write the figure as PNG to ``path`` (a file name or a binary file)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    diffs = comparison.differences
    cols = 3
    rows = max(1, math.ceil(len(diffs) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), dpi=dpi, layout="constrained")
    fig.suptitle(f"analysis {comparison.new_version} - {comparison.old_version} "
                 f"({comparison.n_common} ECGs)")
    for i, d in enumerate(diffs):
        ax = fig.add_subplot(rows, cols, i + 1)
        m = d.measurement
        ax.set_title(f"{m.label} (n={d.n}, became {d.became}, stopped {d.stopped})",
                     fontsize=9)
        ax.set_xlabel(f"mean of both ({m.unit})", fontsize=8)
        ax.set_ylabel(f"new - old ({m.unit})", fontsize=8)
        ax.tick_params(labelsize=7)
        if d.n == 0:
            ax.text(0.5, 0.5, "no ECG measured by both", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
            continue
        diff = d.diff
        mean = d.old + diff / 2.0
        ax.scatter(mean, diff, s=4, alpha=0.4, linewidths=0, rasterized=True)
        ax.axhline(d.mean, color="k", lw=1)
        if not np.isnan(d.sd):
            for sign in (-1.0, 1.0):
                ax.axhline(d.mean + sign * 1.96 * d.sd, color="k", lw=0.8, ls="--")
        ax.axhline(0.0, color="0.6", lw=0.6)
    target = os.fspath(path) if isinstance(path, str | os.PathLike) else path
    fig.savefig(target, format="png")
