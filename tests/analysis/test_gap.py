"""The model-side terms of the gap decomposition (kvinfo.analysis.gap) against closed forms
and slow references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kvinfo.analysis import (
    HIGH_RATE_ECSQ_LOSS_BITS,
    allocation_loss,
    ecsq_gaussian_rate,
    gaussian_multi_information,
    rd_gaussian_eigenvalues,
    scalar_quantizer_loss,
)
from kvinfo.errors import AnalysisInputError


def _mc_ecsq(sigma, step, n=400_000, seed=0):
    """Slow reference: quantize samples, centroid per bin, plug-in entropy and MSE."""
    x = np.random.default_rng(seed).normal(0.0, sigma, n)
    k = np.rint(x / step).astype(np.int64)
    _, inv, counts = np.unique(k, return_inverse=True, return_counts=True)
    cent = np.bincount(inv, weights=x) / counts
    p = counts / n
    return float(-(p * np.log2(p)).sum()), float(np.mean((x - cent[inv]) ** 2))


@pytest.mark.parametrize("step", [0.3, 1.0, 2.5])
def test_ecsq_rate_matches_a_monte_carlo_quantizer(step):
    h_mc, d_mc = _mc_ecsq(1.0, step)
    rate, found = ecsq_gaussian_rate([1.0], d_mc)
    assert found == pytest.approx(step, rel=0.02)
    assert rate == pytest.approx(h_mc, abs=0.01)


def test_scalar_quantizer_loss_limits_and_sign():
    lam = np.logspace(-3, 0, 32)  # three decades
    high = scalar_quantizer_loss(lam, 1e-7)
    assert high == pytest.approx(HIGH_RATE_ECSQ_LOSS_BITS, abs=2e-3)
    assert HIGH_RATE_ECSQ_LOSS_BITS == pytest.approx(0.2546, abs=1e-4)
    losses = [scalar_quantizer_loss(lam, f * lam.mean()) for f in np.logspace(-6, 0, 13)]
    assert min(losses) >= 0.0
    assert scalar_quantizer_loss([1.0], 0.97) < 0.03  # low rate: it vanishes
    assert scalar_quantizer_loss(lam, 2 * lam.mean()) == 0.0
    with pytest.raises(AnalysisInputError):
        ecsq_gaussian_rate([1.0], 0.0)
    with pytest.raises(AnalysisInputError):
        ecsq_gaussian_rate([np.nan], 0.1)


def test_multi_information_of_quantized_correlated_gaussians():
    rng = np.random.default_rng(1)
    d, n = 6, 40_000
    a = rng.standard_normal((d, d))
    cov = a @ a.T + 0.2 * np.eye(d)
    x = rng.multivariate_normal(np.zeros(d), cov, n)
    k = np.rint(x / 0.05)  # fine: the symbols are the channels
    want = 0.5 * (np.sum(np.log2(np.diag(cov))) - np.linalg.slogdet(cov)[1] / math.log(2)) / d
    assert gaussian_multi_information(k) == pytest.approx(want, rel=0.03)
    # independent channels: about 0 (bias-corrected), never negative
    ind = np.rint(rng.standard_normal((n, d)) * np.arange(1, d + 1) / 0.1)
    v = gaussian_multi_information(ind)
    assert 0.0 <= v < 2e-3
    # constant channels are left out; too few rows or too many channels: not estimable
    kc = np.hstack([k, np.zeros((n, 2))])
    assert gaussian_multi_information(kc) == pytest.approx(want * d / (d + 2), rel=0.03)
    assert gaussian_multi_information(k[:8]) is None
    assert gaussian_multi_information(np.zeros((10, 2000)), max_channels=1024) is None


def test_allocation_loss_zero_for_water_filling_positive_otherwise():
    rng = np.random.default_rng(2)
    d, n = 8, 20_000
    lam = np.logspace(0, 2, d)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    white = 0.1 * rng.standard_normal((n, d))  # water-filling at high rate: white error
    assert allocation_loss(lam, q, white) < 1e-3
    # all the error in the strongest component: a worse spectrum of the same total
    e = np.zeros((n, d))
    e[:, -1] = math.sqrt(d) * 0.1 * rng.standard_normal(n)
    bad = allocation_loss(lam, q, e @ q.T)
    dj = np.mean((e @ q.T @ q) ** 2, axis=0)
    want = np.mean(np.where(lam > np.maximum(dj, 1e-12 * dj.mean()),
                            0.5 * np.log2(lam / np.maximum(dj, 1e-12 * dj.mean())), 0.0))
    want -= rd_gaussian_eigenvalues(np.sort(lam), dj.mean())
    assert bad == pytest.approx(want, rel=1e-9) and bad > 0.5
