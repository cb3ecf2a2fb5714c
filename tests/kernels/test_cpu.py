"""kvinfo.kernels.cpu: each validating wrapper against a slow, obviously correct reference.

The full coders (rANS, Huffman, arithmetic) are checked bit for bit against
``tests/codecs/reference_coders.py`` in ``tests/codecs``; this module covers the kernels'
building blocks on fresh random inputs, and the wrappers' refusals.
"""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

from kvinfo.errors import CodecConfigError
from kvinfo.kernels import cpu
from kvinfo.kernels.simd import ENCODE_ROOM_WORDS

_spec = importlib.util.spec_from_file_location(
    "kvinfo_ref_coders_kernels",
    pathlib.Path(__file__).resolve().parents[1] / "codecs" / "reference_coders.py",
)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("per_channel", [False, True])
def test_histogram_matches_bincount(seed, per_channel):
    rng = np.random.default_rng(seed)
    period = int(rng.integers(1, 9))
    a = int(rng.integers(1, 300))
    lo = int(rng.integers(-50, 50))
    x = (lo + rng.integers(0, a, size=period * int(rng.integers(1, 500)))).astype(np.int32)
    got = cpu.histogram(x, lo, a, period=period, per_channel=per_channel)
    if per_channel:
        want = np.stack([np.bincount(x[c::period] - lo, minlength=a) for c in range(period)])
    else:
        want = np.bincount(x - lo, minlength=a)[None, :]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("per_channel", [False, True])
def test_byte_histogram_eight_at_a_time_matches_bincount(seed, per_channel):
    # uint8 inputs of 4096+ symbols take the eight-per-load kernel (periods dividing 8),
    # at any start offset (unaligned head and tail bytes); other periods the row kernel
    rng = np.random.default_rng(100 + seed)
    period = int(rng.choice([1, 2, 4, 8, 3, 16, 64]))
    n = int(rng.integers(4096, 50000)) // period * period
    off = int(rng.integers(0, 8))
    a = int(rng.integers(1, 257))
    lo = int(rng.integers(0, 257 - a))
    x = np.empty(n + off, np.uint8)[off:]
    x[:] = lo + rng.integers(0, a, n)
    got = cpu.histogram(x, lo, a, period=period, per_channel=per_channel)
    if per_channel:
        want = np.stack([np.bincount(x[c::period].astype(int) - lo, minlength=a)
                         for c in range(period)])
    else:
        want = np.bincount(x.astype(int) - lo, minlength=a)[None, :]
    np.testing.assert_array_equal(got, want)
    # a symbol outside the range is refused on every path
    x[int(rng.integers(0, n))] = lo + a if lo + a < 256 else lo - 1 if lo else 255
    if not (lo == 0 and a == 256):
        with pytest.raises(CodecConfigError):
            cpu.histogram(x, lo, a, period=period, per_channel=per_channel)


def test_histogram_refuses_symbols_out_of_range():
    with pytest.raises(CodecConfigError):
        cpu.histogram(np.array([0, 5], np.int32), 0, 4)
    with pytest.raises(CodecConfigError):
        cpu.histogram(np.array([-1, 2] * 40000, np.int32), 0, 4, 2, per_channel=True)


@pytest.mark.parametrize("seed", range(4))
def test_rans_decode_table_maps_every_slot_to_its_symbol(seed):
    rng = np.random.default_rng(seed)
    precision = 12
    a = int(rng.integers(2, 40))
    f = np.maximum(rng.multinomial((1 << precision) - a, rng.dirichlet(np.ones(a))), 0) + 1
    freqs = f[None, :].astype(np.int64)
    entries, symbols = cpu.rans_decode_table(freqs, precision, min_symbol=-3, dtype=np.int32)
    cum = np.concatenate(([0], np.cumsum(f)))
    for slot in rng.integers(0, 1 << precision, size=200):
        entry = int(entries[0, slot])
        sym = int(symbols[0, slot]) + 3
        assert cum[sym] <= slot < cum[sym + 1]
        assert (entry & 0xFFFF) + 1 == f[sym]
        assert entry >> 16 == slot - cum[sym]


@pytest.mark.parametrize("seed", range(4))
def test_canonical_codes_match_the_reference(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 1000, size=int(rng.integers(2, 60)))
    counts[rng.integers(0, counts.size)] += 1
    lengths = np.array(ref.huffman_code_lengths(counts.tolist()))
    codes = cpu.canonical_codes(lengths)
    want = ref.canonical_codes(lengths.tolist())
    for s, ln in enumerate(lengths):
        if ln:
            assert (int(codes[s]), int(ln)) == want[s]


def test_huffman_decode_table_refuses_kraft_violation():
    with pytest.raises(CodecConfigError, match="Kraft"):
        cpu.huffman_decode_table(np.array([1, 1, 1]), 4)


@pytest.mark.parametrize("seed", range(4))
def test_packed_frequency_tables_round_trip_against_the_reference(seed):
    from kvinfo.codecs.models import pack_frequency_tables

    rng = np.random.default_rng(seed)
    num_tables, a = int(rng.integers(1, 5)), int(rng.integers(1, 300))
    freqs = rng.integers(0, 5000, size=(num_tables, a)) * (rng.random((num_tables, a)) < 0.6)
    freqs[:, 0] += 1  # every row uses at least one symbol
    buf = pack_frequency_tables(freqs)
    got, bits = cpu.unpack_frequency_tables(np.frombuffer(buf, np.uint8), num_tables, a, 1 << 16)
    np.testing.assert_array_equal(got, freqs)
    assert (bits + 7) // 8 == len(buf)
    np.testing.assert_array_equal(np.array(ref.read_packed_tables(buf, num_tables, a)), freqs)


def test_unpack_frequency_tables_refuses_a_truncated_table():
    from kvinfo.codecs.models import pack_frequency_tables

    buf = pack_frequency_tables(np.arange(1, 200)[None, :])
    with pytest.raises(CodecConfigError):
        cpu.unpack_frequency_tables(np.frombuffer(buf[: len(buf) // 2], np.uint8), 1, 199, 1 << 16)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_split_and_merge_channels_match_boolean_indexing(seed, dtype):
    """The one-pass channel split of the rANS stored channels against numpy's boolean
    column selection (the obvious reference), and the merge as its exact inverse."""
    rng = np.random.default_rng([seed, np.dtype(dtype).itemsize])
    rows, period = int(rng.integers(1, 3000)), int(rng.integers(1, 70))
    info = np.iinfo(dtype)
    grid = rng.integers(max(info.min, -(1 << 20)), min(info.max, 1 << 20), (rows, period),
                        endpoint=True).astype(dtype)
    mask = rng.random(period) < rng.random()
    raw = np.empty((rows, int(mask.sum())), dtype)
    coded = cpu.split_channels(grid, mask, raw)
    assert np.array_equal(raw, grid[:, mask]) and np.array_equal(coded, grid[:, ~mask])
    back = np.empty_like(grid)
    cpu.merge_channels(coded, raw, mask, back)
    assert np.array_equal(back, grid)


@pytest.mark.parametrize("period", [4, 64])
def test_merge_channels_reads_read_only_sources(period):
    """The decoder merges from read-only views of the stream (both the strided path and the
    row kernel)."""
    rng = np.random.default_rng(period)
    grid = rng.integers(0, 256, (300, period), dtype=np.uint8)
    mask = np.arange(period) % 3 == 0
    raw = np.empty((300, int(mask.sum())), np.uint8)
    coded = cpu.split_channels(grid, mask, raw)
    raw.flags.writeable = coded.flags.writeable = False
    back = np.empty_like(grid)
    cpu.merge_channels(coded, raw, mask, back)
    assert np.array_equal(back, grid)


def test_split_channels_refuses_bad_shapes():
    grid = np.zeros((4, 3), np.uint8)
    with pytest.raises(CodecConfigError, match="mask"):
        cpu.split_channels(grid, np.array([True, False]), np.empty((4, 1), np.uint8))
    with pytest.raises(CodecConfigError, match="raw"):
        cpu.split_channels(grid, np.array([True, False, True]), np.empty((4, 1), np.uint8))
    with pytest.raises(CodecConfigError, match="coded"):
        cpu.merge_channels(np.empty((4, 2), np.uint8), np.empty((4, 2), np.uint8),
                           np.array([True, False, True]), grid)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("lanes", [1, 2, 4])
@pytest.mark.parametrize("rare", [True, False])
def test_rans_sparse_decoder_round_trips_and_catches_damage(seed, lanes, rare):
    # streams of 1, 2 or 4 lanes take the register decode loop, low-entropy ones (at most
    # one word read per 4 * lanes symbols) with rare renormalisation; it must equal the
    # encoder's input, across chunk tails, and damage to the words or the final states
    # must show in the status (or, at worst, in the output, which the container CRC then
    # catches)
    from kvinfo.codecs.models import quantize_counts

    rng = np.random.default_rng(200 + seed)
    n = int(rng.integers(20_000, 120_000))
    if rare:
        x = (rng.random(n) < rng.uniform(0.002, 0.02)).astype(np.uint8) * rng.integers(
            1, 3, n).astype(np.uint8)
    else:  # about 6 bits per symbol
        x = rng.integers(0, 64, n).astype(np.uint8)
    counts = np.bincount(x, minlength=3).astype(np.int64)
    freq = quantize_counts(counts, 12).reshape(1, -1).astype(np.int64)
    chunk = lanes * int(rng.integers(n // (3 * lanes), n // lanes + 1))
    words, nw, st = cpu.rans_encode(x, 0, freq, 12, chunk, 1, num_lanes=lanes)
    # the decoder's rare-renormalisation criterion holds, or (register loop with a
    # branch-free renormalisation at every step) does not
    assert (4 * lanes * words.size <= n) == rare
    out = np.empty(n, np.uint8)
    assert not cpu.rans_decode(words, nw, st, freq, 12, chunk, 0, 1, out).any()
    np.testing.assert_array_equal(out, x)
    for _ in range(20):
        w2, st2 = words.copy(), st.copy()
        if rng.random() < 0.5 and w2.size:
            w2[rng.integers(0, w2.size)] ^= np.uint16(1 << int(rng.integers(0, 16)))
        else:
            st2[rng.integers(0, st2.shape[0]), rng.integers(0, lanes)] ^= np.uint32(
                1 << int(rng.integers(0, 16)))
        bad = cpu.rans_decode(w2, nw, st2, freq, 12, chunk, 0, 1, out).any()
        assert bad or not np.array_equal(out, x) or (
            np.array_equal(w2, words) and np.array_equal(st2, st))


@pytest.mark.parametrize("seed", range(6))
def test_rans_sparse_encoder_writes_the_general_loops_stream(seed):
    # the encoder's register loop (one table, 1, 2 or 4 lanes; renormalisation tested per
    # step or branch-free at every step) must write
    # exactly the words and final states of the general loop, and refuse the same chunks
    from kvinfo.codecs.models import quantize_counts

    rng = np.random.default_rng(300 + seed)
    for _ in range(20):
        k = int(rng.choice([1, 2, 4]))
        n = int(rng.integers(1, 40000))
        x = (rng.random(n) < float(rng.choice([0.001, 0.01, 0.1, 0.4]))).astype(
            np.uint8) * rng.integers(1, 4, n).astype(np.uint8)
        if rng.random() < 0.2:
            x[rng.integers(0, n)] = 7  # outside the table: the chunk is refused
        counts = np.bincount(x[x < 4], minlength=4).astype(np.int64)
        freq = quantize_counts(np.maximum(counts, 0) if counts.sum() else np.ones(4, np.int64),
                               12).reshape(1, -1).astype(np.int64)
        chunk = k * int(rng.integers(1, n // k + 2))
        f = freq.astype(np.uint64).reshape(-1)
        tab = np.stack([f << np.uint64(20), np.concatenate([[0], np.cumsum(f)[:-1]]).astype(
            np.uint64), np.uint64(4096) - f], axis=1)
        with np.errstate(divide="ignore"):
            rcp = 1.0 / freq.reshape(-1)
        res = []
        for sparse, rare in ((False, False), (True, False), (True, True)):
            nch = -(-n // chunk)
            scratch = np.zeros(n + nch * (1 + ENCODE_ROOM_WORDS), np.uint16)
            ws, nw = np.zeros(nch, np.uint64), np.zeros(nch, np.uint64)
            st, status = np.zeros((nch, k), np.uint32), np.zeros(nch, np.int64)
            cpu._rans_encode_kernel(x, np.int64(0), np.int64(1), np.int64(4), tab, rcp,
                                    np.zeros((0, 0), np.uint64), np.int64(chunk), np.int64(k),
                                    sparse, rare, scratch, ws, nw, st, status, False,
                                    np.zeros(1, np.uint64), np.zeros(1, np.uint64),
                                    np.int64(1), np.int64(12))
            words = [scratch[int(a):int(a + b)].copy() for a, b in zip(ws, nw, strict=True)]
            res.append((status, words, st))
        s0, w0, t0 = res[0]
        for s1, w1, t1 in res[1:]:
            np.testing.assert_array_equal(s0, s1)
            for i in np.flatnonzero(s0 == 0):
                np.testing.assert_array_equal(w0[i], w1[i])
                np.testing.assert_array_equal(t0[i], t1[i])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_wide_per_channel_histogram_flushes_its_16_bit_counters(dtype):
    # 40 channels of 256 symbols take the uint16 sub-counter kernel; 66,000 rows of one
    # repeated value per channel overflow a counter unless it is flushed every 65,535 rows
    rng = np.random.default_rng(7)
    rows, period = 66_000, 40
    x = np.tile(rng.integers(0, 256, period), rows).astype(dtype)
    x[rng.integers(0, x.size, 1000)] = 255
    got = cpu.histogram(x, 0, 256, period, per_channel=True)
    want = np.stack([np.bincount(x[c::period].astype(np.int64), minlength=256)
                     for c in range(period)])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("period", [3, 5, 6, 7, 12, 100])
def test_rans_encoder_lane_offset_table_matches_the_channel_counter(period):
    # periods that neither divide nor are divided by the lanes code with a table of lane
    # offsets per first channel of a step; the words must be the channel counter's
    rng = np.random.default_rng(period)
    a = 16
    rows = int(rng.integers(50, 3000))
    x = np.clip(np.round(rng.laplace(0, rng.uniform(0.5, 4, period), (rows, period))) + 8,
                0, a - 1).astype(np.uint8).reshape(-1)
    counts = np.stack([np.bincount(x[c::period], minlength=a) for c in range(period)])
    freq = cpu.quantize_rows(counts.astype(np.int64), 12)
    f = freq.astype(np.uint64).reshape(-1)
    cum = (np.cumsum(freq, axis=1) - freq).astype(np.uint64).reshape(-1)
    tab = np.stack([f << np.uint64(20), cum, np.uint64(4096) - f], axis=1)
    with np.errstate(divide="ignore"):
        rcp = 1.0 / freq.reshape(-1)
    n = x.size
    for k in (16, 32):
        chunk = k * int(rng.integers(1, n // k + 2))
        ch = (np.arange(period)[:, None] + np.arange(k)[None, :]) % period
        res = []
        for loff in (np.zeros((0, 0), np.uint64), (ch * a).astype(np.uint64)):
            nch = -(-n // chunk)
            scratch = np.zeros(n + nch * (1 + ENCODE_ROOM_WORDS), np.uint16)
            ws, nw = np.zeros(nch, np.uint64), np.zeros(nch, np.uint64)
            st, status = np.zeros((nch, k), np.uint32), np.zeros(nch, np.int64)
            cpu._rans_encode_kernel(x, np.int64(0), np.int64(period), np.int64(a), tab, rcp,
                                    loff, np.int64(chunk), np.int64(k), False, False,
                                    scratch, ws, nw, st, status, False,
                                    np.zeros(1, np.uint64), np.zeros(1, np.uint64),
                                    np.int64(1), np.int64(12))
            assert not status.any()
            res.append((np.concatenate([scratch[int(b):int(b + c)]
                                        for b, c in zip(ws, nw, strict=True)]), st))
        np.testing.assert_array_equal(res[0][0], res[1][0])
        np.testing.assert_array_equal(res[0][1], res[1][1])
        out = np.empty(n, np.uint8)
        assert not cpu.rans_decode(res[1][0], nw.astype(np.uint32), res[1][1], freq, 12,
                                   chunk, 0, period, out).any()
        np.testing.assert_array_equal(out, x)


def _scalar_and_vector_decodes(words, nw, st, freq, prec, chunk, lo, period, n, dtype):
    outs = []
    for simd in (False, True):
        out = np.full(n, 0, dtype)
        status = cpu.rans_decode(words, nw, st, freq, prec, chunk, lo, period, out, simd=simd)
        outs.append((out, status))
    return outs


def _check_vector_against_scalar(rng, sym, lo, freq, prec, chunk, period, lanes, damages):
    """Encode ``sym``; both decoders must return it with a clean status, and on
    ``damages`` copies with one word, final state or word count damaged they must agree
    on every symbol and status."""
    n, dtype = sym.size, sym.dtype
    words, nw, st = cpu.rans_encode(sym, lo, freq, prec, chunk, period, num_lanes=lanes)
    (o0, s0), (o1, s1) = _scalar_and_vector_decodes(words, nw, st, freq, prec, chunk, lo,
                                                    period, n, dtype)
    np.testing.assert_array_equal(o0, sym)
    np.testing.assert_array_equal(o1, sym)
    assert not s0.any() and not s1.any()
    for _ in range(damages):
        w2, st2, nw2 = words.copy(), st.copy(), nw.copy()
        r = rng.random()
        if r < 0.5 and w2.size:
            w2[rng.integers(0, w2.size)] ^= np.uint16(1 << int(rng.integers(0, 16)))
        elif r < 0.8:
            st2[rng.integers(0, st2.shape[0]), rng.integers(0, lanes)] ^= np.uint32(
                1 << int(rng.integers(0, 16)))
        elif nw2.size > 1 and nw2[0] > 0:  # words moved from one chunk to the next
            nw2[0] -= 1
            nw2[1] += 1
        (o0, s0), (o1, s1) = _scalar_and_vector_decodes(w2, nw2, st2, freq, prec, chunk, lo,
                                                        period, n, dtype)
        np.testing.assert_array_equal(s0, s1)
        np.testing.assert_array_equal(o0, o1)


def _random_coding_case(rng, periods, precisions, num_symbols):
    """A random stream for the vector-vs-scalar tests: ``(lanes, dtype, alphabet, period
    (1 with one table), number of tables, precision, channel of each symbol, symbol indices,
    min_symbol, frequencies)``; ``periods(lanes)`` and ``num_symbols(lanes, period)`` draw."""
    from kvinfo.codecs.models import quantize_counts

    lanes = int(rng.choice([16, 32]))
    dtype = rng.choice([np.uint8, np.uint16, np.int32])
    alphabet = int(rng.choice([2, 16, 200, 700 if dtype != np.uint8 else 256]))
    period = int(rng.choice(periods(lanes)))
    tables = 1 if rng.random() < 0.4 else period
    prec = int(rng.choice(precisions))
    prec = max(prec, int(np.ceil(np.log2(alphabet))) + 1)
    n = num_symbols(lanes, period)
    ch = np.arange(n) % tables
    scale = rng.uniform(0.5, 0.05 * alphabet + 1, tables)
    x = np.minimum(np.abs(rng.laplace(0, scale[ch])), alphabet - 1).astype(np.int64)
    lo = int(rng.integers(-100, 100)) if dtype == np.int32 else 0
    counts = np.stack([np.bincount(x[ch == t], minlength=alphabet) for t in range(tables)])
    freq = np.stack([quantize_counts(c + (c.sum() == 0), prec) for c in counts]).astype(
        np.int64)
    return (lanes, dtype, alphabet, period if tables > 1 else 1, tables, prec, ch, x, lo,
            freq)


@pytest.mark.parametrize("seed", range(6))
def test_rans_vector_decoder_equals_the_scalar_loops_and_catches_damage(seed):
    # the 16-lane vector steps (kvinfo.kernels.simd: gathers and one expanding word load
    # per 16 lanes) must give the scalar loops' symbols and status on every stream: 16 or
    # 32 lanes, one table (direct or, for a large alphabet, indirect) or one per channel,
    # every symbol dtype, chunk tails, and damaged words, states and word counts; they are
    # generic LLVM intrinsics, so this holds on hosts without AVX-512 too

    rng = np.random.default_rng(400 + seed)

    def size(lanes, period):
        rows = int(rng.integers(1, 3000 // period + 2)) * lanes
        return rows * period // lanes * lanes + int(rng.integers(0, lanes))

    for _ in range(12):
        lanes, dtype, _, per, _, prec, _, x, lo, freq = _random_coding_case(
            rng, lambda k: [1, k, 2 * k, 3 * k], [10, 12, 14, 16], size)
        n = x.size
        sym = (x + lo).astype(dtype)
        chunk = lanes * int(rng.integers(max(1, n // (3 * lanes)), n // lanes + 2))
        _check_vector_against_scalar(rng, sym, lo, freq, prec, chunk, per, lanes, 4)


def test_cpu_kernels_record_the_vector_steps_source():
    # Numba's cache keys the kernels of cpu.py on cpu.py's text: the vector steps they
    # inline from simd.py must be recorded there by hash, or an edit to simd.py alone
    # would leave stale compiled kernels in every cache
    import hashlib

    from kvinfo.kernels import simd

    text = pathlib.Path(simd.__file__).read_bytes()
    assert hashlib.sha256(text).hexdigest() == cpu.SIMD_SOURCE_SHA256, (
        "kvinfo/kernels/simd.py changed: set cpu.SIMD_SOURCE_SHA256 to its sha256")


@pytest.mark.parametrize("seed", range(4))
def test_rans_binary_vector_loop_equals_the_register_loop_and_catches_damage(seed):
    # 4 lanes coding two symbols take the vector loop of kvinfo.kernels.simd (the lane
    # states in one vector, the symbol from a compare): it must give the register loop's
    # symbols and status on every stream, sparse (rare renormalisation) or not, every
    # symbol dtype and precision (1 bit included), chunk tails, and damaged words, states
    # and word counts
    from kvinfo.codecs.models import quantize_counts

    rng = np.random.default_rng(600 + seed)
    for _ in range(16):
        n = int(rng.integers(1, 60_000))
        p = float(rng.choice([0.0005, 0.005, 0.02, 0.2, 0.5]))
        x = (rng.random(n) < p).astype(np.int64)
        dtype = rng.choice([np.uint8, np.uint16, np.int32])
        lo = int(rng.integers(-100, 100)) if dtype == np.int32 else int(rng.integers(0, 200))
        prec = int(rng.choice([1, 8, 12, 15, 16]))
        counts = np.bincount(x, minlength=2)
        freq = quantize_counts(counts + (counts == 0), prec).reshape(1, -1).astype(np.int64)
        sym = (x + lo).astype(dtype)
        chunk = 4 * int(rng.integers(max(1, n // 12), n // 4 + 2))
        _check_vector_against_scalar(rng, sym, lo, freq, prec, chunk, 1, 4, 6)


@pytest.mark.parametrize("seed", range(6))
def test_rans_vector_encoder_writes_the_scalar_loops_stream(seed):
    # the encoder's 16-lane vector steps (gathers, the emitted words compressed in a
    # register and stored at full width) must write
    # exactly the scalar loops' words and final states: 16 or 32 lanes, one table or one
    # per channel over periods that are multiples, divisors or neither of the lane count,
    # every symbol dtype, chunk tails; and refuse the same inputs (a symbol outside the
    # alphabet or of frequency 0)

    rng = np.random.default_rng(500 + seed)
    for _ in range(12):
        lanes, dtype, alphabet, per, tables, prec, ch, x, lo, freq = _random_coding_case(
            rng, lambda k: [1, 3, 4, k, 2 * k, 100, 256], [12, 14, 16],
            lambda k, p: int(rng.integers(1, 40_000)))
        n = x.size
        r = rng.random()
        if r < 0.15:
            x[rng.integers(0, n)] = alphabet + 1  # outside the alphabet
        elif r < 0.3:
            t0 = int(rng.integers(0, tables))  # a symbol whose frequency is 0
            z = np.flatnonzero(freq[t0] == 0)
            idx = np.flatnonzero(ch == t0)
            if z.size and idx.size:
                x[idx[rng.integers(0, idx.size)]] = z[0]
        sym = (x + lo).astype(dtype)
        chunk = lanes * int(rng.integers(1, n // lanes + 2))
        res = []
        for simd in (False, True):
            try:
                res.append(cpu.rans_encode(sym, lo, freq, prec, chunk, per, num_lanes=lanes,
                                           simd=simd))
            except CodecConfigError as e:
                res.append(type(e))
        if isinstance(res[0], type):
            assert res[1] is res[0]
            continue
        for a, b in zip(res[0], res[1], strict=True):
            np.testing.assert_array_equal(a, b)
        out = np.empty(n, sym.dtype)
        assert not cpu.rans_decode(*res[1], freq, prec, chunk, lo, per, out).any()
        np.testing.assert_array_equal(out, sym)
