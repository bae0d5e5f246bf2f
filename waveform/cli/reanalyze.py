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

import sys
from typing import TYPE_CHECKING, Any

import click

from waveform.cli._common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, client_of, connection_options
from waveform.errors import WaveformError

if TYPE_CHECKING:
    from waveform.client.types import ReanalyzeStatus
    from waveform.reanalyze.compare import Comparison
    from waveform.reanalyze.job import JobResult
    from waveform.reanalyze.progress import Progress

__all__ = ["COMMANDS", "Follower"]

_LOCKED = "Could not set lock"


def _open(o: dict[str, Any]) -> Any:
    from waveform.store import Store

    data, data_path = o["data"] or "./data", o["data_path"]
    if data.startswith("s3://") and data_path is None:  # as `waveform serve --data s3://`
        data_path = data.rstrip("/") + "/"
    try:
        return Store.open(data, catalog=o["catalog"], data_path=data_path, analyze=None,
                          measure=False)
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


def _say(message: str) -> None:
    print(f"waveform reanalyze: {message}", file=sys.stderr)


@click.command("reanalyze", help=__doc__, short_help="Re-measure the archive, or compare "
               "two analysis versions.")
@click.option("--data", help="the archive's folder, opened here (default ./data; "
              "not with --server), or s3://bucket/prefix with a PostgreSQL --catalog")
@click.option("--catalog", help="DuckLake catalog (default DIR/catalog.ducklake; "
              "postgres:dbname=... for a shared one)")
@click.option("--data-path", help="where the data files are (default DIR/lake/; "
              "a URL such as s3://bucket/archive/)")
@click.option("--where", multiple=True, metavar="FILTER",
              help="only ECGs with COLUMN OP VALUE on the ecg table (OP: = != < <= > >=), "
                   "e.g. organisation=org-a; repeat to combine")
@click.option("--engine", default="local", metavar="local|dask",
              help="a process pool on this machine (default) or a Dask cluster")
@click.option("--scheduler", metavar="ADDR",
              help="Dask scheduler address (tcp://host:8786); without it, --engine dask "
                   "starts a local cluster")
@click.option("--workers", type=int, default=0, metavar="N",
              help="worker processes of the local pool or of the local Dask cluster "
                   "(default: one per core; with --server, one less than the server's)")
@click.option("--unit", type=int, default=256, metavar="N", help="ECGs per task (default 256)")
@click.option("--commit", type=int, default=1024, metavar="N",
              help="summaries per commit (default 1024)")
@click.option("--compare", nargs=2, metavar="OLD NEW",
              help="compare two analysis versions instead of measuring")
@click.option("--plot", metavar="FILE.png", help="with --compare: a Bland-Altman figure")
@click.option("-v", "--verbose", is_flag=True, help="a line for every commit")
@connection_options(
    timeout=None, timeout_help="with --server: a deadline for the whole job in seconds "
    "(default none); the job stops when it passes",
    server_help="run the job inside this running server (role admin) instead of opening "
                "--data here")
def reanalyze(**o: Any) -> int:
    if o["plot"] and not o["compare"]:
        _say("--plot needs --compare OLD NEW")
        return EXIT_USAGE
    server = o["conn"]["server"]
    if server:
        misused = [flag for name, flag in _LOCAL_ONLY if o[name]]
        if misused:
            _say(f"{', '.join(misused)} and --server do not go together "
                 f"({'it opens' if len(misused) == 1 else 'they open'} the archive here; "
                 "--server runs the job inside the server)")
            return EXIT_USAGE
    try:
        if server:
            return _remote_compare(o) if o["compare"] else _remote(o)
        if o["compare"]:
            return _compare(o)
        return _local(o)
    except WaveformError as e:
        code = getattr(e, "code", None)  # set on a failed call: the status code's name
        _say(f"{code}: {e}" if isinstance(code, str) else str(e))
        return EXIT_REFUSED
    except OSError as e:
        _say(str(e))
        return EXIT_REFUSED
    except KeyboardInterrupt:
        _say("interrupted; the summaries committed so far stay: run the command again to "
             "measure the rest")
        return EXIT_REFUSED


def _bar() -> Progress:
    from waveform.cli.progress import Bar

    return Bar(sys.stderr, "reanalyze", unit="ECGs")


def _local(o: dict[str, Any]) -> int:
    from waveform.reanalyze.engines import make_engine
    from waveform.reanalyze.job import run
    from waveform.reanalyze.planning import parse_filter

    filters = [parse_filter(f) for f in o["where"]]
    engine = make_engine(o["engine"], workers=o["workers"], scheduler=o["scheduler"])
    progress = _bar()

    def committed(r: JobResult) -> None:
        if o["verbose"]:
            progress.note(f"committed: {r.committed} summaries in {r.commits} commits")

    store = _open(o)
    try:
        result = run(store, engine, filters=filters, unit_ecgs=o["unit"],
                     commit_rows=o["commit"], progress=progress, on_commit=committed)
    finally:
        engine.close()  # the job starts the workers only when it has work for them
        store.close()
    for line in result.lines():
        print(line)
    return EXIT_REFUSED if result.unread else EXIT_OK


class Follower:
    """Shows a server's job progress on a local `Progress` (the same display as a
    job run here) and gathers the end-of-job report."""

    def __init__(self, progress: Progress, verbose: bool) -> None:
        self.progress = progress
        self.verbose = verbose
        self.pass_number = 0
        self.commits = 0
        self.failed: list[tuple[str, str]] = []
        self.unread: list[tuple[str, str]] = []
        self.result: JobResult | None = None

    def show(self, m: ReanalyzeStatus) -> None:
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
        self.failed += m.failed_ecgs
        self.unread += m.unread_ecgs
        if m.final:
            self.result = JobResult(
                m.analysis_version, planned=m.planned, files=m.files, units=m.units,
                committed=m.committed, commits=m.commits, skipped=m.already_present,
                failed=self.failed, unread=self.unread, seconds=m.seconds)


def _remote(o: dict[str, Any]) -> int:
    """The job inside the server at ``--server`` (the Reanalyze call), shown here."""
    follower = Follower(_bar(), o["verbose"])
    with client_of(o["conn"]) as client:
        statuses = client.reanalyze(list(o["where"]), engine=o["engine"],
                                    scheduler=o["scheduler"] or "", workers=o["workers"],
                                    unit_ecgs=o["unit"], commit_rows=o["commit"])
        try:
            for status in statuses:
                follower.show(status)
        finally:
            statuses.close()  # on Ctrl-C: cancels the call, the job stops after its unit
            follower.progress.close()
    if follower.result is None:
        _say("the server ended the job's stream without its report; run the command again "
             "(it measures what is left)")
        return EXIT_REFUSED
    for line in follower.result.lines():
        print(line)
    return EXIT_REFUSED if follower.result.unread else EXIT_OK


def _compare(o: dict[str, Any]) -> int:
    from waveform.reanalyze.compare import compare

    old, new = o["compare"]
    store = _open(o)
    try:
        comparison = compare(store, old, new)
    finally:
        store.close()
    return _compared(comparison, o["plot"])


def _remote_compare(o: dict[str, Any]) -> int:
    """The comparison made by the server at ``--server`` (the CompareVersions call)."""
    old, new = o["compare"]
    with client_of(o["conn"]) as client:
        comparison, png = client.compare_versions(old, new, plot=bool(o["plot"]))
    return _compared(comparison, o["plot"], png)


def _compared(comparison: Comparison, plot: str | None, png: bytes | None = None) -> int:
    """Print the report of ``comparison`` and write its figure to ``plot`` (``png``
    when the server drew it, else drawn here)."""
    for line in comparison.lines():
        print(line)
    if comparison.n_common == 0:
        _say(f"no ECG has a summary of both {comparison.old_version} and "
             f"{comparison.new_version}")
        return EXIT_REFUSED
    if plot:
        if png is None:
            from waveform.reanalyze.plot import bland_altman

            bland_altman(comparison, plot)
        else:
            with open(plot, "wb") as f:
                f.write(png)
        print(f"plot: {plot}")
    return EXIT_OK


COMMANDS = (reanalyze,)
