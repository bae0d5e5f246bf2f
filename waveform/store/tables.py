"""Typed handles on the catalog's tables, for modules that query them.

The archive and re-analysis read the store's tables (`schema.TABLES`) and their
own (`schema.RESERVED`, created with `Store.ensure_tables`) with SQL. They name a
table through a `TableRef` from `Store.table`, never by the catalog's alias, so
where the tables live is the store's to say:

    summary = store.table("summary")
    store.sql(f"SELECT count(*) FROM {summary.sql} WHERE analysis_version = ?", [v])

A `TableRef` also carries its `Catalog`: the name DuckLake's table functions take
(``ducklake_list_files('<catalog>', '<table>')``) and the schema where DuckLake
attaches the catalog's metadata database (its commit log, ``ducklake_snapshot``...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from waveform.store import schema as _schema
from waveform.store.lake import ALIAS

__all__ = ["CATALOG", "Catalog", "TableRef", "table_ref"]


@dataclass(frozen=True, slots=True)
class Catalog:
    """A DuckLake catalog attached to the store's connections."""

    #: The name it is attached under (a table is ``<name>.<table>`` in SQL).
    name: str

    @property
    def metadata_schema(self) -> str:
        """Where DuckLake attaches the catalog's metadata database."""
        return f"__ducklake_metadata_{self.name}"

    def metadata(self, table: str) -> str:
        """The qualified name of DuckLake's own table ``table`` (``ducklake_snapshot``,
        ``ducklake_snapshot_changes``, ``ducklake_table``, ...)."""
        return f"{self.metadata_schema}.{table}"


#: The catalog every store attaches.
CATALOG = Catalog(ALIAS)


@dataclass(frozen=True, slots=True)
class TableRef:
    """One table of the catalog: its name, its columns, where it is."""

    name: str
    schema: pa.Schema
    catalog: Catalog = CATALOG

    @property
    def sql(self) -> str:
        """The qualified name to put in a ``FROM`` clause."""
        return f"{self.catalog.name}.{self.name}"


def table_ref(name: str, read_schema: Callable[[str], pa.Schema]) -> TableRef:
    """The handle on table ``name``: a store table (its schema is `schema.TABLES`'s) or
    a reserved one (its schema is the one `Store.ensure_tables` created, which
    ``read_schema`` reads from the catalog given the qualified name).

    ``ValueError`` for any other name.
    """
    if name in _schema.TABLES:
        return TableRef(name, _schema.TABLES[name])
    if name in _schema.RESERVED:
        return TableRef(name, read_schema(f"{CATALOG.name}.{name}"))
    raise ValueError(f"no table {name!r} in the catalog: the store's tables are "
                     f"{', '.join(_schema.TABLES)}; the reserved ones "
                     f"{', '.join(_schema.RESERVED)}")
