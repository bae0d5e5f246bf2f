"""SCP-ECG Huffman tables (Section 2) and the decoding of a lead's bit stream.

EN 1064 / ISO 11073-91064 5.5: a table is a list of codes, each with the number
of bits of its prefix, the number of bits of the whole code, a mode (1: the code
stands for a value; 0: switch to the table numbered by the base value), a base
value and the prefix itself, stored least significant bit first (the first bit
sent is bit 0). A code whose total length exceeds its prefix is followed by the
value in (total - prefix) bits, two's complement, most significant bit first.
Table number 19999 in Section 2 means the standard's default table (Annex C).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numba
import numpy as np

from waveform.errors import InvalidFile

__all__ = ["DEFAULT_TABLE", "Code", "Table", "decode", "parse_tables"]

FORMAT = "scp-ecg"


@dataclass(frozen=True, slots=True)
class Code:
    prefix_bits: int
    total_bits: int
    mode: int
    value: int
    prefix: int  # the prefix as read, first bit most significant


Table = tuple[Code, ...]


def _default() -> Table:
    # Annex C: 0 -> "0"; +-n (n = 1..8) -> n ones, a zero, the sign bit (0 +, 1 -);
    # then nine ones and a zero escape an 8-bit value, ten ones a 16-bit value.
    codes = [Code(1, 1, 1, 0, 0b0)]
    for n in range(1, 9):
        ones = (1 << n) - 1
        for sign, value in ((0, n), (1, -n)):
            bits = n + 2
            codes.append(Code(bits, bits, 1, value, (ones << 2) | sign))
    codes.append(Code(10, 18, 1, 0, 0b1111111110))
    codes.append(Code(10, 26, 1, 0, 0b1111111111))
    return tuple(codes)


#: The default table of Annex C (Section 2 holds table count 19999).
DEFAULT_TABLE: Table = _default()


def _reverse(value: int, bits: int) -> int:
    out = 0
    for _ in range(bits):
        out = (out << 1) | (value & 1)
        value >>= 1
    return out


def _check(table: Table, number: int, count: int) -> None:
    seen: dict[tuple[int, int], int] = {}
    for i, c in enumerate(table):
        where = f"Section 2 table {number} code {i + 1}"
        if not 1 <= c.prefix_bits <= 32 or not c.prefix_bits <= c.total_bits <= c.prefix_bits + 32:
            raise InvalidFile(FORMAT, where, f"prefix of {c.prefix_bits} bits in a code of "
                              f"{c.total_bits} bits; expected 1..32 and a value of <= 32 bits")
        if c.mode == 0 and not 1 <= c.value <= count:
            raise InvalidFile(FORMAT, where, f"switches to table {c.value}; there are {count}")
        if c.mode not in (0, 1):
            raise InvalidFile(FORMAT, where, f"mode {c.mode}; expected 0 or 1")
        key = (c.prefix_bits, c.prefix)
        if key in seen:
            raise InvalidFile(FORMAT, where, f"repeats the prefix of code {seen[key] + 1}")
        seen[key] = i
    # Prefix-free: no code is the beginning of another (else decoding is ambiguous).
    for a in table:
        for b in table:
            if a is not b and a.prefix_bits < b.prefix_bits and (
                    b.prefix >> (b.prefix_bits - a.prefix_bits)) == a.prefix:
                raise InvalidFile(FORMAT, f"Section 2 table {number}",
                                  f"code {a.prefix:0{a.prefix_bits}b} is a prefix of code "
                                  f"{b.prefix:0{b.prefix_bits}b}: not a Huffman table")


def parse_tables(body: bytes) -> tuple[Table, ...]:
    """The tables of Section 2's body (after the section header)."""
    if len(body) < 2:
        raise InvalidFile(FORMAT, "Section 2", f"{len(body)} bytes; the table count needs 2")
    (count,) = struct.unpack_from("<H", body, 0)
    if count == 19999:
        return (DEFAULT_TABLE,)
    if not 1 <= count <= 256:
        raise InvalidFile(FORMAT, "Section 2 number of tables", f"{count}; expected 1..256 "
                          "or 19999 (the default table)")
    tables: list[Table] = []
    offset = 2
    for number in range(1, count + 1):
        if offset + 2 > len(body):
            raise InvalidFile(FORMAT, f"Section 2 table {number}", "truncated before its size")
        (n,) = struct.unpack_from("<H", body, offset)
        offset += 2
        if not 1 <= n <= 4096 or offset + 9 * n > len(body):
            raise InvalidFile(FORMAT, f"Section 2 table {number} number of codes",
                              f"{n} codes of 9 bytes; {len(body) - offset} bytes remain")
        codes = []
        for _ in range(n):
            prefix_bits, total_bits, mode, value, stored = struct.unpack_from(
                "<BBBhI", body, offset)
            offset += 9
            codes.append(Code(prefix_bits, total_bits, mode, value,
                              _reverse(stored, prefix_bits) if 1 <= prefix_bits <= 32 else 0))
        tables.append(tuple(codes))
    for number, table in enumerate(tables, 1):
        _check(table, number, count)
    return tuple(tables)


# Status codes of `_decode_bits`.
_OK, _ENDS, _NO_CODE, _ENDS_IN_VALUE = 0, 1, 2, 3


@numba.njit(cache=True, nogil=True)
def _decode_bits(bits: np.ndarray, prefix_bits: np.ndarray, prefix: np.ndarray,
                 total_bits: np.ndarray, mode: np.ndarray, value: np.ndarray,
                 sizes: np.ndarray, count: int) -> tuple[np.ndarray, int, int, int, int]:
    """(values, decoded, status, bit position, table) of a Huffman bit stream.

    Tables are rows of the code arrays (``sizes[t]`` codes in row t); a code
    matches when its prefix length and prefix equal the bits read so far.
    """
    out = np.zeros(count, dtype=np.int64)
    table = 0
    pos = 0
    n = 0
    total = bits.size
    while n < count:
        code = np.int64(0)
        length = 0
        found = -1
        while found < 0:
            if pos >= total:
                return out, n, _ENDS, pos, table
            if length >= 32:
                return out, n, _NO_CODE, pos - length, table
            code = (code << 1) | np.int64(bits[pos])
            pos += 1
            length += 1
            for i in range(sizes[table]):
                if prefix_bits[table, i] == length and prefix[table, i] == code:
                    found = i
                    break
        if mode[table, found] == 0:
            table = value[table, found] - 1
            continue
        extra = total_bits[table, found] - length
        if extra > 0:
            if pos + extra > total:
                return out, n, _ENDS_IN_VALUE, pos, table
            v = np.int64(0)
            for k in range(extra):
                v = (v << 1) | np.int64(bits[pos + k])
            pos += extra
            if v >= (np.int64(1) << (extra - 1)):
                v -= np.int64(1) << extra
            out[n] = v
        else:
            out[n] = value[table, found]
        n += 1
    return out, n, _OK, pos, table


def _arrays(tables: tuple[Table, ...]) -> tuple[np.ndarray, ...]:
    width = max(len(t) for t in tables)
    shape = (len(tables), width)
    prefix_bits = np.zeros(shape, np.int64)
    prefix = np.zeros(shape, np.int64)
    total_bits = np.zeros(shape, np.int64)
    mode = np.zeros(shape, np.int64)
    value = np.zeros(shape, np.int64)
    for t, table in enumerate(tables):
        for i, c in enumerate(table):
            prefix_bits[t, i], prefix[t, i] = c.prefix_bits, c.prefix
            total_bits[t, i], mode[t, i], value[t, i] = c.total_bits, c.mode, c.value
    sizes = np.array([len(t) for t in tables], np.int64)
    return prefix_bits, prefix, total_bits, mode, value, sizes


def decode(data: bytes, tables: tuple[Table, ...], count: int, where: str) -> np.ndarray:
    """``count`` values (int64) from the Huffman bit stream ``data``, table 1 first."""
    if count > 8 * len(data):  # every code is at least one bit
        raise InvalidFile(FORMAT, where, f"{len(data)} bytes of Huffman codes cannot hold "
                          f"{count} samples")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    prefix_bits, prefix, total_bits, mode, value, sizes = _arrays(tables)
    out, n, status, pos, table = _decode_bits(
        bits, prefix_bits, prefix, total_bits, mode, value, sizes, count)
    if status == _ENDS:
        raise InvalidFile(FORMAT, where, f"the bit stream ends after {n} of {count} samples")
    if status == _NO_CODE:
        raise InvalidFile(FORMAT, where, f"bits at {pos} match no code of Huffman table "
                          f"{table + 1}")
    if status == _ENDS_IN_VALUE:
        raise InvalidFile(FORMAT, where, f"the bit stream ends inside a value after {n} of "
                          f"{count} samples")
    return out
