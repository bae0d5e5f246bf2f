"""bench/store.py runs, small, so that it cannot rot; its codec table holds the target."""

from __future__ import annotations

import re

import pytest


@pytest.mark.slow
def test_store_benchmark_runs_small(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import store

    store.main(small=True)
    out = capsys.readouterr().out
    for title in ("Sample encodings", "ECGs/s", "get_trace, 12 leads", "QTc > 500 ms"):
        assert title in out
    m = re.search(r"\(default\)\s+(\d+\.\d+)x", out)
    assert m is not None and float(m.group(1)) >= 3.0, out
