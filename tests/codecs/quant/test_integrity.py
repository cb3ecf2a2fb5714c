"""Damaged lossy streams: every section checksummed, sizes checked before heavy work
(issue 12, findings 2 and 8)."""

from __future__ import annotations

import struct
import time
import tracemalloc
import zlib

import ml_dtypes
import numpy as np
import pytest

from kvinfo.codecs import get_codec
from kvinfo.codecs.limits import ENV_VAR
from kvinfo.codecs.quant._base import CODED, RAW, SIDE, Section, build_stream, parse_stream
from kvinfo.errors import CorruptStreamError

CONFIGS = [
    {"id": "uniform", "bits": 3, "group_size": 4},
    {"id": "uniform", "bits": 4, "axis": "token", "side_dtype": "float32"},
    {"id": "ecsq", "step": 0.2, "step_mode": "relative"},
    {"id": "turbo", "bits": 2, "num_outliers": 2, "sink_tokens": 1},
    {"id": "lossless", "mantissa_bits": 2},
    {"id": "lossless", "coder": {"id": "huffman"}},
]


def _x(shape=(2, 6, 8), dtype=np.float16, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _recrc(buf: bytearray) -> bytes:
    struct.pack_into("<I", buf, len(buf) - 4, zlib.crc32(bytes(buf[:-4])) & 0xFFFFFFFF)
    return bytes(buf)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c["id"])
def test_any_damage_behind_a_recomputed_outer_crc_is_caught(cfg):
    """Side information, parameter blocks and raw sections have their own checksums now:
    a changed byte anywhere is refused even when the outer CRC is made to match."""
    codec = get_codec(cfg)
    data = codec.encode(_x())
    for i in range(len(data) - 4):
        for flip in (0x01, 0x80):
            bad = bytearray(data)
            bad[i] ^= flip
            with pytest.raises(CorruptStreamError):
                codec.decode(_recrc(bad))


@pytest.mark.parametrize("kind", ["side", "params", "raw"])
def test_section_tamper_names_the_section(kind):
    cfg = {"id": "lossless", "mantissa_bits": 0} if kind == "raw" else {"id": "uniform"}
    codec = get_codec(cfg)
    data = codec.encode(_x())
    p = parse_stream(data)
    if kind == "params":
        at = data.index(p.params) + len(p.params) - 1
        want = "header checksum"
    else:
        sec = next(s for s in p.sections if s.kind == (RAW if kind == "raw" else SIDE))
        at = data.index(sec.data)
        want = "raw payload" if kind == "raw" else "side information"
    bad = bytearray(data)
    bad[at] ^= 0x10
    with pytest.raises(CorruptStreamError, match=want):
        codec.decode(_recrc(bad))


def test_damaged_coded_payload_fails_before_the_symbols_are_decoded(monkeypatch):
    """The issue's case: a uniform stream of a large array, one byte of its coded section
    changed and the checksums a tool knows recomputed (the coder's trailer CRC-32 and the
    outer CRC-32) used to decode the symbols before a late check failed. The section's own
    checksum (not a CRC-32, so not fooled by the recomputed trailer) refuses it first."""
    codec = get_codec({"id": "uniform", "bits": 4})
    x = np.zeros((1, 1 << 20, 2), dtype=np.float32)
    x[0, ::2, 0] = 1.0
    data = codec.encode(x)
    sec = parse_stream(data).sections[2]
    at = data.index(sec.data)
    blob = bytearray(sec.data)
    blob[len(blob) // 2] ^= 0x01
    struct.pack_into("<I", blob, len(blob) - 4, zlib.crc32(bytes(blob[:-4])) & 0xFFFFFFFF)
    bad = bytearray(data)
    bad[at : at + len(blob)] = blob
    bad = _recrc(bad)
    calls = []
    real = type(codec.coder).decode
    monkeypatch.setattr(type(codec.coder), "decode",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(CorruptStreamError, match="section 2 \\(entropy-coded\\)"):
            codec.decode(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert calls == [] and peak < 2 * len(data) + (1 << 20), peak
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c["id"])
def test_max_output_bytes_per_call_and_by_environment(cfg, monkeypatch):
    codec = get_codec(cfg)
    x = _x()
    data = codec.encode(x)
    nbytes = x.size * x.dtype.itemsize
    assert codec.decode(data, max_output_bytes=nbytes).shape == x.shape
    with pytest.raises(CorruptStreamError, match="above the decode limit"):
        codec.decode(data, max_output_bytes=nbytes - 1)
    monkeypatch.setenv(ENV_VAR, str(nbytes - 1))
    with pytest.raises(CorruptStreamError, match="above the decode limit"):
        codec.decode(data)


def test_huge_claim_is_refused_before_allocation():
    """A 100-byte uniform stream claiming 2**39 float32 elements (2 TiB) with side sections
    sized to match: refused by the size check, not by MemoryError."""
    params = struct.pack("<BBBI", 4, 0, 1, 0)
    side = np.zeros(2, np.float16).tobytes()
    blob = get_codec({"id": "rans"}).encode(np.zeros((1, 4, 2), np.uint8))
    data = build_stream(1, np.dtype(np.float32), (1, 1 << 38, 2), params,
                        [Section(SIDE, side), Section(SIDE, side), Section(CODED, blob)])
    assert len(data) < 1024
    with pytest.raises(CorruptStreamError, match="above the decode limit"):
        get_codec({"id": "uniform"}).decode(data)


def test_coded_section_with_another_shape_is_refused_before_decoding(monkeypatch):
    codec = get_codec({"id": "uniform", "bits": 4})
    x = _x((1, 8, 4), np.float32)
    p = parse_stream(codec.encode(x))
    other = codec.coder.encode(np.zeros((1, 800, 4), np.uint8))
    data = build_stream(1, np.dtype(np.float32), (1, 8, 4), p.params,
                        [*p.sections[:2], Section(CODED, other)])
    calls = []
    real = type(codec.coder).decode
    monkeypatch.setattr(type(codec.coder), "decode",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    with pytest.raises(CorruptStreamError, match="claims shape"):
        codec.decode(data)
    assert calls == []


def test_turbo_refuses_a_rotation_too_large_to_build():
    """head_dim 2**20 in one row: a small, otherwise consistent stream whose decode would
    build a 2**20 x 2**20 rotation (8 TiB)."""
    d = 1 << 20
    params = struct.pack("<BBHBBQ", 2, 3, 0, 0, 1, 0)
    blob = get_codec({"id": "rans"}).encode(np.zeros((1, d), np.uint8))
    secs = [Section(SIDE, b""), Section(SIDE, b""), Section(SIDE, b""),
            Section(SIDE, np.ones(1, np.float16).tobytes()), Section(CODED, blob)]
    data = build_stream(3, np.dtype(np.float16), (1, 1, d), params, secs)
    with pytest.raises(CorruptStreamError, match="at most 8192"):
        get_codec({"id": "turbo"}).decode(data)


def test_memory_error_never_escapes(monkeypatch):
    import kvinfo.codecs.quant.uniform as U

    codec = get_codec({"id": "uniform"})
    data = codec.encode(_x())

    def boom(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(U, "uniform_dequantize", boom)
    with pytest.raises(CorruptStreamError, match="not enough memory"):
        codec.decode(data)


def test_version_1_streams_still_decode():
    """A version-1 stream (no section checksums) of every codec still decodes; the golden
    v1 files cover the bytes, this covers the parser on a fresh input."""
    x = _x(dtype=ml_dtypes.bfloat16)
    for cfg in CONFIGS:
        codec = get_codec(cfg)
        v2 = parse_stream(codec.encode(x))
        head = bytearray(codec.encode(x)[: 7 + 8 * len(v2.shape) + 2 + len(v2.params)])
        head[3] = 1
        parts = [bytes(head), bytes([len(v2.sections)])]
        for s in v2.sections:
            parts += [struct.pack("<BI", s.kind, len(s.data)), s.data]
        body = b"".join(parts)
        v1 = body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)
        assert np.array_equal(codec.decode(v1).view(np.uint16), codec.decode(
            codec.encode(x)).view(np.uint16)), cfg
