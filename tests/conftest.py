"""Shared fixtures: where the third-party reference data lives."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
SHARED_DICOM = sorted((SHARED / "dicom").glob("*.dcm")) if SHARED.is_dir() else []


def shared(*parts: str) -> Path:
    """Path under ../shared/data, skipping the test with a reason when absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference data {path} is absent (only ../shared/data has it)")
    return path
