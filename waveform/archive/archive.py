"""The archive's rules over the store: `Archive` holds the consent registry, the
documents, the patient index and the audit trail, and answers the calls that
combine them (a patient's recent ECGs, a citizen's examinations, documents of
an examination), each through an `Access` so that every answer is decided by the
policy and audited.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Any

from waveform.archive.access import Access
from waveform.archive.audit import Trail, open_trail
from waveform.archive.clock import Clock, utcnow
from waveform.archive.consent import ConsentRegistry, ConsentState
from waveform.archive.documents import DocumentMeta, Documents, ReleaseDelays
from waveform.archive.patients import ExamRef, PatientIndex
from waveform.archive.policy import Decision, Purpose, reaches_others
from waveform.archive.refresh import Refresher
from waveform.archive.tables import TABLES
from waveform.dicom.codes import SOP_CLASSES
from waveform.errors import AccessDenied, InvalidArgument, NotFound
from waveform.model import Identity
from waveform.store import Store, Visibility

__all__ = ["Archive", "DocumentView", "Examination", "examination_type", "rhythm"]


def examination_type(ref: ExamRef) -> str:
    sop = SOP_CLASSES.get(ref.sop_class_uid)
    name = sop.name.removesuffix(" Waveform Storage") if sop else "waveform"
    return name if not ref.study_description else f"{name} ({ref.study_description})"


def rhythm(rate: float | None, pr: float | None, rr_mean: float | None,
           rr_sd: float | None) -> str:
    """A plain rhythm label from the measurements (automated; a reader confirms).

    Regular means an RR coefficient of variation below 0.1 (beat-to-beat
    variation of sinus rhythm at rest stays well under it; atrial fibrillation's
    is typically above 0.15); sinus needs a measured PR interval (P waves
    conducted); the rate bands are the usual 60 and 100 per minute.
    """
    if rate is None or rr_mean is None or rr_mean <= 0:
        return ""
    regular = rr_sd is not None and rr_sd / rr_mean < 0.1
    if pr is not None and regular:
        if rate < 60:
            return "sinus bradycardia"
        if rate > 100:
            return "sinus tachycardia"
        return "sinus rhythm"
    if pr is None and not regular:
        return "irregular rhythm without P waves"
    return "regular rhythm without P waves" if regular else "irregular rhythm"


@dataclass(frozen=True, slots=True)
class DocumentView:
    meta: DocumentMeta
    text: str
    cda_xml: bytes
    visible_to_patient_from: dt.datetime


@dataclass(frozen=True, slots=True)
class Examination:
    ref: ExamRef
    summary: dict[str, Any]
    documents: list[DocumentMeta]


class Archive:
    """Consent, documents, the patient index and the audit trail over one store."""

    def __init__(self, store: Store, audit: Trail, clock: Clock,
                 release: ReleaseDelays) -> None:
        self.store = store
        self.audit = audit
        self.clock = clock
        self.release = release
        store.ensure_tables(TABLES)
        #: Keeps consent and documents current with every server's commits.
        self.refresher = Refresher(store)
        self.consent = ConsentRegistry(store, self.refresher)
        self.documents = Documents(store, self.refresher)
        self.patients = PatientIndex(store)
        self.refresher.start()

    @classmethod
    def open(cls, store: Store, audit: str | os.PathLike[str], *, clock: Clock = utcnow,
             release: ReleaseDelays | None = None, replica: str | None = None) -> Archive:
        """The archive over ``store``, its audit trail at ``audit``: a directory, or
        ``postgres:`` and a libpq string (several servers, each its own hash chain:
        ``replica`` names this server's, continued across its restarts)."""
        trail = open_trail(os.fspath(audit), clock, replica=replica)
        try:
            return cls(store, trail, clock, release or ReleaseDelays())
        except BaseException:
            trail.close()
            raise

    def close(self) -> None:
        self.refresher.close()
        self.audit.close()

    def access(self, identity: Identity, purpose: Purpose, action: str, *, uid: str = "",
               document_id: str = "", patient_id: str = "") -> Access:
        return Access(self, identity, purpose, action, uid=uid, document_id=document_id,
                      patient_id=patient_id)

    def now(self) -> dt.datetime:
        return self.clock().astimezone(dt.UTC)

    # ----------------------------------------------------------------- search
    def visibility(self, acc: Access, patient_id: str) -> Visibility:
        """What a clinician's search may return: without a patient, their own
        organisation's ECGs; with one, other organisations' too as the patient allows."""
        own = acc.identity.organisation
        if not patient_id:
            return Visibility(own)
        acc.patient(patient_id)
        state = acc.state(patient_id)
        if not reaches_others(state, acc.purpose):
            return Visibility(own)
        return Visibility(own, True, state.denied_organisations, state.denied_studies)

    def screen_hits(self, acc: Access, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Record the decision of each hit (and drop any the policy would hide)."""
        kept = []
        for row in rows:
            d = acc.decide(row.get("organisation") or "", row.get("study_instance_uid") or "",
                           row.get("patient_id") or "")
            if d.allowed:
                acc.allow(d)
                acc.objects(row["sop_instance_uid"])
                kept.append(row)
        return kept

    # -------------------------------------------------------- recent examinations
    def recent(self, acc: Access, patient_id: str, within_days: int
               ) -> tuple[list[Examination], str]:
        if not patient_id:
            raise InvalidArgument("patient_id is required")
        if within_days < 0:
            raise InvalidArgument(f"within_days {within_days} is negative")
        acc.patient(patient_id)
        since = self.now().replace(tzinfo=None) - dt.timedelta(days=within_days or 365)
        state = acc.state(patient_id)
        out = []
        for ref in self.patients.exams(patient_id):
            if ref.acquired is None or ref.acquired < since:
                continue
            d = acc.decide(ref.organisation, ref.study_instance_uid, patient_id)
            if not d.allowed:
                continue
            acc.allow(d)
            acc.objects(ref.sop_instance_uid)
            out.append(ref)
        rows = self.patients.measures([r.sop_instance_uid for r in out])
        exams = [Examination(ref, row, self._visible_documents(acc, ref))
                 for ref, row in zip(out, rows, strict=True)]
        notice = ""
        if not reaches_others(state, acc.purpose):
            notice = (f"the patient has not consented to disclosure: only ECGs archived by "
                      f"{acc.identity.organisation} were searched, other organisations' "
                      "were not")
        return exams, notice

    def _linked_documents(self, ref: ExamRef) -> list[DocumentMeta]:
        ids = self.documents.for_examination(
            ref.study_instance_uid,
            [(ref.organisation, ref.accession_number)] if ref.accession_number else [])
        metas = [self.documents.latest(i) for i in ids]
        return [self.documents.with_study(m, ref.study_instance_uid) for m in metas if m]

    def _visible_documents(self, acc: Access, ref: ExamRef) -> list[DocumentMeta]:
        out = []
        for m in self._linked_documents(ref):
            d = acc.document_decision(m, ref.study_instance_uid)
            if d.allowed:
                acc.allow(d)
                acc.objects(m.document_id)
                out.append(m)
        return out

    # -------------------------------------------------------------- documents
    def attach(self, acc: Access, **fields: Any) -> DocumentMeta:
        acc.patient(fields.get("patient_id", ""))
        now = self.now()
        fields["authored_at"] = fields.get("authored_at") or now
        meta = self.documents.attach(organisation=acc.identity.organisation,
                                     stored_by=acc.identity.user, stored_at=now, **fields)
        acc.objects(meta.document_id)
        acc.allow(_AUTHOR)
        return meta

    def get_documents(self, acc: Access, *, study_instance_uid: str = "",
                      accession_number: str = "", document_id: str = "",
                      all_versions: bool = False, with_cda: bool = False
                      ) -> tuple[list[DocumentView], str, str]:
        """Visible documents of a study, an accession number or one document, with the
        performer and the reporting physician of the examination."""
        if sum(map(bool, (study_instance_uid, accession_number, document_id))) != 1:
            raise InvalidArgument("name exactly one of study_instance_uid, accession_number "
                                  "or document_id")
        exams: list[ExamRef] = []
        metas: list[DocumentMeta] = []
        if document_id:
            latest = self._document(acc, document_id)
            study = latest.study_instance_uid
            if study:
                exams = self.patients.study(study)
            elif latest.accession_number:
                exams = [r for r in self.patients.accession(latest.accession_number)
                         if r.organisation == latest.organisation]
            study = study or (exams[0].study_instance_uid if exams else "")
            latest = self.documents.with_study(latest, study)
            acc.patient(latest.patient_id)
            d = acc.document_decision(latest, study)
            if not d.allowed:
                acc.deny(d.rule, NotFound(f"no document {document_id!r} is visible to "
                                          f"{acc.identity.describe()}"))
            acc.allow(d)
            metas = [latest]
        else:
            if study_instance_uid:
                exams = self.patients.study(study_instance_uid)
            else:
                exams = self.patients.accession(accession_number)
            seen: set[str] = set()
            for ref in exams:
                for m in self._linked_documents(ref):
                    if m.document_id not in seen:
                        seen.add(m.document_id)
                        metas.append(m)
            if study_instance_uid:
                for did in self.documents.for_examination(study_instance_uid):
                    found = self.documents.latest(did)
                    if found is not None and did not in seen:
                        seen.add(did)
                        metas.append(found)
            visible = []
            for m in metas:
                acc.patient(m.patient_id)
                d = acc.document_decision(m, m.study_instance_uid or study_instance_uid)
                if d.allowed:
                    acc.allow(d)
                    acc.objects(m.document_id)
                    visible.append(m)
            metas = visible
            # Only the examinations the caller may see give performer names.
            exams = [r for r in exams
                     if acc.decide(r.organisation, r.study_instance_uid, r.patient_id).allowed]
        versions: list[DocumentMeta] = []
        for m in metas:
            if all_versions:
                versions.extend(self.documents.with_study(v, m.study_instance_uid)
                                for v in self.documents.versions(m.document_id))
            else:
                versions.append(m)
        texts = self.documents.texts([(v.document_id, v.version) for v in versions], with_cda)
        views = [DocumentView(v, *texts.get((v.document_id, v.version), ("", b"")),
                              self.documents.visible_from(v, self.release)) for v in versions]
        performer, reporting = _people(exams, metas)
        return views, performer, reporting

    def _document(self, acc: Access, document_id: str) -> DocumentMeta:
        """The latest version of ``document_id``; `NotFound` (audited) if there is none."""
        latest = self.documents.latest(document_id)
        acc.objects(document_id)
        if latest is None:
            acc.event.outcome = "failed"
            acc.deny("not-found", NotFound(f"no document {document_id!r} is visible to "
                                           f"{acc.identity.describe()}"))
        return latest

    def release_document(self, acc: Access, document_id: str) -> dt.datetime:
        latest = self._document(acc, document_id)
        acc.patient(latest.patient_id)
        d = acc.document_decision(latest, latest.study_instance_uid)
        if not d.allowed:
            acc.deny(d.rule, NotFound(f"no document {document_id!r} is visible to "
                                      f"{acc.identity.describe()}"))
        if latest.organisation != acc.identity.organisation:
            acc.deny("author-organisation", AccessDenied(
                f"only {latest.organisation} may release document {document_id}"))
        acc.allow(_AUTHOR)
        return self.documents.release(document_id, acc.identity.organisation,
                                      acc.identity.user, self.now())

    # ---------------------------------------------------------------- citizen
    def my_examinations(self, acc: Access) -> list[tuple[ExamRef | None, list[DocumentView],
                                                          str, str]]:
        """The citizen's examinations, each with the documents released to them by now,
        performer and reporting physician. Documents whose ECG is not (yet) stored
        are listed under their own examination."""
        patient = acc.identity.patient_id
        acc.patient(patient)
        acc.allow(_CITIZEN)
        now = self.now()
        out: list[tuple[ExamRef | None, list[DocumentView], str, str]] = []
        linked: set[str] = set()
        for ref in self.patients.exams(patient):
            acc.objects(ref.sop_instance_uid)
            metas = self._linked_documents(ref)
            linked.update(m.document_id for m in metas)
            views = self._released(metas, now)
            # The reporting physician comes with a released statement only: one
            # inside its release delay reveals neither its author nor (in its
            # place) the ECG's reader. The performer is the ECG's own.
            performer, reporting = _people([ref], [v.meta for v in views])
            if (any(m.kind == "statement" for m in metas)
                    and not any(v.meta.kind == "statement" for v in views)):
                reporting = ""
            out.append((ref, views, performer, reporting))
        loose = [m for m in (self.documents.latest(d) for d in
                             self.documents.for_patient(patient))
                 if m is not None and m.document_id not in linked]
        views = self._released(loose, now)
        if views:
            out.append((None, views, "", _people([], [v.meta for v in views])[1]))
        for _, vs, _, _ in out:
            acc.objects(*(v.meta.document_id for v in vs))
        return out

    def _released(self, metas: list[DocumentMeta], now: dt.datetime) -> list[DocumentView]:
        shown = [(m, self.documents.visible_from(m, self.release)) for m in metas]
        shown = [(m, at) for m, at in shown if at <= now]
        texts = self.documents.texts([(m.document_id, m.version) for m, _ in shown])
        return [DocumentView(m, texts.get((m.document_id, m.version), ("", b""))[0], b"", at)
                for m, at in shown]

    def consent_state(self, acc: Access) -> ConsentState:
        acc.patient(acc.identity.patient_id)
        acc.allow(_CITIZEN)
        return self.consent.state(acc.identity.patient_id)

    # ---------------------------------------------------------------- audit
    def query_audit(self, acc: Access, **filters: Any) -> list[dict[str, Any]]:
        acc.patient(filters.get("patient_id", ""))
        acc.allow(_AUDITOR)
        return self.audit.query(**filters)

    def my_access_log(self, acc: Access, **filters: Any) -> list[dict[str, Any]]:
        acc.patient(acc.identity.patient_id)
        acc.allow(_CITIZEN)
        rows = self.audit.query(patient_id=acc.identity.patient_id, **filters)
        for r in rows:
            r["user"] = ""  # organisation level: no names of professionals
            r["reason"] = ""
        return rows


def _people(exams: list[ExamRef], metas: list[DocumentMeta]) -> tuple[str, str]:
    performer = next((r.operator for r in exams if r.operator), "")
    statements = sorted((m for m in metas if m.kind == "statement" and m.author),
                        key=lambda m: m.authored_at)
    reporting = statements[-1].author if statements else next(
        (r.reading_physician for r in exams if r.reading_physician), "")
    return performer, reporting


_AUTHOR = Decision(True, "author-organisation")
_CITIZEN = Decision(True, "citizen-own")
_AUDITOR = Decision(True, "auditor")
