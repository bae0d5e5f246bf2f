"""Each benchmark of the dsp/analysis stage runs once, small, so it cannot rot."""

from __future__ import annotations

import pytest

from tests.conftest import shared


def test_bench_dsp_small(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import dsp

    dsp.main(small=True)
    out = capsys.readouterr().out
    assert "resample 12x10000" in out and "analyze()" in out and "neurokit2" in out


def test_bench_accuracy_small(capsys: pytest.CaptureFixture[str]) -> None:
    shared("wfdb", "ludb", "1.hea")
    from bench import accuracy

    accuracy.main(small=True)
    out = capsys.readouterr().out
    assert "pooled" in out and "gqrs Se / +P" in out
    assert "PR" in out and "IEC limit" in out
    if (accuracy.QTDB / "sel100.hea").exists():
        assert "QT Database, report (QTDB even)" in out and "annotator 2 (floor)" in out
        assert "ECGPUWAVE" in out and "neurokit2 dwt" in out and "10 s windows" in out
        assert "delineate() of a whole 15-minute" in out


def test_bootstrap_intervals_cover_the_truth_and_need_five_records() -> None:
    import numpy as np

    from bench.accuracy import bootstrap_ci

    assert bootstrap_ci(np.array([1.0, 2.0, 3.0, 4.0])) is None
    d = np.random.default_rng(3).normal(-4.0, 12.0, 400)
    ci = bootstrap_ci(d)
    assert ci is not None
    (m_lo, m_hi), (s_lo, s_hi) = ci
    assert m_lo < -4.0 < m_hi and 1.5 < m_hi - m_lo < 3.5  # ±1.96 x 12/sqrt(400)
    assert s_lo < 12.0 < s_hi and s_hi - s_lo < 3.0
    assert bootstrap_ci(d) == ci  # seeded: the printed table does not wander
