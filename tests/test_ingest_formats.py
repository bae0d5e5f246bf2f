"""The carts' own files through the archive's gRPC doors: `Ingest`/`IngestStream` of GE
MUSE XML, Philips Sierra XML, HL7 aECG and SCP-ECG files, the DICOM object made of
each (`GetDicom`), the file kept byte for byte (`GetOriginal`, access-checked and
audited like `GetDicom`), the summary's and the search hit's ``source_format``.

Each real file of ``../shared/data/other`` (skipped when absent) and a synthetic file
of each format written by the formats tests' writers (always present). Also the
store's 64-bit unsigned padding (UV objects of the synthetic corpus).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from tests.conftest import SHARED
from tests.test_formats_synthetic import (
    synthetic_aecg,
    synthetic_muse,
    synthetic_scp,
    synthetic_sierra,
)
from waveform.dicom import decode, encode
from waveform.dicom.synthetic import corpus
from waveform.formats import FORMATS, cart_format, convert
from waveform.service._proto.waveform.v1 import archive_pb2 as pb
from waveform.service._proto.waveform.v1 import archive_pb2_grpc as pb_grpc
from waveform.service.identity import Identity, TokenIdentities, add_token
from waveform.service.server import Server, start
from waveform.store import Store

OTHER = SHARED / "other"
#: Real files that are no ECG: PixelMed's samples and readme.
NOT_ECG = {"pixelmed_PFE105.dat", "pixelmed_PFE105.readme.txt"}
#: ECGs refused: the anonymised MUSE exports state no acquisition date (docs/formats.md).
UNDATED = {"braveheart_gemuse_example1.xml", "braveheart_gemuse_example2.xml",
           "braveheart_gemuse_example3.xml"}
REAL = (sorted(p.name for p in OTHER.iterdir() if p.name not in NOT_ECG | UNDATED)
        if OTHER.is_dir() else [])

SYNTHETIC: dict[str, Callable[[], bytes]] = {
    "scp-ecg": synthetic_scp, "ge-muse-xml": synthetic_muse,
    "philips-sierra-xml": synthetic_sierra, "hl7-aecg": synthetic_aecg,
}
CALLERS = {
    "cart_a": Identity("org-a", "cart-1", "device"),
    "dr_a": Identity("org-a", "dr-a", "clinician"),
    "dr_b": Identity("org-b", "dr-b", "clinician"),
}
OK = grpc.StatusCode.OK


@dataclass
class Site:
    server: Server
    stub: pb_grpc.EcgArchiveStub
    tokens: dict[str, str]

    def md(self, who: str) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.tokens[who]}")]

    def ingest(self, data: bytes, format: str = "", summary: bool = False) -> pb.IngestResponse:
        return self.stub.Ingest(pb.IngestRequest(dicom=data, format=format,
                                                 wait_for_summary=summary),
                                metadata=self.md("cart_a"), timeout=120)

    def chunks(self, method: str, uid: str, who: str = "dr_a") -> list[Any]:
        request = (pb.GetDicomRequest if method == "GetDicom" else pb.GetOriginalRequest)(
            sop_instance_uid=uid)
        return list(getattr(self.stub, method)(request, metadata=self.md(who)))

    def audit(self, action: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for seg in sorted(self.server.archive.audit.directory.glob("*.jsonl")):
            events += [json.loads(line) for line in seg.read_text().splitlines()]
        return [e for e in events if e["action"] == action]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("formats")
    tokens_file = root / "tokens.json"
    tokens = {who: add_token(tokens_file, ident) for who, ident in CALLERS.items()}
    server = start(Store.open(root / "data"), TokenIdentities.load(tokens_file), port=0,
                   owns_store=True)
    with grpc.insecure_channel(server.address) as channel:
        yield Site(server, pb_grpc.EcgArchiveStub(channel), tokens)
    server.stop(5)


def joined(chunks: list[Any]) -> bytes:
    return b"".join(c.data for c in chunks)


def same_samples(dicom: bytes, expected: Any) -> None:
    """``dicom`` decodes to the integers, sensitivities and baselines of ``expected``."""
    got = decode(dicom)
    assert [g.label for g in got.groups] == [g.label for g in expected.groups]
    for g, e in zip(got.groups, expected.groups, strict=True):
        assert g.raw.dtype == e.raw.dtype and np.array_equal(g.raw, e.raw)
        assert [c.lead for c in g.channels] == [c.lead for c in e.channels]
        assert [c.sensitivity for c in g.channels] == [c.sensitivity for c in e.channels]
        assert [c.baseline for c in g.channels] == [c.baseline for c in e.channels]


def check_stored(site: Site, data: bytes, uid: str, fmt: str) -> None:
    """GetOriginal is the file byte for byte (format and SHA-256 in the first chunk);
    GetDicom is our encoder's object, whose samples are `convert`'s."""
    converted = convert(data)
    assert converted.format == fmt
    chunks = site.chunks("GetOriginal", uid)
    assert joined(chunks) == data
    assert (chunks[0].format, chunks[0].sha256, chunks[0].total_bytes) == (
        fmt, hashlib.sha256(data).hexdigest(), len(data))
    dicom = joined(site.chunks("GetDicom", uid))
    assert dicom == converted.dicom
    same_samples(dicom, converted.ecg)


# ------------------------------------------------------------- synthetic files


@pytest.mark.parametrize("fmt", sorted(SYNTHETIC))
def test_synthetic_file_is_stored_with_its_original(site: Site, fmt: str) -> None:
    data = SYNTHETIC[fmt]()
    assert cart_format(data) == fmt
    first = site.ingest(data, summary=True)
    uid = convert(data).ecg.sop_instance_uid
    assert (first.sop_instance_uid, first.already_stored) == (uid, False)
    assert first.sha256 == hashlib.sha256(convert(data).dicom).hexdigest()
    assert first.summary.source_format == fmt
    check_stored(site, data, uid, fmt)
    again = site.ingest(data)
    assert (again.sop_instance_uid, again.already_stored, again.sha256) == (
        uid, True, first.sha256)
    summary = site.stub.GetSummary(pb.GetSummaryRequest(sop_instance_uid=uid),
                                   metadata=site.md("dr_a"))
    assert summary.source_format == fmt


def test_stated_format_over_a_stream(site: Site) -> None:
    """IngestStream: each request's format stated or recognised; a malformed file or
    a wrong stated format is that request's INVALID_ARGUMENT, and the stream goes on."""
    muse, scp = synthetic_muse(), synthetic_scp(subtract=True)
    bad = re.sub(rb"<LeadDataCRC32>\d+", b"<LeadDataCRC32>12345", muse, count=1)
    requests = [pb.IngestRequest(dicom=scp, format="scp-ecg"),
                pb.IngestRequest(dicom=bad),
                pb.IngestRequest(dicom=muse, format="hl7-aecg"),
                pb.IngestRequest(dicom=muse)]
    answers = list(site.stub.IngestStream(iter(requests), metadata=site.md("cart_a"),
                                          timeout=120))
    assert [a.error.code for a in answers] == [0, 3, 3, 0]
    assert answers[0].sop_instance_uid == convert(scp).ecg.sop_instance_uid
    assert re.match(r"ge-muse-xml: .*LeadData\[0\]/LeadDataCRC32: CRC-32 12345 stated",
                    answers[1].error.message)
    assert answers[2].error.message.startswith("hl7-aecg: ")
    assert answers[3].sop_instance_uid == convert(muse).ecg.sop_instance_uid
    check_stored(site, scp, answers[0].sop_instance_uid, "scp-ecg")


def test_malformed_muse_names_the_format_and_field(site: Site) -> None:
    bad = re.sub(rb"<LeadDataCRC32>\d+", b"<LeadDataCRC32>12345", synthetic_muse(), count=1)
    with pytest.raises(grpc.RpcError) as err:
        site.ingest(bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.match(r"ge-muse-xml: RestingECG/Waveform\[0\]/LeadData\[0\]/LeadDataCRC32: "
                    r"CRC-32 12345 stated, \d+ computed", err.value.details())


@pytest.mark.parametrize(("data", "fmt", "message"), [
    (b"not an ecg", "png", r"format 'png' is not one we read; expected dicom or ge-muse-xml"),
    (b"<?xml version='1.0'?><RestingECG/>", "scp-ecg", r"scp-ecg: "),
    (b"\x89PNG\r\n\x1a\n" + bytes(200), "",
     r"^not a DICOM object: it looks like a PNG image"),
], ids=["unknown-format", "stated-other-format", "a-picture"])
def test_refusals_are_invalid_argument(site: Site, data: bytes, fmt: str, message: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        site.ingest(data, format=fmt)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, err.value.details()), err.value.details()


def test_dicom_with_or_without_its_preamble_is_no_cart_format() -> None:
    from waveform.dicom.synthetic import synthetic_ecg

    data = encode(synthetic_ecg(seed=942, duration_s=1.0))
    assert cart_format(data) is None and cart_format(data[132:]) is None
    assert cart_format(memoryview(synthetic_scp())) == "scp-ecg"


def test_dicom_ingested_ecg_has_no_other_original(site: Site) -> None:
    from waveform.dicom.synthetic import synthetic_ecg

    data = encode(synthetic_ecg(seed=941))  # patient SYN000941
    uid = site.ingest(data, summary=True).sop_instance_uid
    with pytest.raises(grpc.RpcError) as err:
        site.chunks("GetOriginal", uid)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "ingested as DICOM; use GetDicom" in (err.value.details() or "")
    summary = site.stub.GetSummary(pb.GetSummaryRequest(sop_instance_uid=uid),
                                   metadata=site.md("dr_a"))
    assert summary.source_format == "dicom"
    hits = site.stub.Search(pb.SearchRequest(patient_id="SYN000941"), metadata=site.md("dr_a"))
    assert [(h.sop_instance_uid, h.source_format) for h in hits.hits] == [(uid, "dicom")]


def test_search_hit_says_the_format(site: Site) -> None:
    data = synthetic_muse()
    uid = site.ingest(data).sop_instance_uid
    hits = site.stub.Search(pb.SearchRequest(patient_id="M-7"), metadata=site.md("dr_a"))
    assert (uid, "ge-muse-xml") in [(h.sop_instance_uid, h.source_format) for h in hits.hits]


def test_get_original_is_access_checked_and_audited(site: Site) -> None:
    data = synthetic_sierra()
    uid = site.ingest(data).sop_instance_uid
    before = len(site.audit("original"))
    assert joined(site.chunks("GetOriginal", uid, "dr_a")) == data
    # Another organisation's clinician, the patient not having consented: no such ECG.
    with pytest.raises(grpc.RpcError) as err:
        site.chunks("GetOriginal", uid, "dr_b")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as dicom_err:
        site.chunks("GetDicom", uid, "dr_b")
    assert (dicom_err.value.code(), dicom_err.value.details()) == (
        err.value.code(), err.value.details())
    # A device may not read it at all.
    with pytest.raises(grpc.RpcError) as device:
        site.chunks("GetOriginal", uid, "cart_a")
    assert device.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may not export the files carts sent" in (device.value.details() or "")
    events = site.audit("original")[before:]
    assert [(e["user"], e["outcome"], e["objects"]) for e in events] == [
        ("dr-a", "allowed", [uid]), ("dr-b", "denied", [uid]), ("cart-1", "denied", [uid])]


# ---------------------------------------------------------------- real files


@pytest.fixture(scope="module")
def real_answers(site: Site) -> dict[str, pb.IngestResponse | grpc.RpcError]:
    """Every real file ingested once, in name order: the answer or the error of each."""
    out: dict[str, pb.IngestResponse | grpc.RpcError] = {}
    for name in REAL:
        try:
            out[name] = site.ingest((OTHER / name).read_bytes())
        except grpc.RpcError as err:
            out[name] = err
    return out


@pytest.mark.parametrize("name", REAL or ["(absent)"])
def test_real_file_is_stored_with_its_original(site: Site, real_answers: dict[str, Any],
                                               name: str) -> None:
    if not REAL:
        pytest.skip(f"reference data {OTHER} is absent (only ../shared/data has it)")
    data = (OTHER / name).read_bytes()
    converted = convert(data)
    uid = converted.ecg.sop_instance_uid
    # aECG files that carry one document id are one SOP Instance UID: the first in
    # name order is stored, another with other content is a conflict.
    owner = next(n for n in REAL if convert((OTHER / n).read_bytes()).ecg.sop_instance_uid == uid)
    answer = real_answers[name]
    if owner != name and convert((OTHER / owner).read_bytes()).dicom != converted.dicom:
        assert isinstance(answer, grpc.RpcError)
        assert answer.code() == grpc.StatusCode.ALREADY_EXISTS
        assert f"SOP Instance UID {uid} is already stored with other content" in (
            answer.details() or "")
        return
    assert isinstance(answer, pb.IngestResponse), answer
    assert answer.sop_instance_uid == uid
    check_stored(site, data, uid, converted.format)
    again = site.ingest(data)
    assert (again.sop_instance_uid, again.already_stored) == (uid, True)


@pytest.mark.parametrize("name", sorted(UNDATED))
def test_undated_real_file_is_refused_and_nothing_stored(site: Site, name: str) -> None:
    path = OTHER / name
    if not path.exists():
        pytest.skip(f"reference data {OTHER} is absent (only ../shared/data has it)")
    with pytest.raises(grpc.RpcError) as info:
        site.ingest(path.read_bytes())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(
        "ge-muse-xml: TestDemographics/AcquisitionDate: absent: the file states no "
        "acquisition date")


def test_every_format_is_among_the_real_files() -> None:
    if not REAL:
        pytest.skip(f"reference data {OTHER} is absent (only ../shared/data has it)")
    assert {cart_format((OTHER / n).read_bytes()) for n in REAL} == set(FORMATS)


# --------------------------------------------- 64-bit unsigned samples and padding

UV64 = ("multi-channel-respiratory-deflated-UV64-13ch-1000Hz-1g-pad",
        "body-position-deflated-UV64-13ch-1000Hz-1g-pad")


@pytest.mark.parametrize("name", UV64)
def test_unsigned_64_bit_padding_is_stored(site: Site, name: str) -> None:
    """A UV padding value of 2**64 - 1 (no int64) is stored, and the object and its
    raw samples and padding come back exactly."""
    ecg, ts = next((e, t) for n, e, t in corpus() if n == name)
    assert ecg.groups[0].channels[0].padding == 2**64 - 1
    data = encode(ecg, ts)
    uid = site.ingest(data).sop_instance_uid
    assert joined(site.chunks("GetDicom", uid)) == data
    store = site.server.store
    trace = store.get_trace(uid, units="raw")
    assert trace.data.dtype == np.uint64 and np.array_equal(trace.data, ecg.groups[0].raw)
    from waveform.store.records import channels_from_row

    row = store.sql("SELECT channels, dtype FROM lake.waveform WHERE sop_instance_uid = ?",
                    [uid])[0]
    assert {c.padding for c in channels_from_row(row[0], row[1])} == {2**64 - 1}
    assert {c["padding"] for c in row[0]} == {-1}  # the bit pattern, as int64


def test_read_paths_restore_unsigned_padding() -> None:
    import datetime as dt

    from waveform.store.records import GroupRows, prepare, tables

    ecg, ts = next((e, t) for n, e, t in corpus() if n == UV64[0])
    p = prepare(encode(ecg, ts), "org-a", dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    t = tables([p])["waveform"]
    group = GroupRows(t).group(0)
    assert {c.padding for c in group.channels} == {2**64 - 1}
    assert np.array_equal(group.raw, ecg.groups[0].raw)


def test_originals_survive_compaction_and_reopening(tmp_path: Path) -> None:
    """Originals committed one by one, merged by compaction (into 8-row groups), read
    back byte for byte, also by a store opened afresh; the format of each is kept."""
    files = [synthetic_muse(), synthetic_sierra(), synthetic_aecg(), synthetic_scp(),
             synthetic_scp(subtract=True)]
    with Store.open(tmp_path, analyze=None, auto_compact_commits=None) as store:
        uids = [store.submit(f, "org-a").result(60).sop_instance_uid for f in files]
        assert store.sql("SELECT count(DISTINCT filename) FROM lake.original")[0][0] == 5
        report = store.compact(min_files=2, grace_s=0.0)
        assert report.merged_files >= 5
        assert store.sql("SELECT count(DISTINCT filename) FROM lake.original")[0][0] == 1
        for uid, data in zip(uids, files, strict=True):
            assert store.get_original(uid) == (convert(data).format, data)
    with Store.open(tmp_path, analyze=None) as store:
        assert [store.get_original(u)[1] for u in uids] == files
        assert store.ecg_context(uids[0])["source_format"] == "ge-muse-xml"
