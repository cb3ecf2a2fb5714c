"""Gaussian rate-distortion of keys in the metric attention feels.

Attention reads a key ``k`` only through the logits ``s q . k``. With queries ``q``
independent of the key error ``e = k - k_hat``, the logit distortion of a key code is

    D_att = E[(s q . e)^2] = s^2 tr(M E[e e^T]),    M = E[q q^T]

(the query *second-moment* matrix, pooled over the query heads that share the KV head and
over positions). In the coordinates ``k' = M^(1/2) k`` this is the plain squared error
``s^2 E||k' - k_hat'||^2``, so the Gaussian rate-distortion function of keys with covariance
``S`` under ``D_att`` is reverse water-filling on the eigenvalues ``mu_i`` of
``M^(1/2) S M^(1/2)``:

    D_att = s^2 sum_i min(theta, mu_i),    R = (1/d) sum_i max(0, 1/2 log2(mu_i / theta))

in bits per key element. Directions that no query reads (``M`` singular) cost nothing. It is
an upper bound on the rate any key source with covariance ``S`` needs for this distortion
(the Gaussian is the hardest source for a given covariance), and it is achievable by
transform coding in the ``M^(1/2)``-weighted basis (``klt`` with ``"metric": "attention"``).
For keys coded before RoPE, pass the queries rotated back into the pre-RoPE frame at their
positions (``q . R_t k = (R_t^T q) . k``).

The distortion it speaks about is the mean over (query, key) pairs with queries drawn from
the pooled query distribution; kvinfo bench's ``attention_logit_mse`` averages over causally
visible pairs only, which weights early keys more, so the two agree exactly only when the
key error does not depend on the position.

References
----------
T. M. Cover, J. A. Thomas, *Elements of Information Theory*, 2nd ed., Wiley 2006, theorem
10.3.3 (reverse water-filling). R. M. Gray, D. L. Neuhoff, "Quantization", IEEE Trans. IT
44(6), 1998 (weighted squared-error distortion by a linear change of coordinates).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import AnalysisInputError
from ._rd import gaussian_eigenvalues, rd_gaussian_eigenvalues

__all__ = [
    "attention_metric_eigenvalues",
    "query_second_moment",
    "rd_gaussian_attention",
    "attention_weighting",
]


def _square(name: str, a) -> np.ndarray:
    m = np.asarray(a, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise AnalysisInputError(f"{name} must be a square matrix; found shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise AnalysisInputError(f"{name} holds NaN or Inf")
    return 0.5 * (m + m.T)


def query_second_moment(queries) -> np.ndarray:
    """``E[q q^T]`` pooled over the leading axes: queries ``(..., tokens, head_dim)``.

    Examples
    --------
    >>> import numpy as np
    >>> q = np.array([[[1.0, 0.0], [0.0, 2.0]], [[1.0, 0.0], [0.0, 2.0]]])  # 2 heads x 2 tokens
    >>> query_second_moment(q).tolist()
    [[0.5, 0.0], [0.0, 2.0]]
    """
    q = np.asarray(queries, dtype=np.float64)
    if q.ndim < 2 or q.shape[-1] == 0 or q.size == 0:
        raise AnalysisInputError(f"queries must be (..., tokens, head_dim); found {q.shape}")
    if not np.all(np.isfinite(q)):
        raise AnalysisInputError("queries hold NaN or Inf")
    q2 = q.reshape(-1, q.shape[-1])
    return q2.T @ q2 / q2.shape[0]


def attention_weighting(query_moment) -> np.ndarray:
    """The symmetric square root ``M^(1/2)`` of a query second-moment matrix."""
    m = _square("query_moment", query_moment)
    w, v = np.linalg.eigh(m)
    if w[0] < -1e-8 * max(float(w[-1]), 1e-300):
        raise AnalysisInputError(f"query_moment is not positive semi-definite ({w[0]:.3g})")
    return (v * np.sqrt(np.maximum(w, 0.0))) @ v.T


def attention_metric_eigenvalues(key_cov, query_moment) -> np.ndarray:
    """Eigenvalues (ascending) of ``M^(1/2) S M^(1/2)``: key covariance ``S`` in the metric of
    the query second moment ``M``."""
    s = _square("key_cov", key_cov)
    m = _square("query_moment", query_moment)
    if s.shape != m.shape:
        raise AnalysisInputError(
            f"key_cov {s.shape} and query_moment {m.shape} must have the same shape"
        )
    r = attention_weighting(m)
    return gaussian_eigenvalues(r @ s @ r)


def rd_gaussian_attention(key_cov, query_moment, logit_mse, scale: float | None = None):
    """Gaussian R(D) of keys, bits per key element, at logit distortion ``logit_mse``.

    Parameters
    ----------
    key_cov : (d, d) array
        Covariance of the keys (of one KV head).
    query_moment : (d, d) array
        ``E[q q^T]`` of the queries that read these keys (:func:`query_second_moment`).
    logit_mse : float or array
        ``E[(scale q . (k - k_hat))^2]``, per (query, key) pair.
    scale : float, optional
        Logit scale; default ``1 / sqrt(d)`` (scaled dot-product attention).

    Returns
    -------
    float or ndarray
        The bound (a bound for Gaussian keys, hence an upper bound for the given covariance).

    Examples
    --------
    >>> import numpy as np
    >>> s = np.diag([4.0, 1.0]); m = np.eye(2)
    >>> float(rd_gaussian_attention(s, m, 1.0 / 2, scale=1.0))  # theta = 1/4: (2 + 1) / 2
    1.5
    """
    mu = attention_metric_eigenvalues(key_cov, query_moment)
    d = mu.size
    s = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if not math.isfinite(s) or s <= 0:
        raise AnalysisInputError(f"scale must be a finite number > 0; found {scale!r}")
    dm = np.asarray(logit_mse, dtype=np.float64)
    if np.any(np.isnan(dm)) or np.any(dm < 0):
        raise AnalysisInputError("logit_mse must be >= 0")
    # R(D) of k' = M^(1/2) k with mean squared error per direction D_att / (s^2 d)
    return rd_gaussian_eigenvalues(mu, dm / (s * s * d))
