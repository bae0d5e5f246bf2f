"""Each patient's ECGs, in memory: the lookups behind RecentExaminations and the
citizen's view, which must answer in milliseconds over millions of ECGs.

Loaded from the catalog's ``ecg`` table when the service starts; ECGs stored
since are noted by the ingest path (`note`) and looked up in the background (or
at the next query, whichever comes first), so that ingest does not wait for it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from waveform.errors import NotFound, StorageError
from waveform.store import Store
from waveform.store.lake import ALIAS
from waveform.store.schema import MEASURES

__all__ = ["ExamRef", "PatientIndex"]

log = logging.getLogger("waveform.archive")

_COLUMNS = ("sop_instance_uid", "patient_id", "organisation", "study_instance_uid",
            "accession_number", "acquisition_datetime", "sop_class_uid", "study_description",
            "operator", "reading_physician")


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


def _ref(row: Sequence[object]) -> ExamRef:
    v = ["" if x is None else x for x in row]
    return ExamRef(str(v[0]), str(v[1]), str(v[2]), str(v[3]), str(v[4]),
                   row[5] if isinstance(row[5], dt.datetime) else None,
                   str(v[6]), str(v[7]), str(v[8]), str(v[9]))


class PatientIndex:
    def __init__(self, store: Store, drain_interval_s: float = 0.5) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._by_patient: dict[str, list[ExamRef]] = {}
        self._by_uid: dict[str, ExamRef] = {}
        self._by_study: dict[str, list[ExamRef]] = {}
        self._by_accession: dict[str, list[ExamRef]] = {}
        self._pending: list[str] = []
        for row in store.sql(f"SELECT {', '.join(_COLUMNS)} FROM {ALIAS}.ecg"):
            self._add(_ref(row))
        #: The recent-examination values of each ECG's current summary.
        self._measures: dict[str, tuple[Any, ...]] = {}
        if store.analysis_version is not None:
            for uid, *values in store.sql(
                    f"SELECT sop_instance_uid, {', '.join(MEASURES)} FROM {ALIAS}.summary "
                    "WHERE analysis_version = ? ORDER BY measured_at",
                    [store.analysis_version]):
                self._measures[uid] = tuple(values)
        self._stop = threading.Event()
        self._interval = drain_interval_s
        self._thread = threading.Thread(target=self._drain_loop, name="patient-index",
                                        daemon=True)
        self._thread.start()

    def _add(self, ref: ExamRef) -> None:
        if ref.sop_instance_uid in self._by_uid:
            return
        self._by_uid[ref.sop_instance_uid] = ref
        self._by_patient.setdefault(ref.patient_id, []).append(ref)
        if ref.study_instance_uid:
            self._by_study.setdefault(ref.study_instance_uid, []).append(ref)
        if ref.accession_number:
            self._by_accession.setdefault(ref.accession_number, []).append(ref)

    def note(self, uid: str) -> None:
        """An ECG was just stored: index it soon."""
        with self._lock:
            self._pending.append(uid)

    def _drain(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        refs = []
        for uid in pending:
            try:
                ctx = self._store.ecg_context(uid, _COLUMNS)
            except (NotFound, StorageError, OSError) as e:
                log.warning("cannot index ECG %s: %s", uid, e)
                continue
            refs.append(_ref([ctx.get(c) for c in _COLUMNS]))
        with self._lock:
            for ref in refs:
                self._add(ref)

    def _drain_loop(self) -> None:
        while not self._stop.wait(self._interval):
            if self._pending:
                self._drain()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)

    # ----------------------------------------------------------------- reading
    def exams(self, patient_id: str) -> list[ExamRef]:
        """The patient's ECGs, newest first."""
        if self._pending:
            self._drain()
        with self._lock:
            refs = list(self._by_patient.get(patient_id, ()))
        return sorted(refs, key=lambda r: (r.acquired is not None, r.acquired or dt.datetime.min,
                                           r.sop_instance_uid), reverse=True)

    def measures(self, uids: Sequence[str]) -> list[dict[str, Any]]:
        """The current summary's `MEASURES` of each ECG (None where not measured yet);
        held in memory, read from the store the first time after a measurement."""
        with self._lock:
            known = [self._measures.get(u) for u in uids]
        missing = [{"sop_instance_uid": u} for u, k in zip(uids, known, strict=True)
                   if k is None]
        if missing:
            self._store.attach_summaries(missing)
            found = {r["sop_instance_uid"]: tuple(r.get(m) for m in MEASURES) for r in missing
                     if r.get("analysis_version") is not None}
            with self._lock:
                self._measures.update(found)
            known = [k if k is not None else found.get(u) for u, k in zip(uids, known,
                                                                             strict=True)]
        return [dict(zip(MEASURES, k, strict=True)) if k is not None else {} for k in known]

    def exam(self, uid: str) -> ExamRef | None:
        if self._pending:
            self._drain()
        with self._lock:
            return self._by_uid.get(uid)

    def study(self, study_instance_uid: str) -> list[ExamRef]:
        if self._pending:
            self._drain()
        with self._lock:
            return list(self._by_study.get(study_instance_uid, ()))

    def accession(self, accession_number: str) -> list[ExamRef]:
        """ECGs with that accession number (of any organisation: the caller filters)."""
        if self._pending:
            self._drain()
        with self._lock:
            return list(self._by_accession.get(accession_number, ()))
