"""Inputs for tests and benchmarks of re-analysis: many distinct ECGs, made fast.

`objects` encodes a few synthetic 12-lead ECGs with our encoder and derives the
rest from them by giving each copy its own SOP Instance UID and its own samples
(the base's samples rotated in time), both patched into the encoded bytes at the
same length: a few hundred distinct, valid objects in a fraction of a second
instead of a pydicom encode each. `analyze_or_fail` is the real analysis, except
that it rejects the ECGs `marked_to_fail` picks (a failure the job must record,
importable by worker processes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from waveform.errors import InvalidArgument

__all__ = ["UID_ROOT", "analyze_or_fail", "marked_to_fail", "objects"]

#: UIDs made here: ``UID_ROOT.<seed, base>.<1000000 + copy number>``.
UID_ROOT = "1.2.826.0.1.3680043.8.498.77"


def objects(n: int, *, bases: int = 8, duration_s: float = 10.0, fs: float = 500.0,
            seed: int = 0) -> list[bytes]:
    """``n`` distinct 12-lead ECG objects (DICOM bytes)."""
    from waveform.dicom import encode
    from waveform.dicom.synthetic import synthetic_ecg

    if not 1 <= bases <= 10 or n // bases >= 9_000_000:
        raise InvalidArgument(f"objects: {bases} bases: expected 1 to 10, and at most "
                              "9,000,000 copies of each")
    templates = []
    for b in range(bases):
        ecg = synthetic_ecg(seed=seed * 1000 + b, heart_rate=48.0 + 11.0 * b, fs=fs,
                            duration_s=duration_s)
        uid = f"{UID_ROOT}.{seed + 1}{b}.{1_000_000}"
        data = encode(ecg.replace(sop_instance_uid=uid))
        raw = ecg.groups[0].raw
        at = data.find(np.ascontiguousarray(raw.T).tobytes())
        if at < 0:  # pragma: no cover - the encoder writes WaveformData as is
            raise AssertionError("the samples are not found in the encoded object")
        templates.append((data, uid, raw, at))
    out = []
    for i in range(n):
        data, uid, raw, at = templates[i % bases]
        k = i // bases
        new_uid = uid[:-7] + f"{1_000_000 + k}"
        shifted = np.ascontiguousarray(np.roll(raw, 97 * k + 13 * i, axis=1).T).tobytes()
        patched = data[:at] + shifted + data[at + len(shifted):]
        out.append(patched.replace(uid.encode(), new_uid.encode()))
    return out


def marked_to_fail(uid: str) -> bool:
    """About one ECG in 37 of those `objects` makes, spread over bases and copies."""
    parts = uid.rsplit(".", 2)
    if len(parts) < 3 or not (parts[-1].isdigit() and parts[-2].isdigit()):
        return False
    return ((int(parts[-1]) - 1_000_000) * 10 + int(parts[-2]) % 10) % 37 == 3


def analyze_or_fail(ecg: Any) -> Any:
    """`waveform.analysis.analyze`, but ECGs `marked_to_fail` raise `InvalidArgument`."""
    from waveform.analysis import analyze

    if marked_to_fail(ecg.sop_instance_uid):
        raise InvalidArgument(f"ECG {ecg.sop_instance_uid} is marked to fail (a test)")
    return analyze(ecg)


