"""The DICOM network doors, driven by dcmtk (storescu, echoscu) and pynetdicom as the cart.

One archive (gRPC + DICOM on one intake) serves the module. Byte-exactness is
checked against what the cart sent: pynetdicom sends a file's data set without
decoding it (the file's bytes after its meta), and for storescu dcmtk's own
``storescp +B`` (bit-preserving) records what storescu sends.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, evt

from tests.conftest import SHARED_DICOM
from waveform.dicom import decode, encode
from waveform.dicom.codes import SOP_CLASSES, TRANSFER_SYNTAXES
from waveform.dicom.decode import _meta
from waveform.dicom.synthetic import corpus, synthetic_ecg
from waveform.errors import InvalidArgument, WaveformError
from waveform.service._proto.waveform.v1 import archive_pb2 as pb
from waveform.service._proto.waveform.v1 import archive_pb2_grpc as pb_grpc
from waveform.service.devices import Devices, add_device
from waveform.service.dimse import (
    STORAGE_COMMITMENT,
    STORE_STATUS,
    DicomServer,
    error_comment,
    start_dicom,
)
from waveform.service.identity import Identity, TokenIdentities, add_token
from waveform.service.server import Server, TlsFiles, start
from waveform.store import Store

DCMTK = shutil.which("storescu") and shutil.which("echoscu") and shutil.which("storescp")
needs_dcmtk = pytest.mark.skipif(not DCMTK, reason="dcmtk (storescu, echoscu, storescp) is "
                                 "not installed: `make tools` or apt-get install dcmtk")
TWELVE_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"
COMMIT_INSTANCE = "1.2.840.10008.1.20.1.1"


@pytest.fixture(autouse=True)
def send_files_undecoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom's cart sends a file's data set as its bytes (never decoded and
    written again), under the file meta's class, instance and syntax."""
    from pynetdicom import _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def body(data: bytes) -> bytes:
    """The data set of a Part 10 file: the bytes after its File Meta Information."""
    start, _ = _meta(data, np.frombuffer(data, np.uint8))
    return data[start:]


class Cart:
    """Callback reports received by the carts' own Storage Commitment SCU."""

    def __init__(self) -> None:
        self.reports: list[tuple[int, Dataset, str]] = []
        self.cond = threading.Condition()

    def on_report(self, event: Any) -> tuple[int, None]:
        with self.cond:
            self.reports.append((int(event.request.EventTypeID), event.event_information,
                                 "same" if event.assoc.is_requestor else "new"))
            self.cond.notify_all()
        return 0x0000, None

    def wait(self, n: int, timeout: float = 10.0) -> list[tuple[int, Dataset, str]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.reports) >= n, timeout), self.reports
            return list(self.reports)


@dataclasses.dataclass
class Site:
    root: Path
    server: Server
    dicom: DicomServer
    devices: Path
    reader: list[tuple[str, str]]
    cart: Cart
    cart_scp: Any

    def get_dicom(self, uid: str) -> bytes:
        import grpc

        with grpc.insecure_channel(self.server.address) as ch:
            chunks = pb_grpc.EcgArchiveStub(ch).GetDicom(
                pb.GetDicomRequest(sop_instance_uid=uid), metadata=self.reader)
            return b"".join(c.data for c in chunks)

    def audit(self, action: str) -> list[dict[str, Any]]:
        events = []
        for seg in sorted(self.server.archive.audit.directory.glob("*.jsonl")):
            events += [json.loads(line) for line in seg.read_text().splitlines()]
        return [e for e in events if e["action"] == action]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("dimse")
    tokens = root / "tokens.json"
    reader = add_token(tokens, Identity("org-a", "dr-a", "clinician"))
    server = start(Store.open(root / "data", analyze=None), TokenIdentities.load(tokens), port=0,
                   owns_store=True)
    cart = Cart()
    cart_ae = AE(ae_title="CALLBACK")
    cart_ae.add_supported_context(STORAGE_COMMITMENT, scu_role=True, scp_role=True)
    cart_scp = cart_ae.start_server(("127.0.0.1", 0), block=False,
                                    evt_handlers=[(evt.EVT_N_EVENT_REPORT, cart.on_report)])
    assert cart_scp is not None
    devices = root / "devices.json"
    add_device(devices, "CART1", "org-a")
    add_device(devices, "CART2", "org-b")
    add_device(devices, "FARAWAY", "org-a", host="10.9.9.9")
    add_device(devices, "CALLBACK", "org-a", host="127.0.0.1",
               port=cart_scp.server_address[1])
    dicom = start_dicom(server, port=0, devices=devices, max_associations=128)
    yield Site(root, server, dicom, devices, [("authorization", f"Bearer {reader}")], cart,
               cart_scp)
    dicom.stop(5)
    cart_scp.shutdown()
    server.stop(5)


def associate(site: Site, title: str = "CART1", contexts: list[tuple[str, str]] | None = None,
              called: str = "WAVEFORM", **kwargs: Any) -> Any:
    ae = AE(ae_title=title)
    for sop, ts in contexts or [(TWELVE_LEAD, "1.2.840.10008.1.2.1")]:
        ae.add_requested_context(sop, ts)
    return ae.associate("127.0.0.1", site.dicom.port, ae_title=called, **kwargs)


def ecg_file(tmp: Path, name: str, **kwargs: Any) -> tuple[Path, str]:
    ecg = synthetic_ecg(**kwargs)
    path = tmp / f"{name}.dcm"
    path.write_bytes(encode(ecg))
    return path, ecg.sop_instance_uid


# ------------------------------------------------------------------ devices file
def test_devices_file_is_private_and_validated(tmp_path: Path) -> None:
    path = tmp_path / "devices.json"
    dev = add_device(path, " CART9 ", "org-z", host="192.0.2.7", port=104)
    assert dev.ae_title == "CART9" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"devices": [
        {"ae_title": "CART9", "organisation": "org-z", "host": "192.0.2.7", "port": 104}]}
    with pytest.raises(InvalidArgument, match=r"AE title CART9 from 192.0.2.7 is listed "
                                              r"twice \(for org-z and org-y\)"):
        add_device(path, "CART9", "org-y", host="192.0.2.7")
    with pytest.raises(InvalidArgument, match=r"'THIRTEEN-CHARS-PLUS' has 19 characters"):
        add_device(path, "THIRTEEN-CHARS-PLUS", "org-z")
    with pytest.raises(InvalidArgument, match=r"host 'cart9.example' is not an IP address"):
        add_device(path, "CART10", "org-z", host="cart9.example")
    with pytest.raises(InvalidArgument, match=r"holds '\\\\'"):
        add_device(path, "A\\B", "org-z")
    os.chmod(path, 0o666)
    with pytest.raises(InvalidArgument, match=r"writable by every user .* chmod 600"):
        Devices.load(path)
    os.chmod(path, 0o600)
    path.write_text('{"devices": [{"ae_title": "X"}]}')
    with pytest.raises(InvalidArgument, match=r"entry 1 lacks 'organisation'"):
        Devices.load(path)


def test_devices_find_prefers_the_address_bound_entry(tmp_path: Path) -> None:
    path = tmp_path / "devices.json"
    add_device(path, "CART", "org-any")
    add_device(path, "CART", "org-bound", host="10.0.0.5")
    devices = Devices.load(path)
    assert devices.find("CART  ", "10.0.0.5").organisation == "org-bound"  # type: ignore[union-attr]
    assert devices.find("CART", "10.0.0.6").organisation == "org-any"  # type: ignore[union-attr]
    assert devices.find("OTHER", "10.0.0.5") is None
    add_device(path, "LATER", "org-new")  # read again when the file changes
    assert devices.find("LATER", "127.0.0.1").identity == Identity("org-new", "LATER", "device")  # type: ignore[union-attr]


# ------------------------------------------------------------- associations, echo
def test_presentation_contexts_are_the_codec_table(site: Site) -> None:
    extra = [("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1"),  # CT Image Storage
             (TWELVE_LEAD, "1.2.840.10008.1.2.4.50")]  # JPEG Baseline
    wanted = [(s, t) for s in SOP_CLASSES for t in TRANSFER_SYNTAXES]
    assoc = associate(site, contexts=wanted + extra)
    try:
        accepted = {(c.abstract_syntax, c.transfer_syntax[0]) for c in assoc.accepted_contexts}
        rejected = {(c.abstract_syntax, c.transfer_syntax[0]) for c in assoc.rejected_contexts}
    finally:
        assoc.release()
    assert accepted == set(wanted)
    assert rejected == set(extra)


@needs_dcmtk
def test_echoscu_known_device_and_unknown_rejected(site: Site) -> None:
    port = str(site.dicom.port)
    ok = subprocess.run(["echoscu", "-aet", "CART1", "-aec", "WAVEFORM", "127.0.0.1", port],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(["echoscu", "-aet", "STRANGER", "-aec", "WAVEFORM", "127.0.0.1",
                          port], capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0
    assert "Calling AE Title Not Recognized" in bad.stderr
    events = site.audit("associate")
    assert any(e["user"] == "CART1" and e["organisation"] == "org-a"
               and e["outcome"] == "allowed" for e in events)
    denied = [e for e in events if e["user"] == "STRANGER"]
    assert denied and denied[-1]["outcome"] == "denied"
    assert denied[-1]["rule"] == "unknown-device"


def test_association_rejections_are_audited(site: Site) -> None:
    cases = [("NOBODY", "WAVEFORM", (1, 1, 3), "unknown-device"),
             ("FARAWAY", "WAVEFORM", (1, 1, 3), "unknown-device"),  # bound to 10.9.9.9
             ("CART1", "ELSEWHERE", (1, 1, 7), "called-ae-title-not-recognised")]
    for title, called, rsd, rule in cases:
        assoc = associate(site, title, called=called)
        assert assoc.is_rejected
        rj = assoc.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == rsd
        event = site.audit("associate")[-1]
        assert (event["user"], event["outcome"], event["rule"]) == (title, "denied", rule)


# ----------------------------------------------------------------- storing, bytes
def test_pynetdicom_every_class_and_syntax_byte_exact(site: Site, tmp_path: Path) -> None:
    """An object of the synthetic corpus for every SOP class in every syntax the codec
    reads, sent without decoding (four carts at once): GetDicom returns the data set
    as sent."""
    files: dict[tuple[str, str], tuple[str, Path, str]] = {}
    for i, (name, ecg, ts) in enumerate(corpus()):
        if (ecg.sop_class_uid, ts) not in files:
            path = tmp_path / f"{i}.dcm"
            path.write_bytes(encode(ecg, ts))
            files[(ecg.sop_class_uid, ts)] = (name, path, ecg.sop_instance_uid)
    assert len(files) == len(SOP_CLASSES) * len(TRANSFER_SYNTAXES)
    statuses: dict[str, int] = {}

    def cart(part: list[tuple[tuple[str, str], tuple[str, Path, str]]]) -> None:
        assoc = associate(site, contexts=[key for key, _ in part])
        try:
            for _, (name, path, _) in part:
                statuses[name] = assoc.send_c_store(path).Status
        finally:
            assoc.release()

    items = sorted(files.items())
    carts = [threading.Thread(target=cart, args=(items[i::4],)) for i in range(4)]
    for t in carts:
        t.start()
    for t in carts:
        t.join(120)
    assert statuses == {name: 0x0000 for name, _, _ in files.values()}
    for (sop, ts), (name, path, uid) in files.items():
        got = site.get_dicom(uid)
        assert body(got) == body(path.read_bytes()), name
        meta = pydicom.dcmread(pydicom.filebase.DicomBytesIO(got)).file_meta
        assert (meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID,
                meta.MediaStorageSOPClassUID) == (uid, ts, sop), name


_STORESCU_SYNTHETIC = [
    (f"synthetic-{kind}-{tsname}", sop, ts)
    for kind, sop in (("12-lead", TWELVE_LEAD), ("general", "1.2.840.10008.5.1.4.1.1.9.1.2"))
    for tsname, ts in (("implicit", "1.2.840.10008.1.2"), ("explicit", "1.2.840.10008.1.2.1"))]


def _syntax_flag(path: Path) -> str:
    """storescu's option proposing only the file's own syntax first, so that dcmtk's
    storescp and the archive accept the same one."""
    ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    return "-xi" if ts == "1.2.840.10008.1.2" else "-xe"


@pytest.fixture(scope="module")
def storescu_sent(site: Site, tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, tuple[Path, bytes, subprocess.CompletedProcess[str]]]:
    """Real files (when ../shared is present) and synthetic ECGs, each sent by storescu
    to dcmtk's bit-preserving storescp (the record of what storescu sends) and to us."""
    if not DCMTK:
        pytest.skip("dcmtk is not installed")
    tmp = tmp_path_factory.mktemp("storescu")
    files = list(SHARED_DICOM)
    for name, sop, ts in _STORESCU_SYNTHETIC:
        files.append(ecg_file(tmp, name, sop_class_uid=sop, transfer_syntax_uid=ts,
                              seed=len(files) + 40)[0])
    received = tmp / "storescp"
    received.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        ref_port = s.getsockname()[1]
    ref = subprocess.Popen(["storescp", "+B", "-od", str(received), "-aet", "REF",
                            str(ref_port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            if subprocess.run(["echoscu", "-aec", "REF", "127.0.0.1", str(ref_port)],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.05)
        for flag in ("-xi", "-xe"):
            group = [str(f) for f in files if _syntax_flag(f) == flag]
            done = subprocess.run(["storescu", "-R", flag, "-aec", "REF", "127.0.0.1",
                                   str(ref_port), *group], capture_output=True, text=True,
                                  timeout=60)
            assert done.returncode == 0, done.stderr
    finally:
        ref.terminate()
        ref.wait(10)
    sent = {}
    for f in received.iterdir():
        data = f.read_bytes()
        sent[str(pydicom.dcmread(f, stop_before_pixels=True).file_meta
                 .MediaStorageSOPInstanceUID)] = data
    out = {}
    for path in files:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        run = subprocess.run(["storescu", "-v", "-R", _syntax_flag(path), "-aet", "CART1",
                              "-aec", "WAVEFORM", "127.0.0.1", str(site.dicom.port),
                              str(path)],
                             capture_output=True, text=True, timeout=60)
        out[path.name] = (path, body(sent[uid]), run)
    return out


@needs_dcmtk
@pytest.mark.parametrize("name", [p.name for p in SHARED_DICOM] + [
    f"{n}.dcm" for n, _, _ in _STORESCU_SYNTHETIC])
def test_storescu_byte_exact(site: Site, storescu_sent: dict[str, Any], name: str) -> None:
    path, sent, run = storescu_sent[name]
    assert run.returncode == 0 and "Received Store Response (Success)" in run.stderr, run.stderr
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    got = site.get_dicom(uid)
    assert body(got) == sent  # the data set as storescu sent it, byte for byte
    assert decode(got).sop_instance_uid == uid


def store_one(site: Site, path: Path, title: str = "CART1") -> Dataset:
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    assoc = associate(site, title, contexts=[(meta.MediaStorageSOPClassUID,
                                              meta.TransferSyntaxUID)])
    try:
        return assoc.send_c_store(path)
    finally:
        assoc.release()


def test_same_object_twice_stored_once(site: Site, tmp_path: Path) -> None:
    path, uid = ecg_file(tmp_path, "twice", seed=501)
    before = len(site.server.store.uids())
    assert store_one(site, path).Status == 0x0000
    assert store_one(site, path).Status == 0x0000
    assert store_one(site, path, "CART2").Status == 0x0000  # another organisation too
    assert len(site.server.store.uids()) == before + 1
    events = [e for e in site.audit("ingest") if uid in e["objects"]]
    assert [e["outcome"] for e in events] == ["allowed"] * 3
    assert events[-1]["rule"] == "duplicate-of-other-organisation"


def test_same_uid_other_content_is_a_conflict(site: Site, tmp_path: Path) -> None:
    path, uid = ecg_file(tmp_path, "first", seed=601)
    assert store_one(site, path).Status == 0x0000
    other = dataclasses.replace(synthetic_ecg(seed=602), sop_instance_uid=uid)
    clash = tmp_path / "clash.dcm"
    clash.write_bytes(encode(other))
    for title in ("CART1", "CART2"):
        status = store_one(site, clash, title)
        assert status.Status == 0xC002
        assert status.ErrorComment == "UID conflict: this SOP Instance UID holds other content"
    assert body(site.get_dicom(uid)) == body(path.read_bytes())  # nothing overwritten


def _object(tmp: Path, name: str, change: Any) -> Path:
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(encode(synthetic_ecg(seed=701))))
    change(ds)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _with_meta(path: Path, sop_class: str, sop_instance: str) -> Path:
    """``path`` with File Meta Information naming another class or instance than its
    data set (pydicom's writer would make them agree)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.UID(sop_class)
    meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(sop_instance)
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    buf = pydicom.filebase.DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, meta)
    path.write_bytes(b"\0" * 128 + b"DICM" + buf.getvalue() + body(path.read_bytes()))
    return path


def _set(path: str, value: Any) -> Any:
    def change(ds: Dataset) -> None:
        *parents, last = path.split(".")
        target: Any = ds
        for p in parents:
            target = target[0] if p == "0" else getattr(target, p)
        if value is None:
            delattr(target, last)
        else:
            setattr(target, last, value)
    return change


def test_codec_refusals_carry_the_codec_message(site: Site, tmp_path: Path) -> None:
    cases = {"too-few-bytes": _set("WaveformSequence.0.NumberOfWaveformSamples", 9999),
             "no-waveform": _set("WaveformSequence", None),
             "wrong-format": _set("WaveformSequence.0.WaveformSampleInterpretation", "UB")}
    for name, change in cases.items():
        path = _object(tmp_path, name, change)
        with pytest.raises(WaveformError) as refused:
            decode(path.read_bytes())
        code, comment = STORE_STATUS[type(refused.value)]
        status = store_one(site, path)
        assert status.Status == code == 0xC000, name
        assert status.ErrorComment == error_comment(comment or str(refused.value)), name
        assert len(status.ErrorComment) <= 64
        assert not site.server.store.contains(
            str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))


def test_data_set_not_matching_the_request(site: Site, tmp_path: Path) -> None:
    """The request's Affected SOP Class/Instance UIDs (from the file meta) against the
    data set's own: nothing is stored under a File Meta that contradicts it."""
    path = _object(tmp_path, "mismatch", lambda ds: None)
    uid = str(pydicom.dcmread(path).SOPInstanceUID)
    status = store_one(site, _with_meta(path, "1.2.840.10008.5.1.4.1.1.9.1.2", uid))
    assert status.Status == 0xA900
    assert status.ErrorComment == ("data set SOP Class 1.2.840.10008.5.1.4.1.1.9.1.1 is not "
                                   "the...")
    status = store_one(site, _with_meta(path, TWELVE_LEAD, "2.25.123456"))
    assert status.Status == 0xC003
    assert status.ErrorComment == "data set SOP Instance UID is not the request's 2.25.123456"
    assert not site.server.store.contains("2.25.123456")
    assert not site.server.store.contains(uid)


def test_error_comment_is_a_valid_lo() -> None:
    text = ("multiplex group 1: Waveform Data (5400,1010) holds 1200 bytes, fewer than "
            "the 119988 its channels need")
    comment = error_comment(text)
    assert comment == "multiplex group 1: Waveform Data (5400,1010) holds 1200..."
    assert len(comment) <= 64
    assert error_comment("a\\b\nc\u00e9") == "a/b c?"


def test_at_capacity_answers_a700(site: Site, tmp_path: Path) -> None:
    path, uid = ecg_file(tmp_path, "capacity", seed=801)
    budget = site.server.service.intake.budget
    assert budget.try_acquire(budget.max_bytes)
    try:
        status = store_one(site, path)
    finally:
        budget.release(budget.max_bytes)
    assert status.Status == 0xA700
    assert status.ErrorComment.startswith("the server holds 1024 MiB of objects not yet")
    assert not site.server.store.contains(uid)
    assert store_one(site, path).Status == 0x0000  # room again: accepted


def test_100_concurrent_associations(site: Site, tmp_path: Path) -> None:
    from bench.grpc_ingest import Payloads

    payloads = Payloads(2)
    objects = [payloads.next() for _ in range(100)]
    uids = [decode(o).sop_instance_uid for o in objects]
    paths = []
    for i, data in enumerate(objects):
        paths.append(tmp_path / f"{i}.dcm")
        paths[-1].write_bytes(data)
    together = threading.Barrier(100, timeout=60)
    results: dict[int, int] = {}

    def cart(i: int) -> None:
        assoc = associate(site, "CART1")
        try:
            assert assoc.is_established
            together.wait()  # all 100 are associated at once
            results[i] = assoc.send_c_store(paths[i]).Status
        finally:
            assoc.release()

    t0 = time.monotonic()
    threads = [threading.Thread(target=cart, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert time.monotonic() - t0 < 60
    assert results == dict.fromkeys(range(100), 0x0000)
    assert all(site.server.store.contains(u) for u in uids)


# ------------------------------------------------------------ storage commitment
def commitment(refs: list[str], transaction: str) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction
    items = []
    for uid in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = TWELVE_LEAD
        item.ReferencedSOPInstanceUID = uid
        items.append(item)
    ds.ReferencedSOPSequence = Sequence(items)
    return ds


def listed(ds: Dataset, keyword: str) -> dict[str, int]:
    return {str(i.ReferencedSOPInstanceUID): int(i.get("FailureReason", 0))
            for i in ds.get(keyword, [])}


def test_storage_commitment_same_and_new_association(site: Site, tmp_path: Path) -> None:
    ours, uid = ecg_file(tmp_path, "commit", seed=901)
    theirs, their_uid = ecg_file(tmp_path, "theirs", seed=902)
    assert store_one(site, theirs, "CART2").Status == 0x0000  # org-b's ECG
    n = len(site.cart.reports)
    assoc = associate(site, "CALLBACK", contexts=[(TWELVE_LEAD, "1.2.840.10008.1.2.1"),
                                                  (STORAGE_COMMITMENT, "1.2.840.10008.1.2.1")],
                      evt_handlers=[(evt.EVT_N_EVENT_REPORT, site.cart.on_report)])
    try:
        assert assoc.send_c_store(ours).Status == 0x0000
        status, _ = assoc.send_n_action(commitment([uid, "2.25.1", their_uid], "2.25.77"), 1,
                                        STORAGE_COMMITMENT, COMMIT_INSTANCE)
        assert status.Status == 0x0000
        event_type, info, where = site.cart.wait(n + 1)[-1]
        # Asked again, then released at once: the answer comes on a new association.
        status, _ = assoc.send_n_action(commitment([uid], "2.25.78"), 1, STORAGE_COMMITMENT,
                                        COMMIT_INSTANCE)
        assert status.Status == 0x0000
    finally:
        assoc.release()
    assert (event_type, where, str(info.TransactionUID)) == (2, "same", "2.25.77")
    assert listed(info, "ReferencedSOPSequence") == {uid: 0}
    # Another organisation's ECG is not confirmed: nothing tells that it exists.
    assert listed(info, "FailedSOPSequence") == {"2.25.1": 0x0112, their_uid: 0x0112}
    event_type, info, where = site.cart.wait(n + 2)[-1]
    assert (event_type, where, str(info.TransactionUID)) == (1, "new", "2.25.78")
    assert listed(info, "ReferencedSOPSequence") == {uid: 0}
    audit = site.audit("storage-commitment")[-2]
    assert (audit["user"], audit["objects"]) == ("CALLBACK", [uid, "2.25.1", their_uid])


# --------------------------------------------------------------------------- TLS
def _certificate(tmp: Path) -> TlsFiles:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return TlsFiles(tmp / "cert.pem", tmp / "key.pem")


def test_tls(site: Site, tmp_path: Path) -> None:
    import ssl

    tls = _certificate(tmp_path)
    dicom = start_dicom(site.server, port=0, devices=site.devices, tls=tls)
    try:
        path, uid = ecg_file(tmp_path, "tls", seed=1001)
        ctx = ssl.create_default_context(cafile=str(tls.cert))
        ctx.check_hostname = False
        ae = AE(ae_title="CART1")
        ae.add_requested_context(TWELVE_LEAD, "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", dicom.port, ae_title="WAVEFORM",
                             tls_args=(ctx, "127.0.0.1"))
        try:
            assert assoc.is_established
            assert assoc.send_c_store(path).Status == 0x0000
        finally:
            assoc.release()
        plain = ae.associate("127.0.0.1", dicom.port, ae_title="WAVEFORM")
        assert not plain.is_established
    finally:
        dicom.stop(5)
    assert body(site.get_dicom(uid)) == body(path.read_bytes())


# ------------------------------------------------------------------ kill -9 mid-way
_SERVE = """
import sys
from waveform.service.identity import TokenIdentities
from waveform.service.server import start
from waveform.service.dimse import start_dicom
from waveform.store import Store
root = sys.argv[1]
server = start(Store.open(root + "/data", analyze=None),
               TokenIdentities.load(root + "/tokens.json"), port=0, owns_store=True)
dicom = start_dicom(server, port=0, devices=root + "/devices.json")
print(dicom.port, flush=True)
import threading; threading.Event().wait()
"""


def test_sigkill_loses_nothing_acknowledged(tmp_path: Path) -> None:
    add_token(tmp_path / "tokens.json", Identity("org-a", "dr", "clinician"))
    add_device(tmp_path / "devices.json", "CART1", "org-a")
    from bench.grpc_ingest import Payloads

    payloads = Payloads(2)
    proc = subprocess.Popen([sys.executable, "-c", _SERVE, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    acknowledged: dict[str, bytes] = {}
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        ae = AE(ae_title="CART1")
        ae.add_requested_context(TWELVE_LEAD, "1.2.840.10008.1.2.1")
        stop = threading.Event()

        def send() -> None:
            assoc = ae.associate("127.0.0.1", port, ae_title="WAVEFORM")
            while assoc.is_established and not stop.is_set():
                data = payloads.next()
                ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
                status = assoc.send_c_store(ds)
                if getattr(status, "Status", None) == 0x0000:
                    acknowledged[ds.SOPInstanceUID] = body(data)

        carts = [threading.Thread(target=send) for _ in range(3)]
        for t in carts:
            t.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # mid-association: C-STOREs are in flight
        proc.wait(10)
        stop.set()
        for t in carts:
            t.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(acknowledged) >= 12
    store = Store.open(tmp_path / "data", analyze=None)
    try:
        for uid, sent in acknowledged.items():
            assert store.contains(uid), uid
            assert body(store.get_dicom(uid)) == sent
    finally:
        store.close()


# --------------------------------------------------------------------- benchmark
def test_bench_dimse_small(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import dimse

    dimse.main(small=True)
    out = capsys.readouterr().out
    for door in ("C-STORE", "gRPC Ingest", "gRPC IngestStream"):
        line = next(x for x in out.splitlines() if x.startswith(door + " "))
        rate, errors = line.split()[-2:]
        assert float(rate.replace(",", "")) > 0 and errors == "0", line
    assert "C-STORE / IngestStream" in out and "C-STORE / Ingest " in out
