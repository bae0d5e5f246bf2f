"""DICOM C-STORE beside gRPC Ingest and IngestStream, on the same objects, same server.

One archive (gRPC + the DICOM Storage SCP on one intake, measurement stage off)
runs in this process; the callers are threads here too, each with its own
association or channel. Every object is a distinct 12-lead 10 s 500 Hz ECG
(`bench.grpc_ingest.Payloads`), stored durably before it is answered. Each
door runs ``rounds`` times for ``seconds``; the medians are printed with the
ratio C-STORE / gRPC. pynetdicom's reactor polls every millisecond in each
association's two threads, which is part of what is measured.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.grpc_ingest import Payloads

TWELVE_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _rate(worker: Callable[[Callable[[], bool]], int], callers: int, seconds: float) -> float:
    """ECGs/s of ``callers`` threads running ``worker(go)`` until ``go()`` is False."""
    counts = [0] * callers
    end = [0.0]
    start = threading.Barrier(callers + 1)

    def run(i: int) -> None:
        start.wait()
        counts[i] = worker(lambda: time.perf_counter() < end[0])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    end[0] = t0 + seconds
    start.wait()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def main(small: bool = False) -> None:
    import grpc
    from pynetdicom import AE, _config

    from waveform.service._proto.waveform.v1 import archive_pb2 as pb
    from waveform.service._proto.waveform.v1 import archive_pb2_grpc as pb_grpc
    from waveform.service.devices import add_device
    from waveform.service.dimse import start_dicom
    from waveform.service.identity import Identity, TokenIdentities, add_token
    from waveform.service.server import start
    from waveform.store import Store

    seconds = 0.3 if small else 3.0
    rounds = 1 if small else 3
    callers = 2 if small else 8
    payloads = Payloads(2 if small else 8)
    _config.LOG_HANDLER_LEVEL = "none"
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    with tempfile.TemporaryDirectory(prefix="bench-dimse-") as tmp:
        root = Path(tmp)
        token = add_token(root / "tokens.json", Identity("org-bench", "CARTB", "device"))
        add_device(root / "devices.json", "CARTB", "org-bench")
        server = start(Store.open(root / "data", analyze=None),
                       TokenIdentities.load(root / "tokens.json"), port=0, owns_store=True)
        dicom = start_dicom(server, port=0, devices=root / "devices.json")
        auth = [("authorization", f"Bearer {token}")]
        errors = {"C-STORE": 0, "gRPC Ingest": 0, "gRPC IngestStream": 0}
        lock = threading.Lock()

        def failed(door: str) -> None:
            with lock:
                errors[door] += 1

        def c_store(go: Callable[[], bool]) -> int:
            # The cart sends a file's data set as it is (no decode and encode on the
            # cart's side, as the gRPC callers send bytes).
            ae = AE(ae_title="CARTB")
            ae.add_requested_context(TWELVE_LEAD, EXPLICIT_LE)
            assoc = ae.associate("127.0.0.1", dicom.port, ae_title="WAVEFORM")
            path = root / f"{threading.get_ident()}.dcm"
            n = 0
            try:
                while go():
                    path.write_bytes(payloads.next())
                    status = assoc.send_c_store(path)
                    if getattr(status, "Status", None) == 0x0000:
                        n += 1
                    else:
                        failed("C-STORE")
            finally:
                assoc.release()
            return n

        def unary(go: Callable[[], bool]) -> int:
            n = 0
            with grpc.insecure_channel(server.address) as ch:
                stub = pb_grpc.EcgArchiveStub(ch)
                while go():
                    try:
                        stub.Ingest(pb.IngestRequest(dicom=payloads.next()), metadata=auth)
                        n += 1
                    except grpc.RpcError:
                        failed("gRPC Ingest")
            return n

        def streamed(go: Callable[[], bool]) -> int:
            def requests() -> Iterator[Any]:
                while go():
                    yield pb.IngestRequest(dicom=payloads.next())

            n = 0
            with grpc.insecure_channel(server.address) as ch:
                for r in pb_grpc.EcgArchiveStub(ch).IngestStream(requests(), metadata=auth):
                    if r.HasField("error"):
                        failed("gRPC IngestStream")
                    else:
                        n += 1
            return n

        doors = {"C-STORE": c_store, "gRPC Ingest": unary, "gRPC IngestStream": streamed}
        try:
            for worker in doors.values():  # connections, caches, compiled kernels
                _rate(worker, 1, 0.1)
            rates = {name: statistics.median(_rate(w, callers, seconds) for _ in range(rounds))
                     for name, w in doors.items()}
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = chunked
            dicom.stop(5)
            server.stop(5)
    print(f"{payloads.size / 1e3:.0f} KB 12-lead ECGs, {callers} callers, median of "
          f"{rounds} x {seconds:g} s, stored durably before each answer\n")
    print(f"{'door':<20} {'ECGs/s':>10} {'errors':>7}")
    for name, rate in rates.items():
        print(f"{name:<20} {rate:>10,.0f} {errors[name]:>7}")
    print(f"\nC-STORE / IngestStream  {rates['C-STORE'] / rates['gRPC IngestStream']:.2f}")
    print(f"C-STORE / Ingest        {rates['C-STORE'] / rates['gRPC Ingest']:.2f}")


if __name__ == "__main__":
    main()
