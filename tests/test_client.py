"""`waveform.Client` against a real server on 127.0.0.1 (the session's archive)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pytest
from pydicom.uid import generate_uid

import waveform
from tests.conftest import Archive
from waveform.client import SERVICE_CONFIG, Client, FailedPrecondition, ServerError, code_name
from waveform.client.errors import CLASSES, from_status
from waveform.dicom import decode, encode
from waveform.dicom.synthetic import synthetic_ecg
from waveform.errors import (
    AccessDenied,
    Conflict,
    InvalidArgument,
    NotFound,
    Overloaded,
    StorageError,
    Unauthenticated,
)
from waveform.model import Summary
from waveform.service._proto.waveform.v1 import archive_pb2 as pb
from waveform.service._proto.waveform.v1 import archive_pb2_grpc as pb_grpc
from waveform.service.status import CODES

_SEED = iter(range(900_000, 1_000_000))


def _ecg(patient: str = "", **kw: object) -> bytes:
    ecg = synthetic_ecg(seed=next(_SEED), duration_s=2.0, **kw)  # type: ignore[arg-type]
    ecg = dataclasses.replace(ecg, sop_instance_uid=str(generate_uid()),
                              patient_id=patient or ecg.patient_id)
    return encode(ecg)


def _client(archive: Archive, who: str | None) -> Client:
    return Client(archive.address, archive.tokens[who] if who else "", timeout=60)


@pytest.fixture(scope="module")
def stored(archive: Archive) -> tuple[str, bytes]:
    data = _ecg(f"CL-{uuid.uuid4().hex[:8]}", heart_rate=75.0)
    with _client(archive, "cart_a") as c:
        [r] = c.ingest(data, wait_for_summary=True)
    assert r.ok, r.error
    return r.sop_instance_uid, data


# ----------------------------------------------------------------- ingest
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
def test_ingest_gives_one_result_per_object_in_order(stream: bool, archive: Archive,
                                                     tmp_path: Path) -> None:
    a, b = _ecg(), _ecg()
    (tmp_path / "a.dcm").write_bytes(a)
    seen: list[str] = []
    with _client(archive, "cart_a") as c:
        results = c.ingest([tmp_path / "a.dcm", b, b"not DICOM", b, tmp_path / "gone.dcm"],
                           concurrency=2, stream=stream, on_progress=lambda r: seen.append(
                               r.source))
    assert [r.source for r in results] == [str(tmp_path / "a.dcm"), "#1", "#2", "#3",
                                           str(tmp_path / "gone.dcm")]
    assert sorted(seen) == sorted(r.source for r in results)
    ok_a, ok_b, bad, again, gone = results
    assert ok_a.ok and ok_a.sop_instance_uid == decode(a).sop_instance_uid
    assert ok_a.sha256 == hashlib.sha256(a).hexdigest()
    assert ok_b.ok and again.ok and {ok_b.already_stored, again.already_stored} == {False, True}
    assert isinstance(bad.error, InvalidArgument) and code_name(bad.error) == "INVALID_ARGUMENT"
    assert "not a DICOM object" in str(bad.error)
    assert isinstance(gone.error, NotFound) and "gone.dcm" in str(gone.error)
    assert archive.store.get_dicom(ok_a.sop_instance_uid) == a


def test_ingest_with_summary_and_a_refused_caller(archive: Archive) -> None:
    data = _ecg(heart_rate=60.0)
    with _client(archive, "dr_a") as c:
        [r] = c.ingest(data)
    assert isinstance(r.error, AccessDenied)
    assert "clinician dr-a of org-a may not ingest (role device only)" in str(r.error)
    with _client(archive, "cart_a") as c:
        [r] = c.ingest(data, wait_for_summary=True, stream=False)
    assert isinstance(r.summary, Summary)
    assert r.summary.heart_rate_bpm.value == pytest.approx(60.0, abs=3.0)


def test_same_uid_other_content_is_a_conflict(archive: Archive) -> None:
    ecg = synthetic_ecg(seed=next(_SEED), duration_s=2.0)
    ecg = dataclasses.replace(ecg, sop_instance_uid=str(generate_uid()))
    first, second = encode(ecg), encode(dataclasses.replace(ecg, patient_id="OTHER"))
    with _client(archive, "cart_a") as c:
        results = c.ingest([first, second], concurrency=1)
    assert results[0].ok and isinstance(results[1].error, Conflict)
    assert code_name(results[1].error) == "ALREADY_EXISTS"


# -------------------------------------------------- summary, trace, objects
def test_summary_is_the_models_summary(archive: Archive, stored: tuple[str, bytes]) -> None:
    uid, _ = stored
    with _client(archive, "dr_a") as c:
        s = c.summary(uid)
        doc = c.summary_document(uid)
    assert isinstance(s, Summary)
    assert s.heart_rate_bpm.value == pytest.approx(75.0, abs=3.0)
    assert s == Summary.from_dict(doc)
    assert s.analysis_version == doc["analysis_version"]


def test_trace_microvolts_and_raw_with_its_scale(archive: Archive,
                                                 stored: tuple[str, bytes]) -> None:
    uid, data = stored
    group = decode(data).groups[0]
    with _client(archive, "dr_a") as c:
        t = c.trace(uid)
        w = c.trace(uid, ["II", "V2"], start=0.5, duration=1.0, raw=True)
        half = c.trace(uid, ["I"], rate=250.0)
        with pytest.raises(InvalidArgument, match="rate resamples microvolts"):
            c.trace(uid, raw=True, rate=250.0)
    assert t.units == "uV" and t.samples.dtype == np.float32 and t.leads == group.leads
    assert np.allclose(t.samples, group.physical(), rtol=1e-6, atol=1e-3)
    assert np.allclose(t.times, np.arange(group.n_samples) / group.sampling_frequency)
    fs = group.sampling_frequency
    rows = [group.leads.index("II"), group.leads.index("V2")]
    assert w.units == "raw" and w.start_s == pytest.approx(0.5)
    assert np.array_equal(w.samples, group.raw[rows, int(0.5 * fs):int(1.5 * fs)])
    assert w.sensitivity == tuple(group.channels[i].sensitivity for i in rows)
    assert w.baseline == tuple(group.channels[i].baseline for i in rows)
    assert half.sampling_frequency == 250.0 and half.samples.shape == (1, group.n_samples // 2)


def test_dicom_and_render(archive: Archive, stored: tuple[str, bytes]) -> None:
    uid, data = stored
    with _client(archive, "dr_a") as c:
        assert c.dicom(uid) == data
        png = c.render(uid, "png", dpi=50)
        svg = c.render(uid, "svg", layout="12x1")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in svg and b">V6</text>" in svg


def test_search_is_an_arrow_table_and_pages(archive: Archive) -> None:
    patient = f"CL-{uuid.uuid4().hex[:8]}"
    objects = [_ecg(patient) for _ in range(3)]
    with _client(archive, "cart_a") as c:
        assert all(r.ok for r in c.ingest(objects))
    uids = {decode(d).sop_instance_uid for d in objects}
    with _client(archive, "dr_a") as c:
        page = c.search(patient_id=patient)
        pages = list(c.search_pages(patient_id=patient, page_size=2))
        none = c.search(patient_id=patient, acquired_from=dt.date(2100, 1, 1))
    assert isinstance(page.table, pa.Table) and page.next_page_token == ""
    assert set(page.table.column("sop_instance_uid").to_pylist()) == uids
    assert page.table.schema.field("acquired").type == pa.timestamp("us", tz="UTC")
    assert [p.table.num_rows for p in pages] == [2, 1]
    assert {u for p in pages for u in p.table.column("sop_instance_uid").to_pylist()} == uids
    assert none.table.num_rows == 0


# ----------------------------------------------------------------- errors
def test_failures_are_the_projects_exceptions(archive: Archive,
                                              stored: tuple[str, bytes]) -> None:
    uid, _ = stored
    with _client(archive, "dr_b") as c, pytest.raises(NotFound, match=uid) as e:
        c.summary(uid)
    assert getattr(e.value, "code") == "NOT_FOUND"  # noqa: B009
    with _client(archive, "cart_a") as c, pytest.raises(
            AccessDenied, match="device cart-1 of org-a may not read summaries"):
        c.summary(uid)
    with _client(archive, None) as c, pytest.raises(Unauthenticated, match="no credentials"):
        c.search()
    with _client(archive, "dr_a") as c, pytest.raises(InvalidArgument, match="page_size"):
        c.search(page_size=100_000)
    with Client("127.0.0.1:1", "x", timeout=5, retries=False) as c, \
            pytest.raises(StorageError) as unavailable:
        c.search()
    assert code_name(unavailable.value) == "UNAVAILABLE"
    assert not isinstance(unavailable.value, grpc.RpcError)


def test_the_status_table_is_the_services_own_inverted() -> None:
    """Every code the service answers comes back as the class it was raised as (or
    one above it in the tree)."""
    for cls, code in CODES:
        back = CLASSES[code]
        assert issubclass(cls, back) or back.__mro__[1:] == cls.__mro__[1:], (cls, back)
        assert code_name(cls("x")) == code.name
    assert isinstance(from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy"), Overloaded)
    assert isinstance(from_status(9, "a job runs"), FailedPrecondition)
    assert isinstance(from_status(grpc.StatusCode.INTERNAL, "bug"), ServerError)


def test_server_and_token_from_the_environment(archive: Archive, stored: tuple[str, bytes],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    uid, _ = stored
    monkeypatch.setenv("WAVEFORM_SERVER", archive.address)
    monkeypatch.setenv("WAVEFORM_TOKEN", archive.tokens["dr_a"])
    with waveform.Client() as c:
        assert c.summary(uid).analysis_version
    with waveform.Client(token="not-a-token") as c, pytest.raises(Unauthenticated):
        c.summary(uid)
    with pytest.raises(InvalidArgument, match="tls_cert and tls_key go together"):
        Client(tls_cert="c.pem")


class _FlakyArchive(pb_grpc.EcgArchiveServicer):
    """Answers Search UNAVAILABLE ``failures`` times, then a page."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext
               ) -> pb.SearchResponse:
        self.calls += 1
        if self.calls <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "not stored, safe to retry: busy")
        return pb.SearchResponse(hits=[pb.SearchHit(sop_instance_uid="1.2.3")])


@pytest.fixture()
def flaky() -> Iterator[tuple[str, _FlakyArchive]]:
    servicer = _FlakyArchive(failures=2)
    server = grpc.server(ThreadPoolExecutor(2))
    pb_grpc.add_EcgArchiveServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(None)


def test_unavailable_is_retried_by_grpcs_own_policy(flaky: tuple[str, _FlakyArchive]) -> None:
    address, servicer = flaky
    policy = SERVICE_CONFIG["methodConfig"][0]["retryPolicy"]
    assert "UNAVAILABLE" in policy["retryableStatusCodes"]
    with Client(address, "t", timeout=10) as c:
        page = c.search()
    assert servicer.calls == 3  # two refusals, then the answer, in one call
    assert page.table.column("sop_instance_uid").to_pylist() == ["1.2.3"]
    servicer.calls, servicer.failures = 0, 10
    with Client(address, "t", timeout=10) as c, pytest.raises(StorageError, match="busy"):
        c.search()
    assert servicer.calls == policy["maxAttempts"]
    servicer.calls = 0
    with Client(address, "t", timeout=10, retries=False) as c, pytest.raises(StorageError):
        c.search()
    assert servicer.calls == 1


# ---------------------------------------------------------- PatientRecords
def test_documents_consent_and_the_citizens_view(archive: Archive) -> None:
    patient = "SYN000001"  # the citizen of the session's callers
    data = _ecg(patient)
    ecg = decode(data)
    with _client(archive, "cart_a") as c:
        [r] = c.ingest(data)
    assert r.ok
    with _client(archive, "dr_a") as c:
        ref = c.attach_document("statement", patient, text="Sinus rhythm.", title="Statement",
                                study_instance_uid=ecg.study_instance_uid, author="dr-a")
        docs = c.documents(study_instance_uid=ecg.study_instance_uid)
        released = c.release_document(ref.document_id)
        recent = c.recent_examinations(patient, within_days=36500)  # acquired 2024-01-01
        with pytest.raises(InvalidArgument, match="document kind 'memo'"):
            c.attach_document("memo", patient)
    assert ref.version == 1
    assert [(d.document_id, d.kind, d.text) for d in docs.documents] == [
        (ref.document_id, "statement", "Sinus rhythm.")]
    assert docs.reporting_physician == "dr-a"
    assert released.tzinfo is not None
    mine = [e for e in recent.examinations if e.sop_instance_uid == r.sop_instance_uid]
    assert len(mine) == 1 and mine[0].organisation == "org-a"
    assert mine[0].documents[0].document_id == ref.document_id

    with _client(archive, "citizen") as c:
        exams = c.my_examinations()
        state = c.set_consent(True)
        state = c.add_denial(organisation="org-z")
        [denial] = [d for d in state.denials if d.organisation == "org-z"]
        after = c.remove_denial(denial.denial_id)
        log = c.my_access_log(limit=1000)
        with pytest.raises(AccessDenied):
            c.search()
    texts = [d.text for e in exams for d in e.documents]
    assert "Sinus rhythm." in texts
    assert state.consent_granted and state.patient_id == patient
    assert denial.denial_id not in {d.denial_id for d in after.denials}
    assert any(e.organisation == "org-a" and e.user == "" for e in log.events)

    with _client(archive, "auditor") as c:
        page = c.query_audit(patient_id=patient, limit=5)
        rest = c.query_audit(patient_id=patient, limit=5, page_token=page.next_page_token)
    assert len(page.events) == 5 and page.next_page_token
    assert page.events[-1].seq < rest.events[0].seq
    assert {e.outcome for e in page.events} <= {"allowed", "denied", "failed"}
    json.dumps([dataclasses.asdict(e) for e in page.events], default=str)
