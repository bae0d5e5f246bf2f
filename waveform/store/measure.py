"""The background measurement stage: summaries right after the commit, and catch-up.

Measuring (`analyze`, ~2 ms an ECG) never holds up an acknowledgement: the writer
hands the committed UIDs to this stage, which decodes each stored object, runs the
injected ``analyze`` and commits the ``summary`` rows in batches through the same
durable path as ingest. On open, `catch_up` queues every stored ECG that lacks a
summary of the current analysis version, so a crash between the ingest commit and
the summary commit loses nothing, and a new ANALYSIS_VERSION re-measures the
archive with the same machinery. An ECG that cannot be measured gets a summary
row whose document holds the error, so it is not retried on every start.

Where the time goes (docs/storage.md, "Ingest throughput"): besides ``analyze``,
reading each object back one row at a time, its context from the ``ecg`` file, the
JSON of the document (the 12 x 600 median beat as Python floats) and a catalog
commit for every 64 summaries cost four times ``analyze`` itself. So the stage
reads a batch's objects a run of rows at a time (`Store._stored_objects`), gets the
context with the UIDs (from the writer's rows, or the catch-up query), writes the
median beat as a float32 column, not JSON (`waveform.store.summaries`), and commits
up to 512 summaries at once on a second thread while the next batch is measured.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from waveform.errors import DurabilityError, WaveformError
from waveform.store.summaries import measure_one, summary_row, summary_table

if TYPE_CHECKING:
    from waveform.store.store import Store

__all__ = ["MeasureStage", "summary_row"]

log = logging.getLogger(__name__)

_STOP: Any = object()


class MeasureStage:
    """A thread that measures committed ECGs, and one that commits their summaries."""

    def __init__(
        self,
        store: Store,
        analyze: Callable[[Any], Any],
        version: str,
        *,
        batch: int = 512,
    ) -> None:
        self._store = store
        self._analyze = analyze
        self.version = version
        self._batch = batch
        #: (uid, its SUMMARY_CONTEXT columns or None: read them from the store).
        self._queue: queue.Queue[tuple[str, dict[str, Any] | None]] = queue.Queue()
        # One measured batch may wait while the previous one commits.
        self._commits: queue.Queue[tuple[list[str], pa.Table] | None] = queue.Queue(maxsize=1)
        self._done = threading.Condition()
        self._measured: set[str] = set()
        self._outstanding = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="waveform-measure", daemon=True)
        self._committer = threading.Thread(target=self._run_commits,
                                           name="waveform-measure-commit", daemon=True)
        self._thread.start()
        self._committer.start()

    def enqueue(self, uids: list[str], contexts: list[dict[str, Any]] | None = None) -> None:
        """Measure ``uids``; ``contexts`` (their `SUMMARY_CONTEXT` columns), when the
        caller has them, save reading them back."""
        with self._done:
            self._outstanding += len(uids)
        for i, u in enumerate(uids):
            self._queue.put((u, contexts[i] if contexts is not None else None))

    def catch_up(self) -> int:
        """Queue every stored ECG without a summary of this version (one indexed query of
        the locator index; their contexts are read with their objects); how many."""
        uids = self._store.unmeasured(self.version)
        self.enqueue(uids)
        return len(uids)

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
        self._committer.join()

    def _measure_one(self, uid: str, data: bytes | Exception,
                     context: dict[str, Any] | None) -> dict[str, Any]:
        from waveform.dicom import decode

        now = self._store.engine.clock()
        if isinstance(data, BaseException):
            raise data
        if context is None:
            context = self._store.ecg_context(uid)
        return measure_one(self._analyze, decode(data), uid, self.version, context, now)[0]

    def _take(self) -> tuple[list[tuple[str, dict[str, Any] | None]], bool]:
        """The next batch: what is queued (at least one item), up to the batch size."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        items = [first]
        while len(items) < self._batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return items, True
            items.append(item)
        return items, False

    def _run(self) -> None:
        try:
            while self.error is None:
                items, stop = self._take()
                if items:
                    self._measure_batch(items)
                if stop:
                    return
        finally:
            self._commits.put(None)

    def _measure_batch(self, items: list[tuple[str, dict[str, Any] | None]]) -> None:
        uids = [u for u, _ in items]
        objects = self._store.stored_objects(uids)
        rows = []
        for uid, context in items:
            try:
                rows.append(self._measure_one(uid, objects[uid], context))
            except (WaveformError, OSError) as e:  # unreadable now; catch-up retries later
                log.warning("ECG %s was not measured: %s", uid, e)
        self._commits.put((uids, summary_table(rows)))

    def _run_commits(self) -> None:
        while True:
            item = self._commits.get()
            if item is None:
                return
            uids, table = item
            if self.error is not None:  # stopped: nothing more is stored
                continue
            try:
                self._store.commit_summaries(table)
            except DurabilityError as e:
                log.error("measurement stage stopped: %s", e)
                with self._done:
                    self.error = e
                    self._done.notify_all()
                self._queue.put(_STOP)  # the measuring thread ends too
                continue
            except WaveformError as e:  # not stored; catch-up at the next start retries
                log.warning("summaries of %d ECGs not stored: %s", len(uids), e)
            with self._done:
                self._measured.update(uids)
                self._outstanding -= len(uids)
                self._done.notify_all()
