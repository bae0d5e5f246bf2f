"""The service under overload, storage failure, bad input, crashes, shutdown and TLS.

Each test runs real servers on 127.0.0.1: its own in-process server where it
needs its own configuration (`waveform.service.server.start`), or a server in a
subprocess where the test kills it.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import CALLERS, ROOT
from tests.test_mutation import Mutator, _corpus
from waveform.dicom import decode, encode
from waveform.dicom.synthetic import synthetic_ecg
from waveform.errors import WaveformError
from waveform.service._proto.waveform.v1 import archive_pb2 as pb
from waveform.service._proto.waveform.v1 import archive_pb2_grpc as pb_grpc
from waveform.service.calls import Limits
from waveform.service.identity import TokenIdentities, add_token
from waveform.service.server import Server, TlsFiles, start
from waveform.store import LocalFiles, Store
from waveform.store.testing import Failure, RecordingFiles

_SEED = iter(range(800_000, 900_000))


def _ecg_bytes(duration_s: float = 1.0) -> bytes:
    return encode(synthetic_ecg(seed=next(_SEED), duration_s=duration_s))


def _tokens(path: Path) -> dict[str, str]:
    return {who: add_token(path, ident) for who, ident in CALLERS.items()}


def _auth(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


class _Served:
    """An in-process server of the test's own, its stub and its callers' tokens."""

    def __init__(self, root: Path, store: Store, **start_options: Any) -> None:
        self.tokens = _tokens(root / "tokens.json")
        self.store = store
        self.server: Server = start(store, TokenIdentities.load(root / "tokens.json"), port=0,
                                    **start_options)
        self.channel = grpc.insecure_channel(self.server.address)
        self.stub = pb_grpc.EcgArchiveStub(self.channel)

    def auth(self, who: str) -> list[tuple[str, str]]:
        return _auth(self.tokens[who])

    def close(self) -> None:
        self.channel.close()
        self.server.stop(5)
        self.store.close()


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[Any]:
    """``served(store=None, **start_options)``: a fresh server; closed after the test."""
    made: list[_Served] = []

    def make(store: Store | None = None, **options: Any) -> _Served:
        s = _Served(tmp_path, store or Store.open(tmp_path / "data", analyze=None), **options)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def _code(exc: BaseException) -> grpc.StatusCode:
    assert isinstance(exc, grpc.RpcError), exc
    return exc.code()


def _eventually(check: Any, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


def _healthy(channel: grpc.Channel) -> bool:
    r = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="waveform.v1.EcgArchive"), timeout=5)
    return bool(r.status == health_pb2.HealthCheckResponse.SERVING)


# ------------------------------------------------------------ RESOURCE_EXHAUSTED
def test_calls_beyond_max_concurrent_are_refused_at_once(served: Any) -> None:
    # Per-caller limits as wide as the server's: this is about the server's own.
    s = served(limits=Limits(max_concurrent=2, read_reserve=0, per_identity=2,
                             streams_per_identity=2), workers=4)
    release = threading.Event()

    def held() -> Iterator[pb.IngestRequest]:
        release.wait(20)
        return
        yield

    busy = [s.stub.IngestStream(held(), metadata=s.auth("cart_a"), timeout=30)
            for _ in range(2)]
    data = _ecg_bytes()
    try:
        deadline = time.monotonic() + 10
        refused = None
        while refused is None and time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                s.stub.Ingest(pb.IngestRequest(dicom=data), metadata=s.auth("cart_a"), timeout=5)
            except grpc.RpcError as exc:
                if _code(exc) == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refused = time.monotonic() - t0, exc
                    break
                raise
            time.sleep(0.01)  # both held streams not yet counted: try again
        assert refused is not None, "no RESOURCE_EXHAUSTED while two calls held the server"
        elapsed, exc = refused
        assert elapsed < 1.0, f"refused after {elapsed:.2f} s: it should be at once"
        assert "at capacity (2 calls in progress)" in exc.details()
        # At capacity, the health service still answers (load balancers must see it).
        assert _healthy(s.channel)
    finally:
        release.set()
    for call in busy:  # the held calls end normally once their requests end
        assert list(call) == []
    r = s.stub.Ingest(pb.IngestRequest(dicom=data), metadata=s.auth("cart_a"), timeout=10)
    assert r.sop_instance_uid == decode(data).sop_instance_uid


class _BlockingWrites(RecordingFiles):
    """Data file writes wait until released: the commit stalls, the queue fills."""

    def __init__(self) -> None:
        super().__init__(LocalFiles())
        self.release = threading.Event()
        self.blocked = threading.Event()

    def write(self, path: str, data: bytes | memoryview) -> None:
        self.blocked.set()
        self.release.wait(30)
        super().write(path, data)


def test_a_full_commit_queue_answers_resource_exhausted(served: Any, tmp_path: Path) -> None:
    files = _BlockingWrites()
    store = Store.open(tmp_path / "data", files=files, analyze=None, max_queued=3,
                       max_delay_ms=1.0)
    s = served(store)
    objects = [_ecg_bytes() for _ in range(10)]
    first = s.stub.Ingest.future(pb.IngestRequest(dicom=objects[0]), metadata=s.auth("cart_a"),
                                 timeout=30)
    assert files.blocked.wait(10)  # the writer holds the first group
    t0 = time.monotonic()
    calls = [s.stub.Ingest.future(pb.IngestRequest(dicom=d), metadata=s.auth("cart_a"),
                                  timeout=30) for d in objects[1:]]
    try:
        refused: list[Any] = []
        while len(refused) < 6 and time.monotonic() - t0 < 5:
            refused = [c for c in calls if c.done() and c.exception() is not None]
            time.sleep(0.01)
        assert len(refused) == 6, "3 may wait in the queue; the other 6 must be refused"
        assert time.monotonic() - t0 < 2.0
        for c in refused:
            assert _code(c.exception()) == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "retry later" in c.exception().details()
        assert not first.done()
    finally:
        files.release.set()
    assert not first.result().already_stored
    waited = [c for c in calls if c not in refused]
    assert len(waited) == 3
    for c in waited:
        r = c.result()
        assert store.get_dicom(r.sop_instance_uid) in objects
    assert sorted(store.uids()) == sorted(
        [first.result().sop_instance_uid, *(c.result().sop_instance_uid for c in waited)])


# --------------------------------------------------------------------- UNAVAILABLE
def _data_files(store: Store) -> list[str]:
    root = Path(store.data_path)
    return sorted(str(p) for p in root.rglob("*") if p.is_file())


def test_a_failing_file_layer_answers_unavailable_and_stores_nothing(
        served: Any, tmp_path: Path) -> None:
    files = RecordingFiles(LocalFiles(), [Failure("write", 1, sticky=True)])
    store = Store.open(tmp_path / "data", files=files, analyze=None)
    s = served(store)
    data = _ecg_bytes()
    uid = decode(data).sop_instance_uid
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as e:
            s.stub.Ingest(pb.IngestRequest(dicom=data), metadata=s.auth("cart_a"), timeout=10)
        assert _code(e.value) == grpc.StatusCode.UNAVAILABLE
        assert e.value.details().startswith("not stored, safe to retry: ")
        assert "injected I/O error" in e.value.details()
    # A stream answers each request with the same status and goes on; nothing of
    # it is stored.
    answers = list(s.stub.IngestStream(
        iter([pb.IngestRequest(dicom=_ecg_bytes()) for _ in range(3)]),
        metadata=s.auth("cart_a"), timeout=10))
    assert [a.error.code for a in answers] == [grpc.StatusCode.UNAVAILABLE.value[0]] * 3
    assert all(a.error.message.startswith("not stored, safe to retry: ") for a in answers)
    assert not store.contains(uid) and store.uids() == []
    assert _data_files(store) == []
    # While the store cannot write, health says so (load balancers stop sending).
    assert _eventually(lambda: not _healthy(s.channel))

    files.failures.clear()  # the disk is back: the store recovers by itself
    assert _eventually(lambda: _healthy(s.channel))
    r = s.stub.Ingest(pb.IngestRequest(dicom=data), metadata=s.auth("cart_a"), timeout=10)
    assert not r.already_stored and store.get_dicom(uid) == data


def test_a_failed_fsync_stops_the_writer_and_every_ingest_is_unavailable(
        served: Any, tmp_path: Path) -> None:
    files = RecordingFiles(LocalFiles(), [Failure("fsync", 1)])
    store = Store.open(tmp_path / "data", files=files, analyze=None)
    s = served(store)
    for _ in range(2):  # the first fails its fsync; the writer stays stopped after it
        with pytest.raises(grpc.RpcError) as e:
            s.stub.Ingest(pb.IngestRequest(dicom=_ecg_bytes()), metadata=s.auth("cart_a"),
                          timeout=10)
        assert _code(e.value) == grpc.StatusCode.UNAVAILABLE
        assert e.value.details().startswith("not stored, safe to retry: ")
    assert store.uids() == []
    # The failed fsync's files are gone; a probe write passes, and the store starts
    # a new writer by itself (a failed fsync is never retried: new data, new files).
    assert _eventually(lambda: store.recoveries >= 1)
    assert _eventually(lambda: _healthy(s.channel))
    data = _ecg_bytes()
    r = s.stub.Ingest(pb.IngestRequest(dicom=data), metadata=s.auth("cart_a"), timeout=10)
    assert store.get_dicom(r.sop_instance_uid) == data


# ------------------------------------------------------------ mutated objects
MUTATIONS = 1000


def test_mutated_objects_are_refused_or_stored_and_the_store_is_unchanged(
        served: Any, tmp_path: Path) -> None:
    store = Store.open(tmp_path / "data", analyze=None)
    s = served(store, workers=8)
    corpus = _corpus()
    baseline = [*corpus, *(_ecg_bytes() for _ in range(3))]
    stored_before: dict[str, bytes] = {}
    for data in baseline:
        try:
            r = s.stub.Ingest(pb.IngestRequest(dicom=data), metadata=s.auth("cart_a"), timeout=30)
        except grpc.RpcError as exc:  # one the archive does not keep, or a re-encoding
            assert _code(exc) in (grpc.StatusCode.INVALID_ARGUMENT,
                                  grpc.StatusCode.ALREADY_EXISTS), exc
            continue
        stored_before[r.sop_instance_uid] = data
    assert len(stored_before) >= 4

    rng = random.Random(5)
    mutators = [Mutator(d) for d in baseline]
    cases = [rng.choice(mutators)(rng) for _ in range(MUTATIONS)]

    def send(data: bytes) -> tuple[grpc.StatusCode, str, str]:
        try:
            r = s.stub.Ingest(pb.IngestRequest(dicom=data), metadata=s.auth("cart_a"), timeout=30)
        except grpc.RpcError as exc:
            return _code(exc), exc.details(), ""
        return grpc.StatusCode.OK, "", r.sop_instance_uid

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, cases))

    counts: dict[str, int] = {}
    for data, (code, details, uid) in zip(cases, answers, strict=True):
        counts[code.name] = counts.get(code.name, 0) + 1
        try:
            local: Any = decode(data)
        except WaveformError as exc:
            local = exc
        if code == grpc.StatusCode.OK:  # it decodes: stored as sent (or it was already)
            assert not isinstance(local, Exception), f"stored an object we refuse: {local}"
            assert store.get_dicom(uid) == data or uid in stored_before
        elif code == grpc.StatusCode.ALREADY_EXISTS:  # decodes, but its UID holds other bytes
            assert not isinstance(local, Exception) and store.contains(local.sop_instance_uid)
        else:
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
            assert details and "internal error" not in details
        if isinstance(local, WaveformError):
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    print("mutations:", counts)
    assert counts.get("INVALID_ARGUMENT", 0) > MUTATIONS // 4, counts
    assert _healthy(s.channel)
    for uid, data in stored_before.items():
        chunks = s.stub.GetDicom(pb.GetDicomRequest(sop_instance_uid=uid),
                                 metadata=s.auth("dr_a"), timeout=10)
        assert b"".join(c.data for c in chunks) == data


# ------------------------------------------------------ SIGKILL during a stream
_SERVE = """
import sys, time
from waveform.service.identity import TokenIdentities
from waveform.service.server import start
from waveform.store import Store
store = Store.open(sys.argv[1], analyze=None)
server = start(store, TokenIdentities.load(sys.argv[2]), port=0)
print(server.port, flush=True)
while True:
    time.sleep(3600)
"""


def spawn_server(data_dir: Path, tokens_file: Path, timeout_s: float = 60.0
                 ) -> tuple[subprocess.Popen[str], str]:
    """A server in a child process; returns it and its address once it listens."""
    proc = subprocess.Popen([sys.executable, "-c", _SERVE, str(data_dir), str(tokens_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=ROOT)
    line: list[str] = []
    out = proc.stdout
    assert out is not None
    reader = threading.Thread(target=lambda: line.append(out.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not line or not line[0].strip().isdigit():
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"the server process did not start within {timeout_s} s")
    return proc, f"127.0.0.1:{int(line[0])}"


@pytest.mark.parametrize("kill_after", [5, 60])
def test_sigkill_during_stream_ingest_loses_nothing_acknowledged(kill_after: int,
                                                                 tmp_path: Path) -> None:
    tokens = _tokens(tmp_path / "tokens.json")
    proc, address = spawn_server(tmp_path / "data", tmp_path / "tokens.json")
    objects = {decode(d).sop_instance_uid: d for d in (_ecg_bytes() for _ in range(150))}
    acked: list[str] = []
    try:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.EcgArchiveStub(channel)
            stream = stub.IngestStream(iter([pb.IngestRequest(dicom=d) for d in objects.values()]),
                                       metadata=_auth(tokens["cart_a"]), timeout=60)
            with pytest.raises(grpc.RpcError) as e:
                for r in stream:
                    assert not r.HasField("error"), r.error.message
                    acked.append(r.sop_instance_uid)
                    if len(acked) == kill_after:
                        os.kill(proc.pid, signal.SIGKILL)
            assert _code(e.value) in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                      grpc.StatusCode.UNKNOWN)
    finally:
        proc.kill()
        proc.wait(10)
    assert kill_after <= len(acked) < len(objects)
    with Store.open(tmp_path / "data", analyze=None) as store:
        for uid in acked:
            assert store.get_dicom(uid) == objects[uid]
        for uid in store.uids():  # committed but not acknowledged is fine, if whole
            assert store.get_dicom(uid) == objects[uid]


# ------------------------------------------------------- graceful shutdown
@pytest.mark.parametrize("grace_s", [20.0, 0.2], ids=["streams-finish", "streams-cut"])
def test_graceful_shutdown_under_load_loses_nothing_acknowledged(grace_s: float,
                                                                 tmp_path: Path) -> None:
    tokens = _tokens(tmp_path / "tokens.json")
    store = Store.open(tmp_path / "data", analyze=None)
    server = start(store, TokenIdentities.load(tmp_path / "tokens.json"), port=0,
                   owns_store=True)
    batches = [[_ecg_bytes() for _ in range(40)] for _ in range(4)]
    sent = {decode(d).sop_instance_uid: d for b in batches for d in b}
    acked: list[str] = []
    outcome: list[str] = []
    started = threading.Event()
    channel = grpc.insecure_channel(server.address)
    stub = pb_grpc.EcgArchiveStub(channel)

    def requests(batch: list[bytes]) -> Iterator[pb.IngestRequest]:
        for d in batch:
            yield pb.IngestRequest(dicom=d)
            time.sleep(0.002)  # a cart that sends as it records

    def run(batch: list[bytes]) -> None:
        mine = []
        try:
            for r in stub.IngestStream(requests(batch), metadata=_auth(tokens["cart_a"]),
                                       timeout=60):
                assert not r.HasField("error"), r.error.message
                mine.append(r.sop_instance_uid)
                acked.append(r.sop_instance_uid)
                started.set()
            outcome.append("OK")
            # A stream let finish was answered for every object, in order.
            assert mine == [decode(d).sop_instance_uid for d in batch]
        except grpc.RpcError as exc:
            outcome.append(_code(exc).name)

    try:
        with ThreadPoolExecutor(4) as pool:
            streams = [pool.submit(run, b) for b in batches]
            assert started.wait(30)
            stopper = threading.Thread(target=server.stop, args=(grace_s,))
            stopper.start()
            time.sleep(0.05)
            with pytest.raises(grpc.RpcError) as e:  # new calls are refused meanwhile
                stub.Ingest(pb.IngestRequest(dicom=_ecg_bytes()),
                            metadata=_auth(tokens["cart_a"]), timeout=10)
            assert _code(e.value) == grpc.StatusCode.UNAVAILABLE
            for f in streams:
                f.result(60)
            stopper.join(60)
            assert not stopper.is_alive()
    finally:
        channel.close()
        server.stop(1)
    assert set(outcome) <= {"OK", "UNAVAILABLE"}, outcome
    with Store.open(tmp_path / "data", analyze=None) as reopened:
        for uid in acked:
            assert reopened.get_dicom(uid) == sent[uid]
        assert set(reopened.uids()) <= set(sent)
    assert len(outcome) == 4 and len(acked) >= 40 * outcome.count("OK")
    if grace_s > 10:
        assert outcome == ["OK"] * 4
    print("graceful shutdown: streams", outcome, "acknowledged", len(acked), "of", len(sent))


# ------------------------------------------------------------------ TLS, mTLS
def _certificates(root: Path) -> dict[str, Path]:
    """A throwaway CA; a server certificate for 127.0.0.1; clients of org-a and org-b."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    out: dict[str, Path] = {}

    def save(name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        out[f"{name}.key"] = root / f"{name}.key"
        out[f"{name}.key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        out[f"{name}.pem"] = root / f"{name}.pem"
        out[f"{name}.pem"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(name: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
              signer: ec.EllipticCurvePrivateKey, *extensions: tuple[Any, bool]
              ) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5))
             .not_valid_after(now + dt.timedelta(days=1)))
        for ext, critical in extensions:
            b = b.add_extension(ext, critical=critical)
        return b.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "waveform test CA")])
    save("ca", ca_key, issue(ca_name, ca_key, ca_name, ca_key,
                             (x509.BasicConstraints(ca=True, path_length=None), True)))
    key = ec.generate_private_key(ec.SECP256R1())
    save("server", key, issue(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]), key, ca_name, ca_key,
        (x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                      x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)))
    for org in ("org-a", "org-b"):
        key = ec.generate_private_key(ec.SECP256R1())
        save(org, key, issue(
            x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                       x509.NameAttribute(NameOID.COMMON_NAME, f"cart of {org}")]),
            key, ca_name, ca_key,
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)))
    return out


def _tls_stub(address: str, certs: dict[str, Path], client: str | None) -> Any:
    creds = grpc.ssl_channel_credentials(
        root_certificates=certs["ca.pem"].read_bytes(),
        private_key=certs[f"{client}.key"].read_bytes() if client else None,
        certificate_chain=certs[f"{client}.pem"].read_bytes() if client else None)
    channel = grpc.secure_channel(address, creds)
    return channel, pb_grpc.EcgArchiveStub(channel)


def test_mutual_tls_matches_the_certificate_organisation_to_the_token(
        served: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    certs = _certificates(tmp_path)
    s = served(tls=TlsFiles(certs["server.pem"], certs["server.key"], certs["ca.pem"]))
    address = s.server.address
    data = _ecg_bytes()

    channel, stub = _tls_stub(address, certs, "org-a")
    with channel:
        r = stub.Ingest(pb.IngestRequest(dicom=data), metadata=s.auth("cart_a"), timeout=10)
        assert r.sop_instance_uid == decode(data).sop_instance_uid
        hits = stub.Search(pb.SearchRequest(), metadata=s.auth("dr_a"), timeout=10).hits
        assert [h.sop_instance_uid for h in hits] == [r.sop_instance_uid]
        with pytest.raises(grpc.RpcError) as e:  # a token of another organisation
            stub.Search(pb.SearchRequest(), metadata=s.auth("dr_b"), timeout=10)
        assert _code(e.value) == grpc.StatusCode.PERMISSION_DENIED

    channel, stub = _tls_stub(address, certs, "org-b")
    with channel:
        with pytest.raises(grpc.RpcError) as e:
            stub.Ingest(pb.IngestRequest(dicom=data), metadata=s.auth("cart_a"), timeout=10)
        assert _code(e.value) == grpc.StatusCode.PERMISSION_DENIED
        assert "'org-b'" in e.value.details() and "'org-a'" in e.value.details()

    channel, stub = _tls_stub(address, certs, None)  # no client certificate: no handshake
    with channel:
        with pytest.raises(grpc.RpcError) as e:
            stub.Ingest(pb.IngestRequest(dicom=data), metadata=s.auth("cart_a"), timeout=10)
        assert _code(e.value) == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(address) as plain:  # nor in clear text
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.EcgArchiveStub(plain).Ingest(pb.IngestRequest(dicom=data),
                                                 metadata=s.auth("cart_a"), timeout=10)
        assert _code(e.value) == grpc.StatusCode.UNAVAILABLE

    # The command line speaks mutual TLS too.
    from waveform.cli import main

    tls = ["--server", address, "--tls-ca", str(certs["ca.pem"]), "--timeout", "10"]
    assert main(["health", *tls, "--tls-cert", str(certs["org-a.pem"]),
                 "--tls-key", str(certs["org-a.key"])]) == 0
    assert re.search(r"^waveform\.v1\.EcgArchive\s+SERVING$", capsys.readouterr().out, re.M)
    assert main(["search", *tls, "--tls-cert", str(certs["org-b.pem"]), "--tls-key",
                 str(certs["org-b.key"]), "--token", s.tokens["dr_a"]]) == 1
    assert capsys.readouterr().err.startswith("waveform: search: PERMISSION_DENIED: ")


def test_tls_without_client_certificates(served: Any, tmp_path: Path) -> None:
    certs = _certificates(tmp_path)
    s = served(tls=TlsFiles(certs["server.pem"], certs["server.key"]))
    channel, stub = _tls_stub(s.server.address, certs, None)
    with channel:
        data = _ecg_bytes()
        r = stub.Ingest(pb.IngestRequest(dicom=data), metadata=s.auth("cart_b"), timeout=10)
        assert s.store.get_dicom(r.sop_instance_uid) == data
        assert s.store.ecg_context(r.sop_instance_uid)["organisation"] == "org-b"
