"""Where everything goes on the page, in millimetres (origin bottom-left, y up).

Pure geometry, no drawing: the papers, the layouts and the standard scales are
tables, and `page_geometry` turns one choice of each into rows, segments and
the grid rectangle. The conventions are those of the paper ECG (AHA/ACCF/HRS
recommendations for the standardization of the ECG, Kligfield et al.,
Circulation 115:1306, 2007): 25 mm/s and 10 mm/mV on a 1 mm / 5 mm grid, a
1 mV, 200 ms calibration pulse at the start of each row, four 2.5 s columns
(I, II, III | aVR, aVL, aVF | V1, V2, V3 | V4, V5, V6) above a 10 s lead II
rhythm strip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from waveform.errors import InvalidArgument

__all__ = [
    "FORMATS",
    "GAINS_MM_MV",
    "LAYOUTS",
    "PAPERS",
    "SPEEDS_MM_S",
    "Layout",
    "Page",
    "Row",
    "Segment",
    "page_geometry",
]

#: Paper name -> (width, height) in mm, landscape.
PAPERS: dict[str, tuple[float, float]] = {
    "A4": (297.0, 210.0),
    "Letter": (279.4, 215.9),
}

#: Output formats.
FORMATS: tuple[str, ...] = ("png", "svg", "pdf")
#: Paper speeds (mm/s) and gains (mm/mV) a reader expects to find.
SPEEDS_MM_S: tuple[float, ...] = (25.0, 50.0)
GAINS_MM_MV: tuple[float, ...] = (5.0, 10.0, 20.0)


@dataclass(frozen=True, slots=True)
class Layout:
    """Rows of simultaneously recorded leads, each row split into equal columns,
    then full-width rhythm strips."""

    rows: tuple[tuple[str, ...], ...]
    rhythm: tuple[str, ...] = ()


_COLUMNS_3X4 = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))

#: Layout name -> what it draws.
LAYOUTS: dict[str, Layout] = {
    "3x4+1": Layout(_COLUMNS_3X4, ("II",)),
    "3x4+3": Layout(_COLUMNS_3X4, ("V1", "II", "V5")),
    "6x2": Layout(
        (("I", "V1"), ("II", "V2"), ("III", "V3"), ("aVR", "V4"), ("aVL", "V5"), ("aVF", "V6"))
    ),
    "12x1": Layout(tuple((lead,) for lead in (
        "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"))),
}

#: Width of the traces (mm): 10 s at 25 mm/s, whatever the paper.
TRACE_WIDTH_MM = 250.0
#: Width of the calibration zone at the left of each row (mm); holds the pulse
#: (200 ms: 5 mm at 25 mm/s, 10 mm at 50 mm/s) with space on either side.
CAL_ZONE_MM = 15.0
#: Calibration pulse: 1 mV for 200 ms.
CAL_MV = 1.0
CAL_S = 0.2
#: Page margins and the bands for the header (top) and the footer (bottom), mm.
MARGIN_MM = 6.0
HEADER_MM = 24.0
FOOTER_MM = 8.0
#: Where the baseline sits in its row, as a fraction of the row height from the
#: top: a little below the middle, since most leads deflect upward.
BASELINE_FROM_TOP = 0.55


@dataclass(frozen=True, slots=True)
class Segment:
    """One lead drawn from ``t0_s`` to ``t1_s`` starting at ``x_mm`` on its row."""

    lead: str
    t0_s: float
    t1_s: float
    x_mm: float


@dataclass(frozen=True, slots=True)
class Row:
    """One row: its baseline, its calibration pulse, its segments and its top edge."""

    baseline_mm: float
    cal_x_mm: float
    segments: tuple[Segment, ...]
    rhythm: bool = False
    top_mm: float = 0.0


@dataclass(frozen=True, slots=True)
class Page:
    """The whole page: paper size, grid rectangle, scale and rows (all in mm)."""

    width_mm: float
    height_mm: float
    grid_x0: float
    grid_y0: float
    grid_x1: float
    grid_y1: float
    speed_mm_s: float
    gain_mm_mv: float
    rows: tuple[Row, ...]

    @property
    def row_height_mm(self) -> float:
        return (self.grid_y1 - self.grid_y0) / len(self.rows)

    @property
    def cal_width_mm(self) -> float:
        return CAL_S * self.speed_mm_s

    @property
    def cal_height_mm(self) -> float:
        return CAL_MV * self.gain_mm_mv


def _check(name: str, value: object, allowed: object) -> None:
    raise InvalidArgument(f"{name} {value!r} is not supported; expected one of {allowed}")


def page_geometry(
    layout: str = "3x4+1",
    paper: str = "A4",
    speed_mm_s: float = 25.0,
    gain_mm_mv: float = 10.0,
    duration_s: float | None = None,
) -> Page:
    """The geometry of one printout. Raises `InvalidArgument` for an unknown choice.

    Column ``c`` of a row shows the ``c``-th slice of the recording. A recording
    of ``duration_s`` shorter than a row holds is cut into as many equal slices
    as the row has columns, each drawn at the same speed from its column's start,
    so that every lead is shown (the rest of the column stays blank).
    """
    if layout not in LAYOUTS:
        _check("layout", layout, sorted(LAYOUTS))
    if paper not in PAPERS:
        _check("paper", paper, sorted(PAPERS))
    if float(speed_mm_s) not in SPEEDS_MM_S:
        _check("speed_mm_s", speed_mm_s, [int(s) for s in SPEEDS_MM_S])
    if float(gain_mm_mv) not in GAINS_MM_MV:
        _check("gain_mm_mv", gain_mm_mv, [int(g) for g in GAINS_MM_MV])
    spec = LAYOUTS[layout]
    width, height = PAPERS[paper]
    speed = float(speed_mm_s)
    # The grid is whole 5 mm squares, centred across the page, so that its
    # lines fall on the same millimetres as the traces.
    grid_w = 5.0 * math.ceil((CAL_ZONE_MM + TRACE_WIDTH_MM) / 5.0)
    grid_x0 = round((width - grid_w) / 2.0)
    grid_y1 = height - MARGIN_MM - HEADER_MM
    grid_h = 5.0 * math.floor((grid_y1 - MARGIN_MM - FOOTER_MM) / 5.0)
    grid_y0 = grid_y1 - grid_h
    lines = [(tuple(r), False) for r in spec.rows] + [((lead,), True) for lead in spec.rhythm]
    row_h = grid_h / len(lines)
    trace_x0 = grid_x0 + CAL_ZONE_MM
    cal_x = grid_x0 + (CAL_ZONE_MM - CAL_S * speed) / 2.0
    rows = []
    for k, (leads, rhythm) in enumerate(lines):
        # Baselines on whole millimetres, so that amplitudes read off the grid.
        # Low enough in its row for the 1 mV pulse to fit under the row above.
        top = grid_y1 - row_h * k
        drop = min(max(row_h * BASELINE_FROM_TOP, CAL_MV * gain_mm_mv + 1.5), row_h - 1.0)
        baseline = float(round(top - drop))
        col_w = TRACE_WIDTH_MM / len(leads)
        dur = col_w / speed
        if duration_s is not None and duration_s > 0:
            dur = min(dur, duration_s / len(leads))
        segs = tuple(
            Segment(lead, c * dur, (c + 1) * dur, trace_x0 + c * col_w)
            for c, lead in enumerate(leads)
        )
        rows.append(Row(baseline, cal_x, segs, rhythm, top))
    return Page(width, height, grid_x0, grid_y0, grid_x0 + grid_w, grid_y1, speed,
                float(gain_mm_mv), tuple(rows))
