"""The archive store: lossless Parquet under a DuckLake catalog, durable group commit.

`Store` is the entry point (see docs/storage.md). The pieces, bottom up:
`files` (the file-operations seam), `lake` (DuckDB + ducklake), `schema`
(the tables), `codec` (sample encodings), `records` (objects as rows),
`durable` (the durability order), `writer` (group commit), `queries` (read
path and search), `summaries` (summary rows: the document and the float32
median beat), `measure` (background summaries), `compact` (merging files).
"""

from __future__ import annotations

from waveform.store.compact import CompactionReport, compact_dir
from waveform.store.files import FileOps, LocalFiles
from waveform.store.queries import Page, SearchQuery, Trace, Visibility
from waveform.store.store import IngestResult, Store
from waveform.store.tables import Catalog, TableRef

__all__ = [
    "Catalog",
    "CompactionReport",
    "FileOps",
    "IngestResult",
    "LocalFiles",
    "Page",
    "SearchQuery",
    "Store",
    "TableRef",
    "Trace",
    "Visibility",
    "compact_dir",
]
