"""The background measurement stage: summaries right after the commit, and catch-up.

Measuring (`analyze`, ~2 ms an ECG) never holds up an acknowledgement: the writer
hands the committed UIDs to this stage, which decodes each stored object, runs the
injected ``analyze`` and commits the ``summary`` rows in batches through the same
durable path as ingest. On open, `catch_up` queues every stored ECG that lacks a
summary of the current analysis version, so a crash between the ingest commit and
the summary commit loses nothing, and a new ANALYSIS_VERSION re-measures the
archive with the same machinery. An ECG that cannot be measured gets a summary
row whose document holds the error, so it is not retried on every start.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from waveform.errors import DurabilityError, WaveformError
from waveform.store.lake import ALIAS
from waveform.store.schema import MEASURES, SUMMARY, SUMMARY_CONTEXT

if TYPE_CHECKING:
    from waveform.store.store import Store

__all__ = ["MeasureStage", "summary_row"]

log = logging.getLogger(__name__)

_STOP: Any = object()


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def summary_row(
    uid: str, version: str, measured_at: Any, summary: Any, context: dict[str, Any]
) -> dict[str, Any]:
    """A ``summary`` row from an analysis result (anything with ``to_dict()``, or a
    dict) and the ECG's ``context`` (its `SUMMARY_CONTEXT` columns)."""
    doc = summary.to_dict() if hasattr(summary, "to_dict") else dict(summary)
    row: dict[str, Any] = {
        **{k: context.get(k) for k in SUMMARY_CONTEXT},
        "sop_instance_uid": uid,
        "analysis_version": version,
        "measured_at": measured_at,
        "document": json.dumps(doc, default=_jsonable, sort_keys=True),
    }
    for column, keys in MEASURES.items():
        value = next((doc[k] for k in keys if doc.get(k) is not None), None)
        row[column] = None if value is None else float(value)
    return row


class MeasureStage:
    """One thread that measures committed ECGs and commits their summaries."""

    def __init__(
        self,
        store: Store,
        analyze: Callable[[Any], Any],
        version: str,
        *,
        batch: int = 64,
    ) -> None:
        self._store = store
        self._analyze = analyze
        self.version = version
        self._batch = batch
        self._queue: queue.Queue[str] = queue.Queue()
        self._done = threading.Condition()
        self._measured: set[str] = set()
        self._outstanding = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="waveform-measure", daemon=True)
        self._thread.start()

    def enqueue(self, uids: list[str]) -> None:
        with self._done:
            self._outstanding += len(uids)
        for u in uids:
            self._queue.put(u)

    def catch_up(self) -> int:
        """Queue every stored ECG without a summary of this version; how many."""
        rows = self._store.sql(
            f"SELECT e.sop_instance_uid FROM {ALIAS}.ecg e ANTI JOIN "
            f"(SELECT sop_instance_uid FROM {ALIAS}.summary WHERE analysis_version = ?) s "
            "USING (sop_instance_uid)",
            [self.version],
        )
        self.enqueue([r[0] for r in rows])
        return len(rows)

    def wait_for(self, uid: str, timeout: float | None = None) -> bool:
        with self._done:
            return self._done.wait_for(
                lambda: uid in self._measured or self.error is not None, timeout
            )

    def join(self, timeout: float | None = None) -> bool:
        with self._done:
            return self._done.wait_for(
                lambda: self._outstanding == 0 or self.error is not None, timeout
            )

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()

    def _measure_one(self, uid: str) -> dict[str, Any]:
        from waveform.dicom import decode

        now = self._store._clock()
        context = self._store.ecg_context(uid)
        try:
            summary = self._analyze(decode(self._store.get_dicom(uid)))
        except Exception as e:  # any failure of the algorithm is recorded, not fatal
            log.info("ECG %s could not be measured: %s", uid, e)
            summary = {"error": f"{type(e).__name__}: {e}"}
        return summary_row(uid, self.version, now, summary, context)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            uids = [first]
            stop = False
            while len(uids) < self._batch:
                try:
                    u = self._queue.get_nowait()
                except queue.Empty:
                    break
                if u is _STOP:
                    stop = True
                    break
                uids.append(u)
            rows = []
            for u in uids:
                try:
                    rows.append(self._measure_one(u))
                except WaveformError as e:  # unreadable now; catch-up retries at next start
                    log.warning("ECG %s was not measured: %s", u, e)
            try:
                self._store.commit_summaries(pa.Table.from_pylist(rows, schema=SUMMARY))
            except DurabilityError as e:
                log.error("measurement stage stopped: %s", e)
                with self._done:
                    self.error = e
                    self._done.notify_all()
                return
            except WaveformError as e:  # not stored; catch-up at the next start retries
                log.warning("summaries of %d ECGs not stored: %s", len(uids), e)
            with self._done:
                self._measured.update(uids)
                self._outstanding -= len(uids)
                self._done.notify_all()
            if stop:
                return
