"""Matplotlib (Agg, no pyplot) drawing of a `Page`: grid, traces, words.

One axes covers the whole figure with data coordinates in millimetres, and the
figure is the paper size in inches, so 1 mm of data is 1 mm of paper in every
format (at any dpi for PNG). The grid is two LineCollections (minor, major) and
all traces, calibration pulses and separators are one LineCollection: a few
artists instead of one per lead keeps a page near 100 ms. Rendering runs under
one lock: matplotlib reads some settings (SVG text as text) from the global
rcParams at save time, and a service renders from several threads.
"""

from __future__ import annotations

import io
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox, TransformedBbox

from waveform.render.layout import Page
from waveform.render.signals import LeadSignals

__all__ = ["GRID_MAJOR", "GRID_MINOR", "TRACE", "draw_page"]

#: Colours: the usual pink paper grid and black traces.
GRID_MINOR = "#f2aaaa"
GRID_MAJOR = "#e05a5a"
TRACE = "#000000"
_MM_PER_INCH = 25.4
_PT_PER_MM = 72.0 / 25.4
#: Line widths in points: minor grid 0.15 mm (still seen at 100 dpi), major 0.2 mm,
#: traces 0.2 mm.
_LW_MINOR = 0.15 * _PT_PER_MM
_LW_MAJOR = 0.2 * _PT_PER_MM
_LW_TRACE = 0.2 * _PT_PER_MM

#: Settings every render uses, whatever the process's matplotlibrc says.
_STYLE: dict[str, Any] = {
    "svg.fonttype": "none",  # SVG text stays text: searchable, and checkable
    "svg.hashsalt": "waveform",  # stable element ids: same ECG, same SVG
    "pdf.fonttype": 3,  # Type 3: no TrueType subsetting (fontTools), 8x faster than 42
    "font.family": "DejaVu Sans",
    "path.simplify": True,
    "path.simplify_threshold": 0.1,
}
_LOCK = threading.Lock()


def _grid(page: Page) -> tuple[np.ndarray, np.ndarray]:
    """(minor, major) line segments (n, 2, 2) at every mm and every 5 mm."""
    x0, x1, y0, y1 = page.grid_x0, page.grid_x1, page.grid_y0, page.grid_y1
    xs = x0 + np.arange(round(x1 - x0) + 1, dtype=np.float64)
    ys = y0 + np.arange(round(y1 - y0) + 1, dtype=np.float64)
    major_x = np.arange(xs.size) % 5 == 0
    major_y = np.arange(ys.size) % 5 == 0

    def lines(vx: np.ndarray, hy: np.ndarray) -> np.ndarray:
        v = np.empty((vx.size, 2, 2))
        v[:, :, 0] = vx[:, None]
        v[:, 0, 1], v[:, 1, 1] = y0, y1
        h = np.empty((hy.size, 2, 2))
        h[:, :, 1] = hy[:, None]
        h[:, 0, 0], h[:, 1, 0] = x0, x1
        return np.concatenate([v, h])

    return lines(xs[~major_x], ys[~major_y]), lines(xs[major_x], ys[major_y])


def _traces(page: Page, sig: LeadSignals) -> list[np.ndarray]:
    """Polylines (k, 2) in mm: per row the calibration pulse, the separators, the leads."""
    out: list[np.ndarray] = []
    speed, gain, fs = page.speed_mm_s, page.gain_mm_mv, sig.fs
    cw, ch = page.cal_width_mm, page.cal_height_mm
    lead_in = 2.0  # mm of baseline either side of the pulse
    for row in page.rows:
        b, cx = row.baseline_mm, row.cal_x_mm
        out.append(np.array([
            [cx - lead_in, b], [cx, b], [cx, b + ch], [cx + cw, b + ch], [cx + cw, b],
            [cx + cw + lead_in, b],
        ]))
        for k, seg in enumerate(row.segments):
            if k:
                out.append(np.array([[seg.x_mm, b - 2.5], [seg.x_mm, b + 2.5]]))
            y = sig.mv.get(seg.lead)
            if y is None:
                continue
            i0 = max(0, int(np.ceil(seg.t0_s * fs - 1e-9)))
            i1 = min(y.size, int(np.ceil(seg.t1_s * fs - 1e-9)))
            if i1 - i0 < 2:
                continue
            xy = np.empty((i1 - i0, 2))
            xy[:, 0] = seg.x_mm + (np.arange(i0, i1) / fs - seg.t0_s) * speed
            xy[:, 1] = b + y[i0:i1] * gain
            out.append(xy)
    return out


def _static(page: Page, dpi: float) -> tuple[Figure, Axes]:
    """A Figure of the paper's size with what depends on the page only: grid, lead labels."""
    fig = Figure(figsize=(page.width_mm / _MM_PER_INCH, page.height_mm / _MM_PER_INCH),
                 dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    ax.set_xlim(0.0, page.width_mm)
    ax.set_ylim(0.0, page.height_mm)
    minor, major = _grid(page)
    ax.add_collection(LineCollection(list(minor), colors=GRID_MINOR, linewidths=_LW_MINOR),
                      autolim=False)
    ax.add_collection(LineCollection(list(major), colors=GRID_MAJOR, linewidths=_LW_MAJOR),
                      autolim=False)
    for row in page.rows:
        for seg in row.segments:
            ax.text(seg.x_mm + 1.0, row.top_mm - 0.8, seg.lead, fontsize=9,
                    fontweight="bold", va="top", ha="left")
    return fig, ax


def _dynamic(
    ax: Axes, page: Page, sig: LeadSignals, header: Sequence[str], footer: str
) -> list[Artist]:
    """Add what depends on the ECG (traces, words) to ``ax``; the artists added."""
    traces = LineCollection(_traces(page, sig), colors=TRACE, linewidths=_LW_TRACE,
                            capstyle="butt", joinstyle="round")
    added: list[Artist] = [ax.add_collection(traces, autolim=False)]
    # After add_collection, which clips to the axes: traces stay on the grid,
    # off the header and footer.
    traces.set_clip_path(None)
    traces.set_clip_box(TransformedBbox(
        Bbox.from_extents(page.grid_x0, page.grid_y0, page.grid_x1, page.grid_y1),
        ax.transData,
    ))
    for row in page.rows:
        for seg in row.segments:
            if seg.lead not in sig.mv:
                added.append(ax.text(seg.x_mm + 1.0, row.baseline_mm + 1.0, "not recorded",
                                     fontsize=7, va="bottom", ha="left", color="#555555"))
    y_head = page.height_mm - 6.0
    for x_off, block in zip((0.0, 95.0, 150.0), header, strict=False):
        added.append(ax.text(page.grid_x0 + x_off, y_head, block, fontsize=8, va="top",
                             ha="left", linespacing=1.35))
    added.append(ax.text(page.grid_x0, page.grid_y0 - 1.5, footer, fontsize=7, va="top",
                         ha="left"))
    return added


def _png(rgba: np.ndarray, dpi: float) -> bytes:
    """8-bit RGB PNG (ISO/IEC 15948) with the resolution in pHYs.

    Written here rather than by Pillow: Pillow's adaptive filtering costs
    ~75 ms on an A4 page at 150 dpi; unfiltered rows at zlib level 3 take
    ~25 ms for a file 15% larger.
    """
    h, w = rgba.shape[:2]
    rows = np.empty((h, w * 3 + 1), dtype=np.uint8)
    rows[:, 0] = 0  # filter type None on every row
    rows[:, 1:].reshape(h, w, 3)[...] = rgba[:, :, :3]

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ppm = round(dpi / 0.0254)
    return b"".join([
        b"\x89PNG\r\n\x1a\n",
        chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)),
        chunk(b"pHYs", struct.pack(">IIB", ppm, ppm, 1)),
        chunk(b"IDAT", zlib.compress(rows.data, 3)),
        chunk(b"IEND", b""),
    ])


#: Static figures for PNG, by (page, dpi), with their drawn background: a page
#: is then restored from the background and only the ECG is drawn on it.
_CACHE: OrderedDict[tuple[object, ...], tuple[Figure, Axes, Any]] = OrderedDict()
_CACHE_SIZE = 4
#: Pages above this resolution are drawn afresh: an A4 page at 300 dpi holds
#: 35 MB of pixels (twice, with its background), and a larger one is rare.
_CACHE_MAX_DPI = 300.0


def _cached(page: Page, dpi: float) -> tuple[Figure, Axes, Any]:
    # What `_static` draws: the time slices of the segments play no part.
    key = (page.width_mm, page.height_mm, page.grid_x0, page.grid_y0, page.grid_x1,
           page.grid_y1, dpi,
           tuple((r.top_mm, tuple((s.lead, s.x_mm) for s in r.segments))
                 for r in page.rows))
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    fig, ax = _static(page, dpi)
    canvas = fig.canvas
    assert isinstance(canvas, FigureCanvasAgg)
    canvas.draw()
    entry = (fig, ax, canvas.copy_from_bbox(fig.bbox))
    _CACHE[key] = entry
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return entry


def draw_page(
    page: Page,
    sig: LeadSignals,
    header: Sequence[str],
    footer: str,
    fmt: str,
    dpi: float,
) -> bytes:
    """The printout as PNG, SVG or PDF bytes (no timestamps: same input, same bytes)."""
    with _LOCK, rc_context(_STYLE):  # type: ignore[arg-type]
        if fmt == "png" and dpi > _CACHE_MAX_DPI:
            fig, ax = _static(page, dpi)
            _dynamic(ax, page, sig, header, footer)
            canvas = fig.canvas
            assert isinstance(canvas, FigureCanvasAgg)
            canvas.draw()
            return _png(np.asarray(canvas.buffer_rgba()), dpi)
        if fmt == "png":
            fig, ax, background = _cached(page, dpi)
            canvas = fig.canvas
            assert isinstance(canvas, FigureCanvasAgg)
            canvas.restore_region(background)
            added = _dynamic(ax, page, sig, header, footer)
            try:
                for artist in added:
                    ax.draw_artist(artist)
                return _png(np.asarray(canvas.buffer_rgba()), dpi)
            finally:
                for artist in added:
                    artist.remove()
        fig, ax = _static(page, dpi)
        _dynamic(ax, page, sig, header, footer)
        buf = io.BytesIO()
        meta = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}[fmt]
        fig.savefig(buf, format=fmt, dpi=dpi, metadata=meta)
        return buf.getvalue()
