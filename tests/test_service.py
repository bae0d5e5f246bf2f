"""The gRPC API through a real server on 127.0.0.1: answers, and one status code per failure."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import Archive, Backend, serving
from waveform.dicom import decode, encode
from waveform.dicom.synthetic import synthetic_ecg
from waveform.service._proto.waveform.v1 import archive_pb2 as pb

_SEED = iter(range(1000, 100000))


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, module_backend: Backend
            ) -> Iterator[Archive]:
    """The service on each backend in turn (embedded; PostgreSQL catalog, S3 data)."""
    with serving(tmp_path_factory.mktemp("service"), module_backend) as arch:
        yield arch


def _ecg_bytes(**kw: object) -> bytes:
    return encode(synthetic_ecg(seed=next(_SEED), duration_s=2.0, **kw))  # type: ignore[arg-type]


def _code(call: object) -> grpc.StatusCode:
    assert isinstance(call, grpc.RpcError)
    return call.code()  # type: ignore[no-any-return]


def test_ingest_then_read_back(archive: Archive) -> None:
    data = _ecg_bytes()
    uid = decode(data).sop_instance_uid
    r = archive.stub.Ingest(pb.IngestRequest(dicom=data), metadata=archive.auth("cart_a"))
    assert r.sop_instance_uid == uid and not r.already_stored
    assert r.sha256 == hashlib.sha256(data).hexdigest()
    again = archive.stub.Ingest(pb.IngestRequest(dicom=data), metadata=archive.auth("cart_a"))
    assert again.already_stored and again.sop_instance_uid == uid

    chunks = list(archive.stub.GetDicom(pb.GetDicomRequest(sop_instance_uid=uid),
                                        metadata=archive.auth("dr_a")))
    assert b"".join(c.data for c in chunks) == data
    assert chunks[0].sha256 == r.sha256 and chunks[0].total_bytes == len(data)

    trace = list(archive.stub.GetTrace(pb.GetTraceRequest(sop_instance_uid=uid),
                                       metadata=archive.auth("dr_a")))
    head = trace[0]
    assert list(head.leads) == list(decode(data).groups[0].leads)
    samples = np.concatenate([np.frombuffer(c.data, "<f4").reshape(len(head.leads), c.samples)
                              for c in trace], axis=1)
    group = decode(data).groups[0]
    assert np.allclose(samples, group.physical(), atol=1e-3)  # µV, channels in µV

    raw = list(archive.stub.GetTrace(
        pb.GetTraceRequest(sop_instance_uid=uid, units=pb.UNITS_RAW, leads=["II", "V2"],
                           start_s=0.5, duration_s=1.0), metadata=archive.auth("dr_a")))
    block = np.frombuffer(raw[0].data, "<i8").reshape(2, raw[0].samples)
    fs = group.sampling_frequency
    want = group.raw[[group.leads.index("II"), group.leads.index("V2")],
                     int(0.5 * fs):int(1.5 * fs)]
    assert np.array_equal(block, want)
    assert list(raw[0].sensitivity) == [group.channels[1].sensitivity,
                                        group.channels[7].sensitivity]


def test_ingest_waits_for_summary_when_asked(archive: Archive) -> None:
    data = _ecg_bytes(heart_rate=80.0)
    r = archive.stub.Ingest(pb.IngestRequest(dicom=data, wait_for_summary=True),
                            metadata=archive.auth("cart_a"))
    assert r.HasField("summary")
    assert r.summary.heart_rate_bpm.value == pytest.approx(80.0, abs=3.0)
    s = archive.stub.GetSummary(pb.GetSummaryRequest(sop_instance_uid=r.sop_instance_uid),
                                metadata=archive.auth("dr_a"))
    assert s.heart_rate_bpm.value == r.summary.heart_rate_bpm.value
    assert s.analysis_version


def test_search_is_confined_to_the_callers_organisation(archive: Archive) -> None:
    data = _ecg_bytes()
    ecg = decode(data)
    archive.stub.Ingest(pb.IngestRequest(dicom=data), metadata=archive.auth("cart_b"))
    mine = archive.stub.Search(pb.SearchRequest(patient_id=ecg.patient_id),
                               metadata=archive.auth("dr_b"))
    assert [h.sop_instance_uid for h in mine.hits] == [ecg.sop_instance_uid]
    assert mine.hits[0].organisation == "org-b"
    assert mine.hits[0].study_instance_uid == ecg.study_instance_uid != ""
    assert mine.hits[0].accession_number == (ecg.accession_number or "")
    # A measurement filter answers from the summary table alone: same identifiers.
    archive.store.wait_measured(30)
    ranged = archive.stub.Search(pb.SearchRequest(
        patient_id=ecg.patient_id, ranges=[pb.Range(measure="heart_rate_bpm", low=1)]),
        metadata=archive.auth("dr_b"))
    assert [h.study_instance_uid for h in ranged.hits] == [ecg.study_instance_uid]
    theirs = archive.stub.Search(pb.SearchRequest(patient_id=ecg.patient_id),
                                 metadata=archive.auth("dr_a"))
    assert list(theirs.hits) == []
    asked = archive.stub.Search(pb.SearchRequest(organisation="org-b"),
                                metadata=archive.auth("dr_a"))
    assert list(asked.hits) == []


def test_status_codes(archive: Archive) -> None:
    stub = archive.stub
    data = _ecg_bytes()
    uid = decode(data).sop_instance_uid
    stub.Ingest(pb.IngestRequest(dicom=data), metadata=archive.auth("cart_a"))

    with pytest.raises(grpc.RpcError) as e:
        stub.Ingest(pb.IngestRequest(dicom=data))
    assert _code(e.value) == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as e:
        stub.Ingest(pb.IngestRequest(dicom=data), metadata=[("authorization", "Bearer nope")])
    assert _code(e.value) == grpc.StatusCode.UNAUTHENTICATED

    with pytest.raises(grpc.RpcError) as e:
        stub.Ingest(pb.IngestRequest(dicom=data[:1000]), metadata=archive.auth("cart_a"))
    assert _code(e.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "past the end" in e.value.details()  # type: ignore[attr-defined]

    other = bytearray(data)
    other[-1] ^= 0xFF  # the same UID, other samples
    with pytest.raises(grpc.RpcError) as e:
        stub.Ingest(pb.IngestRequest(dicom=bytes(other)), metadata=archive.auth("cart_a"))
    assert _code(e.value) == grpc.StatusCode.ALREADY_EXISTS

    with pytest.raises(grpc.RpcError) as e:
        stub.Ingest(pb.IngestRequest(dicom=data), metadata=archive.auth("dr_a"))
    assert _code(e.value) == grpc.StatusCode.PERMISSION_DENIED
    for who in ("cart_a", "citizen", "admin", "auditor"):
        with pytest.raises(grpc.RpcError) as e:
            list(stub.GetTrace(pb.GetTraceRequest(sop_instance_uid=uid),
                               metadata=archive.auth(who)))
        assert _code(e.value) == grpc.StatusCode.PERMISSION_DENIED, who

    for who, want in (("dr_a", None), ("dr_b", grpc.StatusCode.NOT_FOUND)):
        request = pb.GetSummaryRequest(sop_instance_uid="1.2.3.4.5.404")
        with pytest.raises(grpc.RpcError) as e:
            stub.GetSummary(request, metadata=archive.auth(who))
        assert _code(e.value) == grpc.StatusCode.NOT_FOUND
        if want is not None:  # another organisation's ECG looks exactly like a missing one
            with pytest.raises(grpc.RpcError) as e2:
                list(stub.GetDicom(pb.GetDicomRequest(sop_instance_uid=uid),
                                   metadata=archive.auth(who)))
            assert _code(e2.value) == want
            assert e2.value.details().startswith(f"no ECG {uid} is visible")  # type: ignore[attr-defined]

    with pytest.raises(grpc.RpcError) as e:
        list(stub.GetTrace(pb.GetTraceRequest(sop_instance_uid=uid, leads=["X9"]),
                           metadata=archive.auth("dr_a")))
    assert _code(e.value) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        stub.Search(pb.SearchRequest(page_size=100_000), metadata=archive.auth("dr_a"))
    assert _code(e.value) == grpc.StatusCode.INVALID_ARGUMENT


def test_ingest_stream_answers_each_request_in_order(archive: Archive) -> None:
    objects = [_ecg_bytes() for _ in range(20)]
    objects[7] = b"not dicom at all"
    responses = list(archive.stub.IngestStream(iter([pb.IngestRequest(dicom=d) for d in objects]),
                                               metadata=archive.auth("cart_a")))
    assert len(responses) == len(objects)
    for data, r in zip(objects, responses, strict=True):
        if data == b"not dicom at all":
            assert r.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert r.error.message
        else:
            assert not r.HasField("error")
            assert r.sop_instance_uid == decode(data).sop_instance_uid


def test_health_and_reflection(archive: Archive) -> None:
    health = health_pb2_grpc.HealthStub(archive.channel)
    for service in ("", "waveform.v1.EcgArchive"):
        r = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert r.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(archive.channel)
    answers = list(refl.ServerReflectionInfo(iter([
        reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"waveform.v1.EcgArchive", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_compact_is_for_admins(archive: Archive) -> None:
    with pytest.raises(grpc.RpcError) as e:
        archive.stub.Compact(pb.CompactRequest(), metadata=archive.auth("dr_a"))
    assert _code(e.value) == grpc.StatusCode.PERMISSION_DENIED
    before = {uid: archive.store.get_dicom(uid) for uid in archive.store.uids()}
    r = archive.stub.Compact(pb.CompactRequest(), metadata=archive.auth("admin"))
    assert r.merged_files >= 0 and r.removed_files >= 0
    assert {uid: archive.store.get_dicom(uid) for uid in archive.store.uids()} == before


def test_metrics_count_calls_by_method_and_code(archive: Archive) -> None:
    from prometheus_client import generate_latest

    with pytest.raises(grpc.RpcError):
        archive.stub.GetSummary(pb.GetSummaryRequest(sop_instance_uid="1.2.3"),
                                metadata=archive.auth("dr_a"))
    text = generate_latest(archive.server.service.metrics.registry).decode()
    assert 'waveform_calls_total{code="NOT_FOUND",method="GetSummary"}' in text
    assert 'waveform_call_seconds_bucket{le="0.5",method="GetSummary"}' in text
    assert "waveform_ingest_queue_depth" in text


def test_deadline_is_honoured(archive: Archive) -> None:
    with pytest.raises(grpc.RpcError) as e:
        archive.stub.Ingest(pb.IngestRequest(dicom=_ecg_bytes()), metadata=archive.auth("cart_a"),
                            timeout=0.000001)
    assert _code(e.value) == grpc.StatusCode.DEADLINE_EXCEEDED


def test_render_is_a_printout_for_clinicians_only(archive: Archive) -> None:
    data = _ecg_bytes()
    uid = decode(data).sop_instance_uid
    archive.stub.Ingest(pb.IngestRequest(dicom=data, wait_for_summary=True),
                        metadata=archive.auth("cart_a"))
    chunks = list(archive.stub.Render(pb.RenderRequest(sop_instance_uid=uid, format="pdf"),
                                      metadata=archive.auth("dr_a")))
    pdf = b"".join(c.data for c in chunks)
    assert pdf.startswith(b"%PDF") and chunks[0].media_type == "application/pdf"
    assert chunks[0].total_bytes == len(pdf)
    png = b"".join(c.data for c in archive.stub.Render(
        pb.RenderRequest(sop_instance_uid=uid, dpi=50), metadata=archive.auth("dr_a")))
    assert png.startswith(b"\x89PNG")
    for who, code in (("citizen", grpc.StatusCode.PERMISSION_DENIED),
                      ("cart_a", grpc.StatusCode.PERMISSION_DENIED),
                      ("dr_b", grpc.StatusCode.NOT_FOUND)):
        with pytest.raises(grpc.RpcError) as e:
            list(archive.stub.Render(pb.RenderRequest(sop_instance_uid=uid),
                                     metadata=archive.auth(who)))
        assert _code(e.value) == code, who
    with pytest.raises(grpc.RpcError) as e:
        list(archive.stub.Render(pb.RenderRequest(sop_instance_uid=uid, layout="5x5"),
                                 metadata=archive.auth("dr_a")))
    assert _code(e.value) == grpc.StatusCode.INVALID_ARGUMENT
