"""Decode speed: ours against pydicom's dcmread + multiplex_array on the same bytes.

Printed per object: the median time of our decode (metadata and every group's
``raw`` view), of decode plus every group's ``physical()``, and of pydicom doing
the same (``dcmread`` and ``multiplex_array(as_raw=False)`` for each group);
the ratios beside them. "first sight" clears our decode-level memos (channel
definitions and codes) before each run, as for an object from a new cart.
"""

from __future__ import annotations

import io
from functools import partial
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.waveforms.numpy_handler import multiplex_array

from bench._util import fmt_time, median_time, table
from waveform.dicom import decode
from waveform.dicom.decode import _CHANNEL_CACHE
from waveform.dicom.values import _CODE_CACHE

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom"


def _files() -> list[Path]:
    files = [Path(str(get_testdata_file("waveform_ecg.dcm")))]
    if SHARED.is_dir():
        files = sorted(SHARED.glob("*.dcm"))
    return files


def _ours_raw(data: bytes) -> object:
    return [g.raw for g in decode(data).groups]


def _ours_physical(data: bytes) -> object:
    return [g.physical() for g in decode(data).groups]


def _first_sight(data: bytes) -> object:
    _CHANNEL_CACHE.clear()
    _CODE_CACHE.clear()
    return [g.physical() for g in decode(data).groups]


def _pydicom(data: bytes) -> object:
    ds = pydicom.dcmread(io.BytesIO(data))
    return [multiplex_array(ds, i, as_raw=False) for i in range(len(ds.WaveformSequence))]


def main(small: bool = False) -> None:
    repeat = 5 if small else 200
    rows = []
    for path in _files()[: 1 if small else None]:
        data = path.read_bytes()
        ours = median_time(partial(_ours_raw, data), repeat)
        ours_p = median_time(partial(_ours_physical, data), repeat)
        cold = median_time(partial(_first_sight, data), repeat)
        peer = median_time(partial(_pydicom, data), max(3, repeat // 5))
        rows.append([path.name, f"{len(data) // 1024} KB", fmt_time(ours), fmt_time(ours_p),
                     fmt_time(cold), fmt_time(peer), f"{peer / ours:.0f}x",
                     f"{peer / ours_p:.0f}x", f"{peer / cold:.0f}x"])
    print(table(["object", "size", "ours raw", "ours +physical", "first sight +phys",
                 "pydicom", "ratio raw", "ratio +phys", "ratio first sight"], rows))


if __name__ == "__main__":
    main()
