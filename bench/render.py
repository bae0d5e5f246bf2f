"""Printout speed: `waveform.render` against a plain matplotlib plot of the same ECG.

Per ECG (12 leads, 10 s) and format (PNG at 150 dpi, PDF): the median time of
our ``render`` (header, grid, calibration, 3x4+1 layout) and of the peer, the
figure most people write first: an A4 figure with ``fig.add_subplot`` per lead
(3x4 plus a lead II strip), ``ax.plot`` of each lead, and a 0.04 s / 0.1 mV
minor and 0.2 s / 0.5 mV major grid from the axes' own ticks, saved with
``savefig``. Both start from the decoded ECG and end with the file's bytes.
"""

from __future__ import annotations

import io
from functools import partial
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MultipleLocator

from bench._util import fmt_time, median_time, table
from waveform.dicom import decode
from waveform.dicom.synthetic import synthetic_ecg
from waveform.dsp.scale import uv_factor
from waveform.model import Ecg
from waveform.render import render

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom"
_LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))


def _inputs(small: bool) -> list[tuple[str, Ecg]]:
    out = [("synthetic 500 Hz", synthetic_ecg(fs=500.0, duration_s=10.0))]
    real = SHARED / "marcodebe_anonymous_ecg.dcm"
    if real.is_file() and not small:
        out.append((f"{real.name} 1000 Hz", decode(real.read_bytes())))
    return out


def _peer(ecg: Ecg, fmt: str, dpi: float = 150.0) -> bytes:
    group = ecg.rhythm
    assert group is not None
    phys = group.physical()
    fs = group.sampling_frequency
    mv = {c.lead: phys[i] * uv_factor(c.units) / 1000.0
          for i, c in enumerate(group.channels) if c.lead}
    t = np.arange(group.n_samples) / fs
    fig = Figure(figsize=(297 / 25.4, 210 / 25.4), dpi=dpi)
    gs = fig.add_gridspec(4, 4, hspace=0.05, wspace=0.02)

    def plot(ax: Axes, lead: str, t0: float, t1: float) -> None:
        k = (t >= t0) & (t < t1)
        ax.plot(t[k], mv[lead][k], color="k", linewidth=0.6)
        ax.set_xlim(t0, t1)
        ax.set_ylim(-1.5, 2.0)
        ax.xaxis.set_major_locator(MultipleLocator(0.2))
        ax.xaxis.set_minor_locator(MultipleLocator(0.04))
        ax.yaxis.set_major_locator(MultipleLocator(0.5))
        ax.yaxis.set_minor_locator(MultipleLocator(0.1))
        ax.grid(which="major", color="#e05a5a", linewidth=0.6)
        ax.grid(which="minor", color="#f2aaaa", linewidth=0.3)
        ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
        ax.text(0.01, 0.95, lead, transform=ax.transAxes, va="top", fontweight="bold")

    for r, leads in enumerate(_LAYOUT):
        for c, lead in enumerate(leads):
            plot(fig.add_subplot(gs[r, c]), lead, c * 2.5, (c + 1) * 2.5)
    plot(fig.add_subplot(gs[3, :]), "II", 0.0, 10.0)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi)
    return buf.getvalue()


def main(small: bool = False) -> None:
    repeat, warmup = (1, 0) if small else (20, 2)
    rows = []
    for name, ecg in _inputs(small):
        for fmt in ("png", "pdf"):
            ours = median_time(partial(render, ecg, fmt=fmt, dpi=150), repeat, warmup)
            peer = median_time(partial(_peer, ecg, fmt), max(1, repeat // 4), warmup)
            rows.append([name, fmt.upper(), fmt_time(ours), fmt_time(peer),
                         f"{peer / ours:.1f}x"])
    print(table(["ECG (12 leads, 10 s)", "format", "ours", "matplotlib subplots",
                 "ratio"], rows))


if __name__ == "__main__":
    main()
