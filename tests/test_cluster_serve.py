"""Several `waveform serve` processes (replicas) on one PostgreSQL catalog and one S3
bucket, driven over gRPC: every ECG stored once and readable byte for byte from
either replica, a replica killed mid-stream loses nothing it acknowledged and
serves again after a restart, and the audit trail of every replica verifies."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Backend
from waveform.archive import verify
from waveform.cli.serve import demo_tokens
from waveform.client import Client
from waveform.devservers import free_ports
from waveform.dicom import encode
from waveform.dicom.synthetic import synthetic_ecg
from waveform.store import Store

on_cluster = pytest.mark.parametrize("backend", ["cluster"], indirect=True)


def _obj(k: int) -> bytes:
    return encode(dataclasses.replace(synthetic_ecg(seed=k % 40, duration_s=1),
                                      sop_instance_uid=f"2.25.{7_700_000 + k}",
                                      patient_id=f"P{k % 97}"))


class Replica:
    def __init__(self, name: str, backend: Backend, tokens: Path, port: int) -> None:
        self.name, self.backend, self.tokens, self.port = name, backend, tokens, port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = backend.data_dir / f"{name}.log"

    def start(self, token: str) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "waveform.cli", "serve", "--catalog",
                 self.backend.catalog, "--data", self.backend.data_path, "--port",
                 str(self.port), "--tokens", str(self.tokens), "--replica", self.name],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                with Client(self.address, token, timeout=2) as c:
                    if c.health().get("") == "SERVING":
                        return
            except Exception:  # not listening yet
                time.sleep(0.1)
        raise AssertionError(f"{self.name} did not start:\n{self.log.read_text()[-3000:]}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)


@pytest.fixture
def replicas(backend: Backend) -> Iterator[tuple[list[Replica], dict[str, str]]]:
    tokens_file, tokens, _ = demo_tokens(backend.data_dir)
    ports = free_ports(2)
    group = [Replica(f"r{i + 1}", backend, tokens_file, p) for i, p in enumerate(ports)]
    try:
        for r in group:  # one at a time: the first creates the catalog's tables
            r.start(tokens["clinician:demo-clinic:dr-demo"])
        yield group, tokens
    finally:
        for r in group:
            r.stop()


@on_cluster
def test_two_replicas_store_2000_ecgs_once_readable_from_either(
        backend: Backend, replicas: tuple[list[Replica], dict[str, str]]) -> None:
    group, tokens = replicas
    device, clinician = tokens["device:demo-clinic:cart-1"], tokens[
        "clinician:demo-clinic:dr-demo"]
    objs = [_obj(k) for k in range(2000)]
    results: list[list[object]] = [[], []]

    def send(i: int) -> None:
        with Client(group[i].address, device) as c:
            results[i] = list(c.ingest(objs[i::2], concurrency=4))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = [r for rs in results for r in rs]
    assert len(got) == 2000
    assert all(getattr(r, "error", None) is None and not getattr(r, "already_stored", True)
               for r in got)
    by_uid = {f"2.25.{7_700_000 + k}": o for k, o in enumerate(objs)}
    with Client(group[0].address, clinician) as a, Client(group[1].address, clinician) as b:
        for k, (uid, obj) in enumerate(by_uid.items()):
            if k % 10 == 0:  # a tenth of them both ways (all of them: the count below)
                assert a.dicom(uid) == obj and b.dicom(uid) == obj
    with Store.open(backend.data_dir, catalog=backend.catalog, data_path=backend.data_path,
                    analyze=None) as s:
        assert s.sql("SELECT count(*), count(DISTINCT sop_instance_uid) FROM lake.ecg")[0] == (
            2000, 2000)
    assert verify(backend.catalog)[1] == []


@on_cluster
def test_a_replica_killed_mid_stream_loses_nothing_acknowledged(
        backend: Backend, replicas: tuple[list[Replica], dict[str, str]]) -> None:
    group, tokens = replicas
    device, clinician = tokens["device:demo-clinic:cart-1"], tokens[
        "clinician:demo-clinic:dr-demo"]
    victim, other = group
    acknowledged: dict[str, bytes] = {}
    k = 0
    for _trial in range(10):
        batch = {f"2.25.{7_700_000 + k + i}": _obj(k + i) for i in range(300)}
        k += 300
        killer = threading.Timer(0.4, victim.stop, args=(signal.SIGKILL,))
        killer.start()
        with Client(victim.address, device, timeout=30, retries=False) as c:
            try:
                for r in c.ingest(list(batch.values()), concurrency=2):
                    if r.error is None:
                        acknowledged[r.sop_instance_uid] = batch[r.sop_instance_uid]
            except Exception:  # the server went away under the call
                pass
        killer.join()
        assert victim.proc is not None and victim.proc.returncode == -signal.SIGKILL
        with Client(other.address, clinician) as c:  # all there, from the other
            for uid, obj in acknowledged.items():
                assert c.dicom(uid) == obj
        victim.start(clinician)  # restarts and serves
    assert len(acknowledged) > 0
    with Client(victim.address, device) as c:  # everything again: stored once
        again = c.ingest(list(acknowledged.values()), concurrency=2)
        assert all(r.error is None and r.already_stored for r in again)
    with Store.open(backend.data_dir, catalog=backend.catalog, data_path=backend.data_path,
                    analyze=None) as s:
        rows = s.sql("SELECT count(*), count(DISTINCT sop_instance_uid) FROM lake.ecg")[0]
        assert rows[0] == rows[1] >= len(acknowledged)
    assert verify(backend.catalog)[1] == []
