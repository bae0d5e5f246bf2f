"""The PatientRecords commands (documents, consent, denials, recent, my, audit
query), in table and JSON, against the session's real server."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

import pytest
from pydicom.uid import generate_uid

from tests.conftest import Archive
from waveform.cli import main
from waveform.dicom import decode, encode
from waveform.dicom.synthetic import synthetic_ecg
from waveform.service._proto.waveform.v1 import archive_pb2 as pb

PATIENT = "SYN000001"  # the session's citizen
OPERATOR = "Nurse^Records-CLI"  # tells this examination apart in the citizen's view


def _run(capsys: pytest.CaptureFixture[str], archive: Archive, who: str, *argv: str
         ) -> tuple[int, str, str]:
    code = main([*argv, "--server", archive.address, "--timeout", "30",
                 "--token", archive.tokens[who]])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def exam(archive: Archive) -> tuple[str, str]:
    """An ECG of the citizen at org-a (read by Reader^Rex): (SOP, Study Instance UID)."""
    ecg = synthetic_ecg(seed=4242, duration_s=2.0)
    ecg = dataclasses.replace(ecg, sop_instance_uid=str(generate_uid()),
                              study_instance_uid=str(generate_uid()), patient_id=PATIENT,
                              reading_physician="Reader^Rex", operator=OPERATOR)
    r = archive.stub.Ingest(pb.IngestRequest(dicom=encode(ecg)), metadata=archive.auth("cart_a"),
                            timeout=60)
    return r.sop_instance_uid, decode(encode(ecg)).study_instance_uid


def test_documents_attach_list_release(archive: Archive, exam: tuple[str, str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    _, study = exam
    code, out, err = _run(capsys, archive, "dr_a", "documents", "attach", "--kind", "statement",
                          "--patient", PATIENT, "--study", study, "--title", "Statement",
                          "--text", "Sinus rhythm, normal ECG.", "--author", "Stat^Ida",
                          "--format", "json")
    assert code == 0, err
    ref = json.loads(out)
    assert ref["version"] == 1 and ref["document_id"]

    # The citizen: the examination, but the statement is inside its release delay,
    # so neither it nor the name of its author (nor the ECG's reader) shows.
    code, out, err = _run(capsys, archive, "citizen", "my", "examinations", "--format", "json")
    assert code == 0, err
    [mine] = [e for e in json.loads(out)["examinations"] if e["performer"] == OPERATOR]
    assert mine["reporting_physician"] == "" and mine["documents"] == []

    code, out, err = _run(capsys, archive, "dr_a", "documents", "list", "--study", study)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["document", "v", "kind"]
    assert ref["document_id"] in lines[2] and "statement" in lines[2]
    assert lines[-1] == f"performer: {OPERATOR}; reporting physician: Stat^Ida"
    code, out, _ = _run(capsys, archive, "dr_a", "documents", "list", "--study", study,
                        "--format", "json")
    doc = json.loads(out)
    assert [d["text"] for d in doc["documents"]] == ["Sinus rhythm, normal ECG."]
    assert doc["reporting_physician"] == "Stat^Ida"

    code, out, err = _run(capsys, archive, "dr_a", "documents", "release", ref["document_id"],
                          "--format", "json")
    assert code == 0, err
    assert json.loads(out)["released_at"].endswith("+00:00")
    code, out, _ = _run(capsys, archive, "citizen", "my", "examinations", "--format", "json",
                        "--text")
    [released] = [e for e in json.loads(out)["examinations"] if e["performer"] == OPERATOR]
    assert [d["document_id"] for d in released["documents"]] == [ref["document_id"]]
    assert released["reporting_physician"] == "Stat^Ida"
    code, out, _ = _run(capsys, archive, "citizen", "my", "examinations", "--text")
    assert "Sinus rhythm, normal ECG." in out

    # Refusals are one line, usage errors exit 2.
    code, _, err = _run(capsys, archive, "citizen", "documents", "list", "--study", study)
    assert code == 1 and err.startswith("waveform: documents: PERMISSION_DENIED: ")
    code, _, err = _run(capsys, archive, "dr_a", "documents", "list")
    assert code == 2 and "--study, --accession or --document-id" in err


def test_consent_and_denials(archive: Archive, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, archive, "citizen", "consent", "grant")
    assert code == 0, err
    assert out.startswith(f"patient {PATIENT}: consent to disclosure granted (since ")
    code, out, _ = _run(capsys, archive, "citizen", "denials", "add", "--organisation",
                        "org-q", "--format", "json")
    state = json.loads(out)
    [denial] = [d for d in state["denials"] if d["organisation"] == "org-q"]
    code, out, _ = _run(capsys, archive, "citizen", "consent", "show")
    assert denial["denial_id"] in out and "org-q" in out
    code, out, _ = _run(capsys, archive, "citizen", "consent", "show", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert denial["denial_id"] in {r["denial_id"] for r in rows}
    code, out, _ = _run(capsys, archive, "citizen", "denials", "remove", denial["denial_id"],
                        "--format", "json")
    assert denial["denial_id"] not in {d["denial_id"] for d in json.loads(out)["denials"]}
    code, out, _ = _run(capsys, archive, "citizen", "consent", "withdraw", "--format", "json")
    assert json.loads(out)["consent_granted"] is False
    code, _, err = _run(capsys, archive, "citizen", "denials", "add")
    assert code == 2 and "exactly one of --organisation and --study" in err
    code, _, err = _run(capsys, archive, "dr_a", "consent", "show")
    assert code == 1
    assert "may not read a citizen's consent (role citizen only)" in err


def test_recent_examinations(archive: Archive, exam: tuple[str, str],
                             capsys: pytest.CaptureFixture[str]) -> None:
    sop, _ = exam
    code, out, err = _run(capsys, archive, "dr_a", "recent", PATIENT, "--within-days", "36500",
                          "--format", "json")
    assert code == 0, err
    got = json.loads(out)
    assert sop in {e["sop_instance_uid"] for e in got["examinations"]}
    code, out, err = _run(capsys, archive, "dr_a", "recent", PATIENT, "--within-days", "36500")
    assert out.splitlines()[0].split()[:3] == ["acquired", "organisation", "type"]
    assert sop in out


def test_access_log_and_audit_query(archive: Archive, exam: tuple[str, str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, archive, "citizen", "my", "access-log", "--format", "json",
                          "--limit", "1000")
    assert code == 0, err
    events = json.loads(out)["events"]
    assert events and all(e["user"] == "" for e in events)
    code, out, err = _run(capsys, archive, "auditor", "audit", "query", "--patient", PATIENT,
                          "--limit", "2")
    assert code == 0, err
    assert out.splitlines()[0].split()[:3] == ["seq", "time", "organisation"]
    assert len(out.splitlines()) == 2 + 2 and "more: --page-token " in err
    # Every page, streamed: JSON lines, one event each, oldest first.
    code, out, err = _run(capsys, archive, "auditor", "audit", "query", "--patient", PATIENT,
                          "--limit", "3", "--all", "--format", "json")
    assert code == 0, err
    seqs = [json.loads(line)["seq"] for line in out.splitlines()]
    assert len(seqs) > 3 and seqs == sorted(seqs)
    code, _, err = _run(capsys, archive, "dr_a", "audit", "query")
    assert code == 1 and "may not query the audit trail (role auditor only)" in err
