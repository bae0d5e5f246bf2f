"""The file interface: one contract, run against every implementation."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from waveform.store.files import FileOps, LocalFiles
from waveform.store.testing import FileOpsContract, RecordingFiles


class TestLocalFiles(FileOpsContract):
    @pytest.fixture
    def files(self) -> FileOps:
        return LocalFiles()

    @pytest.fixture
    def root(self, tmp_path: Path) -> str:
        return str(tmp_path)


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
