"""Analysis of one (layer, kind, head) slab: lossless limits, lossy bounds, per-vector costs.

:func:`analyze_slab` streams the slab through :class:`~kvinfo.analysis._stats.SlabStats`
chunk by chunk, then derives every metric from those sufficient statistics, plus a kNN
subsample (for the entropy estimate) and a second pass for per-vector code lengths.
The metric names and their meaning are listed in ``docs/results-schema.md`` and
``docs/analysis.md``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import AnalysisInputError
from ._entropy import (
    LOG2E,
    dither_stored,
    entropy_knn_corrected,
    entropy_knn_marginals,
    knn_gaussian_bias,
)
from ._rd import rd_gaussian_eigenvalues, rd_shannon_lower_bound, water_level
from ._stats import FIELD_LAYOUT, SlabStats, to_float64
from .bounds import rd_cluster_upper_bound, rd_lower_curve

__all__ = [
    "AnalysisWarning",
    "analyze_slab",
    "slab_analysis",
    "SlabAnalysis",
    "SlabGaussian",
    "snr_grid_to_mse",
    "DEFAULT_SNR_DB",
    "TokenCost",
    "check_knn_options",
    "SMALL_DATA_METRICS",
    "small_data_reason",
]

#: at most this many vectors (a random subset) feed the lower curve and the clustered bound
BOUND_SAMPLES = 20000
#: plug-in per-channel H0 is marked undersampled above this distinct-pattern fraction
UNDERSAMPLED_FRACTION = 0.1

#: default distortion grid: SNR in dB relative to the slab's variance per element
DEFAULT_SNR_DB = tuple(float(v) for v in range(0, 42, 2))

_HALF_LOG2_2PIE = 0.5 * math.log2(2.0 * math.pi * math.e)


class AnalysisWarning(UserWarning):
    """Something in the data was excluded or could not be estimated (NaN/Inf rows...)."""


def snr_grid_to_mse(variance_per_element: float, snr_db) -> np.ndarray:
    """``mse = variance * 10**(-snr_db / 10)``: the distortion grid of one slab."""
    return float(variance_per_element) * np.power(10.0, -np.asarray(snr_db, float) / 10.0)


def _starts_mask(n: int, sequences) -> np.ndarray:
    starts = np.zeros(n, dtype=bool)
    if n:
        starts[0] = True
    if sequences is not None:
        for a, b in sequences:
            if not (0 <= a < b <= n):
                raise AnalysisInputError(
                    f"sequence ({a}, {b}) lies outside the slab's {n} vectors"
                )
            starts[a] = True
    return starts


def _positions(n: int, sequences) -> tuple[np.ndarray, np.ndarray]:
    seq = np.zeros(n, dtype=np.int64)
    pos = np.arange(n, dtype=np.int64)
    if sequences:
        for i, (a, b) in enumerate(sequences):
            seq[a:b] = i
            pos[a:b] = np.arange(b - a)
    return seq, pos


def _pervector_bits(x64, valid, mean, eigvecs, lam, theta, d, chunk_rows, n=None):
    """Information density of each vector under N(mean, cov) at water level theta, bits/elt.

    ``lam`` are the ddof-1 eigenvalues; the Mahalanobis term uses the ddof-0 ones
    (``lam (n-1)/n``) so that the mean over the ``n`` vectors is exactly ``R_G`` (with ddof 1
    it would be off by ``-(log2 e / 2)(k/d)/n``, ``k`` active components).
    """
    active = lam > theta
    out = np.full(x64.shape[0], np.nan)
    if not np.any(active):
        out[valid] = 0.0
        return out
    u = eigvecs[:, active]
    la = lam[active]
    const = 0.5 * float(np.sum(np.log2(la / theta)))
    if n is not None and n > 1:
        la = la * ((n - 1) / n)
    for s in range(0, x64.shape[0], chunk_rows):
        xs = x64[s : s + chunk_rows]
        vs = valid[s : s + chunk_rows]
        y = (xs[vs] - mean) @ u
        maha = np.einsum("ij,ij->i", y, y / la)
        bits = const + 0.5 * LOG2E * (maha - la.size)
        o = out[s : s + chunk_rows]
        o[vs] = bits / d
    return out


@dataclass(frozen=True)
class SlabGaussian:
    """The slab's Gaussian model, computed once and shared by the analysis and the bench
    reference bounds.

    Every second-order quantity uses the unbiased sample covariance (``ddof=1``) of the
    finite vectors: ``covariance``, its ``eigenvalues`` (ascending, round-off negatives set to
    0) and ``eigenvectors`` (columns), ``channel_variance`` (its diagonal),
    :attr:`variance_per_element` (``tr Σ / d``, the SNR reference of analyze's grid and of
    bench) and ``h_gaussian_bits_per_element`` (None when the covariance is singular). So
    the Shannon lower bound, whose entropy is clipped at ``h_gaussian``, never exceeds the
    Gaussian R(D) of the same covariance.
    """

    num_vectors: int
    mean: np.ndarray = field(repr=False)
    covariance: np.ndarray = field(repr=False)
    eigenvalues: np.ndarray = field(repr=False)
    eigenvectors: np.ndarray = field(repr=False)
    channel_variance: np.ndarray = field(repr=False)
    h_gaussian_bits_per_element: float | None = None

    @property
    def variance_per_element(self) -> float:
        return float(np.sum(self.channel_variance)) / self.channel_variance.size


@dataclass(frozen=True)
class SlabAnalysis:
    """What :func:`slab_analysis` returns: the metrics of :func:`analyze_slab`, the per-vector
    code lengths (bits per element, NaN where excluded or undefined), the Gaussian model
    (None when the slab has no more finite vectors than dimensions) and the slab as float64
    (non-finite values set to 0; None when the Gaussian model is None)."""

    metrics: dict
    token_bits: np.ndarray = field(repr=False)
    gaussian: SlabGaussian | None = field(repr=False)
    x64: np.ndarray | None = field(repr=False)


#: the metrics that need more finite vectors than dimensions (a full-rank covariance, the
#: Gaussian bounds, the kNN estimate, the per-vector code lengths): null on smaller slabs
#: with ``allow_partial``, each with its reason in ``null_reasons``
SMALL_DATA_METRICS = (
    "pca_energy_fraction",
    "pca_top1_energy_fraction",
    "pca_components_90pct",
    "pca_components_99pct",
    "rd_gaussian_bits_per_element",
    "rd_gaussian_independent_bits_per_element",
    "transform_coding_gain_bits_per_element",
    "h_gaussian_bits_per_element",
    "total_correlation_gaussian_bits_per_element",
    "h_knn_estimate_bits_per_element",
    "h_knn_raw_bits_per_element",
    "knn_bias_correction_bits_per_element",
    "negentropy_estimate_bits_per_element",
    "total_correlation_estimate_bits_per_element",
    "slb_estimate_bits_per_element",
    "rd_temporal_innovation_bits_per_element",
    "temporal_prediction_gain_bits_per_element",
    "temporal_prediction_gain_db",
    "lag1_correlation_mean",
    "pervector_rd_gaussian_bits_per_element",
    "pervector_mean_bits_per_element",
    "pervector_p50_bits_per_element",
    "pervector_p90_bits_per_element",
    "pervector_p99_bits_per_element",
    "pervector_max_bits_per_element",
    "pervector_first_token_bits_per_element",
    "pervector_first_token_to_median_ratio",
    "pervector_first_token_percentile",
)
_GRID_SMALL = frozenset(
    {
        "rd_gaussian_bits_per_element",
        "rd_gaussian_independent_bits_per_element",
        "transform_coding_gain_bits_per_element",
        "slb_estimate_bits_per_element",
        "rd_temporal_innovation_bits_per_element",
        "temporal_prediction_gain_bits_per_element",
    }
)


def small_data_reason(n: int, d: int) -> str:
    """Why the covariance-based metrics of a slab of ``n`` finite vectors in ``d``
    dimensions are null."""
    return (
        f"{n} finite vectors in {d} dimensions: the covariance, the Gaussian bounds, the kNN "
        "estimate and the per-vector code lengths need more vectors than dimensions (capture "
        "more tokens)"
    )


def _channel_stats(metrics: dict, st, mean, var, outlier_rms_ratio) -> np.ndarray:
    """Per-channel statistics into ``metrics``; returns the zero-variance channels."""
    d = var.size
    metrics["variance_per_element"] = float(var.sum()) / d
    metrics["mean_square_per_element"] = float(np.mean(var + mean * mean))
    metrics["channel_mean"] = mean
    metrics["channel_variance"] = var
    metrics["channel_excess_kurtosis"] = st.moments.excess_kurtosis()
    rms = np.sqrt(var + mean * mean)
    med = float(np.median(rms))
    ratio = rms / med if med > 0 else np.zeros(d)
    outl = np.flatnonzero(ratio > outlier_rms_ratio)
    metrics["outlier_channels"] = outl.tolist()
    metrics["outlier_channel_rms_ratio"] = ratio[outl]
    metrics["max_channel_rms_ratio"] = float(ratio.max())
    kurt = metrics["channel_excess_kurtosis"]
    metrics["max_channel_excess_kurtosis"] = (
        float(np.nanmax(kurt)) if np.any(np.isfinite(kurt)) else None
    )
    zero_var = np.flatnonzero(var <= max(float(var.max()), 0.0) * 1e-14)
    metrics["zero_variance_channels"] = zero_var.tolist()
    return zero_var


def _partial_analysis(
    a, st, metrics, notes, snr, token_ids, knn_k, pervector_snr_db, outlier_rms_ratio
) -> SlabAnalysis:
    """The metrics of a slab with no more finite vectors than dimensions (``allow_partial``):
    the stored-value entropies and per-channel statistics; the rest null with its reason."""
    n_all, d = a.shape
    n = st.moments.n
    reason = small_data_reason(n, d)
    notes.append(reason)
    warnings.warn(reason, AnalysisWarning, stacklevel=3)
    if n >= 2:
        _channel_stats(metrics, st, st.moments.mean, st.moments.variance(), outlier_rms_ratio)
        sigma2 = metrics["variance_per_element"]
        metrics["snr_db"] = snr
        metrics["mse_per_element"] = snr_grid_to_mse(sigma2, snr)
        metrics["pervector_mse_per_element"] = float(snr_grid_to_mse(sigma2, pervector_snr_db))
    else:
        metrics["variance_per_element"] = None
        metrics["snr_db"] = snr
        metrics["mse_per_element"] = [None] * snr.size
        metrics["pervector_mse_per_element"] = None
    reasons = {}
    for key in SMALL_DATA_METRICS:
        metrics[key] = [None] * snr.size if key in _GRID_SMALL else None
        reasons[key] = reason
    metrics["knn_samples"] = 0
    metrics["knn_k"] = int(knn_k)
    metrics["temporal_pairs"] = int(st.pairs.n)
    metrics["pervector_snr_db"] = float(pervector_snr_db)
    metrics["pervector_top_tokens"] = []
    tok = None if token_ids is None else np.asarray(token_ids)
    if tok is not None and tok.shape[0] != n_all:
        raise AnalysisInputError(f"token_ids has {tok.shape[0]} entries; the slab has {n_all}")
    metrics["null_reasons"] = reasons
    metrics["notes"] = notes
    return SlabAnalysis(
        metrics=metrics, token_bits=np.full(n_all, np.nan), gaussian=None, x64=None
    )


def check_knn_options(knn_samples, knn_k, pervector_snr_db) -> None:
    """Refuse kNN subsample sizes, neighbour orders and per-vector SNRs that cannot work
    (shared by :func:`analyze_slab` and the bench engine)."""
    if knn_samples < 2:
        raise AnalysisInputError(f"knn_samples must be at least 2; got {knn_samples}")
    if isinstance(knn_k, bool) or not isinstance(knn_k, int | np.integer) or knn_k < 1:
        raise AnalysisInputError(f"knn_k must be a positive integer; got {knn_k!r}")
    if not math.isfinite(pervector_snr_db):
        raise AnalysisInputError(f"pervector_snr_db must be finite; got {pervector_snr_db}")


def analyze_slab(
    slab,
    *,
    snr_db=DEFAULT_SNR_DB,
    sequences=None,
    token_ids=None,
    knn_samples: int = 2000,
    knn_k: int = 4,
    seed: int = 0,
    pervector_snr_db: float = 20.0,
    top_tokens: int = 5,
    outlier_rms_ratio: float = 4.0,
    chunk_rows: int = 4096,
    return_token_bits: bool = False,
    allow_partial: bool = False,
):
    """Analyse one slab of stored KV vectors; return a dict of metrics.

    Parameters
    ----------
    slab : numpy.ndarray, shape (num_tokens, head_dim)
        Stored values (float32, float16 or ml_dtypes.bfloat16), in token order.
    snr_db : sequence of float
        The distortion grid, as SNR in dB relative to the slab's variance per element
        (``mse = variance * 10**(-snr/10)``).
    sequences : list of (start, stop), optional
        Token ranges of the sequences (lag-1 pairs never cross them). Default: one sequence.
    token_ids : array_like, optional
        Token id of each row, reported with the most expensive vectors.
    knn_samples, knn_k, seed :
        Size of the random subsample for the kNN entropy estimate, neighbour order, seed.
    pervector_snr_db : float
        Distortion (SNR in dB) at which per-vector code lengths are computed.
    top_tokens : int
        How many of the most expensive vectors to list.
    outlier_rms_ratio : float
        A channel is an outlier when its RMS exceeds this multiple of the median channel RMS.
    chunk_rows : int
        Rows per streaming chunk.
    return_token_bits : bool
        Also return the per-vector code lengths (bits per element, NaN where excluded).
    allow_partial : bool
        With no more finite vectors than dimensions, return the metrics that are still
        defined (the entropies of the stored values, the per-channel statistics) and null
        the ones that need a covariance (the Gaussian bounds and entropies, PCA, the kNN
        estimate, the per-vector code lengths), each with its reason in ``null_reasons``
        (see :data:`SMALL_DATA_METRICS`). Default False: raise.

    Returns
    -------
    dict or (dict, numpy.ndarray)

    Raises
    ------
    AnalysisInputError
        Empty slab, unsupported dtype, no finite vectors, or (unless ``allow_partial``) no
        more vectors than dimensions.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = (rng.standard_normal((600, 8)) @ rng.standard_normal((8, 8))).astype(np.float32)
    >>> m = analyze_slab(x, snr_db=[10.0, 20.0], knn_samples=500)
    >>> r_joint = m["rd_gaussian_bits_per_element"]
    >>> r_indep = m["rd_gaussian_independent_bits_per_element"]
    >>> bool(r_joint[1] < r_indep[1])
    True
    """
    res = slab_analysis(
        slab, snr_db=snr_db, sequences=sequences, token_ids=token_ids, knn_samples=knn_samples,
        knn_k=knn_k, seed=seed, pervector_snr_db=pervector_snr_db, top_tokens=top_tokens,
        outlier_rms_ratio=outlier_rms_ratio, chunk_rows=chunk_rows, allow_partial=allow_partial,
    )
    if return_token_bits:
        return res.metrics, res.token_bits
    return res.metrics


def slab_analysis(
    slab,
    *,
    snr_db=DEFAULT_SNR_DB,
    sequences=None,
    token_ids=None,
    knn_samples: int = 2000,
    knn_k: int = 4,
    seed: int = 0,
    pervector_snr_db: float = 20.0,
    top_tokens: int = 5,
    outlier_rms_ratio: float = 4.0,
    chunk_rows: int = 4096,
    allow_partial: bool = False,
) -> SlabAnalysis:
    """:func:`analyze_slab` with everything the engines share: the metrics, the per-vector
    code lengths, the slab's Gaussian model (covariance and eigendecomposition, computed
    once) and its float64 values. The parameters are those of :func:`analyze_slab`."""
    a = np.asarray(slab)
    if a.ndim != 2:
        raise AnalysisInputError(f"a slab must be 2-D (num_tokens, head_dim); got shape {a.shape}")
    dtype = str(a.dtype)
    if dtype not in FIELD_LAYOUT:
        raise AnalysisInputError(f"slab dtype must be one of {sorted(FIELD_LAYOUT)}; got {dtype}")
    n_all, d = a.shape
    if n_all == 0 or d == 0:
        raise AnalysisInputError(f"the slab is empty (shape {a.shape})")
    snr = np.asarray(snr_db, dtype=np.float64).ravel()
    if snr.size == 0 or not np.all(np.isfinite(snr)):
        raise AnalysisInputError("snr_db must be a non-empty list of finite numbers")
    check_knn_options(knn_samples, knn_k, pervector_snr_db)
    if not (math.isfinite(outlier_rms_ratio) and outlier_rms_ratio > 0):
        raise AnalysisInputError(
            f"outlier_rms_ratio must be a finite number > 0; got {outlier_rms_ratio}"
        )
    notes: list[str] = []

    # ---- pass 1: streaming sufficient statistics ------------------------------------
    starts = _starts_mask(n_all, sequences)
    st = SlabStats(d, dtype)
    for s in range(0, n_all, chunk_rows):
        st.update(a[s : s + chunk_rows], starts[s : s + chunk_rows])
    n = st.moments.n
    metrics: dict = {
        "num_vectors": n_all,
        "head_dim": d,
        "dtype": dtype,
        "storage_bits_per_element": FIELD_LAYOUT[dtype][0],
        "nonfinite_elements": st.nonfinite_elements,
        "excluded_vectors": st.excluded_vectors,
    }
    if st.nonfinite_elements:
        msg = (
            f"{st.nonfinite_elements} NaN/Inf values in {st.excluded_vectors} of {n_all} vectors; "
            "those vectors are excluded from all float statistics (their bit patterns still "
            "count in the lossless entropies)"
        )
        notes.append(msg)
        warnings.warn(msg, AnalysisWarning, stacklevel=2)
    if n == 0:
        raise AnalysisInputError(f"all {n_all} vectors contain NaN or Inf; nothing to analyse")
    if n <= d and not allow_partial:
        raise AnalysisInputError(
            f"{n} finite vectors in {d} dimensions: needs more vectors than dimensions for a "
            "covariance (capture more tokens)"
        )

    # ---- lossless: order-0 entropies of the stored patterns -------------------------
    metrics.update(st.patterns.entropies())
    ch_of, _, _ = st.patterns.triplets()
    distinct_ch = np.bincount(ch_of, minlength=d) / max(n_all, 1)
    metrics["h0_per_channel_distinct_fraction"] = float(distinct_ch.mean())
    metrics["h0_per_channel_undersampled"] = bool(distinct_ch.mean() > UNDERSAMPLED_FRACTION)
    if n <= d:
        return _partial_analysis(
            a, st, metrics, notes, snr, token_ids, knn_k, pervector_snr_db, outlier_rms_ratio
        )

    # ---- second-order statistics ---------------------------------------------------
    mean = st.moments.mean
    cov = st.moments.covariance()
    var = np.diag(cov).copy()
    lam, vecs = np.linalg.eigh(cov)
    lam = np.maximum(lam, 0.0)
    total = float(lam.sum())
    sigma2 = float(var.sum()) / d
    zero_var = _channel_stats(metrics, st, mean, var, outlier_rms_ratio)
    desc = lam[::-1]
    frac = np.cumsum(desc) / total if total > 0 else np.ones(d)
    metrics["pca_energy_fraction"] = frac
    metrics["pca_top1_energy_fraction"] = float(frac[0])
    metrics["pca_components_90pct"] = int(np.searchsorted(frac, 0.9 - 1e-12) + 1)
    metrics["pca_components_99pct"] = int(np.searchsorted(frac, 0.99 - 1e-12) + 1)
    singular = total <= 0 or lam[0] <= lam[-1] * 1e-12
    if zero_var.size:
        notes.append(
            f"zero-variance channels {zero_var.tolist()[:16]}: their rate is 0 in every R(D); "
            "the differential entropy is -inf, so the entropy-based metrics are null"
        )
    elif singular:
        notes.append(
            f"singular covariance (eigenvalues {lam[0]:.3g} .. {lam[-1]:.3g}): the channels are "
            "linearly dependent; the entropy-based metrics are null"
        )

    # ---- lossy: Gaussian R(D) on the grid --------------------------------------------
    mse = snr_grid_to_mse(sigma2, snr)
    rd_full = rd_gaussian_eigenvalues(lam, mse)
    rd_ind = rd_gaussian_eigenvalues(np.sort(var), mse)
    metrics["snr_db"] = snr
    metrics["mse_per_element"] = mse
    metrics["rd_gaussian_bits_per_element"] = rd_full
    metrics["rd_gaussian_independent_bits_per_element"] = rd_ind
    metrics["transform_coding_gain_bits_per_element"] = rd_ind - rd_full

    h_gauss = None
    if not singular:
        h_gauss = _HALF_LOG2_2PIE + 0.5 * float(np.mean(np.log2(lam)))
        metrics["total_correlation_gaussian_bits_per_element"] = 0.5 * float(
            np.mean(np.log2(var)) - np.mean(np.log2(lam))
        )
    else:
        metrics["total_correlation_gaussian_bits_per_element"] = None
    metrics["h_gaussian_bits_per_element"] = h_gauss

    # ---- kNN estimate of h on a dithered subsample -----------------------------------
    rng = np.random.default_rng(seed)
    valid_idx = np.arange(n_all)
    if st.excluded_vectors:
        x_all = a.astype(np.float32) if dtype == "bfloat16" else a
        valid_idx = np.flatnonzero(np.all(np.isfinite(x_all), axis=1))
    m = min(int(knn_samples), valid_idx.size)
    sub = np.sort(rng.choice(valid_idx, size=m, replace=False)) if m < valid_idx.size else valid_idx
    metrics["knn_samples"] = int(m)
    metrics["knn_k"] = int(knn_k)
    for key in (
        "h_knn_estimate_bits_per_element",
        "h_knn_raw_bits_per_element",
        "knn_bias_correction_bits_per_element",
        "negentropy_estimate_bits_per_element",
        "total_correlation_estimate_bits_per_element",
    ):
        metrics[key] = None
    metrics["slb_estimate_bits_per_element"] = [None] * snr.size
    metrics["h_knn_clipped_to_gaussian"] = None
    if h_gauss is not None and m > d + knn_k:
        xs = dither_stored(a[sub], rng)
        try:
            est = entropy_knn_corrected(xs, k=knn_k, details=True, seed=seed)
            marg_raw = entropy_knn_marginals(xs, k=knn_k)
            marg_bias, _ = knn_gaussian_bias(int(m), 1, int(knn_k), 4, int(seed))
        except AnalysisInputError as exc:
            notes.append(f"kNN entropy estimate skipped: {exc}")
        else:
            h_est = est["estimate"]
            metrics["h_knn_estimate_bits_per_element"] = h_est
            metrics["h_knn_raw_bits_per_element"] = est["raw"]
            metrics["knn_bias_correction_bits_per_element"] = -est["bias"]
            metrics["negentropy_estimate_bits_per_element"] = h_gauss - h_est
            marg = marg_raw - marg_bias
            # TC >= 0 is a theorem; the joint kNN estimate reads high on non-Gaussian data
            metrics["total_correlation_estimate_bits_per_element"] = max(
                float(np.mean(marg)) - h_est, 0.0
            )
            # h <= h_gauss is a theorem; clip the estimate so the SLB never exceeds R_G(D)
            metrics["h_knn_clipped_to_gaussian"] = bool(h_est > h_gauss)
            if h_est > h_gauss:
                notes.append(
                    f"kNN entropy estimate {h_est:.3f} exceeds the Gaussian entropy "
                    f"{h_gauss:.3f} bits/element (impossible for the true h); the SLB estimate "
                    "uses h_G and equals the Gaussian R(D)"
                )
            metrics["slb_estimate_bits_per_element"] = rd_shannon_lower_bound(
                min(h_est, h_gauss), mse
            )
    elif h_gauss is not None:
        notes.append(f"kNN entropy estimate skipped: {m} samples for {d} dimensions")

    # ---- bounds that hold: lower curve and clustered upper bound ---------------------
    metrics.update(
        _bound_metrics(a, valid_idx, vecs, lam, h_gauss, mse, rd_full, seed, knn_k, notes)
    )

    # ---- temporal prediction (lag 1 within sequences) --------------------------------
    pairs = st.pairs
    metrics["temporal_pairs"] = int(pairs.n)
    if pairs.n > 2 * d + 1:
        c00, c11, c10 = pairs.blocks()
        sig_e = pairs.innovation_covariance()
        lam_e = np.maximum(np.linalg.eigvalsh(sig_e), 0.0)
        rd_innov = rd_gaussian_eigenvalues(lam_e, mse)
        metrics["rd_temporal_innovation_bits_per_element"] = rd_innov
        metrics["temporal_prediction_gain_bits_per_element"] = rd_full - rd_innov
        tr_e = float(np.trace(sig_e))
        metrics["temporal_prediction_gain_db"] = (
            10.0 * math.log10(float(np.trace(c11)) / tr_e) if tr_e > 0 else None
        )
        dd = np.sqrt(np.diag(c00) * np.diag(c11))
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = np.where(dd > 0, np.diag(c10) / dd, np.nan)
        metrics["lag1_correlation_mean"] = float(np.nanmean(rho)) if np.any(dd > 0) else None
    else:
        metrics["rd_temporal_innovation_bits_per_element"] = [None] * snr.size
        metrics["temporal_prediction_gain_bits_per_element"] = [None] * snr.size
        metrics["temporal_prediction_gain_db"] = None
        metrics["lag1_correlation_mean"] = None
        notes.append(f"temporal prediction skipped: {pairs.n} consecutive pairs for {d} dims")

    # ---- per-vector Shannon code lengths ---------------------------------------------
    d_pv = float(snr_grid_to_mse(sigma2, pervector_snr_db))
    theta = float(water_level(lam, d_pv))
    valid = np.zeros(n_all, dtype=bool)
    valid[valid_idx] = True
    x64 = to_float64(a)
    if st.excluded_vectors:
        x64 = np.where(np.isfinite(x64), x64, 0.0)
    bits = _pervector_bits(x64, valid, mean, vecs, lam, theta, d, chunk_rows, n=n)
    vb = bits[valid]
    metrics["pervector_snr_db"] = float(pervector_snr_db)
    metrics["pervector_mse_per_element"] = d_pv
    metrics["pervector_rd_gaussian_bits_per_element"] = float(rd_gaussian_eigenvalues(lam, d_pv))
    metrics["pervector_mean_bits_per_element"] = float(vb.mean())
    for q in (50, 90, 99):
        metrics[f"pervector_p{q}_bits_per_element"] = float(np.percentile(vb, q))
    metrics["pervector_max_bits_per_element"] = float(vb.max())
    seq, pos = _positions(n_all, sequences)
    tok = None if token_ids is None else np.asarray(token_ids)
    if tok is not None and tok.shape[0] != n_all:
        raise AnalysisInputError(f"token_ids has {tok.shape[0]} entries; the slab has {n_all}")
    metrics["pervector_top_tokens"] = top_token_list(bits, seq, pos, tok, top_tokens)
    metrics.update(first_token_summary(bits, pos))
    metrics["notes"] = notes
    gauss = SlabGaussian(
        num_vectors=int(n), mean=mean, covariance=cov, eigenvalues=lam, eigenvectors=vecs,
        channel_variance=var, h_gaussian_bits_per_element=h_gauss,
    )
    return SlabAnalysis(metrics=metrics, token_bits=bits, gaussian=gauss, x64=x64)


def _bound_metrics(a, valid_idx, vecs, lam, h_gauss, mse, rd_full, seed, knn_k, notes) -> dict:
    """Lower curve (``rd_lower_bound_*``) and best achievable upper bound of one slab."""
    n_grid = mse.size
    d = a.shape[1]
    out: dict = {
        "h_lower_estimate_bits_per_element": None,
        "h_lower_model": None,
        "h_lower_members_bits_per_element": None,
        "lower_bound_samples": 0,
        "rd_lower_bound_bits_per_element": [None] * n_grid,
        "rd_cluster_upper_bound_bits_per_element": [None] * n_grid,
        "rd_upper_bound_bits_per_element": rd_full,
        "rd_lower_bound_exceeds_upper": None,
    }
    rng = np.random.default_rng(seed + 1)
    m = min(BOUND_SAMPLES, valid_idx.size)
    sub = np.sort(rng.choice(valid_idx, size=m, replace=False)) if m < valid_idx.size else valid_idx
    out["lower_bound_samples"] = int(m)
    if m < 2 * d + 16:
        notes.append(f"bounds skipped: {m} vectors for {d} dimensions (needs {2 * d + 16})")
        return out
    stored = a[sub]
    try:
        pick = rng.permutation(m)[: min(m, 8000)]
        up = rd_cluster_upper_bound(to_float64(stored[pick]), mse, seed=seed)
    except AnalysisInputError as exc:
        notes.append(f"clustered upper bound skipped: {exc}")
    else:
        out["rd_cluster_upper_bound_bits_per_element"] = [
            float(v) if np.isfinite(v) else None for v in up
        ]
        out["rd_upper_bound_bits_per_element"] = np.minimum(rd_full, up)
    if h_gauss is None:
        return out
    try:
        low = rd_lower_curve(
            stored, mse, eigenvalues=lam, num_vectors=valid_idx.size, basis=vecs, k=knn_k,
            seed=seed, details=True,
        )
    except AnalysisInputError as exc:
        notes.append(f"lower curve skipped: {exc}")
        return out
    out["h_lower_estimate_bits_per_element"] = low["h_lower"]
    out["h_lower_model"] = low["model"]
    out["h_lower_members_bits_per_element"] = {k: float(v) for k, v in low["members"].items()}
    low_curve = np.minimum(low["rate"], rd_full)
    out["rd_lower_bound_bits_per_element"] = low_curve
    upper = np.asarray(out["rd_upper_bound_bits_per_element"], dtype=float)
    out["rd_lower_bound_exceeds_upper"] = bool(np.any(low_curve > upper + 1e-9))
    if out["rd_lower_bound_exceeds_upper"]:
        notes.append(
            "the lower curve exceeds the clustered upper bound at some distortions: the source "
            "fits none of the lower curve's models (see docs/analysis.md, 'Bounds that hold')"
        )
    return out


def top_token_list(bits, seq, pos, token_ids, k: int) -> list[dict]:
    """The ``k`` most expensive vectors as dicts (token index, sequence, position, id, bits)."""
    finite = np.flatnonzero(np.isfinite(bits))
    if finite.size == 0 or k <= 0:
        return []
    order = finite[np.argsort(bits[finite])[::-1][:k]]
    out = []
    for i in order:
        out.append(
            {
                "token_index": int(i),
                "sequence": int(seq[i]),
                "position": int(pos[i]),
                "token_id": None if token_ids is None else int(token_ids[i]),
                "bits_per_element": float(bits[i]),
            }
        )
    return out


def first_token_summary(bits, pos) -> dict:
    """Mean cost of the first vector of each sequence vs the median vector (sink check)."""
    finite = np.isfinite(bits)
    first = finite & (pos == 0)
    if not np.any(first) or not np.any(finite):
        return {
            "pervector_first_token_bits_per_element": None,
            "pervector_first_token_to_median_ratio": None,
            "pervector_first_token_percentile": None,
        }
    vals = bits[finite]
    fb = float(np.mean(bits[first]))
    med = float(np.median(vals))
    pct = float(np.mean([np.mean(vals <= v) * 100.0 for v in bits[first]]))
    return {
        "pervector_first_token_bits_per_element": fb,
        "pervector_first_token_to_median_ratio": fb / med if med > 0 else None,
        "pervector_first_token_percentile": pct,
    }


class TokenCost:
    """Running per-token mean of per-vector code lengths over a group of slabs.

    ``add(bits)`` takes one slab's per-vector code lengths (bits per element, NaN for
    excluded vectors); :meth:`metrics` summarises the per-token means: percentiles, the most
    expensive tokens, the first-token (attention sink) summary and, with ``bins``, a
    histogram.
    """

    def __init__(self, n: int):
        self.sum = np.zeros(n)
        self.count = np.zeros(n)

    def add(self, bits: np.ndarray) -> None:
        ok = np.isfinite(bits)
        self.sum[ok] += bits[ok]
        self.count[ok] += 1

    def metrics(self, seq, pos, token_ids, top: int, bins: int | None = None) -> dict:
        with np.errstate(invalid="ignore", divide="ignore"):
            cost = np.where(self.count > 0, self.sum / np.maximum(self.count, 1), np.nan)
        ok = np.isfinite(cost)
        out: dict = {}
        if bins is not None and ok.any():
            counts, edges = np.histogram(cost[ok], bins=bins)
            out["pervector_histogram_counts"] = counts
            out["pervector_histogram_bin_edges_bits_per_element"] = edges
            out["pervector_mean_bits_per_element"] = float(cost[ok].mean())
        for q in (50, 90, 99):
            out[f"pervector_p{q}_bits_per_element"] = (
                float(np.percentile(cost[ok], q)) if ok.any() else None
            )
        out["pervector_max_bits_per_element"] = float(cost[ok].max()) if ok.any() else None
        out["pervector_top_tokens"] = top_token_list(cost, seq, pos, token_ids, top)
        out.update(first_token_summary(cost, pos))
        return out
