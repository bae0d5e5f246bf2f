"""The `waveform` command line.

    waveform serve --data DIR --tokens FILE   the gRPC service (--demo: dev tokens + demo ECGs)
    waveform demo                       decode and measure the bundled demo ECGs
    waveform info FILE.dcm...           what an object holds (groups, leads, warnings)
    waveform import-wfdb RECORD... -o DIR   WFDB records as General ECG DICOM objects
    waveform audit verify [--data DIR]  check the audit trail's hash chain
    waveform reanalyze [--engine local|dask]  re-measure the archive (see --help)

Every failure is reported as one line naming the file and what was wrong, with
exit status 1; nothing prints a traceback for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

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


DEMO_CALLERS = (
    ("device", "demo-clinic", "cart-1", ""),
    ("clinician", "demo-clinic", "dr-demo", ""),
    ("clinician", "other-hospital", "dr-other", ""),
    ("admin", "demo-clinic", "ops", ""),
    ("auditor", "archive", "auditor-1", ""),
    ("citizen", "citizens", "patient-demo", "SYN000001"),
)


def _demo_tokens(path: Path) -> dict[str, str]:
    """A fresh dev tokens file; the tokens themselves are only printed, never stored."""
    from waveform.service.identity import Identity, add_token

    if path.exists():
        path.unlink()
    return {f"{role}:{org}:{user}": add_token(path, Identity(org, user, role, patient))
            for role, org, user, patient in DEMO_CALLERS}


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from waveform.archive import Archive, ReleaseDelays
    from waveform.service.identity import TokenIdentities
    from waveform.service.metrics import Metrics
    from waveform.service.server import TlsFiles, configure_logging, run_until_signalled, start
    from waveform.store import Store

    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    data = Path(args.data)
    tokens_path = args.tokens
    tokens: dict[str, str] = {}
    if args.demo and tokens_path is None:
        tokens_path = data / "dev-tokens.json"
        data.mkdir(parents=True, exist_ok=True)
        tokens = _demo_tokens(tokens_path)
    if tokens_path is None:
        print("waveform serve: --tokens FILE is required (create one with "
              "'waveform tokens add'), or use --demo", file=sys.stderr)
        return 1
    tls = None
    if args.tls_cert or args.tls_key or args.client_ca:
        if not (args.tls_cert and args.tls_key):
            print("waveform serve: TLS needs both --tls-cert and --tls-key", file=sys.stderr)
            return 1
        tls = TlsFiles(Path(args.tls_cert), Path(args.tls_key),
                       Path(args.client_ca) if args.client_ca else None)
    metrics = Metrics()
    try:
        identities = TokenIdentities.load(tokens_path)
        release = ReleaseDelays()
        if args.release_delays is not None:
            release = ReleaseDelays.from_json(json.loads(args.release_delays.read_text()))
        store = Store.open(data)
    except (WaveformError, OSError, ValueError) as exc:
        print(f"waveform serve: {exc}", file=sys.stderr)
        return 1
    try:
        archive = Archive.open(store, data / "audit", release=release)
    except (WaveformError, OSError) as exc:
        store.close()
        print(f"waveform serve: {exc}", file=sys.stderr)
        return 1
    try:
        server = start(store, identities, host=args.host, port=args.port, tls=tls,
                       workers=args.workers, max_concurrent=args.max_concurrent,
                       max_message_bytes=args.max_message_mb << 20, metrics=metrics,
                       owns_store=True, archive=archive)
    except WaveformError as exc:
        archive.close()
        store.close()
        print(f"waveform serve: {exc}", file=sys.stderr)
        return 1
    if args.metrics_port:
        metrics.serve(args.metrics_port, args.host)
    where = f"{args.host}:{server.port}"
    print(f"waveform: serving {data.resolve()} on {where}"
          + (f", metrics on http://{args.host}:{args.metrics_port}/metrics"
             if args.metrics_port else ""), flush=True)
    try:
        if args.demo:
            _load_demo(server, where, tokens)
    except KeyboardInterrupt:  # Ctrl-C while the demo ECGs were being measured
        server.stop(30.0)
    else:
        run_until_signalled(server)
    archive.close()
    print("waveform: stopped", flush=True)
    return 0


#: How long `serve --demo` waits for its ECGs' measurements before going on.
_DEMO_MEASURE_S = 300.0


def _load_demo(server: Any, where: str, tokens: dict[str, str]) -> None:
    results = server.store.ingest([data for _, data in demo_objects()], "demo-clinic")
    for r in results:
        if not r.already_stored:
            server.archive.ingested(r.sop_instance_uid)
    stored = sum(not r.already_stored for r in results)
    print(f"demo: {len(results)} ECGs of demo-clinic ({stored} new, "
          f"{len(results) - stored} already stored)", flush=True)
    if stored:
        # So that the commands below show measurements. On a machine that has not
        # run the analysis before, its kernels are compiled first (once: cached).
        print("demo: measuring them (the first run on a machine compiles the signal "
              "kernels first, under a minute)", flush=True)
        t0 = time.monotonic()
        deadline = t0 + _DEMO_MEASURE_S
        while not server.store.wait_measured(timeout=0.5):  # short waits: Ctrl-C works
            if time.monotonic() > deadline:
                print(f"demo: not measured after {_DEMO_MEASURE_S:.0f} s; their summaries "
                      "appear once they are", flush=True)
                break
        else:
            print(f"demo: measured in {time.monotonic() - t0:.1f} s", flush=True)
    if tokens:
        print("dev tokens (shown once; only their hashes are in the tokens file):")
        for who, token in tokens.items():
            print(f"  {who:<34} {token}")
    clinician = tokens.get("clinician:demo-clinic:dr-demo", "<clinician token>")
    uid = results[0].sop_instance_uid if results else "<uid>"
    print("try, in another terminal:")
    if sys.prefix != sys.base_prefix:  # run from a virtual environment: put it on PATH
        print(f"  . {_shown(Path(sys.prefix) / 'bin' / 'activate')}")
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


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from waveform.archive import verify

    directory = args.audit if args.audit is not None else args.data / "audit"
    if not directory.is_dir():
        print(f"waveform audit verify: {directory} is not an audit trail folder",
              file=sys.stderr)
        return 1
    checked, problems = verify(directory)
    if problems:
        for p in problems:
            print(f"waveform audit verify: {directory}: {p}", file=sys.stderr)
        return 1
    print(f"{directory}: {checked} events, the chain is intact")
    return 0


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


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

    q = add("serve", _cmd_serve, "run the gRPC service")
    q.add_argument("--data", default="./data", help="the archive's folder (default ./data)")
    q.add_argument("--host", default="127.0.0.1")
    q.add_argument("--port", type=int, default=50051)
    q.add_argument("--tokens", type=Path, help="tokens file (hashes of bearer tokens)")
    q.add_argument("--tls-cert", help="server certificate (PEM)")
    q.add_argument("--tls-key", help="server private key (PEM)")
    q.add_argument("--client-ca", help="require client certificates from this CA (PEM)")
    q.add_argument("--metrics-port", type=int, default=0, help="Prometheus /metrics port")
    q.add_argument("--workers", type=int, default=32,
                   help="RPC threads (at least --max-concurrent + 9, so that health "
                        "checks and a re-analysis job's progress answer at capacity)")
    q.add_argument("--max-concurrent", type=int, default=256,
                   help="calls in progress; more are refused with RESOURCE_EXHAUSTED")
    q.add_argument("--max-message-mb", type=int, default=64, help="largest message (MiB)")
    q.add_argument("--release-delays", type=Path, metavar="FILE",
                   help='JSON: {"default_days": 14, "organisations": {"org": '
                        '{"statement": 7}}} (days before a citizen sees a document)')
    q.add_argument("--demo", action="store_true",
                   help="dev tokens (printed) and the demo ECGs loaded")
    q.add_argument("-v", "--verbose", action="store_true")
    add("demo", _cmd_demo, "decode and measure the bundled demo ECGs")
    q = add("info", _cmd_info, "describe DICOM waveform objects")
    q.add_argument("files", nargs="+", metavar="FILE")
    q.add_argument("--measure", action="store_true", help="also run the measurement")
    audit = sub.add_parser("audit", help="the audit trail",
                           description="the audit trail (append-only, hash-chained)")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    q = asub.add_parser("verify", help="check the hash chain: a changed or removed event "
                        "is reported with its sequence number (exit status 1)")
    q.set_defaults(fn=_cmd_audit_verify)
    q.add_argument("--data", type=Path, default=Path("./data"),
                   help="the archive's folder (its audit/ is checked; default ./data)")
    q.add_argument("--audit", type=Path, metavar="DIR", help="the audit folder itself")
    q = add("import-wfdb", _cmd_import_wfdb, "write WFDB records as General ECG DICOM objects")
    q.add_argument("records", nargs="+", metavar="RECORD", help="record path without extension")
    q.add_argument("-o", "--output", required=True, type=Path, metavar="DIR")
    __import__("waveform.client", fromlist=["register"]).register(sub)  # client commands
    __import__("waveform.reanalyze.cli", fromlist=["register"]).register(sub)  # batch
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    code: int = args.fn(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
