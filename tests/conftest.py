"""Shared fixtures: where the third-party reference data lives, a running archive,
and the two storage backends (embedded; PostgreSQL + S3 started by the tests)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.servers import PostgresServer, S3Server, postgres_server, seaweedfs_server
from waveform.service._proto.waveform.v1 import archive_pb2_grpc as pb_grpc
from waveform.service.identity import Identity, TokenIdentities, add_token
from waveform.service.server import start
from waveform.store import Store
from waveform.store.files import FileOps, files_for

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
SHARED_DICOM = sorted((SHARED / "dicom").glob("*.dcm")) if SHARED.is_dir() else []


def interruptible(module: str, *args: str) -> list[str]:
    """The command that runs ``module`` as ``python -m`` does, where Ctrl-C (SIGINT)
    raises KeyboardInterrupt as in a terminal's foreground job, also when the tests
    themselves run as a background job (a shell starts those with SIGINT ignored,
    and a Python started so never installs its handler)."""
    code = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", code, *args]


def shared(*parts: str) -> Path:
    """Path under ../shared/data, skipping the test with a reason when absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference data {path} is absent (only ../shared/data has it)")
    return path


# --------------------------------------------------------------------------------------
# One real in-process gRPC server on 127.0.0.1 over a temporary store, for the session.


class Archive:
    """A running archive server and the tokens of a few callers."""

    def __init__(self, server: Any, tokens: dict[str, str]) -> None:
        self.server = server
        self.store = server.store
        self.address = server.address
        self.tokens = tokens
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.EcgArchiveStub(self.channel)

    def auth(self, who: str) -> list[tuple[str, str]]:
        """Call metadata of caller ``who`` (a key of ``tokens``)."""
        return [("authorization", f"Bearer {self.tokens[who]}")]


CALLERS = {
    "cart_a": Identity("org-a", "cart-1", "device"),
    "cart_b": Identity("org-b", "cart-2", "device"),
    "dr_a": Identity("org-a", "dr-a", "clinician"),
    "dr_b": Identity("org-b", "dr-b", "clinician"),
    "citizen": Identity("citizens", "p-1", "citizen", patient_id="SYN000001"),
    "admin": Identity("org-a", "ops", "admin"),
    "auditor": Identity("org-a", "audit", "auditor"),
}


@contextmanager
def serving(root: Path, backend: Backend | None = None) -> Iterator[Archive]:
    """A server in this process with a token for each of `CALLERS`: over a store in
    ``root`` (its audit trail beside it), or on ``backend`` (a PostgreSQL catalog's
    audit trail in its database)."""
    from waveform.archive import Archive as RulesArchive

    tokens_file = root / "tokens.json"
    tokens = {who: add_token(tokens_file, ident) for who, ident in CALLERS.items()}
    if backend is None:
        store = Store.open(root / "data")
    else:
        store = Store.open(backend.data_dir, catalog=backend.catalog,
                           data_path=backend.data_path)
    try:
        audit = (backend.catalog if backend is not None and backend.name == "cluster"
                 else root / "data" / "audit")
        rules = RulesArchive.open(store, audit, replica="tests")
        try:
            server = start(store, TokenIdentities.load(tokens_file), port=0, archive=rules)
            arch = Archive(server, tokens)
            try:
                yield arch
            finally:
                arch.channel.close()
                server.stop(5)
        finally:
            rules.close()
    finally:
        store.close()


@pytest.fixture(scope="session")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    with serving(tmp_path_factory.mktemp("archive")) as arch:
        yield arch


# --------------------------------------------------------------------------------------
# The storage backends. PostgreSQL and the S3 server start once per session, and only
# when a test asks for them; each test gets its own database and its own S3 prefix.

#: The bucket every test's S3 prefix lives in.
S3_BUCKET = "waveform-test"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    with seaweedfs_server((S3_BUCKET,)) as server:
        yield server


@dataclass(frozen=True, slots=True)
class Backend:
    """Where one test's store keeps its catalog and its data files."""

    name: str
    #: A DuckDB file, or ``postgres:`` and a DSN.
    catalog: str
    #: A directory ending in a separator, or ``s3://bucket/prefix/``.
    data_path: str
    #: A local directory of the test's own (what stays on the machine in any mode).
    data_dir: Path

    def files(self) -> FileOps:
        return files_for(self.data_path)


def _cluster(request: pytest.FixtureRequest, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Backend:
    """A fresh PostgreSQL database and S3 prefix, reached through the AWS_* environment
    (and no AWS files of the machine's)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    pg: PostgresServer = request.getfixturevalue("postgres")
    server: S3Server = request.getfixturevalue("s3")
    name = f"t_{uuid.uuid4().hex[:16]}"
    dsn = pg.create_database(name)
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN",
                "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    for var, value in server.environment().items():
        monkeypatch.setenv(var, value)
    return Backend("cluster", "postgres:" + dsn, f"s3://{S3_BUCKET}/{name}/", data_dir)


@pytest.fixture(params=["embedded", "cluster"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    """Each backend in turn: ``embedded`` (a DuckDB-file catalog and a local data
    directory) and ``cluster`` (see `cluster_backend`)."""
    if request.param == "cluster":
        return _cluster(request, tmp_path, monkeypatch)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    return Backend("embedded", str(data_dir / "catalog.ducklake"),
                   str(data_dir / "lake") + "/", data_dir)


@pytest.fixture
def cluster_backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    """The cluster backend only: a fresh PostgreSQL database and S3 prefix, reached
    through the AWS_* environment (and no AWS files of the machine's)."""
    return _cluster(request, tmp_path, monkeypatch)


@pytest.fixture(scope="module", params=["embedded", "cluster"])
def module_backend(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """`backend` for a module's shared fixtures: the module's tests run once on each."""
    root = tmp_path_factory.mktemp(f"backend-{request.param}")
    if request.param == "embedded":
        data_dir = root / "data"
        data_dir.mkdir()
        yield Backend("embedded", str(data_dir / "catalog.ducklake"),
                      str(data_dir / "lake") + "/", data_dir)
        return
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield _cluster(request, root, monkeypatch)
