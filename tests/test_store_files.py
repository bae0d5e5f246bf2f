"""The file interface: one contract, run against every implementation (the S3 one
against a real S3 server, SeaweedFS, started for the session)."""

from __future__ import annotations

import errno
import uuid
from pathlib import Path

import pytest

from tests.conftest import S3_BUCKET
from tests.servers import S3Server
from waveform.store.files import FileOps, LocalFiles, S3Files
from waveform.store.s3 import S3Settings
from waveform.store.testing import FileOpsContract, RecordingFiles


def s3_files(server: S3Server) -> S3Files:
    return S3Files(S3Settings(server.access_key, server.secret_key, None, server.region,
                              server.endpoint))


@pytest.fixture(params=["local", "s3"])
def implementation(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[FileOps, str]:
    """Each implementation with an empty root of its own."""
    if request.param == "local":
        return LocalFiles(), str(tmp_path)
    server: S3Server = request.getfixturevalue("s3")
    return s3_files(server), f"s3://{S3_BUCKET}/files-{uuid.uuid4().hex}"


class TestFiles(FileOpsContract):
    @pytest.fixture
    def files(self, implementation: tuple[FileOps, str]) -> FileOps:
        return implementation[0]

    @pytest.fixture
    def root(self, implementation: tuple[FileOps, str]) -> str:
        return implementation[1]


def test_each_implementation_states_its_guarantees() -> None:
    # The durability order reads these (durable.publish): local files need fsync and
    # publish by rename; an S3 PUT is durable when it returns and there is no rename.
    assert (LocalFiles.durable_on_write, LocalFiles.atomic_rename) == (False, True)
    assert (S3Files.durable_on_write, S3Files.atomic_rename) == (True, False)


class TestRecordingFiles(FileOpsContract):
    @pytest.fixture
    def files(self) -> FileOps:
        return RecordingFiles(LocalFiles())

    @pytest.fixture
    def root(self, tmp_path: Path) -> str:
        return str(tmp_path)


class TestRangeReaderFallback(FileOpsContract):
    """The base class's `open_input` (what an object store would use)."""

    @pytest.fixture
    def files(self) -> FileOps:
        class NoNativeInput(LocalFiles):
            open_input = FileOps.open_input

        return NoNativeInput()

    @pytest.fixture
    def root(self, tmp_path: Path) -> str:
        return str(tmp_path)


def test_recording_logs_in_order_and_injects(tmp_path: Path) -> None:
    rec = RecordingFiles(LocalFiles())
    rec.fail("fsync", nth=2)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    rec.write(a, b"1")
    rec.fsync(a)
    rec.write(b, b"2")
    with pytest.raises(OSError) as info:
        rec.fsync(b)
    assert info.value.errno == errno.EIO
    rec.mark("commit")
    assert rec.log == [
        ("write", a), ("fsync", a), ("write", b), ("fsync", b), ("failed:fsync", b),
        ("commit", ""),
    ]


class _CountingOpens:
    """An S3 filesystem that counts the objects opened for reading (each is a HEAD)."""

    def __init__(self, fs: object) -> None:
        self.fs = fs
        self.opens = 0

    def open_input_file(self, path: str) -> object:
        self.opens += 1
        return self.fs.open_input_file(path)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.fs, name)


def test_s3_files_keep_the_objects_they_read_open(s3: S3Server) -> None:
    # Data files never change under one name: a second read is one ranged GET, with
    # no new open. Writing or removing the name drops the open object.
    counting = _CountingOpens(s3.filesystem())
    files = S3Files(filesystem=counting, keep_open=2)  # type: ignore[arg-type]
    root = f"s3://{S3_BUCKET}/open-{uuid.uuid4().hex}"
    a, b, c = (f"{root}/{name}" for name in "abc")
    for path in (a, b, c):
        files.write(path, path.encode() * 10)
    assert files.read_range(a, 0, 5) == a.encode()[:5]
    assert files.read_range(a, 5, 5) == a.encode()[5:10]
    assert counting.opens == 1
    files.write(a, b"new bytes")
    assert files.read_range(a, 0, 100) == b"new bytes" and counting.opens == 2
    files.read_range(b, 0, 1)
    files.read_range(c, 0, 1)  # keep_open 2: a is let go
    assert counting.opens == 4
    files.read_range(a, 0, 1)
    assert counting.opens == 5
    files.remove(a)
    with pytest.raises(FileNotFoundError):
        files.read_range(a, 0, 1)
