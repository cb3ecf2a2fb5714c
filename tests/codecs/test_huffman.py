"""Huffman: code lengths, kernels against the slow reference, limits and layout."""

from __future__ import annotations

import importlib.util
import math
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvinfo.codecs import CodecConfigError, CorruptStreamError, get_codec
from kvinfo.codecs.huffman import huffman_code_lengths
from kvinfo.kernels import cpu

_spec = importlib.util.spec_from_file_location(
    "kvinfo_ref_coders_huffman", pathlib.Path(__file__).with_name("reference_coders.py")
)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 10_000), min_size=1, max_size=300), limit=st.integers(9, 16))
def test_lengths_are_a_prefix_code_within_the_limit(counts, limit):
    counts = np.array(counts)
    ln = huffman_code_lengths(counts, limit)
    used = counts > 0
    assert np.all((ln > 0) == used) or used.sum() == 1
    assert ln.max(initial=0) <= limit
    assert sum(2.0 ** -int(v) for v in ln[ln > 0]) <= 1.0
    optimal = np.array(ref.huffman_code_lengths(counts))
    cost, best = float((counts * ln).sum()), float((counts * optimal).sum())
    assert cost >= best
    if optimal.max(initial=0) <= limit:
        assert cost == best


def test_length_limit_costs_little_on_a_heavy_tail():
    counts = np.floor(1e7 / np.arange(1, 257) ** 1.8).astype(np.int64) + 1
    ln = huffman_code_lengths(counts, 12)
    assert ln.max() == 12
    opt = np.array(ref.huffman_code_lengths(counts))
    assert (counts * opt).sum() < (counts * ln).sum() <= 1.01 * (counts * opt).sum()


@pytest.mark.parametrize("sub_block", [1, 16, 64])
def test_kernel_matches_reference_bits(sub_block):
    rng = np.random.default_rng(0)
    idx = rng.choice(9, size=300, p=np.array([40, 20, 10, 10, 5, 5, 5, 3, 2]) / 100).astype(
        np.int32)
    counts = np.bincount(idx, minlength=9)
    lengths = huffman_code_lengths(counts, 12)
    words, nw, sub = cpu.huffman_encode(idx, cpu.canonical_codes(lengths), lengths, 128,
                                        sub_block)
    pos = 0
    for k in range(nw.shape[0]):
        chunk = idx[k * 128 : (k + 1) * 128]
        bits = ref.huffman_encode_bits(chunk.tolist(), lengths.tolist())
        got = "".join(format(int(w), "032b") for w in words[pos : pos + nw[k]])
        assert got == bits + "0" * (len(got) - len(bits)) and len(got) - len(bits) < 32
        assert ref.huffman_decode_bits(got, lengths.tolist(), len(chunk)) == chunk.tolist()
        pos += int(nw[k])
    expected_sub = []
    for k in range(nw.shape[0]):
        chunk = idx[k * 128 : (k + 1) * 128]
        for b in range(0, len(chunk), sub_block):
            expected_sub.append(int(lengths[chunk[:b]].sum()))
    assert sub.tolist() == expected_sub
    out, status = cpu.huffman_decode(words, nw, sub, lengths, int(lengths.max()), 128,
                                     sub_block, idx.size)
    assert status.tolist() == [0] * nw.shape[0] and np.array_equal(out, idx)


def test_rate_within_the_huffman_bound():
    rng = np.random.default_rng(1)
    x = np.clip(np.round(rng.normal(8, 2.5, 100_000)), 0, 15).astype(np.uint8)
    codec = get_codec({"id": "huffman"})
    data = codec.encode(x)
    r = codec.rate(data)
    assert r["symbol_bits"] + r["side_bits"] == r["total_bits"]
    p = np.bincount(x) / x.size
    p = p[p > 0]
    h = float(-(p * np.log2(p)).sum())
    assert h <= r["symbol_bits_per_element"] < h + p.max() + 0.086


def test_single_symbol_costs_no_payload():
    codec = get_codec({"id": "huffman"})
    data = codec.encode(np.full(10_000, -3, np.int32))
    assert codec.rate(data)["symbol_bits"] == 0
    assert np.array_equal(codec.decode(data), np.full(10_000, -3, np.int32))


def test_more_symbols_than_the_limit_raise_the_limit():
    x = np.arange(3000, dtype=np.uint16)
    codec = get_codec({"id": "huffman", "max_code_length": 8})
    data = codec.encode(x)
    assert ref.parse_container(data)["params"]["table_bits"] == 12
    assert np.array_equal(codec.decode(data), x)


@pytest.mark.parametrize(
    "bad",
    [{"max_code_length": 0}, {"max_code_length": 17}, {"chunk_size": 1000},
     {"sub_block_size": 0}],
)
def test_bad_config_raises(bad):
    with pytest.raises(CodecConfigError):
        get_codec({"id": "huffman", **bad})


def test_corrupt_payload_detected_by_kernel_checks_too():
    """Bypass the CRC: a changed payload word must fail a kernel end-of-chunk check."""
    rng = np.random.default_rng(2)
    idx = rng.integers(0, 5, 500).astype(np.int32)
    lengths = huffman_code_lengths(np.bincount(idx), 12)
    words, nw, sub = cpu.huffman_encode(idx, cpu.canonical_codes(lengths), lengths, 512, 64)
    caught = 0
    for i in range(words.shape[0]):
        w = words.copy()
        w[i] ^= np.uint32(1 << 7)
        out, status = cpu.huffman_decode(w, nw, sub, lengths, int(lengths.max()), 512, 64, 500)
        caught += bool(status.any()) or not np.array_equal(out, idx)
    assert caught == words.shape[0]
    assert math.isfinite(float(caught))


def test_truncated_stream_raises():
    codec = get_codec({"id": "huffman"})
    data = codec.encode(np.arange(100, dtype=np.uint8))
    with pytest.raises(CorruptStreamError):
        codec.decode(data[:50])
