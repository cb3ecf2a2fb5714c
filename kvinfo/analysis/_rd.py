"""Rate-distortion functions: Gaussian reverse water-filling, Shannon lower bound, Blahut-Arimoto.

Rates are bits per element (per scalar of the vector), distortion is mean squared error per
element. See ``docs/analysis.md`` for the formulas and references.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp

from ..errors import AnalysisInputError
from ._entropy import _as_cov

__all__ = [
    "gaussian_eigenvalues",
    "water_level",
    "rd_gaussian",
    "rd_gaussian_eigenvalues",
    "dr_gaussian",
    "rd_shannon_lower_bound",
    "blahut_arimoto",
]

_LOG2_2PIE = math.log2(2.0 * math.pi * math.e)


def gaussian_eigenvalues(cov) -> np.ndarray:
    """Eigenvalues of a covariance matrix, ascending, with round-off negatives set to 0.

    Raises
    ------
    AnalysisInputError
        Not square/symmetric, NaN/Inf, or clearly negative eigenvalues (not a covariance).
    """
    c = _as_cov(cov)
    w = np.linalg.eigvalsh(c)
    top = max(float(w[-1]), 0.0)
    if w[0] < -1e-8 * max(top, 1e-300) and w[0] < -1e-300:
        raise AnalysisInputError(
            f"covariance is not positive semi-definite (eigenvalue {w[0]:.3g}, largest {top:.3g})"
        )
    return np.maximum(w, 0.0)


def _check_mse(mse) -> np.ndarray:
    m = np.asarray(mse, dtype=np.float64)
    if np.any(np.isnan(m)):
        raise AnalysisInputError("mse contains NaN")
    if np.any(m < 0):
        raise AnalysisInputError(f"mse must be >= 0; got minimum {float(np.min(m)):.3g}")
    return m


def water_level(eigenvalues, mse) -> np.ndarray:
    """Reverse water-filling level ``theta`` with ``mean(min(theta, lambda_i)) = mse``.

    ``eigenvalues`` must be ascending and non-negative (as from :func:`gaussian_eigenvalues`).
    For ``mse >= mean(lambda)`` the level is ``max(lambda)`` (rate 0).
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    d = lam.size
    m = _check_mse(mse)
    target = np.minimum(m * d, lam.sum())
    csum = np.concatenate([[0.0], np.cumsum(lam)])
    # F_j = f(lambda_j) = sum_{i<=j} lambda_i + (d - j) lambda_j, nondecreasing in j
    j_idx = np.arange(1, d + 1)
    F = csum[1:] + (d - j_idx) * lam
    j = np.searchsorted(F, target, side="right")
    j = np.minimum(j, d - 1)
    theta = (target - csum[j]) / (d - j)
    return np.where(target >= lam.sum(), lam[-1], theta)


def rd_gaussian_eigenvalues(eigenvalues, mse):
    """:func:`rd_gaussian` from covariance eigenvalues (ascending, non-negative)."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    m = _check_mse(mse)
    d = lam.size
    theta = water_level(lam, m)
    th = np.asarray(theta)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        per = 0.5 * np.log2(lam / th)
    per = np.where((lam > th) & (th > 0), per, 0.0)
    r = per.sum(axis=-1) / d
    # mse = 0 with any positive eigenvalue: infinite rate
    r = np.where((m <= 0) & (lam[-1] > 0), np.inf, r)
    return float(r) if np.ndim(r) == 0 else r


def rd_gaussian(cov, mse):
    """Rate-distortion function of a Gaussian vector source, bits per element.

    Reverse water-filling on the eigenvalues ``lambda_i`` of ``cov``: find ``theta`` with
    ``(1/d) sum_i min(theta, lambda_i) = mse`` and return
    ``R = (1/d) sum_i max(0, 1/2 log2(lambda_i / theta))``.

    Under MSE this is the exact R(D) of a Gaussian source and an **upper bound** on the
    R(D) of any source with the same covariance.

    Parameters
    ----------
    cov : array_like, shape (d, d)
        Covariance (positive semi-definite; zero eigenvalues cost nothing).
    mse : float or array_like
        Distortion, mean squared error per element (``>= 0``).

    Returns
    -------
    float or numpy.ndarray
        Bits per element, same shape as ``mse`` (``inf`` at ``mse = 0``).

    Examples
    --------
    >>> rd_gaussian([[1.0]], 0.25)  # 1/2 log2(1 / 0.25)
    1.0
    >>> rd_gaussian(np.diag([4.0, 0.01]), [0.01, 2.005]).round(4).tolist()
    [2.161, 0.0]
    """
    return rd_gaussian_eigenvalues(gaussian_eigenvalues(cov), mse)


def dr_gaussian(cov, rate):
    """Distortion-rate function of a Gaussian vector source: the inverse of :func:`rd_gaussian`.

    Parameters
    ----------
    cov : array_like, shape (d, d)
    rate : float or array_like
        Bits per element (``>= 0``).

    Returns
    -------
    float or numpy.ndarray
        Mean squared error per element.

    Examples
    --------
    >>> dr_gaussian([[1.0]], 1.0)
    0.25
    >>> cov = np.diag([4.0, 1.0, 0.01])
    >>> float(np.round(rd_gaussian(cov, dr_gaussian(cov, 0.7)), 10))
    0.7
    """
    lam = gaussian_eigenvalues(cov)[::-1]  # descending
    r = np.asarray(rate, dtype=np.float64)
    if np.any(np.isnan(r)) or np.any(r < 0):
        raise AnalysisInputError("rate must be >= 0 bits per element (and not NaN)")
    d = lam.size
    if lam[0] <= 0:
        out = np.zeros_like(r)
        return float(out) if out.ndim == 0 else out
    total = r * d  # bits per vector
    pos = lam > 0
    log_lam = np.where(pos, np.log2(np.where(pos, lam, 1.0)), -np.inf)
    csum_log = np.cumsum(np.where(pos, log_lam, 0.0))
    # B_m: rate at which component m+1 becomes active (theta = lambda_{m+1}), m = 1..d-1
    m_idx = np.arange(1, d)
    with np.errstate(invalid="ignore"):
        B = 0.5 * (csum_log[:-1] - m_idx * log_lam[1:])
    B = np.where(pos[1:], B, np.inf)
    m_active = 1 + np.searchsorted(B, total, side="right")
    log_theta = (csum_log[m_active - 1] - 2.0 * total) / m_active
    theta = np.exp2(log_theta)
    dist = np.minimum(theta[..., None], lam).mean(axis=-1)
    dist = np.where(np.isinf(total), 0.0, dist)
    return float(dist) if np.ndim(dist) == 0 else dist


def rd_shannon_lower_bound(h, mse):
    """Shannon lower bound on R(D) under MSE, bits per element.

    ``R(D) >= max(0, h - 1/2 log2(2 pi e D))`` with ``h`` the differential entropy of the
    source in bits per element. A bound when ``h`` is exact; with an estimated ``h`` it is
    an estimate of a bound.

    Examples
    --------
    >>> rd_shannon_lower_bound(0.5 * np.log2(2 * np.pi * np.e), 0.25)  # Gaussian: tight
    1.0
    """
    hh = np.asarray(h, dtype=np.float64)
    m = _check_mse(mse)
    with np.errstate(divide="ignore"):
        r = np.maximum(hh - 0.5 * (_LOG2_2PIE + np.log2(m)), 0.0)
    return float(r) if np.ndim(r) == 0 else r


def blahut_arimoto(
    p_x, distortion_matrix, slope: float, *, tol: float = 1e-10, max_iter: int = 100_000
) -> tuple[float, float]:
    """One point of the rate-distortion function of a discrete source (Blahut 1972).

    Iterates ``Q(y|x) ∝ q(y) exp(s d(x, y))``, ``q(y) = sum_x p(x) Q(y|x)`` until Blahut's
    upper and lower bounds on ``R`` agree within ``tol`` bits.

    Parameters
    ----------
    p_x : array_like, shape (m,)
        Source probabilities (normalised here).
    distortion_matrix : array_like, shape (m, k)
        ``d(x, y) >= 0`` for each source letter ``x`` and reproduction letter ``y``.
    slope : float
        Blahut's parameter ``s < 0``, in **nats** per unit of distortion: the slope of R(D)
        at the returned point is ``s`` nats, i.e. ``s / ln 2`` bits, per unit distortion.
    tol : float
        Stop when the gap between Blahut's bounds is below ``tol`` bits.
    max_iter : int

    Returns
    -------
    (rate_bits, distortion) : tuple of float
        Rate in bits per source symbol and the expected distortion.

    Examples
    --------
    >>> p = 0.3
    >>> r, d = blahut_arimoto([1 - p, p], [[0, 1], [1, 0]], slope=-2.0)
    >>> hb = lambda q: -q * np.log2(q) - (1 - q) * np.log2(1 - q)
    >>> bool(abs(r - (hb(p) - hb(d))) < 1e-6)
    True
    """
    p = np.asarray(p_x, dtype=np.float64)
    dm = np.asarray(distortion_matrix, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise AnalysisInputError(f"p_x must be a non-empty 1-D array; got shape {p.shape}")
    if dm.ndim != 2 or dm.shape[0] != p.size or dm.shape[1] == 0:
        raise AnalysisInputError(
            f"distortion_matrix must have shape ({p.size}, k); got {dm.shape}"
        )
    if not (np.all(np.isfinite(p)) and np.all(p >= 0) and p.sum() > 0):
        raise AnalysisInputError("p_x must be finite, non-negative and not all zero")
    if not (np.all(np.isfinite(dm)) and np.all(dm >= 0)):
        raise AnalysisInputError("distortion_matrix must be finite and non-negative")
    if not (math.isfinite(slope) and slope < 0):
        raise AnalysisInputError(f"slope must be a finite negative number; got {slope!r}")
    p = p / p.sum()
    keep = p > 0
    p, dm = p[keep], dm[keep]
    sd = slope * dm
    log_q = np.full(dm.shape[1], -math.log(dm.shape[1]))
    for _ in range(max_iter):
        # log sum_y q(y) e^{s d(x,y)} for each x
        log_norm = logsumexp(log_q[None, :] + sd, axis=1)
        # c(y) = sum_x p(x) e^{s d(x,y)} / norm(x)
        log_c = logsumexp(np.log(p)[:, None] + sd - log_norm[:, None], axis=0)
        q = np.exp(log_q)
        gap = (np.max(log_c) - np.sum(q * np.exp(log_c) * log_c)) / math.log(2.0)
        log_q = log_q + log_c
        log_q -= logsumexp(log_q)
        if gap < tol:
            break
    log_norm = logsumexp(log_q[None, :] + sd, axis=1)
    log_Q = log_q[None, :] + sd - log_norm[:, None]
    Q = np.exp(log_Q)
    distortion = float(np.sum(p[:, None] * Q * dm))
    rate_nats = float(np.sum(p[:, None] * Q * (log_Q - log_q[None, :])))
    return max(rate_nats, 0.0) / math.log(2.0), distortion
