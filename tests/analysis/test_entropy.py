"""Known-answer and property tests of kvinfo.analysis entropy and rate-distortion functions.

Every tolerance is stated next to its assertion. They are chosen tight enough that a
missing factor of ln 2 (x1.44) or of the dimension d would fail them.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvinfo.analysis import (
    blahut_arimoto,
    dither_stored,
    dr_gaussian,
    entropy_discrete,
    entropy_from_counts,
    entropy_gaussian,
    entropy_knn,
    entropy_knn_corrected,
    entropy_knn_marginals,
    rd_gaussian,
    rd_shannon_lower_bound,
)
from kvinfo.errors import AnalysisInputError

H_GAUSS_1 = 0.5 * math.log2(2 * math.pi * math.e)  # bits, unit variance
H_LAPLACE_1 = (1 + math.log(2)) / math.log(2)  # bits, Laplace with b = 1


def _hb(q):
    return 0.0 if q in (0.0, 1.0) else -q * math.log2(q) - (1 - q) * math.log2(1 - q)


def _random_rotation(rng, d):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


# ---------------------------------------------------------------------------------------
# discrete entropy
# ---------------------------------------------------------------------------------------


def test_entropy_discrete_exact_values():
    # exact: tolerance 1e-12
    assert abs(entropy_discrete(np.arange(8).repeat(3)) - 3.0) < 1e-12
    assert abs(entropy_discrete(counts=[1, 1, 2]) - 1.5) < 1e-12
    assert abs(entropy_discrete(np.array([-5, -5, 7, 7], dtype=np.int64)) - 1.0) < 1e-12
    assert entropy_discrete([4, 4, 4]) == 0.0
    p = np.array([0.5, 0.25, 0.125, 0.125])
    assert abs(float(entropy_from_counts(p * 1000)) - 1.75) < 1e-12


def test_entropy_discrete_geometric_source():
    # geometric(p) has H = h_b(p) / p bits; 200k samples: plug-in within 0.01 bit
    rng = np.random.default_rng(11)
    p = 0.2
    x = rng.geometric(p, size=200_000)
    want = _hb(p) / p
    assert abs(entropy_discrete(x) - want) < 0.01
    assert abs(entropy_discrete(x, estimator="miller-madow") - want) < 0.01


def test_miller_madow_reduces_small_sample_bias():
    # uniform over 64 symbols, 100 samples: plug-in reads low by ~0.4 bit; MM is closer
    rng = np.random.default_rng(12)
    plug, mm = [], []
    for _ in range(200):
        x = rng.integers(0, 64, size=100)
        plug.append(entropy_discrete(x))
        mm.append(entropy_discrete(x, estimator="miller-madow"))
    assert abs(np.mean(mm) - 6.0) < 0.5 * abs(np.mean(plug) - 6.0)


def test_entropy_discrete_bad_input():
    with pytest.raises(AnalysisInputError, match="empty"):
        entropy_discrete([])
    with pytest.raises(AnalysisInputError, match="integers"):
        entropy_discrete([0.5, 1.5])
    with pytest.raises(AnalysisInputError, match="estimator"):
        entropy_discrete([1, 2], estimator="nsb?")
    with pytest.raises(AnalysisInputError, match="exactly one"):
        entropy_discrete([1], counts=[1])
    with pytest.raises(AnalysisInputError, match="non-negative"):
        entropy_from_counts([1, -1])


# ---------------------------------------------------------------------------------------
# Gaussian entropy and R(D)
# ---------------------------------------------------------------------------------------


def test_entropy_gaussian_closed_form():
    # h = 1/2 log2(2 pi e) + 1/(2d) log2 det: exact to 1e-12
    rng = np.random.default_rng(1)
    lam = np.array([9.0, 4.0, 1.0, 0.25])
    u = _random_rotation(rng, 4)
    cov = u @ np.diag(lam) @ u.T
    want = H_GAUSS_1 + 0.5 * np.mean(np.log2(lam))
    assert abs(entropy_gaussian(cov) - want) < 1e-12
    assert abs(entropy_gaussian(2.0) - (H_GAUSS_1 + 0.5)) < 1e-12


def test_entropy_gaussian_bad_input():
    with pytest.raises(AnalysisInputError, match="singular"):
        entropy_gaussian(np.diag([1.0, 0.0]))
    with pytest.raises(AnalysisInputError, match="symmetric"):
        entropy_gaussian([[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(AnalysisInputError, match="square"):
        entropy_gaussian(np.ones((2, 3)))
    with pytest.raises(AnalysisInputError, match="NaN"):
        entropy_gaussian([[np.nan]])


def _rd_reference(lam, D):
    """Reverse water-filling by bisection on theta (slow, obviously correct)."""
    lo, hi = 0.0, float(max(lam))
    if D >= np.mean(lam):
        return 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.mean(np.minimum(mid, lam)) < D:
            lo = mid
        else:
            hi = mid
    th = 0.5 * (lo + hi)
    return float(np.sum([0.5 * math.log2(v / th) for v in lam if v > th]) / len(lam))


def test_rd_gaussian_correlated_known_answer():
    # correlated Gaussian (rotated spectrum): within 1 % of the closed form / reference
    rng = np.random.default_rng(2)
    d = 24
    lam = np.exp(-np.arange(d) / 4.0) * 3.0
    u = _random_rotation(rng, d)
    cov = u @ np.diag(lam) @ u.T
    # below the smallest eigenvalue every component is active: R = 1/2 log2(GM(lam) / D)
    D = 0.5 * lam.min()
    closed = 0.5 * math.log2(math.exp(np.mean(np.log(lam))) / D)
    assert abs(rd_gaussian(cov, D) / closed - 1) < 0.01
    for D in (0.01, 0.05, 0.2, 0.5, 1.0):
        want = _rd_reference(lam, D)
        assert abs(rd_gaussian(cov, D) - want) <= 0.01 * want + 1e-9
    # vectorised call agrees with scalar calls; rate 0 above the mean variance
    grid = np.array([0.01, 0.2, 10.0])
    np.testing.assert_allclose(rd_gaussian(cov, grid), [rd_gaussian(cov, g) for g in grid])
    assert rd_gaussian(cov, 10.0) == 0.0
    assert rd_gaussian(cov, 0.0) == math.inf


def test_rd_gaussian_zero_eigenvalues_cost_nothing():
    cov = np.diag([4.0, 0.0])
    # only one of the two elements carries information: R = 1/2 * 1/2 log2(4 / theta)
    # with mean(min(theta, lam)) = D -> theta = 2D
    assert abs(rd_gaussian(cov, 0.5) - 0.25 * math.log2(4.0 / 1.0)) < 1e-12


def test_dr_gaussian_inverts_rd():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((10, 10))
    cov = a @ a.T / 10
    rates = np.array([0.0, 0.05, 0.5, 1.0, 3.0, 8.0])
    D = dr_gaussian(cov, rates)
    np.testing.assert_allclose(rd_gaussian(cov, D), rates, atol=1e-9)
    assert abs(D[0] - np.trace(cov) / 10) < 1e-12
    assert abs(dr_gaussian([[1.0]], 2.0) - 1 / 16) < 1e-15


def test_shannon_lower_bound_tight_for_gaussian_at_high_rate():
    # SLB with the Gaussian h equals R_G(D) when D <= min eigenvalue (to 1e-12)
    lam = np.array([2.0, 1.0, 0.5])
    h = entropy_gaussian(np.diag(lam))
    for D in (0.5, 0.1, 0.01):
        assert abs(rd_shannon_lower_bound(h, D) - rd_gaussian(np.diag(lam), D)) < 1e-12
    assert rd_shannon_lower_bound(h, 100.0) == 0.0


def test_rd_bad_input():
    with pytest.raises(AnalysisInputError, match="mse"):
        rd_gaussian(np.eye(2), -1.0)
    with pytest.raises(AnalysisInputError, match="semi-definite"):
        rd_gaussian(np.diag([1.0, -1.0]), 0.1)
    with pytest.raises(AnalysisInputError, match="rate"):
        dr_gaussian(np.eye(2), -0.5)


@st.composite
def _covariances(draw):
    d = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    rank = draw(st.integers(1, d))
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, rank)) * rng.uniform(0.1, 3.0, size=rank)
    return a @ a.T


@settings(max_examples=40, deadline=None)
@given(_covariances())
def test_rd_properties(cov):
    d = cov.shape[0]
    var = np.trace(cov) / d
    D = var * np.logspace(-4, 0.2, 60)
    r = rd_gaussian(cov, D)
    # non-increasing
    assert np.all(np.diff(r) <= 1e-12)
    # convex in D: second differences on a non-uniform grid via slopes non-decreasing
    slopes = np.diff(r) / np.diff(D)
    assert np.all(np.diff(slopes) >= -1e-9 * (1 + np.abs(slopes[:-1])))
    # joint <= independent channels
    r_ind = rd_gaussian(np.diag(np.diag(cov)), D)
    assert np.all(r <= r_ind + 1e-12)
    # SLB with the Gaussian entropy <= Gaussian R(D), whenever h is finite
    lam = np.linalg.eigvalsh(cov)
    if lam.min() > 1e-9 * lam.max():
        slb = rd_shannon_lower_bound(entropy_gaussian(cov), D)
        assert np.all(slb <= r + 1e-9)


# ---------------------------------------------------------------------------------------
# Blahut-Arimoto
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.5, 0.3, 0.11])
@pytest.mark.parametrize("s", [-1.5, -3.0, -6.0])
def test_blahut_arimoto_bernoulli_hamming(p, s):
    # R(D) = h(p) - h(D) for D < min(p, 1-p); slope s (nats) picks D = 1 / (1 + e^-s)
    r, dist = blahut_arimoto([1 - p, p], [[0, 1], [1, 0]], slope=s)
    d_expected = 1.0 / (1.0 + math.exp(-s))
    if d_expected < min(p, 1 - p):
        assert abs(dist - d_expected) < 1e-3
        assert abs(r - (_hb(p) - _hb(dist))) < 1e-3  # tolerance 1e-3 bit
    else:  # slope beyond the R = 0 point
        assert r < 1e-3


def test_blahut_arimoto_uniform_ternary_hamming():
    # uniform m-ary with Hamming distortion: R(D) = log2 m - h(D) - D log2(m - 1)
    m = 3
    r, dist = blahut_arimoto(np.ones(m), 1 - np.eye(m), slope=-4.0)
    want = math.log2(m) - _hb(dist) - dist * math.log2(m - 1)
    assert abs(r - want) < 1e-3


def test_blahut_arimoto_bad_input():
    with pytest.raises(AnalysisInputError, match="slope"):
        blahut_arimoto([0.5, 0.5], [[0, 1], [1, 0]], slope=0.5)
    with pytest.raises(AnalysisInputError, match="shape"):
        blahut_arimoto([0.5, 0.5], [[0, 1]], slope=-1)
    with pytest.raises(AnalysisInputError, match="non-negative"):
        blahut_arimoto([0.5, 0.5], [[0, -1], [1, 0]], slope=-1)


# ---------------------------------------------------------------------------------------
# kNN entropy
# ---------------------------------------------------------------------------------------


def test_knn_raw_low_dimension_known_answers():
    # raw KL at d <= 3, n = 6000: within 0.05 bit per element (ln2 error would be > 0.5)
    rng = np.random.default_rng(21)
    a = np.array([[2.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.3, 0.5]])
    logdet = math.log2(abs(np.linalg.det(a))) / 3
    g = rng.standard_normal((6000, 3)) @ a.T
    assert abs(entropy_knn(g) - (H_GAUSS_1 + logdet)) < 0.05
    lap = rng.laplace(size=(6000, 3)) @ a.T
    assert abs(entropy_knn(lap) - (H_LAPLACE_1 + logdet)) < 0.05
    u = rng.uniform(0.0, [4.0, 0.5], size=(6000, 2))  # h = (2 - 1) / 2 bits per element
    assert abs(entropy_knn(u) - 0.5) < 0.05


def test_knn_corrected_moderate_dimension_known_answers():
    # prewhitened + Gaussian-bias-corrected KL at d = 16, n = 3000: within 0.05 bit/element
    rng = np.random.default_rng(22)
    d = 16
    a = _random_rotation(rng, d) * np.exp(-np.arange(d) / 6.0)
    logdet = float(np.sum(np.log2(np.exp(-np.arange(d) / 6.0)))) / d
    g = rng.standard_normal((3000, d)) @ a.T
    lap = rng.laplace(size=(3000, d)) @ a.T
    est_g = entropy_knn_corrected(g, details=True)
    assert abs(est_g["estimate"] - (H_GAUSS_1 + logdet)) < 0.05
    assert abs(entropy_knn_corrected(lap) - (H_LAPLACE_1 + logdet)) < 0.05
    assert abs(est_g["raw"] - est_g["estimate"]) < 0.1


def test_knn_corrected_at_head_dim_64():
    # d = 64, n = 2000 (the analyze defaults): corrected within 0.05 bit/element, while the
    # raw estimate is off by more than 0.1 (the bias the correction exists for)
    rng = np.random.default_rng(24)
    d = 64
    scale = np.exp(-np.arange(d) / 20.0)
    x = (rng.standard_normal((2000, d)) * scale) @ _random_rotation(rng, d).T
    want = H_GAUSS_1 + float(np.mean(np.log2(scale)))
    est = entropy_knn_corrected(x, details=True)
    assert abs(est["estimate"] - want) < 0.05
    assert abs(est["raw"] - want) > 0.1


def test_knn_marginals_and_dither_of_bf16():
    rng = np.random.default_rng(23)
    x = rng.laplace(scale=0.5, size=(20000, 2))  # h = log2(2 e b) = log2(e) bits
    assert np.all(np.abs(entropy_knn_marginals(x) - math.log2(math.e)) < 0.05)
    stored = (rng.standard_normal((20000, 2)) * 3.0).astype(ml_dtypes.bfloat16)
    with pytest.raises(AnalysisInputError, match="dither"):
        entropy_knn_marginals(stored.astype(np.float64))
    h = entropy_knn_marginals(dither_stored(stored, rng))
    assert np.all(np.abs(h - (H_GAUSS_1 + math.log2(3.0))) < 0.05)


def test_knn_bad_input():
    with pytest.raises(AnalysisInputError, match="duplicates"):
        entropy_knn(np.zeros((50, 2)))
    with pytest.raises(AnalysisInputError, match="NaN"):
        entropy_knn(np.array([[0.0, 1.0], [np.nan, 1.0], [2.0, 3.0], [1, 1], [5, 5], [4, 6]]))
    with pytest.raises(AnalysisInputError, match="k=4"):
        entropy_knn(np.ones((3, 2)))
    with pytest.raises(AnalysisInputError, match="more vectors than"):
        entropy_knn_corrected(np.random.default_rng(0).standard_normal((10, 12)))
    x = np.random.default_rng(0).standard_normal((200, 3))
    x[:, 2] = 2 * x[:, 0]
    with pytest.raises(AnalysisInputError, match="singular"):
        entropy_knn_corrected(x)
