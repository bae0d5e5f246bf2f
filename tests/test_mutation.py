"""A seeded mutator over real objects: decode raises only `WaveformError`, never hangs.

Mutations: truncation, byte flips, length fields set to edge values, elements
duplicated, deleted or moved, random insertions. A mutated object that still
decodes must also yield its samples, physical values, annotations and split/join.
"""

from __future__ import annotations

import io
import random
import struct
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests.conftest import SHARED_DICOM
from waveform.dicom import decode, encode, join, split
from waveform.dicom.codes import TRANSFER_SYNTAXES
from waveform.dicom.decode import locate
from waveform.dicom.synthetic import synthetic_ecg
from waveform.dicom.tokenize import vr_code
from waveform.errors import WaveformError

CASES_PER_SEED = 1000
SEEDS = range(6)  # 6,000 cases per run
SLOWEST_CASE_S = 2.0


def _reencode(data: bytes, syntax: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


_BIG_ENDIAN = "1.2.840.10008.1.2.2"


def _relabelled(data: bytes, syntax: str) -> bytes:
    """``data`` with its File Meta Information naming another transfer syntax and
    the data set left as it was (a little-endian body labelled big endian: the
    walker reads every length and tag in the wrong byte order)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    old = str(ds.file_meta.TransferSyntaxUID).encode()
    new = syntax.encode()
    # Same padded length, so the meta group length stays right.
    old_padded = old + b"\0" * (len(old) % 2)
    new_padded = new + b"\0" * (len(new) % 2)
    assert len(old_padded) == len(new_padded), (old, new)
    return data.replace(old_padded, new_padded, 1)


def _corpus() -> list[bytes]:
    """Objects in every transfer syntax the codec reads (`test_corpus_covers_every_
    transfer_syntax`), and the shared real ones that are small."""
    ecg = Path(str(get_testdata_file("waveform_ecg.dcm"))).read_bytes()
    small = [p.read_bytes() for p in SHARED_DICOM if p.stat().st_size < 200_000]
    big = encode(synthetic_ecg(seed=7, duration_s=2, transfer_syntax_uid=_BIG_ENDIAN))
    return [ecg, _reencode(ecg, ImplicitVRLittleEndian),
            _reencode(ecg, DeflatedExplicitVRLittleEndian), big,
            _relabelled(ecg, _BIG_ENDIAN), *small]


class Mutator:
    """Knows where the elements and their length fields are in one object."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.fields: list[tuple[int, int]] = []   # (position, width) of length fields
        self.elements: list[tuple[int, int]] = []  # (start, end) of whole elements
        try:
            _, _, ts, tokens, _ = locate(data)
        except WaveformError:  # an object that is broken already: bytes-level mutations
            self.structured = False
            return
        self.structured = not ts.deflated
        self.order: str = "little" if ts.little_endian else "big"
        if not self.structured:
            return
        long_vrs = {vr_code(v) for v in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN",
                                         "UR", "UT", "SV", "UV")}
        for vr, off, length in zip(tokens.vrs.tolist(), tokens.offs.tolist(),
                                   tokens.lens.tolist(), strict=True):
            if vr == 1 or ts.implicit_vr:  # items, and every implicit VR element
                head, width = 8, 4
            elif vr in long_vrs:
                head, width = 12, 4
            else:
                head, width = 8, 2
            self.fields.append((off - width, width))
            if length != 0xFFFFFFFF:
                self.elements.append((off - head, off + length))

    def __call__(self, rng: random.Random) -> bytes:
        d = bytearray(self.data)
        kind = rng.randrange(8) if self.structured else rng.choice((0, 1, 6))
        if kind == 0:  # truncate
            return bytes(d[: rng.randrange(len(d))])
        if kind == 1:  # flip bytes
            for _ in range(rng.randint(1, 8)):
                d[rng.randrange(len(d))] = rng.randrange(256)
            return bytes(d)
        if kind in (2, 3):  # a length field to an edge value
            pos, width = rng.choice(self.fields)
            edge = rng.choice([0, 1, 2, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFFFFFFE,
                               rng.randrange(1 << (8 * width))])
            edge &= (1 << (8 * width)) - 1
            d[pos:pos + width] = edge.to_bytes(width, self.order)  # type: ignore[arg-type]
            return bytes(d)
        if kind == 6:  # insert random bytes
            pos = rng.randrange(len(d))
            return bytes(d[:pos] + rng.randbytes(rng.randint(1, 16)) + d[pos:])
        start, end = rng.choice(self.elements)
        if kind == 4:  # duplicate an element
            return bytes(d[:end] + d[start:end] + d[end:])
        if kind == 5:  # delete an element
            return bytes(d[:start] + d[end:])
        other_start, _ = rng.choice(self.elements)  # move an element elsewhere
        piece = d[start:end]
        rest = d[:start] + d[end:]
        pos = min(other_start, len(rest))
        return bytes(rest[:pos] + piece + rest[pos:])


def _exercise(data: bytes) -> None:
    ecg = decode(data)
    for group in ecg.groups:
        assert group.raw.shape == (len(group.channels), group.n_samples)
        group.physical()
    list(ecg.annotations)
    header, groups = split(data)
    assert join(header, groups) == data


@pytest.fixture(scope="module")
def mutators() -> list[Mutator]:
    corpus = _corpus()
    for data in corpus:  # compile every kernel variant before any case is timed
        try:
            _exercise(data)
        except WaveformError:
            pass
    return [Mutator(d) for d in corpus]


@pytest.mark.parametrize("seed", SEEDS)
def test_mutations_raise_only_waveform_errors(seed: int, mutators: list[Mutator]) -> None:
    rng = random.Random(seed)
    outcomes = {"decoded": 0, "refused": 0}
    slowest = 0.0
    for _ in range(CASES_PER_SEED):
        mutate = rng.choice(mutators)
        data = mutate(rng)
        t0 = time.perf_counter()
        try:
            _exercise(data)
            outcomes["decoded"] += 1
        except WaveformError:
            outcomes["refused"] += 1
        except Exception as exc:  # the point of the test: name the case that escaped
            raise AssertionError(
                f"seed {seed}: {type(exc).__name__}: {exc} escaped for a {len(data)}-byte object "
                f"(sha prefix {hash(data) & 0xFFFF:04x})"
            ) from exc
        slowest = max(slowest, time.perf_counter() - t0)
    print(seed, outcomes, f"slowest {slowest * 1e3:.1f} ms")
    assert sum(outcomes.values()) == CASES_PER_SEED
    assert outcomes["refused"] > CASES_PER_SEED // 20, outcomes  # the mutator does break things
    assert slowest < SLOWEST_CASE_S, f"a case took {slowest:.2f} s"


def test_corpus_covers_every_transfer_syntax() -> None:
    syntaxes = {str(pydicom.dcmread(io.BytesIO(d), stop_before_pixels=True)
                    .file_meta.TransferSyntaxUID) for d in _corpus()}
    assert syntaxes == set(TRANSFER_SYNTAXES), syntaxes ^ set(TRANSFER_SYNTAXES)


def test_big_endian_truncations_are_refused_as_invalid() -> None:
    # A truncated big-endian object once escaped as OverflowError (a numpy uint8
    # shifted past 8 bits while naming the element at fault).
    data = encode(synthetic_ecg(seed=7, duration_s=2, transfer_syntax_uid=_BIG_ENDIAN))
    with pytest.raises(WaveformError, match=r"element \([0-9A-F]{4},[0-9A-F]{4}\) at byte"):
        decode(data[:5000])
    refused = 0
    for cut in range(200, len(data), len(data) // 29):
        try:
            _exercise(data[:cut])
        except WaveformError:
            refused += 1
    assert refused >= 25


def test_mutator_finds_length_fields(mutators: list[Mutator]) -> None:
    m = mutators[0]
    # Every length field the mutator knows decodes to the token's length in the original.
    _, _, _, tokens, _ = locate(m.data)
    for (pos, width), length in zip(m.fields, tokens.lens.tolist(), strict=True):
        assert int.from_bytes(m.data[pos:pos + width], "little") == length
    assert len(m.elements) > 1000
    assert np.all(np.diff([s for s, _ in m.elements[:10]]) != 0)
    assert struct.calcsize("<I") == 4
