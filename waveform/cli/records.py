"""Commands over the `PatientRecords` calls: documents, consent and denials, a
patient's recent examinations, the citizen's own view, and the audit query.
Each is a thin layer over `waveform.Client`."""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from waveform.cli._common import EXIT_OK, client_of, connection_options, guarded
from waveform.cli.archive import when
from waveform.cli.output import Column, emit, emit_record, emit_stream, format_option

if TYPE_CHECKING:
    from waveform.client import Client
    from waveform.client.types import AuditPage, ConsentState

__all__ = ["COMMANDS", "audit_query"]

_KINDS = ("referral", "examination_note", "statement")


def _date(ctx: click.Context, param: click.Parameter, text: str | None) -> dt.datetime | None:
    return None if text is None else when(text)


def _row(value: Any) -> dict[str, Any]:
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}


# ------------------------------------------------------------------ documents
_DOC_COLUMNS = (Column("document_id", "document"), Column("version", "v"), Column("kind"),
                Column("organisation"), Column("author"), Column("authored_at", "authored"),
                Column("title"), Column("visible_to_patient_from", "patient sees from"))


@click.group("documents")
def documents() -> None:
    """Documents of examinations: attach, list, release to the patient."""


@documents.command("attach")
@click.option("--kind", required=True, type=click.Choice(_KINDS))
@click.option("--patient", required=True, help="patient ID")
@click.option("--study", help="Study Instance UID of the examination")
@click.option("--accession", help="accession number (when the document comes before the ECG)")
@click.option("--title", default="")
@click.option("--text", default="", help="the document's text")
@click.option("--text-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="read the text from this file")
@click.option("--cda", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="the original HL7 CDA R2 document")
@click.option("--author", default="")
@click.option("--visit", default="", help="visit or care period ID")
@click.option("--authored-at", callback=_date, metavar="DATE", help="default: now")
@click.option("--document-id", default="", help="add a new version of this document")
@format_option()
@connection_options()
@guarded("documents")
def documents_attach(kind: str, patient: str, study: str | None, accession: str | None,
                     title: str, text: str, text_file: Path | None, cda: Path | None,
                     author: str, visit: str, authored_at: dt.datetime | None,
                     document_id: str, fmt: str, conn: dict[str, Any]) -> int:
    """Store a document of an examination (roles clinician, device)."""
    if not (study or accession):
        raise click.UsageError("name the examination: --study UID or --accession NUMBER")
    if text_file is not None:
        text = text_file.read_text()
    with client_of(conn) as client:
        ref = client.attach_document(
            kind, patient, text=text, title=title, study_instance_uid=study or "",
            accession_number=accession or "", visit_id=visit, author=author,
            authored_at=authored_at, cda_xml=cda.read_bytes() if cda else b"",
            document_id=document_id)
    emit_record(_row(ref), (Column("document_id", "document"), Column("version")), fmt)
    return EXIT_OK


@documents.command("list")
@click.option("--study", help="Study Instance UID")
@click.option("--accession", help="accession number")
@click.option("--document-id", help="one document")
@click.option("--all-versions", is_flag=True, help="every version (default: the latest)")
@click.option("--with-cda", is_flag=True, help="with the original CDA XML (JSON: base64)")
@click.option("--text", "with_text", is_flag=True, help="print each document's text too")
@format_option()
@connection_options()
@guarded("documents")
def documents_list(study: str | None, accession: str | None, document_id: str | None,
                   all_versions: bool, with_cda: bool, with_text: bool, fmt: str,
                   conn: dict[str, Any]) -> int:
    """Documents of a study, an accession number or one document (clinician)."""
    if not (study or accession or document_id):
        raise click.UsageError("name what to list: --study, --accession or --document-id")
    with client_of(conn) as client:
        found = client.documents(study_instance_uid=study or "",
                                 accession_number=accession or "",
                                 document_id=document_id or "", all_versions=all_versions,
                                 with_cda=with_cda)
    rows = [_row(d) for d in found.documents]
    emit(rows, _DOC_COLUMNS, fmt, key="documents",
         extra={"performer": found.performer, "reporting_physician": found.reporting_physician})
    if fmt == "table":
        print(f"performer: {found.performer or '-'}; reporting physician: "
              f"{found.reporting_physician or '-'}")
        if with_text:
            for d in found.documents:
                print(f"\n{d.document_id} v{d.version} {d.title}\n{d.text}")
    return EXIT_OK


@documents.command("release")
@click.argument("document_id", metavar="DOCUMENT_ID")
@format_option()
@connection_options()
@guarded("documents")
def documents_release(document_id: str, fmt: str, conn: dict[str, Any]) -> int:
    """Show a document to the patient now, before its release delay ends."""
    with client_of(conn) as client:
        at = client.release_document(document_id)
    emit_record({"document_id": document_id, "released_at": at},
                (Column("document_id", "document"), Column("released_at", "released")), fmt)
    return EXIT_OK


# ---------------------------------------------------------- consent, denials
_DENIAL_COLUMNS = (Column("denial_id", "denial"), Column("organisation"),
                   Column("study_instance_uid", "study"), Column("since"))


def _show_consent(state: ConsentState, fmt: str) -> None:
    if fmt == "json":
        emit_record(_row(state), (), "json")
        return
    if fmt == "table":
        changed = state.consent_changed_at
        print(f"patient {state.patient_id}: consent to disclosure "
              f"{'granted' if state.consent_granted else 'not granted'}"
              + (f" (since {changed:%Y-%m-%d %H:%M:%S} UTC)" if changed else ""))
        if not state.denials:
            print("no denials")
            return
    emit([_row(d) for d in state.denials], _DENIAL_COLUMNS, fmt, key="denials")


@click.group("consent")
def consent() -> None:
    """The calling citizen's consent to disclosure and their denials."""


@consent.command("show")
@format_option()
@connection_options()
@guarded("consent")
def consent_show(fmt: str, conn: dict[str, Any]) -> int:
    """Consent and denials as they stand."""
    with client_of(conn) as client:
        _show_consent(client.consent(), fmt)
    return EXIT_OK


@consent.command("grant")
@format_option()
@connection_options()
@guarded("consent")
def consent_grant(fmt: str, conn: dict[str, Any]) -> int:
    """Let clinicians of other organisations see my ECGs (denials still apply)."""
    with client_of(conn) as client:
        _show_consent(client.set_consent(True), fmt)
    return EXIT_OK


@consent.command("withdraw")
@format_option()
@connection_options()
@guarded("consent")
def consent_withdraw(fmt: str, conn: dict[str, Any]) -> int:
    """Only the organisation that took an ECG sees it from now on."""
    with client_of(conn) as client:
        _show_consent(client.set_consent(False), fmt)
    return EXIT_OK


@click.group("denials")
def denials() -> None:
    """The calling citizen's denials: an organisation, or one examination."""


@denials.command("add")
@click.option("--organisation", help="deny every ECG archived by this organisation")
@click.option("--study", help="deny one examination (Study Instance UID)")
@format_option()
@connection_options()
@guarded("denials")
def denials_add(organisation: str | None, study: str | None, fmt: str,
                conn: dict[str, Any]) -> int:
    """Add a denial (exactly one of --organisation, --study)."""
    if bool(organisation) == bool(study):
        raise click.UsageError("give exactly one of --organisation and --study")
    with client_of(conn) as client:
        _show_consent(client.add_denial(organisation=organisation or "",
                                        study_instance_uid=study or ""), fmt)
    return EXIT_OK


@denials.command("remove")
@click.argument("denial_id", metavar="DENIAL_ID")
@format_option()
@connection_options()
@guarded("denials")
def denials_remove(denial_id: str, fmt: str, conn: dict[str, Any]) -> int:
    """Remove a denial (its ID is in `waveform consent show`)."""
    with client_of(conn) as client:
        _show_consent(client.remove_denial(denial_id), fmt)
    return EXIT_OK


# ------------------------------------------------------ recent examinations
_EXAM_COLUMNS = (Column("acquired"), Column("organisation"), Column("examination_type", "type"),
                 Column("heart_rate_bpm", "HR"), Column("rhythm"), Column("qtc_ms", "QTc"),
                 Column("document_kinds", "documents"),
                 Column("sop_instance_uid", "SOP instance UID"))


@click.command("recent")
@click.argument("patient", metavar="PATIENT_ID")
@click.option("--within-days", type=click.IntRange(1, None), default=365, show_default=True)
@format_option()
@connection_options()
@guarded("recent")
def recent(patient: str, within_days: int, fmt: str, conn: dict[str, Any]) -> int:
    """A patient's ECGs from every organisation the caller may see, newest first
    (clinician): is a recent one enough instead of a new ECG?"""
    with client_of(conn) as client:
        r = client.recent_examinations(patient, within_days)
    emit([_row(e) for e in r.examinations], _EXAM_COLUMNS, fmt, key="examinations",
         extra={"notice": r.notice})
    if r.notice and fmt != "json":
        print(f"notice: {r.notice}", file=sys.stderr)
    return EXIT_OK


# ------------------------------------------------------------ citizen's view
@click.group("my")
def my() -> None:
    """The calling citizen's own examinations and access log."""


_MY_COLUMNS = (Column("acquired"), Column("organisation"), Column("examination_type", "type"),
               Column("performer"), Column("reporting_physician", "reporting physician"),
               Column("document_titles", "documents"))


@my.command("examinations")
@click.option("--text", "with_text", is_flag=True, help="print each document's text too")
@format_option()
@connection_options()
@guarded("my")
def my_examinations(with_text: bool, fmt: str, conn: dict[str, Any]) -> int:
    """My examinations and the documents released to me."""
    with client_of(conn) as client:
        exams = client.my_examinations()
    rows = []
    for e in exams:
        row = _row(e)
        row["document_titles"] = [d.title or d.kind for d in e.documents]
        rows.append(row)
    emit(rows, _MY_COLUMNS, fmt, key="examinations")
    if with_text and fmt == "table":
        for e in exams:
            for d in e.documents:
                print(f"\n{d.title or d.kind} ({d.organisation}, {d.authored_at:%Y-%m-%d})"
                      if d.authored_at else f"\n{d.title or d.kind} ({d.organisation})")
                print(d.text)
    return EXIT_OK


_AUDIT_COLUMNS = (Column("seq"), Column("time"), Column("organisation"), Column("user"),
                  Column("role"), Column("action"), Column("outcome"), Column("rule"),
                  Column("patient_id", "patient"), Column("emergency"))
_ACCESS_COLUMNS = (Column("time"), Column("organisation"), Column("role"), Column("action"),
                   Column("outcome"), Column("emergency"))


def _pages(fetch: Any, token: str, every: bool) -> Iterator[AuditPage]:
    while True:
        page: AuditPage = fetch(token)
        yield page
        token = page.next_page_token
        if not (every and token):
            return


def _audit_out(fetch: Any, token: str, every: bool, columns: tuple[Column, ...],
               fmt: str) -> int:
    if every:
        emit_stream((_row(e) for page in _pages(fetch, token, True) for e in page.events),
                    columns, fmt)
        return EXIT_OK
    page = fetch(token)
    emit([_row(e) for e in page.events], columns, fmt, key="events",
         extra={"next_page_token": page.next_page_token})
    if page.next_page_token:
        print(f"more: --page-token {page.next_page_token}", file=sys.stderr)
    return EXIT_OK


@my.command("access-log")
@click.option("--from", "start", callback=_date, metavar="DATE", help="from this time")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--page-token", default="", metavar="TOKEN")
@click.option("--all", "every", is_flag=True, help="every page, streamed")
@format_option()
@connection_options()
@guarded("my")
def my_access_log(start: dt.datetime | None, limit: int, page_token: str, every: bool,
                  fmt: str, conn: dict[str, Any]) -> int:
    """Who accessed my data, at organisation level."""
    with client_of(conn) as client:
        return _audit_out(lambda t: client.my_access_log(start=start, limit=limit,
                                                         page_token=t),
                          page_token, every, _ACCESS_COLUMNS, fmt)


# ------------------------------------------------------------------- audit
@click.command("query")
@click.option("--patient", default="", help="patient ID")
@click.option("--user", default="", help="user ID")
@click.option("--organisation", default="")
@click.option("--from", "start", callback=_date, metavar="DATE", help="inclusive")
@click.option("--to", "end", callback=_date, metavar="DATE", help="exclusive")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--page-token", default="", metavar="TOKEN")
@click.option("--all", "every", is_flag=True, help="every page, streamed")
@format_option()
@connection_options()
@guarded("audit")
def audit_query(patient: str, user: str, organisation: str, start: dt.datetime | None,
                end: dt.datetime | None, limit: int, page_token: str, every: bool, fmt: str,
                conn: dict[str, Any]) -> int:
    """The audit trail, oldest first (role auditor; reading it is audited too)."""
    client: Client
    with client_of(conn) as client:
        return _audit_out(lambda t: client.query_audit(
            patient_id=patient, user=user, organisation=organisation, start=start, end=end,
            limit=limit, page_token=t), page_token, every, _AUDIT_COLUMNS, fmt)


COMMANDS = (documents, consent, denials, recent, my)
