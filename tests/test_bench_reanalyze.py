"""The re-analysis benchmark runs once, small, so it cannot rot."""

from __future__ import annotations

import re

import pytest


def test_bench_reanalyze_small(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("distributed")
    from bench import reanalyze

    reanalyze.main(small=True)
    out = capsys.readouterr().out
    assert "analyze() alone, 1 process (peer)" in out
    for row in ("reanalyze, local                   1", "reanalyze, local                   2",
                "reanalyze, dask LocalCluster       2"):
        assert re.search(re.escape(row) + r"\s+\d+\s+\d+\s+\d+\.\d\dx", out), row
    assert "Where the time goes" in out
    assert re.search(r"per worker: \d+ ECGs/s, target 400 (met|missed by \d+\.\dx)", out)
    assert re.search(r"1 -> 2 workers: \d+\.\d\dx, target 1\.7x (met|missed)", out)
    assert re.search(r"CPU per ECG with 2 workers: worker \d+\.\d\d ms, driver \d+\.\d\d ms: "
                     r"on 2 free cores 1 -> 2 workers could give at most \d\.\d\dx", out)
