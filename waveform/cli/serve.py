"""``waveform serve``: the gRPC service over an archive folder.

The command is three steps, each a function a new option can reach:
`serve_options` (the click options: add one there), `open_service` (tokens,
TLS, store, archive and server from the options) and `run` (start-up message,
demo data, waiting for a signal, the clean stop).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from waveform.cli._common import EXIT_OK, EXIT_REFUSED, shown
from waveform.errors import WaveformError

__all__ = [
    "COMMANDS",
    "DEMO_CALLERS",
    "DEMO_DEVICE",
    "DEMO_DICOM_PORT",
    "ServeOptions",
    "Service",
    "demo_devices",
    "demo_tokens",
    "open_service",
    "serve_options",
]

F = TypeVar("F", bound=Callable[..., Any])

DEMO_CALLERS = (
    ("device", "demo-clinic", "cart-1", ""),
    ("clinician", "demo-clinic", "dr-demo", ""),
    ("clinician", "other-hospital", "dr-other", ""),
    ("admin", "demo-clinic", "ops", ""),
    ("auditor", "archive", "auditor-1", ""),
    ("citizen", "citizens", "patient-demo", "SYN000001"),
)

#: How long `serve --demo` waits for its ECGs' measurements before going on.
DEMO_MEASURE_S = 300.0

#: `serve --demo`'s DICOM door (unless --dicom-port says otherwise): the port, and
#: the cart its devices file admits (the README's storescu example uses them).
DEMO_DICOM_PORT = 11112
DEMO_DEVICE = ("CART1", "demo-clinic")


@dataclass(slots=True)
class ServeOptions:
    """The options of `serve`, as click parsed them (extra ones land in ``more``)."""

    #: The archive's folder, or ``s3://bucket/prefix`` (data files in object storage).
    data: str
    host: str
    port: int
    tokens: Path | None
    tls_cert: str | None
    tls_key: str | None
    client_ca: str | None
    metrics_port: int
    workers: int
    max_concurrent: int
    max_message_mb: int
    release_delays: Path | None
    demo: bool
    verbose: bool
    more: dict[str, Any] = field(default_factory=dict)

    @property
    def in_object_storage(self) -> bool:
        return self.data.startswith("s3://")

    @property
    def folder(self) -> Path:
        """The local folder of ``--data`` (demo tokens, devices, the embedded archive)."""
        if self.in_object_storage:
            raise ValueError(f"--data {self.data} is in object storage; this needs a local "
                             "--data folder")
        return Path(self.data)

    @property
    def catalog(self) -> str | None:
        return self.more.get("catalog") or None

    def open_store(self) -> Any:
        """The store the options name: embedded in the folder; or a PostgreSQL catalog
        (``--catalog postgres:...``) with data files in the folder (a shared one) or in
        S3 (``--data s3://bucket/prefix``, credentials as AWS tools read them)."""
        from waveform.store import Store

        catalog = self.catalog
        if self.in_object_storage:
            if not (catalog or "").startswith("postgres:"):
                raise ValueError("--data s3://... needs --catalog 'postgres:...': servers that "
                                 "share object storage share a PostgreSQL catalog")
            return Store.open(self.data, catalog=catalog,
                              data_path=self.data.rstrip("/") + "/")
        return Store.open(self.folder, catalog=catalog)

    @property
    def audit(self) -> str:
        """Where the audit trail is: the PostgreSQL catalog's database (every server's
        chain in one place), else the folder's ``audit``."""
        catalog = self.catalog
        if catalog is not None and catalog.startswith("postgres:"):
            return catalog
        return str(self.folder / "audit")


def serve_options(fn: F) -> F:
    """The options of `serve`; a new one added here reaches `open_service` in
    ``ServeOptions.more`` under its name."""
    for option in reversed([
        click.option("--data", default="./data", show_default=True, metavar="FOLDER|URL",
                     help="the archive's folder, or s3://bucket/prefix for its data files "
                          "in object storage (with a PostgreSQL --catalog)"),
        click.option("--catalog", metavar="CATALOG",
                     help="the DuckLake catalog (default: catalog.ducklake in the --data "
                          "folder); 'postgres:dbname=... host=... port=...' lets several "
                          "servers share one archive"),
        click.option("--replica", metavar="NAME",
                     help="this server's name in a PostgreSQL catalog's audit trail (its own "
                          "hash chain, continued across restarts; default: the host name)"),
        click.option("--host", default="127.0.0.1", show_default=True),
        click.option("--port", type=int, default=50051, show_default=True),
        click.option("--tokens", type=click.Path(path_type=Path),
                     help="tokens file (hashes of bearer tokens)"),
        click.option("--tls-cert", help="server certificate (PEM)"),
        click.option("--tls-key", help="server private key (PEM)"),
        click.option("--client-ca", help="require client certificates from this CA (PEM)"),
        click.option("--metrics-port", type=int, default=0, help="Prometheus /metrics port"),
        click.option("--workers", type=int, default=32,
                     help="RPC threads (at least --max-concurrent + 9, so that health checks "
                          "and a re-analysis job's progress answer at capacity)"),
        click.option("--max-concurrent", type=int, default=256,
                     help="calls in progress; more are refused with RESOURCE_EXHAUSTED"),
        click.option("--max-message-mb", type=int, default=64, help="largest message (MiB)"),
        click.option("--release-delays", type=click.Path(path_type=Path), metavar="FILE",
                     help='JSON: {"default_days": 14, "organisations": {"org": '
                          '{"statement": 7}}} (days before a citizen sees a document)'),
        click.option("--dicom-port", type=click.IntRange(0, 65535), metavar="N",
                     help="also serve DICOM network storage (C-STORE, C-ECHO, storage "
                          "commitment) on this port, same host and TLS as gRPC (0: any free "
                          f"port; --demo: {DEMO_DICOM_PORT})"),
        click.option("--dicom-ae", default="WAVEFORM", show_default=True, metavar="TITLE",
                     help="the archive's called AE title"),
        click.option("--devices", type=click.Path(path_type=Path), metavar="FILE",
                     help="devices file: the carts' AE titles and organisations (waveform "
                          "devices add); required with --dicom-port"),
        click.option("--demo", is_flag=True,
                     help="dev tokens (printed, and kept for this data folder), the demo "
                          f"ECGs loaded, and DICOM on port {DEMO_DICOM_PORT} admitting "
                          f"{DEMO_DEVICE[0]}"),
        click.option("-v", "--verbose", is_flag=True),
    ]):
        fn = option(fn)
    return fn


def demo_tokens(data: Path) -> tuple[Path, dict[str, str], bool]:
    """The dev tokens of ``data``: the tokens file (hashes) and the tokens themselves,
    kept beside it in ``dev-tokens.secret.json`` (owner-only) so that every `serve
    --demo` on one data folder answers the same tokens. New ones are made when
    either file is missing or they no longer match; the third value says which."""
    from waveform.service.identity import Identity, TokenIdentities, add_token

    hashes, secrets = data / "dev-tokens.json", data / "dev-tokens.secret.json"
    want = {f"{role}:{org}:{user}": Identity(org, user, role, patient)
            for role, org, user, patient in DEMO_CALLERS}
    try:
        kept: dict[str, str] = json.loads(secrets.read_text())
        known = TokenIdentities.load(hashes)
        if set(kept) == set(want) and all(known.authenticate(kept[k]) == ident
                                          for k, ident in want.items()):
            return hashes, kept, True
    except (OSError, ValueError, WaveformError):
        pass
    hashes.unlink(missing_ok=True)
    tokens = {who: add_token(hashes, ident) for who, ident in want.items()}
    fd = os.open(secrets, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as f:
        json.dump(tokens, f, indent=1)
    return hashes, tokens, False


def demo_devices(data: Path) -> Path:
    """The demo's devices file, ``data/dev-devices.json``, admitting `DEMO_DEVICE`
    (from any address) to the demo organisation; created or completed if needed."""
    from waveform.service.devices import Devices, add_device

    path = data / "dev-devices.json"
    title, organisation = DEMO_DEVICE
    if path.exists() and any(d.ae_title == title and d.organisation == organisation
                             and d.host is None for d in Devices.load(path)):
        return path
    add_device(path, title, organisation)
    return path


class Service:
    """The gRPC server and the DICOM door beside it (None without --dicom-port).
    `stop` stops the DICOM door first: it writes into the server's store. Anything
    else is the gRPC server's."""

    def __init__(self, server: Any, dicom: Any) -> None:
        self.server = server
        self.dicom = dicom

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)

    def stop(self, grace: float | None = None) -> Any:
        if self.dicom is not None:
            self.dicom.stop(30.0 if grace is None else grace)
        return self.server.stop(grace)


def _open_dicom(server: Any, o: ServeOptions, tls: Any) -> Any:
    """The DICOM door the options ask for (None: none). The demo's own door, on its
    default port, is left out when the port is taken (``more["dicom_notice"]`` says
    so)."""
    from waveform.errors import StorageError
    from waveform.service.dimse import start_dicom

    port: int | None = o.more.get("dicom_port")
    devices = o.more.get("devices")
    if port is None and not o.demo:
        if devices is not None:
            raise ValueError("--devices is read by the DICOM door: give --dicom-port too")
        return None
    demo_default = port is None
    if demo_default:
        port = DEMO_DICOM_PORT
    if devices is None and o.demo:
        devices = o.more["devices"] = demo_devices(o.folder)
        o.more["demo_devices"] = True
    if devices is None:
        raise ValueError("--dicom-port needs --devices FILE (the carts that may store: "
                         "waveform devices add)")
    try:
        assert port is not None
        return start_dicom(server, host=o.host, port=port,
                           ae_title=o.more.get("dicom_ae") or "WAVEFORM", devices=devices,
                           tls=tls)
    except StorageError as exc:
        if not demo_default:
            raise
        o.more["dicom_notice"] = (f"waveform: not serving DICOM: {exc}; --dicom-port N "
                                  "serves it on another port")
        return None


def _refuse(message: str) -> int:
    print(f"waveform serve: {message}", file=sys.stderr)
    return EXIT_REFUSED


def open_service(o: ServeOptions) -> Any:
    """The started service for ``o`` (a `Service`: the gRPC server, and the DICOM
    door when asked); a `WaveformError`, `OSError` or `ValueError` names what is
    wrong (nothing is left open then)."""
    from waveform.archive import Archive, ReleaseDelays
    from waveform.service.identity import TokenIdentities
    from waveform.service.metrics import Metrics
    from waveform.service.server import TlsFiles, start

    assert o.tokens is not None
    tls = None
    if o.tls_cert or o.tls_key or o.client_ca:
        if not (o.tls_cert and o.tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        tls = TlsFiles(Path(o.tls_cert), Path(o.tls_key),
                       Path(o.client_ca) if o.client_ca else None)
    identities = TokenIdentities.load(o.tokens)
    release = ReleaseDelays()
    if o.release_delays is not None:
        release = ReleaseDelays.from_json(json.loads(o.release_delays.read_text()))
    metrics = Metrics()
    store = o.open_store()
    try:
        archive = Archive.open(store, o.audit, release=release,
                               replica=o.more.get("replica") or socket.gethostname())
    except BaseException:
        store.close()
        raise
    try:
        server = start(store, identities, host=o.host, port=o.port, tls=tls,
                       workers=o.workers, max_concurrent=o.max_concurrent,
                       max_message_bytes=o.max_message_mb << 20, metrics=metrics,
                       owns_store=True, archive=archive)
    except BaseException:
        archive.close()
        store.close()
        raise
    try:
        dicom = _open_dicom(server, o, tls)
    except BaseException:
        server.stop(0)
        archive.close()
        raise
    if o.metrics_port:
        metrics.serve(o.metrics_port, o.host)
    return Service(server, dicom)


@click.command("serve")
@serve_options
def serve(**options: Any) -> int:
    """Run the gRPC service."""
    import logging

    from waveform.service.server import configure_logging, run_until_signalled

    names = ServeOptions.__dataclass_fields__
    o = ServeOptions(**{k: v for k, v in options.items() if k in names},
                     more={k: v for k, v in options.items() if k not in names})
    configure_logging(logging.DEBUG if o.verbose else logging.INFO)
    tokens: dict[str, str] = {}
    kept = False
    if o.demo and o.tokens is None:
        try:
            folder = o.folder
        except ValueError as exc:
            return _refuse(f"--demo keeps its tokens in the folder: {exc}")
        folder.mkdir(parents=True, exist_ok=True)
        o.tokens, tokens, kept = demo_tokens(folder)
    if o.tokens is None:
        return _refuse("--tokens FILE is required (create one with 'waveform tokens add'), "
                       "or use --demo")
    try:
        server = open_service(o)
    except (WaveformError, OSError, ValueError) as exc:
        return _refuse(str(exc))
    where = f"{o.host}:{server.port}"
    shown_data = o.data if o.in_object_storage else str(o.folder.resolve())
    print(f"waveform: serving {shown_data} on {where}"
          + (f", metrics on http://{o.host}:{o.metrics_port}/metrics"
             if o.metrics_port else ""), flush=True)
    if o.more.get("dicom_notice"):
        print(o.more["dicom_notice"], flush=True)
    if server.dicom is not None:
        dicom = server.dicom
        print(f"waveform: DICOM storage (C-STORE, C-ECHO, storage commitment) on "
              f"{dicom.address} as AE title {dicom.ae_title}, devices from "
              f"{shown(Path(o.more['devices']))}"
              + (f" (the demo's: {DEMO_DEVICE[0]} of {DEMO_DEVICE[1]} from any address)"
                 if o.more.get("demo_devices") else ""), flush=True)
    # The stop signals are taken before the demo loads and says "Ctrl-C stops": one
    # sent as soon as that is printed (or while the demo ECGs are being measured)
    # stops the server cleanly.
    run_until_signalled(server, first=(lambda: _load_demo(server, where, tokens, kept,
                                                          o.folder)) if o.demo else None)
    server.archive.close()
    print("waveform: stopped", flush=True)
    return EXIT_OK


def _load_demo(server: Any, where: str, tokens: dict[str, str], kept: bool,
               data: Path) -> None:
    from waveform.cli.local import demo_objects

    results = server.store.ingest([obj for _, obj in demo_objects()], "demo-clinic")
    stored = sum(not r.already_stored for r in results)
    print(f"demo: {len(results)} ECGs of demo-clinic ({stored} new, "
          f"{len(results) - stored} already stored)", flush=True)
    if stored:
        # So that the commands below show measurements. On a machine that has not
        # run the analysis before, its kernels are compiled first (once: cached).
        print("demo: measuring them (the first run on a machine compiles the signal "
              "kernels first, under a minute)", flush=True)
        t0 = time.monotonic()
        deadline = t0 + DEMO_MEASURE_S
        while not server.store.wait_measured(timeout=0.5):  # short waits: Ctrl-C works
            if time.monotonic() > deadline:
                print(f"demo: not measured after {DEMO_MEASURE_S:.0f} s; their summaries "
                      "appear once they are", flush=True)
                break
        else:
            print(f"demo: measured in {time.monotonic() - t0:.1f} s", flush=True)
    if tokens:
        secret = shown(data / "dev-tokens.secret.json")
        print(f"dev tokens ({'the same as the last run' if kept else 'new'}; kept for this "
              f"data folder in {secret}, remove it for new ones):")
        for who, token in tokens.items():
            print(f"  {who:<34} {token}")
    clinician = tokens.get("clinician:demo-clinic:dr-demo", "<clinician token>")
    uid = results[0].sop_instance_uid if results else "<uid>"
    print("try, in another terminal:")
    if sys.prefix != sys.base_prefix:  # run from a virtual environment: put it on PATH
        print(f"  . {shown(Path(sys.prefix) / 'bin' / 'activate')}")
    for line in (
        f"export WAVEFORM_SERVER={where} WAVEFORM_TOKEN={clinician}",
        "waveform health",
        "waveform search --format table",
        f"waveform summary {uid}",
        f"waveform trace {uid} --leads II,V5 --duration 2 -o trace.csv",
        f"waveform export {uid} -o ecg.dcm",
        f"waveform render {uid} -o printout.pdf",
    ):
        print(f"  {line}")
    print("Ctrl-C stops the server cleanly.", flush=True)


COMMANDS = (serve,)
