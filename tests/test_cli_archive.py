"""The archive commands of the command line, against a real server on 127.0.0.1."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest
from pydicom.uid import generate_uid

from tests.conftest import Archive
from waveform.cli import main
from waveform.dicom import decode, encode
from waveform.dicom.synthetic import synthetic_ecg
from waveform.service._proto.waveform.v1 import archive_pb2 as pb
from waveform.service._proto.waveform.v1 import archive_pb2_grpc as pb_grpc
from waveform.service.identity import TokenIdentities

_SEED = iter(range(700_000, 800_000))


def _ecg(patient: str = "", **kw: object) -> bytes:
    ecg = synthetic_ecg(seed=next(_SEED), duration_s=2.0, **kw)  # type: ignore[arg-type]
    ecg = dataclasses.replace(ecg, sop_instance_uid=str(generate_uid()),
                              patient_id=patient or ecg.patient_id)
    return encode(ecg)


def _run(capsys: pytest.CaptureFixture[str], archive: Archive, who: str | None, *argv: str
         ) -> tuple[int, str, str]:
    """``waveform ARGV --server ... --token ...``: (status, stdout, stderr)."""
    conn = ["--server", archive.address, "--timeout", "30"]
    if who is not None:
        conn += ["--token", archive.tokens[who]]  # a token never starts with "-"
    code = main([*argv, *conn])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_failure_line(err: str, command: str, code: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("waveform:")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"waveform: {command}: {code}: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture()
def stored(archive: Archive) -> tuple[str, bytes]:
    data = _ecg(heart_rate=75.0)
    r = archive.stub.Ingest(pb.IngestRequest(dicom=data, wait_for_summary=True),
                            metadata=archive.auth("cart_a"), timeout=60)
    return r.sop_instance_uid, data


# ------------------------------------------------------------------ ingest
@pytest.mark.parametrize("mode", [["--concurrency", "3"], ["--unary", "-j", "2"]],
                         ids=["stream", "unary"])
def test_ingest_folder_counts_each_outcome(mode: list[str], archive: Archive, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    objects = [_ecg() for _ in range(7)]
    for i, data in enumerate(objects):
        folder = tmp_path / "in" / f"sub{i % 3}" / ("deep" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"ecg{i}.dcm").write_bytes(data)
    (tmp_path / "in" / "broken.dcm").write_bytes(b"not a DICOM object at all")
    (tmp_path / "in" / "README.txt").write_text("ignored: neither .dcm nor DICM")
    (tmp_path / "extra.bin").write_bytes(objects[0])  # named files are sent as they are

    code, out, err = _run(capsys, archive, "cart_a", "ingest", str(tmp_path / "in"),
                          str(tmp_path / "extra.bin"), *mode)
    assert code == 1  # one file was refused
    assert out.splitlines()[0].startswith("stored 7, already stored 1, rejected 1 (9 files")
    assert "rejected 1: INVALID_ARGUMENT: " in out
    assert "broken.dcm" in out and "README" not in out
    _one_failure_line(err, "ingest", "INVALID_ARGUMENT")
    assert "ingest: 9/9 (100%)" in err  # the plain progress line
    for data in objects:
        assert archive.store.get_dicom(decode(data).sop_instance_uid) == data

    code, out, err = _run(capsys, archive, "cart_a", "ingest", "-q", *mode,
                          *(str(p) for p in sorted((tmp_path / "in").rglob("ecg*.dcm"))))
    assert code == 0, err
    assert out.startswith("stored 0, already stored 7, rejected 0")
    assert err == ""


def test_ingest_refused_call_rejects_every_file_once(archive: Archive, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(5):
        (tmp_path / f"{i}.dcm").write_bytes(_ecg())
    code, out, err = _run(capsys, archive, "dr_a", "ingest", "-q", "-j", "2", str(tmp_path))
    assert code == 1
    assert out.startswith("stored 0, already stored 0, rejected 5")
    assert "rejected 5: PERMISSION_DENIED: clinician dr-a of org-a may not ingest" in out
    _one_failure_line(err, "ingest", "PERMISSION_DENIED")


def test_ingest_of_a_missing_path_fails_before_sending(archive: Archive, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, archive, "cart_a", "ingest", str(tmp_path / "nope"))
    assert code == 1 and out == ""
    _one_failure_line(err, "ingest", "NOT_FOUND")


# ------------------------------------------------------------------ search
def test_search_json_lists_exactly_the_organisations_ecgs(
        archive: Archive, capsys: pytest.CaptureFixture[str]) -> None:
    patient = f"CLI-{uuid.uuid4().hex[:8]}"
    mine = {decode(d).sop_instance_uid: d for d in (_ecg(patient) for _ in range(3))}
    theirs = {decode(d).sop_instance_uid: d for d in (_ecg(patient) for _ in range(2))}
    for who, objects in (("cart_a", mine), ("cart_b", theirs)):
        for data in objects.values():
            archive.stub.Ingest(pb.IngestRequest(dicom=data), metadata=archive.auth(who))

    code, out, err = _run(capsys, archive, "dr_a", "search", "--patient", patient,
                          "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert {h["sop_instance_uid"] for h in doc["hits"]} == set(mine)
    assert len(doc["hits"]) == 3 and doc["next_page_token"] == ""
    for h in doc["hits"]:
        ecg = decode(mine[h["sop_instance_uid"]])
        assert h["organisation"] == "org-a" and h["patient_id"] == patient
        assert ecg.acquisition_datetime is not None
        assert h["acquired"].startswith(ecg.acquisition_datetime.isoformat()[:19])
    acquired = [h["acquired"] for h in doc["hits"]]
    assert acquired == sorted(acquired, reverse=True)  # newest first by default

    one = decode(next(iter(mine.values())))
    code, out, _ = _run(capsys, archive, "dr_a", "search", "--study", one.study_instance_uid,
                        "--format", "json")
    assert [h["sop_instance_uid"] for h in json.loads(out)["hits"]] == [one.sop_instance_uid]

    code, out, _ = _run(capsys, archive, "dr_b", "search", "--patient", patient, "--asc",
                        "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["sop_instance_uid"] for r in rows} == set(theirs)
    assert [r["acquired"] for r in rows] == sorted(r["acquired"] for r in rows)

    # Pages: one at a time, the token printed for the next.
    code, out, err = _run(capsys, archive, "dr_a", "search", "--patient", patient,
                          "--limit", "2", "--format", "json")
    first = json.loads(out)
    assert len(first["hits"]) == 2 and first["next_page_token"]
    code, out, _ = _run(capsys, archive, "dr_a", "search", "--patient", patient, "--limit",
                        "2", "--page-token", first["next_page_token"], "--format", "json")
    rest = json.loads(out)
    assert {h["sop_instance_uid"] for h in first["hits"] + rest["hits"]} == set(mine)

    code, out, err = _run(capsys, archive, "dr_a", "search", "--patient", patient)
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["SOP", "instance", "UID"] and len(lines) == 2 + 3
    assert all(uid in out for uid in mine) and err == ""
    code, out, err = _run(capsys, archive, "dr_a", "search", "--patient", patient, "--limit", "2")
    assert len(out.splitlines()) == 2 + 2
    assert f"more: --page-token {first['next_page_token']}" in err


def test_search_filters_by_date_and_measure(archive: Archive,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    patient = f"CLI-{uuid.uuid4().hex[:8]}"
    slow, fast = _ecg(patient, heart_rate=60.0), _ecg(patient, heart_rate=110.0)
    for data in (slow, fast):
        archive.stub.Ingest(pb.IngestRequest(dicom=data, wait_for_summary=True),
                            metadata=archive.auth("cart_a"), timeout=60)

    def uids(*filters: str) -> set[str]:
        code, out, err = _run(capsys, archive, "dr_a", "search", "--patient", patient,
                              "--format", "json", *filters)
        assert code == 0, err
        return {h["sop_instance_uid"] for h in json.loads(out)["hits"]}

    slow_uid, fast_uid = decode(slow).sop_instance_uid, decode(fast).sop_instance_uid
    assert uids("--range", "heart_rate_bpm:90:") == {fast_uid}
    assert uids("--range", "heart_rate_bpm::70") == {slow_uid}
    assert uids("--range", "heart_rate_bpm:50:120", "--range", "qrs_ms:1:") == {slow_uid,
                                                                                 fast_uid}
    when = decode(slow).acquisition_datetime
    assert when is not None
    day = when.date()
    assert uids("--from", day.isoformat()) >= {slow_uid}
    assert uids("--to", day.isoformat()) == set()  # exclusive, and before it
    assert uids("--from", "2100-01-01") == set()


def test_search_errors_are_one_line(archive: Archive, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, archive, "cart_a", "search")
    assert code == 1
    _one_failure_line(err, "search", "PERMISSION_DENIED")
    code, _, err = _run(capsys, archive, "dr_a", "search", "--limit", "100000")
    _one_failure_line(err, "search", "INVALID_ARGUMENT")
    assert main(["search", "--range", "qtc_ms"]) == 2  # a usage error
    assert "MEASURE:LOW:HIGH" in capsys.readouterr().err


# ----------------------------------------------------------- summary, trace
def test_summary_table_and_json(archive: Archive, stored: tuple[str, bytes],
                                capsys: pytest.CaptureFixture[str]) -> None:
    uid, _ = stored
    code, out, err = _run(capsys, archive, "dr_a", "summary", uid)
    assert code == 0, err
    assert out.startswith(f"ECG {uid} (analysis ")
    rate = next(line for line in out.splitlines() if line.startswith("heart_rate_bpm "))
    assert float(rate.split()[1]) == pytest.approx(75.0, abs=3.0)

    code, out, _ = _run(capsys, archive, "dr_a", "summary", uid, "--json")
    doc = json.loads(out)
    assert doc["sop_instance_uid"] == uid
    assert doc["heart_rate_bpm"]["value"] == pytest.approx(75.0, abs=3.0)
    assert doc["document"]["analysis_version"] == doc["analysis_version"]

    code, _, err = _run(capsys, archive, "dr_b", "summary", uid)
    assert code == 1
    line = _one_failure_line(err, "summary", "NOT_FOUND")
    assert uid in line


def test_trace_csv_equals_decoded_physical_samples(archive: Archive, stored: tuple[str, bytes],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    uid, data = stored
    group = decode(data).groups[0]
    code, out, err = _run(capsys, archive, "dr_a", "trace", uid)
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["time_s", *group.leads]
    values = np.array(rows[1:], dtype=np.float64)
    assert values.shape == (group.n_samples, 1 + group.n_channels)
    assert np.allclose(values[:, 0], np.arange(group.n_samples) / group.sampling_frequency)
    assert np.allclose(values[:, 1:].T, group.physical(), rtol=1e-6, atol=1e-3)

    # A window of two leads, as the stored integers.
    code, out, err = _run(capsys, archive, "dr_a", "trace", uid, "--leads", "II,V2", "--raw",
                          "--start", "0.5", "--duration", "1")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["time_s", "II", "V2"]
    fs = group.sampling_frequency
    want = group.raw[[group.leads.index("II"), group.leads.index("V2")],
                     int(0.5 * fs):int(1.5 * fs)]
    assert np.array_equal(np.array(rows[1:], dtype=np.float64)[:, 1:].T.astype(np.int64), want)
    assert float(rows[1][0]) == pytest.approx(0.5)


@pytest.mark.parametrize("suffix", [".npy", ".parquet", ".csv"])
def test_trace_file_by_suffix(suffix: str, archive: Archive, stored: tuple[str, bytes],
                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uid, data = stored
    group = decode(data).groups[0]
    out_file = tmp_path / f"trace{suffix}"
    code, _, err = _run(capsys, archive, "dr_a", "trace", uid, "--leads", "I", "--leads", "V6",
                        "-o", str(out_file))
    assert code == 0, err
    assert f"{out_file}: 2 leads x {group.n_samples} samples at 500 Hz" in err
    want = group.physical()[[group.leads.index("I"), group.leads.index("V6")]]
    if suffix == ".npy":
        got = np.load(out_file)
        assert got.dtype == np.float32 and got.shape == want.shape
    elif suffix == ".parquet":
        table = pq.read_table(out_file)
        assert table.column_names == ["time_s", "I", "V6"]
        assert table.schema.metadata[b"sop_instance_uid"] == uid.encode()
        assert float(table.schema.metadata[b"sampling_frequency"]) == 500.0
        got = np.vstack([table.column("I").to_numpy(), table.column("V6").to_numpy()])
    else:
        got = np.loadtxt(out_file, delimiter=",", skiprows=1)[:, 1:].T
    assert np.allclose(got, want, rtol=1e-6, atol=1e-3)


def test_trace_resampled_and_errors(archive: Archive, stored: tuple[str, bytes], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    uid, data = stored
    out_file = tmp_path / "t.npy"
    code, _, err = _run(capsys, archive, "dr_a", "trace", uid, "--rate", "250",
                        "-o", str(out_file))
    assert code == 0, err
    assert np.load(out_file).shape == (12, decode(data).groups[0].n_samples // 2)
    code, _, err = _run(capsys, archive, "dr_a", "trace", uid, "--leads", "X9")
    _one_failure_line(err, "trace", "INVALID_ARGUMENT")
    code, _, err = _run(capsys, archive, "dr_a", "trace", uid, "-o", str(tmp_path / "t.xlsx"))
    line = _one_failure_line(err, "trace", "INVALID_ARGUMENT")
    assert ".csv, .npy, .npz, .parquet" in line
    code, _, err = _run(capsys, archive, "dr_a", "trace", uid, "--raw", "--rate", "250")
    _one_failure_line(err, "trace", "INVALID_ARGUMENT")


# ------------------------------------------------------------------ export
def test_export_writes_the_ingested_bytes(archive: Archive, stored: tuple[str, bytes],
                                          tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    uid, data = stored
    out_file = tmp_path / "out" / "ecg.dcm"
    out_file.parent.mkdir()
    code, out, err = _run(capsys, archive, "dr_a", "export", uid, "-o", str(out_file))
    assert code == 0, err
    assert out_file.read_bytes() == data
    assert out.strip() == f"{out_file}: {len(data)} bytes, SHA-256 " \
                          f"{hashlib.sha256(data).hexdigest()}"
    assert sorted(p.name for p in out_file.parent.iterdir()) == ["ecg.dcm"]

    missing = tmp_path / "missing.dcm"
    code, _, err = _run(capsys, archive, "dr_a", "export", "1.2.3.404", "-o", str(missing))
    assert code == 1 and not missing.exists()
    _one_failure_line(err, "export", "NOT_FOUND")
    assert list(tmp_path.glob(".*part")) == []


class _LyingArchive(pb_grpc.EcgArchiveServicer):
    """A server whose GetDicom announces another SHA-256 than it sends."""

    def GetDicom(self, request: pb.GetDicomRequest, context: grpc.ServicerContext
                 ) -> Iterator[pb.DicomChunk]:
        yield pb.DicomChunk(data=b"first half ", total_bytes=21, sha256="0" * 64)
        yield pb.DicomChunk(data=b"second half")


def test_export_refuses_bytes_that_do_not_match_the_announced_digest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = grpc.server(ThreadPoolExecutor(2))
    pb_grpc.add_EcgArchiveServicer_to_server(_LyingArchive(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        out_file = tmp_path / "x.dcm"
        code = main(["export", "1.2.3", "-o", str(out_file), "--server", f"127.0.0.1:{port}",
                     "--timeout", "10"])
        err = capsys.readouterr().err
    finally:
        server.stop(None)
    assert code == 1 and not out_file.exists()
    assert list(tmp_path.iterdir()) == []
    _one_failure_line(err, "export", "DATA_LOSS")


# ------------------------------------------------------ health, tokens, env
def test_health_reports_both_services(archive: Archive,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, archive, None, "health")
    assert code == 0, err
    assert [line.split() for line in out.splitlines()[2:]] == [
        ["(server)", "SERVING"], ["waveform.v1.EcgArchive", "SERVING"],
        ["waveform.v1.PatientRecords", "SERVING"]]


def test_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["health", "--server", "127.0.0.1:1", "--timeout", "5"])
    assert code == 1
    _one_failure_line(capsys.readouterr().err, "health", "UNAVAILABLE")


def test_server_and_token_from_the_environment(archive: Archive, stored: tuple[str, bytes],
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    uid, _ = stored
    monkeypatch.setenv("WAVEFORM_SERVER", archive.address)
    monkeypatch.setenv("WAVEFORM_TOKEN", archive.tokens["dr_a"])
    assert main(["summary", uid, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sop_instance_uid"] == uid
    # A flag wins over the environment.
    assert main(["summary", uid, "--token", "not-a-token"]) == 1
    _one_failure_line(capsys.readouterr().err, "summary", "UNAUTHENTICATED")
    monkeypatch.delenv("WAVEFORM_TOKEN")
    assert main(["summary", uid]) == 1
    line = _one_failure_line(capsys.readouterr().err, "summary", "UNAUTHENTICATED")
    assert "no credentials" in line


def test_new_tokens_never_look_like_options() -> None:
    from waveform.service.identity import new_token

    assert not any(new_token().startswith("-") for _ in range(2000))


def test_tokens_add_prints_a_token_that_authenticates(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tokens.json"
    assert main(["tokens", "add", "--file", str(path), "--org", "org-z", "--user", "cart-9",
                 "--role", "device"]) == 0
    token = capsys.readouterr().out.strip()
    assert main(["tokens", "add", "--file", str(path), "--org", "citizens", "--user", "p-9",
                 "--role", "citizen", "--patient-id", "P9"]) == 0
    citizen_token = capsys.readouterr().out.strip()
    assert token not in path.read_text() and citizen_token not in path.read_text()
    identities = TokenIdentities.load(path)
    ident = identities.authenticate(token)
    assert (ident.organisation, ident.user, ident.role) == ("org-z", "cart-9", "device")
    assert identities.authenticate(citizen_token).patient_id == "P9"

    assert main(["tokens", "add", "--file", str(path), "--org", "citizens", "--user", "p-8",
                 "--role", "citizen"]) == 1
    _one_failure_line(capsys.readouterr().err, "tokens", "INVALID_ARGUMENT")


# ------------------------------------------------------------------ render
def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_render_by_uid_draws_the_stored_ecg_on_a4(archive: Archive, stored: tuple[str, bytes],
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    uid, _ = stored
    out = tmp_path / "p.png"
    code, text, err = _run(capsys, archive, "dr_a", "render", uid, "-o", str(out), "--dpi", "100")
    assert code == 0, err
    assert uid in text
    # A4 landscape, 297 x 210 mm at 100 dpi.
    assert _png_size(out.read_bytes()) == (int(297 / 25.4 * 100), int(210 / 25.4 * 100))
    svg = tmp_path / "p.svg"
    code, _, err = _run(capsys, archive, "dr_a", "render", uid, "-o", str(svg),
                        "--layout", "12x1", "--paper", "Letter")
    assert code == 0, err
    text_svg = svg.read_text()
    # US Letter landscape, 11 x 8.5 in = 792 x 612 pt.
    assert 'width="792pt" height="612pt"' in text_svg
    for lead in ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"):
        assert f">{lead}</text>" in text_svg, lead


def test_render_refusals_are_one_line(archive: Archive, stored: tuple[str, bytes],
                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uid, _ = stored
    out = tmp_path / "p.png"
    code, _, err = _run(capsys, archive, "citizen", "render", uid, "-o", str(out))
    assert code == 1
    _one_failure_line(err, "render", "PERMISSION_DENIED")
    code, _, err = _run(capsys, archive, "dr_b", "render", uid, "-o", str(out))
    assert code == 1
    _one_failure_line(err, "render", "NOT_FOUND")
    code, _, err = _run(capsys, archive, "dr_a", "render", uid, "-o", str(tmp_path / "p.jpg"))
    assert code == 1
    assert "png, .svg, .pdf" in _one_failure_line(err, "render", "INVALID_ARGUMENT")
    assert not out.exists() and not list(tmp_path.glob(".*part"))


def test_render_local_file_needs_no_server(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "ecg.dcm"
    src.write_bytes(_ecg(heart_rate=60.0))
    out = tmp_path / "p.pdf"
    # No server listens on this port: a local file must not need one.
    code = main(["render", str(src), "-o", str(out), "--server", "127.0.0.1:9",
                 "--gain", "20"])
    assert code == 0, capsys.readouterr().err
    pdf = out.read_bytes()
    assert pdf.startswith(b"%PDF-")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"DICM" * 40)
    code = main(["render", str(bad), "-o", str(tmp_path / "bad.png")])
    assert code == 1
    _one_failure_line(capsys.readouterr().err, "render", "INVALID_ARGUMENT")


# ----------------------------------------------------------------- compact
def test_compact_offline_merges_a_stopped_archive(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from waveform.store import Store

    with Store.open(tmp_path / "a", analyze=None, auto_compact_commits=None) as store:
        for _ in range(5):  # five commits: five small files a table, enough to merge
            store.ingest([_ecg()], organisation="org-x")
        before = store.uids()
    code = main(["compact", "--data", str(tmp_path / "a")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out.startswith("merged ")
    assert int(out.out.split()[1]) > 0
    with Store.open(tmp_path / "a", analyze=None, auto_compact_commits=None) as store:
        assert sorted(store.uids()) == sorted(before)
    code = main(["compact", "--data", str(tmp_path / "nothing")])
    assert code == 1
    _one_failure_line(capsys.readouterr().err, "compact", "NOT_FOUND")
