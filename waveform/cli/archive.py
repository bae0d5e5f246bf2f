"""Commands over the `EcgArchive` calls: ingest, search, summary, trace, export,
render, compact, health. Each is a thin layer over `waveform.Client`."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from waveform.cli._common import (
    EXIT_OK,
    CommandFailed,
    client_of,
    connection_options,
    fail,
    guarded,
)
from waveform.cli.carts import file_format_option
from waveform.cli.output import Column, emit, emit_record, emit_stream, format_option

if TYPE_CHECKING:
    from waveform.client import IngestResult, Trace

__all__ = ["COMMANDS"]


# --------------------------------------------------------------------- ingest
def _looks_like_ecg(path: Path) -> bool:
    """A DICOM file (``.dcm`` or a DICM preamble) or a cart's own file (GE MUSE XML,
    Philips Sierra XML, HL7 aECG, SCP-ECG), by its first 4 KiB."""
    from waveform.formats import cart_format

    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head[128:132] == b"DICM" or cart_format(head) is not None


def collect(paths: Sequence[str]) -> list[Path]:
    """Files named, and ECG files (DICOM: ``.dcm`` or a DICM preamble; the carts'
    MUSE, Sierra, aECG and SCP-ECG files by their content) under folders named; a
    folder with none is an error (nothing would be sent)."""
    out: list[Path] = []
    for name in paths:
        p = Path(name)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file()
                           and not f.name.startswith(".") and _looks_like_ecg(f))
            if not found:
                raise CommandFailed("NOT_FOUND", f"{name}: no ECG file in this folder "
                                    "(looked for .dcm files, files with a DICM preamble, "
                                    "and MUSE, Sierra, aECG and SCP-ECG files)")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise CommandFailed("NOT_FOUND", f"{name}: no such file or folder")
    return out


_UID = re.compile(r"SOP Instance UID (\S+) ")


def _winner(r: IngestResult, stored_from: dict[str, str]) -> str:
    """Of two files with one SOP Instance UID and other content, which one this run
    stored (the server refuses the other: which one is first is up to the race of
    the concurrent streams)."""
    m = _UID.search(str(r.error))
    winner = stored_from.get(m.group(1)) if m else None
    return f" (this run stored {winner} under that UID)" if winner else ""


def _outcome(r: IngestResult, stored_from: dict[str, str]) -> str:
    from waveform.client import code_name

    assert r.error is not None
    return f"{code_name(r.error)}: {r.error}{_winner(r, stored_from)}"


_INGEST_COLUMNS = (Column("source", "file"), Column("outcome"), Column("sop_instance_uid", "UID"),
                   Column("error"))


@click.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(), metavar="PATH...")
@click.option("-j", "--concurrency", type=click.IntRange(1, 256), default=4, metavar="N",
              help="streams (or unary callers) at once (default 4)")
@click.option("--unary", is_flag=True, help="one Ingest call per object instead of IngestStream")
@click.option("-q", "--quiet", is_flag=True, help="no progress display")
@file_format_option("the format of every file (default: the server recognises each)")
@format_option()
@connection_options()
@guarded("ingest")
def ingest(paths: tuple[str, ...], concurrency: int, unary: bool, quiet: bool,
           file_format: str | None, fmt: str, conn: dict[str, Any]) -> int:
    """Send ECGs to the archive: DICOM objects and the carts' own files (GE MUSE XML,
    Philips Sierra XML, HL7 aECG, SCP-ECG; the archive converts each to DICOM and
    keeps the file: `waveform original`). Folders are walked recursively (.dcm
    files, files with a DICM preamble, and the carts' files by their content). Exit
    status 0 when every file is stored (or was already), 1 when some were refused:
    each is listed with why, and of two files with one SOP Instance UID, which one
    this run stored."""
    from waveform.cli.progress import Bar
    from waveform.client import code_name

    files = collect(paths)
    bar = Bar(sys.stderr, "ingest", enabled=not quiet)
    bar.start(len(files))
    t0 = time.monotonic()
    try:
        with client_of(conn) as client:
            results = client.ingest(files, concurrency=concurrency, stream=not unary,
                                    on_progress=lambda r: bar.advance(1),
                                    format=file_format)
    finally:
        bar.close()
    elapsed = time.monotonic() - t0
    stored_from = {r.sop_instance_uid: r.source for r in results if r.ok}
    refused = [r for r in results if not r.ok]
    n_stored = sum(r.ok and not r.already_stored for r in results)
    n_already = sum(r.ok and r.already_stored for r in results)
    if fmt == "table":
        print(f"stored {n_stored}, already stored {n_already}, rejected {len(refused)} "
              f"({len(files)} files in {elapsed:.1f} s)")
        by_reason: dict[str, list[IngestResult]] = {}
        for r in refused:
            assert r.error is not None
            by_reason.setdefault(f"{code_name(r.error)}: {r.error}", []).append(r)
        for reason, rs in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            print(f"rejected {len(rs)}: {reason}")
            for r in rs[:10]:
                print(f"  {r.source}{_winner(r, stored_from)}")
            if len(rs) > 10:
                print(f"  ... and {len(rs) - 10} more")
    else:
        rows = [{"source": r.source, "sop_instance_uid": r.sop_instance_uid or None,
                 "outcome": ("already stored" if r.already_stored else "stored") if r.ok
                 else "refused", "error": _outcome(r, stored_from) if r.error else None,
                 "warnings": list(r.warnings)} for r in results]
        emit(rows, _INGEST_COLUMNS, fmt, key="files",
             extra={"stored": n_stored, "already_stored": n_already,
                    "rejected": len(refused)})
    if refused:
        first = refused[0].error
        assert first is not None
        return fail("ingest", code_name(first), f"{len(refused)} of {len(files)} files were "
                    "not stored")
    return EXIT_OK


# --------------------------------------------------------------------- search
_MEASURES = ("heart_rate_bpm", "pr_ms", "qrs_ms", "qt_ms", "qtc_ms")


def when(text: str) -> dt.datetime:
    """A date (YYYY-MM-DD) or ISO date-time; UTC when it names no zone."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a date (YYYY-MM-DD) or ISO date-time"
                                 ) from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _when(ctx: click.Context, param: click.Parameter, text: str | None) -> dt.datetime | None:
    return None if text is None else when(text)


def _ranges(ctx: click.Context, param: click.Parameter, texts: tuple[str, ...]
            ) -> list[tuple[str, float | None, float | None]]:
    out = []
    for text in texts:
        parts = text.split(":")
        try:
            if len(parts) != 3 or not parts[0]:
                raise ValueError
            out.append((parts[0], float(parts[1]) if parts[1] else None,
                        float(parts[2]) if parts[2] else None))
        except ValueError:
            raise click.BadParameter(f"{text!r}: expected MEASURE:LOW:HIGH (either bound may "
                                     "be empty), e.g. qtc_ms:450:") from None
    return out


_HIT_COLUMNS = (
    Column("sop_instance_uid", "SOP instance UID"), Column("acquired"),
    Column("patient_id", "patient"), Column("organisation"), Column("device"),
    Column("heart_rate_bpm", "HR"), Column("pr_ms", "PR"), Column("qrs_ms", "QRS"),
    Column("qt_ms", "QT"), Column("qtc_ms", "QTc"))
_HIT_CSV = tuple(Column(k) for k in (
    "sop_instance_uid", "patient_id", "organisation", "sop_class_uid", "study_instance_uid",
    "accession_number", "acquired", "manufacturer", "model", "analysis_version", *_MEASURES))


def _hits(table: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = table.to_pylist()
    for r in rows:
        r["device"] = f"{r['manufacturer']} {r['model']}".strip()
    return rows


@click.command("search")
@click.option("--patient", help="patient ID")
@click.option("--issuer", help="issuer of the patient ID")
@click.option("--organisation", help="archiving organisation")
@click.option("--sop-class", help="SOP Class UID")
@click.option("--manufacturer")
@click.option("--model")
@click.option("--study", help="Study Instance UID")
@click.option("--accession", help="accession number")
@click.option("--from", "date_from", callback=_when, metavar="DATE",
              help="acquired at or after (YYYY-MM-DD or ISO date-time, UTC if no zone)")
@click.option("--to", "date_to", callback=_when, metavar="DATE",
              help="acquired before (exclusive)")
@click.option("--range", "ranges", multiple=True, callback=_ranges, metavar="MEASURE:LOW:HIGH",
              help="inclusive bounds of heart_rate_bpm, pr_ms, qrs_ms, qt_ms or qtc_ms; "
                   "either bound may be empty; repeatable")
@click.option("--order-by", metavar="FIELD",
              help="acquisition_datetime (default), ingested_at or a measure")
@click.option("--asc", is_flag=True, help="ascending (default descending)")
@click.option("--limit", type=int, default=100, metavar="N", help="page size (default 100)")
@click.option("--page-token", metavar="TOKEN", help="next page of an earlier search")
@click.option("--all", "every_page", is_flag=True,
              help="every page, streamed (JSON lines with --format json)")
@format_option()
@connection_options()
@guarded("search")
def search(patient: str | None, issuer: str | None, organisation: str | None,
           sop_class: str | None, manufacturer: str | None, model: str | None,
           study: str | None, accession: str | None, date_from: dt.datetime | None,
           date_to: dt.datetime | None, ranges: list[tuple[str, float | None, float | None]],
           order_by: str | None, asc: bool, limit: int, page_token: str | None,
           every_page: bool, fmt: str, conn: dict[str, Any]) -> int:
    """Find ECGs the caller may see, one page at a time (newest first)."""
    filters: dict[str, Any] = dict(
        patient_id=patient or "", patient_id_issuer=issuer or "",
        organisation=organisation or "", sop_class_uid=sop_class or "",
        manufacturer=manufacturer or "", model=model or "", study_instance_uid=study or "",
        accession_number=accession or "", acquired_from=date_from, acquired_to=date_to,
        ranges=ranges, order_by=order_by or "", ascending=asc, page_size=limit,
        page_token=page_token or "")
    with client_of(conn) as client:
        if every_page:
            columns = _HIT_CSV if fmt == "csv" else _HIT_COLUMNS
            emit_stream((hit for page in client.search_pages(**filters)
                         for hit in _hits(page.table)), columns, fmt)
            return EXIT_OK
        page = client.search(**filters)
    emit(_hits(page.table), _HIT_CSV if fmt == "csv" else _HIT_COLUMNS, fmt, key="hits",
         extra={"next_page_token": page.next_page_token})
    if page.next_page_token:
        print(f"more: --page-token {page.next_page_token}", file=sys.stderr)
    return EXIT_OK


# -------------------------------------------------------------------- summary
def _value(show: str) -> Any:
    return lambda v: format(v, show)


@click.command("summary")
@click.argument("uid", metavar="UID")
@click.option("--analysis-version", metavar="V", help="default: the latest")
@click.option("--json", "as_json", is_flag=True, hidden=True, help="same as --format json")
@format_option()
@connection_options()
@guarded("summary")
def summary(uid: str, analysis_version: str | None, as_json: bool, fmt: str,
            conn: dict[str, Any]) -> int:
    """The measurements of one ECG."""
    from waveform.model import SUMMARY_MEASURES, Summary

    with client_of(conn) as client:
        doc = client.summary_document(uid, analysis_version)
    s = Summary.from_dict(doc)
    measures = {name: {"value": getattr(s, name).value, "reason": getattr(s, name).reason}
                for name in SUMMARY_MEASURES}
    fmt = "json" if as_json else fmt
    if fmt == "json":
        emit_record({"sop_instance_uid": uid, "analysis_version": s.analysis_version,
                     "beat_count": len(s.beats), **measures,
                     "lead_quality": [{"lead": q.lead, "quality": q.quality,
                                       "reason": q.reason} for q in s.lead_quality],
                     "document": doc}, (), "json")
        return EXIT_OK
    rows = [{"measure": name, "value": m["value"], "reason": m["reason"]}
            for name, m in measures.items()]
    if fmt == "csv":
        emit(rows, (Column("measure"), Column("value"), Column("reason")), "csv")
        return EXIT_OK
    print(f"ECG {uid} (analysis {s.analysis_version}), {len(s.beats)} beats")
    emit(rows, (Column("measure"), Column("value", show=_value(".1f")), Column("reason")),
         "table")
    if s.lead_quality:
        print()
        emit([{"lead": q.lead, "quality": q.quality, "reason": q.reason}
              for q in s.lead_quality],
             (Column("lead"), Column("quality", show=_value(".2f")), Column("reason")), "table")
    return EXIT_OK


# ---------------------------------------------------------------------- trace
_TRACE_SUFFIXES = (".csv", ".npy", ".npz", ".parquet")


def write_trace(t: Trace, out: str | None) -> None:
    """``t`` as CSV (stdout without ``out``), NPY (µV only: it holds no scale), NPZ
    or Parquet (with the scale of raw samples), by ``out``'s suffix."""
    import numpy as np

    raw = t.units == "raw"
    suffix = Path(out).suffix.lower() if out else ".csv"
    if suffix not in _TRACE_SUFFIXES:
        raise CommandFailed("INVALID_ARGUMENT", f"output {out}: the suffix must be "
                            f"{', '.join(_TRACE_SUFFIXES)}")
    scale = dict(sensitivity=list(t.sensitivity), correction=list(t.correction),
                 baseline=list(t.baseline), channel_units=list(t.channel_units))
    if suffix == ".npy":
        if raw:
            raise CommandFailed("INVALID_ARGUMENT", f"output {out}: a .npy file cannot hold "
                                "the scale of raw samples (physical = raw x sensitivity x "
                                "correction + baseline): write .npz or .parquet")
        np.save(out or "", t.samples)
        return
    if suffix == ".npz":
        arrays: dict[str, Any] = dict(
            samples=t.samples, leads=np.array(t.leads),
            sampling_frequency=t.sampling_frequency, start_s=t.start_s, units=t.units,
            sop_instance_uid=t.sop_instance_uid)
        if raw:
            arrays.update({k: np.array(v) for k, v in scale.items()})
        np.savez(out or "", **arrays)
        return
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        meta = {"sop_instance_uid": t.sop_instance_uid,
                "sampling_frequency": repr(t.sampling_frequency),
                "units": "raw" if raw else "uV"}
        if raw:
            meta.update({k: json.dumps(v) for k, v in scale.items()})
        table = pa.table({"time_s": t.times,
                          **{lead: t.samples[i] for i, lead in enumerate(t.leads)}})
        pq.write_table(table.replace_schema_metadata(meta), out or "")
        return
    times = t.times
    f = open(out, "w", newline="") if out else sys.stdout
    try:
        f.write(",".join(["time_s", *t.leads]) + "\n")
        if raw:
            for k in range(t.samples.shape[1]):
                f.write(f"{times[k]:.6f}," + ",".join(str(int(v)) for v in t.samples[:, k])
                        + "\n")
        else:
            np.savetxt(f, np.column_stack([times, t.samples.T]),
                       fmt=["%.6f"] + ["%.9g"] * len(t.leads), delimiter=",")
    finally:
        if out:
            f.close()
        else:
            f.flush()


@click.command("trace")
@click.argument("uid", metavar="UID")
@click.option("--leads", multiple=True, metavar="I,II,...", help="leads to fetch (default all)")
@click.option("--group", type=int, default=0, help="multiplex group (default 0)")
@click.option("--start", type=float, default=0.0, metavar="S", help="window start (s)")
@click.option("--duration", type=float, metavar="S", help="window length (s; default: all)")
@click.option("--rate", type=float, metavar="HZ", help="resample to this rate (µV only)")
@click.option("--raw", is_flag=True, help="the stored integers (physical = raw x sensitivity "
              "x correction + baseline) instead of µV")
@click.option("-o", "--output", metavar="FILE",
              help="FILE.csv, FILE.npy (µV), FILE.npz or FILE.parquet (with the scale of "
                   "raw samples); default CSV on stdout")
@connection_options()
@guarded("trace")
def trace(uid: str, leads: tuple[str, ...], group: int, start: float, duration: float | None,
          rate: float | None, raw: bool, output: str | None, conn: dict[str, Any]) -> int:
    """Samples of one ECG, shaped (leads, samples)."""
    if raw and rate:
        raise CommandFailed("INVALID_ARGUMENT", "--rate resamples to µV; drop --raw or --rate")
    if output and Path(output).suffix.lower() not in _TRACE_SUFFIXES:
        raise CommandFailed("INVALID_ARGUMENT", f"output {output}: the suffix must be "
                            f"{', '.join(_TRACE_SUFFIXES)}")
    if output and raw and Path(output).suffix.lower() == ".npy":
        raise CommandFailed("INVALID_ARGUMENT", f"output {output}: a .npy file cannot hold "
                            "the scale of raw samples: write .npz or .parquet")
    names = [x for part in leads for x in part.split(",") if x]
    with client_of(conn) as client:
        t = client.trace(uid, names, start, duration, rate, raw=raw, group=group)
    write_trace(t, output)
    if output:
        print(f"{output}: {len(t.leads)} leads x {t.samples.shape[1]} samples at "
              f"{t.sampling_frequency:g} Hz", file=sys.stderr)
    return EXIT_OK


# ------------------------------------------------------------ export, render
def save(data: bytes, out: Path) -> None:
    """``data`` into ``out`` by way of a temporary file, fsynced, then renamed."""
    tmp = out.with_name(f".{out.name}.part")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


@click.command("export")
@click.argument("uid", metavar="UID")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              metavar="FILE.dcm")
@connection_options()
@guarded("export")
def export(uid: str, output: Path, conn: dict[str, Any]) -> int:
    """The original DICOM object, byte for byte (SHA-256 checked)."""
    import hashlib

    with client_of(conn) as client:
        data = client.dicom(uid)
    save(data, output)
    print(f"{output}: {len(data)} bytes, SHA-256 {hashlib.sha256(data).hexdigest()}")
    return EXIT_OK


RENDER_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


@click.command("render")
@click.argument("target", metavar="UID|FILE.dcm")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), metavar="FILE",
              help="FILE.png, FILE.svg or FILE.pdf (the suffix chooses the format)")
@click.option("--layout", default="3x4+1", type=click.Choice(("3x4+1", "3x4+3", "6x2", "12x1")),
              help="3x4 with a lead II rhythm strip (default), 3x4 with three rhythm strips, "
                   "6x2 or 12x1")
@click.option("--paper", default="A4", type=click.Choice(("A4", "Letter")), help="landscape")
@click.option("--dpi", type=float, default=150.0, help="PNG resolution (default 150)")
@click.option("--speed", type=click.Choice(("25", "50")), default="25",
              help="paper speed, mm/s (default 25)")
@click.option("--gain", type=click.Choice(("5", "10", "20")), default="10",
              help="mm/mV (default 10)")
@click.option("--qtc", default="Bazett",
              type=click.Choice(("Bazett", "Fridericia", "Framingham", "Hodges")),
              help="the QTc formula in the header")
@connection_options()
@guarded("render")
def render(target: str, output: Path, layout: str, paper: str, dpi: float, speed: str,
           gain: str, qtc: str, conn: dict[str, Any]) -> int:
    """The 12-lead printout of a stored ECG (by UID, from the server) or of a local
    DICOM file (no server needed)."""
    fmt = RENDER_FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise CommandFailed("INVALID_ARGUMENT", f"{output}: the output must end in "
                            f"{', '.join(RENDER_FORMATS)} (it chooses the format)")
    options: dict[str, Any] = dict(layout=layout, paper=paper, dpi=dpi,
                                   speed_mm_s=float(speed), gain_mm_mv=float(gain))
    source = Path(target)
    if source.is_file():
        # A local object: decoded, measured and drawn here, no server involved.
        from waveform.render import render_file

        try:
            render_file(source, output, qtc=qtc, **options)
        except ValueError as exc:
            raise CommandFailed("INVALID_ARGUMENT", f"{source}: {exc}") from None
        print(f"{output}: printout of {source}")
        return EXIT_OK
    with client_of(conn) as client:
        data = client.render(target, fmt, qtc_formula=qtc, **options)  # type: ignore[arg-type]
    save(data, output)
    print(f"{output}: printout of {target} ({len(data)} bytes)")
    return EXIT_OK


# ------------------------------------------------------------ compact, health
def _compaction(r: Any) -> None:
    print(f"merged {r.merged_files} files into {r.written_files}, removed {r.removed_files}, "
          f"orphans removed {r.orphans_removed}")


@click.command("compact")
@click.option("--data", metavar="DIR",
              help="compact this archive folder directly (the server must be stopped); "
                   "with --catalog, s3://bucket/prefix: where its data files are")
@click.option("--catalog", metavar="CATALOG",
              help="compact a PostgreSQL catalog's archive directly ('postgres:...'; "
                   "its servers may keep running: one server compacts at a time)")
@click.option("--data-path", metavar="URL",
              help="with --catalog: where its data files are (s3://bucket/prefix/ or a "
                   "shared folder)")
@connection_options()
@guarded("compact")
def compact(data: str | None, catalog: str | None, data_path: str | None,
            conn: dict[str, Any]) -> int:
    """Merge small data files and remove orphans: through the server (role admin),
    with --data on an archive no server has open, or with --catalog on a shared one."""
    from waveform.cli.progress import Bar

    bar = Bar(sys.stderr, "compact")
    if catalog is not None and data_path is None and data is not None:
        data_path = data  # as `waveform serve --catalog ... --data s3://...`
    if catalog is not None:
        from waveform.store import compact_dir

        if not catalog.startswith("postgres:") or not data_path:
            raise click.UsageError("--catalog takes 'postgres:...' with --data s3://... or "
                                   "--data-path (a folder's own catalog: --data DIR)")
        bar.start(None)
        try:
            shared = compact_dir(data_path, catalog=catalog,
                                 data_path=data_path.rstrip("/") + "/")
        finally:
            bar.close()
        _compaction(shared)
        return EXIT_OK
    if data is None:
        bar.start(None)
        try:
            with client_of(conn) as client:
                r: Any = client.compact()
        finally:
            bar.close()
        _compaction(r)
        return EXIT_OK
    from waveform.errors import StorageError
    from waveform.store import compact_dir

    if not (Path(data) / "catalog.ducklake").exists():
        raise CommandFailed("NOT_FOUND", f"{data} holds no archive (no catalog.ducklake)")
    bar.start(None)
    try:
        r = compact_dir(Path(data))
    except StorageError as exc:
        if "lock" in str(exc).lower():
            raise CommandFailed("UNAVAILABLE", f"{data} is open in a running server; "
                                "compact through it (waveform compact --server ...)") from None
        raise
    finally:
        bar.close()
    _compaction(r)
    return EXIT_OK


@click.command("health")
@format_option()
@connection_options()
@guarded("health")
def health(fmt: str, conn: dict[str, Any]) -> int:
    """The grpc.health.v1 status of the server and of its two services."""
    with client_of(conn) as client:
        status = client.health()
    rows = [{"service": name or "(server)", "status": s} for name, s in status.items()]
    emit(rows, (Column("service"), Column("status")), fmt, key="services")
    bad = [f"{r['service']} is {r['status']}" for r in rows if r["status"] != "SERVING"]
    if bad:
        return fail("health", "UNAVAILABLE", "; ".join(bad))
    return EXIT_OK


COMMANDS = (ingest, search, summary, trace, export, render, compact, health)
