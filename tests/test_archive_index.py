"""The patient index: served by the locator index, the same before and after a reopen,
and after the index is rebuilt from the lake."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from waveform.archive.patients import PatientIndex
from waveform.dicom import encode
from waveform.dicom.synthetic import synthetic_ecg
from waveform.store import Store


def _object(seed: int, patient: str, day: int, study: str = "", accession: str = "") -> bytes:
    ecg = synthetic_ecg(seed=seed, duration_s=10.0, heart_rate=60.0 + seed)
    return encode(dataclasses.replace(
        ecg, sop_instance_uid=str(generate_uid()), patient_id=patient,
        study_instance_uid=study or str(generate_uid()), accession_number=accession,
        acquisition_datetime=dt.datetime(2026, 1, day, 10, 0)))


@pytest.mark.parametrize("lose_index", [False, True])
def test_examinations_answer_alike_before_and_after_a_reopen(tmp_path: Path,
                                                            lose_index: bool) -> None:
    with Store.open(tmp_path) as store:
        first = store.ingest([_object(1, "A", 3, accession="X1"), _object(2, "B", 4),
                              _object(3, "A", 9, study="2.25.77")], "org-a", wait_summary=True)
        index = PatientIndex(store)
        assert [e.acquired.day for e in index.exams("A") if e.acquired] == [9, 3]
    if lose_index:  # taken in again from the lake's files at the next open
        for name in ("locators.sqlite", "locators.sqlite-wal", "locators.sqlite-shm"):
            (tmp_path / name).unlink(missing_ok=True)
    with Store.open(tmp_path) as store:
        index = PatientIndex(store)
        later = store.ingest([_object(4, "A", 6, study="2.25.77", accession="X1")], "org-b",
                             wait_summary=True)
        exams = index.exams("A")
        assert [e.acquired.day for e in exams if e.acquired] == [9, 6, 3]
        assert [e.organisation for e in exams] == ["org-a", "org-b", "org-a"]
        assert {e.sop_instance_uid for e in index.study("2.25.77")} == {
            first[2].sop_instance_uid, later[0].sop_instance_uid}
        assert {e.sop_instance_uid for e in index.accession("X1")} == {
            first[0].sop_instance_uid, later[0].sop_instance_uid}
        assert index.accession("") == [] and index.exams("nobody") == []
        ref = index.exam(first[1].sop_instance_uid)
        assert ref is not None and ref.patient_id == "B"
        assert ref.operator and ref.reading_physician  # the synthetic object names both
        values = index.measures([first[0].sop_instance_uid, later[0].sop_instance_uid,
                                 "1.2.3.unknown"])
        for v, seed in zip(values[:2], (1, 4), strict=True):
            assert abs(v["heart_rate_bpm"] - (60.0 + seed)) < 2.0
            assert v["qtc_ms"] is not None and v["rr_mean_ms"] > 0
        assert values[2] == {}
