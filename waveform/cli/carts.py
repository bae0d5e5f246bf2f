"""Commands for the carts' ways in: ``import`` (a cart's own file to DICOM, no
server), ``original`` (the file a cart sent, from a server) and ``devices add``
(the devices file `serve --devices` reads for DICOM network storage)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import click

from waveform.cli._common import (
    EXIT_OK,
    CommandFailed,
    client_of,
    connection_options,
    guarded,
    os_failure,
)
from waveform.errors import WaveformError

__all__ = ["COMMANDS", "FILE_FORMATS", "file_format_option"]

#: What ``--file-format`` accepts: DICOM and the names of `waveform.formats.FORMATS`.
FILE_FORMATS = ("dicom", "ge-muse-xml", "philips-sierra-xml", "hl7-aecg", "scp-ecg")


def file_format_option(help: str) -> Any:
    return click.option("--file-format", "file_format", type=click.Choice(FILE_FORMATS),
                        metavar="FORMAT", help=help + f" ({', '.join(FILE_FORMATS)})")


def _save(data: bytes, out: Path) -> None:
    from waveform.cli.archive import save

    try:
        save(data, out)
    except OSError as exc:
        raise os_failure(exc, str(out)) from None


@click.command("import")
@click.argument("source", type=click.Path(path_type=Path), metavar="FILE")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              metavar="OUT.dcm")
@file_format_option("the file's format (default: recognised from its content)")
@guarded("import")
def import_file(source: Path, output: Path, file_format: str | None) -> int:
    """Convert a cart's own file (GE MUSE XML, Philips Sierra XML, HL7 aECG, SCP-ECG)
    into the DICOM object the archive would make of it, with no server."""
    from waveform.formats import convert

    try:
        data = source.read_bytes()
    except OSError as exc:
        raise os_failure(exc, str(source)) from None
    converted = convert(data, file_format)
    _save(converted.dicom, output)
    ecg = converted.ecg
    groups = ", ".join(f"{g.label or 'group'} {g.n_channels} x {g.n_samples} at "
                       f"{g.sampling_frequency:g} Hz" for g in ecg.groups)
    print(f"{output}: {converted.format} -> {len(converted.dicom)} bytes of DICOM, "
          f"SOP Instance UID {ecg.sop_instance_uid} ({groups}; "
          f"{len(converted.measurements)} measurements, {len(converted.statements)} "
          "statements)")
    for warning in ecg.warnings:
        print(f"warning: {warning}")
    return EXIT_OK


@click.command("original")
@click.argument("uid", metavar="UID")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), metavar="FILE")
@connection_options()
@guarded("original")
def original(uid: str, output: Path, conn: dict[str, Any]) -> int:
    """The file a cart sent in its own format (MUSE, Sierra, aECG, SCP-ECG), byte for
    byte (SHA-256 checked); an ECG that came as DICOM has none (use export)."""
    with client_of(conn) as client:
        got = client.original(uid)
    _save(got.data, output)
    print(f"{output}: {got.format}, {len(got.data)} bytes, SHA-256 "
          f"{hashlib.sha256(got.data).hexdigest()}")
    return EXIT_OK


@click.group("devices")
def devices() -> None:
    """Manage a devices file: the carts that may store over DICOM (serve --devices)."""


@devices.command("add")
@click.option("--file", "path", required=True, type=click.Path(path_type=Path),
              metavar="DEVICES", help="the devices file (created, mode 0600, if absent)")
@click.option("--ae-title", required=True, metavar="TITLE", help="the cart's calling AE title")
@click.option("--organisation", required=True, help="the organisation its ECGs belong to")
@click.option("--host", metavar="ADDRESS",
              help="admit the AE title only from this IP address")
@click.option("--port", type=click.IntRange(1, 65535), metavar="P",
              help="the cart's own port, for storage commitment reports on a new association")
@guarded("devices")
def devices_add(path: Path, ae_title: str, organisation: str, host: str | None,
                port: int | None) -> int:
    """Admit a cart: its AE title (and address) map to a device of an organisation."""
    from waveform.service.devices import add_device

    try:
        device = add_device(path, ae_title, organisation, host=host, port=port)
    except OSError as exc:
        raise os_failure(exc, f"devices file {path}") from None
    except WaveformError:
        raise
    except ValueError as exc:  # a file that is not JSON
        raise CommandFailed("INVALID_ARGUMENT", f"devices file {path}: {exc}") from None
    where = f" from {device.host}" if device.host else ""
    print(f"added {device.ae_title}{where} of {device.organisation} to {path}; a running "
          "server admits it at its next association")
    return EXIT_OK


COMMANDS = (import_file, original, devices)
