"""Each patient's ECGs: the lookups behind RecentExaminations, the citizen's view and
every access decision about one ECG, answered in milliseconds over millions of ECGs.

Served by the store's locator index (`Store.exams`: one indexed query by patient,
study, accession number or SOP Instance UID), which an ingest updates before it is
acknowledged: nothing is loaded at open, memory does not grow with the archive,
and every server on one catalog sees the same examinations.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from waveform.store import Store
from waveform.store.schema import MEASURES

__all__ = ["ExamRef", "PatientIndex"]


@dataclass(frozen=True, slots=True)
class ExamRef:
    sop_instance_uid: str
    patient_id: str
    organisation: str
    study_instance_uid: str
    accession_number: str
    acquired: dt.datetime | None
    sop_class_uid: str
    study_description: str
    operator: str
    reading_physician: str


def _ref(row: Mapping[str, Any]) -> ExamRef:
    def text(name: str) -> str:
        v = row.get(name)
        return "" if v is None else str(v)

    acquired = row.get("acquisition_datetime")
    return ExamRef(text("sop_instance_uid"), text("patient_id"), text("organisation"),
                   text("study_instance_uid"), text("accession_number"),
                   acquired if isinstance(acquired, dt.datetime) else None,
                   text("sop_class_uid"), text("study_description"), text("operator"),
                   text("reading_physician"))


class PatientIndex:
    """Examinations by SOP instance, patient, study and accession number."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def _find(self, column: str, value: str) -> list[ExamRef]:
        return [_ref(r) for r in self._store.exams(column, value)]

    def exams(self, patient_id: str) -> list[ExamRef]:
        """The patient's ECGs, newest first."""
        refs = self._find("patient_id", patient_id)
        return sorted(refs, key=lambda r: (r.acquired is not None, r.acquired or dt.datetime.min,
                                           r.sop_instance_uid), reverse=True)

    def measures(self, uids: Sequence[str]) -> list[dict[str, Any]]:
        """The current summary's `MEASURES` of each ECG ({} where not measured yet)."""
        rows: list[dict[str, Any]] = [{"sop_instance_uid": u} for u in uids]
        self._store.attach_summaries(rows)
        return [{m: r.get(m) for m in MEASURES} if r.get("analysis_version") is not None
                else {} for r in rows]

    def exam(self, uid: str) -> ExamRef | None:
        found = self._find("uid", uid)
        return found[0] if found else None

    def study(self, study_instance_uid: str) -> list[ExamRef]:
        return self._find("study_instance_uid", study_instance_uid)

    def accession(self, accession_number: str) -> list[ExamRef]:
        """ECGs with that accession number (of any organisation: the caller filters)."""
        return self._find("accession_number", accession_number)
