"""The RecentExaminations benchmark runs once, small, so that it cannot rot."""

from __future__ import annotations

import re

import pytest


def test_bench_archive_small(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import archive

    archive.main(small=True)
    out = capsys.readouterr().out
    assert "10000 ECGs with summaries, 1000 patients" in out
    for row in ("RecentExaminations over gRPC", "Archive.recent, in process", "peer: DuckDB"):
        line = next(x for x in out.splitlines() if x.startswith(row))
        assert re.search(r"\d+\.\d+ (ms|us)", line), line
    verdict = next(x for x in out.splitlines() if x.startswith("target <= 20 ms"))
    assert re.search(r"(meets|misses) \(\d+\.\d+ ms\)", verdict)
    # The consented patients are among those asked: some answers list other
    # organisations' ECGs, so the policy path is measured, not only empty answers.
    listed = re.search(r"consented patients' answers listed (\d+) ECGs", verdict)
    assert listed and int(listed.group(1)) > 0, verdict
