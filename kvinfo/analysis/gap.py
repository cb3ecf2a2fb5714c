"""The model-side terms of a codec's gap to the Gaussian R(D).

kvinfo bench splits ``bits - R_G(D)`` of every codec on every slab into named terms
(``docs/analysis.md``, section "Gap decomposition"). Most terms are read off the codec's own
stream (side information, coder overhead, pooled versus per-channel tables); two need a
model and live here:

* :func:`ecsq_gaussian_rate` -- the rate of the reference scalar quantizer: one uniform
  mid-tread step ``Delta`` (thresholds at half steps, reconstruction at each bin's centroid)
  applied
  to each principal component ``N(0, lambda_i)`` of the Gaussian model, entropy coded per
  component, ``Delta`` solved so that the mean squared error per element is ``D``. Its
  distance to the Gaussian R(D) is the **scalar-quantizer loss**
  :func:`scalar_quantizer_loss`: about ``1/2 log2(pi e / 6) = 0.254`` bit per element at
  high rate (Gish-Pierce), falling to 0 as the rate goes to 0. It is never negative (each
  component's entropy is at least its own R(D) at its distortion, and water-filling is the
  best split of the distortion).
* :func:`allocation_loss` -- the **distortion-allocation loss**: the codec's error spread
  over the principal components, ``D_j = E[(v_j . (x - x_hat))^2]``, against reverse
  water-filling: ``(1/d) sum_j max(0, 1/2 log2(lambda_j / D_j)) - R_G(D)`` with
  ``D = (1/d) sum_j D_j``. It is what a Gaussian source would need for that error spectrum
  beyond the best spectrum of the same total; never negative (water-filling minimises
  the sum), 0 for white error at high rate.
* :func:`gaussian_multi_information` -- the **decorrelation loss** of a code that codes its
  channels independently: the multi-information ``sum_i H(k_i) - H(k)`` of the codec's
  symbols ``k`` under a Gaussian model, ``-1/2 log2 det R`` of their sample correlation matrix
  ``R`` (Hadamard's inequality: never negative), bias-corrected for the sample size and
  clipped at 0. At high rate, for symbols that are the quantized channels, it is
  ``R_ind(D) - R_G(D)`` of the analysis; for a codec that decorrelates first (``klt``) it is
  close to 0.

References
----------
H. Gish, J. N. Pierce, "Asymptotically efficient quantizing", IEEE Trans. IT 14(5), 1968.
T. M. Cover, J. A. Thomas, *Elements of Information Theory*, 2nd ed., Wiley 2006,
theorem 10.3.3 (reverse water-filling) and theorem 17.9.2 (Hadamard's inequality).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr

from ..errors import AnalysisInputError
from ._rd import rd_gaussian_eigenvalues

__all__ = [
    "ecsq_gaussian_rate",
    "scalar_quantizer_loss",
    "gaussian_multi_information",
    "allocation_loss",
    "HIGH_RATE_ECSQ_LOSS_BITS",
]

#: ``1/2 log2(pi e / 6)``: the high-rate loss of entropy-coded uniform scalar quantization
HIGH_RATE_ECSQ_LOSS_BITS = 0.5 * math.log2(math.pi * math.e / 6.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)
# step / sigma below this: the high-rate formulas are exact to far better than 1e-12
_FINE = 0.05
_MAX_BINS = int(10.0 / _FINE) + 2


def _component(sigma: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Entropy (bits) and MSE of the mid-tread uniform quantizer of ``N(0, sigma^2)``,
    reconstruction at the centroids."""
    h = np.zeros(sigma.shape)
    d = np.zeros(sigma.shape)
    pos = sigma > 0
    fine = pos & (step < _FINE * sigma)
    h[fine] = np.log2(sigma[fine] * math.sqrt(2.0 * math.pi * math.e) / step)
    d[fine] = step * step / 12.0
    coarse = pos & ~fine
    if np.any(coarse):
        s = sigma[coarse][:, None]
        r = step / s  # step in units of sigma, >= _FINE
        nb = min(_MAX_BINS, int(math.ceil(10.0 / float(np.min(r)))) + 1)
        k = np.arange(0, nb + 1, dtype=np.float64)[None, :]
        lo = (k - 0.5) * r
        lo[:, 0] = 0.0  # bin 0 is [-r/2, r/2]: its right half from 0
        hi = (k + 0.5) * r
        phi_lo = np.exp(-0.5 * lo * lo) / _SQRT2PI
        phi_hi = np.exp(-0.5 * hi * hi) / _SQRT2PI
        p = np.maximum(ndtr(-lo) - ndtr(-hi), 0.0)  # one side (upper tails: no cancellation)
        m1 = phi_lo - phi_hi  # E[z ; lo < z < hi]
        m2 = p - (hi * phi_hi - lo * phi_lo)  # E[z^2 ; lo < z < hi]
        # reconstruction at the bin's centroid m1 / p (bin 0's is 0 by symmetry)
        with np.errstate(divide="ignore", invalid="ignore"):
            sq = np.where(p > 0, np.maximum(m2 - m1 * m1 / p, 0.0), 0.0)
        sq[:, 0] = m2[:, 0]
        # bin 0 (both halves) has probability 2 p_0; bin k >= 1 appears on both sides, p_k each
        p0 = 2.0 * p[:, 0]
        p1 = p[:, 1:]
        with np.errstate(divide="ignore", invalid="ignore"):
            e0 = np.where(p0 > 0, -p0 * np.log2(p0), 0.0)
            e1 = np.where(p1 > 0, -p1 * np.log2(p1), 0.0)
        h[coarse] = e0 + 2.0 * e1.sum(axis=1)
        d[coarse] = (2.0 * sq.sum(axis=1)) * s[:, 0] ** 2
    return h, d


def ecsq_gaussian_rate(eigenvalues, mse: float) -> tuple[float, float]:
    """Rate of the reference ECSQ on the Gaussian model at distortion ``mse``.

    Parameters
    ----------
    eigenvalues : array_like
        Covariance eigenvalues of the slab (the principal components' variances).
    mse : float
        Mean squared error per element.

    Returns
    -------
    (float, float)
        ``(rate_bits_per_element, step)``: the mean over components of the entropy of the
        mid-tread uniform quantizer with step ``step`` (centroid reconstruction) of
        ``N(0, lambda_i)``, ``step``
        chosen so that the mean MSE over components is ``mse``. ``mse`` at or above the
        mean eigenvalue gives ``(0.0, inf)``.

    Examples
    --------
    >>> r, step = ecsq_gaussian_rate([1.0], 1e-4)   # high rate: R_G + 0.254
    >>> round(r - 0.5 * math.log2(1e4), 2)
    0.25
    """
    lam = np.maximum(np.asarray(eigenvalues, dtype=np.float64).ravel(), 0.0)
    if lam.size == 0 or not np.all(np.isfinite(lam)):
        raise AnalysisInputError("eigenvalues must be a non-empty array of finite numbers")
    if not (math.isfinite(mse) and mse > 0):
        raise AnalysisInputError(f"mse must be a finite number > 0; found {mse!r}")
    if mse >= float(lam.mean()):
        return 0.0, math.inf
    sigma = np.sqrt(lam)

    def dist(step):
        return float(np.mean(_component(sigma, step)[1]))

    # the MSE grows with the step (from ~step^2/12 to the mean eigenvalue): bisect on log step
    lo = math.sqrt(12.0 * mse) * 1e-3
    hi = math.sqrt(12.0 * mse)
    while dist(hi) < mse:
        lo, hi = hi, hi * 2.0
        if hi > 1e6 * math.sqrt(float(lam.max())):  # pragma: no cover - defensive
            return 0.0, math.inf
    for _ in range(80):
        mid = math.sqrt(lo * hi)
        if dist(mid) < mse:
            lo = mid
        else:
            hi = mid
        if hi / lo - 1.0 < 1e-12:
            break
    step = math.sqrt(lo * hi)
    return float(np.mean(_component(sigma, step)[0])), step


def scalar_quantizer_loss(eigenvalues, mse: float) -> float:
    """``ecsq_gaussian_rate - R_G(D)``, bits per element (>= 0; 0.254 at high rate).

    Examples
    --------
    >>> round(scalar_quantizer_loss([4.0, 1.0, 0.25], 1e-5), 2)
    0.25
    >>> scalar_quantizer_loss([4.0, 1.0], 10.0)   # everything dropped: no rate, no loss
    0.0
    """
    lam = np.sort(np.maximum(np.asarray(eigenvalues, dtype=np.float64).ravel(), 0.0))
    r, _ = ecsq_gaussian_rate(lam, mse)
    if r == 0.0:
        return 0.0
    return max(r - float(rd_gaussian_eigenvalues(lam, mse)), 0.0)


def gaussian_multi_information(symbols, max_channels: int = 1024) -> float | None:
    """Gaussian-model multi-information of a symbol array, bits per symbol.

    ``symbols`` is ``(rows, channels)`` (leading axes are flattened into rows). Channels
    whose symbols never change carry no information and are left out. The estimate is
    ``-1/2 log2 det R`` of the channels' sample correlation matrix, minus its expectation
    ``c (c - 1) / (4 n ln 2)`` bits under independence (``c`` channels, ``n`` rows), clipped
    at 0, divided by the number of channels of the array.

    Returns
    -------
    float or None
        None when it cannot be estimated: fewer rows than twice the number of varying
        channels, or more than ``max_channels`` channels.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> z = rng.standard_normal((20000, 1))
    >>> k = np.rint(4 * np.hstack([z, z + 0.1 * rng.standard_normal((20000, 1))]))
    >>> bool(gaussian_multi_information(k) > 1.0)         # nearly a copy: > 1 bit per symbol
    True
    >>> gaussian_multi_information(np.rint(4 * rng.standard_normal((20000, 2)))) < 1e-3
    True
    """
    s = np.asarray(symbols)
    if s.ndim < 2:
        s = s.reshape(-1, 1)
    s = s.reshape(-1, s.shape[-1]).astype(np.float64)
    n, c_all = s.shape
    if c_all > max_channels:
        return None
    if c_all == 0 or n == 0:
        return 0.0
    sd = s.std(axis=0)
    keep = sd > 0
    c = int(keep.sum())
    if c <= 1:
        return 0.0
    if n < 2 * c:
        return None
    z = (s[:, keep] - s[:, keep].mean(axis=0)) / sd[keep]
    r = (z.T @ z) / n
    r = 0.5 * (r + r.T)
    np.fill_diagonal(r, 1.0)
    sign, logdet = np.linalg.slogdet(r + 1e-12 * np.eye(c))
    if sign <= 0:  # numerically singular: exact linear dependence
        w = np.linalg.eigvalsh(r)
        logdet = float(np.sum(np.log(np.maximum(w, 1e-12))))
    info_bits = -0.5 * logdet / math.log(2.0)
    info_bits -= c * (c - 1) / (4.0 * n * math.log(2.0))
    return max(info_bits, 0.0) / c_all


def allocation_loss(eigenvalues, eigenvectors, errors) -> float:
    """Distortion-allocation loss of an error sample against reverse water-filling, bits
    per element (>= 0).

    Parameters
    ----------
    eigenvalues : (d,) array
        Covariance eigenvalues ``lambda_j`` of the source.
    eigenvectors : (d, d) array
        The matching eigenvectors (columns), orthonormal.
    errors : (n, d) array
        Reconstruction errors ``x - x_hat``.

    Examples
    --------
    >>> import numpy as np
    >>> lam, v = np.array([1.0, 1.0]), np.eye(2)
    >>> e = np.array([[0.2, 0.1], [-0.2, -0.1]])    # D_j = 0.04, 0.01 instead of 0.025 each
    >>> round(allocation_loss(lam, v, e), 3)        # (log2(25) + log2(100)) / 4 - log2(40) / 2
    0.161
    """
    lam = np.maximum(np.asarray(eigenvalues, dtype=np.float64).ravel(), 0.0)
    v = np.asarray(eigenvectors, dtype=np.float64)
    e = np.asarray(errors, dtype=np.float64)
    e = e.reshape(-1, lam.size)
    dj = np.mean(np.square(e @ v), axis=0)
    mse = float(dj.mean())
    if not mse > 0:
        return 0.0
    dj = np.maximum(dj, 1e-12 * mse)
    with np.errstate(divide="ignore"):
        r = np.where(lam > dj, 0.5 * np.log2(np.maximum(lam, 1e-300) / dj), 0.0)
    return max(float(r.mean()) - float(rd_gaussian_eigenvalues(np.sort(lam), mse)), 0.0)
