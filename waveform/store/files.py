"""The one seam between the store and wherever data files live.

Every byte of a data file goes through a `FileOps`: the durability order of the
store (write to a temporary name, fsync, rename, fsync the directory, then commit
the catalog, then acknowledge) is a sequence of calls on this interface, so a test
can record that sequence, assert its order and inject a failure at any step, the
way SQLite tests its VFS. Nothing else in the store touches a data file directly,
so an object store stands behind the same interface.

Implementations differ in what a call guarantees, and say so in two class
attributes that the durability order reads (`waveform.store.durable.publish`):

==================  ================  =============
implementation      durable_on_write  atomic_rename
==================  ================  =============
`LocalFiles`        no: ``fsync``     yes: rename(2)
`S3Files`           yes: a PUT        no: copy + delete
==================  ================  =============

- ``durable_on_write``: a ``write`` that returned is durable by itself; ``fsync``
  and ``fsync_dir`` are no-ops (S3 acknowledges a PUT once the object is stored).
- ``atomic_rename``: ``rename`` replaces the destination atomically, so a file can
  be written under a temporary name and published whole. Without it a file is
  written directly under its final name, which is safe only where a write is
  itself atomic (an S3 PUT: the object is there whole or not at all).

`mark` is not a file operation: the writer calls it at the points of the order
that are not file operations (``commit``, ``committed``, ``ack``), so a recording
double sees the whole order in one log and can fail at those points too.

Paths are strings: local paths for `LocalFiles`, ``s3://bucket/key`` URLs (as
DuckLake names its data files) for `S3Files`. `files_for` picks by the data path.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import TYPE_CHECKING

import pyarrow as pa

from waveform.errors import StorageError
from waveform.store.s3 import S3Settings, is_s3_url, split_s3_url

if TYPE_CHECKING:
    from pyarrow import fs as pafs

__all__ = ["FileOps", "LocalFiles", "S3Files", "files_for"]


class FileOps(ABC):
    """Write, make durable, publish, read and remove data files."""

    #: A `write` that returned is durable: `fsync` and `fsync_dir` are no-ops.
    durable_on_write: bool = False
    #: `rename` replaces its destination atomically (publish by temporary name + rename).
    atomic_rename: bool = True

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


class S3Files(FileOps):
    """Objects in S3-compatible storage, through pyarrow's `S3FileSystem`.

    ``write`` is one upload: the object appears whole when it returns, or not at all
    (a multipart upload becomes visible only at its completion), and S3 acknowledges
    it only once stored, so ``fsync``/``fsync_dir`` have nothing to do. There are no
    directories: ``makedirs`` is a no-op and ``list`` lists the keys under a prefix.
    ``rename`` is a copy then a delete, not atomic (``atomic_rename`` is False), so
    the store publishes a file by writing it under its final name.

    Objects opened for reading stay open (the last ``keep_open`` of them): opening
    one asks its size (a HEAD request), and the store names every data file once and
    never writes it again, so an open object answers every later read with one ranged
    GET and no HEAD (SeaweedFS on loopback: a HEAD costs about 0.85 ms, a GetTrace
    made one, a GetDicom two). This object's own ``write``, ``rename`` and ``remove``
    close the name's open object; a read that fails closes it too, so an object
    another server removed (compaction) is looked up afresh on the next read.
    """

    durable_on_write: bool = True
    atomic_rename: bool = False

    def __init__(
        self, settings: S3Settings | None = None, *, filesystem: pafs.FileSystem | None = None,
        keep_open: int = 1024,
    ) -> None:
        if filesystem is None:
            from pyarrow import fs as pafs

            settings = S3Settings.from_environment() if settings is None else settings
            try:
                # Delayed open: a file smaller than a part goes up in one PutObject
                # at close instead of a multipart upload's three requests (200 KB to
                # SeaweedFS on loopback: 4.1 ms against 8.0 ms, medians); an error
                # still surfaces from ``write``, at the close.
                filesystem = pafs.S3FileSystem(
                    **settings.pyarrow_options(), allow_delayed_open=True
                )
            except (OSError, ValueError) as e:
                raise StorageError(f"cannot set up the S3 client ({settings!r}): {e}") from e
        self.settings = settings
        self._fs = filesystem
        self._open: OrderedDict[str, pa.NativeFile] = OrderedDict()
        self._keep_open = keep_open
        self._open_lock = threading.Lock()

    def _input(self, path: str) -> pa.NativeFile:
        """``path`` open for reading, from the open objects or opened now (a HEAD).
        pyarrow's S3 files read at an offset without a position: one object serves
        every thread at once."""
        with self._open_lock:
            f = self._open.get(path)
            if f is not None:
                self._open.move_to_end(path)
                return f
        f = self._fs.open_input_file(self._key(path))
        with self._open_lock:
            self._open[path] = f
            if len(self._open) > self._keep_open:
                self._open.popitem(last=False)
        return f

    def _close(self, *paths: str) -> None:
        with self._open_lock:
            for path in paths:
                self._open.pop(path, None)

    @staticmethod
    def _key(path: str) -> str:
        """``s3://bucket/key`` -> ``bucket/key``, the path pyarrow takes."""
        bucket, key = split_s3_url(path)
        return f"{bucket}/{key}".rstrip("/")

    def write(self, path: str, data: bytes | memoryview) -> None:
        self._close(path)
        with self._fs.open_output_stream(self._key(path), metadata={}) as out:
            out.write(data)

    def fsync(self, path: str) -> None:
        return None

    def rename(self, src: str, dst: str) -> None:
        self._close(src, dst)
        self._fs.move(self._key(src), self._key(dst))

    def fsync_dir(self, path: str) -> None:
        return None

    def remove(self, path: str) -> None:
        self._close(path)
        try:
            self._fs.delete_file(self._key(path))
        except FileNotFoundError:
            pass

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        f = self._input(path)
        try:
            return f.read_at(max(0, min(length, f.size() - offset)), offset)
        except OSError:
            self._close(path)
            raise

    def size(self, path: str) -> int:
        from pyarrow import fs as pafs

        with self._open_lock:
            f = self._open.get(path)
        if f is not None:
            return int(f.size())
        info = self._fs.get_file_info(self._key(path))
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(2, "no such object", path)
        return int(info.size)

    def list(self, directory: str) -> list[str]:
        from pyarrow import fs as pafs

        selector = pafs.FileSelector(self._key(directory), allow_not_found=True)
        return sorted(
            "s3://" + info.path for info in self._fs.get_file_info(selector)
            if info.type == pafs.FileType.File
        )

    def makedirs(self, path: str) -> None:
        return None

    def open_input(self, path: str) -> pa.NativeFile:
        """A file over `read_range`: the open object, so no HEAD once ``path`` was read
        (closing it leaves the object open)."""
        self._input(path)
        return super().open_input(path)


def files_for(data_path: str, s3: S3Settings | None = None) -> FileOps:
    """The `FileOps` for ``data_path``: `S3Files` for ``s3://...``, else `LocalFiles`."""
    if is_s3_url(data_path):
        return S3Files(s3)
    return LocalFiles()
