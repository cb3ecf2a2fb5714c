"""rANS: kernels against the slow reference, the format against an independent decoder."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kvinfo.codecs import CodecConfigError, CorruptStreamError, get_codec
from kvinfo.codecs.models import PerChannelTables
from kvinfo.kernels import cpu

_spec = importlib.util.spec_from_file_location(
    "kvinfo_ref_coders_rans", pathlib.Path(__file__).with_name("reference_coders.py")
)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


def _skewed(rng, n, a, dtype=np.uint8):
    p = rng.dirichlet(np.full(a, 0.3))
    return rng.choice(a, size=n, p=p).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
@pytest.mark.parametrize("per_channel", [False, True])
def test_kernel_matches_reference_bit_exactly(dtype, per_channel):
    rng = np.random.default_rng(1)
    period = 7
    x = _skewed(rng, 1000, 12, dtype)
    if dtype is np.int32:
        x = x - 5
    lo = int(x.min())
    a = int(x.max()) - lo + 1
    counts = cpu.histogram(x, lo, a, period, per_channel=per_channel)
    tables = PerChannelTables.from_counts(counts, 10, lo)
    words, nw, states = cpu.rans_encode(x, lo, tables.frequencies, 10, 128, period)
    rw, rs = ref.rans_encode(x, lo, tables.frequencies, 10, 128, period)
    assert words.tolist() == [w for chunk in rw for w in chunk]
    assert nw.tolist() == [len(c) for c in rw]
    assert states.tolist() == rs
    out = np.empty_like(x)
    status = cpu.rans_decode(words, nw, states, tables.frequencies, 10, 128, lo, period, out)
    assert status.tolist() == [0] * len(rw)
    assert np.array_equal(out, x)
    assert ref.rans_decode(rw, rs, x.size, lo, tables.frequencies, 10, 128, period) == x.tolist()


_FRESH = int(np.random.SeedSequence().entropy % (1 << 32))


@pytest.mark.parametrize("lanes,period,per_channel,dtype", [
    (32, 1, False, np.uint8),    # direct slot table, unrolled 32-lane loop
    (32, 64, True, np.uint8),    # per-channel, period a multiple of the lanes
    (32, 48, True, np.int32),    # per-channel, period not a multiple: channel counter
    (16, 1, False, np.uint16),   # fewer lanes, one table
    (4, 8, True, np.int32),      # fewer lanes, per-channel step loop
    (1, 3, True, np.uint8),      # a single lane
    (32, 5, False, np.int32),    # one table, int32 (indirect table)
])
def test_every_kernel_loop_matches_the_reference_on_fresh_data(lanes, period, per_channel,
                                                                dtype):
    """Each decode and encode loop (direct or indirect table, 32 or fewer lanes, channel
    base or counter, partial last step, several chunks) bit-exact against the reference."""
    rng = np.random.default_rng([_FRESH, lanes, period])
    n = int(rng.integers(3 * 64, 700))
    a = int(rng.integers(2, 40))
    x = _skewed(rng, n, a, dtype)
    if dtype is np.int32:
        x = x - int(rng.integers(0, 100))
    lo = int(x.min())
    a = int(x.max()) - lo + 1
    prec = int(rng.integers(max(6, int(np.ceil(np.log2(a)))), 17))
    counts = cpu.histogram(x, lo, a, period, per_channel=per_channel)
    tables = PerChannelTables.from_counts(counts, prec, lo)
    chunk = lanes * int(rng.integers(2, 6))
    words, nw, states = cpu.rans_encode(x, lo, tables.frequencies, prec, chunk, period,
                                        num_lanes=lanes)
    rw, rs = ref.rans_encode(x, lo, tables.frequencies, prec, chunk, period, lanes=lanes)
    msg = f"seed {_FRESH}"
    assert words.tolist() == [w for c in rw for w in c], msg
    assert states.tolist() == rs, msg
    out = np.empty_like(x)
    status = cpu.rans_decode(words, nw, states, tables.frequencies, prec, chunk, lo, period, out)
    assert status.tolist() == [0] * len(rw) and np.array_equal(out, x), msg


def test_encoder_reciprocal_is_exact_at_the_extremes():
    """The encoder's float64 reciprocal division is exact for every state and frequency:
    precision 16 with frequencies 1 and 65535 drives states to the top of [2**16, 2**32)."""
    freq = np.array([[1, 65535]], np.int64)
    x = np.zeros(4000, np.uint8)
    x[::97] = 0
    x[1::2] = 1
    words, nw, states = cpu.rans_encode(x, 0, freq, 16, 4000, num_lanes=32)
    rw, rs = ref.rans_encode(x, 0, freq, 16, 4000, 1)
    assert words.tolist() == rw[0] and states.tolist() == rs
    single = np.array([[1 << 16]], np.int64)  # one symbol with the whole range
    y = np.full(999, 7, np.int32)
    w2, n2, s2 = cpu.rans_encode(y, 7, single, 16, 1024)
    out = np.empty_like(y)
    assert cpu.rans_decode(w2, n2, s2, single, 16, 1024, 7, 1, out).tolist() == [0]
    assert np.array_equal(out, y)


@pytest.mark.parametrize(
    "config",
    [
        {"id": "rans"},
        {"id": "rans", "per_channel": True, "chunk_size": 96, "precision_bits": 14},
        {"id": "rans", "precision_bits": 8, "chunk_size": 32},
    ],
)
def test_independent_decoder_reads_the_stream(config):
    rng = np.random.default_rng(2)
    x = _skewed(rng, 600, 20, np.uint16).reshape(30, 20) + 1000
    data = get_codec(config).encode(x)
    assert np.array_equal(ref.decode_rans_stream(data), x)


def test_rate_close_to_entropy_and_split():
    rng = np.random.default_rng(3)
    x = np.clip(np.round(rng.normal(8, 2.5, 200_000)), 0, 15).astype(np.uint8)
    codec = get_codec({"id": "rans"})
    data = codec.encode(x)
    r = codec.rate(data)
    assert r["symbol_bits"] + r["side_bits"] == r["total_bits"] == 8 * len(data)
    counts = np.bincount(x)
    h = -(counts[counts > 0] / x.size * np.log2(counts[counts > 0] / x.size)).sum()
    # payload + 32 lane states per chunk stay within 1 % of the order-0 entropy
    assert h <= r["bits_per_element"] < 1.01 * h


def test_per_channel_beats_shared_table_on_channel_structured_data():
    rng = np.random.default_rng(4)
    scales = np.linspace(0.3, 4, 16)
    x = np.clip(np.round(rng.normal(0, scales, (4000, 16))), -8, 7).astype(np.int32)
    shared = get_codec({"id": "rans", "per_channel": False}).encode(x)
    per = get_codec({"id": "rans", "per_channel": True}).encode(x)
    assert len(per) < 0.95 * len(shared)
    assert get_codec({"id": "rans"}).encode(x) == per  # "auto" measures and picks them
    assert np.array_equal(get_codec({"id": "rans", "per_channel": True}).decode(per), x)


def test_more_symbols_than_precision_raises_precision_in_stream():
    x = np.arange(5000, dtype=np.uint16)
    codec = get_codec({"id": "rans", "precision_bits": 8})
    data = codec.encode(x)
    assert ref.parse_container(data)["params"]["precision_bits"] == 13
    assert np.array_equal(codec.decode(data), x)


@pytest.mark.parametrize(
    "bad",
    [
        {"precision_bits": 0},
        {"precision_bits": 17},
        {"chunk_size": 100},
        {"chunk_size": 0},
        {"per_channel": "yes"},
        {"precision_bits": 12.0},
    ],
)
def test_bad_config_raises(bad):
    with pytest.raises(CodecConfigError):
        get_codec({"id": "rans", **bad})


def test_bad_input_raises():
    codec = get_codec({"id": "rans"})
    with pytest.raises(CodecConfigError, match="dtype"):
        codec.encode(np.zeros(3, np.float32))
    with pytest.raises(CodecConfigError, match="spanning at most 65536"):
        codec.encode(np.array([0, 70000], np.int32))
    with pytest.raises(CorruptStreamError):
        codec.decode(get_codec({"id": "rans", "chunk_size": 64}).encode(np.ones(3, np.uint8))[:-1])


def test_stream_of_another_codec_is_refused():
    data = get_codec({"id": "rans"}).encode(np.ones(3, np.uint8))
    with pytest.raises(CorruptStreamError, match="expected a 'huffman' stream"):
        get_codec({"id": "huffman"}).decode(data)


def test_kernel_wrappers_validate():
    x = np.tile(np.arange(10, dtype=np.uint8), 50)
    f = np.array([[4096 - 9] + [1] * 9], dtype=np.int64)
    with pytest.raises(CodecConfigError, match="sum to"):
        cpu.rans_encode(x, 0, f[:, :-1], 12, 64)
    with pytest.raises(CodecConfigError, match="lie in"):
        cpu.rans_encode(x, 1, f, 12, 64)
    with pytest.raises(CodecConfigError, match="multiple of num_lanes=32"):
        cpu.rans_encode(x, 0, f, 12, 50)
    words, nw, states = cpu.rans_encode(x, 0, f, 12, 64)
    with pytest.raises(CodecConfigError, match="words"):
        cpu.rans_decode(words[:-1], nw, states, f, 12, 64, 0, 1, np.empty(500, np.uint8))
    with pytest.raises(CodecConfigError, match=">= 2"):
        cpu.rans_decode(words, nw, states * 0, f, 12, 64, 0, 1, np.empty(500, np.uint8))
    with pytest.raises(CodecConfigError, match="chunks"):
        cpu.rans_decode(words, nw, states, f, 12, 64, 0, 1, np.empty(5000, np.uint8))


@settings(max_examples=40, deadline=None)
@given(
    x=hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.uint16, np.int32]),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40),
        elements=st.integers(0, 255),
    ),
    per_channel=st.booleans(),
    chunk_size=st.sampled_from([32, 64, 4096]),
)
def test_roundtrip_property(x, per_channel, chunk_size):
    codec = get_codec({"id": "rans", "per_channel": per_channel, "chunk_size": chunk_size})
    y = codec.decode(codec.encode(x))
    assert y.dtype == x.dtype and y.shape == x.shape and np.array_equal(y, x)


def test_encoder_refines_the_table_precision_only_where_it_pays():
    """precision_bits is a minimum: wide heavy-tailed alphabets get finer tables, 16 levels not."""
    from kvinfo.analysis import entropy_discrete

    rng = np.random.default_rng(11)
    n = 1 << 20
    heavy = np.clip(np.round(4 * rng.standard_t(2, n)) + 128, 0, 255).astype(np.uint8)
    gauss = np.clip(np.round(rng.normal(7.5, 2.5, n)), 0, 15).astype(np.uint8)
    codec = get_codec({"id": "rans", "chunk_size": 1 << 20})
    for x, want_prec, max_overhead in ((heavy, 15, 0.005), (gauss, 12, 0.005)):
        data = codec.encode(x)
        _, tables, _, _ = codec.parse(data)
        assert tables.precision_bits == want_prec
        assert 8 * len(data) / n <= (1 + max_overhead) * entropy_discrete(x)
        np.testing.assert_array_equal(codec.decode(data), x)
    # below 2**16 symbols the requested precision is kept as it is
    small = codec.encode(heavy[:4096])
    assert codec.parse(small)[1].precision_bits == 12


# -- version 3: channels stored raw ----------------------------------------------------


def _mixed(rng, rows, dtype, noisy=(0, 2), bits=None):
    """Near-uniform channels (``noisy``) beside low-entropy ones; fresh for every seed."""
    bits = bits or 8 * np.dtype(dtype).itemsize
    top = min(1 << bits, 1 << 31)
    cols = []
    for c in range(6):
        if c in noisy:
            cols.append(rng.integers(0, top, rows))
        else:
            cols.append(rng.integers(0, 2 + c, rows) + int(rng.integers(0, 100)))
    return np.stack(cols, 1).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
@pytest.mark.parametrize("shape", [(1200, 6), (40, 6, 6), (100, 3, 6)])
def test_stored_channels_round_trip_and_are_recorded(dtype, shape):
    rng = np.random.default_rng([7, len(shape), np.dtype(dtype).itemsize])
    bits = {np.uint8: 8, np.uint16: 16}.get(dtype, 10)  # (a slow reference decode below)
    x = _mixed(rng, int(np.prod(shape)) // 6, dtype, bits=bits).reshape(shape)
    codec = get_codec({"id": "rans", "store_below": 0.05, "chunk_size": 512})
    data = codec.encode(x)
    params = ref.parse_container(data)["params"]
    # the near-uniform channels of every 6-wide row are stored, the low-entropy ones coded;
    # int32 symbols span at most 16 bits, so coding always beats their 32 raw bits
    stored = 0 if dtype is np.int32 else 2  # of the 6 channels (the last axis)
    assert params["stored_channels"] == stored
    out = codec.decode(data)
    assert out.dtype == x.dtype and out.shape == x.shape and np.array_equal(out, x)
    assert np.array_equal(ref.decode_rans_stream(data), x)
    r = codec.rate(data)
    assert r["symbol_bits"] + r["side_bits"] == r["total_bits"] == 8 * len(data)


def test_stored_channels_1d_and_all_stored():
    rng = np.random.default_rng(11)
    codec = get_codec({"id": "rans", "store_below": 0.05})
    x = rng.integers(0, 256, 5000).astype(np.uint8)  # one channel, near uniform
    data = codec.encode(x)
    assert ref.parse_container(data)["params"]["stored_channels"] == 1
    assert len(data) < x.size + 64
    assert np.array_equal(codec.decode(data), x)
    y = rng.integers(0, 65536, (400, 5)).astype(np.uint16)  # every channel stored
    data = codec.encode(y)
    p = ref.parse_container(data)["params"]
    assert p["stored_channels"] == 5 and p["num_chunks"] == 0
    assert np.array_equal(codec.decode(data), y)
    assert np.array_equal(ref.decode_rans_stream(data), y)


def test_store_below_zero_never_stores():
    rng = np.random.default_rng(12)
    x = _mixed(rng, 4000, np.uint8)
    for sb in (0, 0.0):
        data = get_codec({"id": "rans", "store_below": sb}).encode(x)
        assert ref.parse_container(data)["params"]["stored_channels"] == 0
    assert get_codec({"id": "rans", "store_below": 0}).get_config()["store_below"] == 0.0


@pytest.mark.parametrize("seed", [101, 202, 303])
def test_stored_rate_stays_close_to_the_per_channel_entropy(seed):
    """Fresh sources: coded plus stored channels stay within 0.1 % + 64 bytes of the
    per-channel order-0 entropy, stored channels counted at their raw size."""
    rng = np.random.default_rng(seed)
    x = _mixed(rng, 200_000, np.uint8, noisy=tuple(rng.choice(6, 2, replace=False)))
    data = get_codec({"id": "rans", "store_below": 0.005}).encode(x)
    bound = 0.0
    for c in range(x.shape[1]):
        counts = np.bincount(x[:, c])
        p = counts[counts > 0] / x.shape[0]
        bound += -(p * np.log2(p)).sum() * x.shape[0]
    # + 8 header bytes per table row
    assert bound / 8 <= len(data) <= bound / 8 * 1.001 + 64 + 8 * 6


def test_store_below_never_stores_what_a_pooled_table_codes_well():
    """Small channels of a wide alphabet: own tables would cost more than raw, but the
    table pooled over the channels codes them at about 5 of 8 bits, so none is stored."""
    rng = np.random.default_rng(13)
    x = np.clip(np.round(rng.normal(16, 6, (64, 16))), 0, 31).astype(np.uint8)
    data = get_codec({"id": "rans", "store_below": 0.001}).encode(x)
    assert ref.parse_container(data)["params"]["stored_channels"] == 0
    assert len(data) == len(get_codec({"id": "rans", "store_below": 0}).encode(x))
    forced = get_codec({"id": "rans", "store_below": 0.001, "per_channel": True}).encode(x)
    assert ref.parse_container(forced)["params"]["stored_channels"] > 0  # own tables only


@pytest.mark.parametrize("bad", [-0.1, 1.0, 2, True, "0.1", None])
def test_bad_store_below_raises(bad):
    with pytest.raises(CodecConfigError, match="store_below"):
        get_codec({"id": "rans", "store_below": bad})
