"""The standard 12-lead printout of an ECG: PNG, SVG or PDF on A4 or Letter landscape.

``render(ecg)`` draws the rhythm group the way a cart prints it: a 1 mm / 5 mm
grid, a 1 mV calibration pulse at the start of each row, lead labels, segment
separators, lead II rhythm strip(s), and a header with the patient, the
recording context and the Summary's measurements. 1 mm of grid is 1 mm of
paper in every format. Modules: `layout` (pages and layouts, in mm),
`signals` (leads in mV), `text` (the words), `draw` (matplotlib).
"""

from __future__ import annotations

import os
from pathlib import Path

from waveform.errors import InvalidArgument, WaveformError
from waveform.model import Ecg, Summary
from waveform.render import draw, signals, text
from waveform.render.layout import FORMATS, LAYOUTS, PAPERS, page_geometry

__all__ = ["FORMATS", "LAYOUTS", "PAPERS", "render", "render_file", "render_to_path"]

#: PNG resolutions accepted: an A4 page at 600 dpi is already 35 megapixels.
_DPI_RANGE = (50.0, 600.0)


def render(
    ecg: Ecg,
    *,
    summary: Summary | None = None,
    layout: str = "3x4+1",
    paper: str = "A4",
    speed_mm_s: float = 25,
    gain_mm_mv: float = 10,
    fmt: str = "png",
    dpi: float = 150,
    qtc: str = "Bazett",
    organisation: str | None = None,
) -> bytes:
    """The printout of ``ecg`` as ``fmt`` bytes.

    ``layout`` is one of `LAYOUTS` ("3x4+1" default, "3x4+3", "6x2", "12x1"),
    ``paper`` one of `PAPERS` (landscape), ``speed_mm_s`` 25 or 50, ``gain_mm_mv``
    5, 10 or 20, ``fmt`` "png", "svg" or "pdf"; ``dpi`` sets the PNG's resolution
    (SVG and PDF are vector, sized to the paper). ``qtc`` names the QTc formula
    printed ("Bazett", "Fridericia", "Framingham", "Hodges"). ``organisation`` is
    the organisation that archived the ECG (the archive knows it; default the
    object's Institution Name). Raises
    `InvalidArgument` for any other choice and `UnsupportedObject` for an
    object without ECG leads.
    """
    if fmt not in FORMATS:
        raise InvalidArgument(f"format {fmt!r} is not supported; expected one of {list(FORMATS)}")
    if qtc not in text.QTC_FORMULAS:
        raise InvalidArgument(
            f"qtc formula {qtc!r} is not supported; expected one of {list(text.QTC_FORMULAS)}"
        )
    try:
        dpi_f = float(dpi)
    except (TypeError, ValueError):
        raise InvalidArgument(f"dpi must be a number, got {dpi!r}") from None
    if not _DPI_RANGE[0] <= dpi_f <= _DPI_RANGE[1]:
        raise InvalidArgument(
            f"dpi {dpi!r} is out of range; expected {_DPI_RANGE[0]:g} to {_DPI_RANGE[1]:g}"
        )
    page_geometry(layout, paper, speed_mm_s, gain_mm_mv)  # the arguments, before decoding
    sig = signals.lead_signals(ecg)
    page = page_geometry(layout, paper, speed_mm_s, gain_mm_mv, sig.duration_s)
    header = text.header_blocks(ecg, summary, qtc, organisation)
    footer = text.footer(sig.group, summary, page.speed_mm_s, page.gain_mm_mv, sig.derived)
    return draw.draw_page(page, sig, header, footer, fmt, dpi_f)


def _fmt_of(path: Path) -> str:
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise InvalidArgument(
            f"output {str(path)!r} has suffix {path.suffix!r}; expected one of "
            + ", ".join("." + f for f in FORMATS)
        )
    return fmt


def render_to_path(ecg: Ecg, path: str | os.PathLike[str], **options: object) -> Path:
    """Write the printout of ``ecg`` to ``path``; the format follows its suffix
    (.png, .svg, .pdf) unless ``fmt`` is given. Options as for `render`."""
    out = Path(path)
    options.setdefault("fmt", _fmt_of(out))
    data = render(ecg, **options)  # type: ignore[arg-type]
    out.write_bytes(data)
    return out


def render_file(
    path_or_bytes: str | os.PathLike[str] | bytes,
    out_path: str | os.PathLike[str],
    *,
    analyze: bool = True,
    **options: object,
) -> Path:
    """Decode a local DICOM ECG (a path or its bytes) and write its printout.

    The format follows ``out_path``'s suffix (.png, .svg, .pdf). With ``analyze``
    (the default) and no ``summary`` option, the ECG is measured first
    (`waveform.analysis.analyze`) so the header carries its measurements; an
    ECG the analysis cannot measure is printed without them. Other options as
    for `render`. Returns the path written.
    """
    from waveform.dicom import decode

    fmt = _fmt_of(Path(out_path))
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        data = bytes(path_or_bytes)
    else:
        src = Path(path_or_bytes)
        try:
            data = src.read_bytes()
        except OSError as exc:
            raise InvalidArgument(f"cannot read {str(src)!r}: {exc.strerror or exc}") from exc
    ecg = decode(data)
    if analyze and options.get("summary") is None:
        from waveform.analysis import analyze as _analyze

        try:
            options["summary"] = _analyze(ecg)
        except WaveformError:
            options["summary"] = None
    options.setdefault("fmt", fmt)
    return render_to_path(ecg, out_path, **options)
