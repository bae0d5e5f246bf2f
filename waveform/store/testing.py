"""Test doubles and contract tests for the store's seams, shipped with the package.

`RecordingFiles` wraps any `FileOps`, records every call (and every `mark`) in
order, and can be told to fail the n-th call of an operation, which is how the
tests walk a failure through each step of the durability order. `FileOpsContract`
is the behaviour every `FileOps` must have; a test module subclasses it once per
implementation and provides the ``files`` and ``root`` fixtures.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from waveform.store.files import FileOps

__all__ = ["Failure", "FileOpsContract", "RecordingFiles"]


@dataclass(slots=True)
class Failure:
    """Fail the ``nth`` (1-based) call of ``op`` with ``error`` (once, or every time)."""

    op: str
    nth: int = 1
    error: Callable[[], BaseException] = lambda: OSError(errno.EIO, "injected I/O error")
    sticky: bool = False


class RecordingFiles(FileOps):
    """A `FileOps` that records ``(op, path)`` for every call and injects failures."""

    def __init__(self, inner: FileOps, failures: list[Failure] | None = None) -> None:
        self.inner = inner
        # The guarantees are those of the files recorded (`FileOps` states them).
        self.durable_on_write = inner.durable_on_write
        self.atomic_rename = inner.atomic_rename
        self.log: list[tuple[str, str]] = []
        self.failures = list(failures or [])
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def fail(self, op: str, nth: int = 1, *, sticky: bool = False) -> None:
        self.failures.append(Failure(op, nth, sticky=sticky))

    def ops(self, *names: str) -> list[tuple[str, str]]:
        """The log restricted to the operations ``names`` (all if none given)."""
        with self._lock:
            return [e for e in self.log if not names or e[0] in names]

    def _record(self, op: str, path: str) -> None:
        with self._lock:
            n = self._counts[op] = self._counts.get(op, 0) + 1
            self.log.append((op, path))
            for f in self.failures:
                if f.op == op and (n == f.nth or (f.sticky and n >= f.nth)):
                    self.log.append(("failed:" + op, path))
                    raise f.error()

    def write(self, path: str, data: bytes | memoryview) -> None:
        self._record("write", path)
        self.inner.write(path, data)

    def fsync(self, path: str) -> None:
        self._record("fsync", path)
        self.inner.fsync(path)

    def rename(self, src: str, dst: str) -> None:
        self._record("rename", dst)
        self.inner.rename(src, dst)

    def fsync_dir(self, path: str) -> None:
        self._record("fsync_dir", path)
        self.inner.fsync_dir(path)

    def remove(self, path: str) -> None:
        self._record("remove", path)
        self.inner.remove(path)

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        return self.inner.read_range(path, offset, length)

    def size(self, path: str) -> int:
        return self.inner.size(path)

    def list(self, directory: str) -> list[str]:
        return self.inner.list(directory)

    def makedirs(self, path: str) -> None:
        self.inner.makedirs(path)

    def join(self, *parts: str) -> str:
        return self.inner.join(*parts)

    def dirname(self, path: str) -> str:
        return self.inner.dirname(path)

    def open_input(self, path: str) -> pa.NativeFile:
        return self.inner.open_input(path)

    def mark(self, event: str) -> None:
        self._record(event, "")
        self.inner.mark(event)


class FileOpsContract:
    """What every `FileOps` must do. Subclass with fixtures ``files`` and ``root``."""

    def test_write_then_read_range(self, files: FileOps, root: str) -> None:
        p = files.join(root, "a.bin")
        files.write(p, b"0123456789")
        assert files.size(p) == 10
        assert files.read_range(p, 2, 3) == b"234"
        assert files.read_range(p, 8, 10) == b"89"

    def test_write_replaces(self, files: FileOps, root: str) -> None:
        p = files.join(root, "a.bin")
        files.write(p, b"long contents")
        files.write(p, memoryview(b"short"))
        assert files.read_range(p, 0, 100) == b"short"

    def test_rename_publishes_and_replaces(self, files: FileOps, root: str) -> None:
        tmp, final = files.join(root, ".x.tmp"), files.join(root, "x")
        files.write(final, b"old")
        files.write(tmp, b"new")
        files.fsync(tmp)
        files.rename(tmp, final)
        files.fsync_dir(root)
        assert not files.exists(tmp)
        assert files.read_range(final, 0, 10) == b"new"

    def test_remove_is_idempotent(self, files: FileOps, root: str) -> None:
        p = files.join(root, "gone")
        files.write(p, b"x")
        files.remove(p)
        files.remove(p)
        assert not files.exists(p)
        assert p not in files.list(root)

    def test_size_of_missing_file_raises(self, files: FileOps, root: str) -> None:
        try:
            files.size(files.join(root, "missing"))
        except FileNotFoundError:
            return
        raise AssertionError("size() of a missing file must raise FileNotFoundError")

    def test_list_and_makedirs(self, files: FileOps, root: str) -> None:
        d = files.join(root, "sub", "dir")
        assert files.list(d) == []
        files.makedirs(d)
        files.makedirs(d)
        files.write(files.join(d, "b"), b"")
        files.write(files.join(d, "a"), b"")
        assert files.list(d) == [files.join(d, "a"), files.join(d, "b")]

    def test_open_input_reads_parquet(self, files: FileOps, root: str) -> None:
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"v": list(range(100))}), sink, row_group_size=10)
        p = files.join(root, "t.parquet")
        files.write(p, sink.getvalue())
        with files.open_input(p) as f:
            pf = pq.ParquetFile(f)
            assert pf.metadata.num_row_groups == 10
            assert pf.read_row_group(3).column("v").to_pylist() == list(range(30, 40))

    def test_mark_is_accepted(self, files: FileOps, root: str) -> None:
        files.mark("commit")


