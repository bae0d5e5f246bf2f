"""The store's read path: objects, traces, summaries and search, by locator.

Every read asks the engine (`waveform.store.engine`) where an ECG's rows are (one
indexed query of the locator index) and reads just those rows; a locator that no
longer names the row (a compaction in between, here or on another server) is
looked up again in the lake.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import duckdb
import numpy as np

from waveform.errors import InvalidArgument, NotFound, StorageError, WaveformError
from waveform.store import queries as _q
from waveform.store import schema as _schema
from waveform.store.codec import EncodedSamples
from waveform.store.codec import decode_samples as decode_encoded
from waveform.store.engine import Engine
from waveform.store.lake import ALIAS
from waveform.store.locators import Entry
from waveform.store.records import channels_from_row, decode_samples, sha256

__all__ = ["MAX_TRACE_RATE_HZ", "MAX_TRACE_VALUES", "ReadPath"]

#: The highest rate a trace is resampled to (Hz): above any ECG or
#: electrophysiology acquisition rate a viewer can use.
MAX_TRACE_RATE_HZ = 20_000.0
#: The most samples (over all leads) one trace answer holds: 12 leads of 10 minutes
#: at 2 kHz.
MAX_TRACE_VALUES = 16_000_000

_WAVEFORM_META = [n for n in _schema.WAVEFORM.names if n != "samples"]


class ReadPath:
    """Reads of stored ECGs (thread-safe)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def stored_objects(self, uids: Sequence[str]) -> dict[str, bytes | Exception]:
        """Measurement hook: the original objects of ``uids`` (or why one cannot be read).

        Rows committed together are neighbours in their files, so their ``header``
        and ``waveform`` rows are read a row group at a time (`_read_rows`), not a
        row group per object; anything unexpected falls back to `get_dicom` for
        that object.
        """
        from waveform.dicom import join

        entries, missing = self._engine.entries(uids)
        out: dict[str, bytes | Exception] = dict(missing)
        heads = self._engine.read_rows([e.header for e in entries.values() if e.header[1] >= 0],
                                ["sop_instance_uid", "header"])
        groups = self._engine.read_rows([g for e in entries.values() for g in e.groups],
                                 ["sop_instance_uid", "retained", "dtype", "codec", "nbytes",
                                  "n_channels", "samples"])
        for uid, e in entries.items():
            head = heads.get(e.header)
            rows = [groups.get(g) for g in e.groups]
            try:
                if head is None or head["sop_instance_uid"] != uid or any(
                        r is None or r["sop_instance_uid"] != uid for r in rows):
                    out[uid] = self.get_dicom(uid)
                    continue
                parts = [decode_encoded(EncodedSamples(r["codec"], r["samples"], r["nbytes"]),
                                        np.dtype(r["dtype"]), r["n_channels"])
                         for r in rows if r is not None and r["retained"]]
                data = join(head["header"], parts)
                if sha256(data) != e.sha256:
                    out[uid] = self.get_dicom(uid)  # raises the damaged-copy error
                    continue
                out[uid] = data
            except (WaveformError, OSError) as err:  # this object only
                out[uid] = err
        return out

    def contains(self, uid: str) -> bool:
        return self._engine.locators.get(uid) is not None

    def unmeasured(self, version: str) -> list[str]:
        """Stored ECGs without a summary of analysis ``version`` (that the locator index
        knows of: the summaries this store and the servers beside it committed)."""
        return self._engine.locators.without_summary(version)

    def exams(self, column: str, value: str) -> list[dict[str, Any]]:
        """The stored ECGs whose ``column`` (``patient_id``, ``study_instance_uid``,
        ``accession_number``, or ``uid``: the SOP Instance UID) is ``value``: their
        ``ecg`` columns `locators.EXAM_COLUMNS`, one indexed query."""
        return self._engine.locators.exams(column, value)

    def uids(self) -> list[str]:
        """Every stored ECG's SOP Instance UID, in order (tests and tools: a query over
        the whole index)."""
        return self._engine.locators.uids()

    def _waveform_rows(
        self, e: Entry, columns: list[str], groups: Sequence[int]
    ) -> list[dict[str, Any]]:
        reader = self._engine.reader
        return [reader.read(e.groups[g][0], e.groups[g][1], columns)[0] for g in groups]

    def _dicom_parts(self, uid: str, e: Entry) -> tuple[bytes, list[bytes], str]:
        if e.header[1] < 0:
            raise NotFound(f"ECG {uid} is catalogued without its original object")
        head = self._engine.reader.read(e.header[0], e.header[1], ["header", "sop_instance_uid"])[0]
        if head["sop_instance_uid"] != uid:
            raise IndexError(f"locator of {uid} points at {head['sop_instance_uid']}")
        rows = self._waveform_rows(e, ["sop_instance_uid", "retained", "dtype", "codec",
                                       "nbytes", "n_channels", "samples"], range(len(e.groups)))
        parts = []
        for r in rows:
            if r["sop_instance_uid"] != uid:
                raise IndexError(f"locator of {uid} points at {r['sop_instance_uid']}")
            if r["retained"]:
                enc = EncodedSamples(r["codec"], r["samples"], r["nbytes"])
                parts.append(decode_encoded(enc, np.dtype(r["dtype"]), r["n_channels"]))
        return head["header"], parts, e.sha256

    def ecg_context(self, uid: str, columns: Sequence[str] = ()) -> dict[str, Any]:
        """``ecg`` columns of one ECG: those summary rows carry (`schema.SUMMARY_CONTEXT`)
        and any others named in ``columns``."""
        cols = _context_columns(columns)

        def fetch(e: Entry) -> dict[str, Any]:
            row = self._engine.reader.read(e.ecg[0], e.ecg[1], cols)[0]
            if row["sop_instance_uid"] != uid:
                raise IndexError(f"locator of {uid} points at {row['sop_instance_uid']}")
            return row

        out: dict[str, Any] = self._engine.read(uid, fetch)
        return out

    def ecg_contexts(self, uids: Sequence[str], columns: Sequence[str] = ()
                     ) -> dict[str, dict[str, Any] | Exception]:
        """`ecg_context` of many ECGs (or why one cannot be read), their ``ecg``
        rows read a row group at a time (`_read_rows`): ECGs committed together are
        neighbours there, and one read per row cost each new ECG a row group."""
        entries, missing = self._engine.entries(uids)
        out: dict[str, dict[str, Any] | Exception] = dict(missing)
        rows = self._engine.read_rows([e.ecg for e in entries.values()], _context_columns(columns))
        for uid, e in entries.items():
            row = rows.get(e.ecg)
            if row is not None and row["sop_instance_uid"] == uid:
                out[uid] = row
                continue
            try:  # moved since (compaction): one by one, with a fresh locator
                out[uid] = self.ecg_context(uid, columns)
            except (WaveformError, OSError, IndexError) as err:  # this ECG only
                out[uid] = err
        return {uid: out[uid] for uid in uids}

    def get_dicom(self, uid: str) -> bytes:
        """The original object, byte for byte (its SHA-256 is checked before it is returned)."""
        from waveform.dicom import join

        header, parts, digest = self._engine.read(uid, lambda e: self._dicom_parts(uid, e))
        data = join(header, parts)
        if sha256(data) != digest:
            raise StorageError(f"ECG {uid} reassembles to other bytes than were stored "
                               f"(SHA-256 {digest[:16]}...); the archive copy is damaged")
        return data

    def get_original(self, uid: str) -> tuple[str, bytes]:
        """The format and the file, byte for byte, of an ECG that came in a cart's own
        format (its SHA-256 is checked). `NotFound` when no such ECG is stored, or
        when it came as DICOM (then `get_dicom` is the original)."""
        self._engine.entry(uid)
        for attempt in (1, 2):  # a file compaction replaced meanwhile: ask the catalog again
            rows = self._engine.sql(f"SELECT format, sha256, filename, file_row_number FROM "
                             f"{ALIAS}.original WHERE sop_instance_uid = ?", [uid])
            if not rows:
                raise NotFound(f"ECG {uid} was ingested as DICOM; use GetDicom for its "
                               "original object")
            fmt, digest, path, row = rows[0]
            try:
                got = self._engine.reader.read(path, row, ["sop_instance_uid", "original"])[0]
                break
            except (OSError, IndexError):
                if attempt == 2:
                    raise
        data = bytes(got["original"])
        if got["sop_instance_uid"] != uid or sha256(data) != digest:
            raise StorageError(f"the original file of ECG {uid} reads back as other bytes than "
                               f"were stored (SHA-256 {digest[:16]}...); the archive copy is "
                               "damaged")
        return str(fmt), data

    def get_trace(
        self,
        uid: str,
        group: int = 0,
        leads: Sequence[str] | None = None,
        start_s: float = 0.0,
        duration_s: float | None = None,
        fs: float | None = None,
        units: str = "uV",
    ) -> _q.Trace:
        """Samples of multiplex group ``group``, sliced to ``leads`` and the window.

        Bounds (`MAX_TRACE_RATE_HZ`, `MAX_TRACE_VALUES`): every number must be finite,
        the window non-negative, the rate positive and at most `MAX_TRACE_RATE_HZ`,
        and the answer at most `MAX_TRACE_VALUES` samples over all its leads."""
        _check_window(start_s, duration_s, fs)
        if units not in ("uV", "raw"):
            raise InvalidArgument(f"units {units!r}: expected 'uV' or 'raw'")
        if units == "raw" and fs is not None:
            raise InvalidArgument("resampling (fs) gives µV; ask for units='uV' or no fs")

        def fetch(e: Entry) -> dict[str, Any]:
            if not 0 <= group < len(e.groups):
                raise InvalidArgument(f"ECG {uid} has {len(e.groups)} multiplex groups; no "
                                      f"group {group}")
            r = self._waveform_rows(e, [*_WAVEFORM_META, "samples"], [group])[0]
            if r["sop_instance_uid"] != uid:
                raise IndexError(f"locator of {uid} points at {r['sop_instance_uid']}")
            return r

        row: dict[str, Any] = self._engine.read(uid, fetch)
        raw = decode_samples(row)
        channels = channels_from_row(row["channels"], row["dtype"])
        names = [c.name for c in channels]
        if leads:
            missing = [name for name in leads if name not in names]
            if missing:
                raise InvalidArgument(f"ECG {uid} group {group} has no lead {missing[0]!r}; "
                                      f"it has {names}")
            idx = [names.index(name) for name in leads]
        else:
            idx = list(range(len(channels)))
        rate = float(row["sampling_frequency"])
        i0 = round(start_s * rate)
        n = raw.shape[1]
        i1 = n if duration_s is None else min(n, i0 + round(duration_s * rate))
        if i0 >= raw.shape[1]:
            raise InvalidArgument(f"start {start_s} s is past the end "
                                  f"({raw.shape[1] / rate:.3f} s)")
        sel = [channels[i] for i in idx]
        x = raw[idx, i0:i1]
        common = dict(sop_instance_uid=uid, group=group, label=row["label"] or "",
                      leads=tuple(names[i] for i in idx), start_s=i0 / rate)
        if units == "raw":
            return _q.Trace(**common, sampling_frequency=rate, units="raw",  # type: ignore[arg-type]
                            data=np.ascontiguousarray(x),
                            sensitivity=tuple(c.sensitivity for c in sel),
                            correction=tuple(c.correction for c in sel),
                            baseline=tuple(c.baseline for c in sel),
                            channel_units=tuple(c.units for c in sel))
        from waveform.dsp.scale import to_microvolts

        stored = [c.bits_stored for c in channels if c.bits_stored]
        # The same scaling as the printout and the analysis (`WaveformGroup.microvolts`):
        # G.711 codes expanded and Waveform Bits Stored sign-extended.
        uv = to_microvolts(
            x, [c.sensitivity for c in sel], [c.correction for c in sel],
            [c.baseline for c in sel], [c.units for c in sel], [c.padding for c in sel],
            interpretation=row["interpretation"] or "", bits_stored=min(stored, default=None),
        )
        out_n = x.shape[1] if fs is None else math.ceil(x.shape[1] * float(fs) / rate)
        if out_n * len(idx) > MAX_TRACE_VALUES:
            raise InvalidArgument(
                f"the trace asked for would hold {out_n * len(idx):,} samples ({len(idx)} leads "
                f"x {out_n:,}); at most {MAX_TRACE_VALUES:,} are sent in one answer: ask for "
                "fewer leads, a shorter window or a lower rate")
        if fs is not None and fs != rate:
            from waveform.dsp.resample import resample

            uv = np.asarray(resample(uv, rate, fs), dtype=np.float32)
            rate = float(fs)
        return _q.Trace(**common, sampling_frequency=rate, units="uV", data=uv)  # type: ignore[arg-type]

    def get_summary(self, uid: str, analysis_version: str | None = None) -> dict[str, Any] | None:
        """The latest summary of ``uid`` (of ``analysis_version`` if given), or None."""
        self._engine.entry(uid)
        if analysis_version is not None:
            rows = self._engine.sql(
                f"SELECT document, median_beat FROM {ALIAS}.summary WHERE sop_instance_uid = ? "
                "AND analysis_version = ? ORDER BY measured_at DESC LIMIT 1",
                [uid, analysis_version])
        else:
            rows = self._engine.sql(
                f"SELECT document, median_beat FROM {ALIAS}.summary WHERE sop_instance_uid = ? "
                "ORDER BY analysis_version = ? DESC, measured_at DESC LIMIT 1",
                [uid, self._engine.analysis_version or ""])
        if not rows:
            return None
        from waveform.store.summaries import summary_document

        try:
            return summary_document(rows[0][0], rows[0][1])
        except ValueError as e:  # a median beat that does not fit its leads: damaged
            raise StorageError(f"the summary of {uid} cannot be read: {e}") from e

    def search(self, query: _q.SearchQuery | None = None, **filters: Any) -> _q.Page:
        """One page of ECGs matching ``query`` (or keyword filters, see `SearchQuery`)."""
        if query is None:
            equals = tuple((k, filters.pop(k)) for k in list(filters) if k in _q.EQUALS)
            ranges = tuple(filters.pop("ranges", ()))
            query = _q.SearchQuery(equals=equals, ranges=ranges, **filters)
        sql, params, two_phase = _q.search_sql(query, self._engine.analysis_version)
        cur = self._engine.cursor()
        try:
            res = cur.execute(sql, params)
            names = [d[0] for d in res.description]
            page = _q.page_from(res.fetchall(), names, query.limit)
            if two_phase and (query.analysis_version in (None, self._engine.analysis_version)
                              and self._engine.analysis_version is not None):
                self.attach_summaries(page.rows)
            elif two_phase:
                version = query.analysis_version or self._engine.analysis_version
                found: dict[str, tuple[Any, ...]] = {}
                s_names = list(_q.SUMMARY_RESULT)
                plan = _q.summaries_sql(page.rows, version)
                if plan is not None:
                    res = cur.execute(*plan)
                    s_names = [d[0] for d in res.description][2:]
                    for r in res.fetchall():  # ordered by measured_at: the latest wins
                        found[r[0]] = r[2:]
                for row in page.rows:
                    values = found.get(row["sop_instance_uid"])
                    for i, n in enumerate(s_names):
                        row[n] = None if values is None else values[i]
        except duckdb.Error as e:
            raise StorageError(f"search failed: {e}") from e
        return page

    def attach_summaries(self, rows: list[dict[str, Any]]) -> None:
        """Add to each row (a dict with ``sop_instance_uid``) the searchable measurements
        of its current summary (`queries.SUMMARY_RESULT`; None where there is none),
        read directly by locator (also phase two of a search)."""
        cols = ["sop_instance_uid", *_q.SUMMARY_RESULT]
        found = (self._engine.locators.summaries([row["sop_instance_uid"] for row in rows],
                                          self._engine.analysis_version)
                 if self._engine.analysis_version is not None else {})
        locs = [found.get(row["sop_instance_uid"]) for row in rows]
        # A row moved by another process is not found here: the catalog is asked.
        fetched = self._engine.read_rows([loc for loc in locs if loc is not None], cols)
        for row, loc in zip(rows, locs, strict=True):
            uid = row["sop_instance_uid"]
            values: dict[str, Any] = {}
            if loc is not None:
                values = fetched.get(loc, {})
                if values.get("sop_instance_uid") != uid:
                    got = self._engine.sql(
                        f"SELECT {', '.join(cols)} FROM {ALIAS}.summary WHERE "
                        "sop_instance_uid = ? AND analysis_version = ? "
                        "ORDER BY measured_at DESC LIMIT 1", [uid, self._engine.analysis_version])
                    values = dict(zip(cols, got[0], strict=True)) if got else {}
            for c in _q.SUMMARY_RESULT:
                row[c] = values.get(c)


def _check_window(start_s: float, duration_s: float | None, fs: float | None) -> None:
    """`Store.get_trace`'s numbers: finite, and within the stated bounds."""
    named = (("start_s", start_s), ("duration_s", duration_s), ("sampling_frequency", fs))
    for name, value in named:
        if value is not None and not math.isfinite(value):
            raise InvalidArgument(f"{name} is {value}; it must be a finite number")
    if start_s < 0:
        raise InvalidArgument(f"start_s is {start_s} s; it must be 0 or more")
    if duration_s is not None and duration_s <= 0:
        raise InvalidArgument(f"duration_s is {duration_s} s; it must be positive (or "
                              "absent: to the end)")
    if fs is not None and not 0 < fs <= MAX_TRACE_RATE_HZ:
        raise InvalidArgument(f"sampling_frequency is {fs} Hz; it must be above 0 and at "
                              f"most {MAX_TRACE_RATE_HZ:g} Hz")


def _context_columns(columns: Sequence[str]) -> list[str]:
    """The ``ecg`` columns `Store.ecg_context` reads: the UID (to check the
    locator), those summary rows carry, and ``columns``, each once."""
    return list(dict.fromkeys(["sop_instance_uid", *_schema.SUMMARY_CONTEXT, *columns]))
