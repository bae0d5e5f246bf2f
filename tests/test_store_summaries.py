"""Summary rows: the median beat in its float32 column, read back bit-exact, and
rows written before that column (median beat in the JSON document) read as before."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.conftest import Archive
from waveform.analysis import analyze
from waveform.dicom import decode, encode
from waveform.dicom.synthetic import synthetic_ecg
from waveform.errors import StorageError
from waveform.model import Summary
from waveform.service import convert
from waveform.service._proto.waveform.v1 import archive_pb2 as pb
from waveform.store import LocalFiles, Store
from waveform.store.durable import commit_tables
from waveform.store.lake import ALIAS, connect
from waveform.store.schema import SUMMARY
from waveform.store.summaries import median_beat, summary_document, summary_row, summary_table

#: float32 values at the edges: the smallest subnormal, negative zero, the largest
#: finite value, the largest subnormal, the smallest normal, a value whose shortest
#: decimal is not its widened double (0.1).
EXTREMES = np.array([1e-45, -0.0, 3.4028235e38, 1.1754942e-38, 1.17549435e-38, 0.1,
                     -65504.0, 16777217.0], dtype=np.float32)


def _old_document(summary: Summary) -> str:
    """The document as the store wrote it before the ``median_beat`` column: the
    median beat in the JSON, each value the shortest decimal of its float32 (kept
    here as it was, to make rows of the old layout)."""
    median = summary.median_beat
    doc = dataclasses.replace(summary, median_beat=median[:0]).to_dict()
    rows, n = median.shape
    text = pc.cast(pa.array(median.ravel()), pa.string())
    lists = pa.ListArray.from_arrays(
        pa.array(np.arange(0, rows * n + 1, n, dtype=np.int32)), text)
    beat = "[[" + "],[".join(pc.binary_join(lists, ",").to_pylist()) + "]]"
    mark = "\u0000median_beat\u0000"
    out = json.dumps({**doc, "median_beat": mark}, sort_keys=True)
    return out.replace(json.dumps(mark), beat, 1)


@pytest.fixture(scope="module")
def plain() -> Summary:
    """A summary as the analysis makes it, with no whole-µV median sample (a
    median of an odd count of beats can be one of the samples): every whole
    value moves by half a µV."""
    s = analyze(synthetic_ecg(seed=31, duration_s=10.0))
    med = s.median_beat
    med = np.where(med == np.round(med), med + np.float32(0.5), med).astype(np.float32)
    assert not (med == np.round(med)).any()
    return dataclasses.replace(s, median_beat=med)


@pytest.fixture(scope="module")
def summary(plain: Summary) -> Summary:
    """`plain` with float32 extremes in its median beat."""
    s = plain
    median = s.median_beat.copy()
    median[0, :len(EXTREMES)] = EXTREMES
    return dataclasses.replace(s, median_beat=median)


def _bits(a: Any) -> list[int]:
    return np.asarray(a, dtype=np.float32).view(np.uint32).ravel().tolist()


def test_the_median_beat_is_a_float32_column_not_json(summary: Summary) -> None:
    row = summary_row("1.2.3", "v", None, summary, {"patient_id": "P"})
    doc = json.loads(row["document"])
    assert "median_beat" not in doc
    assert doc["median_leads"] == list(summary.median_leads)
    assert row["median_beat"] == summary.median_beat.astype("<f4").tobytes()
    assert len(row["median_beat"]) == 4 * summary.median_beat.size
    assert row["patient_id"] == "P" and row["heart_rate_bpm"] == summary.heart_rate_bpm.value


def test_round_trip_is_bit_exact(summary: Summary) -> None:
    row = summary_row("1.2.3", "v", None, summary, {})
    doc = summary_document(row["document"], row["median_beat"])
    back = Summary.from_dict(doc)
    assert back.median_beat.dtype == np.float32
    assert back.median_beat.shape == summary.median_beat.shape
    assert _bits(back.median_beat) == _bits(summary.median_beat)
    assert back == summary


def test_the_document_reads_back_as_the_old_layout_wrote_it(summary: Summary,
                                                            plain: Summary) -> None:
    """Same keys in the same order, same numbers; the same JSON text unless a value
    is integral (the old layout wrote ``-65504`` and ``-0``, read back as ints,
    the sign of zero lost; the column gives floats, ``-0.0`` kept)."""
    row = summary_row("1.2.3", "v", None, summary, {})
    new = summary_document(row["document"], row["median_beat"])
    old = summary_document(_old_document(summary), None)
    assert list(new) == list(old)
    assert new == old
    assert all(type(v) is float for r in new["median_beat"] for v in r)
    assert old["median_beat"][0][1] == 0 and type(old["median_beat"][0][1]) is int
    assert str(new["median_beat"][0][1]) == "-0.0"
    row = summary_row("1.2.3", "v", None, plain, {})
    assert json.dumps(summary_document(row["document"], row["median_beat"])) == \
        json.dumps(summary_document(_old_document(plain), None))


def test_median_values_are_the_shortest_decimals_of_random_float32() -> None:
    rng = np.random.default_rng(8)
    bits = rng.integers(0, 2**32, size=20_000, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    values = np.concatenate([values[np.isfinite(values)], EXTREMES])[:19_200]
    got = median_beat(values.astype("<f4").tobytes(), 12)
    assert len(got) == 12 and {len(r) for r in got} == {1600}
    flat = [v for r in got for v in r]
    # numpy's shortest round-trip repr of each float32, read as a double.
    assert flat == [float(np.format_float_scientific(v, unique=True)) for v in values]
    assert _bits(flat) == _bits(values)


def test_non_finite_values_keep_their_bits() -> None:
    values = np.array([np.nan, np.inf, -np.inf, 1.5, -np.nan], dtype=np.float32)
    values[4] = np.frombuffer(np.uint32(0x7FC00123).tobytes(), dtype=np.float32)[0]
    got = median_beat(values.tobytes(), 1)
    assert _bits(got) == _bits(values)


@pytest.mark.parametrize(("values", "leads", "message"), [
    (7, 2, "7 values does not divide into 2 leads"),
    (3, 0, "3 values for no median_leads"),
])
def test_a_median_beat_that_does_not_fit_its_leads_is_refused(values: int, leads: int,
                                                              message: str) -> None:
    with pytest.raises(ValueError, match=message):
        median_beat(np.zeros(values, np.float32).tobytes(), leads)


def test_no_median_leads_and_no_values_is_an_empty_beat() -> None:
    assert median_beat(b"", 0) == []
    assert median_beat(b"", 3) == [[], [], []]


def test_a_failure_or_a_plain_dict_has_no_median_column() -> None:
    row = summary_row("1.2.3", "v", None, {"error": "ValueError: no beats"}, {})
    assert row["median_beat"] is None
    assert summary_document(row["document"], None) == {"error": "ValueError: no beats"}
    plain = {"median_leads": ["I"], "median_beat": [[1.5, 2.0]], "heart_rate_bpm": 60.0}
    row = summary_row("1.2.3", "v", None, plain, {})
    assert row["median_beat"] is None
    assert summary_document(row["document"], None) == plain


def test_a_summary_table_holds_each_rows_median_beat_or_null(summary: Summary) -> None:
    failed = {"error": "x"}
    rows = [summary_row(f"1.2.{i}", "v", None, s, {"patient_id": f"P{i}"})
            for i, s in enumerate([summary, failed, summary])]
    table = summary_table(rows)
    assert table.schema == SUMMARY
    blob = summary.median_beat.astype("<f4").tobytes()
    assert table.column("median_beat").to_pylist() == [blob, None, blob]
    assert table.column("patient_id").to_pylist() == ["P0", "P1", "P2"]
    docs = [summary_document(d, m) for d, m in zip(table.column("document").to_pylist(),
                                                    table.column("median_beat").to_pylist(),
                                                    strict=True)]
    assert docs[1] == failed
    assert Summary.from_dict(docs[2]) == summary


def _old_catalog(path: Path, summary: Summary) -> str:
    """A store whose catalog predates the ``median_beat`` column, holding one ECG
    and one summary row of the old layout (version "old"); the ECG's UID."""
    ecg = synthetic_ecg(seed=31, duration_s=10.0)
    with Store.open(path, analyze=None) as store:
        store.ingest([encode(ecg)], organisation="org-a")
        context = store.ecg_context(ecg.sop_instance_uid)
    row = summary_row(ecg.sop_instance_uid, "old", None, summary, context)
    row["document"] = _old_document(summary)
    old_schema = SUMMARY.remove(SUMMARY.get_field_index("median_beat"))
    lake = connect(str(path / "catalog.ducklake"), str(path / "lake") + "/")
    cur = lake.cursor()
    cur.execute(f"ALTER TABLE {ALIAS}.summary DROP COLUMN median_beat")
    commit_tables(cur, LocalFiles(), str(path / "lake") + "/",
                  {"summary": pa.Table.from_pylist([row], schema=old_schema)})
    cur.close()
    lake.close()
    return str(ecg.sop_instance_uid)


def test_an_older_catalog_gains_the_column_and_old_rows_read_as_before(
        tmp_path: Path, plain: Summary) -> None:
    summary = plain
    uid = _old_catalog(tmp_path, summary)
    with Store.open(tmp_path, analyze=None, analysis_version="new") as store:
        cols = [r[0] for r in store.sql(
            "SELECT column_name FROM duckdb_columns() WHERE database_name = ? "
            "AND table_name = 'summary'", [ALIAS])]
        assert cols[-1] == "median_beat"
        old = store.get_summary(uid, "old")
        assert old == json.loads(_old_document(summary))
        assert store.sql(f"SELECT median_beat FROM {ALIAS}.summary") == [(None,)]
        # A new row beside it, in the new layout, reads back the same.
        row = summary_row(uid, "new", None, summary, store.ecg_context(uid))
        store.commit_summaries(summary_table([row]))
        new = store.get_summary(uid)
        assert new is not None and old is not None
        assert new == old and list(new) == list(old)
        assert _bits(Summary.from_dict(new).median_beat) == _bits(summary.median_beat)
        # What GetSummary answers (the message, its document JSON included) is
        # the same for both layouts.
        assert convert.summary(uid, new) == convert.summary(uid, old)
        assert convert.summary(uid, new).document_json == \
            convert.summary(uid, old).document_json
        # Compaction merges files with and without the column.
        store.compact(min_files=2, grace_s=0.0)
        assert len(store.sql(f"SELECT DISTINCT filename FROM {ALIAS}.summary")) == 1
        assert store.get_summary(uid, "old") == old
        assert store.get_summary(uid, "new") == new


def test_a_damaged_median_beat_is_a_storage_error(tmp_path: Path, summary: Summary) -> None:
    ecg = synthetic_ecg(seed=32, duration_s=10.0)
    uid = str(ecg.sop_instance_uid)
    with Store.open(tmp_path, analyze=None, analysis_version="v") as store:
        store.ingest([encode(ecg)], organisation="org-a")
        row = summary_row(uid, "v", None, summary, store.ecg_context(uid))
        row["median_beat"] = row["median_beat"][:-4]
        store.commit_summaries(summary_table([row]))
        with pytest.raises(StorageError, match=f"summary of {uid} cannot be read: .* "
                                               "does not divide into 12 leads"):
            store.get_summary(uid)


def test_get_summary_over_grpc_gives_the_median_beat_bit_exact(archive: Archive) -> None:
    """A client's GetSummary: the document JSON carries the median beat as it always
    did, and reads back as the analysis's float32 values."""
    ecg = synthetic_ecg(seed=33, duration_s=10.0)
    r = archive.stub.Ingest(pb.IngestRequest(dicom=encode(ecg), wait_for_summary=True),
                            metadata=archive.auth("cart_a"))
    got = archive.stub.GetSummary(pb.GetSummaryRequest(sop_instance_uid=r.sop_instance_uid),
                                  metadata=archive.auth("dr_a"))
    doc = json.loads(got.document_json)
    want = analyze(decode(encode(ecg)))
    back = Summary.from_dict(doc)
    assert back.median_beat.shape == want.median_beat.shape == (12, 600)
    assert _bits(back.median_beat) == _bits(want.median_beat)
    assert doc["median_beat"] == json.loads(_old_document(want))["median_beat"]
    stored = archive.store.sql(f"SELECT median_beat FROM {ALIAS}.summary "
                               "WHERE sop_instance_uid = ?", [r.sop_instance_uid])
    assert stored == [(want.median_beat.astype("<f4").tobytes(),)]
