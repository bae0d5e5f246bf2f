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
