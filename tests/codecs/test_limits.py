"""Bounded decoders: a small stream never makes a coder allocate what it claims.

Issue 12 found a 540-byte ``huffman`` stream asking for 8 GiB and 1.5 KB ``rans`` streams
asking for up to 1 TiB, failing with ``MemoryError``. Every lossless decoder now checks
the claim against the stream (the fewest bits that many symbols need under its model)
and against ``max_output_bytes`` / ``KVINFO_MAX_OUTPUT_BYTES`` before allocating, and
turns an allocation failure into :class:`CorruptStreamError`.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from kvinfo.codecs import CorruptStreamError, get_codec
from kvinfo.codecs import _container as C
from kvinfo.codecs.models import PerChannelTables

L = 1 << 16


def _huffman_single_symbol(n: int, crc: int = 0) -> bytes:
    """A valid single-symbol huffman stream (no payload) claiming ``n`` symbols."""
    cs = 1 << 30
    nchunks = -(-n // cs)
    params = {"table_bits": 0, "num_tables": 1, "chunk_size": cs, "sub_block_size": cs,
              "min_symbol": 9,
              "alphabet_size": 1, "num_chunks": nchunks}
    return C.pack("huffman", (n,), "uint8", params,
                  [("lengths", b"\x00\x00"), ("index", bytes(4 * nchunks)),
                   ("subblocks", bytes(4 * nchunks)), ("payload", b"")], crc)


def test_small_huffman_stream_claiming_8_gib_is_refused_by_the_limit(monkeypatch):
    data = _huffman_single_symbol(8 << 30)
    assert len(data) < 200
    codec = get_codec({"id": "huffman"})
    with pytest.raises(CorruptStreamError, match="decode limit"):
        codec.decode(data, max_output_bytes=1 << 30)
    monkeypatch.setenv("KVINFO_MAX_OUTPUT_BYTES", str(1 << 30))
    with pytest.raises(CorruptStreamError, match="decode limit"):
        codec.decode(data)


def test_an_allocation_that_fails_is_a_corrupt_stream_not_a_memory_error():
    data = _huffman_single_symbol(1 << 47)  # 128 TiB: no machine here allocates it
    with pytest.raises(CorruptStreamError, match="allocate"):
        get_codec({"id": "huffman"}).decode(data, max_output_bytes=1 << 48)


def test_consistent_single_symbol_stream_still_decodes():
    data = _huffman_single_symbol(1000, C.symbols_crc32(np.full(1000, 9, np.uint8)))
    out = get_codec({"id": "huffman"}).decode(data, max_output_bytes=1000)
    assert out.shape == (1000,) and np.all(out == 9)


def _rans_claim(n: int, chunk: int, lanes: int = 1) -> bytes:
    """A rans stream with a 2-symbol table and almost no words claiming ``n`` symbols."""
    t = PerChannelTables.from_counts(np.array([[3, 1]]), 12, 0)
    nchunks = -(-n // chunk)
    index = np.full(nchunks * lanes, L + 5, "<u4").tobytes() + b"\x01" * nchunks
    params = {"precision_bits": 12, "num_lanes": lanes, "chunk_size": chunk, "num_tables": 1,
              "period": 1, "min_symbol": 0, "alphabet_size": 2, "num_chunks": nchunks,
              "stored_channels": 0}
    return C.pack("rans", (n,), "uint8", params,
                  [("tables", t.to_bytes(packed=True)), ("index", index),
                   ("payload", bytes(2 * nchunks))], 0)


@pytest.mark.parametrize("n", [1 << 40, 1 << 33, 10**7])
def test_rans_claim_larger_than_its_words_can_hold_is_refused(n):
    data = _rans_claim(n, 1 << 30 if n > 1 << 30 else 1 << 20)
    assert len(data) < 16_000
    with pytest.raises(CorruptStreamError, match="need at least"):
        get_codec({"id": "rans"}).decode(data, max_output_bytes=1 << 50)


def test_rans_claim_is_refused_before_the_tables_are_built():
    """Many wide per-channel tables in a few bytes: refused before they are allocated."""
    t = PerChannelTables.from_counts(np.eye(1, 65536, 65535, dtype=np.int64), 12, 0)
    rows = t.to_bytes(packed=True)
    period = 4096
    params = {"precision_bits": 12, "num_lanes": 1, "chunk_size": 1 << 20,
              "num_tables": period, "period": period, "min_symbol": 0,
              "alphabet_size": 65536, "num_chunks": 1, "stored_channels": 0}
    data = C.pack("rans", (256, period), "uint16", params,
                  [("tables", rows * period), ("index", struct.pack("<I", L) + b"\x00"),
                   ("payload", b"")], 0)
    with pytest.raises(CorruptStreamError, match="cannot be described"):
        get_codec({"id": "rans"}).decode(data, max_output_bytes=1 << 30)


def test_arith_claim_larger_than_its_bytes_can_hold_is_refused():
    params = {"prob_bits": 28, "symbol_bits": 1, "num_channel_contexts": 1, "prev_bits": 0,
              "adapt_limit": 1022, "chunk_size": 1 << 30, "period": 1, "min_symbol": 0,
              "alphabet_size": 2, "num_chunks": 1024}
    data = C.pack("arith", (1 << 40,), "uint8", params,
                  [("index", np.full(1024, 5, "<u4").tobytes()), ("payload", bytes(5 * 1024))], 0)
    with pytest.raises(CorruptStreamError, match="need at least"):
        get_codec({"id": "arith"}).decode(data, max_output_bytes=1 << 50)


@pytest.mark.parametrize("peer", ["constriction-ans", "constriction-range"])
def test_constriction_stream_with_an_edited_shape_is_refused(peer):
    codec = get_codec({"id": peer})
    good = codec.encode(np.arange(2000, dtype=np.uint8) % 7)
    c = C.unpack(good)
    data = C.pack(peer, (1 << 39,), "uint8", c.params,
                  [(k, bytes(v)) for k, v in c.sections.items()], c.symbols_crc32)
    with pytest.raises(CorruptStreamError, match="need at least"):
        codec.decode(data, max_output_bytes=1 << 50)


@pytest.mark.parametrize("cid", ["rans", "huffman", "arith", "constriction-ans"])
def test_every_decoder_takes_max_output_bytes(cid):
    codec = get_codec({"id": cid})
    x = (np.arange(3000) % 5).astype(np.uint16).reshape(300, 10)
    data = codec.encode(x)
    assert np.array_equal(codec.decode(data, max_output_bytes=x.nbytes), x)
    with pytest.raises(CorruptStreamError, match="decode limit"):
        codec.decode(data, max_output_bytes=x.nbytes - 1)
