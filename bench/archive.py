"""RecentExaminations over 1,000,000 stored summaries (synthetic), p50, end to end.

A clinician about to order an ECG asks for the patient's ECGs of the last year
from every organisation they may see. Measured through the real gRPC server on
127.0.0.1 (policy decision and durable audit event included), and through the
`Archive` directly; the peer is the same question as one DuckDB SQL query of the
store (`Store.search` by patient and date, no policy), on the same data.
Target: <= 20 ms p50 through gRPC.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench._util import fmt_time, median_time, table
from waveform.archive import CARE, Archive
from waveform.model import Identity
from waveform.store import SearchQuery, Store
from waveform.store.schema import ECG, SUMMARY, SUMMARY_CONTEXT

TARGET_S = 0.020


def _build(path: Path, n: int, now: dt.datetime) -> list[str]:
    """``n`` ECGs with summaries of n/10 patients over 50 organisations, 3 years."""
    rng = np.random.default_rng(11)
    minutes = rng.integers(0, 3 * 365 * 24 * 60, n)
    uids = [f"2.25.{i}" for i in range(n)]
    patients = [f"P{p}" for p in rng.integers(0, max(n // 10, 1), n)]
    start = now.replace(tzinfo=None) - dt.timedelta(days=3 * 365)
    ecg = {f.name: pa.nulls(n, f.type) for f in ECG}
    ecg.update(
        sop_instance_uid=pa.array(uids),
        patient_id=pa.array(patients),
        organisation=pa.array([f"org-{o}" for o in rng.integers(0, 50, n)]),
        study_instance_uid=pa.array([f"2.25.9{i}" for i in range(n)]),
        acquisition_datetime=pa.array(
            [start + dt.timedelta(minutes=int(m)) for m in minutes], pa.timestamp("us")),
        sop_class_uid=pa.array(["1.2.840.10008.5.1.4.1.1.9.1.1"] * n),
    )
    summ = {f.name: pa.nulls(n, f.type) for f in SUMMARY}
    summ.update({k: ecg[k] for k in SUMMARY_CONTEXT})
    rr = rng.normal(830, 120, n)
    summ.update(
        sop_instance_uid=pa.array(uids),
        analysis_version=pa.array(["bench"] * n),
        heart_rate_bpm=pa.array(60000 / rr),
        rr_mean_ms=pa.array(rr),
        rr_sd_ms=pa.array(np.abs(rng.normal(30, 20, n))),
        pr_ms=pa.array(rng.normal(160, 20, n)),
        qtc_ms=pa.array(rng.normal(430, 40, n)),
        document=pa.array(["{}"] * n),
    )
    ecg_t, summ_t = pa.table(ecg, schema=ECG), pa.table(summ, schema=SUMMARY)
    with Store.open(path, analyze=None, auto_compact_commits=None) as s:
        step = -(-n // 16)
        for k in range(0, n, step):  # as if committed over time
            s.commit_rows({"ecg": ecg_t.slice(k, step), "summary": summ_t.slice(k, step)})
    return sorted(set(patients))


def main(small: bool = False) -> None:
    import grpc

    from waveform.service._proto.waveform.v1 import records_pb2 as rpb
    from waveform.service._proto.waveform.v1 import records_pb2_grpc as rpb_grpc
    from waveform.service.identity import TokenIdentities, add_token
    from waveform.service.server import start

    n = 10_000 if small else 1_000_000
    repeat = 20 if small else 200
    now = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        patients = _build(root / "data", n, now)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        store = Store.open(root / "data", analyze=None, analysis_version="bench",
                           auto_compact_commits=None)
        archive = Archive.open(store, root / "audit")
        opened = time.perf_counter() - t0
        rng = np.random.default_rng(5)
        asked = [patients[int(i)] for i in rng.integers(0, len(patients), repeat * 2)]
        consented = sorted(set(asked))[:20]  # their answers include other organisations'
        for p in consented:
            archive.consent.set_consent(p, True, "bench", now)
        dr = Identity("org-7", "dr-bench", "clinician")
        token = add_token(root / "tokens.json", dr)
        server = start(store, TokenIdentities.load(root / "tokens.json"), archive=archive,
                       port=0)
        channel = grpc.insecure_channel(server.address)
        stub = rpb_grpc.PatientRecordsStub(channel)
        meta = [("authorization", f"Bearer {token}")]
        try:
            it = iter(asked * 4)
            grpc_p50 = median_time(lambda: stub.RecentExaminations(
                rpb.RecentExaminationsRequest(patient_id=next(it), within_days=365),
                metadata=meta), repeat=repeat)

            def direct() -> None:
                with archive.access(dr, CARE, "recent-examinations") as acc:
                    archive.recent(acc, next(it), 365)

            direct_p50 = median_time(direct, repeat=repeat)
            since = now.replace(tzinfo=None) - dt.timedelta(days=365)
            peer_p50 = median_time(lambda: store.search(SearchQuery(
                equals=(("patient_id", next(it)),), acquired_from=since, limit=100)),
                repeat=repeat)
            listed = sum(len(stub.RecentExaminations(rpb.RecentExaminationsRequest(
                patient_id=p, within_days=365), metadata=meta).examinations) for p in consented)
        finally:
            channel.close()
            server.stop()
            archive.close()
            store.close()
    print(f"{n} ECGs with summaries, {len(patients)} patients, 50 organisations; "
          f"built in {built:.1f} s, archive opened (patient index) in {opened:.2f} s")
    print(table(
        ["one patient's ECGs of the last year", "p50", "vs peer"],
        [["RecentExaminations over gRPC (policy + audit)", fmt_time(grpc_p50),
          f"{peer_p50 / grpc_p50:.1f}x faster"],
         ["Archive.recent, in process", fmt_time(direct_p50),
          f"{peer_p50 / direct_p50:.1f}x faster"],
         ["peer: DuckDB SQL over the summaries (Store.search)", fmt_time(peer_p50), "1.0x"]]))
    verdict = "meets" if grpc_p50 <= TARGET_S else "misses"
    print(f"target <= {TARGET_S * 1e3:.0f} ms p50 through gRPC: {verdict} "
          f"({grpc_p50 * 1e3:.2f} ms); the {len(consented)} consented patients' answers "
          f"listed {listed} ECGs")


if __name__ == "__main__":
    main()
