"""The printout, measured: pixels per mm, step heights, grid spacing, page sizes, words."""

from __future__ import annotations

import dataclasses
import io
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from waveform.dicom import decode, encode
from waveform.dicom.synthetic import TWELVE_LEAD, synthetic_ecg
from waveform.errors import InvalidArgument, UnsupportedObject
from waveform.model import LEADS, Channel, Ecg, Measured, WaveformGroup
from waveform.render import render, render_file, render_to_path
from waveform.render.layout import LAYOUTS, PAPERS, Page, Row, page_geometry
from waveform.render.signals import lead_signals

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom"
SVG = "{http://www.w3.org/2000/svg}"


# --- helpers ---------------------------------------------------------------


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int32)


def _px(mm: float, dpi: float) -> float:
    return mm * dpi / 25.4


def _darkness(img: np.ndarray) -> np.ndarray:
    """How black each pixel is (traces are black, the grid is pink, paper white)."""
    d = 255 - img.max(axis=2)  # pink grid keeps R near 255, so it scores ~0
    return np.where(d > 60, d, 0)


def _runs(mask: np.ndarray, weight: np.ndarray) -> list[float]:
    """Weighted centres of the runs of True in a 1-D mask."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > 1) + 1
    centres = []
    for run in np.split(idx, breaks):
        w = weight[run].astype(np.float64)
        centres.append(float((run * w).sum() / w.sum()))
    return centres


def _pulse_ecg(fs: float = 500.0, duration_s: float = 10.0, units: str = "uV") -> Ecg:
    """Twelve leads at 0 with a 1 mV, 100 ms pulse at every whole second."""
    n = round(fs * duration_s)
    t = np.arange(n) / fs
    per_mv = {"uV": 1000.0, "mV": 1.0, "nV": 1e6}[units]
    frac = t - np.floor(t)
    mv = np.where((t >= 1.0) & (frac < 0.1), 1.0, 0.0)
    sens = per_mv / 1000.0  # 1000 LSB per mV
    raw = np.tile(np.round(mv * 1000.0).astype(np.int16), (12, 1))
    chans = tuple(Channel(label=lead, lead=lead, units=units, sensitivity=sens) for lead in LEADS)
    group = WaveformGroup("RHYTHM", fs, chans, raw)
    return Ecg(sop_class_uid=TWELVE_LEAD, sop_instance_uid="1.2.826.0.1.3680043.10.1",
               patient_id="P-1", groups=(group,))


def _rhythm_row(page: Page) -> Row:
    return page.rows[-1]


def _row_y_px(page: Page, y_mm: float, dpi: float) -> float:
    """Pixel row (from the top) of ``y_mm`` (from the bottom): the canvas is the
    paper's size in pixels rounded down, and Agg counts rows from its bottom."""
    return int(_px(page.height_mm, dpi)) - _px(y_mm, dpi)


# --- scale: mm on paper ----------------------------------------------------


@pytest.mark.parametrize("units", ["uV", "mV", "nV"])
@pytest.mark.parametrize(("speed", "gain", "dpi"), [
    (25, 10, 150), (50, 10, 150), (25, 5, 150), (25, 20, 150), (25, 10, 300), (50, 20, 96),
    (25, 10, 400),  # above the cached resolutions: drawn afresh
])
def test_one_mv_step_is_gain_mm_tall_and_200_ms_wide(
    units: str, speed: int, gain: int, dpi: int
) -> None:
    ecg = synthetic_ecg(step_mv=1.0, units=units)
    png = render(ecg, speed_mm_s=speed, gain_mm_mv=gain, dpi=dpi)
    img = _pixels(png)
    dark = _darkness(img)
    page = page_geometry("3x4+1", "A4", speed, gain, 10.0)
    row = _rhythm_row(page)
    seg = row.segments[0]
    b_px = _row_y_px(page, row.baseline_mm, dpi)
    band = slice(int(b_px - _px(gain * 1.8, dpi)), int(b_px + _px(3, dpi)))
    rows_idx = np.arange(band.start, band.stop)

    def trace_y(t: float) -> float:
        col = dark[band, round(_px(seg.x_mm + t * speed, dpi))]
        assert col.sum() > 0, f"no trace at t={t}"
        return float((rows_idx * col).sum() / col.sum())

    height = trace_y(0.35) - trace_y(0.2)  # (the lead label sits over t < 0.15 s)
    assert height == pytest.approx(_px(gain, dpi), abs=1.0)
    # The two vertical edges of the step, half way up.
    mid = round((trace_y(0.35) + trace_y(0.2)) / 2)
    x0, x1 = round(_px(seg.x_mm, dpi)), round(_px(seg.x_mm + 0.38 * speed, dpi))
    line = dark[mid, x0:x1]
    edges = _runs(line > 0, line)
    assert len(edges) == 2, edges
    assert edges[1] - edges[0] == pytest.approx(_px(0.2 * speed, dpi), abs=1.0)
    # The calibration pulse: 1 mV tall, 200 ms wide, on the same baseline.
    def cal_y(x_mm: float) -> float:
        col = dark[band, round(_px(x_mm, dpi))]
        return float((rows_idx * col).sum() / col.sum())

    cal_height = cal_y(row.cal_x_mm - 1.0) - cal_y(row.cal_x_mm + page.cal_width_mm / 2)
    assert cal_height == pytest.approx(_px(gain, dpi), abs=1.0)
    # Pulse and trace share the row's baseline (pixel centres sit half a pixel in).
    assert cal_y(row.cal_x_mm - 1.0) + 0.5 == pytest.approx(b_px, abs=1.0)


@pytest.mark.parametrize(("speed", "dpi"), [(25, 150), (50, 150), (25, 200)])
def test_one_second_is_speed_mm_wide(speed: int, dpi: int) -> None:
    ecg = _pulse_ecg()
    img = _pixels(render(ecg, speed_mm_s=speed, dpi=dpi))
    dark = _darkness(img)
    page = page_geometry("3x4+1", "A4", speed, 10, 10.0)
    row = _rhythm_row(page)
    y = round(_row_y_px(page, row.baseline_mm + 5.0, dpi))  # half way up the 1 mV pulses
    x0 = round(_px(row.segments[0].x_mm + 0.5 * speed, dpi))
    x1 = round(_px(page.grid_x1, dpi)) - 2
    edges = _runs(dark[y, x0:x1] > 0, dark[y, x0:x1])
    rising = np.asarray(edges[0::2]) + x0  # each pulse gives a rising and a falling edge
    seconds = round(250 / speed) - 1
    assert len(rising) == seconds, edges
    one_s = _px(speed, dpi)
    assert np.abs(np.diff(rising) - one_s).max() <= 1.0
    assert rising[-1] - rising[0] == pytest.approx((seconds - 1) * one_s, abs=1.0)
    assert rising[0] == pytest.approx(_px(row.segments[0].x_mm + speed, dpi), abs=1.0)


@pytest.mark.parametrize("dpi", [100, 150, 300])
def test_grid_lines_are_1_mm_and_5_mm_apart(dpi: int) -> None:
    flat = _pulse_ecg()
    g = flat.groups[0]
    flat = flat.replace(groups=(dataclasses.replace(g, raw=np.zeros_like(g.raw)),))
    img = _pixels(render(flat, dpi=dpi))
    page = page_geometry("3x4+1", "A4", 25, 10, 10.0)
    assert img.shape[:2] == (int(_px(page.height_mm, dpi)), int(_px(page.width_mm, dpi)))
    redness = img[:, :, 0] - img[:, :, 1]  # pink and red lines; white and black score 0
    # A pixel row between two minor lines, below the first row's (flat) trace and
    # above the second row's labels.
    y_mm = math.floor(page.rows[0].baseline_mm - 8.0) + 0.5
    prof = redness[round(_row_y_px(page, y_mm, dpi))]
    xa, xb = round(_px(page.grid_x0 + 20, dpi)), round(_px(page.grid_x1 - 0.5, dpi))
    minor = np.asarray(_runs(prof[xa:xb] > 8, prof[xa:xb]))
    mm = _px(1.0, dpi)
    assert np.abs(np.diff(minor) - mm).max() <= 1.0
    assert (minor[-1] - minor[0]) / (minor.size - 1) == pytest.approx(mm, abs=0.05)
    major = np.asarray(_runs(prof[xa:xb] > 90, prof[xa:xb]))  # minor lines reach 72
    assert np.abs(np.diff(major) - 5 * mm).max() <= 1.0
    assert minor.size == pytest.approx(5 * (major.size - 1) + 1, abs=5)
    # Vertically, in a column between two minor lines away from the labels.
    x = round(_px(page.grid_x0 + 152.5, dpi))
    col = redness[:, x]
    ya, yb = round(_row_y_px(page, page.grid_y1, dpi)) + 2, round(_row_y_px(page, page.grid_y0,
                                                                          dpi)) - 2
    hmin = np.asarray(_runs(col[ya:yb] > 8, col[ya:yb]))
    assert (hmin[-1] - hmin[0]) / (hmin.size - 1) == pytest.approx(mm, abs=0.05)


@pytest.mark.parametrize(("paper", "points"), [("A4", (841.89, 595.28)), ("Letter", (792, 612))])
def test_pdf_page_is_the_paper_in_landscape(paper: str, points: tuple[float, float]) -> None:
    pdf = render(synthetic_ecg(), paper=paper, fmt="pdf")
    assert pdf.startswith(b"%PDF")
    box = re.search(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", pdf)
    assert box is not None
    assert float(box.group(1)) == pytest.approx(points[0], abs=0.01)
    assert float(box.group(2)) == pytest.approx(points[1], abs=0.01)


@pytest.mark.parametrize("paper", sorted(PAPERS))
def test_svg_is_sized_in_paper_units(paper: str) -> None:
    root = ET.fromstring(render(synthetic_ecg(), paper=paper, fmt="svg"))
    w_pt, h_pt = (float(root.get(k, "").removesuffix("pt")) for k in ("width", "height"))
    w_mm, h_mm = PAPERS[paper]
    assert w_pt == pytest.approx(w_mm / 25.4 * 72, abs=0.01)
    assert h_pt == pytest.approx(h_mm / 25.4 * 72, abs=0.01)


# --- words ------------------------------------------------------------------


def _svg_texts(svg: bytes) -> list[str]:
    root = ET.fromstring(svg)
    return ["".join(el.itertext()) for el in root.iter(f"{SVG}text")]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_all_twelve_lead_labels_are_svg_text(layout: str) -> None:
    texts = _svg_texts(render(synthetic_ecg(), layout=layout, fmt="svg"))
    for lead in LEADS:
        assert lead in texts, f"{lead} missing from {layout}"
    rhythm = LAYOUTS[layout].rhythm
    assert texts.count("II") == 1 + rhythm.count("II")
    assert "not recorded" not in " ".join(texts)


def test_header_carries_patient_context_and_measurements() -> None:
    from waveform.analysis import analyze

    ecg = synthetic_ecg(heart_rate=72.0).replace(
        institution="Central Hospital", manufacturer="Acme", model="Cart 9"
    )
    summary = analyze(ecg)
    words = "\n".join(_svg_texts(render(ecg, summary=summary, fmt="svg")))
    assert ecg.patient_id in words
    assert "Central Hospital" in words and "Acme Cart 9" in words
    # The patient's name beside the ID, and the organisation the archive knows
    # (the one that sent the ECG) over the object's Institution Name.
    named = ecg.replace(patient_name="Virtanen^Aino^M^Dr")
    words_named = "\n".join(_svg_texts(render(named, fmt="svg", organisation="org-north")))
    assert f"Virtanen, Dr Aino M  ID {ecg.patient_id}" in words_named
    assert "Organisation org-north" in words_named and "Central Hospital" not in words_named
    assert ecg.acquisition_datetime is not None
    assert ecg.acquisition_datetime.strftime("%Y-%m-%d %H:%M:%S") in words
    assert re.search(r"Rate 7\d bpm", words)
    assert "(Bazett)" in words and "25 mm/s" in words and "10 mm/mV" in words
    assert f"analysis {summary.analysis_version}" in words
    # An absent measurement is shown as absent, under the chosen formula.
    gone = dataclasses.replace(summary, qtc_fridericia_ms=Measured.absent("no T end"))
    words = "\n".join(_svg_texts(render(ecg, summary=gone, fmt="svg", qtc="Fridericia")))
    assert "QTc \u2014 (Fridericia)" in words
    # Without a summary every measurement reads as absent.
    words = "\n".join(_svg_texts(render(ecg, fmt="svg")))
    assert "Rate \u2014" in words and "analysis: none" in words


def test_missing_limb_leads_are_derived_from_i_and_ii() -> None:
    ecg = synthetic_ecg()
    g = ecg.groups[0]
    keep = [i for i, c in enumerate(g.channels) if c.lead not in ("III", "aVR", "aVL", "aVF")]
    eight = dataclasses.replace(g, raw=g.raw[keep], channels=tuple(g.channels[i] for i in keep))
    sig8 = lead_signals(ecg.replace(groups=(eight,)))
    sig12 = lead_signals(ecg)
    assert sig8.derived == ("III", "aVR", "aVL", "aVF")
    for lead in sig8.derived:
        # The stored limb leads are rounded integers: agree to a few µV.
        assert np.abs(sig8.mv[lead] - sig12.mv[lead]).max() < 0.01
    texts = _svg_texts(render(ecg.replace(groups=(eight,)), fmt="svg"))
    assert all(lead in texts for lead in LEADS)
    assert any("III, aVR, aVL, aVF derived from I and II" in t for t in texts)


def test_a_lead_neither_stored_nor_derivable_is_marked_not_recorded() -> None:
    ecg = synthetic_ecg()
    g = ecg.groups[0]
    keep = [i for i, c in enumerate(g.channels) if c.lead != "V3"]
    g11 = dataclasses.replace(g, raw=g.raw[keep], channels=tuple(g.channels[i] for i in keep))
    texts = _svg_texts(render(ecg.replace(groups=(g11,)), fmt="svg"))
    assert texts.count("not recorded") == 1


# --- errors -------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"layout": "4x3"}, r"layout '4x3' is not supported; expected one of \['12x1', '3x4\+1'"),
    ({"paper": "A3"}, r"paper 'A3' is not supported; expected one of \['A4', 'Letter'\]"),
    ({"fmt": "jpg"}, r"format 'jpg' is not supported; expected one of \['png', 'svg', 'pdf'\]"),
    ({"speed_mm_s": 30}, r"speed_mm_s 30 is not supported; expected one of \[25, 50\]"),
    ({"gain_mm_mv": 7}, r"gain_mm_mv 7 is not supported; expected one of \[5, 10, 20\]"),
    ({"dpi": 5000}, r"dpi 5000 is out of range"),
    ({"qtc": "Rautaharju"}, r"qtc formula 'Rautaharju' is not supported"),
])
def test_bad_choices_are_invalid_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        render(synthetic_ecg(), **kwargs)  # type: ignore[arg-type]


def test_object_without_ecg_leads_is_unsupported() -> None:
    pressure = synthetic_ecg(sop_class_uid="1.2.840.10008.5.1.4.1.1.9.5.1", n_channels=1)
    with pytest.raises(UnsupportedObject, match="holds no ECG lead"):
        render(pressure)


def test_output_suffix_chooses_the_format(tmp_path: Path) -> None:
    ecg = synthetic_ecg()
    assert render_to_path(ecg, tmp_path / "a.svg").read_bytes().lstrip().startswith(b"<?xml")
    assert render_to_path(ecg, tmp_path / "a.PDF").read_bytes().startswith(b"%PDF")
    with pytest.raises(InvalidArgument, match=r"has suffix '\.bmp'; expected one of \.png"):
        render_to_path(ecg, tmp_path / "a.bmp")


def test_render_file_decodes_measures_and_writes(tmp_path: Path) -> None:
    data = encode(synthetic_ecg())
    src = tmp_path / "ecg.dcm"
    src.write_bytes(data)
    out = render_file(src, tmp_path / "ecg.svg")
    words = "\n".join(_svg_texts(out.read_bytes()))
    assert re.search(r"Rate \d+ bpm", words)
    png = render_file(data, tmp_path / "ecg.png", layout="12x1", dpi=100)
    assert Image.open(png).size == (int(_px(297, 100)), int(_px(210, 100)))
    with pytest.raises(InvalidArgument, match="cannot read"):
        render_file(tmp_path / "missing.dcm", tmp_path / "x.png")


def test_same_ecg_gives_the_same_bytes() -> None:
    ecg = synthetic_ecg()
    for fmt in ("png", "svg", "pdf"):
        assert render(ecg, fmt=fmt) == render(ecg, fmt=fmt)
    # The cached page background does not leak one ECG into the next.
    other = synthetic_ecg(seed=3, heart_rate=95.0)
    first = render(ecg)
    render(other)
    assert render(ecg) == first != render(other)


# --- real files ---------------------------------------------------------------


_REAL = sorted(SHARED.glob("*.dcm")) if SHARED.is_dir() else []


@pytest.mark.skipif(not _REAL, reason=f"{SHARED} is absent (third-party test data)")
@pytest.mark.parametrize("path", _REAL, ids=[p.name for p in _REAL])
def test_real_files_render_or_say_why_not(path: Path) -> None:
    ecg = decode(path.read_bytes())
    if not any(c.lead for g in ecg.groups for c in g.channels):
        with pytest.raises(UnsupportedObject, match="holds no ECG lead"):
            render(ecg)
        return
    img = _pixels(render(ecg, dpi=100))
    page = page_geometry("3x4+1", "A4", 25, 10)
    inside = _darkness(img)[round(_row_y_px(page, page.grid_y1, 100)):
                            round(_row_y_px(page, page.grid_y0, 100)),
                            round(_px(page.grid_x0 + 16, 100)):round(_px(page.grid_x1, 100))]
    # Traces cross every row: dark pixels in each of the four row bands.
    bands = np.array_split(inside, 4, axis=0)
    assert all((b > 0).sum() > 500 for b in bands)


def test_bench_runs_small(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import render as bench_render

    bench_render.main(small=True)
    out = capsys.readouterr().out
    assert re.search(r"PNG\s+[\d.]+ (us|ms|s)\s+[\d.]+ (us|ms|s)\s+[\d.]+x", out), out
    assert "PDF" in out
