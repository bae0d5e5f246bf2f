"""The cluster backends going away mid-ingest: PostgreSQL (catalog and locator index)
and the S3 object store are stopped for a few seconds while a store ingests. Calls
fail as retryable (`StorageError`: UNAVAILABLE), the store says it cannot write
(health NOT_SERVING) while it lasts, nothing acknowledged is lost or stored twice,
and the store recovers by itself when the backend returns."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

import pytest

from tests.conftest import Backend
from waveform.dicom import encode
from waveform.dicom.synthetic import synthetic_ecg
from waveform.errors import StorageError
from waveform.store import Store

on_cluster = pytest.mark.parametrize("backend", ["cluster"], indirect=True)


def _obj(k: int) -> bytes:
    return encode(dataclasses.replace(synthetic_ecg(seed=k % 50, duration_s=1),
                                      sop_instance_uid=f"2.25.{4_400_000 + k}"))


def _outage(store: Store, stop: Callable[[], None], start: Callable[[], None]) -> None:
    acknowledged: dict[str, str] = {}
    refused = 0
    unwritable_seen = False
    done = threading.Event()
    k = 0

    def ingest_until(deadline: float) -> None:
        nonlocal k, refused
        while time.monotonic() < deadline:
            k += 1
            try:
                r = store.submit(_obj(k), "org-a").result(60)
                acknowledged[r.sop_instance_uid] = r.sha256
            except StorageError:
                refused += 1
                time.sleep(0.05)

    ingest_until(time.monotonic() + 1.0)
    before = len(acknowledged)
    assert before > 0
    stop()
    try:
        ingest_until(time.monotonic() + 3.0)
        unwritable_seen = not store.writable
    finally:
        start()
    assert refused > 0 and unwritable_seen
    deadline = time.monotonic() + 30
    while not store.writable and time.monotonic() < deadline:
        time.sleep(0.1)
    assert store.writable, "the store did not recover by itself"
    ingest_until(time.monotonic() + 1.0)
    done.set()
    assert len(acknowledged) > before
    # Everything acknowledged is there, once; its bytes read back.
    rows = dict(store.sql("SELECT sop_instance_uid, count(*) FROM lake.ecg GROUP BY 1"))
    for uid in acknowledged:
        assert rows.get(uid) == 1, uid
        assert store.get_dicom(uid) == _obj(int(uid.rsplit(".", 1)[1]) - 4_400_000)
        assert store.submit(_obj(int(uid.rsplit(".", 1)[1]) - 4_400_000),
                            "org-a").result(60).already_stored
    assert all(n == 1 for n in rows.values())


@on_cluster
@pytest.mark.parametrize("server", ["postgres", "s3"])
def test_a_backend_stopped_mid_ingest(backend: Backend, server: str,
                                      request: pytest.FixtureRequest) -> None:
    # PostgreSQL (the catalog and the locator index), or the S3 object store.
    handle = request.getfixturevalue(server)
    with Store.open(backend.data_dir, catalog=backend.catalog, data_path=backend.data_path,
                    analyze=None, max_delay_ms=2) as store:
        _outage(store, handle.stop, handle.start)


@on_cluster
def test_the_service_says_not_serving_while_postgresql_is_down(backend: Backend,
                                                               postgres: object) -> None:
    # Over gRPC: health NOT_SERVING while the catalog is unreachable, ingest answers
    # UNAVAILABLE (retry), and both come back by themselves.
    from tests.servers import PostgresServer
    from waveform.archive import Archive
    from waveform.client import Client
    from waveform.service.identity import Identity, TokenIdentities, hash_token
    from waveform.service.server import start

    assert isinstance(postgres, PostgresServer)
    device = "device-token-of-org-a"
    identities = TokenIdentities({hash_token(device): Identity("org-a", "cart", "device")})
    store = Store.open(backend.data_dir, catalog=backend.catalog,
                       data_path=backend.data_path, analyze=None)
    archive = Archive.open(store, backend.catalog, replica="outage")
    server = start(store, identities, archive=archive, port=0)

    def status(c: Client) -> str:
        return c.health()[""]

    def wait_for(c: Client, want: str, within: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < within:
            try:
                if status(c) == want:
                    return time.monotonic() - t0
            except Exception:  # health itself answered with an error: not yet
                pass
            time.sleep(0.1)
        raise AssertionError(f"health did not become {want} within {within} s")

    try:
        with Client(server.address, device, retries=False, timeout=30) as c:
            assert status(c) == "SERVING"
            assert c.ingest([_obj(90_001)])[0].error is None
            postgres.stop()
            try:
                refused = c.ingest([_obj(90_002)], stream=False)[0]
                assert refused.error is not None
                assert type(refused.error).__name__ in ("StorageError", "Unavailable"), (
                    refused.error)
                wait_for(c, "NOT_SERVING", 15)
            finally:
                postgres.start()
            wait_for(c, "SERVING", 30)
            again = c.ingest([_obj(90_002), _obj(90_001)])
            assert again[0].error is None and not again[0].already_stored
            assert again[1].error is None and again[1].already_stored
    finally:
        server.stop(5)
        archive.close()
        store.close()
