"""Information-theoretic limits of KV caches: entropies and rate-distortion bounds.

Rates are **bits per element** (per scalar) and distortion is **mean squared error per
element** everywhere. See ``docs/analysis.md`` for every formula, its reference, and
whether it is a bound or an estimate.

- :func:`entropy_discrete`, :func:`entropy_from_counts`: plug-in and Miller-Madow entropy.
- :func:`entropy_gaussian`: differential entropy of a Gaussian.
- :func:`entropy_knn`, :func:`entropy_knn_corrected`, :func:`entropy_knn_marginals`:
  Kozachenko-Leonenko estimates (raw, and prewhitened with a Gaussian bias correction).
- :func:`rd_gaussian`, :func:`dr_gaussian`: Gaussian R(D) by reverse water-filling, and D(R).
- :func:`rd_shannon_lower_bound`, :func:`blahut_arimoto`.
- :func:`rd_gaussian_attention`: Gaussian R(D) of keys under the attention-logit distortion
  (reverse water-filling on the eigenvalues of ``M^(1/2) S_k M^(1/2)``, ``M = E[q q^T]``).
- :func:`entropy_lower_estimate`, :func:`rd_lower_bound`, :func:`rd_cluster_upper_bound`,
  :class:`ReservoirSample`: the lower curve and the clustered upper bound that hold on
  non-Gaussian sources (``docs/analysis.md``, "Bounds that hold").
- :class:`SlabStats` and its parts: streaming, mergeable sufficient statistics.
- :func:`analyze_slab`: every metric of one (layer, kind, head) slab; :func:`slab_analysis`
  also returns its :class:`SlabGaussian` (covariance and eigendecomposition, computed once)
  for the bench reference bounds.
- :func:`analyze_dump`: the analyze engine (a dump and a selection in, a results document
  out; :func:`aggregate_slab_metrics` its per-group aggregate); :func:`aggregate_metrics`:
  the one aggregator of analyze and bench, with its rule for nulls (:func:`is_defined`);
  :class:`TokenCost`: per-token code lengths over a group of slabs;
  :func:`check_knn_options`: the kNN option check; :func:`warmup` compiles the counting
  kernels.
- :func:`mse_per_element`, :func:`snr_db`, :func:`cosine_similarity`,
  :func:`attention_score_errors`, :func:`attention_output_error`: distortion measures.
"""

from ._entropy import (
    dither_stored,
    entropy_discrete,
    entropy_from_counts,
    entropy_gaussian,
    entropy_knn,
    entropy_knn_corrected,
    entropy_knn_marginals,
    knn_gaussian_bias,
)
from ._rd import (
    blahut_arimoto,
    dr_gaussian,
    rd_gaussian,
    rd_gaussian_eigenvalues,
    rd_shannon_lower_bound,
)
from ._slab import (
    DEFAULT_SNR_DB,
    SMALL_DATA_METRICS,
    AnalysisWarning,
    SlabAnalysis,
    SlabGaussian,
    TokenCost,
    analyze_slab,
    check_knn_options,
    slab_analysis,
)
from ._stats import MomentStats, PairStats, PatternCounts, SlabStats, warmup
from .aggregate import aggregate_metrics, is_defined
from .attention_bound import (
    attention_metric_eigenvalues,
    attention_weighting,
    query_second_moment,
    rd_gaussian_attention,
)
from .bounds import (
    LOWER_MODELS,
    ReservoirSample,
    entropy_lower_estimate,
    entropy_marginals_lower,
    entropy_mixture_lower,
    kmeans,
    loewner_inflation,
    rd_cluster_upper_bound,
    rd_lower_bound,
    rd_lower_curve,
)
from .distortion import (
    attention_output_error,
    attention_score_errors,
    cosine_similarity,
    mse_per_element,
    snr_db,
)
from .engine import aggregate_slab_metrics, analyze_dump
from .gap import (
    HIGH_RATE_ECSQ_LOSS_BITS,
    allocation_loss,
    ecsq_gaussian_rate,
    gaussian_multi_information,
    scalar_quantizer_loss,
)
from .multi import analyze_dumps

__all__ = [
    "analyze_dumps",
    "entropy_discrete",
    "entropy_from_counts",
    "entropy_gaussian",
    "entropy_knn",
    "entropy_knn_corrected",
    "entropy_knn_marginals",
    "knn_gaussian_bias",
    "dither_stored",
    "rd_gaussian",
    "rd_gaussian_eigenvalues",
    "dr_gaussian",
    "rd_shannon_lower_bound",
    "blahut_arimoto",
    "rd_gaussian_attention",
    "attention_metric_eigenvalues",
    "attention_weighting",
    "query_second_moment",
    "ecsq_gaussian_rate",
    "scalar_quantizer_loss",
    "allocation_loss",
    "gaussian_multi_information",
    "HIGH_RATE_ECSQ_LOSS_BITS",
    "LOWER_MODELS",
    "entropy_lower_estimate",
    "entropy_marginals_lower",
    "entropy_mixture_lower",
    "kmeans",
    "loewner_inflation",
    "rd_lower_bound",
    "rd_lower_curve",
    "rd_cluster_upper_bound",
    "ReservoirSample",
    "PatternCounts",
    "MomentStats",
    "PairStats",
    "SlabStats",
    "AnalysisWarning",
    "DEFAULT_SNR_DB",
    "analyze_slab",
    "slab_analysis",
    "SlabAnalysis",
    "SlabGaussian",
    "SMALL_DATA_METRICS",
    "TokenCost",
    "check_knn_options",
    "analyze_dump",
    "aggregate_slab_metrics",
    "aggregate_metrics",
    "is_defined",
    "warmup",
    "mse_per_element",
    "snr_db",
    "cosine_similarity",
    "attention_score_errors",
    "attention_output_error",
]
