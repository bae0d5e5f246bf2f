"""The DuckDB connection, the ``ducklake`` extension and the catalog attachment.

The extension is loaded the standard way (``LOAD ducklake``, from DuckDB's
extension directory) when it is installed there; otherwise from the pip package
``duckdb-extension-ducklake``, which ships the binary built for the pinned DuckDB
at ``duckdb_extension_ducklake/extensions/v<duckdb version>/ducklake.duckdb_extension``
and which a ``LOAD '<path>'`` loads offline. Auto-install is switched off, so an
offline machine never waits on a download.

The catalog is any DuckLake metadata database: by default a DuckDB file in the
data directory; ``postgres:dbname=...`` (a later deployment) works the same way
once the ``postgres`` extension is present. The data path is a local directory or
a URL; this module only names it to DuckDB and never touches the files.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import duckdb

from waveform.errors import StorageError

__all__ = ["ALIAS", "Lake", "connect", "extension_path", "load_ducklake"]

#: The name the catalog is attached under in every connection.
ALIAS = "lake"


def extension_path() -> Path | None:
    """Where the pip package ``duckdb-extension-ducklake`` keeps the binary, if installed."""
    spec = importlib.util.find_spec("duckdb_extension_ducklake")
    if spec is None or spec.origin is None:
        return None
    path = (
        Path(spec.origin).parent / "extensions" / f"v{duckdb.__version__}"
        / "ducklake.duckdb_extension"
    )
    return path if path.is_file() else None


def load_ducklake(con: duckdb.DuckDBPyConnection) -> str:
    """Load ``ducklake`` into ``con``; returns where it came from (``standard`` or a path)."""
    try:
        con.execute("LOAD ducklake")
        return "standard"
    except duckdb.Error as standard_error:
        path = extension_path()
        if path is None:
            raise StorageError(
                f"the DuckDB extension 'ducklake' is not installed for DuckDB "
                f"{duckdb.__version__} ({standard_error}); install it with "
                f"`pip install duckdb-extension-ducklake=={duckdb.__version__}`"
            ) from standard_error
    try:
        con.execute(f"LOAD {_quote(str(path))}")
    except duckdb.Error as e:
        raise StorageError(f"cannot load the ducklake extension from {path}: {e}") from e
    return str(path)


def _quote(s: str) -> str:
    """A SQL string literal. Only for configuration (paths), never request values."""
    return "'" + s.replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class Lake:
    """An open catalog: the connection, and what it was opened with."""

    con: duckdb.DuckDBPyConnection
    catalog: str
    data_path: str
    extension: str

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection for one thread (DuckDB connections are not shared across threads)."""
        return self.con.cursor()

    def close(self) -> None:
        self.con.close()


def connect(catalog: str, data_path: str) -> Lake:
    """An in-memory DuckDB with the DuckLake ``catalog`` attached as `ALIAS`.

    ``catalog`` is a DuckLake metadata location (``/dir/catalog.ducklake``,
    ``postgres:dbname=archive host=...``); ``data_path`` ends in a separator.
    """
    try:
        con = duckdb.connect(config={"autoinstall_known_extensions": False})
    except duckdb.Error as e:  # pragma: no cover - in-memory connect does not fail
        raise StorageError(f"cannot start DuckDB: {e}") from e
    try:
        how = load_ducklake(con)
        # Data files are immutable (a new name for every write), so caching
        # their footers is safe; it takes about 40% off a small search.
        con.execute("SET parquet_metadata_cache = true")
        con.execute(
            f"ATTACH {_quote('ducklake:' + catalog)} AS {ALIAS} "
            f"(DATA_PATH {_quote(data_path)})"
        )
    except duckdb.Error as e:
        con.close()
        raise StorageError(
            f"cannot open the DuckLake catalog {catalog!r} with data path {data_path!r}: {e}"
        ) from e
    except BaseException:
        con.close()
        raise
    return Lake(con, catalog, data_path, how)
