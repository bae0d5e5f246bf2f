"""decode(encode(x)) == x over the synthetic generator's parameters."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from waveform.dicom.codes import SOP_CLASSES, TRANSFER_SYNTAXES
from waveform.dicom.decode import decode
from waveform.dicom.encode import encode
from waveform.dicom.synthetic import _padding_for, corpus, synthetic_ecg
from waveform.model import SAMPLE_DTYPES, Ecg

CORPUS = list(corpus())
_WIDTH = {interp: bits for (bits, interp) in SAMPLE_DTYPES}


def _difference(a: Ecg, b: Ecg) -> str:
    """The first differing field, for a readable failure message."""
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.compare and x != y:
            if f.name == "groups":
                for i, (g, h) in enumerate(zip(x, y, strict=False)):
                    if g != h:
                        for c, d in zip(g.channels, h.channels, strict=False):
                            if c != d:
                                return f"group {i} channel {c} != {d}"
                        return f"group {i}: {g} != {h}"
            return f"{f.name}: {x!r} != {y!r}"
    return ""


@pytest.mark.parametrize(("name", "ecg", "ts"), CORPUS, ids=[n for n, _, _ in CORPUS])
def test_corpus_round_trip(name: str, ecg: Ecg, ts: str) -> None:
    back = decode(encode(ecg, ts))
    assert back == ecg, _difference(back, ecg)


@st.composite
def _params(draw: st.DrawFn) -> dict[str, object]:
    sop = SOP_CLASSES[draw(st.sampled_from(sorted(SOP_CLASSES)))]
    interp = draw(st.sampled_from(sorted(sop.interpretations)))
    width = _WIDTH[interp]
    max_ch = min(sop.max_channels or 24, 24)
    groups = draw(st.integers(1, min(sop.max_groups or 4, 4)))
    bits_stored = None
    padding = None
    if interp not in ("MB", "AB"):
        choice = draw(st.sampled_from(["full", "narrow", "pad"]))
        if choice == "narrow":
            bits_stored = draw(st.integers(max(2, width // 2), width))
        elif choice == "pad":
            padding = _padding_for(interp)
    return {
        "sop_class_uid": sop.uid,
        "interpretation": interp,
        "n_channels": draw(st.integers(1, max_ch)),
        "fs": draw(st.sampled_from([200.0, 250.0, 257.0, 360.0, 500.0, 1000.0, 128.5])),
        "duration_s": draw(st.sampled_from([0.1, 0.25, 0.6])),
        "groups": groups,
        "bits_stored": bits_stored,
        "padding": padding,
        "heart_rate": draw(st.floats(40.0, 180.0)),
        "seed": draw(st.integers(0, 10_000)),
        "units": draw(st.sampled_from(["uV", "mV"])),
        "group_offset_ms": draw(st.sampled_from([0.0, 0.0, 125.0, 1000.5])),
        "annotations": draw(st.booleans()),
        "transfer_syntax_uid": draw(st.sampled_from(sorted(TRANSFER_SYNTAXES))),
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_params())
def test_decode_inverts_encode(params: dict[str, object]) -> None:
    ecg = synthetic_ecg(**params)  # type: ignore[arg-type]
    back = decode(encode(ecg))
    assert back == ecg, _difference(back, ecg)
    for g, h in zip(ecg.groups, back.groups, strict=True):
        assert np.array_equal(g.raw, h.raw)
