"""The one seam between the store and wherever data files live.

Every byte of a data file goes through a `FileOps`: the durability order of the
store (write to a temporary name, fsync, rename, fsync the directory, then commit
the catalog, then acknowledge) is a sequence of calls on this interface, so a test
can record that sequence, assert its order and inject a failure at any step, the
way SQLite tests its VFS. Nothing else in the store touches a data file directly,
so an object store can later stand behind the same interface (there, ``write`` is
a PUT, ``fsync``/``fsync_dir`` are no-ops and ``rename`` a copy or a no-op).

`mark` is not a file operation: the writer calls it at the points of the order
that are not file operations (``commit``, ``committed``, ``ack``), so a recording
double sees the whole order in one log and can fail at those points too.

Paths are strings (local paths here; URLs for other implementations).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

import pyarrow as pa

__all__ = ["FileOps", "LocalFiles"]


class FileOps(ABC):
    """Write, make durable, publish, read and remove data files."""

    @abstractmethod
    def write(self, path: str, data: bytes | memoryview) -> None:
        """Create ``path`` (replacing it) holding exactly ``data``; not yet durable."""

    @abstractmethod
    def fsync(self, path: str) -> None:
        """Make the contents of ``path`` durable."""

    @abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Atomically give ``src`` the name ``dst`` (replacing ``dst``)."""

    @abstractmethod
    def fsync_dir(self, path: str) -> None:
        """Make the names in directory ``path`` durable (creations, renames, removals)."""

    @abstractmethod
    def remove(self, path: str) -> None:
        """Delete ``path``; a missing file is not an error."""

    @abstractmethod
    def read_range(self, path: str, offset: int, length: int) -> bytes:
        """``length`` bytes of ``path`` from ``offset`` (fewer only at the end)."""

    @abstractmethod
    def size(self, path: str) -> int:
        """Size of ``path`` in bytes; `FileNotFoundError` if absent."""

    @abstractmethod
    def list(self, directory: str) -> list[str]:
        """Full paths of the files directly in ``directory`` (empty if absent)."""

    @abstractmethod
    def makedirs(self, path: str) -> None:
        """Create directory ``path`` and its parents if needed."""

    def exists(self, path: str) -> bool:
        try:
            self.size(path)
        except FileNotFoundError:
            return False
        return True

    def join(self, *parts: str) -> str:
        """Join path components the way this implementation names files."""
        return "/".join(p.rstrip("/") for p in parts[:-1]) + "/" + parts[-1]

    def dirname(self, path: str) -> str:
        return path.rsplit("/", 1)[0]

    def open_input(self, path: str) -> pa.NativeFile:
        """A random-access file for pyarrow readers (Parquet footers, row groups)."""
        return pa.PythonFile(_RangeReader(self, path), mode="r")

    def mark(self, event: str) -> None:
        """A point of the durability order that is not a file operation."""
        return None


class _RangeReader:
    """A read-only, seekable file object over `FileOps.read_range`."""

    def __init__(self, files: FileOps, path: str) -> None:
        self._files = files
        self._path = path
        self._size = files.size(path)
        self._pos = 0
        self.closed = False

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self._size - self._pos
        data = self._files.read_range(self._path, self._pos, n)
        self._pos += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def size(self) -> int:
        return self._size

    def close(self) -> None:
        self.closed = True


class LocalFiles(FileOps):
    """POSIX files. ``fsync`` opens the file again: since Linux 4.13 (errseq_t) a
    write-back error that no descriptor has seen is reported to a later opener, so
    this cannot miss an error that the writing descriptor would have seen."""

    def write(self, path: str, data: bytes | memoryview) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o644)
        try:
            view = memoryview(data).cast("B")
            while view:
                n = os.write(fd, view)
                view = view[n:]
        finally:
            os.close(fd)

    def fsync(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def remove(self, path: str) -> None:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def size(self, path: str) -> int:
        return os.stat(path).st_size

    def list(self, directory: str) -> list[str]:
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        return sorted(os.path.join(directory, n) for n in names)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def join(self, *parts: str) -> str:
        return os.path.join(*parts)

    def dirname(self, path: str) -> str:
        return os.path.dirname(path)

    def open_input(self, path: str) -> pa.NativeFile:
        return pa.OSFile(path, mode="r")
