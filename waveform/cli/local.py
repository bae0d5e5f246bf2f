"""Commands that need no server: demo, info, import-wfdb, audit verify, tokens add."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import click

from waveform.cli._common import EXIT_OK, EXIT_REFUSED, CommandFailed, guarded, os_failure
from waveform.errors import WaveformError
from waveform.model import Ecg

__all__ = ["COMMANDS", "demo_objects", "describe", "measure"]


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


def _measured(value: object, unit: str) -> str:
    v = getattr(value, "value", None)
    return "-" if v is None else f"{v:.0f} {unit}"


def describe(ecg: Ecg) -> list[str]:
    lines = [
        f"  SOP instance   {ecg.sop_instance_uid}",
        f"  patient        {ecg.patient_name or '-'}  {ecg.patient_id or '-'}  "
        f"{ecg.sex or '-'}  born {ecg.birth_date or '-'}",
        f"  acquired       {ecg.acquisition_datetime or '-'}  at {ecg.institution or '-'}",
        f"  device         {ecg.manufacturer or '-'} {ecg.model or ''}".rstrip(),
    ]
    for g in ecg.groups:
        lines.append(f"  group {g.label or '-':<12} {g.n_channels} ch x {g.n_samples} samples at "
                     f"{g.sampling_frequency:g} Hz ({g.interpretation}): {' '.join(g.leads)}")
    for w in ecg.warnings:
        lines.append(f"  warning: {w}")
    return lines


def measure(ecg: Ecg) -> list[str]:
    from waveform.analysis import analyze

    s = analyze(ecg)
    return [
        f"  measured (analysis {s.analysis_version}): rate "
        f"{_measured(s.heart_rate_bpm, '/min')}, PR {_measured(s.pr_ms, 'ms')}, "
        f"QRS {_measured(s.qrs_ms, 'ms')}, QT {_measured(s.qt_ms, 'ms')}, "
        f"QTc Bazett {_measured(s.qtc_bazett_ms, 'ms')}, "
        f"QRS axis {_measured(s.qrs_axis_deg, 'deg')}"
    ]


@click.command("demo")
def demo() -> int:
    """Decode and measure the bundled demo ECGs."""
    from waveform.dicom import decode

    for name, data in demo_objects():
        ecg = decode(data)
        print(f"{name}: {len(data):,} bytes")
        for line in describe(ecg) + measure(ecg):
            print(line)
        print()
    return EXIT_OK


@click.command("info")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--measure", "with_measure", is_flag=True, help="also run the measurement")
def info(files: tuple[str, ...], with_measure: bool) -> int:
    """Describe DICOM waveform objects (groups, leads, conformance warnings)."""
    from waveform.dicom import decode

    status = EXIT_OK
    for path in files:
        try:
            ecg = decode(Path(path).read_bytes())
        except (WaveformError, OSError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            status = EXIT_REFUSED
            continue
        print(f"{path}:")
        for line in describe(ecg) + (measure(ecg) if with_measure else []):
            print(line)
    return status


@click.command("import-wfdb")
@click.argument("records", nargs=-1, required=True, metavar="RECORD...")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), metavar="DIR")
def import_wfdb(records: tuple[str, ...], output: Path) -> int:
    """Write WFDB records (path without extension) as General ECG DICOM objects."""
    from waveform.wfdb_io import import_wfdb as run

    try:
        written = run(list(records), output)
    except (WaveformError, OSError, ValueError) as exc:
        print(f"import-wfdb: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    for path in written:
        print(path)
    return EXIT_OK


@click.command("verify")
@click.option("--data", type=click.Path(path_type=Path), default=Path("./data"),
              help="the archive's folder (its audit/ is checked; default ./data)")
@click.option("--audit", type=click.Path(path_type=Path), metavar="DIR",
              help="the audit folder itself")
@click.option("--catalog", metavar="CATALOG",
              help="a 'postgres:dbname=... host=...' catalog: check the trail of every "
                   "replica in its database (a DuckDB-file catalog keeps it in DIR/audit)")
def audit_verify(data: Path, audit: Path | None, catalog: str | None) -> int:
    """Check the audit trail's hash chains: a changed or removed event is reported
    with its sequence number (and replica) (exit status 1)."""
    from waveform.archive.audit import POSTGRES, verify
    from waveform.errors import StorageError

    if catalog is not None and catalog.startswith(POSTGRES):
        if audit is not None:
            print("waveform audit verify: give --audit or a postgres: --catalog, not both",
                  file=sys.stderr)
            return EXIT_REFUSED
        # The connection string may hold a password: it is not printed.
        where = "the PostgreSQL audit trail"
        try:
            checked, problems = verify(catalog)
        except StorageError as exc:
            print(f"waveform audit verify: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        summary = f"{where}: {checked} events, every replica's chain is intact"
    else:
        directory = audit if audit is not None else data / "audit"
        if not directory.is_dir():
            print(f"waveform audit verify: {directory} is not an audit trail folder",
                  file=sys.stderr)
            return EXIT_REFUSED
        where = str(directory)
        checked, problems = verify(directory)
        summary = f"{where}: {checked} events, the chain is intact"
    if problems:
        for p in problems:
            print(f"waveform audit verify: {where}: {p}", file=sys.stderr)
        return EXIT_REFUSED
    print(summary)
    return EXIT_OK


@click.group("tokens")
def tokens() -> None:
    """Manage a tokens file (only hashes of tokens are stored)."""


@tokens.command("add")
@click.option("--file", "path", required=True, type=click.Path(path_type=Path), metavar="F")
@click.option("--org", required=True, help="organisation ID")
@click.option("--user", required=True, help="user ID")
@click.option("--role", required=True,
              type=click.Choice(("device", "clinician", "citizen", "auditor", "admin")))
@click.option("--patient-id", metavar="P", help="the citizen's patient ID")
@guarded("tokens")
def tokens_add(path: Path, org: str, user: str, role: str, patient_id: str | None) -> int:
    """Add a caller; prints the new token once."""
    from waveform.service.identity import Identity, add_token

    ident = Identity(org, user, role, patient_id or "")
    try:
        token = add_token(path, ident)
    except OSError as exc:
        raise os_failure(exc, f"tokens file {path}") from None
    except ValueError as exc:
        raise CommandFailed("INVALID_ARGUMENT", f"tokens file {path}: {exc}") from None
    print(token)
    print(f"added {ident.describe()} to {path}; the token above is shown only once",
          file=sys.stderr)
    return EXIT_OK


COMMANDS = (demo, info, import_wfdb, tokens)
