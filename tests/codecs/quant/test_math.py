"""The quantizers' math against theory: Lloyd-Max tables, rotations, uniform, ECSQ, TurboQuant.

These tests use the quantize/dequantize functions directly (no entropy coder), so they pin the
math down independently of the coders.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from kvinfo.codecs.quant.ecsq import ecsq_steps
from kvinfo.codecs.quant.lloyd_max import (
    lloyd_max_gaussian,
    lloyd_max_sphere,
    quantize_to_codebook,
)
from kvinfo.codecs.quant.rotation import rotation_matrix, splitmix64
from kvinfo.codecs.quant.turbo import turbo_dequantize, turbo_quantize
from kvinfo.codecs.quant.uniform import uniform_dequantize, uniform_quantize
from kvinfo.errors import CodecConfigError

# Max (1960): MSE of the Lloyd-Max quantizer of N(0, 1) at 1..4 bits.
MAX_1960 = {1: 0.3634, 2: 0.1175, 3: 0.03454, 4: 0.0095}


# -- Lloyd-Max -------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_lloyd_max_gaussian_matches_max_1960(bits):
    cb = lloyd_max_gaussian(bits)
    assert abs(cb.mse_per_element / MAX_1960[bits] - 1) < 0.02
    assert cb.levels.shape == (1 << bits,)
    assert np.all(np.diff(cb.levels) > 0)
    np.testing.assert_allclose(cb.levels, -cb.levels[::-1], atol=1e-12)
    # Lloyd's conditions: boundaries are midpoints.
    np.testing.assert_allclose(cb.boundaries, 0.5 * (cb.levels[1:] + cb.levels[:-1]))


def test_lloyd_max_gaussian_known_levels():
    # Max's table: 1 bit +-sqrt(2/pi); 2 bits +-0.4528, +-1.510.
    np.testing.assert_allclose(
        lloyd_max_gaussian(1).levels,
        [-math.sqrt(2 / math.pi)] * 1 + [math.sqrt(2 / math.pi)],
        atol=1e-9,
    )
    np.testing.assert_allclose(lloyd_max_gaussian(2).levels[2:], [0.4528, 1.5104], atol=2e-4)


def test_lloyd_max_gaussian_mse_by_monte_carlo():
    x = np.random.default_rng(1).standard_normal(400_000)
    for bits in (2, 3):
        cb = lloyd_max_gaussian(bits)
        err = np.mean((x - cb.levels[quantize_to_codebook(x, cb)]) ** 2)
        assert abs(err / cb.mse_per_element - 1) < 0.01


@pytest.mark.parametrize("dim", [4, 16, 64])
def test_lloyd_max_sphere_mse_by_monte_carlo(dim):
    rng = np.random.default_rng(dim)
    g = rng.standard_normal((200_000 // dim * 4, dim))
    u = g / np.linalg.norm(g, axis=1, keepdims=True)
    for bits in (1, 3):
        cb = lloyd_max_sphere(bits, dim)
        err = np.mean((u - cb.levels[quantize_to_codebook(u, cb)]) ** 2)
        assert abs(err / cb.mse_per_element - 1) < 0.02
        assert np.all(np.abs(cb.levels) < 1)


def test_lloyd_max_sphere_tends_to_gaussian():
    for bits in (1, 2, 3, 4):
        d_mse = 4096 * lloyd_max_sphere(bits, 4096).mse_per_element
        assert abs(d_mse / lloyd_max_gaussian(bits).mse_per_element - 1) < 2e-3
        # Small d is a different distribution (bounded support): clearly lower distortion.
        assert 4 * lloyd_max_sphere(bits, 4).mse_per_element < 0.9 * MAX_1960[bits]


def test_lloyd_max_deterministic_and_cached():
    a = lloyd_max_sphere(3, 64)
    lloyd_max_sphere.cache_clear()
    b = lloyd_max_sphere(3, 64)
    assert a is not b
    assert np.array_equal(a.levels, b.levels)
    assert lloyd_max_sphere(3, 64) is b
    with pytest.raises(ValueError):
        a.levels[0] = 0.0  # read-only


@pytest.mark.parametrize("bad", [0, 7, 2.5, True, "3"])
def test_lloyd_max_bad_bits(bad):
    with pytest.raises(CodecConfigError, match="bits"):
        lloyd_max_gaussian(bad)


def test_lloyd_max_sphere_bad_dim():
    with pytest.raises(CodecConfigError, match="dim"):
        lloyd_max_sphere(2, 1)


# -- rotations -------------------------------------------------------------------------------
def test_splitmix64_reference_values():
    # Reference outputs of SplitMix64 seeded with 0 (Vigna's splitmix64.c).
    assert [hex(int(v)) for v in splitmix64(0, 3)] == [
        "0xe220a8397b1dcdaf",
        "0x6e789e6aa1b965f4",
        "0x6c45d188009454f",
    ]


@pytest.mark.parametrize("kind,dim", [("hadamard", 64), ("orthogonal", 48), ("auto", 96)])
def test_rotations_orthogonal_and_seeded(kind, dim):
    r = rotation_matrix(kind, dim, 5)
    np.testing.assert_allclose(r @ r.T, np.eye(dim), atol=1e-12)
    rotation_matrix.cache_clear()
    assert np.array_equal(r, rotation_matrix(kind, dim, 5))
    assert not np.allclose(r, rotation_matrix(kind, dim, 6))


def test_hadamard_structure_and_errors():
    # Three rounds H D3 H D2 H D1 / d**1.5: every entry is a multiple of d**-1.5.
    r = rotation_matrix("hadamard", 16, 0) * 16**1.5
    np.testing.assert_allclose(r, np.rint(r), atol=1e-9)
    with pytest.raises(CodecConfigError, match="power-of-two"):
        rotation_matrix("hadamard", 24, 0)
    with pytest.raises(CodecConfigError, match="rotation"):
        rotation_matrix("dct", 16, 0)


def test_orthogonal_rotation_is_haar_like():
    # A Haar rotation spreads a basis vector: every coordinate of R e_0 has variance 1/d.
    d = 32
    cols = np.stack([rotation_matrix("orthogonal", d, s)[:, 0] for s in range(200)])
    assert abs(np.mean(cols**2) * d - 1) < 1e-9  # unit norm, exactly
    assert abs(np.var(cols[:, 3]) * d - 1) < 0.3


# -- uniform ---------------------------------------------------------------------------------
def _uniform_reference(x3, bits, axis, group_size, side_dtype):
    """Slow, obviously correct KIVI quantizer: a loop over slabs, groups and lanes."""
    x3 = np.asarray(x3, dtype=np.float64)
    out = np.empty_like(x3)
    b, t, d = x3.shape
    length, other = (t, d) if axis == "channel" else (d, t)
    g = group_size or length
    for s in range(b):
        for o in range(other):
            for start in range(0, length, g):
                idx = slice(start, min(start + g, length))
                v = x3[s, idx, o] if axis == "channel" else x3[s, o, idx]
                lo = np.float64(np.asarray(v.min()).astype(side_dtype))
                step = np.float64(
                    np.asarray((v.max() - v.min()) / (2**bits - 1)).astype(side_dtype)
                )
                if step > 0:
                    q = np.clip(np.rint((v - lo) / step), 0, 2**bits - 1)
                else:
                    q = np.zeros_like(v)
                if axis == "channel":
                    out[s, idx, o] = lo + q * step
                else:
                    out[s, o, idx] = lo + q * step
    return out


@pytest.mark.parametrize("axis", ["channel", "token"])
@pytest.mark.parametrize("group_size", [None, 5, 16])
@pytest.mark.parametrize("side_dtype", ["float16", "float32"])
def test_uniform_matches_reference(axis, group_size, side_dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 37, 12)) * rng.uniform(0.1, 5, size=12)
    x[0, :, 3] = 1.5  # a constant channel: step 0
    q, z, s = uniform_quantize(x, 3, axis, group_size, side_dtype)
    assert q.dtype == np.uint8 and q.shape == x.shape and q.max() <= 7
    y = uniform_dequantize(q, z, s, axis, group_size)
    np.testing.assert_allclose(
        y, _uniform_reference(x, 3, axis, group_size, side_dtype), atol=1e-12
    )


@pytest.mark.parametrize("bits", [6, 8])
def test_uniform_mse_is_step_squared_over_12_at_high_rate(bits):
    rng = np.random.default_rng(bits)
    x = rng.standard_normal((4, 1024, 32)) * rng.uniform(0.5, 3, size=32)
    q, z, s = uniform_quantize(x, bits, "channel", 128, "float32")
    y = uniform_dequantize(q, z, s, "channel", 128)
    predicted = np.mean(np.repeat(s.astype(np.float64) ** 2, 128, axis=1)) / 12
    assert abs(np.mean((x - y) ** 2) / predicted - 1) < 0.03


def test_uniform_error_bounded_by_half_step():
    x = np.random.default_rng(0).standard_normal((1, 300, 16))
    q, z, s = uniform_quantize(x, 4, "token", 8, "float32")
    y = uniform_dequantize(q, z, s, "token", 8)
    step = np.repeat(s.astype(np.float64), 8, axis=1).transpose(0, 2, 1)
    assert np.all(np.abs(x - y) <= step / 2 + 1e-6)


# -- ECSQ ------------------------------------------------------------------------------------
def _plugin_entropy(symbols):
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


@pytest.mark.parametrize("step", [0.05, 0.1])
def test_ecsq_sits_quarter_bit_above_shannon_lower_bound(step):
    x = np.random.default_rng(7).standard_normal(1 << 19)
    k = np.rint(x / step)
    mse = np.mean((x - k * step) ** 2)
    assert abs(mse / (step**2 / 12) - 1) < 0.01
    h = 0.5 * math.log2(2 * math.pi * math.e)  # differential entropy of N(0, 1), bits
    slb = h - 0.5 * math.log2(2 * math.pi * math.e * mse)
    gap = _plugin_entropy(k) - slb
    assert abs(gap - 0.5 * math.log2(2 * math.pi * math.e / 12)) < 0.01  # 0.2546 bit


def test_ecsq_relative_steps():
    x = np.stack([np.ones((4, 4)), 10 * np.ones((4, 4)), np.zeros((4, 4))])
    steps, rms = ecsq_steps(x, 0.5, "relative")
    np.testing.assert_allclose(steps, [0.5, 5.0, 0.5])
    assert rms.dtype == np.float32


# -- TurboQuant ------------------------------------------------------------------------------
@pytest.mark.parametrize("dim,rotation", [(64, "hadamard"), (48, "orthogonal")])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_turbo_isotropic_gaussian_matches_theory(dim, rotation, bits):
    """TurboQuant (Thm. 1): for unit vectors D_mse = d * D_LM(bits, d) -- about 0.36, 0.117,
    0.034, 0.0095 -- between the lower bound 4**-b and the upper bound sqrt(3) pi/2 4**-b.
    For N(0, I) vectors (norm independent of direction) that is also the MSE per element."""
    x = np.random.default_rng(bits * 100 + dim).standard_normal((6000, dim))
    q, n = turbo_quantize(x, bits, rotation, seed=11, side_dtype="float32")
    y = turbo_dequantize(q, n, bits, rotation, seed=11)
    mse = np.mean((x - y) ** 2)
    predicted = dim * lloyd_max_sphere(bits, dim).mse_per_element
    assert abs(mse / predicted - 1) < 0.02
    assert abs(mse / MAX_1960[bits] - 1) < 0.06  # the paper's large-d values
    assert 4.0**-bits < mse < math.sqrt(3) * math.pi / 2 * 4.0**-bits


@pytest.mark.parametrize("rotation", ["hadamard", "orthogonal"])
def test_turbo_rotation_makes_distortion_data_independent(rotation):
    """Averaged over seeds, an adversarial direction (a basis vector, which one round of
    randomized Hadamard maps to a flat +-1/sqrt(d) vector) costs what a random one does."""
    d, bits = 64, 2
    x = np.eye(d)[:1]
    rel = []
    for seed in range(200):
        q, n = turbo_quantize(x, bits, rotation, seed=seed)
        rel.append(np.sum((x - turbo_dequantize(q, n, bits, rotation, seed=seed)) ** 2))
    assert abs(np.mean(rel) / (d * lloyd_max_sphere(bits, d).mse_per_element) - 1) < 0.1


def test_turbo_zero_vector():
    x = np.zeros((3, 8))
    q, n = turbo_quantize(x, 2)
    assert np.all(turbo_dequantize(q, n, 2) == 0)
