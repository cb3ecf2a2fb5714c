"""kvinfo.codecs.models: the entropy models (frequency tables, per-channel tables), apart
from the coders that use them, checked against direct formulas on fresh random counts."""

from __future__ import annotations

import importlib.util
import math
import pathlib

import numpy as np
import pytest

from kvinfo.codecs.models import (
    PerChannelTables,
    decode_uints,
    encode_uints,
    entropy_bits,
    min_precision_bits,
    quantize_counts,
    row_entropy_bits,
)
from kvinfo.errors import CodecConfigError, CorruptStreamError
from kvinfo.kernels import cpu

_spec = importlib.util.spec_from_file_location(
    "kvinfo_ref_coders_models", pathlib.Path(__file__).with_name("reference_coders.py")
)
_ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ref)
reference_quantize_counts = _ref.quantize_counts


@pytest.mark.parametrize("seed", range(3))
def test_row_entropy_bits_is_entropy_bits_of_each_row(seed):
    rng = np.random.default_rng(seed)
    c = rng.integers(0, 50, (9, 33))
    c[2] = 0  # an empty row
    c[3, 1:] = 0  # a single-symbol row
    assert row_entropy_bits(c) == pytest.approx([entropy_bits(r) for r in c], abs=1e-9)
    assert row_entropy_bits(c)[2] == 0.0 and row_entropy_bits(c)[3] == 0.0


def test_entropy_bits_is_the_plug_in_formula():
    assert entropy_bits([5, 5]) == pytest.approx(10.0)
    assert entropy_bits([0, 7]) == 0.0
    assert entropy_bits([]) == 0.0
    c = np.array([1, 2, 3, 0, 10])
    p = c[c > 0] / c.sum()
    assert entropy_bits(c) == pytest.approx(-(c[c > 0] * np.log2(p)).sum())


@pytest.mark.parametrize("n", [1, 2, 3, 255, 256, 257])
def test_min_precision_bits_fits_every_symbol(n):
    b = min_precision_bits(n)
    assert 2**b >= n and (b == 1 or 2 ** (b - 1) < n)


@pytest.mark.parametrize("seed", range(6))
def test_quantize_counts_sums_to_the_precision_and_keeps_every_used_symbol(seed):
    rng = np.random.default_rng(seed)
    a = int(rng.integers(2, 300))
    counts = rng.multinomial(200_000, rng.dirichlet(np.full(a, 0.5))) * (rng.random(a) < 0.7)
    counts[0] += 1
    precision = 15
    f = quantize_counts(counts, precision)
    assert int(f.sum()) == 1 << precision
    assert np.all((f > 0) == (counts > 0))
    # the table costs little over the empirical entropy (KL of the quantized model)
    h = entropy_bits(counts)
    cross = -(counts[counts > 0] * (np.log2(f[counts > 0]) - precision)).sum()
    assert h <= cross + 1e-9
    assert cross - h <= 0.005 * h + 2.0 * int((counts > 0).sum())


def _fresh_counts(rng):
    """Counts of every shape the coders meet: tiny to 4096-symbol alphabets, flat to
    spiky, ties (equal counts), symbols scaled below one unit (diff > 0) and many
    singletons pushed up to 1 (diff < 0)."""
    kind = int(rng.integers(5))
    a = int(rng.choice([2, 3, 16, 256, 257, 4096]))
    if kind == 0:
        c = rng.multinomial(int(rng.integers(1, 10**6)), rng.dirichlet(np.full(a, 0.3)))
    elif kind == 1:  # many equal counts: the tie-break decides
        c = np.full(a, int(rng.integers(1, 50))) * (rng.random(a) < 0.8)
    elif kind == 2:  # one dominant symbol and a tail of singletons
        c = (rng.random(a) < 0.5).astype(np.int64)
        c[int(rng.integers(a))] = int(rng.integers(10**3, 10**8))
    elif kind == 3:  # Zipf-like
        c = (1e7 / np.arange(1, a + 1) ** rng.uniform(0.5, 2.5)).astype(np.int64)
    else:
        c = rng.integers(0, 1000, a) * (rng.random(a) < 0.5)
    c = np.asarray(c, np.int64)
    c[int(rng.integers(a))] += 1
    return c


def test_compiled_quantization_equals_the_heapq_reference_on_fresh_counts():
    rng = np.random.default_rng()  # fresh every run
    for _ in range(150):
        c = _fresh_counts(rng)
        used = int((c > 0).sum())
        prec = int(rng.integers(max(1, math.ceil(math.log2(used))), 17))
        want = reference_quantize_counts(c, prec)
        np.testing.assert_array_equal(quantize_counts(c, prec), want)
        np.testing.assert_array_equal(cpu.quantize_rows(c[None, :], prec)[0], want)


def test_quantize_rows_handles_many_tables_and_unused_rows_like_one_at_a_time():
    rng = np.random.default_rng()
    c = rng.integers(0, 300, (9, 256)) * (rng.random((9, 256)) < 0.4)
    c[3] = 0
    t = PerChannelTables.from_counts(c, 12, 0)
    for r in range(9):
        if r == 3:
            assert t.frequencies[r, 0] == 1 << 12 and t.frequencies[r, 1:].sum() == 0
        else:
            np.testing.assert_array_equal(t.frequencies[r], reference_quantize_counts(c[r], 12))


def test_quantize_counts_refuses_what_it_cannot_build():
    with pytest.raises(CodecConfigError, match="all-zero"):
        quantize_counts(np.zeros(5, np.int64), 4)
    with pytest.raises(CodecConfigError, match="do not fit"):
        quantize_counts(np.ones(17, np.int64), 4)
    with pytest.raises(CodecConfigError, match="non-negative"):
        quantize_counts(np.array([3, -1]), 4)
    with pytest.raises(CodecConfigError, match="do not fit"):
        PerChannelTables.from_counts(np.ones((2, 17), np.int64), 4)


@pytest.mark.parametrize("seed", range(4))
def test_uint_varints_round_trip_with_zero_runs(seed):
    rng = np.random.default_rng(seed)
    v = rng.integers(0, 1 << 20, size=200) * (rng.random(200) < 0.3)
    buf = encode_uints(v)
    out = np.zeros(200, np.int64)
    assert decode_uints(buf, 0, len(buf), out, 1 << 20) == len(buf)
    np.testing.assert_array_equal(out, v)
    with pytest.raises(CorruptStreamError):
        decode_uints(buf[:-1], 0, len(buf) - 1, np.zeros(200, np.int64), 1 << 20)


@pytest.mark.parametrize("packed", [False, True])
def test_per_channel_tables_round_trip_and_cross_entropy(packed):
    rng = np.random.default_rng(7)
    counts = rng.integers(0, 50, size=(4, 16))
    counts[2] = 0  # an unused table
    t = PerChannelTables.from_counts(counts, 12, min_symbol=-8)
    assert t.num_tables == 4 and t.alphabet_size == 16
    back = PerChannelTables.from_bytes(t.to_bytes(packed), 4, 16, 12, -8, packed=packed)
    np.testing.assert_array_equal(back.frequencies, t.frequencies)
    used = counts > 0
    want = -(counts[used] * (np.log2(t.frequencies[used]) - 12)).sum()
    assert t.cross_entropy_bits(counts) == pytest.approx(want)
    missing = np.zeros_like(counts)
    missing[2, 5] = 1
    assert t.cross_entropy_bits(missing) == math.inf


def test_compiled_table_packing_equals_the_numpy_reference_on_fresh_tables():
    rng = np.random.default_rng()  # fresh every run
    for _ in range(60):
        T = int(rng.integers(1, 9))
        A = int(rng.choice([1, 2, 16, 256, 3000]))
        prec = 15 if A > 256 else 12
        c = rng.integers(0, 1000, (T, A)) * (rng.random((T, A)) < rng.random())
        c[rng.integers(T), :] *= int(rng.integers(1, 10**4))
        c[:, int(rng.integers(A))] += 1
        t = PerChannelTables.from_counts(c, prec, 0)
        got = t.to_bytes(packed=True)
        assert got == _ref.pack_frequency_tables(t.frequencies)
        back = PerChannelTables.from_bytes(got, T, A, prec, 0, packed=True)
        np.testing.assert_array_equal(back.frequencies, t.frequencies)
