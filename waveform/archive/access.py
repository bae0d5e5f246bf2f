"""One call's access: the role check, the per-object decisions, and its audit event.

A handler opens an `Access` for its call, asks it about each ECG or document it
would return, and gets the object or the right error; the event (with the
rules that decided) is written before any data leaves:

    with archive.access(identity, purpose, "trace") as acc:
        ref = acc.ecg(uid)          # NotFound (audited as denied) when hidden
        acc.write()                 # durable before the first chunk
        ...

On leaving the block the event is written if it was not yet: with outcome
``allowed``, or ``denied``/``failed`` when the call ends in an error. If the event
cannot be written the call fails (`StorageError`) and returns nothing.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, NoReturn

from waveform.archive.audit import AuditEvent
from waveform.archive.consent import ConsentState
from waveform.archive.documents import DocumentMeta
from waveform.archive.patients import ExamRef
from waveform.archive.policy import Decision, Purpose, decide, require_role
from waveform.errors import AccessDenied, InvalidArgument, NotFound, WaveformError
from waveform.model import Identity

if TYPE_CHECKING:
    from waveform.archive.archive import Archive

__all__ = ["Access"]


class Access:
    def __init__(self, archive: Archive, identity: Identity, purpose: Purpose,
                 action: str, *, uid: str = "", document_id: str = "",
                 patient_id: str = "") -> None:
        """``uid``/``document_id``/``patient_id``: what the call is about, so that even
        a refusal by role is recorded against the patient concerned."""
        self.archive = archive
        self.identity = identity
        self.purpose = purpose
        self.action = action
        self.event = AuditEvent(
            user=identity.user, organisation=identity.organisation, role=identity.role,
            action=action, outcome="allowed", rule="", purpose=purpose.name,
            reason=purpose.reason)
        self._rules: list[str] = []
        self._written = False
        #: The ECG the call is about, looked up once (None: unknown, or no ECG named).
        self._about: ExamRef | None = None
        if uid:
            self.objects(uid)
            self._about = archive.patients.exam(uid)
            self.patient(self._about.patient_id if self._about else "")
        if document_id:
            self.objects(document_id)
            meta = archive.documents.latest(document_id)
            self.patient(meta.patient_id if meta else "")
        self.patient(patient_id)
        try:
            require_role(identity, action)
        except AccessDenied as refused:
            self.deny("role", refused)
        if purpose.emergency and identity.role != "clinician":
            self.deny("role", InvalidArgument("only a clinician may state the emergency "
                                              "purpose"))

    # ---------------------------------------------------------------- context
    def __enter__(self) -> Access:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self.write()
            return
        if self._written:
            return
        hidden = isinstance(exc, (AccessDenied, NotFound))
        self.event.outcome = "denied" if hidden else "failed"
        if not self.event.rule:
            self.event.rule = "+".join(dict.fromkeys(self._rules)) or (
                "not-found" if isinstance(exc, NotFound) else type(exc).__name__)
        try:
            self.write()
        except WaveformError:
            pass  # the call fails anyway, with its own error

    # ---------------------------------------------------------------- events
    def patient(self, patient_id: str) -> None:
        if patient_id and not self.event.patient_id:
            self.event.patient_id = patient_id

    def objects(self, *ids: str) -> None:
        have = self.event.objects
        have.extend(i for i in dict.fromkeys(ids) if i and i not in have)

    def allow(self, decision: Decision) -> None:
        self._rules.append(decision.rule)
        if decision.emergency:
            self.event.emergency = True

    def deny(self, rule: str, exc: WaveformError) -> NoReturn:
        self.event.outcome = "denied"
        self.event.rule = rule
        self.write()
        raise exc

    def write(self) -> None:
        """Make the event durable now (before data is returned); once per call."""
        if self._written:
            return
        if not self.event.rule:
            self.event.rule = "+".join(dict.fromkeys(self._rules)) or self.action
        self.archive.audit.append(self.event)
        self._written = True

    # ---------------------------------------------------------------- decisions
    def state(self, patient_id: str) -> ConsentState:
        return self.archive.consent.state(patient_id)

    def decide(self, controller: str, study_instance_uid: str, patient_id: str) -> Decision:
        return decide(self.identity.organisation, controller, study_instance_uid,
                      self.state(patient_id), self.purpose)

    def ecg(self, uid: str) -> ExamRef:
        """The ECG ``uid`` if the caller may see it; `NotFound` (audited) if not."""
        if not uid:
            raise InvalidArgument("sop_instance_uid is empty")
        self.objects(uid)
        # The examination comes from the locator index's stored rows: found is stored.
        ref = self._about if self._about is not None and \
            self._about.sop_instance_uid == uid else self.archive.patients.exam(uid)
        if ref is None:
            self.event.outcome = "failed"
            self.deny("not-found", NotFound(f"no ECG {uid} is visible to "
                                            f"{self.identity.describe()}"))
        self.patient(ref.patient_id)
        d = self.decide(ref.organisation, ref.study_instance_uid, ref.patient_id)
        if not d.allowed:
            self.deny(d.rule, NotFound(f"no ECG {uid} is visible to "
                                       f"{self.identity.describe()}"))
        self.allow(d)
        return ref

    def document_decision(self, meta: DocumentMeta, study_instance_uid: str) -> Decision:
        return self.decide(meta.organisation, meta.study_instance_uid or study_instance_uid,
                           meta.patient_id)
