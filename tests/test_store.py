"""Store behaviour: byte-identical round trip, idempotency, traces, summaries, search."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest

from tests.conftest import SHARED_DICOM, Backend
from waveform.dicom import decode, encode
from waveform.dicom.synthetic import synthetic_ecg
from waveform.errors import Conflict, InvalidArgument, InvalidDicom, NotFound, StorageError
from waveform.store import SearchQuery, Store


def fake_analyze(ecg: Any) -> dict[str, Any]:
    """A stand-in for waveform.analysis: deterministic values derived from the ECG."""
    g = ecg.rhythm
    return {"heart_rate_bpm": float(g.n_samples % 97), "qtc_ms": 400.0 + len(ecg.patient_id),
            "n_samples": g.n_samples}


def _obj(seed: int, **kw: Any) -> bytes:
    return encode(synthetic_ecg(seed=seed, duration_s=2.0, **kw))


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    """A store on each backend in turn (embedded; PostgreSQL catalog with S3 data)."""
    s = Store.open(backend.data_dir, catalog=backend.catalog, data_path=backend.data_path,
                   analyze=fake_analyze, analysis_version="test-1", max_delay_ms=2)
    yield s
    s.close()


@pytest.mark.parametrize("path", SHARED_DICOM, ids=[p.name for p in SHARED_DICOM])
def test_get_dicom_is_byte_identical_for_shared_files(store: Store, path: Path) -> None:
    data = path.read_bytes()
    [r] = store.ingest([data], organisation="org")
    back = store.get_dicom(r.sop_instance_uid)
    assert hashlib.sha256(back).hexdigest() == hashlib.sha256(data).hexdigest() == r.sha256
    assert back == data


def test_round_trip_survives_reopen(tmp_path: Path) -> None:
    objs = [_obj(i) for i in range(4)]
    with Store.open(tmp_path, analyze=None) as s:
        res = s.ingest(objs, organisation="org")
    with Store.open(tmp_path, analyze=None) as s:
        assert sorted(s.uids()) == sorted(r.sop_instance_uid for r in res)
        for r, o in zip(res, objs, strict=True):
            assert s.get_dicom(r.sop_instance_uid) == o


def test_the_locator_index_rebuilt_from_the_lake_equals_the_catalog(tmp_path: Path) -> None:
    # Nothing is loaded at open: the locator index is a table beside the catalog. An
    # archive whose index is lost (or that predates it) is taken in from the data
    # files at the next open; each entry must then equal the catalog's row-by-row
    # lookup, and a duplicate sent after the reopen must get the first answer, to
    # the microsecond.
    import pyarrow as pa

    from waveform.store.schema import ECG

    objs = [_obj(k) for k in range(6)] + [_obj(7, groups=2)]
    # A metadata-only row (no object, no ingest time), as a migration may commit.
    bare = {f.name: pa.nulls(1, f.type) for f in ECG}
    bare["sop_instance_uid"] = pa.array(["2.25.77"])
    with Store.open(tmp_path, analyze=None, max_batch=3) as s:
        first = {r.sop_instance_uid: r for r in s.ingest(objs, "org")}
        s.commit_rows({"ecg": pa.table(bare, schema=ECG)})
        indexed = {u: s.engine.locators.get(u) for u in first}
    for name in ("locators.sqlite", "locators.sqlite-wal", "locators.sqlite-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    with Store.open(tmp_path, analyze=None) as s:
        bare_entry = s.engine.locators.get("2.25.77")
        assert bare_entry is not None and bare_entry.ingested_us is None
        assert set(s.uids()) == {*first, "2.25.77"}
        entries = s.engine.locators.get_many(first)
        assert any(len(e.groups) == 2 for e in entries.values())
        for uid, e in entries.items():
            assert e == s.engine.lookup(uid) == indexed[uid]
        again = {r.sop_instance_uid: r for r in s.ingest(objs, "org")}
    for uid, r in again.items():
        assert r.already_stored
        assert (r.sha256, r.size, r.ingested_at) == (first[uid].sha256, first[uid].size,
                                                     first[uid].ingested_at)
        assert r.ingested_at.utcoffset() == dt.timedelta(0)


def test_a_commit_the_index_missed_is_taken_in_at_the_next_open(tmp_path: Path) -> None:
    # The lake commit landed and the index update did not (a crash between the two):
    # the UID stays claimed; a reader asks the lake and the next open takes the
    # files in, so the ECG is found, and sent again it is "already stored".
    obj = _obj(40)
    with Store.open(tmp_path, analyze=None) as s:
        with mock.patch.object(s.engine.locators, "stored", side_effect=StorageError("down")):
            r = s.ingest([obj], "org")[0]
        assert s.engine.locators.get(r.sop_instance_uid) is None
        assert s.engine.locators.claimed(r.sop_instance_uid) is not None
        assert s.get_dicom(r.sop_instance_uid) == obj  # the lake answers, and repairs
        assert s.engine.locators.get(r.sop_instance_uid) is not None
    with Store.open(tmp_path, analyze=None) as s:
        again = s.ingest([obj], "org")[0]
        assert again.already_stored and again.sha256 == r.sha256
        assert s.sql("SELECT count(*) FROM lake.ecg")[0][0] == 1


def test_contexts_of_many_ecgs_equal_one_by_one(tmp_path: Path) -> None:
    objs = [_obj(k) for k in range(10, 17)]
    with Store.open(tmp_path, analyze=None, max_batch=4) as s:
        uids = [r.sop_instance_uid for r in s.ingest(objs, "org")]
        uids += [r.sop_instance_uid for r in s.ingest([_obj(30)], "org-b")]
        got = s.ecg_contexts([*uids, "2.25.404"], ["patient_id", "accession_number"])
        assert list(got) == [*uids, "2.25.404"]
        for uid in uids:
            assert got[uid] == s.ecg_context(uid, ["patient_id", "accession_number"])
        assert isinstance(got["2.25.404"], NotFound)
        # A locator that no longer names the row (compaction elsewhere) is looked up again.
        e = s.engine.locators.get(uids[0])
        assert e is not None
        moved = dataclasses.replace(e, ecg=(e.ecg[0], e.ecg[1] + 1))
        s.engine.locators.stored({uids[0]: moved}, [])
        assert s.ecg_contexts(uids[:1])[uids[0]] == s.ecg_context(uids[0])


def test_rows_read_by_row_group_equal_rows_read_one_by_one(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from waveform.store.files import LocalFiles
    from waveform.store.queries import RowReader

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"k": np.arange(1000), "v": np.arange(1000) * 0.5}), path,
                   row_group_size=128)
    reader = RowReader(LocalFiles())
    rows = [999, 3, 130, 3, 512, 0, 127, 128]  # across row groups, unordered, repeated
    assert reader.read_rows(str(path), rows, ["k", "v"]) == [
        reader.read(str(path), r, ["k", "v"])[0] for r in rows]
    assert reader.read_rows(str(path), [], ["k"]) == []
    for bad in (1000, -1):
        with pytest.raises(IndexError):
            reader.read_rows(str(path), [5, bad], ["k"])


def test_same_bytes_again_answers_already_stored_with_first_result(store: Store) -> None:
    data = _obj(1)
    [first] = store.ingest([data], organisation="org")
    [again] = store.ingest([data], organisation="other-org")
    assert not first.already_stored and again.already_stored
    assert (again.sop_instance_uid, again.sha256, again.ingested_at) == (
        first.sop_instance_uid, first.sha256, first.ingested_at)
    assert store.sql("SELECT count(*) FROM lake.ecg")[0][0] == 1


def test_same_uid_other_bytes_is_a_conflict_and_nothing_changes(store: Store) -> None:
    ecg = synthetic_ecg(seed=2, duration_s=2.0)
    data = encode(ecg)
    [first] = store.ingest([data], organisation="org")
    other = encode(ecg.replace(patient_name="Someone^Else"))
    with pytest.raises(Conflict, match=first.sop_instance_uid):
        store.ingest([other], organisation="org")
    fut = store.submit(other, "org")  # per-object errors come through the future
    with pytest.raises(Conflict, match="already stored with other content"):
        fut.result(5)
    assert store.get_dicom(first.sop_instance_uid) == data
    assert store.sql("SELECT count(*) FROM lake.ecg")[0][0] == 1


def test_a_batch_with_a_conflict_stores_nothing(store: Store) -> None:
    ecg = synthetic_ecg(seed=3, duration_s=2.0)
    store.ingest([encode(ecg)], organisation="org")
    fresh = _obj(4)
    with pytest.raises(Conflict):
        store.ingest([fresh, encode(ecg.replace(patient_id="X"))], organisation="org")
    assert not store.contains(decode(fresh).sop_instance_uid)


def test_invalid_object_fails_only_its_own_request(store: Store) -> None:
    fut = store.submit(b"not dicom at all", "org")
    with pytest.raises(InvalidDicom):
        fut.result(5)
    r = store.submit(_obj(5), "org").result(5)
    assert store.contains(r.sop_instance_uid)


def test_concurrent_submits_share_commits_and_duplicates_store_once(tmp_path: Path) -> None:
    objs = [_obj(i) for i in range(24)]
    with Store.open(tmp_path, analyze=None, max_delay_ms=20, max_batch=64) as s:
        results: list[Any] = []
        lock = threading.Lock()

        def worker(k: int) -> None:
            for o in objs[k::4] + objs[:3]:  # every worker also sends the first three
                r = s.submit(o, "org").result(30)
                with lock:
                    results.append(r)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert s.sql("SELECT count(*), count(DISTINCT sop_instance_uid) FROM lake.ecg")[0] == (
            24, 24)
        files = s.sql("SELECT count(DISTINCT filename) FROM lake.ecg")[0][0]
        assert files < 24  # requests were grouped into fewer commits
        first = {r.sop_instance_uid: r for r in results if not r.already_stored}
        assert len(first) == 24
        for r in results:
            assert r.ingested_at == first[r.sop_instance_uid].ingested_at


def test_stored_rows_rebuild_the_decoded_groups(store: Store) -> None:
    """`GroupRows` (the re-analysis workers' bulk path) gives the groups that
    `group_from_row` and the decoder give, for tables in any chunking and order,
    and a damaged row fails alone."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from waveform.store.records import GROUP_COLUMNS, GroupRows, group_from_row

    objs = [encode(synthetic_ecg(seed=s, duration_s=2.0, groups=2)) for s in range(3)]
    store.ingest(objs, organisation="org")
    decoded = {(e.sop_instance_uid, i): g
               for e in map(decode, objs) for i, g in enumerate(e.groups)}
    files = [r[0] for r in
             store.sql("SELECT data_file FROM ducklake_list_files('lake', 'waveform')")]
    table = pa.concat_tables(pq.read_table(f) for f in files)
    assert table.num_rows == len(decoded)
    reordered = pa.concat_tables([table.slice(3), table.slice(0, 3)]).take([5, 0, 3, 1, 4, 2])
    for t in (table, reordered):
        rows = GroupRows(t.select(list(GROUP_COLUMNS)))
        assert len(rows) == t.num_rows
        for i, row in enumerate(t.to_pylist()):
            want = decoded[(row["sop_instance_uid"], row["group_index"])]
            got = rows.group(i)
            assert rows.uid(i) == row["sop_instance_uid"]
            assert got == want == group_from_row(row)
            assert got.channels is group_from_row(row).channels  # one per definition
            assert np.array_equal(got.raw, want.raw) and got.raw.dtype == want.raw.dtype
            assert not got.raw.flags.writeable
    cells = table.column("channels").to_pylist()
    cells[1] = None
    damaged = GroupRows(table.set_column(table.schema.get_field_index("channels"), "channels",
                                         pa.array(cells, table.schema.field("channels").type)))
    with pytest.raises(ValueError, match=r"waveform row 1 .*NULL channel definition"):
        damaged.group(1)
    assert damaged.group(0) == group_from_row(table.slice(0, 1).to_pylist()[0])


def test_trace_matches_decoded_samples(store: Store) -> None:
    data = encode(synthetic_ecg(seed=6, duration_s=4.0, groups=2))
    ecg = decode(data)
    [r] = store.ingest([data], organisation="org")
    raw = store.get_trace(r.sop_instance_uid, units="raw")
    g = ecg.groups[0]
    assert np.array_equal(raw.data, g.raw) and raw.leads == g.leads
    assert raw.sensitivity == tuple(c.sensitivity for c in g.channels)
    uv = store.get_trace(r.sop_instance_uid, leads=["V2", "I"], start_s=1.0, duration_s=0.5)
    fs = g.sampling_frequency
    i0, i1 = int(fs), int(1.5 * fs)
    from waveform.dsp.scale import to_microvolts
    ref = to_microvolts(g.raw, [c.sensitivity for c in g.channels],
                        [c.correction for c in g.channels], [c.baseline for c in g.channels],
                        [c.units for c in g.channels])
    want = ref[[g.leads.index("V2"), g.leads.index("I")], i0:i1]
    assert uv.leads == ("V2", "I") and uv.start_s == pytest.approx(1.0)
    np.testing.assert_allclose(uv.data, want, rtol=1e-6)
    half = store.get_trace(r.sop_instance_uid, fs=fs / 2)
    assert half.sampling_frequency == fs / 2 and half.data.shape == (12, g.n_samples // 2)
    median = store.get_trace(r.sop_instance_uid, group=1, units="raw")
    assert np.array_equal(median.data, ecg.groups[1].raw)


def test_trace_arguments_are_checked(store: Store) -> None:
    [r] = store.ingest([_obj(7)], organisation="org")
    uid = r.sop_instance_uid
    with pytest.raises(InvalidArgument, match="no lead 'V9'"):
        store.get_trace(uid, leads=["V9"])
    with pytest.raises(InvalidArgument, match="no group 3"):
        store.get_trace(uid, group=3)
    with pytest.raises(InvalidArgument, match="past the end"):
        store.get_trace(uid, start_s=100)
    with pytest.raises(NotFound, match="no ECG with SOP Instance UID"):
        store.get_trace("1.2.3.4")


def test_background_summary_and_wait(store: Store) -> None:
    data = _obj(8)
    [r] = store.ingest([data], organisation="org", wait_summary=True, timeout=30)
    assert r.summary == fake_analyze(decode(data))
    assert store.get_summary(r.sop_instance_uid, "nope") is None


def test_catch_up_measures_what_lacks_the_current_version(tmp_path: Path) -> None:
    objs = [_obj(i) for i in range(3)]
    with Store.open(tmp_path, analyze=None) as s:
        res = s.ingest(objs, organisation="org")
    calls: list[str] = []

    def counting(ecg: Any) -> dict[str, Any]:
        calls.append(ecg.sop_instance_uid)
        return fake_analyze(ecg)

    with Store.open(tmp_path, analyze=counting, analysis_version="v2") as s:
        s.wait_measured(30)
        assert sorted(calls) == sorted(r.sop_instance_uid for r in res)
    with Store.open(tmp_path, analyze=counting, analysis_version="v2") as s:
        s.wait_measured(30)
    assert len(calls) == 3  # nothing measured twice


def test_search_filters_ranges_sorting_and_pages(store: Store) -> None:
    base = dt.datetime(2025, 1, 1)
    objs = []
    for i in range(9):
        e = synthetic_ecg(seed=100 + i, duration_s=1.0 + 0.1 * i)
        e = e.replace(patient_id=f"P{i % 3}", acquisition_datetime=base + dt.timedelta(days=i))
        objs.append(encode(e))
    store.ingest(objs[:6], organisation="A")
    store.ingest(objs[6:], organisation="B")
    store.wait_measured(30)
    page = store.search(patient_id="P1")
    assert {r["patient_id"] for r in page.rows} == {"P1"} and len(page.rows) == 3
    by_uid = {decode(o).sop_instance_uid: o for o in objs}
    for r in page.rows:  # measurements joined to the page (phase two)
        want = fake_analyze(decode(by_uid[r["sop_instance_uid"]]))
        assert (r["heart_rate_bpm"], r["qtc_ms"]) == (want["heart_rate_bpm"], want["qtc_ms"])
        assert r["analysis_version"] == "test-1"
    assert [r["acquisition_datetime"] for r in page.rows] == sorted(
        (r["acquisition_datetime"] for r in page.rows), reverse=True)
    q = SearchQuery(equals=(("organisation", "A"),), acquired_from=base + dt.timedelta(days=1),
                    acquired_to=base + dt.timedelta(days=5), sort="acquisition_datetime",
                    descending=False, limit=2)
    seen = []
    while True:
        page = store.search(q)
        seen += [r["acquisition_datetime"] for r in page.rows]
        if page.next_cursor is None:
            break
        q = SearchQuery(**{**{f: getattr(q, f) for f in q.__slots__}, "cursor": page.next_cursor})
    assert seen == [base + dt.timedelta(days=d) for d in range(1, 5)]
    hr = store.search(SearchQuery(ranges=(("heart_rate_bpm", 50.0, None),), sort="heart_rate_bpm"))
    values = [r["heart_rate_bpm"] for r in hr.rows]
    assert values == sorted(values, reverse=True) and all(v >= 50 for v in values)
    assert len(values) == sum(fake_analyze(decode(o))["heart_rate_bpm"] >= 50 for o in objs)


def test_search_values_are_bound_not_formatted(store: Store) -> None:
    store.ingest([_obj(9)], organisation="A")
    page = store.search(patient_id="x' OR '1'='1")
    assert page.rows == []
    with pytest.raises(InvalidArgument, match="cannot sort by"):
        store.search(SearchQuery(sort="patient_id; DROP TABLE ecg"))
    with pytest.raises(InvalidArgument, match="not one this service issued"):
        store.search(SearchQuery(cursor="garbage!"))


def test_a_failing_analysis_is_recorded_and_does_not_stop_the_stage(tmp_path: Path) -> None:
    def flaky(ecg: Any) -> dict[str, Any]:
        if ecg.patient_id.endswith("1"):
            raise RuntimeError("no beats found")
        return fake_analyze(ecg)

    objs = [encode(synthetic_ecg(seed=i, duration_s=1.0).replace(patient_id=f"P{i}"))
            for i in range(3)]
    with Store.open(tmp_path, analyze=flaky, analysis_version="f1") as s:
        res = s.ingest(objs, "org", wait_summary=True, timeout=30)
        docs = {decode(o).patient_id: r.summary for o, r in zip(objs, res, strict=True)}
    assert docs["P1"] == {"error": "RuntimeError: no beats found"}
    assert docs["P0"] == fake_analyze(decode(objs[0]))
    assert docs["P2"] == fake_analyze(decode(objs[2]))


def test_search_measurements_survive_compaction_and_reopen(tmp_path: Path) -> None:
    objs = [encode(synthetic_ecg(seed=200 + i, duration_s=1.0 + 0.1 * i)
                   .replace(patient_id=f"Q{i % 2}")) for i in range(6)]
    want = {decode(o).sop_instance_uid: fake_analyze(decode(o))["heart_rate_bpm"] for o in objs}

    def measured(s: Store) -> dict[str, Any]:
        rows = s.search(patient_id="Q0").rows + s.search(patient_id="Q1").rows
        return {r["sop_instance_uid"]: r["heart_rate_bpm"] for r in rows}

    with Store.open(tmp_path, analyze=fake_analyze, analysis_version="c1") as s:
        for o in objs:
            s.ingest([o], "org", wait_summary=True, timeout=30)
        assert measured(s) == want
        report = s.compact(min_files=2, grace_s=0)
        assert report.written_files >= 4  # ecg, header, waveform and summary merged
        assert measured(s) == want
    with Store.open(tmp_path, analyze=None, analysis_version="c1") as s:
        assert measured(s) == want


def test_summary_document_keeps_the_median_beat_exactly() -> None:
    import json

    from waveform.analysis import analyze
    from waveform.model import Summary
    from waveform.store.measure import summary_row
    from waveform.store.summaries import summary_document

    summary = analyze(decode(_obj(31)))
    median = summary.median_beat.copy()
    median[0, :4] = [1e-45, -0.0, 3.4028235e38, 65504.0]  # extremes of float32
    summary = dataclasses.replace(summary, median_beat=median)
    row = summary_row("1.2.3", "v", None, summary, {"patient_id": "P"})
    doc = summary_document(row["document"], row["median_beat"])
    plain = json.loads(json.dumps(summary.to_dict()))
    assert set(doc) == set(plain)
    assert all(doc[k] == plain[k] for k in doc if k != "median_beat")
    back = Summary.from_dict(doc).median_beat
    assert back.dtype == np.float32 and back.view(np.uint32).tolist() == \
        median.view(np.uint32).tolist()
    assert row["patient_id"] == "P" and row["heart_rate_bpm"] == plain["heart_rate_bpm"]


def test_stored_objects_reads_a_batch_and_falls_back_per_object(tmp_path: Path) -> None:
    objs = [_obj(40 + i) for i in range(5)]
    with Store.open(tmp_path, analyze=None, auto_compact_commits=None) as s:
        res = s.ingest(objs[:3], "org") + s.ingest(objs[3:], "org")
        uids = [r.sop_instance_uid for r in res]
        got = s.stored_objects([*uids, "1.2.3.4"])
        assert [got[u] for u in uids] == objs
        assert isinstance(got["1.2.3.4"], NotFound)
        s.compact(grace_s=0)  # locators move; the batch read still finds every object
        got = s.stored_objects(uids)
        assert [got[u] for u in uids] == objs
