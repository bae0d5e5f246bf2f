"""The audit journal on its own: the chain, recovery, rotation, queries, and what
happens when an event cannot be made durable (then no data is returned)."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from pathlib import Path

import grpc
import pytest

from waveform.archive import Archive, AuditEvent, AuditTrail, ManualClock, verify
from waveform.archive.audit import event_digest, open_trail
from waveform.dicom import encode
from waveform.dicom.synthetic import synthetic_ecg
from waveform.errors import DurabilityError, StorageError
from waveform.service._proto.waveform.v1 import archive_pb2 as pb
from waveform.service._proto.waveform.v1 import archive_pb2_grpc as pb_grpc
from waveform.service.identity import Identity, TokenIdentities, add_token
from waveform.service.server import start
from waveform.store import Store

T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)


def _event(i: int, patient: str = "P1", user: str = "dr-a", org: str = "org-a") -> AuditEvent:
    return AuditEvent(user=user, organisation=org, role="clinician", action="trace",
                      outcome="allowed", rule="controller", patient_id=patient,
                      objects=[f"1.2.{i}"])


def _lines(d: Path) -> list[str]:
    return [line for p in sorted(d.glob("*.jsonl")) for line in p.read_text().splitlines()]


def test_events_chain_in_order_and_survive_a_reopen(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path, ManualClock(T0))
    written = [trail.append(_event(i)) for i in range(5)]
    trail.close()
    assert [e.seq for e in written] == [1, 2, 3, 4, 5]
    assert written[0].prev == "0" * 64
    assert all(b.prev == a.hash for a, b in itertools.pairwise(written))
    trail = AuditTrail(tmp_path, ManualClock(T0))
    assert trail.append(_event(5)).prev == written[-1].hash
    trail.close()
    assert verify(tmp_path) == (6, [])


def test_verify_names_the_first_changed_or_removed_event(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path)
    for i in range(6):
        trail.append(_event(i))
    trail.close()
    seg = sorted(tmp_path.glob("*.jsonl"))[0]
    good = seg.read_text()
    lines = good.splitlines()

    seg.write_text(good.replace('"dr-a"', '"dr-x"', 1))  # event 1 edited
    problems = verify(tmp_path)[1]
    assert problems and "event 1 was modified" in problems[0]

    seg.write_text("\n".join(lines[:2] + lines[3:]) + "\n")  # event 3 removed
    problems = verify(tmp_path)[1]
    assert problems and "event 3 is missing" in problems[0]

    seg.write_text("\n".join(lines[:-1]) + "\n")  # the last event removed
    problems = verify(tmp_path)[1]
    assert problems and "events 6..6 were removed" in problems[0]

    # Re-hashing an edited event does not help: the next one no longer chains.
    rec = json.loads(lines[1])
    rec["user"] = "someone-else"
    rec["hash"] = event_digest(rec)
    seg.write_text("\n".join([lines[0], json.dumps(rec), *lines[2:]]) + "\n")
    problems = verify(tmp_path)[1]
    assert problems and "event 3 does not chain to event 2" in problems[0]

    seg.write_text(good)
    assert verify(tmp_path) == (6, [])


def test_a_torn_last_line_is_dropped_on_open(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path)
    trail.append(_event(1))
    trail.close()
    seg = sorted(tmp_path.glob("*.jsonl"))[0]
    with open(seg, "ab") as f:
        f.write(b'{"seq": 2, "user": "cut by a cra')  # never acknowledged
    assert verify(tmp_path)[1]
    trail = AuditTrail(tmp_path)
    assert trail.append(_event(2)).seq == 2
    trail.close()
    assert verify(tmp_path) == (2, [])


def test_segments_rotate_and_queries_span_them(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    trail = AuditTrail(tmp_path, clock, segment_bytes=2000)
    for i in range(30):
        clock.advance(minutes=1)
        trail.append(_event(i, patient=f"P{i % 3}", user=f"u{i % 2}",
                            org="org-a" if i < 20 else "org-b"))
    assert len(list(tmp_path.glob("*.jsonl"))) > 3
    assert [r["seq"] for r in trail.query(patient_id="P1")] == list(range(2, 31, 3))
    assert len(trail.query(user="u0", organisation="org-b")) == 5
    window = trail.query(time_from=T0 + dt.timedelta(minutes=10),
                         time_to=T0 + dt.timedelta(minutes=13))
    assert [r["seq"] for r in window] == [10, 11, 12]
    page = trail.query(after_seq=25, limit=3)
    assert [r["seq"] for r in page] == [26, 27, 28]
    assert page[0]["objects"] == ["1.2.25"] and page[0]["emergency"] is False
    trail.close()
    assert verify(tmp_path) == (30, [])


def test_a_failed_fsync_is_never_acknowledged_and_stops_the_trail(tmp_path: Path) -> None:
    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    trail = AuditTrail(tmp_path, fsync=failing)
    with pytest.raises(DurabilityError, match="could not be made durable"):
        trail.append(_event(1))
    with pytest.raises(StorageError, match="cannot be written"):
        trail.append(_event(2))
    trail.close()


def test_no_data_leaves_the_service_without_its_audit_event(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "data", analyze=None)
    fail = {"on": False}

    def fsync(fd: int) -> None:
        if fail["on"]:
            raise OSError(28, "No space left on device")
        import os

        os.fsync(fd)

    archive = Archive.open(store, tmp_path / "audit")
    archive.audit.close()
    archive.audit = AuditTrail(tmp_path / "audit", fsync=fsync)
    tokens = tmp_path / "tokens.json"
    cart = add_token(tokens, Identity("org-a", "cart", "device"))
    dr = add_token(tokens, Identity("org-a", "dr", "clinician"))
    server = start(store, TokenIdentities.load(tokens), archive=archive, port=0)
    channel = grpc.insecure_channel(server.address)
    stub = pb_grpc.EcgArchiveStub(channel)
    try:
        data = encode(synthetic_ecg(seed=21, duration_s=2.0))
        uid = stub.Ingest(pb.IngestRequest(dicom=data),
                          metadata=[("authorization", f"Bearer {cart}")]).sop_instance_uid
        auth = [("authorization", f"Bearer {dr}")]
        assert list(stub.GetDicom(pb.GetDicomRequest(sop_instance_uid=uid), metadata=auth))
        fail["on"] = True
        with pytest.raises(grpc.RpcError) as e:
            list(stub.GetDicom(pb.GetDicomRequest(sop_instance_uid=uid), metadata=auth))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "audit" in e.value.details()
        got: list[object] = []
        with pytest.raises(grpc.RpcError) as e:
            for chunk in stub.GetTrace(pb.GetTraceRequest(sop_instance_uid=uid), metadata=auth):
                got.append(chunk)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and got == []
    finally:
        channel.close()
        server.stop()
        archive.close()
        store.close()


def test_an_event_that_cannot_be_encoded_is_refused_and_the_trail_goes_on(
        tmp_path: Path) -> None:
    trail = open_trail(tmp_path, ManualClock(T0))
    assert isinstance(trail, AuditTrail)
    with pytest.raises(StorageError, match="could not be written"):
        trail.append(_event(1, user="\udc80"))  # a lone surrogate: no UTF-8 for it
    assert trail.failed is None
    assert trail.append(_event(2)).seq == 1
    trail.close()
    assert verify(str(tmp_path)) == (1, [])
