"""Streaming statistics and slab analysis: kernels vs references, merges, bad input."""

from __future__ import annotations

import math
import warnings

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvinfo.analysis import (
    AnalysisWarning,
    MomentStats,
    PairStats,
    PatternCounts,
    SlabStats,
    _stats,
    analyze_slab,
    entropy_discrete,
)
from kvinfo.analysis._stats import bit_view, to_float64
from kvinfo.errors import AnalysisInputError


def _bf16(x):
    return np.asarray(x, dtype=np.float32).astype(ml_dtypes.bfloat16)


# ---------------------------------------------------------------------------------------
# pattern counts
# ---------------------------------------------------------------------------------------


def test_count_kernel_matches_numpy_reference():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 1 << 16, size=(777, 5), dtype=np.uint16)
    bits[:, 1] = 7  # a constant channel
    got = np.zeros((5, 1 << 16), np.int32)
    _stats._count_u16_kernel(bits, got)
    ref = np.zeros((5, 1 << 16), np.int64)
    _stats._count_u16_numpy(bits, ref)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_pattern_entropies_match_direct_computation(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3000, 4)) * [1.0, 0.1, 10.0, 1.0]
    x = _bf16(x) if dtype == "bfloat16" else x.astype(dtype)
    pc = PatternCounts(4, dtype)
    for s in range(0, 3000, 700):
        pc.update(bit_view(x[s : s + 700]))
    e = pc.entropies()
    b = bit_view(x).astype(np.int64)
    assert abs(e["h0_pooled_bits_per_element"] - entropy_discrete(b)) < 1e-9
    per = np.mean([entropy_discrete(b[:, j]) for j in range(4)])
    assert abs(e["h0_per_channel_bits_per_element"] - per) < 1e-9
    per_mm = np.mean([entropy_discrete(b[:, j], estimator="miller-madow") for j in range(4)])
    assert abs(e["h0_per_channel_miller_madow_bits_per_element"] - per_mm) < 1e-9
    tb, eb, mb = _stats.FIELD_LAYOUT[dtype]
    assert abs(e["h0_sign_bits_per_element"] - entropy_discrete(b >> (tb - 1))) < 1e-9
    expo = (b >> mb) & ((1 << eb) - 1)
    assert abs(e["h0_exponent_bits_per_element"] - entropy_discrete(expo)) < 1e-9
    mant = b & ((1 << mb) - 1)
    assert abs(e["h0_mantissa_bits_per_element"] - entropy_discrete(mant)) < 1e-9
    # chain rule: H(pattern) = H(sign, exponent) + H(mantissa | sign, exponent)
    h_se = entropy_discrete(b >> mb)
    total = h_se + e["h0_mantissa_given_sign_exponent_bits_per_element"]
    assert abs(total - e["h0_pooled_bits_per_element"]) < 1e-9


def test_pattern_counts_fields_of_simple_values():
    # +-1 and +-2 in equal numbers: sign 1 bit, exponent 1 bit, mantissa 0 bit
    x = _bf16(np.array([[1.0], [-1.0], [2.0], [-2.0]] * 10))
    pc = PatternCounts(1, "bfloat16")
    pc.update(bit_view(x))
    e = pc.entropies()
    assert e["h0_sign_bits_per_element"] == pytest.approx(1.0, abs=1e-12)
    assert e["h0_exponent_bits_per_element"] == pytest.approx(1.0, abs=1e-12)
    assert e["h0_mantissa_bits_per_element"] == pytest.approx(0.0, abs=1e-12)
    assert e["h0_pooled_bits_per_element"] == pytest.approx(2.0, abs=1e-12)


def test_pattern_counts_merge_and_bad_input():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((500, 3)).astype(np.float32)
    a, b, whole = (PatternCounts(3, "float32") for _ in range(3))
    a.update(bit_view(x[:200]))
    b.update(bit_view(x[200:]))
    whole.update(bit_view(x))
    assert a.merge(b).entropies() == whole.entropies()
    with pytest.raises(AnalysisInputError, match="shape"):
        whole.update(bit_view(x[:, :2]))
    with pytest.raises(AnalysisInputError, match="dtype"):
        PatternCounts(3, "int8")
    with pytest.raises(AnalysisInputError, match="no values"):
        PatternCounts(3, "float16").entropies()


# ---------------------------------------------------------------------------------------
# moments and pairs
# ---------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.lists(st.integers(1, 60), min_size=1, max_size=6),
)
def test_moment_stats_any_chunking_matches_numpy(seed, sizes):
    rng = np.random.default_rng(seed)
    n = sum(sizes) + 2
    x = rng.standard_normal((n, 3)) * [1.0, 5.0, 0.01] + [100.0, -3.0, 0.0]
    chunks = np.split(x, np.cumsum(sizes))
    parts = []
    for c in chunks:
        m = MomentStats(3)
        m.update(c)
        parts.append(m)
    acc = parts[0]
    for m in parts[1:][::-1]:  # merge order does not matter
        acc.merge(m)
    assert acc.n == n
    np.testing.assert_allclose(acc.mean, x.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(acc.covariance(), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)
    xc = x - x.mean(axis=0)
    want_k = n * (xc**4).sum(0) / ((xc**2).sum(0) ** 2) - 3.0
    np.testing.assert_allclose(acc.excess_kurtosis(), want_k, rtol=1e-8)


def test_central_moment_kernel_matches_numpy():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 4))
    mean = x.mean(axis=0)
    a3, a4, b3, b4 = (np.zeros(4) for _ in range(4))
    _stats._central_34_kernel(x, mean, a3, a4)
    _stats._central_34_numpy(x, mean, b3, b4)
    np.testing.assert_allclose(a3, b3, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a4, b4, rtol=1e-12)


def test_pair_stats_respect_sequences_and_chunks():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((100, 2))
    starts = np.zeros(100, bool)
    starts[[0, 40]] = True
    ps = PairStats(2)
    for s in range(0, 100, 17):
        ps.update(x[s : s + 17], starts[s : s + 17])
    idx = np.array([t for t in range(1, 100) if not starts[t]])
    z = np.hstack([x[idx - 1], x[idx]])
    assert ps.n == 98
    np.testing.assert_allclose(ps.moments.covariance(), np.cov(z, rowvar=False), atol=1e-12)


def test_innovation_covariance_of_ar1():
    # x_t = A x_{t-1} + e_t with Cov(e) = diag(0.1, 0.2): recovered within 5 %
    rng = np.random.default_rng(5)
    A = np.array([[0.9, 0.05], [0.0, 0.5]])
    x = np.zeros((40000, 2))
    e = rng.standard_normal((40000, 2)) * np.sqrt([0.1, 0.2])
    for t in range(1, 40000):
        x[t] = A @ x[t - 1] + e[t]
    ps = PairStats(2)
    ps.update(x, np.arange(40000) == 0)
    np.testing.assert_allclose(ps.innovation_covariance(), np.diag([0.1, 0.2]), atol=0.01)


def test_slab_stats_counts_nonfinite():
    x = np.ones((10, 3), np.float32)
    x[2, 1] = np.nan
    x[5, 0] = np.inf
    x[5, 2] = np.nan
    s = SlabStats(3, "float32")
    s.update(x + np.arange(10, dtype=np.float32)[:, None])
    assert (s.nonfinite_elements, s.excluded_vectors, s.moments.n) == (3, 2, 8)
    assert s.patterns.n == 10  # the stored patterns of excluded vectors still count
    assert s.pairs.n == 5  # pairs (t-1, t) need both rows finite: 10 - 1 - 4 broken


def test_to_float64_bf16_is_exact():
    x = _bf16(np.random.default_rng(6).standard_normal(1000) * 1e3)
    np.testing.assert_array_equal(to_float64(x), x.astype(np.float64))


# ---------------------------------------------------------------------------------------
# analyze_slab
# ---------------------------------------------------------------------------------------


def _ar1_slab(rng, n, d, rho, seqs=4):
    lam = np.exp(-np.arange(d) / 4.0)
    u = np.linalg.qr(rng.standard_normal((d, d)))[0]
    z = rng.standard_normal((n, d))
    x = np.empty_like(z)
    bounds = np.linspace(0, n, seqs + 1).astype(int)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        x[a] = z[a]
        for t in range(a + 1, b):
            x[t] = rho * x[t - 1] + math.sqrt(1 - rho * rho) * z[t]
    seqs = list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))
    return (x * np.sqrt(lam)) @ u.T, seqs


def test_analyze_slab_gaussian_ar1_known_answers():
    rng = np.random.default_rng(7)
    rho = 0.8
    x, seqs = _ar1_slab(rng, 6000, 12, rho)
    m = analyze_slab(x.astype(np.float32), snr_db=[10.0, 30.0, 40.0], sequences=seqs,
                     knn_samples=2000)
    # full-covariance R(D) <= independent R(D); SLB estimate <= R(D)
    rd = np.asarray(m["rd_gaussian_bits_per_element"])
    assert np.all(rd <= np.asarray(m["rd_gaussian_independent_bits_per_element"]) + 1e-12)
    assert np.all(np.asarray(m["slb_estimate_bits_per_element"]) <= rd + 1e-12)
    # Gaussian source: negentropy and total-correlation estimates agree with the
    # Gaussian values within 0.05 bit per element
    assert abs(m["negentropy_estimate_bits_per_element"]) < 0.05
    assert abs(m["total_correlation_estimate_bits_per_element"]
               - m["total_correlation_gaussian_bits_per_element"]) < 0.05
    # at high rate the innovation saves 1/2 log2(1 / (1 - rho^2)) = 0.737 bit/element (5 %)
    gain = m["temporal_prediction_gain_bits_per_element"][-1]
    assert abs(gain / (0.5 * math.log2(1 / (1 - rho**2))) - 1) < 0.05
    assert abs(m["lag1_correlation_mean"] - rho) < 0.03
    # per-vector code lengths average to R(D) at the stated distortion (1 %)
    assert abs(m["pervector_mean_bits_per_element"] / m["pervector_rd_gaussian_bits_per_element"]
               - 1) < 0.01
    assert m["notes"] == []


def test_analyze_slab_sink_tokens_stand_out():
    rng = np.random.default_rng(17)
    x, seqs = _ar1_slab(rng, 2000, 8, 0.5)
    for a, _ in seqs:
        x[a] *= 12.0  # an attention-sink-like first token in every sequence
    tok = np.arange(2000) + 1000
    m = analyze_slab(x.astype(np.float32), snr_db=[20.0], sequences=seqs, token_ids=tok,
                     knn_samples=500, top_tokens=3)
    top = m["pervector_top_tokens"]
    assert len(top) == 3 and {t["position"] for t in top} == {0}
    assert all(t["token_id"] == t["token_index"] + 1000 for t in top)
    assert m["pervector_first_token_percentile"] > 99
    assert m["pervector_first_token_to_median_ratio"] > 3
    assert m["pervector_p50_bits_per_element"] <= m["pervector_p90_bits_per_element"] \
        <= m["pervector_p99_bits_per_element"] <= m["pervector_max_bits_per_element"]


def test_analyze_slab_bf16_lossless_and_outliers():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2000, 16))
    x[:, 3] += 20.0  # a fixed outlier channel, as in LLM keys
    m = analyze_slab(_bf16(x), snr_db=[20.0], knn_samples=800)
    assert m["outlier_channels"] == [3]
    assert m["storage_bits_per_element"] == 16
    assert 0.95 < m["h0_sign_bits_per_element"] <= 1.0
    assert m["h0_pooled_bits_per_element"] <= (
        m["h0_sign_bits_per_element"] + m["h0_exponent_bits_per_element"]
        + m["h0_mantissa_bits_per_element"] + 1e-9
    )
    assert m["per_channel_model_gain_bits_per_element"] > 0
    assert m["h_knn_estimate_bits_per_element"] is not None


def test_analyze_slab_nan_rows_are_excluded_with_warning():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((400, 4)).astype(np.float32)
    x[10, 2] = np.nan
    x[20] = np.inf
    with pytest.warns(AnalysisWarning, match="5 NaN/Inf values in 2 of 400 vectors"):
        m = analyze_slab(x, snr_db=[10.0], knn_samples=300)
    assert (m["nonfinite_elements"], m["excluded_vectors"]) == (5, 2)
    assert math.isfinite(m["pervector_max_bits_per_element"])
    with pytest.raises(AnalysisInputError, match="all 5 vectors contain NaN"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AnalysisWarning)
            analyze_slab(np.full((5, 2), np.nan, np.float32))


def test_analyze_slab_degenerate_input():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((300, 5)).astype(np.float32)
    x[:, 1] = 0.5  # zero-variance channel
    m = analyze_slab(x, snr_db=[0.0, 20.0], knn_samples=200)
    assert m["zero_variance_channels"] == [1]
    assert m["h_gaussian_bits_per_element"] is None
    assert m["slb_estimate_bits_per_element"] == [None, None]
    assert m["rd_gaussian_bits_per_element"][1] > 0
    assert any("zero-variance" in n for n in m["notes"])
    y = rng.standard_normal((300, 4)).astype(np.float32)
    y[:, 3] = y[:, 0] - y[:, 1]  # singular covariance without a constant channel
    m = analyze_slab(y, snr_db=[20.0], knn_samples=200)
    assert m["h_gaussian_bits_per_element"] is None
    assert any("singular" in n for n in m["notes"])
    with pytest.raises(AnalysisInputError, match="more vectors than dimensions"):
        analyze_slab(rng.standard_normal((8, 16)).astype(np.float32))
    with pytest.raises(AnalysisInputError, match="empty"):
        analyze_slab(np.zeros((0, 4), np.float32))
    with pytest.raises(AnalysisInputError, match="dtype"):
        analyze_slab(np.zeros((10, 2), np.int32))
    with pytest.raises(AnalysisInputError, match="2-D"):
        analyze_slab(np.zeros(10, np.float32))


def test_distinct_pattern_fraction_flags_undersampled_h0():
    """float32 patterns of a few thousand values are nearly all distinct; bf16 ones are not."""
    from kvinfo.analysis import analyze_slab

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2000, 16))
    f32 = analyze_slab(x.astype(np.float32), snr_db=[20.0], knn_samples=200)
    bf16 = analyze_slab(x.astype(ml_dtypes.bfloat16), snr_db=[20.0], knn_samples=200)
    assert f32["h0_distinct_pattern_fraction"] > 0.9
    # the plug-in estimate is then capped near log2(N), far below the 32 stored bits
    assert f32["h0_pooled_bits_per_element"] <= np.log2(x.size) + 1e-9
    assert bf16["h0_distinct_pattern_fraction"] < 0.1
