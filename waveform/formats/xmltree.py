"""Reading the XML formats (MUSE, Sierra, aECG) safely, with errors that name the field.

Files are parsed from bytes (the XML declaration or a byte-order mark says the
encoding: Sierra 1.04 files are UTF-16). A document type declaration that
declares entities is refused before parsing (entity expansion is how an XML file
is made to explode in memory); namespaces are dropped from tag names, since
each format is recognised by its root element.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math
import re
import xml.etree.ElementTree as ET

from waveform.errors import InvalidFile

__all__ = ["Node", "date", "parse", "root_name", "time"]

_ENTITY = re.compile(rb"<!ENTITY", re.IGNORECASE)
_ENTITY_UTF16 = re.compile("<!ENTITY".encode("utf-16-le"), re.IGNORECASE)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse(fmt: str, data: bytes) -> ET.Element:
    """The root element, namespaces stripped; malformed XML is an `InvalidFile`."""
    if _ENTITY.search(data) or _ENTITY_UTF16.search(data):
        raise InvalidFile(fmt, "document type", "declares entities; refused (entity expansion)")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise InvalidFile(fmt, "XML", f"not well-formed ({e})") from None
    for el in root.iter():
        if isinstance(el.tag, str):
            el.tag = _local(el.tag)
        if el.attrib:
            el.attrib = {_local(k): v for k, v in el.attrib.items()}
    return root


def root_name(data: bytes) -> str | None:
    """The local name of the root element, or None if ``data`` is not XML."""
    head = data[:4096]
    for enc in ("utf-8", "utf-16"):
        try:
            text = head.decode(enc, errors="ignore")
        except UnicodeError:  # pragma: no cover - errors="ignore"
            continue
        text = text.lstrip("\ufeff \t\r\n")
        if not text.startswith("<"):
            continue
        # Skip the declaration, comments and the document type declaration.
        body = re.sub(r"<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^\[>]*(\[.*?\])?\s*>", "", text,
                      flags=re.S)
        m = re.match(r"\s*<([A-Za-z_][\w.\-]*:)?([A-Za-z_][\w.\-]*)", body)
        if m:
            return m.group(2)
    return None


class Node:
    """An element with lookups that raise `InvalidFile` naming the path."""

    __slots__ = ("el", "fmt", "path")

    def __init__(self, fmt: str, el: ET.Element, path: str = "") -> None:
        self.fmt = fmt
        self.el = el
        self.path = path or el.tag

    def find(self, path: str) -> Node | None:
        el = self.el.find(path)
        return None if el is None else Node(self.fmt, el, f"{self.path}/{path}")

    def need(self, path: str) -> Node:
        node = self.find(path)
        if node is None:
            raise InvalidFile(self.fmt, f"{self.path}/{path}", "missing")
        return node

    def all(self, path: str) -> list[Node]:
        return [Node(self.fmt, el, f"{self.path}/{path}[{i}]")
                for i, el in enumerate(self.el.findall(path))]

    def text(self, path: str = "", default: str = "") -> str:
        node = self.find(path) if path else self
        if node is None:
            return default
        return "".join(node.el.itertext()).strip()

    def attr(self, name: str, default: str | None = None) -> str:
        value = self.el.get(name)
        if value is None:
            if default is None:
                raise InvalidFile(self.fmt, f"{self.path}@{name}", "missing")
            return default
        return value.strip()

    def fail(self, problem: str, field: str = "") -> InvalidFile:
        return InvalidFile(self.fmt, f"{self.path}{field}", problem)

    def number(self, path: str, kind: type[int] | type[float] = float) -> float | None:
        """The element's text as a number, None when absent or empty."""
        text = self.text(path)
        if not text:
            return None
        try:
            value = kind(text)
        except ValueError:
            raise InvalidFile(self.fmt, f"{self.path}/{path}",
                              f"{text[:40]!r} is not a number") from None
        if not math.isfinite(value):
            raise InvalidFile(self.fmt, f"{self.path}/{path}",
                              f"{text[:40]!r} is not a finite number")
        return value

    def attr_number(self, name: str, default: float | None = None) -> float | None:
        """An attribute as a finite number, ``default`` when absent or empty."""
        text = self.el.get(name, "").strip()
        if not text:
            return default
        try:
            value = float(text)
        except ValueError:
            raise self.fail(f"{text[:40]!r} is not a number", f"@{name}") from None
        if not math.isfinite(value):
            raise self.fail(f"{text[:40]!r} is not a finite number", f"@{name}")
        return value

    def integer(self, path: str) -> int:
        """A required integer element (or attribute, as ``@name``)."""
        text = self.attr(path[1:]) if path.startswith("@") else self.need(path).text()
        where = f"{self.path}{path}" if path.startswith("@") else f"{self.path}/{path}"
        try:
            return int(text)
        except ValueError:
            raise InvalidFile(self.fmt, where, f"{text[:40]!r} is not an integer") from None

    def base64(self, path: str = "") -> bytes:
        node = self.need(path) if path else self
        text = re.sub(r"\s+", "", node.text())
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as e:
            raise InvalidFile(self.fmt, node.path, f"not valid base64 ({e})") from None


def date(fmt: str, field: str, text: str, patterns: tuple[str, ...]) -> dt.date | None:
    """A date in one of ``patterns`` (strptime), None when empty."""
    text = text.strip()
    if not text:
        return None
    for p in patterns:
        try:
            return dt.datetime.strptime(text, p).date()
        except ValueError:
            continue
    raise InvalidFile(fmt, field, f"{text[:40]!r} is not a date ({' or '.join(patterns)})")


def time(fmt: str, field: str, text: str, patterns: tuple[str, ...]) -> dt.time | None:
    text = text.strip()
    if not text:
        return None
    for p in patterns:
        try:
            return dt.datetime.strptime(text, p).time()
        except ValueError:
            continue
    raise InvalidFile(fmt, field, f"{text[:40]!r} is not a time ({' or '.join(patterns)})")
