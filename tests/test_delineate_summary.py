"""The per-beat marks travel with the summary: stored, read back, and served by GetSummary."""

from __future__ import annotations

import numpy as np

from tests.conftest import Archive
from tests.test_analysis import make_ecg, synthetic_ecg
from waveform.analysis import MARKS, analyze, beat_marks, delineate
from waveform.dicom import decode, encode
from waveform.dicom.synthetic import synthetic_ecg as synthetic_dicom_ecg
from waveform.model import Summary
from waveform.service import convert
from waveform.service._proto.waveform.v1 import archive_pb2 as pb
from waveform.store.summaries import summary_document, summary_row


def test_stored_summary_keeps_every_beats_marks_and_reasons() -> None:
    x, _ = synthetic_ecg(np.full(9, 0.8), p_wave=False)
    s = analyze(make_ecg(x))
    assert (s.beat_marks[:, :2] == -1).all() and (s.beat_marks[1:-1, 2:] >= 0).all()
    row = summary_row("1.2.3", s.analysis_version, None, s, {})
    back = Summary.from_dict(summary_document(row["document"], row["median_beat"]))
    assert back == s
    assert beat_marks(back) == delineate(make_ecg(x))


def test_summary_message_carries_the_marks_and_why_the_others_are_absent() -> None:
    x, _ = synthetic_ecg(np.full(9, 0.8), p_wave=False)
    s = analyze(make_ecg(x))
    msg = convert.summary("1.2.3", s.to_dict())
    assert msg.sampling_frequency == 500.0
    assert [b.sample for b in msg.beats] == s.beats.tolist()
    assert [b.beat_class for b in msg.beats] == list(s.beat_classes)
    for b, m in zip(msg.beats, beat_marks(s), strict=True):
        for name in MARKS:
            want = getattr(m, name)
            assert (b.HasField(name) and getattr(b, name) == want) if want is not None \
                else (not b.HasField(name) and b.reasons[name] == m.reason(name) != "")


def test_a_document_without_marks_gives_the_beats_alone() -> None:
    doc = {"analysis_version": "2.0.0", "beats": [10, 400], "beat_classes": ["U", "N"],
           "sampling_frequency": 250.0}
    msg = convert.summary("1.2.3", doc)
    assert [(b.sample, b.beat_class, b.HasField("qrs_onset"), dict(b.reasons))
            for b in msg.beats] == [(10, "U", False, {}), (400, "N", False, {})]


def test_get_summary_returns_the_beats_marks(archive: Archive) -> None:
    data = encode(synthetic_dicom_ecg(seed=4242, duration_s=10.0))
    r = archive.stub.Ingest(pb.IngestRequest(dicom=data, wait_for_summary=True),
                            metadata=archive.auth("cart_a"))
    s = archive.stub.GetSummary(pb.GetSummaryRequest(sop_instance_uid=r.sop_instance_uid),
                                metadata=archive.auth("dr_a"))
    ecg = decode(data)
    want = delineate(ecg)
    assert len(want) >= 8 and len(s.beats) == s.beat_count == len(want)
    assert s.sampling_frequency == ecg.rhythm.sampling_frequency  # type: ignore[union-attr]
    got = [(b.sample, *(getattr(b, n) if b.HasField(n) else None for n in MARKS))
           for b in s.beats]
    assert got == [(m.beat, *(getattr(m, n) for n in MARKS)) for m in want]
    assert sum(b.HasField("qrs_onset") for b in s.beats) >= len(want) - 2
