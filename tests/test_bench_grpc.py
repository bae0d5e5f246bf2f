"""The gRPC ingest benchmark runs once, small, so that it cannot rot."""

from __future__ import annotations

import re

import pytest

from bench.grpc_ingest import Payloads
from waveform.dicom import decode


def test_bench_grpc_ingest_small(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import grpc_ingest

    grpc_ingest.main(small=True)
    out = capsys.readouterr().out
    for row in ("Ingest x2", "IngestStream x2"):
        line = next(x for x in out.splitlines() if x.startswith(row))
        rates = re.findall(r"([\d,]+)/s", line)
        assert len(rates) == 2 and all(int(r.replace(",", "")) > 0 for r in rates), line
        assert line.split()[-1] == "0", f"errors in {line}"  # every ingest succeeded
    assert "GetTrace whole 12-lead 10 s, p50 end to end" in out
    assert "background measurement per core (ECGs per CPU-second)" in out
    assert "every target met" in out or "targets missed:" in out
    if "IngestStream" in out.split("targets missed:")[-1]:
        assert "group commit (writer's commit thread)" in out
        assert "top functions by own time" in out


def test_payloads_are_distinct_decodable_objects() -> None:
    payloads = Payloads(2)
    objects = [payloads.next() for _ in range(5)]
    ecgs = [decode(d) for d in objects]
    assert len({e.sop_instance_uid for e in ecgs}) == 5
    assert all(len(d) == len(objects[0]) for d in objects)
    assert ecgs[0].groups[0].raw.shape == (12, 5000)
