"""Who is calling: bearer tokens (stored only as hashes) mapped to identities.

A tokens file is JSON::

    {"tokens": [
      {"sha256": "<hex of SHA-256 of the token>", "organisation": "org-1",
       "user": "cart-7", "role": "device"},
      {"sha256": "...", "organisation": "org-1", "user": "dr-a", "role": "clinician"},
      {"sha256": "...", "organisation": "citizens", "user": "p-1", "role": "citizen",
       "patient_id": "123456"}
    ]}

`TokenIdentities` answers `authenticate(token, certificate_organisation)`; with
mutual TLS the organisation in the client certificate must match the token's.
The service receives an `IdentityProvider` (a seam: tests inject their own).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from waveform.errors import AccessDenied, InvalidArgument, Unauthenticated
from waveform.model import ROLES, Identity

__all__ = [
    "ROLES",
    "Identity",
    "IdentityProvider",
    "TokenIdentities",
    "add_token",
    "hash_token",
    "new_token",
    "read_private_list",
]

class IdentityProvider(Protocol):
    def authenticate(self, token: str | None, certificate_organisation: str | None
                     ) -> Identity: ...


def read_private_list(path: Path, key: str, risk: str) -> list[Any]:
    """The ``key`` list of a JSON file that decides who may do what (tokens, devices),
    refusing a file every user of the machine may write (``risk``: what anyone
    could then do) and a document that is not ``{key: [...]}``."""
    what = f"{key} file {path}"
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as e:
        raise InvalidArgument(f"{what}: {e.strerror}") from None
    if mode & stat.S_IWOTH:
        raise InvalidArgument(
            f"{what} is writable by every user of this machine (mode "
            f"{stat.S_IMODE(mode):o}); {risk}. Restrict it: chmod 600 {path}")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"{what} is not JSON: {e}") from None
    items = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise InvalidArgument(
            f"{what} must hold an object {{\"{key}\": [...]}}; it holds {_shape(doc, key)}")
    return items


def _shape(doc: object, key: str) -> str:
    """How a document that is not ``{key: [...]}`` looks, for the message."""
    if isinstance(doc, dict):
        return f"an object without a '{key}' list" if doc else "an empty object"
    names: dict[type, str] = {list: "list", str: "string"}
    return "a JSON " + names.get(type(doc), type(doc).__name__)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random bearer token (256 bits, URL-safe). It never starts with "-", so
    that ``--token TOKEN`` on a command line is not taken for an option."""
    return "wf" + secrets.token_urlsafe(32)


class TokenIdentities:
    """Identities from a tokens file; tokens are compared by hash in constant time."""

    def __init__(self, entries: dict[str, Identity]) -> None:
        self._by_hash = dict(entries)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TokenIdentities:
        """Read a tokens file, refusing one that would let the wrong caller in: a file
        anyone may write, a document that is not ``{"tokens": [...]}`` or names no
        token, and a token hash listed twice (the later entry would decide who the
        caller is)."""
        p = Path(path)
        items = read_private_list(p, "tokens", "anyone could make themselves admin")
        if not items:
            raise InvalidArgument(f"tokens file {p} lists no tokens: no caller could be "
                                  "authenticated (add one with `waveform tokens add`)")
        entries: dict[str, Identity] = {}
        first: dict[str, int] = {}
        for i, item in enumerate(items):
            try:
                digest = str(item["sha256"]).lower()
                ident = Identity(str(item["organisation"]), str(item["user"]),
                                 str(item["role"]), str(item.get("patient_id", "")))
            except (KeyError, TypeError) as e:
                raise InvalidArgument(f"tokens file {p} entry {i + 1} lacks {e}") from None
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise InvalidArgument(f"tokens file {p} entry {i + 1}: sha256 must be 64 hex "
                                      "digits (the hash of the token, never the token)")
            if digest in entries:
                raise InvalidArgument(
                    f"tokens file {p} entries {first[digest]} and {i + 1} have the same token "
                    "hash; one token names one identity: remove one of them")
            entries[digest] = ident
            first[digest] = i + 1
        return cls(entries)

    def authenticate(self, token: str | None, certificate_organisation: str | None = None
                     ) -> Identity:
        if not token:
            raise Unauthenticated("no credentials: send 'authorization: Bearer <token>'")
        digest = hash_token(token)
        found = None
        for known, ident in self._by_hash.items():  # constant time per entry
            if hmac.compare_digest(known, digest):
                found = ident
        if found is None:
            raise Unauthenticated("the bearer token is not known to this archive")
        if certificate_organisation is not None and certificate_organisation != found.organisation:
            raise AccessDenied(
                f"the client certificate is of organisation {certificate_organisation!r} but the "
                f"token is of {found.organisation!r}"
            )
        return found


def add_token(path: str | os.PathLike[str], identity: Identity, token: str | None = None) -> str:
    """Add an identity to a tokens file (created if absent); returns the token,
    which is shown once and stored only as its hash."""
    p = Path(path)
    doc: dict[str, list[dict[str, str]]] = {"tokens": []}
    if p.exists():
        doc = json.loads(p.read_text())
    token = token or new_token()
    entry = {"sha256": hash_token(token), **{k: v for k, v in asdict(identity).items() if v}}
    doc.setdefault("tokens", []).append(entry)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, p)
    return token
