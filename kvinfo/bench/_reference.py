"""The reference bounds of one slab, at the distortion a codec achieved.

:class:`SlabReference` takes what :func:`kvinfo.analysis.slab_analysis` computed once for
the slab (its :class:`~kvinfo.analysis.SlabGaussian`: covariance eigenvalues, channel
variances, all with ``ddof=1``; and the kNN entropy estimate) and evaluates the Gaussian
R(D), the independent-channel Gaussian R(D) and the Shannon lower bound estimate at any
MSE. The SLB's entropy is the kNN estimate clipped at the Gaussian entropy of the *same*
covariance, so the SLB never exceeds the Gaussian R(D). A slab with no more vectors than
dimensions has no Gaussian model: its bounds are null, with the reason.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SlabReference", "BOUND_METRICS"]

#: the bound metrics a reference gives at a distortion
BOUND_METRICS = (
    "rd_gaussian_bits_per_element",
    "rd_gaussian_independent_bits_per_element",
    "slb_estimate_bits_per_element",
)


class SlabReference:
    """What the bounds need of one slab (from its :class:`~kvinfo.analysis.SlabAnalysis`).

    Attributes
    ----------
    variance_per_element : float or None
        ``tr Σ / d`` (``ddof=1``), the SNR reference, as in analyze's grid.
    h_slb : float or None
        The entropy of the SLB: the kNN estimate clipped at the Gaussian entropy.
    reason : str or None
        Why the bounds are null (no more vectors than dimensions), else None.
    """

    def __init__(self, analysis):
        m = analysis.metrics
        g = analysis.gaussian
        self.variance_per_element = m.get("variance_per_element")
        self.reason = None if g is not None else (m.get("null_reasons") or {}).get(
            "rd_gaussian_bits_per_element", "no Gaussian model of this slab"
        )
        if g is None:
            self.eigenvalues = self.sorted_variance = None
            self.eigenvectors = self.covariance = None
            self.h_slb = None
            return
        self.eigenvalues = g.eigenvalues
        self.eigenvectors = g.eigenvectors
        self.covariance = g.covariance
        self.sorted_variance = np.sort(g.channel_variance)
        h_knn = m.get("h_knn_estimate_bits_per_element")
        h_g = g.h_gaussian_bits_per_element
        # h <= h_gauss is a theorem: clip the estimate, as kvinfo analyze does
        self.h_slb = None if h_knn is None or h_g is None else min(h_knn, h_g)

    def bounds(self, mse: float) -> dict:
        """The bound metrics at ``mse`` (all null without a Gaussian model)."""
        from ..analysis import rd_gaussian_eigenvalues, rd_shannon_lower_bound

        if self.eigenvalues is None:
            return dict.fromkeys(BOUND_METRICS)
        rg = float(rd_gaussian_eigenvalues(self.eigenvalues, mse))
        ri = float(rd_gaussian_eigenvalues(self.sorted_variance, mse))
        slb = None if self.h_slb is None else float(rd_shannon_lower_bound(self.h_slb, mse))
        return {
            "rd_gaussian_bits_per_element": rg,
            "rd_gaussian_independent_bits_per_element": ri,
            "slb_estimate_bits_per_element": slb,
        }
