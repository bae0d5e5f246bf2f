"""``waveform reanalyze``: re-measure the archive, or compare two analysis versions.

    waveform reanalyze --data DIR [--where COLUMN=VALUE]... [--engine local|dask]
                       [--scheduler ADDR] [--workers N]
    waveform reanalyze --data DIR --compare OLD NEW [--plot FILE]

Exit status 0 when every planned ECG has a summary (an ECG the analysis
rejects has one that records why), 1 when some could not be read (run it
again) or on an error, 2 for a misused option.

The command opens the store itself, so with the default embedded catalog the
server must not be running on the same folder (the catalog file has one
writer process); with a PostgreSQL catalog it runs beside the server. See
docs/scale.md. `register` adds the command to the `waveform` command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from waveform.errors import WaveformError

__all__ = ["main", "register"]

_LOCKED = "Could not set lock"


def register(sub: Any) -> None:
    """Add ``reanalyze`` to the `waveform` command line's subparsers."""
    help = "re-measure stored ECGs that lack a summary of the current analysis version"
    q: argparse.ArgumentParser = sub.add_parser(
        "reanalyze", help=help, description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _arguments(q)
    q.set_defaults(fn=_cmd_reanalyze)


def _arguments(q: argparse.ArgumentParser) -> None:
    # Nothing heavy is imported here: the parser is built for every `waveform` command.
    q.add_argument("--data", default="./data", help="the archive's folder (default ./data)")
    q.add_argument("--catalog", help="DuckLake catalog (default DIR/catalog.ducklake; "
                   "postgres:dbname=... for a shared one)")
    q.add_argument("--data-path", help="where the data files are (default DIR/lake/; "
                   "a URL such as s3://bucket/archive/)")
    q.add_argument("--where", action="append", default=[], metavar="FILTER",
                   help="only ECGs with COLUMN OP VALUE on the ecg table (OP: = != < <= > >=), "
                        "e.g. organisation=org-a; repeat to combine")
    q.add_argument("--engine", default="local", metavar="local|dask",
                   help="a process pool on this machine (default) or a Dask cluster")
    q.add_argument("--scheduler", metavar="ADDR",
                   help="Dask scheduler address (tcp://host:8786); without it, --engine dask "
                        "starts a local cluster")
    q.add_argument("--workers", type=int, default=0, metavar="N",
                   help="worker processes of the local pool or of the local Dask cluster "
                        "(default: one per core)")
    q.add_argument("--unit", type=int, default=256, metavar="N",
                   help="ECGs per task (default 256)")
    q.add_argument("--commit", type=int, default=1024, metavar="N",
                   help="summaries per commit (default 1024)")
    q.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"),
                   help="compare two analysis versions instead of measuring")
    q.add_argument("--plot", metavar="FILE.png", help="with --compare: a Bland-Altman figure")
    q.add_argument("-v", "--verbose", action="store_true", help="a line for every commit")


def _open(args: argparse.Namespace) -> Any:
    from waveform.store import Store

    try:
        return Store.open(args.data, catalog=args.catalog, data_path=args.data_path,
                          analyze=None, measure=False)
    except WaveformError as e:
        if _LOCKED in str(e):
            raise WaveformError(
                f"{e}\nThe catalog is held by another process (a running `waveform serve` "
                "on this folder?). An embedded catalog has one writer process: stop the "
                "server first, or use a PostgreSQL catalog so that the job runs beside it "
                "(docs/scale.md)") from e
        raise


def _cmd_reanalyze(args: argparse.Namespace) -> int:
    if args.plot and not args.compare:
        print("waveform reanalyze: --plot needs --compare OLD NEW", file=sys.stderr)
        return 2
    try:
        if args.compare:
            return _compare(args)
        return _reanalyze(args)
    except (WaveformError, OSError) as e:
        print(f"waveform reanalyze: {e}", file=sys.stderr)
        return 1


def _reanalyze(args: argparse.Namespace) -> int:
    from waveform.reanalyze.engines import make_engine
    from waveform.reanalyze.job import JobResult, run
    from waveform.reanalyze.planning import parse_filter
    from waveform.reanalyze.progress import progress_for

    filters = [parse_filter(f) for f in args.where]
    engine = make_engine(args.engine, workers=args.workers, scheduler=args.scheduler)
    progress = progress_for(sys.stderr)

    def committed(r: JobResult) -> None:
        if args.verbose:
            progress.note(f"committed: {r.committed} summaries in {r.commits} commits")

    store = _open(args)
    try:
        with engine:
            result = run(store, engine, filters=filters, unit_ecgs=args.unit,
                         commit_rows=args.commit, progress=progress, on_commit=committed)
    finally:
        store.close()
    for line in result.lines():
        print(line)
    return 1 if result.unread else 0


def _compare(args: argparse.Namespace) -> int:
    from waveform.reanalyze.compare import compare

    old, new = args.compare
    store = _open(args)
    try:
        comparison = compare(store, old, new)
    finally:
        store.close()
    for line in comparison.lines():
        print(line)
    if comparison.n_common == 0:
        print(f"waveform reanalyze: no ECG has a summary of both {old} and {new}",
              file=sys.stderr)
        return 1
    if args.plot:
        from waveform.reanalyze.plot import bland_altman

        bland_altman(comparison, args.plot)
        print(f"plot: {args.plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m waveform.reanalyze.cli ...``: the command on its own."""
    p = argparse.ArgumentParser(prog="waveform")
    register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["reanalyze", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.fn(args)
    return code


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
