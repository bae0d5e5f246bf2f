"""A catalog made before a table gained columns opens, gains them, and reads on."""

from __future__ import annotations

from pathlib import Path

from waveform.dicom import encode
from waveform.dicom.synthetic import synthetic_ecg
from waveform.store import Store
from waveform.store.lake import ALIAS, connect


def test_columns_added_to_a_schema_are_added_to_an_older_catalog(tmp_path: Path) -> None:
    ecg = synthetic_ecg(seed=5, duration_s=2.0)
    with Store.open(tmp_path, analyze=None) as store:
        store.ingest([encode(ecg)], organisation="org-a")
    # Make the catalog look like one written before the summary table carried the
    # study identifiers.
    lake = connect(str(tmp_path / "catalog.ducklake"), str(tmp_path / "lake") + "/")
    cur = lake.cursor()
    for col in ("study_instance_uid", "accession_number"):
        cur.execute(f"ALTER TABLE {ALIAS}.summary DROP COLUMN {col}")
    cur.close()
    lake.close()

    with Store.open(tmp_path, analyze=None) as store:
        cols = [r[0] for r in store.sql(
            "SELECT column_name FROM duckdb_columns() WHERE database_name = ? "
            "AND table_name = 'summary'", [ALIAS])]
        assert cols[-2:] == ["study_instance_uid", "accession_number"]
        page = store.search(patient_id=ecg.patient_id)
        assert [r["study_instance_uid"] for r in page.rows] == [ecg.study_instance_uid]
        assert [r["accession_number"] for r in page.rows] == [ecg.accession_number]


def test_a_real_summary_fills_every_searchable_measurement() -> None:
    from waveform.analysis import analyze
    from waveform.store.measure import summary_row
    from waveform.store.schema import MEASURES

    s = analyze(synthetic_ecg(seed=7, heart_rate=75.0))
    row = summary_row("1.2.3", s.analysis_version, None, s, {})
    assert set(MEASURES) <= set(row)
    assert row["qtc_ms"] == s.qtc_bazett_ms.value is not None
    assert row["rr_mean_ms"] == s.rr_mean_ms.value is not None
    assert row["rr_sd_ms"] == s.rr_sd_ms.value
    for name in MEASURES:
        assert row[name] is not None, name


def test_a_summary_of_the_current_version_is_committed_once(tmp_path: Path) -> None:
    import threading

    import pyarrow as pa

    from waveform.analysis import analyze
    from waveform.store.lake import ALIAS
    from waveform.store.measure import summary_row
    from waveform.store.schema import SUMMARY

    ecgs = [synthetic_ecg(seed=s, duration_s=10.0) for s in (11, 12)]
    with Store.open(tmp_path, analyze=None, analysis_version="v1") as store:
        store.ingest([encode(e) for e in ecgs], organisation="org-a")
        rows = [summary_row(e.sop_instance_uid, "v1", None, analyze(e),
                            store.ecg_context(e.sop_instance_uid)) for e in ecgs]
        table = pa.Table.from_pylist(rows, schema=SUMMARY)
        other = pa.Table.from_pylist([{**rows[0], "analysis_version": "v0"}], schema=SUMMARY)
        threads = [threading.Thread(target=store.commit_summaries, args=(table,))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        store.commit_summaries(table)  # again, after the others
        store.commit_summaries(other)  # another version is not the current one's business
        counts = store.sql(f"SELECT sop_instance_uid, analysis_version, count(*) FROM "
                           f"{ALIAS}.summary GROUP BY ALL ORDER BY ALL")
    want = sorted([(ecgs[0].sop_instance_uid, "v0", 1), (ecgs[0].sop_instance_uid, "v1", 1),
                   (ecgs[1].sop_instance_uid, "v1", 1)])
    assert counts == want
