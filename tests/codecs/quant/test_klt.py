"""The ``klt`` transform codec, its calibration files and ``kvinfo calibrate``."""

from __future__ import annotations

import json
import os
import pathlib
import struct
import zlib

import ml_dtypes
import numpy as np
import pytest

from kvinfo.analysis import rd_gaussian_eigenvalues
from kvinfo.cli import main
from kvinfo.codecs import get_codec
from kvinfo.codecs.quant._base import CONTAINER_VERSION, parse_stream
from kvinfo.codecs.quant.klt import (
    LOGISTIC_MAGIC,
    STREAM_VERSION,
    fit_klt_bases,
    load_klt_bases,
    rope_rotate,
    rotation_bits,
    save_klt_bases,
    water_level_from_eigenvalues,
)
from kvinfo.errors import CodecConfigError, CorruptStreamError

GOLDEN = pathlib.Path(__file__).resolve().parents[2] / "golden"
REGEN = os.environ.get("KVINFO_REGEN_GOLDEN") == "1"


def _gauss(t, lam, seed=0, q=None):
    rng = np.random.default_rng(seed)
    d = len(lam)
    if q is None:
        q, _ = np.linalg.qr(np.random.default_rng(99).standard_normal((d, d)))
    return (rng.standard_normal((t, d)) * np.sqrt(lam)) @ q.T + 0.5, q


def _snr(x, y):
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    return 10 * np.log10(np.mean(np.var(x.reshape(-1, x.shape[-1]), axis=0))
                         / np.mean((x - y) ** 2))


LAM = np.logspace(0, -3, 16)  # eigenvalues over three decades


def test_high_rate_within_0_3_bit_of_gaussian_rd():
    x, _ = _gauss(65536, LAM, seed=1)  # long enough that tables and basis cost < 0.02 bit
    for snr in (25.0, 30.0):
        c = get_codec({"id": "klt", "snr_db": snr})
        data = c.encode(x)
        y = c.decode(data)
        mse = float(np.mean((x - y) ** 2))
        bound = float(rd_gaussian_eigenvalues(np.sort(LAM), mse))
        bits = c.rate(data)["bits_per_element"]
        assert bits - bound < 0.3, (snr, bits, bound)
        assert bits > bound - 0.02  # a Gaussian source: nobody beats R(D) (up to sampling)


def test_calibrated_basis_high_rate(tmp_path):
    # fit on one draw, code another: only the mean and the mask are in the stream
    x_cal, q = _gauss(16384, LAM, seed=2)
    x, _ = _gauss(32768, LAM, seed=3, q=q)
    path = tmp_path / "b.npz"
    save_klt_bases(_bases_from_array(x_cal), path)
    c = get_codec({"id": "klt", "snr_db": 30, "basis": str(path),
                   "coder": {"id": "arith", "context": "channel"}}).for_slab(0, "keys", 0)
    data = c.encode(x)
    y = c.decode(data)
    mse = float(np.mean((x - y) ** 2))
    gap = c.rate(data)["bits_per_element"] - float(rd_gaussian_eigenvalues(np.sort(LAM), mse))
    assert gap < 0.3
    inline = get_codec({"id": "klt", "snr_db": 30})
    assert len(data) < len(inline.encode(x))  # no basis in the stream


def _bases_from_array(x, layers=1, heads=1, kinds=("keys", "values")):
    from kvinfo.codecs.quant.klt import KltBases

    d = x.shape[1]
    mu = x.mean(0)
    w, v = np.linalg.eigh(np.cov(x, rowvar=False, bias=True))
    o = np.argsort(-w)
    means = {k: np.tile(mu, (layers, heads, 1)).astype(np.float32) for k in kinds}
    vecs = {k: np.tile(v[:, o], (layers, heads, 1, 1)).astype(np.float16) for k in kinds}
    vals = {k: np.tile(w[o], (layers, heads, 1)).astype(np.float32) for k in kinds}
    meta = {"format": "kvinfo-klt-basis", "version": 1, "head_dim": d,
            "sequence_fingerprints": []}
    return KltBases(means, vecs, vals, meta)


def _mask(data, d):
    p = parse_stream(data)
    b = len(p.sections) - 9
    return np.unpackbits(np.frombuffer(p.sections[3].data, np.uint8))[: b * d].reshape(b, d)


def test_low_rate_drops_the_components_water_filling_drops():
    lam = np.array([8.0, 4.0, 2.0, 1.0, 0.05, 0.02, 0.01, 0.005])
    x, _ = _gauss(20000, lam, seed=4)
    var = lam.mean()
    for snr in (3.0, 6.0, 9.0):
        d_target = var * 10 ** (-snr / 10)
        theta = water_level_from_eigenvalues(lam, d_target)
        want = np.sort(lam)[::-1] > theta
        c = get_codec({"id": "klt", "snr_db": snr})
        data = c.encode(x)
        assert _mask(data, 8)[0].astype(bool).tolist() == want.tolist(), snr
        assert abs(_snr(x, c.decode(data)) - snr) < 0.1


def test_water_level_closed_form():
    lam = np.array([4.0, 1.0, 0.25, 0.0])
    theta = water_level_from_eigenvalues(lam, 0.5)
    assert theta == pytest.approx(0.875)
    assert np.mean(np.minimum(theta, lam)) == pytest.approx(0.5)
    assert water_level_from_eigenvalues(lam, 10.0) == 4.0


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32, np.float64])
@pytest.mark.parametrize("coder", ["rans", "arith", "huffman"])
def test_roundtrip_hits_the_target_distortion(dtype, coder):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((3, 600, 16)) @ rng.standard_normal((16, 16))).astype(dtype)
    c = get_codec({"id": "klt", "snr_db": 18, "coder": {"id": coder}})
    data = c.encode(x)
    y = c.decode(data)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert abs(_snr(x, y) - 18) < 0.2
    r = c.rate(data)
    assert r["total_bits"] == 8 * len(data)
    assert r["symbol_bits"] + r["side_bits"] == r["total_bits"]
    assert r["symbol_bits"] > 0


def test_config_json_equality_and_determinism():
    c = get_codec({"id": "klt", "snr_db": 12, "sink_tokens": 2, "rounding": 0.4,
                   "reconstruction": "midpoint", "rope_theta": 1e4})
    again = get_codec(json.loads(json.dumps(c.get_config())))
    assert again == c and hash(again) == hash(c) and "KltCodec" in repr(again)
    x = np.random.default_rng(6).standard_normal((300, 8)).astype(np.float32)
    assert c.encode(x) == again.encode(x)
    assert np.array_equal(again.decode(c.encode(x)), c.decode(c.encode(x)))


def test_lag1_prediction_gains_on_a_correlated_source_and_resets_at_sequences():
    rng = np.random.default_rng(14)
    t, d = 4096, 8
    z = np.zeros((t, d))
    e = rng.standard_normal((t, d))
    for i in range(1, t):  # AR(1) per coordinate, rho = 0.9
        z[i] = 0.9 * z[i - 1] + np.sqrt(1 - 0.81) * e[i]
    x = z @ np.linalg.qr(rng.standard_normal((d, d)))[0]
    none = get_codec({"id": "klt", "snr_db": 20, "predict": "none"})
    lag1 = get_codec({"id": "klt", "snr_db": 20, "predict": "lag1"})
    sizes = {}
    for name, c in (("none", none), ("lag1", lag1)):
        data = c.encode(x)
        assert abs(_snr(x, c.decode(data)) - 20) < 0.2
        sizes[name] = c.rate(data)["bits_per_element"]
    # -1/2 log2(1 - rho^2) = 1.2 bit at high rate; closed-loop at 20 dB keeps most of it
    assert sizes["lag1"] < sizes["none"] - 0.8
    # two sequences: positions restart, prediction resets; decodes exactly the same way
    pos = np.concatenate([np.arange(2000), np.arange(t - 2000)])
    c = lag1.for_slab(positions=pos)
    y = c.decode(c.encode(x))
    assert abs(_snr(x, y) - 20) < 0.2
    assert np.array_equal(y, get_codec(lag1.get_config()).decode(c.encode(x)))


def test_sinks_and_recent_window_are_exact_and_counted():
    x = np.random.default_rng(7).standard_normal((2, 200, 8)).astype(np.float32)
    c = get_codec({"id": "klt", "snr_db": 10, "sink_tokens": 3, "recent_tokens": 5})
    data = c.encode(x)
    y = c.decode(data)
    assert np.array_equal(y[:, :3], x[:, :3]) and np.array_equal(y[:, -5:], x[:, -5:])
    assert not np.array_equal(y[:, 3:-5], x[:, 3:-5])
    plain = get_codec({"id": "klt", "snr_db": 10})
    assert c.rate(data)["side_bits"] > plain.rate(plain.encode(x))["side_bits"]
    # sinks follow positions: a block that starts at position 100 has none
    later = c.for_slab(positions=np.arange(100, 300))
    y2 = later.decode(later.encode(x))
    assert not np.array_equal(y2[:, :3], x[:, :3])


def test_pre_rope_keys_cost_less_and_decode_to_post_rope():
    rng = np.random.default_rng(8)
    t, d = 2048, 16
    low = rng.standard_normal((t, 3)) @ rng.standard_normal((3, d)) * 2
    low += 0.01 * rng.standard_normal((t, d))
    pos = np.arange(t)
    post = rope_rotate(low + 1.0, pos, 1e4)  # what the cache holds
    plain = get_codec({"id": "klt", "snr_db": 25})
    pre = get_codec({"id": "klt", "snr_db": 25, "rope_theta": 1e4, "rope_dtype": "float32"})
    for c in (plain, pre):
        y = c.decode(c.encode(post))
        assert abs(_snr(post, y) - 25) < 0.2  # distortion measured on the cached keys
    assert len(pre.encode(post)) < 0.8 * len(plain.encode(post))
    # values are never de-rotated, even with rope_theta in a single config
    v = pre.for_slab(0, "values", 0)
    assert struct.unpack_from("<d", parse_stream(v.encode(post)).params, 16)[0] == 0.0


def test_rope_rotate_matches_transformers_convention():
    torch = pytest.importorskip("torch")
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    rng = np.random.default_rng(9)
    k = rng.standard_normal((1, 1, 10, 8))
    pos = np.arange(10)
    inv = 1.0 / (1e4 ** (np.arange(0, 8, 2) / 8))
    ang = pos[:, None] * inv[None]
    emb = np.concatenate([ang, ang], -1)
    cos, sin = torch.tensor(np.cos(emb))[None], torch.tensor(np.sin(emb))[None]
    kt = torch.tensor(k)
    _, ref = apply_rotary_pos_emb(kt, kt, cos, sin)
    assert np.allclose(rope_rotate(k[0, 0], pos, 1e4), ref.numpy()[0, 0], atol=1e-6)


@pytest.mark.parametrize(
    "cfg",
    [
        {"snr_db": "20"},
        {"snr_db": float("nan")},
        {"snr_db": 200},
        {"rounding": 0.0},
        {"rounding": 0.7},
        {"reconstruction": "mean"},
        {"side_dtype": "int8"},
        {"metric": "logits"},
        {"predict": "lag2"},
        {"rope_theta": -1.0},
        {"rope_dtype": "int4"},
        {"sink_tokens": -1},
        {"basis": 3},
        {"basis": "/nonexistent/basis.npz"},
        {"coder": {"id": "klt"}},
        {"symbol_model": "laplace"},
    ],
)
def test_bad_configs(cfg):
    with pytest.raises(CodecConfigError):
        get_codec({"id": "klt", **cfg})


def test_bad_basis_files(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, meta=np.array(json.dumps({"format": "kvinfo-klt-basis", "version": 99})))
    for p in (junk, other, wrong):
        with pytest.raises(CodecConfigError):
            get_codec({"id": "klt", "basis": str(p)})


def test_calibrated_codec_needs_the_slab_identity(tmp_path):
    x, _ = _gauss(500, LAM, seed=10)
    path = tmp_path / "b.npz"
    save_klt_bases(_bases_from_array(x, layers=2, heads=2), path)
    c = get_codec({"id": "klt", "basis": str(path)})
    with pytest.raises(CodecConfigError, match="for_slab"):
        c.encode(x)
    with pytest.raises(CodecConfigError, match="layers 0..1"):
        c.for_slab(5, "keys", 0).encode(x)
    with pytest.raises(CodecConfigError, match="head_dim"):
        c.for_slab(1, "keys", 0).encode(x[:, :8])
    # a layer with its heads on the leading axis (what eval passes)
    two = np.stack([x, x[::-1]])
    data = c.for_slab(1, "values").encode(two)
    assert abs(_snr(two, c.decode(data)) - 20) < 0.2  # decodes without binding
    # another basis file: refused, not silently wrong
    path2 = tmp_path / "b2.npz"
    save_klt_bases(_bases_from_array(x[:250], layers=2, heads=2), path2)
    with pytest.raises(CorruptStreamError, match="another basis"):
        get_codec({"id": "klt", "basis": str(path2)}).decode(data)
    with pytest.raises(CorruptStreamError, match="calibrated basis"):
        get_codec({"id": "klt"}).decode(data)


def test_damaged_streams():
    x = np.random.default_rng(11).standard_normal((2, 64, 8)).astype(np.float32)
    c = get_codec({"id": "klt", "snr_db": 15, "sink_tokens": 1, "rope_theta": 1e4})
    data = c.encode(x)
    for n in range(0, len(data), 23):
        with pytest.raises(CorruptStreamError):
            c.decode(data[:n])
    for i in range(0, len(data), 13):
        bad = bytearray(data)
        bad[i] ^= 0x40
        with pytest.raises(CorruptStreamError):
            c.decode(bytes(bad))
    # past the CRC: the codec's own checks refuse or decode to a finite array of the shape
    for i in range(20, len(data) - 4, 7):
        bad = bytearray(data)
        bad[i] ^= 0xFF
        struct.pack_into("<I", bad, len(bad) - 4, zlib.crc32(bad[:-4]) & 0xFFFFFFFF)
        try:
            y = c.decode(bytes(bad))
        except CorruptStreamError:
            continue
        assert y.shape == x.shape and np.all(np.isfinite(y.astype(np.float64)))
    with pytest.raises(CorruptStreamError):
        c.decode(get_codec({"id": "ecsq"}).encode(x))


def test_degenerate_inputs():
    c = get_codec({"id": "klt", "snr_db": 20})
    const = np.full((50, 4), 2.5, np.float32)
    assert np.array_equal(c.decode(c.encode(const)), const)
    one = np.random.default_rng(12).standard_normal((1, 8)).astype(np.float32)
    assert c.decode(c.encode(one)).shape == (1, 8)
    allsink = get_codec({"id": "klt", "sink_tokens": 10})
    x = np.random.default_rng(13).standard_normal((5, 4)).astype(np.float32)
    assert np.array_equal(allsink.decode(allsink.encode(x)), x)
    with pytest.raises(CodecConfigError):
        c.encode(np.zeros((4,), np.float32))
    with pytest.raises(CodecConfigError):
        c.encode(np.array([[np.nan, 1.0]]))
    spiky = np.random.default_rng(0).standard_normal((4000, 2))
    spiky[7, 0] = 300.0  # an index range beyond the coder's alphabet at 80 dB
    with pytest.raises(CodecConfigError, match="lower snr_db"):
        get_codec({"id": "klt", "snr_db": 80}).encode(spiky)


GOLDEN_CASES = {
    "klt_f32": ({"id": "klt", "snr_db": 15}, np.float32),
    "klt_bf16_rope": ({"id": "klt", "snr_db": 22, "sink_tokens": 1, "rope_theta": 1e4,
                       "coder": {"id": "arith", "context": "channel"}}, ml_dtypes.bfloat16),
    "klt_f32_logistic": ({"id": "klt", "snr_db": 30, "symbol_model": "logistic"}, np.float32),
}
#: klt stream version 1 (no version byte, coder sections only): decode-only golden files
V1_CASES = ("klt_f32", "klt_bf16_rope")


def _golden_input(dtype):
    rng = np.random.default_rng(20250101)
    return (rng.standard_normal((2, 40, 16)) * np.linspace(0.2, 2.0, 16) + 1.0).astype(
        np.float32).astype(dtype)


@pytest.mark.parametrize("name", list(GOLDEN_CASES))
def test_golden_klt_stream(name):
    """Regenerate deliberately with ``KVINFO_REGEN_GOLDEN=1`` (see test_quant_golden.py); a
    klt layout change bumps ``STREAM_VERSION`` and keeps the older files decoding."""
    config, dtype = GOLDEN_CASES[name]
    x = _golden_input(dtype)
    codec = get_codec(config)
    stem = GOLDEN / f"quant_v{CONTAINER_VERSION}_{name}_s{STREAM_VERSION}"
    if REGEN:
        data = codec.encode(x)
        np.save(stem.with_suffix(".in.npy"), x.astype(np.float32))
        np.save(stem.with_suffix(".out.npy"), codec.decode(data).astype(np.float32))
        stem.with_suffix(".kvq").write_bytes(data)
    golden = stem.with_suffix(".kvq").read_bytes()
    assert np.array_equal(np.load(stem.with_suffix(".in.npy")), x.astype(np.float32))
    assert codec.encode(x) == golden, f"bitstream of {name} changed: bump the version"
    out = codec.decode(golden)
    assert np.array_equal(out.astype(np.float32), np.load(stem.with_suffix(".out.npy")))
    if name.endswith("logistic"):
        assert LOGISTIC_MAGIC in golden


@pytest.mark.parametrize("name", V1_CASES)
def test_klt_stream_version_1_still_decodes(name):
    config, dtype = GOLDEN_CASES[name]
    stem = GOLDEN / f"quant_v{CONTAINER_VERSION}_{name}"
    old = stem.with_suffix(".kvq").read_bytes()
    assert len(parse_stream(old).params) == struct.calcsize("<dddBBBBBBBiiiI")  # no version byte
    out = get_codec(config).decode(old)
    assert np.array_equal(out.astype(np.float32), np.load(stem.with_suffix(".out.npy")))
    # a version byte this kvinfo does not know is refused
    p = parse_stream(get_codec(config).encode(_golden_input(dtype)))
    from kvinfo.codecs.quant._base import build_stream

    for v in (0, 1, STREAM_VERSION + 1):
        bad = build_stream(p.tag, p.dtype, p.shape, p.params[:-1] + bytes([v]), p.sections)
        with pytest.raises(CorruptStreamError, match="klt stream version"):
            get_codec(config).decode(bad)


def test_logistic_symbol_model():
    """The discretised-logistic sections: smaller than the adaptive coder's at high rate,
    ``auto`` keeps the shorter one per slab, tables are reproducible, damage is refused."""
    from kvinfo.codecs.quant import klt as K

    x, _ = _gauss(4096, LAM, seed=21)
    x3 = np.stack([x, x[::-1] * 2.0])
    size = {}
    for sm in ("coder", "logistic", "auto"):
        for snr in (8, 30):
            c = get_codec({"id": "klt", "snr_db": snr, "symbol_model": sm,
                           "coder": {"id": "arith", "context": "channel"}})
            data = c.encode(x3)
            y = c.decode(data)
            assert all(abs(_snr(x3[i], y[i]) - snr) < 0.2 for i in (0, 1))
            size[sm, snr] = len(data)
            r = c.rate(data)
            assert r["symbol_bits"] + r["side_bits"] == 8 * len(data)
            secs = [s.data for s in parse_stream(data).sections[-2:]]
            assert all(s[:4] == (LOGISTIC_MAGIC if sm == "logistic" else b"KVIC")
                       for s in secs) or sm == "auto"
            if sm == "logistic" and snr == 30:
                logistic = data
    assert size["logistic", 30] < size["coder", 30]
    for snr in (8, 30):
        assert size["auto", snr] <= min(size["coder", snr], size["logistic", snr])
    # the codec's coder reads both kinds of section (bench decodes them with it)
    c = get_codec({"id": "klt", "snr_db": 30, "symbol_model": "logistic"})
    sec = parse_stream(logistic).sections[-1].data
    sym = c.coder.decode(sec)
    assert sym.shape[0] == 4096 and c.coder.rate(sec)["symbol_bits"] % 16 == 0
    # tables: basic IEEE operations only, so these numbers are the same everywhere
    z = np.linspace(0.0, 60.0, 5001)
    assert np.max(np.abs(K._exp_neg(z) / np.exp(-z) - 1.0)) < 1e-13
    f = K._logistic_frequencies(np.array([0, 96, 150, 255]), -4, 9)
    assert np.all(f >= 1) and np.all(f.sum(axis=1) == 1 << 16)
    assert f[1].tolist() == [115, 582, 3353, 14801, 27833, 14801, 3353, 582, 116]
    # an alphabet too large for the tables goes to the coder
    assert K._logistic_encode(np.arange(-3000, 3000).reshape(-1, 2)) is None
    # damage: truncations and flips are refused, flips past the CRC refuse or stay finite
    for n in range(0, len(logistic), 97):
        with pytest.raises(CorruptStreamError):
            c.decode(logistic[:n])
    start = logistic.index(LOGISTIC_MAGIC)
    for i in range(start, len(logistic) - 4, 29):
        bad = bytearray(logistic)
        bad[i] ^= 0x5A
        struct.pack_into("<I", bad, len(bad) - 4, zlib.crc32(bad[:-4]) & 0xFFFFFFFF)
        try:
            y = c.decode(bytes(bad))
        except CorruptStreamError:
            continue
        assert y.shape == x3.shape and np.all(np.isfinite(y))
    p = parse_stream(logistic)
    from kvinfo.codecs.quant._base import Section, build_stream

    for cut in (10, 30, len(sec) - 1):
        secs = list(p.sections)
        secs[-1] = Section(secs[-1].kind, sec[:cut])
        with pytest.raises(CorruptStreamError, match="logistic"):
            c.decode(build_stream(p.tag, p.dtype, p.shape, p.params, secs))


# ---- calibration files, the command, bench -------------------------------------------
@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    from kvinfo.dumps import write_synthetic_dump

    folder = tmp_path_factory.mktemp("klt")
    cal = write_synthetic_dump(folder / "cal.h5", seed=3, pre_rope=True)
    test = write_synthetic_dump(folder / "test.h5", seed=4)
    return cal, test, folder


def test_calibrate_command_and_file(dumps, capsys):
    cal, _, folder = dumps
    out = folder / "basis.npz"
    assert main(["calibrate", str(cal), "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    b = load_klt_bases(out)
    assert b.kinds == ("keys", "values", "keys_pre_rope")
    v = b.eigenvectors["keys"][1, 0].astype(np.float64)
    assert np.allclose(v.T @ v, np.eye(v.shape[0]), atol=5e-3)
    assert np.all(np.diff(b.eigenvalues["values"][0, 1]) <= 0)
    assert b.meta["num_tokens"] == 256 and len(b.meta["sequence_fingerprints"]) == 2
    assert not list(folder.glob(".basis.npz*"))  # no temporary left behind


def test_calibrate_command_errors(dumps, tmp_path, capsys):
    cal, _, _ = dumps
    assert main(["calibrate", str(tmp_path / "missing.h5"), "-o", str(tmp_path / "b.npz")]) == 2
    assert main(["calibrate", str(cal), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 2


def test_fit_bases_matches_pca(dumps):
    from kvinfo.dumps import open_dump

    cal, _, _ = dumps
    with open_dump(cal) as d:
        b = fit_klt_bases(d)
        x = d.slab("values", 1, 1).astype(np.float64)
    w = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True)))[::-1]
    assert np.allclose(b.eigenvalues["values"][1, 1], w, rtol=1e-4, atol=1e-6)


def test_bench_refuses_a_basis_on_its_own_data_and_runs_on_other(dumps):
    from kvinfo.bench import bench_dump

    cal, test, folder = dumps
    basis = folder / "bench_basis.npz"
    assert main(["calibrate", str(cal), "-o", str(basis)]) == 0
    spec = {"id": "klt", "basis": str(basis), "snr_db": 20}
    with pytest.raises(CodecConfigError, match="fitted on"):
        bench_dump(cal, [spec], layers=[0], heads=[0], attention=False, knn_samples=200)
    doc = bench_dump(test, [spec, {"id": "klt", "snr_db": 20}], layers=[0], heads=[0],
                     attention=False, knn_samples=200)
    slabs = [r for r in doc["records"] if r.get("scope") == "slab" and r.get("codec")]
    assert len(slabs) == 4
    for r in slabs:
        m = r["metrics"] if "metrics" in r else r
        assert abs(m["snr_db"] - 20) < 0.3


def test_attention_metric_reaches_the_attention_bound(tmp_path):
    from kvinfo.analysis import rd_gaussian_attention
    from kvinfo.codecs.quant.klt import KltBases, _sqrtm

    rng = np.random.default_rng(15)
    d, t = 16, 16384
    lam, m = np.logspace(0, -2, d), np.logspace(-2, 1, d)  # queries read small key directions
    k = rng.standard_normal((t, d)) * np.sqrt(lam)
    s_k, q_m = np.diag(lam), np.diag(m)
    w = _sqrtm(q_m)
    ev, u = np.linalg.eigh(w @ s_k @ w)
    u = u[:, np.argsort(-ev)]
    one = {"keys": None}
    bases = KltBases(
        {"keys": np.zeros((1, 1, d), np.float32)},
        {"keys": np.eye(d)[None, None].astype(np.float16)},
        {"keys": lam[None, None].astype(np.float32)},
        {"format": "kvinfo-klt-basis", "version": 1, "sequence_fingerprints": []},
        attention_weights={"keys": w[None, None].astype(np.float32)},
        attention_eigenvectors={"keys": u[None, None].astype(np.float16)},
    )
    assert set(one) == set(bases.attention_weights)
    path = tmp_path / "att.npz"
    save_klt_bases(bases, path)
    gaps = {}
    for metric in ("mse", "attention"):
        c = get_codec({"id": "klt", "basis": str(path), "snr_db": 15, "metric": metric,
                       "coder": {"id": "arith", "context": "channel"}}).for_slab(0, "keys", 0)
        data = c.encode(k)
        e = k - c.decode(data)
        d_att = float(np.mean(np.einsum("ti,ij,tj->t", e, q_m, e)))
        bound = rd_gaussian_attention(np.cov(k, rowvar=False), q_m, d_att, scale=1.0)
        gaps[metric] = c.rate(data)["bits_per_element"] - bound
    assert gaps["attention"] < 0.35 < 1.0 < gaps["mse"]
    with pytest.raises(CodecConfigError, match="query moments"):
        get_codec({"id": "klt", "metric": "attention"}).encode(k)


def test_calibration_stores_the_attention_metric(dumps):
    cal, _, folder = dumps
    out = folder / "basis_att.npz"
    assert main(["calibrate", str(cal), "-o", str(out)]) == 0
    b = load_klt_bases(out)
    assert "keys" in b.attention_weights  # keys_pre_rope too when the dump has a rope_theta
    w = b.attention_weights["keys"][0, 1].astype(np.float64)
    assert np.allclose(w, w.T) and np.all(np.linalg.eigvalsh(w) > 0)
    _, test, _ = dumps
    from kvinfo.dumps import open_dump

    with open_dump(test) as d:
        x = d.slab("keys", 0, 1)
    c = get_codec({"id": "klt", "basis": str(out), "metric": "attention", "snr_db": 15})
    y = c.for_slab(0, "keys", 1).encode(x)
    assert c.decode(y).shape == x.shape
    # values are always coded for MSE, even with metric 'attention'
    v = c.for_slab(0, "values", 1)
    assert abs(_snr(x, v.decode(v.encode(x))) - 15) < 0.3


def test_givens_refinement_recovers_a_mismatched_basis(tmp_path):
    """A basis calibrated on a source whose axes moved: the in-stream Givens rotations win
    back most of the decorrelation the calibrated basis loses, for their side bits."""
    from scipy.linalg import expm

    x_cal, q = _gauss(8192, LAM, seed=5)
    a = np.random.default_rng(6).standard_normal((16, 16))
    q2 = expm(0.15 * (a - a.T)) @ q  # the test source's axes: a small rotation away
    x, _ = _gauss(4096, LAM, seed=7, q=q2)
    path = tmp_path / "b.npz"
    save_klt_bases(_bases_from_array(x_cal), path)
    rates = {}
    for rot in (0, 1024):
        c = get_codec({"id": "klt", "snr_db": 25, "basis": str(path), "rotations": rot,
                       "predict": "none"}).for_slab(0, "values", 0)
        data = c.encode(x)
        y = c.decode(data)
        assert abs(_snr(x, y) - 25) < 0.2
        p = parse_stream(data)
        assert len(p.sections) == (10 if rot else 9) + 1
        rates[rot] = c.rate(data)["bits_per_element"]
        if rot:
            mse = float(np.mean((x - y) ** 2))
            bound = float(rd_gaussian_eigenvalues(np.sort(LAM), mse))
            rot_sec = p.sections[9].data
            n_rot = struct.unpack_from("<H", rot_sec)[0]
            assert 0 < n_rot <= rot and len(rot_sec) == 2 + -(-n_rot * rotation_bits(16) // 8)
            refined = data
    assert rates[1024] < rates[0] - 0.05
    assert rates[1024] - bound < 0.45
    # a damaged rotation (component index out of range) is refused with the specific error
    c = get_codec({"id": "klt", "snr_db": 25, "basis": str(path), "predict": "none"}
                  ).for_slab(0, "values", 0)
    from kvinfo.codecs.quant._base import Section, build_stream

    p = parse_stream(refined)
    sec = bytearray(p.sections[9].data)
    for pos, value, what in ((2, 0xFF, "bad Givens rotation"), (1, 0xFF, "truncated Givens")):
        bad = bytearray(sec)
        bad[pos] = value  # the first rotation's i = j = 15; the count's high byte
        secs = list(p.sections)
        secs[9] = Section(secs[9].kind, bytes(bad))
        stream = build_stream(p.tag, p.dtype, p.shape, p.params, secs)
        with pytest.raises(CorruptStreamError, match=what):
            c.decode(stream)
    with pytest.raises(CodecConfigError):
        get_codec({"id": "klt", "rotations": -1})
