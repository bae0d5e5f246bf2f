"""``waveform reanalyze``: re-measure the archive, or compare two analysis versions.

    waveform reanalyze --data DIR [--where COLUMN=VALUE]... [--engine local|dask]
                       [--scheduler ADDR] [--workers N]
    waveform reanalyze --server HOST:PORT --token TOKEN [--where COLUMN=VALUE]...
                       [--engine local|dask] [--scheduler ADDR] [--workers N]
    waveform reanalyze --data DIR --compare OLD NEW [--plot FILE]
    waveform reanalyze --server HOST:PORT --token TOKEN --compare OLD NEW [--plot FILE]

Exit status 0 when every planned ECG has a summary (an ECG the analysis
rejects has one that records why), 1 when some could not be read (run it
again), on an error or when interrupted, 2 for a misused option.

With --data the command opens the store itself, so with the default embedded
catalog the server must not be running on the same folder (the catalog file
has one writer process); with a PostgreSQL catalog it runs beside the server.
With --server the job runs inside that server (the Reanalyze call, role
admin), on the server's store while it ingests, its workers on the server's
machine or on --scheduler; the progress and the report are shown here, and
Ctrl-C stops the job after its current unit (run it again to measure the
rest); --compare with --server compares the versions' summaries in that server
(the CompareVersions call, role admin). See docs/scale.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from waveform.errors import WaveformError

if TYPE_CHECKING:
    from waveform.reanalyze.compare import Comparison
    from waveform.reanalyze.job import JobResult
    from waveform.reanalyze.progress import Progress

__all__ = ["main", "register"]

_LOCKED = "Could not set lock"


def register(sub: Any) -> None:
    """Add ``reanalyze`` to the `waveform` command line's subparsers."""
    from waveform.client import connection_options

    help = "re-measure stored ECGs that lack a summary of the current analysis version"
    server = connection_options(
        timeout=None, timeout_help="with --server: a deadline for the whole job in seconds "
        "(default none); the job stops when it passes",
        server_help="run the job inside this running server (role admin) instead of "
                    "opening --data here")
    q: argparse.ArgumentParser = sub.add_parser(
        "reanalyze", help=help, description=__doc__, parents=[server],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _arguments(q)
    q.set_defaults(fn=_cmd_reanalyze)


def _arguments(q: argparse.ArgumentParser) -> None:
    # Nothing heavy is imported here: the parser is built for every `waveform` command.
    q.add_argument("--data", help="the archive's folder, opened here (default ./data; "
                   "not with --server)")
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
                        "(default: one per core; with --server, one less than the server's)")
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
        return Store.open(args.data or "./data", catalog=args.catalog,
                          data_path=args.data_path, analyze=None, measure=False)
    except WaveformError as e:
        if _LOCKED in str(e):
            raise WaveformError(
                f"{e}\nThe catalog is held by another process (a running `waveform serve` "
                "on this folder?). An embedded catalog has one writer process: run the job "
                "inside that server with `waveform reanalyze --server HOST:PORT --token "
                "ADMIN_TOKEN` and the same options, or stop the server first, or use a "
                "PostgreSQL catalog so that the job runs beside it (docs/scale.md)") from e
        raise


#: Options that name a store opened here, which --server does not take.
_LOCAL_ONLY = (("data", "--data"), ("catalog", "--catalog"), ("data_path", "--data-path"))


def _cmd_reanalyze(args: argparse.Namespace) -> int:
    if args.plot and not args.compare:
        print("waveform reanalyze: --plot needs --compare OLD NEW", file=sys.stderr)
        return 2
    if args.server:
        misused = [flag for name, flag in _LOCAL_ONLY if getattr(args, name)]
        if misused:
            print(f"waveform reanalyze: {', '.join(misused)} and --server do not go together "
                  f"({'it opens' if len(misused) == 1 else 'they open'} the archive here; "
                  "--server runs the job inside the server)", file=sys.stderr)
            return 2
    try:
        if args.server:
            return _remote_compare(args) if args.compare else _remote(args)
        if args.compare:
            return _compare(args)
        return _reanalyze(args)
    except (WaveformError, OSError) as e:
        print(f"waveform reanalyze: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("waveform reanalyze: interrupted; the summaries committed so far stay: run "
              "the command again to measure the rest", file=sys.stderr)
        return 1


def _reanalyze(args: argparse.Namespace) -> int:
    from waveform.reanalyze.engines import make_engine
    from waveform.reanalyze.job import run
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
        result = run(store, engine, filters=filters, unit_ecgs=args.unit,
                     commit_rows=args.commit, progress=progress, on_commit=committed)
    finally:
        engine.close()  # the job starts the workers only when it has work for them
        store.close()
    for line in result.lines():
        print(line)
    return 1 if result.unread else 0


class _Follower:
    """Shows a server's `ReanalyzeProgress` messages on a local `Progress` (the same
    display as a job run here) and gathers the end-of-job report."""

    def __init__(self, progress: Progress, verbose: bool) -> None:
        self.progress = progress
        self.verbose = verbose
        self.pass_number = 0
        self.commits = 0
        self.failed: list[tuple[str, str]] = []
        self.unread: list[tuple[str, str]] = []
        self.result: JobResult | None = None

    def show(self, m: Any) -> None:
        from waveform.reanalyze.job import JobResult

        progress = self.progress
        if m.note:
            progress.note(m.note)
        if m.pass_number != self.pass_number:
            if self.pass_number:
                progress.close()
            progress.start(m.pass_ecgs)
            self.pass_number = m.pass_number
        if m.done > progress.done:
            progress.advance(m.done - progress.done)
        if self.verbose and m.commits > self.commits:
            progress.note(f"committed: {m.committed} summaries in {m.commits} commits")
        self.commits = m.commits
        self.failed += [(f.sop_instance_uid, f.reason) for f in m.failed_ecgs]
        self.unread += [(f.sop_instance_uid, f.reason) for f in m.unread_ecgs]
        if m.final:
            self.result = JobResult(
                m.analysis_version, planned=m.planned, files=m.files, units=m.units,
                committed=m.committed, commits=m.commits, skipped=m.already_present,
                failed=self.failed, unread=self.unread, seconds=m.seconds)


def _remote(args: argparse.Namespace) -> int:
    """The job inside the server at ``--server`` (the Reanalyze call), shown here."""
    import grpc

    from waveform.client import connect
    from waveform.reanalyze.progress import progress_for
    from waveform.service._proto.waveform.v1 import archive_pb2 as pb

    request = pb.ReanalyzeRequest(where=args.where, engine=args.engine,
                                  scheduler=args.scheduler or "", workers=args.workers,
                                  unit_ecgs=args.unit, commit_rows=args.commit)
    follower = _Follower(progress_for(sys.stderr), args.verbose)
    conn = connect(args)
    try:
        call = conn.archive().Reanalyze(request, metadata=conn.metadata, timeout=conn.timeout)
        try:
            for message in call:
                follower.show(message)
        except KeyboardInterrupt:
            call.cancel()  # the server stops the job after its current unit
            raise
        finally:
            follower.progress.close()
    except grpc.RpcError as e:
        return _refused(e)
    finally:
        conn.channel.close()
    if follower.result is None:
        print("waveform reanalyze: the server ended the job's stream without its report; "
              "run the command again (it measures what is left)", file=sys.stderr)
        return 1
    for line in follower.result.lines():
        print(line)
    return 1 if follower.result.unread else 0


def _compare(args: argparse.Namespace) -> int:
    from waveform.reanalyze.compare import compare

    old, new = args.compare
    store = _open(args)
    try:
        comparison = compare(store, old, new)
    finally:
        store.close()
    return _compared(comparison, args.plot)


def _remote_compare(args: argparse.Namespace) -> int:
    """The comparison made by the server at ``--server`` (the CompareVersions call)."""
    import grpc

    from waveform.client import connect
    from waveform.service._proto.waveform.v1 import archive_pb2 as pb
    from waveform.service.reanalysis import comparison_from_message

    old, new = args.compare
    request = pb.CompareVersionsRequest(old_version=old, new_version=new, plot=bool(args.plot))
    conn = connect(args)
    try:
        answer = conn.archive().CompareVersions(request, metadata=conn.metadata,
                                                timeout=conn.timeout)
    except grpc.RpcError as e:
        return _refused(e)
    finally:
        conn.channel.close()
    return _compared(comparison_from_message(answer), args.plot, answer.plot_png)


def _refused(e: Exception) -> int:
    """Exit status 1, the server's status code and message on standard error."""
    from waveform.client import rpc_failure

    code, details = rpc_failure(e)
    print(f"waveform reanalyze: {code}: {details}", file=sys.stderr)
    return 1


def _compared(comparison: Comparison, plot: str | None, png: bytes | None = None) -> int:
    """Print the report of ``comparison`` and write its figure to ``plot`` (``png``
    when the server drew it, else drawn here)."""
    for line in comparison.lines():
        print(line)
    if comparison.n_common == 0:
        print(f"waveform reanalyze: no ECG has a summary of both {comparison.old_version} "
              f"and {comparison.new_version}", file=sys.stderr)
        return 1
    if plot:
        if png is None:
            from waveform.reanalyze.plot import bland_altman

            bland_altman(comparison, plot)
        else:
            with open(plot, "wb") as f:
                f.write(png)
        print(f"plot: {plot}")
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
