"""Gaussian R(D) of keys under the attention-logit distortion."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kvinfo.analysis import (
    attention_metric_eigenvalues,
    query_second_moment,
    rd_gaussian_attention,
    rd_gaussian_eigenvalues,
)
from kvinfo.errors import AnalysisInputError


def test_closed_form_on_a_diagonal_case():
    s = np.diag([4.0, 1.0, 0.5, 0.1])
    m = np.diag([1.0, 9.0, 0.0, 2.0])
    mu = np.array([4.0, 9.0, 0.0, 0.2])  # m_i s_i
    scale = 0.5
    for d_att in (0.1, 1.0, 3.0):
        # sum_i min(theta, mu_i) = d_att / scale^2
        target = d_att / scale**2
        ths = np.linspace(0, 9, 900001)
        theta = ths[np.argmin(np.abs(np.minimum(ths[:, None], mu).sum(1) - target))]
        want = sum(0.5 * math.log2(u / theta) for u in mu if u > theta) / 4
        got = rd_gaussian_attention(s, m, d_att, scale=scale)
        assert got == pytest.approx(want, abs=1e-4)
    # the default scale is 1/sqrt(d); a direction no query reads costs nothing
    assert rd_gaussian_attention(s, m, 1.0) == pytest.approx(
        rd_gaussian_attention(s, m, 1.0, scale=0.5))
    assert rd_gaussian_attention(np.diag([1.0, 5.0]), np.diag([1.0, 0.0]), 0.25, scale=1.0) == \
        pytest.approx(0.5 * 0.5 * math.log2(1.0 / 0.25))


def test_identity_metric_is_the_mse_bound():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 6))
    s = a @ a.T
    lam = np.sort(np.linalg.eigvalsh(s))
    for mse in (0.01, 0.3):
        assert rd_gaussian_attention(s, np.eye(6), 6 * mse, scale=1.0) == pytest.approx(
            float(rd_gaussian_eigenvalues(lam, mse)))


def test_invariant_to_an_orthogonal_change_of_basis():
    rng = np.random.default_rng(1)
    d = 8
    k = rng.standard_normal((4000, d)) @ rng.standard_normal((d, d))
    q = rng.standard_normal((2, 3000, d)) @ rng.standard_normal((d, d))
    s = np.cov(k, rowvar=False)
    m = query_second_moment(q)
    o, _ = np.linalg.qr(rng.standard_normal((d, d)))
    s2 = np.cov(k @ o.T, rowvar=False)
    m2 = query_second_moment(q @ o.T)
    assert np.allclose(attention_metric_eigenvalues(s, m), attention_metric_eigenvalues(s2, m2),
                       rtol=1e-8, atol=1e-8)
    grid = np.array([0.01, 0.1, 1.0])
    assert np.allclose(rd_gaussian_attention(s, m, grid), rd_gaussian_attention(s2, m2, grid))


def test_bad_inputs():
    with pytest.raises(AnalysisInputError):
        rd_gaussian_attention(np.eye(2), np.eye(3), 0.1)
    with pytest.raises(AnalysisInputError):
        rd_gaussian_attention(np.eye(2), -np.eye(2), 0.1)
    with pytest.raises(AnalysisInputError):
        rd_gaussian_attention(np.eye(2), np.eye(2), -1.0)
    with pytest.raises(AnalysisInputError):
        query_second_moment(np.zeros((0, 4)))
