"""The Waveform Annotation Sequence (PS3.3 C.10.10), decoded when first read.

A 12-lead object carries dozens of annotations (the cart's statements and
measurements); most readers of an `Ecg` never look at them. `LazyAnnotations`
keeps the tokens and decodes every item on first access, once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, overload

import numpy as np

from waveform.dicom.values import Fields, codes, tag, wanted
from waveform.model import Annotation, Code

if TYPE_CHECKING:
    from waveform.dicom.tokenize import Tokens
    from waveform.dicom.values import Reader

__all__ = ["ANNOTATION", "LazyAnnotations"]



ANNOTATION = {
    "units": tag(0x0040, 0x08EA), "channels": tag(0x0040, 0xA0B0),
    "concept_name": tag(0x0040, 0xA043), "temporal": tag(0x0040, 0xA130),
    "positions": tag(0x0040, 0xA132), "offsets": tag(0x0040, 0xA138),
    "concept": tag(0x0040, 0xA168), "group": tag(0x0040, 0xA180),
    "numeric": tag(0x0040, 0xA30A), "text": tag(0x0070, 0x0006),
}
_KEYS, _TAGS = wanted(ANNOTATION)
_K = {k: i for i, k in enumerate(_KEYS)}
_WHERE = "Waveform Annotation Sequence (0040,B020)"


def decode_annotations(r: Reader, tokens: Tokens, items: np.ndarray) -> tuple[Annotation, ...]:
    if items.size == 0:
        return ()
    f = Fields(tokens, items, _TAGS, _KEYS, _WHERE)
    names = codes(r, tokens, f.idx[:, _K["concept_name"]].copy(), _WHERE)
    values = codes(r, tokens, f.idx[:, _K["concept"]].copy(), _WHERE)
    units = codes(r, tokens, f.idx[:, _K["units"]].copy(), _WHERE)
    kt, kn, kc, kg = _K["text"], _K["numeric"], _K["channels"], _K["group"]
    kr, kp, ko = _K["temporal"], _K["positions"], _K["offsets"]
    out = []
    for ai in range(items.size):
        o, n, v = f.offs[ai], f.lens[ai], f.vrs[ai]
        numeric = r.floats(o[kn], n[kn], v[kn])
        chans = r.uints(o[kc], n[kc], v[kc], 2)
        group = r.uints(o[kg], n[kg], v[kg], 2)
        out.append(Annotation(
            text=r.string(o[kt], n[kt], text=True) if o[kt] >= 0 else None,
            concept=names[ai],
            value_code=values[ai],
            value=numeric[0] if numeric else None,
            units=_value(units[ai]),
            group_number=group[0] if group else None,
            channels=tuple(zip(chans[0::2], chans[1::2], strict=False)),
            temporal_range_type=r.string(o[kr], n[kr]) or None,
            sample_positions=r.uints(o[kp], n[kp], v[kp], 4),
            time_offsets=r.floats(o[ko], n[ko], v[ko]),
        ))
    return tuple(out)


def _value(code: Code | None) -> str | None:
    return None if code is None else code.value


class LazyAnnotations(Sequence[Annotation]):
    """A tuple of `Annotation`, decoded from the object on first access."""

    __slots__ = ("_items", "_reader", "_tokens", "_value")

    def __init__(self, reader: Reader, tokens: Tokens, items: np.ndarray) -> None:
        self._reader: Reader | None = reader
        self._tokens: Tokens | None = tokens
        self._items = items
        self._value: tuple[Annotation, ...] | None = None

    def _get(self) -> tuple[Annotation, ...]:
        if self._value is None:
            assert self._reader is not None and self._tokens is not None
            self._value = decode_annotations(self._reader, self._tokens, self._items)
            self._reader = self._tokens = None  # release the buffer
        return self._value

    def __len__(self) -> int:
        return int(self._items.size)

    @overload
    def __getitem__(self, i: int) -> Annotation: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[Annotation, ...]: ...

    def __getitem__(self, i: int | slice) -> Annotation | tuple[Annotation, ...]:
        return self._get()[i]

    def __iter__(self) -> Iterator[Annotation]:
        return iter(self._get())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (tuple, LazyAnnotations)):
            return self._get() == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._get())
