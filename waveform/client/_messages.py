"""Protobuf messages -> the client's value types (`waveform.client.types`)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from waveform.client import types as t
from waveform.model import Summary

__all__ = ["HIT_FIELDS", "MEASURES", "audit_page", "citizen_examination", "consent",
           "document", "document_list", "examination", "reanalyze_status", "search_table",
           "summary"]

MEASURES = ("heart_rate_bpm", "pr_ms", "qrs_ms", "qt_ms", "qtc_ms")
HIT_FIELDS = ("sop_instance_uid", "patient_id", "organisation", "sop_class_uid",
              "study_instance_uid", "accession_number", "acquired", "manufacturer", "model",
              "analysis_version", *MEASURES, "source_format")
KINDS = {0: "", 1: "referral", 2: "examination_note", 3: "statement"}
KIND_VALUES = {v: k for k, v in KINDS.items() if v}


def when(msg: Any, name: str) -> dt.datetime | None:
    if not msg.HasField(name):
        return None
    value: dt.datetime = getattr(msg, name).ToDatetime(tzinfo=dt.UTC)
    return value


def value(m: Any) -> float | None:
    return float(m.value) if m.HasField("value") else None


def summary(msg: Any) -> Summary:
    """The stored summary document a `Summary` message carries, as the model's type."""
    if msg.document_json:
        return Summary.from_dict(json.loads(msg.document_json))
    doc: dict[str, Any] = {"analysis_version": msg.analysis_version,
                           "sampling_frequency": 0.0, "median_fs": 0.0}
    for f in msg.DESCRIPTOR.fields:
        if f.message_type is not None and f.message_type.name == "Measured":
            m = getattr(msg, f.name)
            doc[f.name] = value(m)
            doc[f"{f.name}_reason"] = m.reason
    return Summary.from_dict(doc)


def search_table(hits: Any) -> Any:
    import pyarrow as pa

    columns: dict[str, list[Any]] = {name: [] for name in HIT_FIELDS}
    for h in hits:
        for name in HIT_FIELDS:
            if name == "acquired":
                columns[name].append(when(h, "acquired"))
            elif name in MEASURES:
                columns[name].append(value(getattr(h, name)))
            else:
                columns[name].append(getattr(h, name))
    schema = pa.schema([(n, pa.timestamp("us", tz="UTC") if n == "acquired" else
                         pa.float64() if n in MEASURES else pa.string()) for n in HIT_FIELDS])
    return pa.table(columns, schema=schema)


def document(m: Any) -> t.Document:
    return t.Document(
        document_id=m.document_id, version=m.version, kind=KINDS.get(m.kind, str(m.kind)),
        patient_id=m.patient_id, study_instance_uid=m.study_instance_uid,
        accession_number=m.accession_number, visit_id=m.visit_id, organisation=m.organisation,
        author=m.author, authored_at=when(m, "authored_at"), stored_at=when(m, "stored_at"),
        title=m.title, text=m.text, cda_xml=bytes(m.cda_xml),
        visible_to_patient_from=when(m, "visible_to_patient_from"))


def document_list(m: Any) -> t.DocumentList:
    return t.DocumentList(tuple(document(d) for d in m.documents), m.performer,
                          m.reporting_physician)


def examination(m: Any) -> t.Examination:
    return t.Examination(
        sop_instance_uid=m.sop_instance_uid, study_instance_uid=m.study_instance_uid,
        accession_number=m.accession_number, organisation=m.organisation,
        acquired=when(m, "acquired"), examination_type=m.examination_type,
        heart_rate_bpm=value(m.heart_rate_bpm), rhythm=m.rhythm, qtc_ms=value(m.qtc_ms),
        qtc_formula=m.qtc_formula,
        documents=tuple(t.DocumentRef(d.document_id, d.version) for d in m.documents),
        document_kinds=tuple(KINDS.get(d.kind, "") for d in m.documents))


def citizen_examination(m: Any) -> t.CitizenExamination:
    return t.CitizenExamination(
        acquired=when(m, "acquired"), organisation=m.organisation,
        examination_type=m.examination_type, performer=m.performer,
        reporting_physician=m.reporting_physician,
        documents=tuple(document(d) for d in m.documents))


def consent(m: Any) -> t.ConsentState:
    return t.ConsentState(
        patient_id=m.patient_id, consent_granted=m.consent_granted,
        consent_changed_at=when(m, "consent_changed_at"),
        denials=tuple(t.Denial(d.denial_id, d.organisation, d.study_instance_uid,
                               when(d, "since")) for d in m.denials))


def audit_page(m: Any) -> t.AuditPage:
    return t.AuditPage(tuple(
        t.AuditEvent(seq=e.seq, time=when(e, "time"), user=e.user, organisation=e.organisation,
                     role=e.role, purpose=e.purpose, reason=e.reason, patient_id=e.patient_id,
                     objects=tuple(e.objects), action=e.action, outcome=e.outcome, rule=e.rule,
                     emergency=e.emergency, hash=e.hash)
        for e in m.events), m.next_page_token)


def reanalyze_status(m: Any) -> t.ReanalyzeStatus:
    return t.ReanalyzeStatus(
        analysis_version=m.analysis_version, planned=m.planned, pass_number=m.pass_number,
        pass_ecgs=m.pass_ecgs, done=m.done, committed=m.committed,
        already_present=m.already_present, failed=m.failed, unread=m.unread,
        commits=m.commits, rate=m.rate, note=m.note,
        failed_ecgs=tuple((f.sop_instance_uid, f.reason) for f in m.failed_ecgs),
        unread_ecgs=tuple((f.sop_instance_uid, f.reason) for f in m.unread_ecgs),
        final=m.final, files=m.files, units=m.units, seconds=m.seconds)
