"""The audit trail through the real gRPC API: one event per patient-data call, the
emergency flag shown to the patient, reading the trail audited, queries, and the
tamper evidence of `waveform audit verify` (docs/access.md, "The audit trail").

A server of its own (the journal is copied and damaged in a test), built like the
one of tests/test_access.py.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_access import (
    DENIED,
    REASON,
    World,
    citizen,
    open_world,
    refused,
    ts,
    when,
)
from waveform import cli
from waveform.service._proto.waveform.v1 import archive_pb2 as pb
from waveform.service._proto.waveform.v1 import records_pb2 as rpb


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with open_world(tmp_path_factory.mktemp("access-audit")) as w:
        yield w


# Each call about one patient -> (its audit action, who makes it, the call).
EACH: dict[str, tuple[str, str, Callable[[World, dict[str, str]], Any]]] = {
    "Ingest": ("ingest", "cart_a", lambda w, c: w.ingest("cart_a", w.ecg_bytes(
        c["patient"], acquired=w.now()))),
    "AttachDocument": ("attach-document", "dr_a", lambda w, c: w.attach(
        "dr_a", c["patient"], study=c["study"])),
    "GetDocuments": ("documents", "dr_a", lambda w, c: w.rec.GetDocuments(
        rpb.GetDocumentsRequest(study_instance_uid=c["study"]), metadata=w.md("dr_a"))),
    "ReleaseDocument": ("release-document", "dr_a", lambda w, c: w.rec.ReleaseDocument(
        rpb.ReleaseDocumentRequest(document_id=c["document"]), metadata=w.md("dr_a"))),
    "GetSummary": ("summary", "dr_a", lambda w, c: w.ecg.GetSummary(
        pb.GetSummaryRequest(sop_instance_uid=c["uid"]), metadata=w.md("dr_a"))),
    "GetTrace": ("trace", "dr_a", lambda w, c: list(w.ecg.GetTrace(
        pb.GetTraceRequest(sop_instance_uid=c["uid"]), metadata=w.md("dr_a")))),
    "GetDicom": ("dicom", "dr_a", lambda w, c: list(w.ecg.GetDicom(
        pb.GetDicomRequest(sop_instance_uid=c["uid"]), metadata=w.md("dr_a")))),
    "Render": ("render", "dr_a", lambda w, c: list(w.ecg.Render(
        pb.RenderRequest(sop_instance_uid=c["uid"], format="svg"), metadata=w.md("dr_a")))),
    "Search": ("search", "dr_a", lambda w, c: w.ecg.Search(
        pb.SearchRequest(patient_id=c["patient"]), metadata=w.md("dr_a"))),
    "RecentExaminations": ("recent-examinations", "dr_a", lambda w, c: w.rec.RecentExaminations(
        rpb.RecentExaminationsRequest(patient_id=c["patient"]), metadata=w.md("dr_a"))),
    "MyExaminations": ("my-examinations", "citizen", lambda w, c: w.rec.MyExaminations(
        rpb.MyExaminationsRequest(), metadata=w.md(citizen(c["patient"])))),
    "GetConsentState": ("consent-state", "citizen", lambda w, c: w.rec.GetConsentState(
        rpb.GetConsentStateRequest(), metadata=w.md(citizen(c["patient"])))),
    "SetConsent": ("set-consent", "citizen", lambda w, c: w.rec.SetConsent(
        rpb.SetConsentRequest(granted=True), metadata=w.md(citizen(c["patient"])))),
    "AddDenial": ("add-denial", "citizen", lambda w, c: _add_denial(w, c["patient"])),
    "RemoveDenial": ("remove-denial", "citizen", lambda w, c: w.rec.RemoveDenial(
        rpb.RemoveDenialRequest(denial_id=c["denial"]), metadata=w.md(citizen(c["patient"])))),
    "MyAccessLog": ("my-access-log", "citizen", lambda w, c: w.rec.MyAccessLog(
        rpb.MyAccessLogRequest(), metadata=w.md(citizen(c["patient"])))),
    "QueryAudit": ("query-audit", "auditor", lambda w, c: w.rec.QueryAudit(
        rpb.QueryAuditRequest(patient_id=c["patient"]), metadata=w.md("auditor"))),
}


@pytest.fixture(scope="module")
def each(world: World) -> dict[str, str]:
    patient = "PAT-EACH"
    uid, study, _ = world.add_ecg("cart_a", patient, days_ago=1)
    document = world.attach("dr_a", patient, study=study).document_id
    return {"patient": patient, "uid": uid, "study": study, "document": document}


def _add_denial(w: World, patient: str) -> str:
    state = w.rec.AddDenial(rpb.AddDenialRequest(organisation="org-c"),
                            metadata=w.md(citizen(patient)))
    return str(state.denials[-1].denial_id)


@pytest.mark.parametrize("call", list(EACH))
def test_each_call_appends_one_event(world: World, each: dict[str, str], call: str) -> None:
    action, who, fn = EACH[call]
    if call == "RemoveDenial":  # a denial to remove, added before the count starts
        each["denial"] = _add_denial(world, each["patient"])
    with world.one_event(each["patient"]) as box:
        fn(world, each)
    ev = box.one
    assert (ev.action, ev.outcome, ev.patient_id) == (action, "allowed", each["patient"])
    assert ev.role == {"cart_a": "device", "dr_a": "clinician", "citizen": "citizen",
                       "auditor": "auditor"}[who]
    assert (ev.purpose, ev.reason, ev.emergency) == ("care", "", False)
    assert re.fullmatch("[0-9a-f]{64}", ev.hash)


def test_hashes_chain(world: World, each: dict[str, str]) -> None:
    events = world.events(patient_id=each["patient"])
    assert len({e.hash for e in events}) == len(events) > 10
    assert [e.seq for e in events] == sorted(e.seq for e in events)


def test_emergency_is_flagged_and_shown_to_the_patient(world: World) -> None:
    p = "PAT-EMERGENCY"
    uid, _, _ = world.add_ecg("cart_a", p, days_ago=1)
    with world.one_event(p) as box:
        world.ecg.GetSummary(pb.GetSummaryRequest(sop_instance_uid=uid),
                             metadata=world.md("dr_b", emergency=True))
    ev = box.one
    assert (ev.user, ev.organisation, ev.role, ev.purpose, ev.reason, ev.patient_id,
            list(ev.objects), ev.action, ev.outcome, ev.rule, ev.emergency) == (
        "dr-b", "org-b", "clinician", "emergency", REASON, p, [uid], "summary", "allowed",
        "emergency", True)

    with world.one_event(p) as box:
        log = world.rec.MyAccessLog(rpb.MyAccessLogRequest(), metadata=world.md(citizen(p)))
    mine = box.one
    assert (mine.action, mine.role, mine.outcome) == ("my-access-log", "citizen", "allowed")
    assert all(e.patient_id == p and e.user == "" and e.reason == "" for e in log.events)
    flagged = [(e.seq, e.organisation, e.action) for e in log.events if e.emergency]
    assert flagged == [(ev.seq, "org-b", "summary")]
    assert [e.seq for e in log.events] == sorted(e.seq for e in log.events)
    # The ingest is in it too, at organisation level.
    assert ("org-a", "ingest") in {(e.organisation, e.action) for e in log.events}
    others = world.rec.MyAccessLog(rpb.MyAccessLogRequest(), metadata=world.md("P2"))
    assert all(e.patient_id == "PAT-2" for e in others.events)


def test_reading_the_trail_is_audited(world: World) -> None:
    p = "PAT-TRAIL"
    world.add_ecg("cart_a", p, days_ago=1)
    before = world.events(user="audit-1")
    page = world.rec.QueryAudit(rpb.QueryAuditRequest(patient_id=p), metadata=world.md("auditor"))
    assert [e.action for e in page.events if e.user != "audit-1"] == ["ingest"]
    after = world.events(user="audit-1")
    assert [(e.action, e.role, e.organisation, e.outcome) for e in after[len(before):]] == [
        ("query-audit", "auditor", "national", "allowed")]
    refused_ = refused(lambda: world.rec.QueryAudit(rpb.QueryAuditRequest(patient_id=p),
                                                    metadata=world.md("dr_a")))
    assert refused_ == DENIED
    with world.one_event(p):
        world.rec.MyAccessLog(rpb.MyAccessLogRequest(), metadata=world.md(citizen(p)))


def test_query_audit_filters_and_pages(world: World) -> None:
    p = "PAT-WRITES"
    t0 = world.now()
    uid, _, _ = world.add_ecg("cart_a", p, days_ago=1)
    world.clock.advance(minutes=5)
    t1 = world.now()
    world.ecg.GetSummary(pb.GetSummaryRequest(sop_instance_uid=uid), metadata=world.md("dr_a"))
    world.ecg.Search(pb.SearchRequest(patient_id=p), metadata=world.md("dr_b"))
    everything = world.events(patient_id=p)
    assert [(e.action, e.user) for e in everything] == [
        ("ingest", "cart-a"), ("summary", "dr-a"), ("search", "dr-b")]
    assert [when(e.time) for e in everything] == [t0, t1, t1]
    assert len({e.hash for e in everything}) == 3
    assert [e.seq for e in world.events(patient_id=p, user="dr-b")] == [everything[2].seq]
    assert [e.seq for e in world.events(patient_id=p, organisation="org-a")] == [
        e.seq for e in everything[:2]]
    assert [e.action for e in world.events(patient_id=p, **{"from": ts(t1)})] == [
        "summary", "search"]
    assert [e.action for e in world.events(patient_id=p, to=ts(t1))] == ["ingest"]
    # One event a page, oldest first; the auditor's own queries (which may be about the
    # patient too) are left out of the comparison.
    paged: list[rpb.AuditEvent] = []
    page_token = ""
    for _ in range(20):
        page = world.rec.QueryAudit(rpb.QueryAuditRequest(patient_id=p, limit=1,
                                                          page_token=page_token),
                                    metadata=world.md("auditor"))
        assert len(page.events) <= 1
        paged += page.events
        page_token = page.next_page_token
        if not page_token:
            break
    else:
        raise AssertionError("paging QueryAudit with limit=1 did not end in 20 pages")
    auditors = {"audit-1", "audit-counter"}
    assert [e.seq for e in paged if e.user not in auditors] == [e.seq for e in everything]
    assert [e.hash for e in paged if e.user not in auditors] == [e.hash for e in everything]


def _journal_lines(directory: Path) -> list[tuple[Path, int, dict[str, Any]]]:
    out = []
    for segment in sorted(directory.glob("*.jsonl")):
        for i, line in enumerate(segment.read_bytes().splitlines()):
            out.append((segment, i, json.loads(line)))
    return out


def _rewrite(segment: Path, edit: Callable[[list[bytes]], list[bytes]]) -> None:
    lines = segment.read_bytes().splitlines()
    segment.write_bytes(b"".join(line + b"\n" for line in edit(lines)))


def _verify(directory: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(["audit", "verify", "--audit", str(directory)])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_verify_detects_modified_and_deleted_events(world: World, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    world.rec.GetConsentState(rpb.GetConsentStateRequest(), metadata=world.md("P1"))
    code, out = _verify(world.audit_dir, capsys)
    assert code == 0, out

    def copy(name: str) -> tuple[Path, list[tuple[Path, int, dict[str, Any]]]]:
        target = tmp_path / name
        shutil.copytree(world.audit_dir, target)
        return target, _journal_lines(target)

    # One byte of one event in the middle: its outcome "allowed" -> "allowee".
    target, lines = copy("modified")
    segment, index, record = next(x for x in lines[len(lines) // 2:]
                                  if x[2]["outcome"] == "allowed")

    def modify(ls: list[bytes]) -> list[bytes]:
        ls[index] = ls[index].replace(b'"outcome":"allowed"', b'"outcome":"allowee"', 1)
        return ls

    _rewrite(segment, modify)
    code, out = _verify(target, capsys)
    assert code == 1 and re.search(rf"\b{record['seq']}\b", out), out

    # One event in the middle removed.
    target, lines = copy("deleted")
    segment, index, record = lines[len(lines) // 2]
    _rewrite(segment, lambda ls: ls[:index] + ls[index + 1:])
    code, out = _verify(target, capsys)
    assert code == 1 and re.search(rf"\b{record['seq']}\b", out), out

    # The last event removed.
    target, lines = copy("last")
    segment, index, record = lines[-1]
    _rewrite(segment, lambda ls: ls[:index])
    code, out = _verify(target, capsys)
    assert code == 1 and re.search(rf"\b{record['seq']}\b", out), out

    code, out = _verify(world.audit_dir, capsys)
    assert code == 0, out
