"""What a newcomer tripped over on a fresh clone, one test each; and the README's
command list, checked against the command line's own commands."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydicom.uid import generate_uid

from tests.conftest import ROOT, Archive
from waveform.cli import command_paths, main
from waveform.cli.serve import DEMO_CALLERS, demo_tokens
from waveform.dicom import decode, encode
from waveform.dicom.synthetic import synthetic_ecg
from waveform.service._proto.waveform.v1 import archive_pb2 as pb
from waveform.service.identity import TokenIdentities

_SEED = iter(range(1_100_000, 1_200_000))


def _ecg(**kw: object) -> bytes:
    ecg = synthetic_ecg(seed=next(_SEED), duration_s=2.0)
    kw.setdefault("sop_instance_uid", str(generate_uid()))
    return encode(dataclasses.replace(ecg, **kw))


def _run(capsys: pytest.CaptureFixture[str], archive: Archive, who: str, *argv: str
         ) -> tuple[int, str, str]:
    code = main([*argv, "--server", archive.address, "--timeout", "30",
                 "--token", archive.tokens[who]])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ingest_of_a_picture_says_it_is_not_dicom(archive: Archive, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "picture.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    code, out, err = _run(capsys, archive, "cart_a", "ingest", "-q", str(png))
    assert code == 1
    assert ("rejected 1: INVALID_ARGUMENT: not a DICOM object: it looks like a PNG image "
            "(it starts with 89 50 4E 47 0D 0A 1A 0A") in out
    assert err.startswith("waveform: ingest: INVALID_ARGUMENT: 1 of 1 files were not stored")


def test_ingest_of_a_folder_without_dicom_fails(archive: Archive, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("no ECG here")
    code, out, err = _run(capsys, archive, "cart_a", "ingest", str(tmp_path))
    assert code == 1 and out == ""
    assert err == (f"waveform: ingest: NOT_FOUND: {tmp_path}: no ECG file in this folder "
                   "(looked for .dcm files, files with a DICM preamble, and MUSE, Sierra, "
                   "aECG and SCP-ECG files)\n")


def test_ingest_names_which_of_two_files_with_one_uid_was_stored(
        archive: Archive, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uid = str(generate_uid())
    (tmp_path / "a.dcm").write_bytes(_ecg(sop_instance_uid=uid, patient_id="A"))
    (tmp_path / "b.dcm").write_bytes(_ecg(sop_instance_uid=uid, patient_id="B"))
    code, out, _ = _run(capsys, archive, "cart_a", "ingest", "-q", "-j", "4", str(tmp_path))
    assert code == 1
    kept = decode(archive.store.get_dicom(uid)).patient_id
    winner, loser = (tmp_path / "a.dcm", tmp_path / "b.dcm")[:: 1 if kept == "A" else -1]
    assert out.startswith("stored 1, already stored 0, rejected 1")
    assert f"  {loser} (this run stored {winner} under that UID)" in out
    code, out, _ = _run(capsys, archive, "cart_a", "ingest", "-q", str(tmp_path),
                        "--format", "json")
    files = {Path(f["source"]).name: f for f in json.loads(out)["files"]}
    assert files[winner.name]["outcome"] == "already stored"
    assert files[loser.name]["outcome"] == "refused"
    assert "ALREADY_EXISTS" in files[loser.name]["error"]


def test_a_device_is_told_what_it_may_not_do(archive: Archive,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, archive, "cart_a", "summary", "1.2.3")
    assert code == 1
    assert err == ("waveform: summary: PERMISSION_DENIED: device cart-1 of org-a may not "
                   "read summaries (role clinician only)\n")


@pytest.fixture(scope="module")
def stored_uid(archive: Archive) -> str:
    r = archive.stub.Ingest(pb.IngestRequest(dicom=_ecg()), metadata=archive.auth("cart_a"),
                            timeout=60)
    return str(r.sop_instance_uid)


def test_raw_traces_keep_their_scale(archive: Archive, stored_uid: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    npy = tmp_path / "x.npy"
    code, _, err = _run(capsys, archive, "dr_a", "trace", stored_uid, "--raw", "-o", str(npy))
    assert code == 1 and not npy.exists()
    assert "a .npy file cannot hold the scale of raw samples: write .npz or .parquet" in err
    group = decode(archive.store.get_dicom(stored_uid)).groups[0]
    npz, parquet = tmp_path / "x.npz", tmp_path / "x.parquet"
    for out in (npz, parquet):
        code, _, err = _run(capsys, archive, "dr_a", "trace", stored_uid, "--raw", "--leads",
                            "I,V1", "-o", str(out))
        assert code == 0, err
    rows = [group.leads.index("I"), group.leads.index("V1")]
    saved = np.load(npz)
    assert np.array_equal(saved["samples"], group.raw[rows])
    assert saved["units"] == "raw" and list(saved["leads"]) == ["I", "V1"]
    physical = (saved["samples"] * (saved["sensitivity"] * saved["correction"])[:, None]
                + saved["baseline"][:, None])
    assert np.allclose(physical, group.physical()[rows])
    meta = pq.read_table(parquet).schema.metadata
    assert meta[b"units"] == b"raw"
    assert json.loads(meta[b"sensitivity"]) == [group.channels[i].sensitivity for i in rows]


def test_output_cut_short_by_its_reader_ends_quietly(archive: Archive, stored_uid: str) -> None:
    """``waveform trace UID | head -1``: no "Broken pipe" message, the status a Unix
    tool killed by SIGPIPE has."""
    env = {**os.environ, "WAVEFORM_SERVER": archive.address,
           "WAVEFORM_TOKEN": archive.tokens["dr_a"]}
    proc = subprocess.Popen([sys.executable, "-m", "waveform.cli", "trace", stored_uid,
                             "--rate", "8000"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"time_s,")
    proc.stdout.close()  # as `head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == ""


def test_demo_tokens_stay_the_same_for_a_data_folder(tmp_path: Path) -> None:
    hashes, first, kept = demo_tokens(tmp_path)
    assert not kept and len(first) == len(DEMO_CALLERS)
    assert oct((tmp_path / "dev-tokens.secret.json").stat().st_mode & 0o777) == "0o600"
    _, again, kept = demo_tokens(tmp_path)
    assert kept and again == first
    known = TokenIdentities.load(hashes)
    assert known.authenticate(first["clinician:demo-clinic:dr-demo"]).user == "dr-demo"
    assert all(token not in hashes.read_text() for token in first.values())
    (tmp_path / "dev-tokens.secret.json").unlink()
    _, fresh, kept = demo_tokens(tmp_path)
    assert not kept and set(fresh.values()).isdisjoint(first.values())


# ----------------------------------------------------------------- README
def _readme_lines() -> list[list[str]]:
    """The words of each command in the README's command list (up to the first
    that is not a plain lower-case word: an argument or option)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Command line", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    out = []
    for line in block.splitlines():
        m = re.match(r"^waveform((?: [a-z][a-z-]*)+)", line)
        if m:
            out.append(m.group(1).split())
    return out


def test_the_readme_lists_every_command_and_no_other() -> None:
    commands = set(command_paths())
    groups = {c.rsplit(" ", 1)[0] for c in commands} - {"waveform"}
    listed, unknown = set(), []
    for words in _readme_lines():
        # The longest run of words that names a command; what follows is an argument.
        named = [" ".join(["waveform", *words[:n]]) for n in range(len(words), 0, -1)]
        hit = next((c for c in named if c in commands), None)
        if hit is None:
            unknown.append(" ".join(["waveform", *words]))
        else:
            listed.add(hit)
        assert named[-1] not in groups or hit is not None, words
    assert not unknown, f"the README lists commands that do not exist: {unknown}"
    assert listed == commands, f"commands the README does not list: {commands - listed}"


def test_shell_completion_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert "_WAVEFORM_COMPLETE=bash_complete" in script and "complete " in script
    assert main(["completion", "tcsh"]) == 2
    env = {**os.environ, "_WAVEFORM_COMPLETE": "bash_complete", "COMP_WORDS": "waveform doc",
           "COMP_CWORD": "1"}
    done = subprocess.run([sys.executable, "-c", "import sys; from waveform.cli import cli; "
                           "cli(prog_name='waveform')"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert "documents" in done.stdout
