"""Who may store over the DICOM network: calling AE titles mapped to organisations.

A devices file sits beside the tokens file and is JSON::

    {"devices": [
      {"ae_title": "CART1", "organisation": "org-a"},
      {"ae_title": "CART2", "organisation": "org-a", "host": "10.1.2.3", "port": 104},
      {"ae_title": "ECGMGMT", "organisation": "org-b", "host": "10.9.0.4"}
    ]}

A DICOM association carries no credential but its calling AE title and the
address it comes from, so those are what identify a device: an entry with a
``host`` admits that AE title only from that address (an entry without one, from
any address), and an association that matches no entry is rejected. The device
acts as `Identity(organisation, user=<AE title>, role="device")`. ``port`` is
where the device's own Storage Commitment SCU listens for an N-EVENT-REPORT sent
on a new association (`waveform.service.dimse`).

The file is refused when every user of the machine may write it (anyone could
admit a device of any organisation), like the tokens file.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from waveform.errors import InvalidArgument
from waveform.model import Identity
from waveform.service.identity import read_private_list

__all__ = ["Device", "Devices", "add_device", "check_ae_title"]

log = logging.getLogger("waveform.service")

#: PS3.5 6.2: an AE title is at most 16 characters of the default repertoire,
#: without backslash or control characters; leading and trailing spaces are not
#: significant.
AE_TITLE_MAX = 16


def check_ae_title(title: str, where: str = "AE title") -> str:
    """``title`` without its insignificant spaces, or `InvalidArgument` naming what is wrong."""
    text = title.strip(" ")
    if not text:
        raise InvalidArgument(f"{where} is empty; an AE title has 1 to {AE_TITLE_MAX} "
                              "characters")
    if len(text) > AE_TITLE_MAX:
        raise InvalidArgument(f"{where} {text!r} has {len(text)} characters; an AE title has "
                              f"at most {AE_TITLE_MAX} (PS3.5 6.2)")
    bad = [c for c in text if c == "\\" or not 0x20 <= ord(c) < 0x7F]
    if bad:
        raise InvalidArgument(f"{where} {text!r} holds {bad[0]!r}; an AE title is printable "
                              "ASCII without backslash (PS3.5 6.2)")
    return text


def _check_host(host: str, where: str) -> str:
    try:
        return str(ipaddress.ip_address(host.strip()))
    except ValueError:
        raise InvalidArgument(
            f"{where}: host {host!r} is not an IP address; give the address the device "
            "connects from (names are not resolved: an association carries an address)"
        ) from None


def _check_port(port: object, where: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidArgument(f"{where}: port {port!r} is not a TCP port (1-65535)")
    return port


@dataclass(frozen=True, slots=True)
class Device:
    """One admitted caller: its AE title, organisation, and optionally its address
    (required to match) and the port of its Storage Commitment SCU."""

    ae_title: str
    organisation: str
    host: str | None = None
    port: int | None = None

    @property
    def identity(self) -> Identity:
        return Identity(self.organisation, self.ae_title, "device")

    def describe(self) -> str:
        where = f" from {self.host}" if self.host else ""
        return f"device {self.ae_title}{where} of {self.organisation}"

    def record(self) -> dict[str, object]:
        doc: dict[str, object] = {"ae_title": self.ae_title, "organisation": self.organisation}
        if self.host:
            doc["host"] = self.host
        if self.port:
            doc["port"] = self.port
        return doc


def _device(item: object, where: str) -> Device:
    if not isinstance(item, dict):
        raise InvalidArgument(f"{where} is {type(item).__name__}, not an object with "
                              "ae_title and organisation")
    try:
        title, organisation = item["ae_title"], item["organisation"]
    except KeyError as e:
        raise InvalidArgument(f"{where} lacks {e}") from None
    if not isinstance(title, str) or not isinstance(organisation, str) or not organisation:
        raise InvalidArgument(f"{where}: ae_title and organisation must be non-empty strings")
    host = item.get("host")
    if host is not None and not isinstance(host, str):
        raise InvalidArgument(f"{where}: host must be a string (an IP address)")
    port = item.get("port")
    return Device(check_ae_title(title, f"{where} ae_title"), organisation,
                  _check_host(host, where) if host else None,
                  _check_port(port, where) if port is not None else None)


class Devices:
    """The admitted devices; `find` answers who an association's caller is.

    Loaded from a file (`load`), it reads the file again when it changed, so
    that `waveform devices add` takes effect for the next association without a
    restart; a file that became unreadable or invalid is logged and the devices
    read before are kept."""

    def __init__(self, devices: Iterable[Device], path: Path | None = None) -> None:
        #: The devices as read (this instance's, not the reloaded file's: `__iter__`).
        self.entries = list(devices)
        seen: dict[tuple[str, str | None], Device] = {}
        for d in self.entries:
            key = (d.ae_title, d.host)
            if key in seen:
                where = f" from {d.host}" if d.host else " (any address)"
                raise InvalidArgument(
                    f"AE title {d.ae_title}{where} is listed twice (for {seen[key].organisation} "
                    f"and {d.organisation}); one caller is one device: remove one entry")
            seen[key] = d
        self._exact = {k: d for k, d in seen.items() if k[1] is not None}
        self._any = {k[0]: d for k, d in seen.items() if k[1] is None}
        self.path = path
        self._stamp = _stamp(path) if path is not None else None
        self._lock = threading.Lock()
        self._current: Devices = self

    def entry(self, ae_title: str, host: str) -> Device | None:
        """This instance's device for ``ae_title`` calling from ``host`` (an entry bound
        to that address wins over one for any address)."""
        return self._exact.get((ae_title, host)) or self._any.get(ae_title)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Devices:
        """Read a devices file, refusing one anyone may write and a malformed one."""
        p = Path(path)
        items = read_private_list(p, "devices", "anyone could admit a device of any "
                                  "organisation")
        devices = [_device(item, f"devices file {p} entry {i + 1}")
                   for i, item in enumerate(items)]
        try:
            return cls(devices, p)
        except InvalidArgument as e:
            raise InvalidArgument(f"devices file {p}: {e}") from None

    def __iter__(self) -> Iterator[Device]:
        return iter(self._current.entries)

    def __len__(self) -> int:
        return len(self._current.entries)

    def find(self, ae_title: str, address: str) -> Device | None:
        """The device calling as ``ae_title`` from ``address``, or None (not admitted).
        An entry bound to that address wins over one for any address."""
        cur = self._fresh()
        title = ae_title.strip(" ")
        try:
            host = str(ipaddress.ip_address(address))
        except ValueError:
            host = address
        return cur.entry(title, host)

    def _fresh(self) -> Devices:
        if self.path is None:
            return self
        stamp = _stamp(self.path)
        with self._lock:
            if stamp == self._stamp:
                return self._current
            self._stamp = stamp
            try:
                self._current = Devices.load(self.path)
            except InvalidArgument as e:
                log.error("devices file changed but cannot be used; the devices read "
                          "before are kept", extra={"error": str(e)})
            return self._current


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def add_device(path: str | os.PathLike[str], ae_title: str, organisation: str,
               host: str | None = None, port: int | None = None) -> Device:
    """Admit a device: add it to the devices file (created, mode 0600, if absent).

    Refuses an AE title already listed for the same address (or for any address
    when ``host`` is None), and a file anyone may write."""
    p = Path(path)
    where = "the new device"
    if not organisation:
        raise InvalidArgument(f"{where}: organisation is empty")
    device = Device(check_ae_title(ae_title, f"{where}'s AE title"), organisation,
                    _check_host(host, where) if host else None,
                    _check_port(port, where) if port is not None else None)
    existing = list(Devices.load(p)) if p.exists() else []
    Devices([*existing, device])  # refuses a duplicate, naming both organisations
    doc = {"devices": [d.record() for d in [*existing, device]]}
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(doc, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, p)
    return device
