"""`Store.table`: the handles other modules write SQL against."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from waveform.archive.tables import TABLES as ARCHIVE_TABLES
from waveform.dicom import encode
from waveform.dicom.synthetic import synthetic_ecg
from waveform.errors import StorageError
from waveform.store import Store
from waveform.store.schema import TABLES
from waveform.store.tables import CATALOG


def test_a_store_table_has_its_schema_and_a_name_that_queries_it(tmp_path: Path) -> None:
    ecg = synthetic_ecg(seed=3, duration_s=2.0)
    with Store.open(tmp_path, analyze=None) as store:
        store.ingest([encode(ecg)], organisation="org-a")
        for name, schema in TABLES.items():
            ref = store.table(name)
            assert (ref.name, ref.sql) == (name, f"lake.{name}")
            assert ref.schema.equals(schema)
        ecg_ref = store.table("ecg")
        got = store.sql(f"SELECT sop_instance_uid FROM {ecg_ref.sql}")
        assert got == [(ecg.sop_instance_uid,)]
        # DuckLake's table functions take the catalog's name; its metadata tables
        # live in the schema the catalog names.
        assert ecg_ref.catalog == CATALOG
        files = store.sql("SELECT count(*) FROM ducklake_list_files("
                          f"'{ecg_ref.catalog.name}', '{ecg_ref.name}')")
        assert files == [(1,)]
        names = {r[0] for r in store.sql(
            f"SELECT table_name FROM {CATALOG.metadata('ducklake_table')} "
            "WHERE end_snapshot IS NULL")}
        assert set(TABLES) <= names


def test_a_reserved_table_has_the_schema_ensure_tables_created(tmp_path: Path) -> None:
    with Store.open(tmp_path, analyze=None) as store:
        with pytest.raises(StorageError, match="denial"):
            store.table("denial")
        store.ensure_tables(ARCHIVE_TABLES)
        for name, schema in ARCHIVE_TABLES.items():
            ref = store.table(name)
            assert ref.sql == f"lake.{name}"
            assert ref.schema.names == schema.names
        assert store.table("denial").schema.field("change").type == pa.string()


def test_an_unknown_table_names_the_known_ones(tmp_path: Path) -> None:
    with Store.open(tmp_path, analyze=None) as store, pytest.raises(
            ValueError, match=r"no table 'summaries'.*summary.*reserved.*document"):
        store.table("summaries")
