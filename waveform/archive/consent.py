"""The patient's choices: consent to disclosure, and denials.

State is kept in memory for the policy (every read asks it) and made durable as
event rows in the catalog (``consent``, ``denial``) before a change is answered;
on open the events are replayed. A denial covers either every ECG and document
an organisation archived, or one examination (Study Instance UID).
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from dataclasses import dataclass, field, replace

import pyarrow as pa

from waveform.archive.tables import CONSENT, DENIAL, next_seq
from waveform.errors import InvalidArgument, NotFound
from waveform.store import Store
from waveform.store.lake import ALIAS

__all__ = ["ConsentRegistry", "ConsentState", "Denial"]


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

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._states: dict[str, ConsentState] = {}
        self._load()

    def _load(self) -> None:
        states: dict[str, ConsentState] = {}
        for patient, granted, at in self._store.sql(
                f"SELECT patient_id, granted, changed_at FROM {ALIAS}.consent ORDER BY seq"):
            states[patient] = replace(states.get(patient, ConsentState(patient)),
                                      granted=bool(granted), changed_at=at)
        open_denials: dict[str, dict[str, Denial]] = {}
        for did, patient, change, org, study, at in self._store.sql(
                "SELECT denial_id, patient_id, change, organisation, study_instance_uid, "
                f"changed_at FROM {ALIAS}.denial ORDER BY seq"):
            mine = open_denials.setdefault(patient, {})
            if change == "add":
                mine[did] = Denial(did, org or "", study or "", at)
            else:
                mine.pop(did, None)
        for patient, denials in open_denials.items():
            states[patient] = replace(states.get(patient, ConsentState(patient)),
                                      denials=tuple(denials.values()))
        self._states = states

    def state(self, patient_id: str) -> ConsentState:
        with self._lock:
            return self._states.get(patient_id) or ConsentState(patient_id)

    def set_consent(self, patient_id: str, granted: bool, user: str, at: dt.datetime
                    ) -> ConsentState:
        row = pa.Table.from_pylist(
            [{"seq": next_seq(), "patient_id": patient_id, "granted": granted, "changed_at": at,
              "changed_by": user}], schema=CONSENT)
        with self._lock:
            self._store.commit_rows({"consent": row})
            new = replace(self._states.get(patient_id) or ConsentState(patient_id),
                          granted=granted, changed_at=at)
            self._states[patient_id] = new
            return new

    def add_denial(self, patient_id: str, organisation: str, study_instance_uid: str,
                   user: str, at: dt.datetime) -> ConsentState:
        if bool(organisation) == bool(study_instance_uid):
            raise InvalidArgument("a denial names exactly one of organisation or "
                                  "study_instance_uid")
        denial = Denial(uuid.uuid4().hex, organisation, study_instance_uid, at)
        row = pa.Table.from_pylist([{
            "seq": next_seq(), "denial_id": denial.denial_id, "patient_id": patient_id,
            "change": "add",
            "organisation": organisation or None, "study_instance_uid": study_instance_uid or None,
            "changed_at": at, "changed_by": user}], schema=DENIAL)
        with self._lock:
            self._store.commit_rows({"denial": row})
            old = self._states.get(patient_id) or ConsentState(patient_id)
            new = replace(old, denials=(*old.denials, denial))
            self._states[patient_id] = new
            return new

    def remove_denial(self, patient_id: str, denial_id: str, user: str, at: dt.datetime
                      ) -> ConsentState:
        with self._lock:
            old = self._states.get(patient_id) or ConsentState(patient_id)
            if not any(d.denial_id == denial_id for d in old.denials):
                raise NotFound(f"patient {patient_id} has no denial {denial_id!r} in force")
            row = pa.Table.from_pylist([{
                "seq": next_seq(), "denial_id": denial_id, "patient_id": patient_id,
                "change": "remove",
                "organisation": None, "study_instance_uid": None, "changed_at": at,
                "changed_by": user}],
                schema=DENIAL)
            self._store.commit_rows({"denial": row})
            new = replace(old, denials=tuple(d for d in old.denials if d.denial_id != denial_id))
            self._states[patient_id] = new
            return new
