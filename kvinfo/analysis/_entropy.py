"""Entropy estimators: discrete (plug-in, Miller-Madow), Gaussian, and Kozachenko-Leonenko kNN.

Every function returns **bits per element** (per scalar; for a discrete source, per symbol).
Formulas, references and known biases are in ``docs/analysis.md``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy.special import digamma, gammaln

from ..errors import AnalysisInputError

__all__ = [
    "ENTROPY_ESTIMATORS",
    "entropy_discrete",
    "entropy_from_counts",
    "entropy_gaussian",
    "entropy_knn",
    "entropy_knn_marginals",
    "entropy_knn_corrected",
    "knn_gaussian_bias",
    "dither_stored",
]

LOG2E = 1.0 / math.log(2.0)
_HALF_LOG2_2PIE = 0.5 * math.log2(2.0 * math.pi * math.e)


# --------------------------------------------------------------------------------------
# discrete
# --------------------------------------------------------------------------------------


def _plugin_correction(num_nonzero: np.ndarray, n: np.ndarray) -> np.ndarray:
    return np.zeros(np.broadcast(num_nonzero, n).shape)


def _miller_madow_correction(num_nonzero: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (num_nonzero - 1) / (2.0 * n) * LOG2E
    return np.where(n > 0, out, 0.0)


#: estimator name -> bias correction in bits, a function of (number of non-empty bins, n)
ENTROPY_ESTIMATORS = {
    "plugin": _plugin_correction,
    "miller-madow": _miller_madow_correction,
}


def _check_estimator(estimator: str):
    try:
        return ENTROPY_ESTIMATORS[estimator]
    except (KeyError, TypeError):
        raise AnalysisInputError(
            f"estimator must be one of {sorted(ENTROPY_ESTIMATORS)}; got {estimator!r}"
        ) from None


def entropy_from_counts(counts, estimator: str = "plugin", axis: int = -1):
    """Entropy in bits per symbol of one or many histograms.

    Parameters
    ----------
    counts : array_like of non-negative numbers
        Occurrence counts; the histogram runs along ``axis``.
    estimator : {"plugin", "miller-madow"}
        ``"plugin"`` is the maximum-likelihood estimate ``-sum p log2 p``; ``"miller-madow"``
        adds ``(m - 1) / (2 n ln 2)`` bits, with ``m`` the number of non-empty bins.
    axis : int
        Axis of the bins.

    Returns
    -------
    float or numpy.ndarray
        Entropy in bits per symbol (0 for an empty histogram).

    Examples
    --------
    >>> float(entropy_from_counts([1, 1, 1, 1]))
    2.0
    >>> entropy_from_counts([[2, 2], [4, 0]]).tolist()
    [1.0, 0.0]
    """
    correction = _check_estimator(estimator)
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim == 0:
        raise AnalysisInputError("counts must have at least one axis; got a scalar")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise AnalysisInputError("counts must be finite and non-negative")
    c = np.moveaxis(c, axis, -1)
    n = c.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = c / n[..., None]
        plogp = np.where(c > 0, p * np.log2(np.where(c > 0, p, 1.0)), 0.0)
    h = -plogp.sum(axis=-1)
    h = np.where(n > 0, h, 0.0) + correction(np.count_nonzero(c, axis=-1), n)
    h = np.maximum(h, 0.0)
    return float(h) if h.ndim == 0 else h


def entropy_discrete(symbols=None, estimator: str = "plugin", *, counts=None) -> float:
    """Entropy of integer samples (or of a histogram), in bits per symbol.

    Parameters
    ----------
    symbols : array_like of int, optional
        Samples of a discrete source, any shape (flattened). Any integers, negative included.
    estimator : {"plugin", "miller-madow"}
        See :func:`entropy_from_counts`.
    counts : array_like, optional
        A histogram instead of samples (give exactly one of ``symbols`` and ``counts``).

    Returns
    -------
    float
        Bits per symbol.

    Raises
    ------
    AnalysisInputError
        No samples, non-integer samples, or both/neither of ``symbols`` and ``counts``.

    Examples
    --------
    >>> entropy_discrete([0, 1, 2, 3, 0, 1, 2, 3])
    2.0
    >>> round(entropy_discrete([0, 0, 0, 1], estimator="miller-madow"), 4)
    0.9916
    """
    if (symbols is None) == (counts is None):
        raise AnalysisInputError("give exactly one of symbols and counts")
    if counts is not None:
        c = np.asarray(counts)
        if c.ndim != 1:
            raise AnalysisInputError(f"counts must be 1-D; got shape {c.shape}")
        return float(entropy_from_counts(c, estimator))
    _check_estimator(estimator)
    s = np.asarray(symbols)
    if s.size == 0:
        raise AnalysisInputError("entropy of an empty sample is undefined; got 0 symbols")
    if s.dtype.kind not in "iub":
        raise AnalysisInputError(f"symbols must be integers; got dtype {s.dtype}")
    s = s.ravel()
    if s.dtype.kind in "ub" and s.dtype.itemsize <= 2:
        c = np.bincount(s.astype(np.intp, copy=False))
    else:
        _, c = np.unique(s, return_counts=True)
    return float(entropy_from_counts(c, estimator))


# --------------------------------------------------------------------------------------
# Gaussian
# --------------------------------------------------------------------------------------


def _as_cov(cov) -> np.ndarray:
    c = np.asarray(cov, dtype=np.float64)
    if c.ndim == 0:
        c = c.reshape(1, 1)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] == 0:
        raise AnalysisInputError(
            f"covariance must be a non-empty square matrix; got shape {c.shape}"
        )
    if not np.all(np.isfinite(c)):
        raise AnalysisInputError("covariance contains NaN or Inf")
    scale = max(float(np.max(np.abs(c))), 1e-300)
    if not np.allclose(c, c.T, rtol=1e-6, atol=1e-9 * scale):
        raise AnalysisInputError("covariance must be symmetric; it is not")
    return 0.5 * (c + c.T)


def entropy_gaussian(cov) -> float:
    """Differential entropy of a Gaussian with covariance ``cov``, in bits per element.

    ``h = 1/2 log2(2 pi e) + 1/(2d) log2 det(cov)``.

    Parameters
    ----------
    cov : array_like, shape (d, d) or scalar
        Covariance matrix (a scalar is a variance).

    Raises
    ------
    AnalysisInputError
        If ``cov`` is not square and symmetric, or is singular or not positive definite
        (the entropy is then minus infinity, which no code can use).

    Examples
    --------
    >>> round(entropy_gaussian(1.0), 6)  # 1/2 log2(2 pi e)
    2.047096
    >>> round(entropy_gaussian([[4.0, 0.0], [0.0, 4.0]]) - entropy_gaussian(1.0), 6)
    1.0
    """
    c = _as_cov(cov)
    d = c.shape[0]
    w = np.linalg.eigvalsh(c)
    if w[0] <= max(w[-1], 0.0) * 1e-13 or w[-1] <= 0:
        zero = np.flatnonzero(np.diag(c) <= 0).tolist()
        extra = f" (zero-variance channels {zero[:8]})" if zero else ""
        raise AnalysisInputError(
            f"covariance is singular (smallest eigenvalue {w[0]:.3g}, largest {w[-1]:.3g})"
            f"{extra}; the differential entropy is -inf"
        )
    return float(_HALF_LOG2_2PIE + 0.5 * np.sum(np.log2(w)) / d)


# --------------------------------------------------------------------------------------
# Kozachenko-Leonenko
# --------------------------------------------------------------------------------------


def _check_samples(x, k: int, what: str = "x") -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise AnalysisInputError(f"{what} must be a 2-D array (n vectors, d dims); got {a.shape}")
    if a.dtype.kind not in "fiu":
        raise AnalysisInputError(f"{what} must be numeric; got dtype {a.dtype}")
    a = np.asarray(a, dtype=np.float64)
    if not isinstance(k, int | np.integer) or k < 1:
        raise AnalysisInputError(f"k must be a positive integer; got {k!r}")
    n, d = a.shape
    if d == 0:
        raise AnalysisInputError(f"{what} has 0 dimensions")
    if n <= k:
        raise AnalysisInputError(f"{what} has {n} vectors; kNN with k={k} needs more than {k}")
    bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
    if bad:
        raise AnalysisInputError(f"{what} contains {bad} NaN or Inf values; remove those rows")
    return a


def _knn_distances(a: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """Euclidean distance of each row of ``a`` to its k-th nearest other row."""
    n, d = a.shape
    if d <= 8:
        from scipy.spatial import cKDTree

        dist, _ = cKDTree(a).query(a, k=k + 1)
        return dist[:, k]
    # brute force with BLAS: in high dimension a tree degenerates to a slower brute force
    a = a - a.mean(axis=0)
    sq = np.einsum("ij,ij->i", a, a)
    out = np.empty(n)
    for s in range(0, n, block):
        e = min(n, s + block)
        d2 = sq[s:e, None] + sq[None, :] - 2.0 * (a[s:e] @ a.T)
        d2[np.arange(e - s), np.arange(s, e)] = np.inf
        kth = np.partition(d2, k - 1, axis=1)[:, k - 1]
        out[s:e] = np.sqrt(np.maximum(kth, 0.0))
    return out


def _log_unit_ball_volume(d: int) -> float:
    return 0.5 * d * math.log(math.pi) - float(gammaln(0.5 * d + 1.0))


def _kl_from_distances(eps: np.ndarray, n: int, d: int, k: int, what: str) -> float:
    if np.any(eps <= 0):
        dup = int(np.count_nonzero(eps <= 0))
        raise AnalysisInputError(
            f"{what}: {dup} vectors have {k} or more exact duplicates (kNN distance 0); "
            "dither repeated (quantised) values first, e.g. with dither_stored()"
        )
    h_nats = digamma(n) - digamma(k) + _log_unit_ball_volume(d) + d * float(np.mean(np.log(eps)))
    return h_nats * LOG2E / d


def entropy_knn(x, k: int = 4) -> float:
    """Kozachenko-Leonenko estimate of the differential entropy of the rows of ``x``.

    ``h = psi(n) - psi(k) + ln V_d + (d/n) sum_i ln eps_i`` nats per vector, where
    ``eps_i`` is the Euclidean distance from row ``i`` to its ``k``-th nearest neighbour and
    ``V_d`` the volume of the unit ball; returned in bits per element (divided by ``d ln 2``).

    This is the raw estimate. It is biased, and the bias grows with the dimension: on
    white (prewhitened) data it reads **high**, by about 0.05 bit per element at ``d = 16``
    and 0.2 at ``d = 64`` with a few thousand samples (the kNN balls are not small compared
    with the density's scale); use :func:`entropy_knn_corrected` for high dimensions. It is
    not invariant to scaling of single channels, so prewhiten strongly correlated data.

    Parameters
    ----------
    x : array_like, shape (n, d)
        Samples (a 1-D array is ``d = 1``). No NaN/Inf and no exact duplicates.
    k : int
        Neighbour order.

    Returns
    -------
    float
        Bits per element (an estimate, not a bound).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> h = entropy_knn(rng.standard_normal((4000, 2)))
    >>> bool(abs(h - 0.5 * np.log2(2 * np.pi * np.e)) < 0.05)
    True
    """
    a = _check_samples(x, k)
    n, d = a.shape
    return _kl_from_distances(_knn_distances(a, k), n, d, k, "entropy_knn")


def _knn_1d_distances(a_sorted: np.ndarray, k: int) -> np.ndarray:
    """k-th neighbour distances for each column of a column-wise sorted (n, d) array."""
    n, d = a_sorted.shape
    cand = np.full((2 * k, n, d), np.inf)
    for j in range(1, k + 1):
        gap = a_sorted[j:] - a_sorted[:-j]
        cand[j - 1, j:] = gap  # distance to the j-th point on the left
        cand[k + j - 1, :-j] = gap  # distance to the j-th point on the right
    return np.partition(cand, k - 1, axis=0)[k - 1]


def entropy_knn_marginals(x, k: int = 4) -> np.ndarray:
    """Kozachenko-Leonenko estimate of each column's differential entropy, bits per element.

    Same estimator as :func:`entropy_knn` with ``d = 1``, vectorised over columns by sorting.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> h = entropy_knn_marginals(rng.uniform(0, 4, size=(5000, 3)))  # log2(4) = 2 bits
    >>> bool(np.all(np.abs(h - 2.0) < 0.05))
    True
    """
    a = _check_samples(x, k)
    n, d = a.shape
    eps = _knn_1d_distances(np.sort(a, axis=0), k)
    if np.any(eps <= 0):
        cols = np.flatnonzero(np.any(eps <= 0, axis=0)).tolist()
        raise AnalysisInputError(
            f"entropy_knn_marginals: columns {cols[:8]} have values repeated more than {k} "
            "times (kNN distance 0); dither quantised values first"
        )
    h_nats = digamma(n) - digamma(k) + math.log(2.0) + np.mean(np.log(eps), axis=0)
    return h_nats * LOG2E


def _whiten(a: np.ndarray, what: str) -> tuple[np.ndarray, float]:
    """Return (whitened rows, 0.5 ln det cov) using the sample covariance."""
    c = np.cov(a, rowvar=False)
    c = np.atleast_2d(c)
    try:
        L = np.linalg.cholesky(c)
    except np.linalg.LinAlgError:
        L = None
    w = np.linalg.eigvalsh(c)
    if L is None or w[0] <= max(w[-1], 0.0) * 1e-12:
        raise AnalysisInputError(
            f"{what}: the sample covariance is singular (eigenvalues {w[0]:.3g} .. {w[-1]:.3g}); "
            "cannot prewhiten (zero-variance channels, linearly dependent channels, or "
            "fewer vectors than dimensions)"
        )
    y = np.linalg.solve(L, (a - a.mean(axis=0)).T).T
    return y, float(np.sum(np.log(np.diag(L))))


@functools.lru_cache(maxsize=64)
def knn_gaussian_bias(n: int, d: int, k: int = 4, repeats: int = 4, seed: int = 0) -> tuple:
    """Bias of the prewhitened KL estimate on Gaussian samples of size ``n`` in ``d`` dims.

    Returns ``(mean_bias, std_bias)`` in bits per element (estimate minus truth; negative
    means the estimator reads low). The value depends only on ``(n, d, k)`` because the
    estimator is applied after whitening, so it is cached.

    Examples
    --------
    >>> b, s = knn_gaussian_bias(500, 16, repeats=2)
    >>> 0.0 < b < 0.2  # after whitening, KL reads high in 16 dimensions
    True
    """
    rng = np.random.default_rng(seed)
    truth_nats = 0.5 * d * math.log(2.0 * math.pi * math.e)
    out = []
    for _ in range(repeats):
        z = rng.standard_normal((n, d))
        y, half_logdet = _whiten(z, "gaussian reference")
        est = _kl_from_distances(_knn_distances(y, k), n, d, k, "gaussian reference")
        out.append(est - (truth_nats - half_logdet) * LOG2E / d)
    arr = np.asarray(out)
    return float(arr.mean()), float(arr.std(ddof=1) if repeats > 1 else 0.0)


def entropy_knn_corrected(
    x, k: int = 4, *, whiten: bool = True, repeats: int = 4, seed: int = 0, details: bool = False
):
    """Bias-corrected Kozachenko-Leonenko entropy estimate, bits per element.

    Steps: (1) prewhiten the rows with the Cholesky factor ``L`` of their sample covariance,
    so that ``h(x) = h(y) + (1/d) log2 det L``; (2) compute the KL estimate of ``h(y)``;
    (3) subtract the bias that the same procedure shows on ``repeats`` Gaussian samples of
    the same ``n`` and ``d`` (whose entropy is known, :func:`knn_gaussian_bias`).

    This is an **estimate**: the correction is exact in expectation only for Gaussian data;
    for other shapes the residual bias is what remains after removing the Gaussian one
    (see ``docs/analysis.md``).

    Parameters
    ----------
    x : array_like, shape (n, d)
        Samples (dither quantised values first). Needs ``n > d``.
    k : int
        Neighbour order.
    whiten : bool
        Prewhiten (recommended; the bias correction assumes it).
    repeats, seed :
        Number of Gaussian reference samples for the bias, and their seed.
    details : bool
        Return a dict with ``estimate``, ``raw``, ``bias``, ``bias_std`` (bits per element)
        instead of a float.

    Examples
    --------
    >>> rng = np.random.default_rng(2)
    >>> x = rng.standard_normal((2000, 16)) * 3.0
    >>> h = entropy_knn_corrected(x)
    >>> bool(abs(h - (0.5 * np.log2(2 * np.pi * np.e) + np.log2(3.0))) < 0.05)
    True
    """
    a = _check_samples(x, k)
    n, d = a.shape
    if n <= d:
        raise AnalysisInputError(
            f"entropy_knn_corrected: {n} vectors in {d} dimensions; needs more vectors than "
            "dimensions"
        )
    if whiten:
        y, half_logdet = _whiten(a, "entropy_knn_corrected")
    else:
        y, half_logdet = a, 0.0
    raw = _kl_from_distances(_knn_distances(y, k), n, d, k, "entropy_knn_corrected")
    raw += half_logdet * LOG2E / d
    bias, bias_std = knn_gaussian_bias(int(n), int(d), int(k), int(repeats), int(seed))
    est = raw - bias
    if details:
        return {"estimate": est, "raw": raw, "bias": bias, "bias_std": bias_std}
    return est


# --------------------------------------------------------------------------------------
# dithering of stored floats
# --------------------------------------------------------------------------------------


def _storage_step(a: np.ndarray) -> np.ndarray:
    """Spacing between a stored float and the next one away from zero (its rounding step)."""
    name = str(a.dtype)
    if name == "bfloat16":
        f32 = a.astype(np.float32)
        return np.spacing(np.abs(f32)) * np.float32(65536.0)
    if a.dtype.kind != "f":
        raise AnalysisInputError(f"dither_stored needs a float array; got dtype {a.dtype}")
    return np.spacing(np.abs(a)).astype(np.float64)


def dither_stored(a, rng=None) -> np.ndarray:
    """Add uniform noise of one storage step to stored floats; return float64.

    Each value ``v`` gets ``U(-s/2, s/2)`` with ``s`` the spacing of the stored format at
    ``|v|`` (for ``bfloat16`` that is ``2**(e-7)``). The dithered variable has a density,
    and its differential entropy equals ``H(stored) + E[log2 s]``, so repeated fp16/bf16
    values do not break kNN estimators.

    Examples
    --------
    >>> import ml_dtypes
    >>> a = np.array([1.0, 1.0, 2.0], dtype=ml_dtypes.bfloat16)
    >>> y = dither_stored(a, np.random.default_rng(0))
    >>> bool(np.all(np.abs(y - [1, 1, 2]) <= [2**-8, 2**-8, 2**-7]) and y[0] != y[1])
    True
    """
    arr = np.asarray(a)
    rng = np.random.default_rng(rng)
    step = _storage_step(arr).astype(np.float64)
    return arr.astype(np.float64) + (rng.random(arr.shape) - 0.5) * step
