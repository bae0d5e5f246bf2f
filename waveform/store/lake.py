"""The DuckDB connection, its extensions and the catalog attachment.

Every extension is loaded the standard way (``LOAD <name>``, from DuckDB's
extension directory) when it is installed there; otherwise from its pip package
(`EXTENSIONS`), which ships the binary built for the pinned DuckDB at
``<module>/extensions/v<duckdb version>/<file>.duckdb_extension`` and which a
``LOAD '<path>'`` loads offline. Auto-install is switched off, so an offline
machine never waits on a download.

The catalog is any DuckLake metadata database: by default a DuckDB file in the
data directory; ``postgres:dbname=... host=... port=... user=...`` puts it in
PostgreSQL (the ``postgres`` extension), where several processes can commit. The
data path is a local directory or ``s3://bucket/prefix/`` (the ``httpfs``
extension, with a secret made from `S3Settings`: the AWS environment and files).
This module only names the data path to DuckDB and never touches the files.

DuckLake records the data path in the catalog when it creates it; a later ATTACH
must name the same one (a trailing ``/`` aside) or fail with "does not match
existing data path": `connect` does not override it, so a store cannot silently
point an existing catalog at other files.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from waveform.errors import StorageError
from waveform.store.s3 import S3Settings, is_s3_url

__all__ = [
    "ALIAS",
    "EXTENSIONS",
    "POSTGRES_PREFIX",
    "Extension",
    "Lake",
    "connect",
    "extension_path",
    "load_ducklake",
    "load_extension",
]

#: The name the catalog is attached under in every connection.
ALIAS = "lake"

#: A catalog in PostgreSQL: this prefix, then a libpq connection string.
POSTGRES_PREFIX = "postgres:"


@dataclass(frozen=True, slots=True)
class Extension:
    """A DuckDB extension and the pip package that ships it for the pinned DuckDB."""

    name: str
    distribution: str
    module: str
    #: The binary's file name without ``.duckdb_extension``. The ``postgres``
    #: extension must be loaded from ``postgres_scanner``: DuckDB derives the entry
    #: point from the file name, and a file named ``postgres`` has the wrong one.
    file: str


EXTENSIONS: dict[str, Extension] = {
    e.name: e for e in (
        Extension("ducklake", "duckdb-extension-ducklake", "duckdb_extension_ducklake",
                  "ducklake"),
        Extension("postgres", "duckdb-extension-postgres-scanner",
                  "duckdb_extension_postgres_scanner", "postgres_scanner"),
        Extension("httpfs", "duckdb-extension-httpfs", "duckdb_extension_httpfs", "httpfs"),
        Extension("aws", "duckdb-extension-aws", "duckdb_extension_aws", "aws"),
    )
}


def extension_path(name: str = "ducklake") -> Path | None:
    """Where the pip package of extension ``name`` keeps the binary, if installed."""
    ext = EXTENSIONS[name]
    spec = importlib.util.find_spec(ext.module)
    if spec is None or spec.origin is None:
        return None
    path = (
        Path(spec.origin).parent / "extensions" / f"v{duckdb.__version__}"
        / f"{ext.file}.duckdb_extension"
    )
    return path if path.is_file() else None


def load_extension(con: duckdb.DuckDBPyConnection, name: str) -> str:
    """Load extension ``name`` into ``con``; returns where it came from (``standard`` or
    a path)."""
    try:
        con.execute(f"LOAD {name}")
        return "standard"
    except duckdb.Error as standard_error:
        path = extension_path(name)
        if path is None:
            dist = EXTENSIONS[name].distribution
            raise StorageError(
                f"the DuckDB extension {name!r} is not installed for DuckDB "
                f"{duckdb.__version__} ({standard_error}); install it with "
                f"`pip install {dist}=={duckdb.__version__}`"
            ) from standard_error
    try:
        con.execute(f"LOAD {_quote(str(path))}")
    except duckdb.Error as e:
        raise StorageError(f"cannot load the {name} extension from {path}: {e}") from e
    return str(path)


def load_ducklake(con: duckdb.DuckDBPyConnection) -> str:
    """Load ``ducklake`` into ``con``; returns where it came from (``standard`` or a path)."""
    return load_extension(con, "ducklake")


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
    #: How the object store was reached (None: the data path is local).
    s3: S3Settings | None = None

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection for one thread (DuckDB connections are not shared across threads)."""
        return self.con.cursor()

    def close(self) -> None:
        self.con.close()


def connect(catalog: str, data_path: str, *, s3: S3Settings | None = None) -> Lake:
    """An in-memory DuckDB with the DuckLake ``catalog`` attached as `ALIAS`.

    ``catalog`` is a DuckLake metadata location (``/dir/catalog.ducklake``,
    ``postgres:dbname=archive host=...``); ``data_path`` ends in a separator and
    is a directory or ``s3://bucket/prefix/``. For an S3 data path, ``s3`` says how
    to reach the store (default: `S3Settings.from_environment`).
    """
    if is_s3_url(data_path) and s3 is None:
        s3 = S3Settings.from_environment()
    elif not is_s3_url(data_path):
        s3 = None
    try:
        con = duckdb.connect(config={"autoinstall_known_extensions": False})
    except duckdb.Error as e:  # pragma: no cover - in-memory connect does not fail
        raise StorageError(f"cannot start DuckDB: {e}") from e
    try:
        how = load_ducklake(con)
        if catalog.startswith(POSTGRES_PREFIX):
            load_extension(con, "postgres")
        if s3 is not None:
            load_extension(con, "httpfs")
            if s3.needs_aws_extension:
                load_extension(con, "aws")
            con.execute(s3.duckdb_secret())
        # Data files are immutable (a new name for every write), so caching
        # their footers is safe; it takes about 40% off a small search.
        con.execute("SET parquet_metadata_cache = true")
        _attach(con, catalog, data_path)
    except duckdb.Error as e:
        con.close()
        raise StorageError(
            f"cannot open the DuckLake catalog {catalog!r} with data path {data_path!r}: {e}"
        ) from e
    except BaseException:
        con.close()
        raise
    return Lake(con, catalog, data_path, how, s3)


#: How often an ATTACH that lost the race to create a fresh catalog is tried again.
_INIT_ATTEMPTS = 5


def _attach(con: duckdb.DuckDBPyConnection, catalog: str, data_path: str) -> None:
    """ATTACH the catalog. Replicas started together on an empty PostgreSQL database all
    create DuckLake's metadata tables; PostgreSQL lets one win and fails the others'
    CREATE TABLE once the winner has committed, so a loser attaches again and finds
    the catalog made."""
    sql = f"ATTACH {_quote('ducklake:' + catalog)} AS {ALIAS} (DATA_PATH {_quote(data_path)})"
    for attempt in range(1, _INIT_ATTEMPTS + 1):
        try:
            con.execute(sql)
            return
        except duckdb.Error as e:
            lost_race = catalog.startswith(POSTGRES_PREFIX) and (
                "Failed to initialize DuckLake" in str(e))
            if not lost_race or attempt == _INIT_ATTEMPTS:
                raise
            time.sleep(0.05 * attempt)
