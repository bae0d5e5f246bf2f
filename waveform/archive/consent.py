"""The patient's choices: consent to disclosure, and denials.

State is kept in memory for the policy (every read asks it) and made durable as
event rows in the catalog (``consent``, ``denial``) before a change is answered.
Every server applies the rows in the order the catalog committed them
(`waveform.archive.refresh`), its own changes included, so that all servers hold
the same state within a second of a change, and none answers from an older one.
A denial covers either every ECG and document an organisation archived, or one
examination (Study Instance UID).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import pyarrow as pa

from waveform.archive.refresh import Refresher, Row
from waveform.archive.tables import CONSENT, DENIAL, next_seq
from waveform.errors import InvalidArgument, NotFound, StorageError
from waveform.store import Store

__all__ = ["ConsentRegistry", "ConsentState", "Denial"]

log = logging.getLogger("waveform.archive")


@dataclass(frozen=True, slots=True)
class Denial:
    denial_id: str
    organisation: str
    study_instance_uid: str
    since: dt.datetime

    def covers(self, organisation: str, study_instance_uid: str) -> bool:
        if self.organisation:
            return self.organisation == organisation
        return bool(study_instance_uid) and self.study_instance_uid == study_instance_uid


@dataclass(frozen=True, slots=True)
class ConsentState:
    patient_id: str
    granted: bool = False
    changed_at: dt.datetime | None = None
    denials: tuple[Denial, ...] = field(default_factory=tuple)

    def denial_for(self, organisation: str, study_instance_uid: str) -> Denial | None:
        """The first denial that covers an object of ``organisation`` in that study."""
        for d in self.denials:
            if d.covers(organisation, study_instance_uid):
                return d
        return None

    @property
    def denied_organisations(self) -> tuple[str, ...]:
        return tuple(d.organisation for d in self.denials if d.organisation)

    @property
    def denied_studies(self) -> tuple[str, ...]:
        return tuple(d.study_instance_uid for d in self.denials if d.study_instance_uid)


class ConsentRegistry:
    """Every patient's current choices; changes are committed before they apply."""

    def __init__(self, store: Store, refresher: Refresher) -> None:
        self._store = store
        self._refresher = refresher
        self._lock = threading.Lock()
        self._states: dict[str, ConsentState] = {}
        refresher.follow(self)

    # ------------------------------------------------------- following the catalog
    def followed(self) -> dict[str, Sequence[str]]:
        return {"consent": _CONSENT_COLUMNS, "denial": _DENIAL_COLUMNS}

    def load(self, snapshot: int) -> None:
        """The state as of ``snapshot``: each patient's last consent row, and the denials
        added and never removed (what replaying every row gives, without the replay)."""
        self.apply("consent", self._refresher.rows("consent", _CONSENT_COLUMNS, -1, snapshot,
                                                   last_of="patient_id"))
        denials = self._store.table("denial").sql
        self.apply("denial", self._refresher.rows(
            "denial", _DENIAL_COLUMNS, -1, snapshot,
            where="change = 'add' AND denial_id NOT IN (SELECT denial_id FROM "
                  f"{denials} WHERE change = 'remove' AND snapshot_id <= ?)",
            params=[snapshot]))

    def apply(self, table: str, rows: list[Row]) -> None:
        """Rows committed after the state's snapshot, in commit order."""
        with self._lock:
            if table == "consent":
                for _, _, patient, granted, at in rows:
                    self._states[patient] = replace(
                        self._states.get(patient) or ConsentState(patient),
                        granted=bool(granted), changed_at=at)
                return
            for _, _, did, patient, change, org, study, at in rows:
                old = self._states.get(patient) or ConsentState(patient)
                kept = tuple(d for d in old.denials if d.denial_id != did)
                if change == "add":
                    kept = (*kept, Denial(did, org or "", study or "", at))
                self._states[patient] = replace(old, denials=kept)

    # ---------------------------------------------------------------- reading
    def state(self, patient_id: str) -> ConsentState:
        """``patient_id``'s choices as every server knows them (`StorageError` if this
        server cannot be sure it has the latest)."""
        self._refresher.ensure_fresh()
        with self._lock:
            return self._states.get(patient_id) or ConsentState(patient_id)

    # ---------------------------------------------------------------- writing
    def set_consent(self, patient_id: str, granted: bool, user: str, at: dt.datetime
                    ) -> ConsentState:
        row = pa.Table.from_pylist(
            [{"seq": next_seq(), "patient_id": patient_id, "granted": granted, "changed_at": at,
              "changed_by": user}], schema=CONSENT)
        self._store.commit_rows({"consent": row})
        return self._committed(patient_id, lambda s: replace(s, granted=granted,
                                                              changed_at=at))

    def add_denial(self, patient_id: str, organisation: str, study_instance_uid: str,
                   user: str, at: dt.datetime) -> ConsentState:
        """Deny ``organisation`` or one study; the new denial is the last of the state
        answered."""
        if bool(organisation) == bool(study_instance_uid):
            raise InvalidArgument("a denial names exactly one of organisation or "
                                  "study_instance_uid")
        denial = Denial(uuid.uuid4().hex, organisation, study_instance_uid, at)
        row = pa.Table.from_pylist([{
            "seq": next_seq(), "denial_id": denial.denial_id, "patient_id": patient_id,
            "change": "add",
            "organisation": organisation or None, "study_instance_uid": study_instance_uid or None,
            "changed_at": at, "changed_by": user}], schema=DENIAL)
        self._store.commit_rows({"denial": row})
        state = self._committed(patient_id, lambda s: replace(s, denials=(*s.denials, denial)))
        return replace(state, denials=(*(d for d in state.denials
                                         if d.denial_id != denial.denial_id), denial))

    def remove_denial(self, patient_id: str, denial_id: str, user: str, at: dt.datetime
                      ) -> ConsentState:
        if not any(d.denial_id == denial_id for d in self.state(patient_id).denials):
            raise NotFound(f"patient {patient_id} has no denial {denial_id!r} in force")
        row = pa.Table.from_pylist([{
            "seq": next_seq(), "denial_id": denial_id, "patient_id": patient_id,
            "change": "remove",
            "organisation": None, "study_instance_uid": None, "changed_at": at,
            "changed_by": user}],
            schema=DENIAL)
        self._store.commit_rows({"denial": row})
        return self._committed(patient_id, lambda s: replace(
            s, denials=tuple(d for d in s.denials if d.denial_id != denial_id)))

    def _committed(self, patient_id: str,
                   change: Callable[[ConsentState], ConsentState]) -> ConsentState:
        """The state after a change just committed: applied in commit order with every
        change before it. If the catalog does not answer now, the change (durable
        already) applies at the next refresh, and the answer is the state known, with
        ``change`` made."""
        try:
            self._refresher.refresh()
        except StorageError as e:
            log.warning("a consent change of %s is committed; it applies when the "
                        "catalog answers again: %s", patient_id, e)
            with self._lock:
                return change(self._states.get(patient_id) or ConsentState(patient_id))
        with self._lock:
            return self._states.get(patient_id) or ConsentState(patient_id)


_CONSENT_COLUMNS = ("patient_id", "granted", "changed_at")
_DENIAL_COLUMNS = ("denial_id", "patient_id", "change", "organisation", "study_instance_uid",
                   "changed_at")
