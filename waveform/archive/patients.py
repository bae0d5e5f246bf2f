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
import pyarrow.compute as pc

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


class _Groups:
    """Row numbers by value of one column: the loaded rows as one sort (an order
    and the start of each value's run), rows added since in a dict."""

    def __init__(self, column: pa.ChunkedArray) -> None:
        encoded = pc.dictionary_encode(pc.fill_null(column.combine_chunks(), ""))
        codes = encoded.indices.to_numpy()
        self._order = np.argsort(codes, kind="stable")
        counts = np.bincount(codes, minlength=len(encoded.dictionary))
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        keys = encoded.dictionary.to_pylist()
        self._code = dict(zip(keys, range(len(keys)), strict=True))
        self._extra: dict[str, list[int]] = {}

    def get(self, key: str) -> list[int]:
        if not key:
            return []
        k = self._code.get(key)
        rows = [] if k is None else self._order[self._starts[k]:self._starts[k + 1]].tolist()
        return rows + self._extra.get(key, [])

    def add(self, key: str, row: int) -> None:
        if key:
            self._extra.setdefault(key, []).append(row)


class PatientIndex:
    """Every ECG's context (loaded rows as Arrow columns, rows added since as tuples),
    and row numbers by SOP instance, patient, study and accession number."""

    def __init__(self, store: Store, drain_interval_s: float = 0.5) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._base = store.sql_arrow(f"SELECT {', '.join(_COLUMNS)} FROM {ALIAS}.ecg")
        self._n_base = self._base.num_rows
        self._added: list[list[Any]] = []
        uids = self._base.column("sop_instance_uid").to_pylist()
        self._row: dict[str, int] = dict(zip(uids, range(len(uids)), strict=True))
        self._by_patient = _Groups(self._base.column("patient_id"))
        self._by_study = _Groups(self._base.column("study_instance_uid"))
        self._by_accession = _Groups(self._base.column("accession_number"))
        self._pending: list[str] = []
        self._draining = threading.Lock()
        #: The recent-examination values of each row's current summary (NaN: none).
        self._values = np.full((self._n_base, len(MEASURES)), np.nan)
        self._have = np.zeros(self._n_base, bool)
        self._values_added: dict[int, tuple[Any, ...]] = {}
        if store.analysis_version is not None:
            m = store.sql_arrow(
                f"SELECT sop_instance_uid, {', '.join(MEASURES)} FROM {ALIAS}.summary "
                "WHERE analysis_version = ? ORDER BY measured_at", [store.analysis_version])
            rows = np.array([self._row.get(u, -1) for u in m.column(0).to_pylist()], np.int64)
            ok = rows >= 0
            for j, c in enumerate(MEASURES):
                col = m.column(c).to_numpy(zero_copy_only=False).astype(float)
                self._values[rows[ok], j] = col[ok]
            self._have[rows[ok]] = True
        self._stop = threading.Event()
        self._interval = drain_interval_s
        self._thread = threading.Thread(target=self._drain_loop, name="patient-index",
                                        daemon=True)
        self._thread.start()

    def _ref(self, i: int) -> ExamRef:
        if i >= self._n_base:
            return _ref(self._added[i - self._n_base])
        return _ref([self._base.column(c)[i].as_py() for c in _COLUMNS])

    def _add(self, values: Sequence[Any]) -> None:
        uid = str(values[0])
        if uid in self._row:
            return
        i = self._n_base + len(self._added)
        self._added.append(list(values))
        self._row[uid] = i
        self._by_patient.add(str(values[1] or ""), i)
        self._by_study.add(str(values[3] or ""), i)
        self._by_accession.add(str(values[4] or ""), i)

    def _known_values(self, i: int) -> tuple[Any, ...] | None:
        if i < self._n_base:
            if not self._have[i]:
                return None
            return tuple(None if np.isnan(v) else float(v) for v in self._values[i])
        return self._values_added.get(i)

    def note(self, uid: str) -> None:
        """An ECG was just stored: index it soon."""
        with self._lock:
            self._pending.append(uid)

    def _drain(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        found = []
        for uid, ctx in self._store.ecg_contexts(pending, _COLUMNS).items():
            if isinstance(ctx, Exception):
                log.warning("cannot index ECG %s: %s", uid, ctx)
                continue
            found.append([ctx.get(c) for c in _COLUMNS])
        with self._lock:
            for values in found:
                self._add(values)

    def _drain_loop(self) -> None:
        while not self._stop.wait(self._interval):
            if self._pending:
                with self._draining:
                    self._drain()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)

    # ----------------------------------------------------------------- reading
    def _fresh(self) -> None:
        # Serialised: a caller that finds another draining waits for it to finish,
        # so an ECG noted before the call is always found.
        if self._pending or self._draining.locked():
            with self._draining:
                self._drain()

    def exams(self, patient_id: str) -> list[ExamRef]:
        """The patient's ECGs, newest first."""
        self._fresh()
        with self._lock:
            refs = [self._ref(i) for i in self._by_patient.get(patient_id)]
        return sorted(refs, key=lambda r: (r.acquired is not None, r.acquired or dt.datetime.min,
                                           r.sop_instance_uid), reverse=True)

    def measures(self, uids: Sequence[str]) -> list[dict[str, Any]]:
        """The current summary's `MEASURES` of each ECG (None where not measured yet);
        held in memory, read from the store the first time after a measurement."""
        with self._lock:
            rows = [self._row.get(u) for u in uids]
            known = [self._known_values(i) if i is not None else None for i in rows]
        missing = [{"sop_instance_uid": u} for u, k in zip(uids, known, strict=True)
                   if k is None]
        if missing:
            self._store.attach_summaries(missing)
            found = {r["sop_instance_uid"]: tuple(r.get(m) for m in MEASURES) for r in missing
                     if r.get("analysis_version") is not None}
            with self._lock:
                for u, v in found.items():
                    i = self._row.get(u)
                    if i is not None and i < self._n_base:
                        self._values[i] = [np.nan if x is None else x for x in v]
                        self._have[i] = True
                    elif i is not None:
                        self._values_added[i] = v
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
            return [self._ref(i) for i in self._by_study.get(study_instance_uid)]

    def accession(self, accession_number: str) -> list[ExamRef]:
        """ECGs with that accession number (of any organisation: the caller filters)."""
        self._fresh()
        with self._lock:
            return [self._ref(i) for i in self._by_accession.get(accession_number)]
