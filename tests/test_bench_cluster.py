"""The cluster benchmark runs once, small, so that it cannot rot; its generator writes
archives the store reads as if it had ingested them."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

from bench import cluster
from waveform.store import Store
from waveform.store.schema import ECG, SUMMARY


def _cells(out: str, first: str) -> list[list[str]]:
    """The rows of the markdown table whose header row starts with ``first``."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


_NUMBER = re.compile(r"^[\d,.]+( (s|ms|us|MiB)|/s)?$")


def test_bench_cluster_small(capsys: pytest.CaptureFixture[str]) -> None:
    cluster.main(small=True)
    out = capsys.readouterr().out
    assert "Cluster server: `waveform serve --catalog postgres:... --data s3://...`" in out
    opened = _cells(out, "ECGs")
    assert [r[1] for r in opened] == ["ready (start to health SERVING)",
                                      "resident memory (VmRSS)", "GetTrace p50", "GetDicom p50"]
    for row in opened:
        assert row[0] == "2,000"
        assert _NUMBER.match(row[2]) and _NUMBER.match(row[3]), row
    ingest = _cells(out, "mode")
    assert [r[0] for r in ingest] == ["embedded", "cluster, 1 replica", "cluster, 2 replicas"]
    for row in ingest:
        assert _NUMBER.match(row[1]) and float(row[1][:-2].replace(",", "")) > 0, row
        assert _NUMBER.match(row[3]), row
        assert row[-1] == "0", f"ingest errors: {row}"
    reads = _cells(out, "call")
    assert [r[0].split()[0] for r in reads] == ["GetTrace", "GetDicom"]
    commits = _cells(out, "catalog, data")
    assert [r[0] for r in commits] == ["DuckDB file, local data", "PostgreSQL, local data",
                                       "PostgreSQL, S3 data"]
    assert all(_NUMBER.match(r[1]) and _NUMBER.match(r[3]) for r in commits), commits
    assert "every target met" in out or "targets missed:" in out


def test_generated_archive_reads_as_stored(tmp_path: Path) -> None:
    """An embedded archive from the generator: every ECG is found by UID and has a
    current summary, the sampled ones read back byte for byte, and open re-reads no
    data file (all are marked indexed)."""
    from waveform.analysis import ANALYSIS_VERSION

    target = cluster._embedded(tmp_path / "archive")
    uids = cluster.generate([target], 2_500, 40, lambda _: None)
    objects = dict(zip(uids, cluster.sample_objects(uids[0][6:12], 40), strict=True))
    with Store.open(target.data_dir, analyze=None) as store:
        assert store.sql("SELECT count(*) FROM lake.ecg") == [(2_500,)]
        assert len(store.uids()) == 2_500
        assert store.unmeasured(str(ANALYSIS_VERSION)) == []
        for uid in uids[:5]:
            assert store.get_dicom(uid) == objects[uid]
        bulk = store.sql("SELECT sop_instance_uid, patient_id, organisation FROM lake.ecg "
                         "WHERE organisation <> ? LIMIT 1", [cluster.SAMPLE_ORG])[0]
        assert store.exams("uid", bulk[0])[0]["patient_id"] == bulk[1]
        assert store.exams("patient_id", bulk[1])
        assert store.get_summary(bulk[0])["heart_rate_bpm"] > 0  # type: ignore[index]


def test_synthetic_rows_fit_the_schemas() -> None:
    ecg = cluster.ecg_rows("000001", 0, 1_000, 1_000, seed=3)
    assert ecg.schema == ECG
    assert len(ecg.column("sop_instance_uid").unique()) == 1_000
    assert all(len(s) == 64 for s in ecg.column("sha256").to_pylist()[:20])
    summary = cluster.summary_rows(ecg, "v1", seed=4)
    assert summary.schema == SUMMARY
    assert summary.column("sop_instance_uid").equals(ecg.column("sop_instance_uid"))
    import json

    doc = json.loads(summary.column("document")[0].as_py())
    assert doc["heart_rate_bpm"] == summary.column("heart_rate_bpm")[0].as_py()
    assert isinstance(ecg.column("ingested_at").type, pa.TimestampType)
