"""The committed stubs are what protos/ generates (they never drift)."""

from __future__ import annotations

from pathlib import Path

from waveform.service._codegen import OUT, generate


def test_stubs_match_protos(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    assert fresh, "no .proto files generated anything"
    for path in fresh:
        committed = OUT / path.relative_to(tmp_path)
        hint = "run python -m waveform.service._codegen"
        assert committed.exists(), f"{committed} is missing: {hint}"
        assert committed.read_text() == path.read_text(), (
            f"{committed} differs from protos/: {hint}")
