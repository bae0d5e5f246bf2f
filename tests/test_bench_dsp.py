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
