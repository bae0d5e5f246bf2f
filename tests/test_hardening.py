"""What hostile and unlucky callers found: each test failed on the code before its fix.

Tokens files that would let the wrong caller in, streams that must answer every
request they read, memory held by rejected objects, one caller holding every
slot, a full disk, oversized stream requests, non-finite trace parameters,
conflict messages naming another organisation's object, stops under load, and
compaction that must free space.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from waveform.errors import InvalidArgument
from waveform.model import Identity
from waveform.service.identity import TokenIdentities, add_token, hash_token


# ------------------------------------------------------------------ tokens file
def _tokens_file(tmp_path: Path, doc: object, mode: int = 0o600) -> Path:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(doc))
    os.chmod(path, mode)
    return path


def _entry(token: str, role: str, org: str = "org-a", user: str = "u") -> dict[str, str]:
    return {"sha256": hash_token(token), "organisation": org, "user": user, "role": role}


def test_a_world_writable_tokens_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    token = add_token(path, Identity("org-a", "cart", "device"))
    os.chmod(path, 0o666)
    with pytest.raises(InvalidArgument, match=r"writable by every user .* chmod 600"):
        TokenIdentities.load(path)
    os.chmod(path, 0o644)  # readable by others is the administrator's choice
    assert TokenIdentities.load(path).authenticate(token).user == "cart"


def test_a_token_hash_listed_twice_is_refused(tmp_path: Path) -> None:
    # The later entry used to win: a device token became an admin one.
    doc = {"tokens": [_entry("t1", "device"), _entry("t2", "clinician"),
                      _entry("t1", "admin", user="root")]}
    with pytest.raises(InvalidArgument, match=r"entries 1 and 3 have the same token hash"):
        TokenIdentities.load(_tokens_file(tmp_path, doc))


@pytest.mark.parametrize(("doc", "says"), [
    ([], "it holds a JSON list"),
    ({}, "it holds an empty object"),
    ({"token": []}, "an object without a 'tokens' list"),
    ({"tokens": {}}, "an object without a 'tokens' list"),
    ("tokens", "it holds a JSON string"),
    ({"tokens": []}, "lists no tokens"),
], ids=["list", "empty-object", "misspelt-key", "tokens-not-a-list", "string", "no-tokens"])
def test_a_tokens_file_without_tokens_is_refused(tmp_path: Path, doc: object, says: str
                                                 ) -> None:
    with pytest.raises(InvalidArgument, match=says):
        TokenIdentities.load(_tokens_file(tmp_path, doc))


def test_serve_refuses_a_bad_tokens_file_at_start(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from waveform.cli import main

    path = _tokens_file(tmp_path, {"tokens": [_entry("t1", "device")]}, mode=0o666)
    code = main(["serve", "--data", str(tmp_path / "data"), "--port", "0",
                 "--tokens", str(path)])
    assert code != 0
    assert "writable by every user" in capsys.readouterr().err
