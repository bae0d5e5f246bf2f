"""Sample codecs: lossless for every width, order and shape; the kernels match numpy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.conftest import shared
from waveform.store import codec as C

DTYPES = ["<i2", ">i2", "<u2", "i1", "u1", "<i4", ">i4", "<u4", "<i8", "<u8", ">u8"]


def _reference_planes(x: np.ndarray, zigzag: bool) -> np.ndarray:
    """numpy reference of the fused kernel: delta per channel, zig-zag, shuffle."""
    item = x.dtype.itemsize
    u = x.view(f"<u{item}")
    d = np.diff(u, axis=0, prepend=np.zeros((1, u.shape[1]), u.dtype)).T  # wraps
    if zigzag:
        s = d.view(f"<i{item}")
        d = (d << np.array(1, d.dtype)) ^ (s >> (item * 8 - 1)).view(d.dtype)
    return np.ascontiguousarray(d).reshape(-1).view(np.uint8).reshape(-1, item).T


@pytest.mark.parametrize("zigzag", [True, False], ids=["zigzag", "plain"])
@pytest.mark.parametrize("dtype", ["<i2", "<i4", "<u8", "i1"])
def test_encode_kernel_matches_numpy_reference(dtype: str, zigzag: bool) -> None:
    rng = np.random.default_rng(7)
    info = np.iinfo(np.dtype(dtype))
    x = rng.integers(info.min, info.max, size=(300, 5), dtype=np.dtype(dtype), endpoint=True)
    u = x.view(f"<u{x.dtype.itemsize}")
    got = C._encode_kernel(u, x.dtype.itemsize, zigzag)
    assert np.array_equal(got, _reference_planes(x, zigzag))


@pytest.mark.parametrize("zigzag", [True, False], ids=["zigzag", "plain"])
@pytest.mark.parametrize("dtype", ["<i2", "<u2"])
def test_16_bit_kernels_match_the_reference_and_invert(dtype: str, zigzag: bool) -> None:
    rng = np.random.default_rng(11)
    info = np.iinfo(np.dtype(dtype))
    x = rng.integers(info.min, info.max, size=(500, 12), dtype=np.dtype(dtype), endpoint=True)
    x[:4] = [[info.min] * 12, [info.max] * 12, [info.min] * 12, [0] * 12]  # wrap both ways
    u = x.view("<u2")
    planes = C._encode16(u, zigzag)
    assert np.array_equal(planes, _reference_planes(x, zigzag))
    out = np.empty_like(u)
    C._decode16(planes, out, zigzag)
    assert np.array_equal(out, u)
    by_channel = np.empty_like(u.T)  # decode_channels writes a channel-major array
    C._decode16(planes, by_channel.T, zigzag)
    assert np.array_equal(by_channel, u.T)


@settings(max_examples=150, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    n_channels=st.integers(1, 15),
    n_samples=st.integers(0, 300),
    codec=st.sampled_from(sorted(C.CODECS)),
    data=st.data(),
)
def test_roundtrip_is_byte_identical(
    dtype: str, n_channels: int, n_samples: int, codec: str, data: st.DataObject
) -> None:
    dt = np.dtype(dtype)
    x = data.draw(hnp.arrays(dt, (n_samples, n_channels)))
    raw = x.tobytes()
    enc = C.encode_samples(raw, dt, n_channels, codec)
    assert enc.nbytes == len(raw)
    assert C.decode_samples(enc, dt, n_channels) == raw
    channels = C.decode_channels(enc, dt, n_channels)
    assert channels.dtype == dt and channels.shape == (n_channels, n_samples)
    assert channels.tobytes() == np.ascontiguousarray(x.T).tobytes()  # bits, NaN included
    assert not channels.flags.writeable


@settings(max_examples=50, deadline=None)
@given(raw=st.binary(max_size=200), n_channels=st.integers(1, 12))
def test_ragged_bytes_fall_back_to_zstd(raw: bytes, n_channels: int) -> None:
    dt = np.dtype("<i2")
    enc = C.encode_samples(raw, dt, n_channels)
    if len(raw) % (2 * n_channels):
        assert enc.codec == "zstd"
    assert C.decode_samples(enc, dt, n_channels) == raw


def test_extremes_wrap_losslessly() -> None:
    x = np.array([[-32768, 32767], [32767, -32768], [0, 0], [-1, 1]], dtype="<i2")
    enc = C.encode_samples(x.tobytes(), x.dtype, 2)
    assert enc.codec == C.DEFAULT_CODEC
    assert C.decode_samples(enc, x.dtype, 2) == x.tobytes()


def test_unknown_codec_names_what_is_readable() -> None:
    with pytest.raises(ValueError, match=r"unknown sample codec 'lz9'.*delta-zz-shuffle-zstd"):
        C.decode_samples(C.EncodedSamples("lz9", b"", 0), np.dtype("<i2"), 1)


def test_ludb_ratio_meets_the_target() -> None:
    wfdb = pytest.importorskip("wfdb")
    shared("wfdb", "ludb", "1.hea")
    raw_total = enc_total = 0
    for i in range(1, 11):
        rec = wfdb.rdrecord(str(shared("wfdb", "ludb", f"{i}.hea"))[:-4], physical=False)
        x = np.ascontiguousarray(rec.d_signal.astype("<i2"))
        enc = C.encode_samples(x.tobytes(), x.dtype, x.shape[1])
        assert C.decode_samples(enc, x.dtype, x.shape[1]) == x.tobytes()
        raw_total += x.nbytes
        enc_total += len(enc.blob)
    assert raw_total / enc_total >= 3.0
