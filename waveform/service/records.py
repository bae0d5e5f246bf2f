"""The `PatientRecords` service: documents, consent and denials, the citizen's view,
the audit trail. Each call goes through one `Access` of the archive (the policy
decides, the trail records); this module only converts messages.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import grpc

from waveform.archive import ConsentState, DocumentMeta, DocumentView
from waveform.archive.archive import examination_type, rhythm
from waveform.errors import InvalidArgument
from waveform.service import convert
from waveform.service._proto.waveform.v1 import records_pb2 as rpb
from waveform.service._proto.waveform.v1 import records_pb2_grpc as rpb_grpc
from waveform.service.calls import Call, Servicer, rpc

__all__ = ["PatientRecords"]

_KIND_TO_PB = {"referral": rpb.REFERRAL, "examination_note": rpb.EXAMINATION_NOTE,
               "statement": rpb.STATEMENT}
_KIND_FROM_PB = {v: k for k, v in _KIND_TO_PB.items()}
_MAX_PAGE = 1000


_ts = convert.timestamp


def _when(msg: Any, name: str) -> dt.datetime | None:
    if not msg.HasField(name):
        return None
    value: dt.datetime = getattr(msg, name).ToDatetime(tzinfo=dt.UTC)
    return value


def _document(view: DocumentView) -> rpb.Document:
    m = view.meta
    out = rpb.Document(
        document_id=m.document_id, version=m.version, kind=_KIND_TO_PB[m.kind],
        patient_id=m.patient_id, study_instance_uid=m.study_instance_uid,
        accession_number=m.accession_number, visit_id=m.visit_id,
        organisation=m.organisation, author=m.author, title=m.title, text=view.text,
        cda_xml=view.cda_xml)
    for field, value in (("authored_at", m.authored_at), ("stored_at", m.stored_at),
                         ("visible_to_patient_from", view.visible_to_patient_from)):
        ts = _ts(value)
        if ts is not None:
            getattr(out, field).CopyFrom(ts)
    return out


def _link(meta: DocumentMeta) -> rpb.DocumentLink:
    return rpb.DocumentLink(document_id=meta.document_id, kind=_KIND_TO_PB[meta.kind],
                            version=meta.version)


def _consent(state: ConsentState) -> rpb.ConsentState:
    out = rpb.ConsentState(patient_id=state.patient_id, consent_granted=state.granted)
    ts = _ts(state.changed_at)
    if ts is not None:
        out.consent_changed_at.CopyFrom(ts)
    for d in state.denials:
        item = out.denials.add(denial_id=d.denial_id, organisation=d.organisation,
                               study_instance_uid=d.study_instance_uid)
        item.since.CopyFrom(_ts(d.since))
    return out


def _audit_page(rows: list[dict[str, Any]], limit: int, until: int) -> rpb.AuditPage:
    out = rpb.AuditPage()
    for r in rows[:limit]:
        ev = out.events.add(
            seq=r["seq"], user=r["user"] or "", organisation=r["organisation"] or "",
            role=r["role"] or "", purpose=r["purpose"] or "", reason=r["reason"] or "",
            patient_id=r["patient_id"] or "", objects=list(r["objects"] or []),
            action=r["action"] or "", outcome=r["outcome"] or "", rule=r["rule"] or "",
            emergency=bool(r["emergency"]), hash=r["hash"] or "")
        ev.time.FromDatetime(dt.datetime.fromisoformat(r["time"].replace("Z", "+00:00")))
    if len(rows) > limit:
        out.next_page_token = _token(rows[limit - 1]["seq"], until)
    return out


def _token(after: int, until: int) -> str:
    return base64.urlsafe_b64encode(f"audit:{after}:{until}".encode()).decode()


def _pages(token: str, trail_end: int) -> tuple[int, int]:
    """(after, until) of a page: the first page fixes ``until`` at the trail's end, so
    that paging ends although each page's own reading is audited too."""
    if not token:
        return 0, trail_end
    try:
        kind, after, until = base64.urlsafe_b64decode(token.encode()).decode().split(":")
        if kind != "audit":
            raise ValueError(kind)
        return int(after), int(until)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(f"page_token {token!r} is not one this service gave") from None


def _limit(value: int) -> int:
    limit = value or 100
    if not 1 <= limit <= _MAX_PAGE:
        raise InvalidArgument(f"limit {value} is outside 1..{_MAX_PAGE}")
    return limit


class PatientRecords(Servicer, rpb_grpc.PatientRecordsServicer):
    """Documents, consent, the citizen's view and the audit trail over the archive."""

    def _access(self, call: Call, action: str, **about: str) -> Any:
        return self.archive.access(call.identity, call.purpose, action, **about)

    # -------------------------------------------------------------- documents
    @rpc
    def AttachDocument(self, request: rpb.AttachDocumentRequest,
                       context: grpc.ServicerContext, call: Call) -> rpb.DocumentRef:
        kind = _KIND_FROM_PB.get(request.kind)
        with self._access(call, "attach-document", patient_id=request.patient_id) as acc:
            if kind is None:
                raise InvalidArgument("kind must be REFERRAL, EXAMINATION_NOTE or STATEMENT")
            meta = self.archive.attach(
                acc, kind=kind, patient_id=request.patient_id,
                study_instance_uid=request.study_instance_uid,
                accession_number=request.accession_number, visit_id=request.visit_id,
                author=request.author, authored_at=_when(request, "authored_at"),
                title=request.title, text=request.text, cda_xml=request.cda_xml,
                document_id=request.document_id)
        return rpb.DocumentRef(document_id=meta.document_id, version=meta.version)

    @rpc
    def GetDocuments(self, request: rpb.GetDocumentsRequest, context: grpc.ServicerContext,
                     call: Call) -> rpb.DocumentList:
        exams = (self.archive.patients.study(request.study_instance_uid)
                 if request.study_instance_uid else
                 self.archive.patients.accession(request.accession_number)
                 if request.accession_number else [])
        with self._access(call, "documents", document_id=request.document_id,
                          patient_id=exams[0].patient_id if exams else "") as acc:
            views, performer, reporting = self.archive.get_documents(
                acc, study_instance_uid=request.study_instance_uid,
                accession_number=request.accession_number, document_id=request.document_id,
                all_versions=request.all_versions, with_cda=request.with_cda)
        return rpb.DocumentList(documents=[_document(v) for v in views], performer=performer,
                                reporting_physician=reporting)

    @rpc
    def ReleaseDocument(self, request: rpb.ReleaseDocumentRequest,
                        context: grpc.ServicerContext, call: Call
                        ) -> rpb.ReleaseDocumentResponse:
        with self._access(call, "release-document", document_id=request.document_id) as acc:
            at = self.archive.release_document(acc, request.document_id)
        out = rpb.ReleaseDocumentResponse()
        out.released_at.CopyFrom(_ts(at))
        return out

    # ----------------------------------------------------------- examinations
    @rpc
    def RecentExaminations(self, request: rpb.RecentExaminationsRequest,
                           context: grpc.ServicerContext, call: Call
                           ) -> rpb.RecentExaminationsResponse:
        with self._access(call, "recent-examinations",
                          patient_id=request.patient_id) as acc:
            exams, notice = self.archive.recent(acc, request.patient_id, request.within_days)
        out = rpb.RecentExaminationsResponse(notice=notice)
        for ex in exams:
            r, s = ex.ref, ex.summary
            item = out.examinations.add(
                sop_instance_uid=r.sop_instance_uid, study_instance_uid=r.study_instance_uid,
                accession_number=r.accession_number, organisation=r.organisation,
                examination_type=examination_type(r),
                rhythm=rhythm(s.get("heart_rate_bpm"), s.get("pr_ms"), s.get("rr_mean_ms"),
                              s.get("rr_sd_ms")),
                qtc_formula="Bazett" if s.get("qtc_ms") is not None else "",
                documents=[_link(m) for m in ex.documents])
            acquired = _ts(r.acquired)
            if acquired is not None:
                item.acquired.CopyFrom(acquired)
            for name in ("heart_rate_bpm", "qtc_ms"):
                value = s.get(name)
                getattr(item, name).CopyFrom(convert.measured(
                    value, "" if value is not None else "not measured (yet)"))
        return out

    @rpc
    def MyExaminations(self, request: rpb.MyExaminationsRequest,
                       context: grpc.ServicerContext, call: Call) -> rpb.MyExaminationsResponse:
        with self._access(call, "my-examinations", patient_id=call.identity.patient_id) as acc:
            exams = self.archive.my_examinations(acc)
        out = rpb.MyExaminationsResponse()
        for ref, views, performer, reporting in exams:
            item = out.examinations.add(
                organisation=ref.organisation if ref else views[0].meta.organisation,
                examination_type=examination_type(ref) if ref else "examination",
                performer=performer, reporting_physician=reporting,
                documents=[_document(v) for v in views])
            acquired = _ts(ref.acquired if ref else views[0].meta.authored_at)
            if acquired is not None:
                item.acquired.CopyFrom(acquired)
        return out

    # ---------------------------------------------------------------- consent
    @rpc
    def GetConsentState(self, request: rpb.GetConsentStateRequest,
                        context: grpc.ServicerContext, call: Call) -> rpb.ConsentState:
        with self._access(call, "consent-state", patient_id=call.identity.patient_id) as acc:
            state = self.archive.consent_state(acc)
        return _consent(state)

    @rpc
    def SetConsent(self, request: rpb.SetConsentRequest, context: grpc.ServicerContext,
                   call: Call) -> rpb.ConsentState:
        with self._access(call, "set-consent", patient_id=call.identity.patient_id) as acc:
            self.archive.consent_state(acc)
            state = self.archive.consent.set_consent(
                call.identity.patient_id, request.granted, call.identity.user,
                self.archive.now())
        return _consent(state)

    @rpc
    def AddDenial(self, request: rpb.AddDenialRequest, context: grpc.ServicerContext,
                  call: Call) -> rpb.ConsentState:
        with self._access(call, "add-denial", patient_id=call.identity.patient_id) as acc:
            self.archive.consent_state(acc)
            state = self.archive.consent.add_denial(
                call.identity.patient_id, request.organisation, request.study_instance_uid,
                call.identity.user, self.archive.now())
            acc.objects(state.denials[-1].denial_id)
        return _consent(state)

    @rpc
    def RemoveDenial(self, request: rpb.RemoveDenialRequest, context: grpc.ServicerContext,
                     call: Call) -> rpb.ConsentState:
        with self._access(call, "remove-denial", patient_id=call.identity.patient_id) as acc:
            self.archive.consent_state(acc)
            acc.objects(request.denial_id)
            state = self.archive.consent.remove_denial(
                call.identity.patient_id, request.denial_id, call.identity.user,
                self.archive.now())
        return _consent(state)

    # ------------------------------------------------------------------ audit
    @rpc
    def QueryAudit(self, request: rpb.QueryAuditRequest, context: grpc.ServicerContext,
                   call: Call) -> rpb.AuditPage:
        limit = _limit(request.limit)
        after, until = _pages(request.page_token, self.archive.audit.last_seq)
        with self._access(call, "query-audit", patient_id=request.patient_id) as acc:
            rows = self.archive.query_audit(
                acc, patient_id=request.patient_id, user=request.user,
                organisation=request.organisation, time_from=_when(request, "from"),
                time_to=_when(request, "to"), after_seq=after, until_seq=until,
                limit=limit + 1)
        return _audit_page(rows, limit, until)

    @rpc
    def MyAccessLog(self, request: rpb.MyAccessLogRequest, context: grpc.ServicerContext,
                    call: Call) -> rpb.AuditPage:
        limit = _limit(request.limit)
        after, until = _pages(request.page_token, self.archive.audit.last_seq)
        with self._access(call, "my-access-log", patient_id=call.identity.patient_id) as acc:
            rows = self.archive.my_access_log(
                acc, time_from=_when(request, "from"), after_seq=after, until_seq=until,
                limit=limit + 1)
        return _audit_page(rows, limit, until)

