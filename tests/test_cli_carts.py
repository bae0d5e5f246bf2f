"""The carts' commands: `import` (a cart's file to DICOM, no server), `devices add`,
`ingest` of the carts' files and `original` against a real server, and `serve
--dicom-port` as a process answering C-ECHO (pynetdicom as the cart)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pynetdicom import AE

from tests.test_formats_synthetic import synthetic_aecg, synthetic_muse, synthetic_scp
from waveform.cli import main
from waveform.cli.carts import FILE_FORMATS
from waveform.dicom import decode, encode
from waveform.dicom.synthetic import synthetic_ecg
from waveform.formats import FORMATS, convert
from waveform.service.devices import Devices
from waveform.service.identity import Identity, TokenIdentities, add_token
from waveform.service.server import Server, start
from waveform.store import Store

VERIFICATION = "1.2.840.10008.1.1"


def test_file_formats_are_the_readers() -> None:
    assert FILE_FORMATS == ("dicom", *FORMATS)


# --------------------------------------------------------------------- import
def test_import_writes_the_archive_s_dicom_object(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    source, out = tmp_path / "ecg.xml", tmp_path / "ecg.dcm"
    source.write_bytes(synthetic_muse())
    assert main(["import", str(source), "-o", str(out)]) == 0
    converted = convert(source.read_bytes())
    assert out.read_bytes() == converted.dicom
    printed = capsys.readouterr().out
    assert printed.startswith(f"{out}: ge-muse-xml -> {len(converted.dicom)} bytes of DICOM, "
                              f"SOP Instance UID {converted.ecg.sop_instance_uid} (RHYTHM 12 x "
                              "5000 at 500 Hz; 8 measurements, 2 statements)")
    assert decode(out.read_bytes()).groups[0].raw.tolist() == (
        converted.ecg.groups[0].raw.tolist())


@pytest.mark.parametrize(("content", "extra", "message"), [
    (synthetic_muse(), ["--file-format", "scp-ecg"],
     r"waveform: import: INVALID_ARGUMENT: scp-ecg: "),
    (b"\x89PNG\r\n\x1a\n" + bytes(64), [],
     r"waveform: import: INVALID_ARGUMENT: the content is no ECG format we read \(it looks "
     r"like a PNG image\)"),
    (re.sub(rb"<LeadDataCRC32>\d+", b"<LeadDataCRC32>12345", synthetic_muse(), count=1), [],
     r"waveform: import: INVALID_ARGUMENT: ge-muse-xml: RestingECG/Waveform\[0\]/LeadData\[0\]/"
     r"LeadDataCRC32: CRC-32 12345 stated"),
], ids=["stated-other-format", "a-picture", "bad-crc"])
def test_import_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes,
                         extra: list[str], message: str) -> None:
    source, out = tmp_path / "in", tmp_path / "out.dcm"
    source.write_bytes(content)
    assert main(["import", str(source), "-o", str(out), *extra]) == 1
    assert re.match(message, capsys.readouterr().err)
    assert not out.exists()


def test_import_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import", str(tmp_path / "none.xml"), "-o", str(tmp_path / "o.dcm")]) == 1
    assert re.match(r"waveform: import: NOT_FOUND: .*none\.xml: No such file",
                    capsys.readouterr().err)


# ---------------------------------------------------------------- devices add
def test_devices_add(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "devices.json"
    assert main(["devices", "add", "--file", str(path), "--ae-title", "CART1",
                 "--organisation", "org-a"]) == 0
    assert main(["devices", "add", "--file", str(path), "--ae-title", "CART2",
                 "--organisation", "org-b", "--host", "10.1.2.3", "--port", "104"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith(f"added CART2 from 10.1.2.3 of org-b to {path}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"devices": [
        {"ae_title": "CART1", "organisation": "org-a"},
        {"ae_title": "CART2", "organisation": "org-b", "host": "10.1.2.3", "port": 104}]}
    assert [d.identity for d in Devices.load(path)] == [
        Identity("org-a", "CART1", "device"), Identity("org-b", "CART2", "device")]
    # The same AE title again, a malformed one, a host name: refused, file unchanged.
    before = path.read_bytes()
    for args, message in [
        (["--ae-title", "CART1", "--organisation", "org-c"], r"CART1"),
        (["--ae-title", "BAD\\TITLE", "--organisation", "org-a"], r"AE title"),
        (["--ae-title", "CART3", "--organisation", "org-a", "--host", "cart.example"],
         r"cart\.example"),
    ]:
        assert main(["devices", "add", "--file", str(path), *args]) == 1
        err = capsys.readouterr().err
        assert re.match(r"waveform: devices: INVALID_ARGUMENT: ", err), err
        assert re.search(message, err), err
    assert path.read_bytes() == before


# -------------------------------------------------- ingest and original, a server
@dataclass
class Site:
    server: Server
    tokens: dict[str, str]

    def args(self, who: str) -> list[str]:
        return ["--server", self.server.address, "--token", self.tokens[who]]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("cli-carts")
    tokens_file = root / "tokens.json"
    tokens = {"cart": add_token(tokens_file, Identity("org-a", "cart-1", "device")),
              "dr": add_token(tokens_file, Identity("org-a", "dr-a", "clinician")),
              "dr_b": add_token(tokens_file, Identity("org-b", "dr-b", "clinician"))}
    server = start(Store.open(root / "data", analyze=None), TokenIdentities.load(tokens_file),
                   port=0, owns_store=True)
    yield Site(server, tokens)
    server.stop(5)


def test_ingest_finds_the_carts_files_and_original_returns_them(
        site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "export"
    (folder / "sub").mkdir(parents=True)
    files = {folder / "a.xml": synthetic_muse(), folder / "sub" / "b.XML": synthetic_aecg(),
             folder / "c.scp": synthetic_scp(subtract=True)}
    for path, data in files.items():
        path.write_bytes(data)
    (folder / "notes.txt").write_text("not an ECG")
    (folder / "picture.xml").write_text("<?xml version='1.0'?><svg/>")
    assert main(["ingest", str(folder), "-q", *site.args("cart")]) == 0
    assert capsys.readouterr().out.startswith("stored 3, already stored 0, rejected 0 (3 files")
    for path, data in files.items():
        uid = convert(data).ecg.sop_instance_uid
        out = tmp_path / f"{path.name}.original"
        assert main(["original", uid, "-o", str(out), *site.args("dr")]) == 0
        assert out.read_bytes() == data
        printed = capsys.readouterr().out
        assert printed == (f"{out}: {convert(data).format}, {len(data)} bytes, SHA-256 "
                           f"{hashlib.sha256(data).hexdigest()}\n")
        assert main(["original", uid, "-o", str(out), *site.args("dr_b")]) == 1
        assert capsys.readouterr().err.startswith("waveform: original: NOT_FOUND: ")
    # Stated format: a MUSE file sent as SCP-ECG is refused, naming the format.
    again = tmp_path / "again.xml"
    again.write_bytes(synthetic_muse())
    assert main(["ingest", str(again), "-q", "--file-format", "scp-ecg",
                 *site.args("cart")]) == 1
    captured = capsys.readouterr()
    assert "rejected 1: INVALID_ARGUMENT: scp-ecg: " in captured.out


def test_original_of_an_ecg_that_came_as_dicom(site: Site, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ecg.dcm"
    path.write_bytes(encode(synthetic_ecg(seed=977, duration_s=2.0)))
    assert main(["ingest", str(path), "-q", *site.args("cart")]) == 0
    uid = decode(path.read_bytes()).sop_instance_uid
    capsys.readouterr()
    assert main(["original", uid, "-o", str(tmp_path / "x"), *site.args("dr")]) == 1
    assert capsys.readouterr().err == (
        f"waveform: original: NOT_FOUND: ECG {uid} was ingested as DICOM; use GetDicom for "
        "its original object\n")
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------ serve --dicom-port process
def _serve(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    tokens = tmp_path / "tokens.json"
    if not tokens.exists():
        add_token(tokens, Identity("org-a", "dr-a", "clinician"))
    return subprocess.Popen(
        [sys.executable, "-m", "waveform.cli", "serve", "--data", str(tmp_path / "data"),
         "--tokens", str(tokens), "--port", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _line(proc: subprocess.Popen[str], pattern: str, timeout: float = 120.0) -> re.Match[str]:
    seen = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        m = re.search(pattern, line)
        if m:
            return m
    proc.kill()
    raise AssertionError(f"no {pattern!r} in {seen}; stderr: {proc.communicate()[1]}")


def _echo(port: int, calling: str, called: str = "ARCHIVE") -> int | None:
    """The C-ECHO status (None: the association was rejected)."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if status else None
    finally:
        assoc.release()


def test_serve_with_a_dicom_port(tmp_path: Path) -> None:
    devices = tmp_path / "devices.json"
    assert main(["devices", "add", "--file", str(devices), "--ae-title", "CART1",
                 "--organisation", "org-a"]) == 0
    proc = _serve(tmp_path, "--dicom-port", "0", "--dicom-ae", "ARCHIVE",
                  "--devices", str(devices))
    try:
        m = _line(proc, r"DICOM storage \(C-STORE, C-ECHO, storage commitment\) on "
                        r"127\.0\.0\.1:(\d+) as AE title ARCHIVE, devices from (\S+)$")
        port = int(m.group(1))
        assert Path(m.group(2)).resolve() == devices.resolve()
        assert _echo(port, "CART1") == 0x0000
        assert _echo(port, "STRANGER") is None  # not in the devices file: rejected
        # A cart added while the server runs is admitted at its next association.
        assert main(["devices", "add", "--file", str(devices), "--ae-title", "CART2",
                     "--organisation", "org-b"]) == 0
        deadline = time.monotonic() + 20
        while _echo(port, "CART2") != 0x0000:
            assert time.monotonic() < deadline, "CART2 was never admitted"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "waveform: stopped" in out
        # The DICOM door stopped with the server: nothing listens any more.
        assert _echo(port, "CART1") is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(("extra", "message"), [
    (["--dicom-port", "0"], "--dicom-port needs --devices FILE"),
    (["--devices", "devices.json"], "--devices is read by the DICOM door: give --dicom-port"),
], ids=["no-devices", "no-port"])
def test_serve_refuses_half_a_dicom_door(tmp_path: Path, extra: list[str], message: str) -> None:
    proc = _serve(tmp_path, *extra)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert f"waveform serve: {message}" in err


def test_demo_serves_dicom_to_the_readme_s_cart(tmp_path: Path) -> None:
    """`serve --demo` admits the cart the README's storescu example calls as, and the
    README's commands name the demo's port, AE titles and file."""
    from tests.conftest import ROOT
    from waveform.cli.serve import DEMO_DEVICE, DEMO_DICOM_PORT

    readme = (ROOT / "README.md").read_text().split("## Getting ECGs in", 1)[1]
    title, organisation = DEMO_DEVICE
    assert (f"storescu -R -aet {title} -aec WAVEFORM 127.0.0.1 {DEMO_DICOM_PORT} "
            "../shared/data/dicom/") in readme
    assert f"echoscu -aet {title} -aec WAVEFORM 127.0.0.1 {DEMO_DICOM_PORT}" in readme
    assert "waveform ingest ../shared/data/other/introecg_MUSE_" in readme
    proc = subprocess.Popen(
        [sys.executable, "-m", "waveform.cli", "serve", "--data", str(tmp_path / "data"),
         "--port", "0", "--demo", "--dicom-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        m = _line(proc, r"DICOM storage .* on 127\.0\.0\.1:(\d+) as AE title WAVEFORM, "
                        rf"devices from \S+dev-devices\.json \(the demo's: {title} of "
                        rf"{organisation} from any address\)$")
        assert _echo(int(m.group(1)), title, "WAVEFORM") == 0x0000
        assert [(d.ae_title, d.organisation, d.host) for d in Devices.load(
            tmp_path / "data" / "dev-devices.json")] == [(title, organisation, None)]
        _line(proc, r"Ctrl-C stops")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
