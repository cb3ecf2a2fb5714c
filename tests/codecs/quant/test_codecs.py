"""The lossy KV codecs (uniform, ecsq, turbo) and the exact float codec (lossless) as codecs:
round trips with every coder, honest rate accounting, determinism, stability, bad input."""

from __future__ import annotations

import hashlib
import json
import math
import struct
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from kvinfo.codecs import Codec, get_codec
from kvinfo.codecs.quant._base import parse_stream
from kvinfo.codecs.quant.lloyd_max import lloyd_max_sphere
from kvinfo.codecs.quant.uniform import uniform_quantize
from kvinfo.errors import CodecConfigError, CorruptStreamError, UnknownCodecError

CODERS = ["rans", "huffman", "arith", "constriction-ans", "constriction-range"]
LOSSY = [
    {"id": "uniform", "bits": 2, "axis": "channel", "group_size": 16},
    {"id": "uniform", "bits": 8, "axis": "token"},
    {"id": "ecsq", "step": 0.25},
    {"id": "ecsq", "step": 0.05, "step_mode": "relative"},
    {"id": "turbo", "bits": 3},
    {"id": "turbo", "bits": 2, "num_outliers": 4, "sink_tokens": 2, "rotation": "orthogonal"},
]
DTYPES = [np.float16, ml_dtypes.bfloat16, np.float32]
# magic, version, tag, dtype, ndim, P, S, header CRC, outer CRC (container version 2)
HEADER_FIXED = 3 + 1 + 1 + 1 + 1 + 2 + 1 + 4 + 4
SECTION_HEADER = 1 + 4 + 4  # kind, length, section CRC


def _data(shape=(2, 40, 16), seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * rng.uniform(0.2, 3.0, size=shape[-1])
    x[..., 1] += 4.0  # an offset channel, as keys have
    return x.astype(dtype)


def _f64(a):
    return np.asarray(a).astype(np.float64)


def _with_coder(cfg, coder):
    return {**cfg, "coder": {"id": coder}}


# -- round trips with every coder ------------------------------------------------------------
@pytest.mark.parametrize("coder", CODERS)
@pytest.mark.parametrize("cfg", LOSSY + [{"id": "lossless"}], ids=lambda c: json.dumps(c))
def test_round_trip_every_coder_and_dtype(cfg, coder):
    codec = get_codec(_with_coder(cfg, coder))
    for dtype in DTYPES:
        x = _data(dtype=dtype)
        data = codec.encode(x)
        y = codec.decode(data)
        assert y.shape == x.shape and y.dtype == x.dtype
        if cfg["id"] == "lossless":
            assert np.array_equal(y.view(np.uint8), x.view(np.uint8))
        else:
            rel = np.mean((_f64(x) - _f64(y)) ** 2) / np.mean(_f64(x) ** 2)
            assert rel < 0.2
        r = codec.rate(data)
        assert r["total_bits"] == 8 * len(data)
        assert r["symbol_bits"] + r["side_bits"] == r["total_bits"]
        assert r["symbol_bits"] > 0 and r["side_bits"] > 0
        assert r["num_elements"] == x.size
        # decoding with a codec rebuilt from the config (through JSON) gives the same array
        again = get_codec(json.loads(json.dumps(codec.get_config())))
        assert again == codec
        assert np.array_equal(again.decode(data).view(np.uint8), y.view(np.uint8))


@pytest.mark.parametrize("shape", [(7, 16), (3, 2, 33, 8), (1, 1, 2)])
def test_shapes(shape):
    for cfg in LOSSY[:5] + [{"id": "lossless"}]:
        if cfg["id"] == "turbo" and shape[-1] < 2:
            continue
        codec = get_codec(cfg)
        x = _data(shape)
        y = codec.decode(codec.encode(x))
        assert y.shape == x.shape


def test_distortion_ordering_with_bits():
    x = _data((2, 256, 32))
    mse = {}
    for bits in (2, 3, 4, 8):
        codec = get_codec({"id": "uniform", "bits": bits, "group_size": 64})
        mse[bits] = np.mean((_f64(x) - _f64(codec.decode(codec.encode(x)))) ** 2)
    assert mse[2] > 3 * mse[3] > 9 * mse[4] > 9 * 64 * mse[8] > 0


# -- rates: every bit accounted for ------------------------------------------------------------
@pytest.mark.parametrize("coder", ["rans", "huffman"])
@pytest.mark.parametrize("axis,group", [("channel", 16), ("token", None), ("token", 5)])
def test_uniform_side_information_counted_exactly(coder, axis, group):
    x = _data((3, 40, 16), dtype=np.float16)
    codec = get_codec(
        {"id": "uniform", "bits": 3, "axis": axis, "group_size": group, "coder": {"id": coder}}
    )
    data = codec.encode(x)
    q, zero, step = uniform_quantize(_f64(x), 3, axis, group, "float16")
    blob = codec.coder.encode(q)
    header = HEADER_FIXED + 8 * x.ndim + struct.calcsize("<BBBI") + 3 * SECTION_HEADER
    scales = zero.nbytes + step.nbytes
    assert zero.size == 3 * 16 * math.ceil(40 / group) if axis == "channel" else True
    assert len(data) == header + scales + len(blob)
    r = codec.rate(data)
    coder_symbol_bits = codec.coder.rate(blob)["symbol_bits"]
    assert r["symbol_bits"] == coder_symbol_bits
    assert r["side_bits"] == 8 * (header + scales) + (8 * len(blob) - coder_symbol_bits)
    assert r["bits_per_element"] == 8 * len(data) / x.size


def test_turbo_side_information_counted_exactly():
    b, t, d, k, sinks = 2, 30, 16, 4, 3
    x = _data((b, t, d), dtype=ml_dtypes.bfloat16)
    codec = get_codec({"id": "turbo", "bits": 2, "num_outliers": k, "sink_tokens": sinks})
    data = codec.encode(x)
    p = parse_stream(data)
    rows = b * (t - sinks)
    sizes = [len(s.data) for s in p.sections]
    assert sizes[0] == 4 * b * sinks  # row indices
    assert sizes[1] == 2 * b * sinks * d  # verbatim bf16 rows
    assert sizes[2] == 2 * b * k  # outlier channel indices
    assert sizes[3] == sizes[5] == 2 * rows  # float16 norms
    header = HEADER_FIXED + 8 * 3 + struct.calcsize("<BBHBBQ") + 7 * SECTION_HEADER
    assert len(data) == header + sum(sizes)
    coded = [p.sections[4].data, p.sections[6].data]
    sym = sum(codec.coder.rate(c)["symbol_bits"] for c in coded)
    r = codec.rate(data)
    assert r["symbol_bits"] == sym
    assert r["side_bits"] == 8 * len(data) - sym


def test_lossless_rate_counts_literal_bits_as_symbols():
    x = _data((4, 64, 32), dtype=np.float32)
    for h in (0, 3, 7):
        codec = get_codec({"id": "lossless", "mantissa_bits": h})
        data = codec.encode(x)
        p = parse_stream(data)
        literal = x.size * (23 - h)
        assert len(p.sections[1].data) == (literal + 7) // 8
        r = codec.rate(data)
        assert r["symbol_bits"] == codec.coder.rate(p.sections[0].data)["symbol_bits"] + literal


def test_rates_track_entropy():
    """The coded symbol rate of ecsq is within 2 % of the empirical entropy of its indices."""
    x = np.random.default_rng(0).standard_normal((4, 1024, 64)).astype(np.float32)
    codec = get_codec({"id": "ecsq", "step": 0.1})
    r = codec.rate(codec.encode(x))
    k = np.rint(_f64(x) / 0.1)
    _, counts = np.unique(k, return_counts=True)
    p = counts / counts.sum()
    h = float(-(p * np.log2(p)).sum())
    assert abs(r["symbol_bits_per_element"] / h - 1) < 0.02
    assert r["side_bits_per_element"] < 0.05


# -- determinism and stability -----------------------------------------------------------------
_SUBPROCESS = """
import hashlib, json, sys
import numpy as np
from kvinfo.codecs import get_codec
for cfg in json.loads(sys.argv[1]):
    x = np.random.default_rng(5).standard_normal((2, 64, 32)).astype(np.float32)
    codec = get_codec(cfg)
    data = codec.encode(x)
    decoded = codec.decode(data).tobytes()
    print(hashlib.sha256(data).hexdigest(), hashlib.sha256(decoded).hexdigest())
"""


def test_deterministic_across_processes():
    cfgs = [
        {"id": "turbo", "bits": 3, "seed": 123, "num_outliers": 2},
        {"id": "turbo", "bits": 2, "rotation": "orthogonal", "seed": 9},
        {"id": "uniform", "bits": 4},
    ]
    here = []
    for cfg in cfgs:
        codec = get_codec(cfg)
        x = np.random.default_rng(5).standard_normal((2, 64, 32)).astype(np.float32)
        data = codec.encode(x)
        decoded = codec.decode(data).tobytes()
        here.append(f"{hashlib.sha256(data).hexdigest()} {hashlib.sha256(decoded).hexdigest()}")
    out = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS, json.dumps(cfgs)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    assert out[: len(cfgs)] == here


def test_seed_changes_stream_not_quality():
    x = _data((1, 512, 32))
    a = get_codec({"id": "turbo", "bits": 2, "seed": 1})
    b = get_codec({"id": "turbo", "bits": 2, "seed": 2})
    da, db = a.encode(x), b.encode(x)
    assert da != db
    ma = np.mean((_f64(x) - _f64(a.decode(da))) ** 2)
    mb = np.mean((_f64(x) - _f64(b.decode(db))) ** 2)
    assert abs(ma / mb - 1) < 0.15


@pytest.mark.parametrize("dtype", DTYPES)
def test_reencoding_decoded_array_is_stable(dtype):
    x = _data((2, 64, 32), dtype=dtype)
    # uniform and absolute-step ecsq are idempotent: a decoded array re-encodes to itself.
    for cfg in [
        {"id": "uniform", "bits": 3, "group_size": 32},
        {"id": "ecsq", "step": 0.1},
        {"id": "uniform", "bits": 8, "axis": "token"},
    ]:
        codec = get_codec(cfg)
        y = codec.decode(codec.encode(x))
        assert np.array_equal(codec.decode(codec.encode(y)).view(np.uint8), y.view(np.uint8))
    # turbo's codewords are not unit-norm, so a second pass moves a few coordinates, but the
    # error stays a small fraction of the first pass and does not grow.
    codec = get_codec({"id": "turbo", "bits": 3})
    y1 = codec.decode(codec.encode(x))
    y2 = codec.decode(codec.encode(y1))
    y3 = codec.decode(codec.encode(y2))
    e1 = np.mean((_f64(x) - _f64(y1)) ** 2)
    assert np.mean((_f64(y1) - _f64(y2)) ** 2) < 0.1 * e1
    assert np.mean((_f64(y2) - _f64(y3)) ** 2) < 0.1 * e1
    # and a decode of the same stream is always the same
    data = codec.encode(x)
    assert np.array_equal(codec.decode(data).view(np.uint8), codec.decode(data).view(np.uint8))


# -- codec-specific behaviour --------------------------------------------------------------------
def test_turbo_sinks_are_exact_per_sequence():
    x = _data((2, 50, 16), dtype=ml_dtypes.bfloat16)
    codec = get_codec({"id": "turbo", "bits": 1, "sink_tokens": 3})
    y = codec.decode(codec.encode(x, sequence_starts=[0, 20, 48]))
    rows = [0, 1, 2, 20, 21, 22, 48, 49]
    assert np.array_equal(y[:, rows].view(np.uint16), x[:, rows].view(np.uint16))
    others = [i for i in range(50) if i not in rows]
    assert not np.array_equal(y[:, others].view(np.uint16), x[:, others].view(np.uint16))
    with pytest.raises(CodecConfigError, match="sequence_starts"):
        codec.encode(x, sequence_starts=[60])
    # every token a sink: no quantized rows, still a valid stream, exact
    all_sinks = get_codec({"id": "turbo", "bits": 2, "sink_tokens": 64})
    assert np.array_equal(all_sinks.decode(all_sinks.encode(x)).view(np.uint16), x.view(np.uint16))


@pytest.mark.parametrize("outlier_by,expected", [("variance", [7, 11]), ("energy", [7, 20])])
def test_turbo_outliers_help_on_an_outlier_channel(outlier_by, expected):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 512, 32))
    x[..., 7] *= 30.0  # a high-variance channel
    x[..., 11] *= 3.0
    x[..., 20] += 40.0  # a constant-offset channel: high energy, unit variance
    plain = get_codec({"id": "turbo", "bits": 2})
    split = get_codec(
        {"id": "turbo", "bits": 2, "num_outliers": 2, "outlier_bits": 4, "outlier_by": outlier_by}
    )
    data = split.encode(x)
    chans = np.frombuffer(parse_stream(data).sections[2].data, dtype="<u2").reshape(2, 2)
    assert chans.tolist() == [expected, expected]
    e_plain = np.mean((x - plain.decode(plain.encode(x))) ** 2)
    e_split = np.mean((x - split.decode(data)) ** 2)
    assert e_split < (0.8 if outlier_by == "variance" else 0.1) * e_plain


def test_turbo_distortion_on_isotropic_gaussian_through_codec():
    x = np.random.default_rng(2).standard_normal((1, 4096, 64)).astype(np.float32)
    for bits in (2, 3, 4):
        codec = get_codec({"id": "turbo", "bits": bits})
        mse = np.mean((_f64(x) - _f64(codec.decode(codec.encode(x)))) ** 2)
        assert abs(mse / (64 * lloyd_max_sphere(bits, 64).mse_per_element) - 1) < 0.03
        r = codec.rate(codec.encode(x))
        # Lloyd-Max indices are not uniform: the entropy coder gets below `bits`
        assert r["symbol_bits_per_element"] < bits
        # the float16 norm is 16 bits per 64 elements
        assert abs(r["side_bits_per_element"] - 0.25) < 0.05


def test_lossless_special_values_and_all_dtypes():
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-45, 3.0e38, 65504.0, 6e-8]
    for dtype in [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]:
        with np.errstate(over="ignore"):
            x = np.array(specials * 7, dtype=np.float64).astype(dtype).reshape(7, 10)
        view = {2: np.uint16, 4: np.uint32, 8: np.uint64}[np.dtype(dtype).itemsize]
        x = x.copy()
        x.view(view)[0, 4] |= view(1)  # a NaN with a payload
        for h in ["auto", 0, 4]:
            codec = get_codec({"id": "lossless", "mantissa_bits": h})
            y = codec.decode(codec.encode(x))
            assert y.dtype == x.dtype and np.array_equal(y.view(view), x.view(view))


def test_lossless_empty_and_one_dimensional():
    codec = get_codec({"id": "lossless"})
    for x in [np.zeros((0, 8), np.float16), np.arange(5, dtype=np.float32)]:
        y = codec.decode(codec.encode(x))
        assert y.shape == x.shape and np.array_equal(y, x)


def test_lossless_beats_raw_on_kv_like_data():
    x = _data((4, 256, 64), dtype=ml_dtypes.bfloat16)
    codec = get_codec({"id": "lossless"})
    r = codec.rate(codec.encode(x))
    assert r["bits_per_element"] < 14.0


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", LOSSY, ids=lambda c: json.dumps(c))
def test_bad_arrays_raise_clear_errors(cfg):
    codec = get_codec(cfg)
    x = _data((2, 8, 16))
    bad = x.copy()
    bad[0, 1, 2] = np.nan
    with pytest.raises(CodecConfigError, match="finite"):
        codec.encode(bad)
    bad[0, 1, 2] = np.inf
    with pytest.raises(CodecConfigError, match="finite"):
        codec.encode(bad)
    with pytest.raises(CodecConfigError, match="ndim"):
        codec.encode(x[0, 0])
    with pytest.raises(CodecConfigError, match="ndim"):
        codec.encode(np.float32(1.0))
    with pytest.raises(CodecConfigError, match="non-empty"):
        codec.encode(np.zeros((0, 16), np.float32))
    with pytest.raises(CodecConfigError, match="dtype"):
        codec.encode(np.ones((4, 16), np.int32))
    assert issubclass(CodecConfigError, ValueError)


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"id": "uniform", "bits": 0}, "bits"),
        ({"id": "uniform", "bits": 9}, "bits"),
        ({"id": "uniform", "bits": 2.5}, "bits"),
        ({"id": "uniform", "axis": "head"}, "axis"),
        ({"id": "uniform", "group_size": 0}, "group_size"),
        ({"id": "uniform", "side_dtype": "float64"}, "side_dtype"),
        ({"id": "ecsq", "step": 0}, "step"),
        ({"id": "ecsq", "step": float("nan")}, "step"),
        ({"id": "ecsq", "step_mode": "log"}, "step_mode"),
        ({"id": "turbo", "bits": 0}, "bits"),
        ({"id": "turbo", "bits": 7}, "bits"),
        ({"id": "turbo", "num_outliers": 1}, "num_outliers"),
        ({"id": "turbo", "sink_tokens": -1}, "sink_tokens"),
        ({"id": "turbo", "rotation": "dct"}, "rotation"),
        ({"id": "lossless", "mantissa_bits": 11}, "mantissa_bits"),
        ({"id": "uniform", "coder": {"id": "uniform"}}, "lossless symbol coder"),
        ({"id": "uniform", "coder": 5}, "coder"),
        ({"id": "uniform", "bogus": 1}, "bogus"),
    ],
)
def test_bad_configs(cfg, match):
    with pytest.raises(CodecConfigError, match=match):
        get_codec(cfg)


def test_unknown_coder():
    with pytest.raises(UnknownCodecError, match="no-such-coder"):
        get_codec({"id": "turbo", "coder": {"id": "no-such-coder"}})


def test_bad_inputs_at_encode_time():
    with pytest.raises(CodecConfigError, match="power-of-two"):
        get_codec({"id": "turbo", "rotation": "hadamard"}).encode(_data((20, 24)))
    with pytest.raises(CodecConfigError, match="at least 2"):
        get_codec({"id": "turbo", "num_outliers": 15}).encode(_data((20, 16)))
    with pytest.raises(CodecConfigError, match="larger step"):
        get_codec({"id": "ecsq", "step": 1e-6}).encode(_data((20, 16)))
    with pytest.raises(CodecConfigError, match="side_dtype 'float32'"):
        get_codec({"id": "uniform"}).encode(np.full((4, 4), 1e6, np.float32))
    with pytest.raises(CodecConfigError, match="at most 7"):
        get_codec({"id": "lossless", "mantissa_bits": 9}).encode(_data(dtype=np.float32))
    codec = get_codec({"id": "uniform"})
    with pytest.raises(CodecConfigError, match="device"):
        codec.decode(codec.encode(_data()), device="tpu")


def test_cuda_decode_without_a_gpu_is_a_clear_error():
    from kvinfo.errors import CudaUnavailableError
    from kvinfo.kernels.gpu import cuda_available

    if cuda_available():
        pytest.skip("a CUDA device is present; tests/kernels/test_cuda_gpu.py covers it")
    for cfg in ({"id": "uniform"}, {"id": "rans"}, {"id": "huffman"}):
        codec = get_codec(cfg)
        x = _data() if cfg["id"] == "uniform" else np.arange(100, dtype=np.uint8)
        with pytest.raises(CudaUnavailableError, match="device='cuda' needs a CUDA GPU"):
            codec.decode(codec.encode(x), device="cuda")


@pytest.mark.parametrize("cfg", LOSSY[:5:2] + [{"id": "lossless"}], ids=lambda c: c["id"])
def test_every_damage_raises_corrupt_stream(cfg):
    codec = get_codec(cfg)
    data = codec.encode(_data((1, 6, 4), dtype=np.float16))
    for i in range(len(data)):
        for flip in (0x01, 0x80):
            bad = bytearray(data)
            bad[i] ^= flip
            with pytest.raises(CorruptStreamError):
                codec.decode(bytes(bad))
    for n in range(len(data)):
        with pytest.raises(CorruptStreamError):
            codec.decode(data[:n])
    with pytest.raises(CorruptStreamError, match="written by codec"):
        get_codec({"id": "uniform" if cfg["id"] != "uniform" else "ecsq"}).decode(data)


def test_codecs_are_codecs():
    for cid in ("uniform", "ecsq", "turbo", "lossless"):
        codec = get_codec({"id": cid})
        assert isinstance(codec, Codec) and codec.codec_id == cid
        assert codec.get_config()["coder"]["id"] == "rans"
        assert repr(codec).startswith(type(codec).__name__ + "(")


# -- the shared contract (kvinfo.testing) and damage behind a recomputed CRC -------------------
@pytest.mark.parametrize("cfg", LOSSY + [{"id": "lossless"}], ids=lambda c: json.dumps(c))
def test_shared_contract_checks(cfg):
    from kvinfo.testing import check_corruption, check_rate

    codec = get_codec(cfg)
    x = _data((1, 5, 8), dtype=np.float16)
    check_rate(codec, x)
    assert check_corruption(codec, x, changes=(0x01, 0xFF)) > 0


@pytest.mark.parametrize("cfg", LOSSY + [{"id": "lossless"}], ids=lambda c: json.dumps(c))
def test_damage_past_crc_never_escapes(cfg):
    """With the CRC recomputed, damage must give CorruptStreamError or an array of the
    stream's shape and dtype, never another exception, a crash or a huge allocation.
    (Since container version 2 every section has a second checksum, so it is always
    CorruptStreamError: tests/codecs/quant/test_integrity.py checks that stronger property.)"""
    import zlib

    codec = get_codec(cfg)
    x = _data((2, 6, 8), dtype=np.float16)
    data = codec.encode(x)
    for i in range(len(data) - 4):
        for flip in (0x01, 0x40, 0xFF):
            bad = bytearray(data)
            bad[i] ^= flip
            struct.pack_into("<I", bad, len(bad) - 4, zlib.crc32(bad[:-4]) & 0xFFFFFFFF)
            try:
                y = codec.decode(bytes(bad))
            except CorruptStreamError:
                continue
            assert y.dtype == x.dtype and y.shape == x.shape, (i, flip)
