"""What every command shares: the connection options, the one-line failure and
the exit status.

Exit status: 0 when everything asked was done (every object stored), 1 when the
server or a file refused some or all of it, 2 for a misused command line (click's
usage errors). A failure is one line on standard error,
``waveform: <command>: <status code>: <details>``, never a traceback.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from waveform.errors import WaveformError

if TYPE_CHECKING:
    from waveform.client import Client

__all__ = ["EXIT_OK", "EXIT_REFUSED", "EXIT_USAGE", "CommandFailed", "client_of",
           "connection_options", "guarded", "os_failure"]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2

F = TypeVar("F", bound=Callable[..., Any])


class CommandFailed(Exception):
    """A command's one-line failure: a status code name and the details."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


def os_failure(exc: OSError, what: str) -> CommandFailed:
    code = {errno.ENOENT: "NOT_FOUND", errno.EACCES: "PERMISSION_DENIED",
            errno.EPERM: "PERMISSION_DENIED"}.get(exc.errno or 0, "INTERNAL")
    return CommandFailed(code, f"{what}: {exc.strerror or exc}")


def connection_options(timeout: float | None = 60.0,
                       timeout_help: str = "deadline of each call in seconds (default 60)",
                       server_help: str = "the archive, HOST:PORT (default $WAVEFORM_SERVER "
                                          "or 127.0.0.1:50051)") -> Callable[[F], F]:
    """``--server``, ``--token``, TLS and ``--timeout`` on a command that talks to a
    server; the command receives them as one ``conn`` dict for `client_of`."""
    options = [
        click.option("--server", metavar="HOST:PORT", help=server_help),
        click.option("--token", help="bearer token (default $WAVEFORM_TOKEN)"),
        click.option("--tls-ca", metavar="PEM", help="CA certificate of the server: use TLS"),
        click.option("--tls-cert", metavar="PEM", help="client certificate (mutual TLS)"),
        click.option("--tls-key", metavar="PEM", help="private key of --tls-cert"),
        click.option("--tls-server-name", metavar="NAME",
                     help="name to expect in the server certificate (default: the host)"),
        click.option("--timeout", type=float, default=timeout, show_default=False,
                     metavar="S", help=timeout_help),
        click.option("--emergency", metavar="REASON",
                     help="a clinician's emergency access: stands in for a missing consent "
                          "(never a denial), audited and shown to the patient"),
    ]
    names = ("server", "token", "tls_ca", "tls_cert", "tls_key", "tls_server_name", "timeout",
             "emergency")

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            kwargs["conn"] = {name: kwargs.pop(name) for name in names}
            return fn(*args, **kwargs)

        for option in reversed(options):
            run = option(run)
        return run  # type: ignore[return-value]

    return decorate


def client_of(conn: dict[str, Any], **extra: Any) -> Client:
    """A `Client` from the connection options of a command."""
    from waveform.client import Client

    return Client(conn["server"], conn["token"], tls_ca=conn["tls_ca"],
                  tls_cert=conn["tls_cert"], tls_key=conn["tls_key"],
                  tls_server_name=conn["tls_server_name"], timeout=conn["timeout"],
                  purpose="emergency" if conn["emergency"] else None,
                  purpose_reason=conn["emergency"], **extra)


def fail(command: str, code: str, details: str) -> int:
    click.echo(f"waveform: {command}: {code}: {details}", err=True)
    return EXIT_REFUSED


def guarded(command: str) -> Callable[[F], F]:
    """Run the command; any failure becomes one line on stderr and exit status 1.
    Output cut short by its reader (``| head``) ends the command quietly."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> int:
            from waveform.client import code_name

            try:
                code: int = fn(*args, **kwargs)
                return code
            except CommandFailed as exc:
                return fail(command, exc.code, exc.details)
            except WaveformError as exc:
                return fail(command, code_name(exc), str(exc))
            except BrokenPipeError:
                raise
            except OSError as exc:
                failure = os_failure(exc, getattr(exc, "filename", None) or command)
                return fail(command, failure.code, failure.details)
            except KeyboardInterrupt:
                return fail(command, "CANCELLED", "interrupted")

        return run  # type: ignore[return-value]

    return decorate


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def quiet_broken_pipe() -> int:
    """The reader of our output went away (``waveform search | head``): stop as a
    Unix tool does, without a message (128 + SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout replaced by a test's capture
        pass
    return 141
