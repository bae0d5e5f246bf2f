"""The documents of an examination: referral, examination note, physician's statement.

Each version is a row of the catalog's ``document`` table (a corrected statement
is version n+1; earlier versions stay); an early release to the patient is a row
of ``document_release``. What the policy and the citizen's view need (everything
but the text and the CDA original) is kept in memory; text is read on demand.
Every server applies the rows in the order the catalog committed them
(`waveform.archive.refresh`), so all hold the same documents within a second.

A version number is unique: when two servers revise a document at once, both may
commit version n+1; the one the catalog committed first is version n+1 everywhere,
the other row is ignored by every server, and its writer answers `Conflict`.

A document names its examination by Study Instance UID, or only by accession
number when it arrives before the ECG (the referral usually does): the accession
number links it to the ECG of the same organisation with that accession number.
"""

from __future__ import annotations

import datetime as dt
import logging
import posixpath
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from waveform.archive.refresh import Refresher, Row
from waveform.archive.tables import DOCUMENT, RELEASE
from waveform.errors import Conflict, InvalidArgument, NotFound, StorageError
from waveform.store import Store

__all__ = ["KINDS", "DocumentMeta", "Documents", "ReleaseDelays"]

#: Document kinds, as the API names them.
KINDS = ("referral", "examination_note", "statement")
_MAX_TEXT = 4 << 20

log = logging.getLogger("waveform.archive")


@dataclass(frozen=True, slots=True)
class ReleaseDelays:
    """How long after its time a document waits before the patient sees it:
    ``default_days``, or per organisation and kind (``{"org": {"statement": 7}}``)."""

    default_days: float = 14.0
    by_organisation: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for org, kinds in self.by_organisation.items():
            for kind, days in kinds.items():
                if kind not in KINDS:
                    raise InvalidArgument(f"release delay of {org}: unknown kind {kind!r} "
                                          f"(expected {', '.join(KINDS)})")
                if days < 0:
                    raise InvalidArgument(f"release delay of {org} {kind}: {days} days < 0")

    def delay(self, organisation: str, kind: str) -> dt.timedelta:
        days = self.by_organisation.get(organisation, {}).get(kind, self.default_days)
        return dt.timedelta(days=days)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ReleaseDelays:
        """``{"default_days": 14, "organisations": {"org-a": {"statement": 7}}}``"""
        try:
            return cls(float(doc.get("default_days", 14.0)),
                       {str(o): {str(k): float(d) for k, d in kinds.items()}
                        for o, kinds in dict(doc.get("organisations", {})).items()})
        except (TypeError, ValueError, AttributeError) as e:
            raise InvalidArgument(f"release delays: {e}") from None


@dataclass(frozen=True, slots=True)
class DocumentMeta:
    document_id: str
    version: int
    kind: str
    patient_id: str
    study_instance_uid: str
    accession_number: str
    visit_id: str
    organisation: str
    author: str
    authored_at: dt.datetime
    stored_at: dt.datetime
    title: str


class Documents:
    """Every document's versions (metadata in memory), and their releases."""

    def __init__(self, store: Store, refresher: Refresher) -> None:
        self._store = store
        self._table = store.table("document")
        self._refresher = refresher
        self._lock = threading.Lock()
        #: Held by a revision from reading the latest version to its commit, so that
        #: this server never races itself (other servers are refused; see `attach`).
        self._writing = threading.Lock()
        self._versions: dict[str, list[DocumentMeta]] = {}
        self._by_study: dict[str, set[str]] = {}
        self._by_accession: dict[tuple[str, str], set[str]] = {}
        self._by_patient: dict[str, set[str]] = {}
        self._released: dict[str, dt.datetime] = {}
        refresher.follow(self)

    # ------------------------------------------------------- following the catalog
    def followed(self) -> dict[str, Sequence[str]]:
        return {"document": _META_COLUMNS, "document_release": _RELEASE_COLUMNS}

    def load(self, snapshot: int) -> None:
        self.apply("document", self._refresher.rows("document", _META_COLUMNS, -1, snapshot))
        self.apply("document_release", self._refresher.rows(
            "document_release", _RELEASE_COLUMNS, -1, snapshot))

    def apply(self, table: str, rows: list[Row]) -> None:
        """Rows committed after the state's snapshot, in commit order. A version that
        is already known (another server's concurrent revision, committed later) is
        not a version: the first committed stands."""
        with self._lock:
            if table == "document_release":
                for _, _, did, at in rows:
                    had = self._released.get(did)
                    self._released[did] = at if had is None else min(had, at)
                return
            for row in rows:
                d: dict[str, Any] = {k: ("" if v is None else v)
                                     for k, v in zip(_META_COLUMNS, row[2:], strict=True)}
                meta = DocumentMeta(**d)
                known = self._versions.get(meta.document_id)
                if known and known[-1].version >= meta.version:
                    continue
                self._index(meta)

    def _index(self, meta: DocumentMeta) -> None:
        self._versions.setdefault(meta.document_id, []).append(meta)
        if meta.study_instance_uid:
            self._by_study.setdefault(meta.study_instance_uid, set()).add(meta.document_id)
        if meta.accession_number:
            self._by_accession.setdefault((meta.organisation, meta.accession_number),
                                          set()).add(meta.document_id)
        self._by_patient.setdefault(meta.patient_id, set()).add(meta.document_id)

    # ---------------------------------------------------------------- writing
    def attach(self, *, kind: str, patient_id: str, study_instance_uid: str,
               accession_number: str, visit_id: str, organisation: str, author: str,
               authored_at: dt.datetime, stored_at: dt.datetime, stored_by: str,
               title: str, text: str, cda_xml: bytes, document_id: str = "") -> DocumentMeta:
        """Store a new document, or (``document_id``) a new version of one of
        ``organisation``'s documents. Raises `NotFound` for another's, and `Conflict`
        when another server committed the same version first (read it and revise the
        latest)."""
        if kind not in KINDS:
            raise InvalidArgument(f"document kind {kind!r} is not one of {', '.join(KINDS)}")
        if not patient_id:
            raise InvalidArgument("a document needs the patient_id it is about")
        if not study_instance_uid and not accession_number:
            raise InvalidArgument("a document needs its examination: study_instance_uid or "
                                  "accession_number")
        if not text and not cda_xml:
            raise InvalidArgument("a document needs text or the CDA original")
        if len(text.encode()) + len(cda_xml) > _MAX_TEXT:
            raise InvalidArgument(f"a document may hold at most {_MAX_TEXT >> 20} MiB")
        if cda_xml and not cda_xml.lstrip().startswith(b"<"):
            raise InvalidArgument("cda_xml is not XML (an HL7 CDA R2 document is)")
        with self._writing:
            version = 1
            if document_id:
                self._refresher.refresh()
                prior = self.versions(document_id)
                if not prior or prior[-1].organisation != organisation:
                    raise NotFound(f"no document {document_id!r} of {organisation} to revise")
                if prior[-1].patient_id != patient_id:
                    raise InvalidArgument(f"document {document_id} is about another patient; "
                                          "a new version cannot change the patient")
                version = prior[-1].version + 1
            else:
                document_id = uuid.uuid4().hex
            meta = DocumentMeta(document_id, version, kind, patient_id, study_instance_uid,
                                accession_number, visit_id, organisation, author, authored_at,
                                stored_at, title)
            row = {**{f: getattr(meta, f) for f in meta.__slots__},
                   "stored_by": stored_by, "text": text, "cda_xml": cda_xml or None}
            written = self._store.commit_rows(
                {"document": pa.Table.from_pylist([row], schema=DOCUMENT)})["document"]
            if version > 1:
                self._check_first(meta, written)
            else:
                self._apply_own()
            return meta

    def _check_first(self, meta: DocumentMeta, written: str) -> None:
        """Apply the revision in file ``written``; `Conflict` unless it is the first
        committed version ``meta.version`` of its document (another server may have
        committed the same version number since this one read the latest)."""
        try:
            self._refresher.refresh()
            first = self._store.sql(
                f"SELECT filename FROM {self._table.sql} WHERE document_id = ? AND version = ? "
                "ORDER BY snapshot_id, rowid LIMIT 1", [meta.document_id, meta.version])
        except StorageError as e:
            raise StorageError(
                f"version {meta.version} of document {meta.document_id} was committed, but "
                f"the catalog did not answer whether another server's revision came first "
                f"({e}); read the document before revising it again") from e
        if not first or posixpath.basename(first[0][0]) != posixpath.basename(written):
            winner = self.versions(meta.document_id)
            by = f" by {winner[-1].author}" if winner and winner[-1].author else ""
            raise Conflict(f"document {meta.document_id} was revised on another server at the "
                           f"same time: its version {meta.version} is that revision{by}; "
                           "read it, then revise the latest version")

    def _apply_own(self) -> None:
        """Apply a change this server just committed (in commit order, with every change
        before it); if the catalog does not answer now, the next refresh does it."""
        try:
            self._refresher.refresh()
        except StorageError as e:
            log.warning("a document change is committed; it applies when the catalog "
                        "answers again: %s", e)

    def release(self, document_id: str, organisation: str, user: str, at: dt.datetime
                ) -> dt.datetime:
        """Show ``document_id`` to the patient from ``at`` (the first release stands)."""
        self._refresher.ensure_fresh()
        with self._lock:
            if document_id in self._released:
                return self._released[document_id]
        row = pa.Table.from_pylist([{"document_id": document_id,
                                     "organisation": organisation, "released_by": user,
                                     "released_at": at}], schema=RELEASE)
        self._store.commit_rows({"document_release": row})
        self._apply_own()
        with self._lock:
            return min(at, self._released.get(document_id, at))

    # ---------------------------------------------------------------- reading
    def versions(self, document_id: str) -> list[DocumentMeta]:
        self._refresher.ensure_fresh()
        with self._lock:
            return list(self._versions.get(document_id, ()))

    def latest(self, document_id: str) -> DocumentMeta | None:
        self._refresher.ensure_fresh()
        with self._lock:
            v = self._versions.get(document_id)
            return v[-1] if v else None

    def for_examination(self, study_instance_uid: str,
                        accessions: Iterable[tuple[str, str]] = ()) -> list[str]:
        """Ids of the documents of a study, and of those linked only by an
        (organisation, accession number) of its ECGs."""
        self._refresher.ensure_fresh()
        with self._lock:
            ids = set(self._by_study.get(study_instance_uid, ())) if study_instance_uid else set()
            for key in accessions:
                for did in self._by_accession.get(key, ()):
                    latest = self._versions[did][-1]
                    if not latest.study_instance_uid or \
                            latest.study_instance_uid == study_instance_uid:
                        ids.add(did)
        return sorted(ids)

    def for_patient(self, patient_id: str) -> list[str]:
        self._refresher.ensure_fresh()
        with self._lock:
            return sorted(self._by_patient.get(patient_id, ()))

    def visible_from(self, meta: DocumentMeta, delays: ReleaseDelays) -> dt.datetime:
        """When the patient may see ``meta``: its time plus the delay, or its release."""
        at = meta.authored_at + delays.delay(meta.organisation, meta.kind)
        self._refresher.ensure_fresh()
        with self._lock:
            released = self._released.get(meta.document_id)
        return min(at, released) if released is not None else at

    def texts(self, keys: Iterable[tuple[str, int]], with_cda: bool = False
              ) -> dict[tuple[str, int], tuple[str, bytes]]:
        """(text, CDA original) of each (document_id, version)."""
        keys = list(keys)
        if not keys:
            return {}
        ids = sorted({k[0] for k in keys})
        cda = "cda_xml" if with_cda else "NULL"
        # The first committed row of a version is the version (see `apply`).
        rows = self._store.sql(
            f"SELECT document_id, version, text, {cda} FROM {self._table.sql} WHERE "
            f"document_id IN ({', '.join('?' * len(ids))}) QUALIFY row_number() OVER "
            "(PARTITION BY document_id, version ORDER BY snapshot_id, rowid) = 1", ids)
        want = set(keys)
        return {(d, v): (t or "", bytes(c) if c is not None else b"")
                for d, v, t, c in rows if (d, v) in want}

    def with_study(self, meta: DocumentMeta, study_instance_uid: str) -> DocumentMeta:
        """``meta`` as linked to ``study_instance_uid`` (a document that came first)."""
        return meta if meta.study_instance_uid else replace(
            meta, study_instance_uid=study_instance_uid)


_META_COLUMNS = tuple(f.name for f in DOCUMENT if f.name not in ("text", "cda_xml", "stored_by"))
_RELEASE_COLUMNS = ("document_id", "released_at")
