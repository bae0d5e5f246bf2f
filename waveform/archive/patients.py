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

import numpy as np
import pyarrow as pa

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


def _groups(values: list[str]) -> dict[str, list[int]]:
    """Row numbers of each distinct non-empty value (columnar: no per-row Python work
    but the final lists)."""
    if not values:
        return {}
    encoded = pa.array(values, pa.string()).fill_null("").dictionary_encode()
    codes = encoded.indices.to_numpy()
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    keys = encoded.dictionary.to_pylist()
    out = {}
    for g in np.split(order, bounds):
        key = keys[codes[g[0]]]
        if key:
            out[key] = g.tolist()
    return out


class PatientIndex:
    """Columns of every ECG's context, and row numbers by patient, study, accession."""

    def __init__(self, store: Store, drain_interval_s: float = 0.5) -> None:
        self._store = store
        self._lock = threading.Lock()
        table = store.sql_arrow(f"SELECT {', '.join(_COLUMNS)} FROM {ALIAS}.ecg")
        self._cols: dict[str, list[Any]] = {c: table.column(c).to_pylist() for c in _COLUMNS}
        uids = self._cols["sop_instance_uid"]
        self._row: dict[str, int] = dict(zip(uids, range(len(uids)), strict=True))
        self._by_patient = _groups(self._cols["patient_id"])
        self._by_study = _groups(self._cols["study_instance_uid"])
        self._by_accession = _groups(self._cols["accession_number"])
        self._pending: list[str] = []
        #: The recent-examination values of each row's current summary.
        self._measures: dict[int, tuple[Any, ...]] = {}
        if store.analysis_version is not None:
            m = store.sql_arrow(
                f"SELECT sop_instance_uid, {', '.join(MEASURES)} FROM {ALIAS}.summary "
                "WHERE analysis_version = ? ORDER BY measured_at", [store.analysis_version])
            rows = [self._row.get(u) for u in m.column(0).to_pylist()]
            values = zip(*(m.column(c).to_pylist() for c in MEASURES), strict=True)
            self._measures = {i: v for i, v in zip(rows, values, strict=True) if i is not None}
        self._stop = threading.Event()
        self._interval = drain_interval_s
        self._thread = threading.Thread(target=self._drain_loop, name="patient-index",
                                        daemon=True)
        self._thread.start()

    def _ref(self, i: int) -> ExamRef:
        return _ref([self._cols[c][i] for c in _COLUMNS])

    def _add(self, values: Sequence[Any]) -> None:
        uid = str(values[0])
        if uid in self._row:
            return
        i = len(self._cols["sop_instance_uid"])
        for c, v in zip(_COLUMNS, values, strict=True):
            self._cols[c].append(v)
        self._row[uid] = i
        for index, value in ((self._by_patient, values[1]), (self._by_study, values[3]),
                             (self._by_accession, values[4])):
            if value:
                index.setdefault(str(value), []).append(i)

    def note(self, uid: str) -> None:
        """An ECG was just stored: index it soon."""
        with self._lock:
            self._pending.append(uid)

    def _drain(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        found = []
        for uid in pending:
            try:
                ctx = self._store.ecg_context(uid, _COLUMNS)
            except (NotFound, StorageError, OSError) as e:
                log.warning("cannot index ECG %s: %s", uid, e)
                continue
            found.append([ctx.get(c) for c in _COLUMNS])
        with self._lock:
            for values in found:
                self._add(values)

    def _drain_loop(self) -> None:
        while not self._stop.wait(self._interval):
            if self._pending:
                self._drain()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)

    # ----------------------------------------------------------------- reading
    def _fresh(self) -> None:
        if self._pending:
            self._drain()

    def exams(self, patient_id: str) -> list[ExamRef]:
        """The patient's ECGs, newest first."""
        self._fresh()
        with self._lock:
            refs = [self._ref(i) for i in self._by_patient.get(patient_id, ())]
        return sorted(refs, key=lambda r: (r.acquired is not None, r.acquired or dt.datetime.min,
                                           r.sop_instance_uid), reverse=True)

    def measures(self, uids: Sequence[str]) -> list[dict[str, Any]]:
        """The current summary's `MEASURES` of each ECG (None where not measured yet);
        held in memory, read from the store the first time after a measurement."""
        with self._lock:
            rows = [self._row.get(u) for u in uids]
            known = [self._measures.get(i) if i is not None else None for i in rows]
        missing = [{"sop_instance_uid": u} for u, k in zip(uids, known, strict=True)
                   if k is None]
        if missing:
            self._store.attach_summaries(missing)
            found = {r["sop_instance_uid"]: tuple(r.get(m) for m in MEASURES) for r in missing
                     if r.get("analysis_version") is not None}
            with self._lock:
                for u, v in found.items():
                    i = self._row.get(u)
                    if i is not None:
                        self._measures[i] = v
            known = [k if k is not None else found.get(u)
                     for u, k in zip(uids, known, strict=True)]
        return [dict(zip(MEASURES, k, strict=True)) if k is not None else {} for k in known]

    def exam(self, uid: str) -> ExamRef | None:
        self._fresh()
        with self._lock:
            i = self._row.get(uid)
            return None if i is None else self._ref(i)

    def study(self, study_instance_uid: str) -> list[ExamRef]:
        self._fresh()
        with self._lock:
            return [self._ref(i) for i in self._by_study.get(study_instance_uid, ())]

    def accession(self, accession_number: str) -> list[ExamRef]:
        """ECGs with that accession number (of any organisation: the caller filters)."""
        self._fresh()
        with self._lock:
            return [self._ref(i) for i in self._by_accession.get(accession_number, ())]
