"""Bounds on R(D) that hold on non-Gaussian sources: a lower curve and a clustered upper bound.

Rates are **bits per element**, distortion is **mean squared error per element**. The
guarantees, their assumptions and the tests that check each claim are in
``docs/analysis.md`` ("Bounds that hold"). In short:

- :func:`entropy_lower_estimate` is a *lower confidence estimate* of the differential entropy:
  the minimum over an ensemble of model-based estimates, each of which reads at or below the
  true ``h`` (up to ``z`` standard errors) when its model holds. The minimum is at or below
  ``h`` whenever **at least one** model holds, and it never exceeds the Gaussian entropy.
- :func:`rd_lower_bound` turns it into a lower curve: the Shannon lower bound evaluated at
  ``D + dither variance`` (so it bounds the R(D) of the *stored* values, not only of their
  dithered version), and the water-filling form ``R_G - J`` where it is tighter.
- :func:`rd_cluster_upper_bound` is an achievable rate: the entropy of a cluster index plus
  the Gaussian R(D) of each cluster at a common water level, fitted on one part of the data
  and measured on the other, plus a confidence margin.
- :class:`ReservoirSample` keeps the uniform random subsample these need, mergeable across
  chunks, slabs and dumps together with the exact moments.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import digamma

from ..errors import AnalysisInputError
from ._entropy import LOG2E, _storage_step, dither_stored
from ._rd import _check_mse, rd_gaussian_eigenvalues, water_level

__all__ = [
    "LOWER_MODELS",
    "entropy_marginals_lower",
    "entropy_mixture_lower",
    "entropy_lower_estimate",
    "rd_lower_bound",
    "rd_lower_curve",
    "loewner_inflation",
    "rd_cluster_upper_bound",
    "kmeans",
    "ReservoirSample",
]

_HALF_LOG2_2PIE = 0.5 * math.log2(2.0 * math.pi * math.e)

#: names of the ensemble members of :func:`entropy_lower_estimate`, with their model
LOWER_MODELS = {
    "pca_product": "independent coordinates in the PCA (decorrelated) basis, any marginals",
    "channel_product": "independent stored channels, any marginals",
    "gaussian_mixture": "mixture of Gaussians whose components the k-means cells resolve",
    "gaussian": "Gaussian (the Gaussian entropy of the sample covariance, ddof 1)",
}


def _check_x(x, what="x", min_rows=8) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[1] == 0:
        raise AnalysisInputError(f"{what} must be 2-D (n vectors, d dims); got shape {a.shape}")
    if a.dtype.kind not in "fiu":
        raise AnalysisInputError(f"{what} must be numeric; got dtype {a.dtype}")
    a = np.asarray(a, dtype=np.float64)
    if a.shape[0] < min_rows:
        raise AnalysisInputError(f"{what} has {a.shape[0]} vectors; needs at least {min_rows}")
    if not np.all(np.isfinite(a)):
        raise AnalysisInputError(f"{what} contains NaN or Inf; remove those rows")
    return a


# --------------------------------------------------------------------------------------
# lower confidence estimates of h
# --------------------------------------------------------------------------------------


def entropy_marginals_lower(y, k: int = 4, chunk: int = 16):
    """Sum of 1-D Kozachenko-Leonenko entropies of the columns, and its standard error.

    Returns ``(h_bits_per_element, se_bits_per_element)``: ``h = (1/d) sum_j h_KL(y_j)`` and
    the standard error of that mean when the columns are independent (the model under which
    ``h(Y) = sum_j h(Y_j)``; for dependent columns the sum is an *upper* bound on ``h(Y)``).
    ``h - z * se`` is the member's lower confidence estimate. The per-column variance is
    that of ``log eps_ij``, which includes the estimator's own ``psi'(k)`` noise.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> h, se = entropy_marginals_lower(rng.standard_normal((4000, 4)))
    >>> bool(abs(h - 0.5 * np.log2(2 * np.pi * np.e)) < 3 * se + 0.01)
    True
    """
    a = _check_x(y, "y", min_rows=2 * k + 2)
    n, d = a.shape
    tot, var = 0.0, 0.0
    for c0 in range(0, d, chunk):
        srt = np.sort(a[:, c0 : c0 + chunk], axis=0)
        eps = _kth_gap_sorted(srt, k)
        if np.any(eps <= 0):
            raise AnalysisInputError(
                f"columns {c0}..{c0 + srt.shape[1] - 1} have values repeated more than {k} "
                "times (kNN distance 0); dither quantised values first"
            )
        le = np.log(eps)
        tot += float(le.mean(axis=0).sum())
        var += float(le.var(axis=0, ddof=1).sum())
    const = digamma(n) - digamma(k) + math.log(2.0)
    h = (const + tot / d) * LOG2E
    se = math.sqrt(var / n) / d * LOG2E
    return h, se


def _kth_gap_sorted(srt: np.ndarray, k: int) -> np.ndarray:
    """k-th nearest-neighbour distance of each entry of column-sorted ``srt`` (per column).

    The ``k`` nearest neighbours of a point of a sorted sample form a window of ``k + 1``
    consecutive points containing it, so ``eps_i = min_j max(x_i - x_{i-j}, x_{i+k-j} - x_i)``.
    """
    n = srt.shape[0]
    out = np.full(srt.shape, np.inf)
    for j in range(k + 1):
        # the window [i - j, i + k - j] exists for j <= i < n - k + j
        lo, hi = j, n - k + j
        if hi <= lo:
            continue
        mid = srt[lo:hi]
        left = mid - srt[lo - j : hi - j]
        right = srt[lo + k - j : hi + k - j] - mid
        np.minimum(out[lo:hi], np.maximum(left, right), out=out[lo:hi])
    return out


def kmeans(x, k: int, *, seed: int = 0, iters: int = 25, restarts: int = 4) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; returns the ``(k, d)`` centroids.

    The best (lowest within-cell sum of squares) of ``restarts`` runs is kept: one run can
    stop in a local optimum that merges two clusters, which the mixture member of
    :func:`entropy_lower_estimate` must not see.

    Examples
    --------
    >>> x = np.r_[np.zeros((50, 2)), np.ones((50, 2)) * 10]
    >>> c = kmeans(x, 2)
    >>> sorted(np.round(c[:, 0]).tolist())
    [0.0, 10.0]
    """
    a = _check_x(x, "x", min_rows=k)
    rng = np.random.default_rng(seed)
    best, best_sse = None, np.inf
    for _ in range(max(1, int(restarts))):
        c = _kmeans_once(a, k, rng, iters)
        lab = _assign(a, c)
        sse = float(np.sum((a - c[lab]) ** 2))
        if sse < best_sse:
            best, best_sse = c, sse
    return best


def _kmeans_once(a, k, rng, iters) -> np.ndarray:
    n = a.shape[0]
    cent = [a[rng.integers(n)]]
    d2 = np.sum((a - cent[0]) ** 2, axis=1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else None
        cent.append(a[rng.choice(n, p=p)])
        d2 = np.minimum(d2, np.sum((a - cent[-1]) ** 2, axis=1))
    c = np.array(cent)
    codes = np.arange(k)
    for _ in range(iters):
        lab = _assign(a, c)
        # cell sums as one matrix product with the one-hot labels (one pass over ``a``)
        onehot = (lab[None, :] == codes[:, None]).astype(a.dtype)
        counts = onehot.sum(axis=1)
        sums = onehot @ a
        new = c.copy()
        live = counts > 0
        new[live] = sums[live] / counts[live, None]
        if np.allclose(new, c):
            break
        c = new
    return c


def _assign(a, c) -> np.ndarray:
    """Index of the nearest centroid of each row: ``argmin_j |c_j|^2 - 2 a.c_j`` (the
    ``|a|^2`` term is the same for every centroid and is left out)."""
    d2 = np.sum(c * c, axis=1)[None, :] - 2.0 * (a @ c.T)
    return np.argmin(d2, axis=1)


def _gauss_cells(a, lab, k, min_cell):
    """(weights, means, covariances ddof 1) of the cells, or None if a cell is too small."""
    out = []
    for j in range(k):
        sel = a[lab == j]
        if sel.shape[0] < min_cell:
            return None
        c = np.cov(sel, rowvar=False)
        w = np.linalg.eigvalsh(c)
        if w[0] <= max(w[-1], 0.0) * 1e-12:
            return None
        out.append((sel.shape[0] / a.shape[0], sel.mean(axis=0), c))
    return out


def _gmm_logpdf(x, cells) -> np.ndarray:
    """log density (nats) of each row under the Gaussian mixture ``cells``."""
    d = x.shape[1]
    comp = []
    for w, mu, c in cells:
        L = np.linalg.cholesky(c)
        y = np.linalg.solve(L, (x - mu).T)
        comp.append(
            math.log(w)
            - 0.5 * np.sum(y * y, axis=0)
            - float(np.sum(np.log(np.diag(L))))
            - 0.5 * d * math.log(2.0 * math.pi)
        )
    comp = np.array(comp)
    top = comp.max(axis=0)
    return top + np.log(np.sum(np.exp(comp - top), axis=0))


def entropy_mixture_lower(
    x, *, clusters=(1, 2, 4, 8), max_rows: int = 4000, seed: int = 0, details: bool = False
):
    """Latent-variable lower estimate ``sum_k pi_k h_G(Sigma_k)`` of a Gaussian mixture.

    The number of components is chosen among ``clusters`` by held-out likelihood (k-means
    on one half of the rows, the mixture of the cells' Gaussians scored on the other half);
    the cells of the chosen ``K`` are then measured on all rows (at most ``max_rows``, a
    random subset, for speed). For a mixture of Gaussians
    ``X`` with latent component ``Z``, ``h(X) >= h(X | Z) = sum_k pi_k h_G(Sigma_k)``; the
    hard cells are truncations of the components, whose covariances are smaller, so the
    estimate errs low when the cells resolve the components (see ``docs/analysis.md``).

    Returns bits per element (and, with ``details``, a dict with ``clusters``, ``se``).
    """
    a = _check_x(x, "x", min_rows=16)
    rng = np.random.default_rng(seed)
    if a.shape[0] > max_rows:
        a = a[np.sort(rng.choice(a.shape[0], size=max_rows, replace=False))]
    n, d = a.shape
    perm = rng.permutation(n)
    fit, test = a[perm[: n // 2]], a[perm[n // 2 :]]
    min_cell = max(2 * d + 2, 16)
    best = None
    for k in clusters:
        if k < 1 or fit.shape[0] < k * min_cell:
            continue
        cent = kmeans(fit, k, seed=seed) if k > 1 else fit.mean(axis=0)[None, :]
        cells = _gauss_cells(fit, _assign(fit, cent), k, min_cell)
        if cells is None:
            continue
        ll = float(np.mean(_gmm_logpdf(test, cells)))
        if best is None or ll > best[0]:
            best = (ll, k, cent)
    if best is None:
        raise AnalysisInputError(
            f"entropy_mixture_lower: {n} vectors in {d} dimensions are too few for a mixture"
        )
    _, k, cent = best
    lab = _assign(a, cent)
    cells = _gauss_cells(a, lab, k, 2) or _gauss_cells(a, np.zeros(n, int), 1, 2)
    k = len(cells)
    if k == 1:
        lab = np.zeros(n, int)
    h = 0.0
    nll = np.empty(n)
    for j, (w, mu, c) in enumerate(cells):
        sign, logdet = np.linalg.slogdet(c)
        h += w * (0.5 * d * math.log(2.0 * math.pi * math.e) + 0.5 * logdet)
        sel = lab == j
        L = np.linalg.cholesky(c)
        y = np.linalg.solve(L, (a[sel] - mu).T)
        nll[sel] = 0.5 * np.sum(y * y, axis=0) + 0.5 * logdet
    h_bits = h * LOG2E / d
    se = float(nll.std(ddof=1)) / math.sqrt(n) / d * LOG2E
    if details:
        return {"estimate": h_bits, "se": se, "clusters": int(k)}
    return h_bits


def entropy_lower_estimate(
    x,
    *,
    basis=None,
    k: int = 4,
    z: float = 4.0,
    clusters=(1, 2, 4, 8),
    seed: int = 0,
    details: bool = False,
):
    """Lower confidence estimate of the differential entropy (bits per element).

    The minimum, over the ensemble :data:`LOWER_MODELS`, of each model's estimate minus
    ``z`` standard errors, and never more than the Gaussian entropy of the sample
    covariance (``h <= h_G`` is a theorem):

    - ``pca_product``: 1-D Kozachenko-Leonenko entropies of the coordinates in ``basis``
      (the eigenvectors of the covariance; computed from ``x`` if not given), summed;
    - ``channel_product``: the same on the stored channels;
    - ``gaussian_mixture``: :func:`entropy_mixture_lower`;
    - ``gaussian``: ``h_G`` itself.

    Each member is at or below ``h`` (within its margin) when its model holds, so the
    minimum is when **any** model holds. This is an assumption, not a theorem: a source
    that none of the models describes (for example one on a lower-dimensional manifold)
    can read above its ``h``; the lower curve built from it still never exceeds the
    Gaussian R(D). See ``docs/analysis.md``.

    Parameters
    ----------
    x : array_like, shape (n, d)
        Samples with a density (dither stored values first, :func:`dither_stored`).
    basis : array_like, shape (d, d), optional
        Orthonormal columns (the covariance's eigenvectors) for ``pca_product``.
    k : int
        Neighbour order of the 1-D estimates.
    z : float
        Standard errors subtracted from each member (one-sided confidence).
    clusters : sequence of int
        Candidate numbers of mixture components.
    seed : int
    details : bool
        Return a dict with ``estimate``, ``model`` (the member that gave the minimum),
        ``members`` (each member's lower estimate), ``h_gaussian`` and ``clusters``.

    Examples
    --------
    >>> rng = np.random.default_rng(3)
    >>> x = rng.laplace(size=(4000, 8))  # h = log2(2e) bits per element
    >>> h = entropy_lower_estimate(x)
    >>> bool(np.log2(2 * np.e) - 0.06 < h <= np.log2(2 * np.e))
    True
    """
    a = _check_x(x, "x", min_rows=16)
    n, d = a.shape
    if n <= d + 1:
        raise AnalysisInputError(f"{n} vectors in {d} dimensions: needs more vectors than dims")
    mean = a.mean(axis=0)
    xc = a - mean
    cov = xc.T @ xc / (n - 1)
    lam = np.linalg.eigvalsh(cov)
    if lam[0] <= max(lam[-1], 0.0) * 1e-12:
        raise AnalysisInputError(
            f"the sample covariance is singular (eigenvalues {lam[0]:.3g} .. {lam[-1]:.3g}); "
            "the differential entropy is -inf"
        )
    h_g = _HALF_LOG2_2PIE + 0.5 * float(np.mean(np.log2(lam)))
    if basis is None:
        _, basis = np.linalg.eigh(cov)
    u = np.asarray(basis, dtype=np.float64)
    if u.shape != (d, d):
        raise AnalysisInputError(f"basis must have shape ({d}, {d}); got {u.shape}")
    members = {"gaussian": h_g}
    h, se = entropy_marginals_lower(xc @ u, k=k)
    members["pca_product"] = h - z * se
    h, se = entropy_marginals_lower(xc, k=k)
    members["channel_product"] = h - z * se
    try:
        mix = entropy_mixture_lower(a, clusters=clusters, seed=seed, details=True)
    except AnalysisInputError:  # too few vectors for a mixture: the member is left out
        mix = {"clusters": None}
    else:
        members["gaussian_mixture"] = mix["estimate"] - z * mix["se"]
    model = min(members, key=members.get)
    est = members[model]
    if details:
        return {
            "estimate": est,
            "model": model,
            "members": members,
            "h_gaussian": h_g,
            "clusters": mix["clusters"],
        }
    return est


# --------------------------------------------------------------------------------------
# the lower curve
# --------------------------------------------------------------------------------------


def rd_lower_bound(h_lower, mse, *, eigenvalues=None, dither_variance: float = 0.0):
    """Lower curve on R(D), bits per element, from a lower estimate of ``h``.

    ``max(SLB, WF)`` with, for ``D' = D + dither_variance``,

    - ``SLB = h - 1/2 log2(2 pi e D')`` (Shannon 1959);
    - ``WF = h - (1/d) sum_i 1/2 log2(2 pi e min(lambda_i, theta))``, ``theta`` the water level
      of ``eigenvalues`` at ``D'`` (the Gaussian-covariance form ``R_G(D) - J`` with
      ``J = h_G - h``). It needs eigenvalues that dominate the true covariance's; pass an
      inflated upper confidence version (:func:`_slab` does) or leave it out.

    Adding ``dither_variance`` makes the curve a bound on the R(D) of the *stored* values
    when ``h`` is that of the dithered ones: ``R_S(D) >= R_{S+U}(D + E|U|^2/d)``. Both forms
    are at or below R(D) whenever ``h_lower <= h`` (proofs in ``docs/analysis.md``).

    Examples
    --------
    >>> hg = 0.5 * np.log2(2 * np.pi * np.e)  # unit Gaussian
    >>> rd_lower_bound(hg, 0.25)
    1.0
    >>> r = rd_lower_bound(hg + 0.5 * np.log2([4.0, 0.01]).mean(), 0.02, eigenvalues=[0.01, 4.0])
    >>> round(r, 4)  # water-filling: R_G exactly (the SLB alone gives 1.661)
    1.7647
    """
    m = _check_mse(mse) + float(dither_variance)
    hh = float(h_lower)
    with np.errstate(divide="ignore"):
        r = hh - 0.5 * (math.log2(2.0 * math.pi * math.e) + np.log2(m))
    if eigenvalues is not None:
        lam = np.sort(np.maximum(np.asarray(eigenvalues, dtype=np.float64), 0.0))
        if lam.size and lam[0] > 0:
            th = np.asarray(water_level(lam, m))
            with np.errstate(divide="ignore"):
                wf = hh - 0.5 * np.mean(
                    np.log2(2.0 * math.pi * math.e * np.minimum(lam, th[..., None])), axis=-1
                )
            r = np.maximum(r, wf)
    r = np.maximum(r, 0.0)
    return float(r) if np.ndim(r) == 0 else r


def rd_lower_curve(
    stored,
    mse,
    *,
    eigenvalues=None,
    num_vectors=None,
    basis=None,
    k: int = 4,
    seed: int = 0,
    details: bool = False,
):
    """The lower curve ``kvinfo analyze`` reports, from a random subsample of stored vectors.

    Dithers the stored values (:func:`dither_stored`), takes the lower confidence estimate
    ``h_L`` of :func:`entropy_lower_estimate`, clips it to the Gaussian entropy, and returns
    ``min(R_G(D), rd_lower_bound(h_L, D))`` with the dither variance added to ``D`` and the
    covariance eigenvalues inflated by :func:`loewner_inflation` for the water-filling form.

    Parameters
    ----------
    stored : array_like, shape (m, d)
        A uniform random subsample of the stored vectors (float32, float16 or bfloat16).
    mse : float or array_like
        Distortions, mean squared error per element.
    eigenvalues : array_like, optional
        Eigenvalues of the source's sample covariance (ddof 1), from ``num_vectors`` vectors
        (default: the subsample's own).
    basis : array_like, optional
        The matching eigenvectors (for the ``pca_product`` member).
    k, seed : see :func:`entropy_lower_estimate`.
    details : bool
        Return a dict with ``rate``, ``h_lower``, ``model``, ``members``, ``h_gaussian``,
        ``dither_variance``, ``clipped`` (``h_L`` was clipped to ``h_G``).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((3000, 8)).astype(np.float32)
    >>> r = rd_lower_curve(x, [0.1, 0.01])  # true R(D): 1.661, 3.322
    >>> bool(np.all(r <= [1.661, 3.322]) and np.all(r > [1.55, 3.2]))
    True
    """
    arr = np.asarray(stored)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise AnalysisInputError(f"stored must be 2-D (m vectors, d dims); got shape {arr.shape}")
    m = np.atleast_1d(_check_mse(mse)).astype(np.float64)
    rng = np.random.default_rng(seed)
    xs = dither_stored(arr, rng)
    if not np.all(np.isfinite(xs)):
        raise AnalysisInputError("stored contains NaN or Inf; remove those rows")
    n, d = xs.shape
    # E|U_j|^2 = E[step_j^2] / 12 for the dither U added to channel j
    chan_dither = np.mean(np.square(_storage_step(arr).astype(np.float64)), axis=0) / 12.0
    dither_var = float(chan_dither.mean())
    if eigenvalues is None:
        cov = np.atleast_2d(np.cov(arr.astype(np.float64), rowvar=False))
        lam, basis_own = np.linalg.eigh(cov)
        basis = basis_own if basis is None else basis
        num_vectors = n
    else:
        lam = np.asarray(eigenvalues, dtype=np.float64)
        num_vectors = n if num_vectors is None else int(num_vectors)
    lam = np.sort(np.maximum(lam, 0.0))
    if lam.size != d or lam[0] <= max(lam[-1], 0.0) * 1e-12:
        raise AnalysisInputError(
            "the covariance is singular (or its eigenvalues do not match the vectors); the "
            "differential entropy is -inf and the lower curve is 0"
        )
    h_g = _HALF_LOG2_2PIE + 0.5 * float(np.mean(np.log2(lam)))
    low = entropy_lower_estimate(xs, basis=basis, k=k, seed=seed, details=True)
    h_low = min(low["estimate"], h_g)
    c = loewner_inflation(num_vectors, d)
    lam_up = None if c is None else c * (lam + float(chan_dither.max()))
    rate = np.minimum(
        rd_lower_bound(h_low, m, eigenvalues=lam_up, dither_variance=dither_var),
        rd_gaussian_eigenvalues(lam, m),
    )
    if details:
        return {
            "rate": rate,
            "h_lower": h_low,
            "model": low["model"] if low["estimate"] <= h_g else "gaussian",
            "members": low["members"],
            "h_gaussian": h_g,
            "dither_variance": dither_var,
            "clipped": bool(low["estimate"] > h_g),
        }
    return rate


def loewner_inflation(n: int, d: int, alpha: float = 1e-3):
    """Factor ``c`` with ``Sigma <= c S`` (Loewner order) with probability ``>= 1 - alpha``.

    ``S`` is the sample covariance of ``n`` Gaussian vectors in ``d`` dimensions; the
    smallest singular value of the whitened data matrix ``/ sqrt(n)`` is at least
    ``s = 1 - sqrt(d/n) - sqrt(2 ln(1/alpha) / n)`` with that probability (Davidson & Szarek,
    *Local operator theory, random matrices and Banach spaces*, 2001, Thm II.13), so
    ``c = 1 / s**2``. Returns ``None`` when ``s < 0.5`` (too few vectors to say anything).

    Examples
    --------
    >>> round(loewner_inflation(20000, 64), 3)
    1.189
    >>> loewner_inflation(100, 64) is None
    True
    """
    s = 1.0 - math.sqrt(d / n) - math.sqrt(2.0 * math.log(1.0 / alpha) / n)
    return None if s < 0.5 else 1.0 / (s * s)


# --------------------------------------------------------------------------------------
# the clustered (mixture) upper bound
# --------------------------------------------------------------------------------------


def _weighted_water_rate(lams, weights, mse):
    """Rate (bits per element) of coding each cell with its Gaussian code at one water level.

    ``lams[c]`` are cell ``c``'s eigenvalues and ``weights[c]`` its probability; the total
    distortion ``sum_c w_c mean_i min(theta, lambda_ci)`` equals ``mse``.
    """
    lam = np.concatenate(lams)
    w = np.concatenate([np.full(v.size, wc) for v, wc in zip(lams, weights, strict=True)])
    d = lams[0].size
    order = np.argsort(lam)
    lam, w = lam[order], w[order] / d  # sum(w) = 1
    m = np.atleast_1d(_check_mse(mse))
    cw = np.concatenate([[0.0], np.cumsum(w * lam)])
    tail = np.concatenate([np.cumsum(w[::-1])[::-1], [0.0]])
    # distortion at theta = lam_j: sum_{i<j} w lam + lam_j * sum_{i>=j} w, nondecreasing
    f = cw[:-1] + lam * tail[:-1]
    out = np.empty(m.size)
    for i, mi in enumerate(m):
        if mi >= cw[-1]:
            out[i] = 0.0
            continue
        j = int(np.searchsorted(f, mi, side="right"))
        theta = (mi - cw[j]) / tail[j] if j < lam.size else lam[-1]
        if theta <= 0:
            out[i] = np.inf
            continue
        act = lam > theta
        out[i] = float(np.sum(w[act] * 0.5 * np.log2(lam[act] / theta)))
    return out


def rd_cluster_upper_bound(
    x,
    mse,
    *,
    clusters=(2, 4, 8),
    fit_fraction: float = 0.5,
    z: float = 4.0,
    seed: int = 0,
    details: bool = False,
):
    """Achievable rate of a clustered Gaussian code, bits per element, fitted and measured apart.

    The rows are split at random: on the fit part, k-means gives ``K`` centroids and the
    cell frequencies ``p_c``; on the held-out part, each vector is assigned to its nearest
    centroid and the rate is

        (1/d) E[-log2 p_c(C)]  +  sum_c w_c R_G(D_c; Sigma_c)

    with ``w_c`` and ``Sigma_c`` the held-out cell weights and covariances, and ``D_c`` set by
    one common water level so that ``sum_c w_c D_c = D``. The first term is the ideal code
    length of the cell index under the fit-part model (side information), the second codes
    each cell with the Gaussian code, which achieves ``R_G`` for *any* source of that
    covariance. The held-out means are unbiased for the rate of this fixed code on the
    source; ``z`` standard errors of the index term and the low bias ``(d+1)/(4 n_c ln 2)``
    of each cell's log-determinant are added, so the result errs high. The minimum over
    ``clusters`` is returned (a min over a few achievable codes is achievable; the margins
    cover the selection).

    Returns
    -------
    numpy.ndarray
        Bits per element at each ``mse`` (or a dict with ``rate``, ``clusters`` and
        ``per_clusters`` with ``details``). ``inf`` where no ``K`` fits (too few vectors).
    """
    a = _check_x(x, "x", min_rows=16)
    n, d = a.shape
    m = np.atleast_1d(_check_mse(mse)).astype(np.float64)
    if not (0.0 < fit_fraction < 1.0):
        raise AnalysisInputError(f"fit_fraction must be in (0, 1); got {fit_fraction}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    nf = int(round(n * fit_fraction))
    fit, test = a[perm[:nf]], a[perm[nf:]]
    best = np.full(m.size, np.inf)
    best_k = np.zeros(m.size, dtype=int)
    per = {}
    min_cell = max(2 * d + 2, 16)
    for k in clusters:
        if k < 2 or fit.shape[0] < k * min_cell or test.shape[0] < k * min_cell:
            continue
        cent = kmeans(fit, k, seed=seed)
        p_fit = np.bincount(_assign(fit, cent), minlength=k) + 0.5  # add-1/2 code
        p_fit = p_fit / p_fit.sum()
        lab = _assign(test, cent)
        counts = np.bincount(lab, minlength=k)
        if np.any(counts < min_cell):
            continue
        code = -np.log2(p_fit[lab])
        side = float(code.mean()) / d + z * float(code.std(ddof=1)) / math.sqrt(lab.size) / d
        lams, ws, bias = [], [], 0.0
        for j in range(k):
            sel = test[lab == j]
            lams.append(np.maximum(np.linalg.eigvalsh(np.cov(sel, rowvar=False)), 0.0))
            ws.append(sel.shape[0] / test.shape[0])
            nc = sel.shape[0]
            # low bias of the sample log-determinant plus z standard errors (Gaussian cells)
            bias += ws[-1] * ((d + 1) / (4.0 * nc) + z * math.sqrt(0.5 / (nc * d))) * LOG2E
        rate = side + _weighted_water_rate(lams, ws, m) + bias
        per[int(k)] = rate
        better = rate < best
        best = np.where(better, rate, best)
        best_k = np.where(better, k, best_k)
    if details:
        return {"rate": best, "clusters": best_k, "per_clusters": per}
    return best


# --------------------------------------------------------------------------------------
# a mergeable uniform subsample
# --------------------------------------------------------------------------------------


class ReservoirSample:
    """Uniform random subsample of at most ``capacity`` rows, mergeable across streams.

    ``update(rows)`` feeds rows in any chunking (Vitter's algorithm R, vectorised);
    ``merge(other)`` combines two reservoirs of disjoint streams into a uniform sample of the
    union: the number of rows taken from each side is hypergeometric in the two stream
    sizes. Rows keep the stored ``dtype`` (pass ``ml_dtypes.bfloat16`` for bf16 dumps), which
    :func:`rd_lower_curve` needs to dither them at their storage step.
    With :class:`~kvinfo.analysis.MomentStats` (exact moments) this is all the lower
    curve needs, so per-dump statistics merge into one lower curve for many dumps.

    Examples
    --------
    >>> r1, r2 = ReservoirSample(3, 4, seed=0), ReservoirSample(3, 4, seed=1)
    >>> r1.update(np.zeros((10, 3))); r2.update(np.ones((30, 3)))
    >>> m = r1.merge(r2)
    >>> m.seen, m.rows.shape
    (40, (4, 3))
    """

    def __init__(self, dim: int, capacity: int, seed: int = 0, dtype=np.float64):
        if capacity < 1 or dim < 1:
            raise AnalysisInputError(f"capacity and dim must be >= 1; got {capacity}, {dim}")
        self.dim, self.capacity = int(dim), int(capacity)
        self.rng = np.random.default_rng(seed)
        self._rows = np.empty((0, self.dim), dtype=dtype)  # stored dtype: dithering needs it
        self.seen = 0

    @property
    def rows(self) -> np.ndarray:
        return self._rows

    def update(self, rows) -> None:
        x = np.asarray(rows).astype(self._rows.dtype, copy=False)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise AnalysisInputError(f"rows must have shape (n, {self.dim}); got {x.shape}")
        room = self.capacity - self._rows.shape[0]
        if room > 0:
            take = x[:room]
            self._rows = np.concatenate([self._rows, take])
            self.seen += take.shape[0]
            x = x[room:]
        if x.shape[0] == 0:
            return
        idx = self.seen + np.arange(1, x.shape[0] + 1)  # 1-based position in the stream
        slot = np.floor(self.rng.random(x.shape[0]) * idx).astype(np.int64)
        keep = slot < self.capacity
        rows_ = self._rows.copy()
        for s, r in zip(slot[keep], x[keep], strict=True):  # later rows overwrite earlier
            rows_[s] = r
        self._rows = rows_
        self.seen += x.shape[0]

    def merge(self, other: ReservoirSample) -> ReservoirSample:
        if other.dim != self.dim:
            raise AnalysisInputError(f"cannot merge dims {self.dim} and {other.dim}")
        out = ReservoirSample(
            self.dim, self.capacity, seed=int(self.rng.integers(2**31)), dtype=self._rows.dtype
        )
        total = self.seen + other.seen
        size = min(self.capacity, self._rows.shape[0] + other._rows.shape[0])
        if total == 0:
            return out
        k1 = int(out.rng.hypergeometric(self.seen, other.seen, size)) if size else 0
        k1 = min(k1, self._rows.shape[0])
        k2 = min(size - k1, other._rows.shape[0])
        a = self._rows[out.rng.permutation(self._rows.shape[0])[:k1]]
        b = other._rows[out.rng.permutation(other._rows.shape[0])[:k2]]
        out._rows = np.concatenate([a, b])
        out.seen = total
        return out
