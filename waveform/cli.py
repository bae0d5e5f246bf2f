"""The `waveform` command line.

    waveform demo                       decode and measure the bundled demo ECGs
    waveform info FILE.dcm...           what an object holds (groups, leads, warnings)
    waveform import-wfdb RECORD... -o DIR   WFDB records as General ECG DICOM objects

Every failure is reported as one line naming the file and what was wrong, with
exit status 1; nothing prints a traceback for bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from waveform.errors import WaveformError
from waveform.model import Ecg

__all__ = ["demo_objects", "main"]


def demo_objects() -> Iterator[tuple[str, bytes]]:
    """The demo ECGs a fresh clone has: pydicom's real Mortara 12-lead ECG and
    synthetic ones written by our own encoder."""
    from pydicom.data import get_testdata_file

    from waveform.dicom import encode
    from waveform.dicom.synthetic import GENERAL_ECG, synthetic_ecg

    path = get_testdata_file("waveform_ecg.dcm")
    if path is not None:
        yield "pydicom waveform_ecg.dcm (Mortara ELI 250)", Path(str(path)).read_bytes()
    for name, ecg in [
        ("synthetic 12-lead, 500 Hz, 72/min", synthetic_ecg(heart_rate=72.0, seed=1, groups=2)),
        ("synthetic 12-lead, 1000 Hz, 110/min", synthetic_ecg(fs=1000.0, heart_rate=110.0,
                                                              seed=2)),
        ("synthetic General ECG, 250 Hz, 55/min",
         synthetic_ecg(sop_class_uid=GENERAL_ECG, fs=250.0, heart_rate=55.0, seed=3)),
    ]:
        yield name, encode(ecg)


def _fmt_measured(value: object, unit: str) -> str:
    v = getattr(value, "value", None)
    if v is None:
        return "-"
    return f"{v:.0f} {unit}"


def _describe(ecg: Ecg) -> list[str]:
    lines = [
        f"  SOP instance   {ecg.sop_instance_uid}",
        f"  patient        {ecg.patient_id or '-'}  {ecg.sex or '-'}  born {ecg.birth_date or '-'}",
        f"  acquired       {ecg.acquisition_datetime or '-'}  at {ecg.institution or '-'}",
        f"  device         {ecg.manufacturer or '-'} {ecg.model or ''}".rstrip(),
    ]
    for g in ecg.groups:
        lines.append(f"  group {g.label or '-':<12} {g.n_channels} ch x {g.n_samples} samples at "
                     f"{g.sampling_frequency:g} Hz ({g.interpretation}): {' '.join(g.leads)}")
    for w in ecg.warnings:
        lines.append(f"  warning: {w}")
    return lines


def _measure(ecg: Ecg) -> list[str]:
    from waveform.analysis import analyze

    s = analyze(ecg)
    qtc = s.qtc_bazett_ms
    return [
        f"  measured (analysis {s.analysis_version}): rate "
        f"{_fmt_measured(s.heart_rate_bpm, '/min')}, PR {_fmt_measured(s.pr_ms, 'ms')}, "
        f"QRS {_fmt_measured(s.qrs_ms, 'ms')}, QT {_fmt_measured(s.qt_ms, 'ms')}, "
        f"QTc Bazett {_fmt_measured(qtc, 'ms')}, QRS axis {_fmt_measured(s.qrs_axis_deg, 'deg')}"
    ]


def _cmd_demo(args: argparse.Namespace) -> int:
    from waveform.dicom import decode

    for name, data in demo_objects():
        ecg = decode(data)
        print(f"{name}: {len(data):,} bytes")
        for line in _describe(ecg) + _measure(ecg):
            print(line)
        print()
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from waveform.dicom import decode

    status = 0
    for path in args.files:
        try:
            ecg = decode(Path(path).read_bytes())
        except (WaveformError, OSError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"{path}:")
        for line in _describe(ecg) + (_measure(ecg) if args.measure else []):
            print(line)
    return status


def _cmd_import_wfdb(args: argparse.Namespace) -> int:
    from waveform.wfdb_io import import_wfdb

    try:
        written = import_wfdb(args.records, args.output)
    except (WaveformError, OSError, ValueError) as exc:
        print(f"import-wfdb: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="waveform", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str
            ) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help, description=help)
        q.set_defaults(fn=fn)
        return q

    add("demo", _cmd_demo, "decode and measure the bundled demo ECGs")
    q = add("info", _cmd_info, "describe DICOM waveform objects")
    q.add_argument("files", nargs="+", metavar="FILE")
    q.add_argument("--measure", action="store_true", help="also run the measurement")
    q = add("import-wfdb", _cmd_import_wfdb, "write WFDB records as General ECG DICOM objects")
    q.add_argument("records", nargs="+", metavar="RECORD", help="record path without extension")
    q.add_argument("-o", "--output", required=True, type=Path, metavar="DIR")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    code: int = args.fn(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
