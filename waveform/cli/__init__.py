"""The `waveform` command line.

Every command is a thin layer: over `waveform.Client` for a running archive
(`archive`, `records`, `reanalyze --server`), over the local modules for what
needs no server (`local`, `serve`, `reanalyze --data`). One module per group:

    serve       the gRPC service (--demo: dev tokens and the demo ECGs)
    local       demo, info, import-wfdb, tokens add, audit verify
    archive     ingest, search, summary, trace, export, render, compact, health
    carts       import (a cart's file to DICOM), original, devices add
    records     documents, consent, denials, recent, my, audit query
    reanalyze   re-measure the archive, compare analysis versions

Output: ``--format table|json|csv`` (`waveform.cli.output`). Exit status: 0 when
everything asked was done, 1 when something was refused (one line on standard
error: ``waveform: <command>: <status code>: <details>``), 2 for a misused
command line. Shell completion: ``eval "$(waveform completion bash)"`` (zsh, fish).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence

import click

from waveform.cli import archive, carts, local, reanalyze, records, serve
from waveform.cli._common import EXIT_REFUSED, quiet_broken_pipe
from waveform.cli.local import demo_objects

__all__ = ["cli", "command_paths", "demo_objects", "main", "run_command"]


class _PipeClosed(Exception):
    """The reader of standard output went away (click would exit 1 on it)."""


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise _PipeClosed from None


@click.group("waveform", cls=_Group, help=__doc__.split("\n\n")[0],
             context_settings={"help_option_names": ["-h", "--help"],
                               "max_content_width": 100})
@click.version_option(package_name="waveform", prog_name="waveform")
def cli() -> None:
    pass


@click.group("audit")
def audit() -> None:
    """The audit trail: verify its hash chain here, query it on a server."""


audit.add_command(local.audit_verify)
audit.add_command(records.audit_query)


@click.command("completion")
@click.argument("shell", type=click.Choice(("bash", "zsh", "fish")))
def completion(shell: str) -> int:
    """Print the shell completion script: eval "$(waveform completion bash)"."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(cli, {}, "waveform", "_WAVEFORM_COMPLETE").source())
    return 0


for _module in (serve, local, archive, carts, records, reanalyze):
    for _command in _module.COMMANDS:
        cli.add_command(_command)
cli.add_command(audit)
cli.add_command(completion)


def command_paths(group: click.Group = cli, prefix: str = "waveform") -> Iterator[str]:
    """Every command of the command line, as typed: ``waveform documents attach``."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from command_paths(command, f"{prefix} {name}")
        elif command is not None and not command.hidden:
            yield f"{prefix} {name}"


def run_command(command: click.Command, argv: Sequence[str] | None,
                prog_name: str = "waveform") -> int:
    """Run ``command`` on ``argv``; its exit status (usage errors: 2)."""
    try:
        rv = command.main(args=list(sys.argv[1:] if argv is None else argv),
                          prog_name=prog_name, standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        click.echo("Aborted.", err=True)
        return EXIT_REFUSED
    except (BrokenPipeError, _PipeClosed):
        return quiet_broken_pipe()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return quiet_broken_pipe()
    return rv if isinstance(rv, int) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``waveform ARGV``: the exit status."""
    return run_command(cli, argv)
