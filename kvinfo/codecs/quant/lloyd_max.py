"""Lloyd-Max scalar codebooks for the Gaussian and for one coordinate of a random unit vector.

TurboQuant (Zandieh et al., 2025) rotates each vector by a random orthogonal matrix. After
the rotation, each coordinate of a *unit* vector in dimension ``d`` has the density

.. math::

    f_d(t) = \\frac{\\Gamma(d/2)}{\\sqrt{\\pi}\\,\\Gamma((d-1)/2)} (1 - t^2)^{(d-3)/2},
    \\qquad -1 \\le t \\le 1,

that is :math:`t^2 \\sim \\mathrm{Beta}(1/2, (d-1)/2)`, and for large ``d`` the coordinate is
close to :math:`\\mathcal N(0, 1/d)`. Quantizing every coordinate with the Lloyd-Max
(MSE-optimal scalar) codebook of :math:`f_d` is the TurboQuant MSE scheme.

The codebooks are computed here from closed forms, with no sampling, so they are
deterministic: the cell probability uses the regularized incomplete beta function, the cell's
first moment has the antiderivative :math:`-(1-t^2)^{(d-1)/2} / (d-1)` (times the density's
constant), and the second moment is :math:`\\frac1d I_{t^2}(3/2, (d-1)/2)`. The Lloyd
iteration (centroid, then midpoint boundaries) runs in float64 to a fixed point. Results are
cached per ``(bits, dim)``.

References
----------
S. P. Lloyd, "Least squares quantization in PCM", IEEE Trans. IT 28(2), 1982.
J. Max, "Quantizing for minimum distortion", IRE Trans. IT 6(1), 1960.
A. Zandieh, M. Daliri, M. Hadian, V. Mirrokni, "TurboQuant: Online Vector Quantization with
Near-optimal Distortion Rate", arXiv:2504.19874, 2025.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from scipy import special

from ...errors import CodecConfigError

__all__ = ["Codebook", "lloyd_max_gaussian", "lloyd_max_sphere", "quantize_to_codebook"]

MAX_CODEBOOK_BITS = 6  # Lloyd iteration time grows fast past 6 bits (1.5 s at 6)


class Codebook(NamedTuple):
    """A scalar quantizer: ``levels`` (ascending reconstruction points, length ``2**bits``),
    ``boundaries`` (the ``2**bits - 1`` decision thresholds between them) and
    ``mse_per_element`` (its expected squared error on the source it was designed for)."""

    levels: np.ndarray
    boundaries: np.ndarray
    mse_per_element: float


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer):
        raise CodecConfigError(f"bits must be an integer in 1..{MAX_CODEBOOK_BITS}; found {bits!r}")
    if not 1 <= int(bits) <= MAX_CODEBOOK_BITS:
        raise CodecConfigError(f"bits must be in 1..{MAX_CODEBOOK_BITS}; found {bits}")
    return int(bits)


def _lloyd(moments, init_levels: np.ndarray, lo: float, hi: float) -> Codebook:
    """Run Lloyd's fixed point for a symmetric density given its cell-moment function.

    ``moments(a, b)`` returns ``(m0, m1, m2)``: the probability, first and second moments of
    the cells ``[a_i, b_i]``.
    """
    levels = np.asarray(init_levels, dtype=np.float64)
    for _ in range(100000):
        bounds = 0.5 * (levels[1:] + levels[:-1])
        a = np.concatenate(([lo], bounds))
        b = np.concatenate((bounds, [hi]))
        m0, m1, _ = moments(a, b)
        new = np.where(m0 > 0, m1 / np.where(m0 > 0, m0, 1.0), 0.5 * (a + b))
        # Keep exact symmetry: the sources are symmetric about zero.
        new = 0.5 * (new - new[::-1])
        delta = float(np.max(np.abs(new - levels)))
        levels = new
        if delta < 1e-13 * max(1.0, float(np.max(np.abs(levels)))):
            break
    bounds = 0.5 * (levels[1:] + levels[:-1])
    a = np.concatenate(([lo], bounds))
    b = np.concatenate((bounds, [hi]))
    m0, m1, m2 = moments(a, b)
    mse = float(np.sum(m2 - 2.0 * levels * m1 + levels * levels * m0))
    levels.setflags(write=False)
    bounds.setflags(write=False)
    return Codebook(levels, bounds, mse)


def _gaussian_moments(a: np.ndarray, b: np.ndarray):
    # Beyond |t| = 40 the density and its moments are 0 in float64; clipping keeps inf out.
    a = np.clip(a, -40.0, 40.0)
    b = np.clip(b, -40.0, 40.0)
    phi_a = np.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    phi_b = np.exp(-0.5 * b * b) / math.sqrt(2 * math.pi)
    m0 = special.ndtr(b) - special.ndtr(a)
    m1 = phi_a - phi_b
    ta = a * phi_a
    tb = b * phi_b
    m2 = m0 - (tb - ta)
    return m0, m1, m2


@functools.lru_cache(maxsize=64)
def lloyd_max_gaussian(bits: int) -> Codebook:
    """The Lloyd-Max codebook of the unit Gaussian :math:`\\mathcal N(0, 1)`.

    Parameters
    ----------
    bits : int
        Bits per sample, 1 to 6 (``2**bits`` levels).

    Returns
    -------
    Codebook
        Levels, boundaries and the expected ``mse_per_element`` (0.3634, 0.1175, 0.03454,
        0.009497 at 1 to 4 bits; Max 1960).

    Examples
    --------
    >>> from kvinfo.codecs.quant.lloyd_max import lloyd_max_gaussian
    >>> round(lloyd_max_gaussian(2).mse_per_element, 4)
    0.1175
    >>> [round(float(v), 4) for v in lloyd_max_gaussian(1).levels]
    [-0.7979, 0.7979]
    """
    bits = _check_bits(bits)
    n = 1 << bits
    # Panter-Dite start: level density proportional to f^(1/3), i.e. N(0, 3) quantiles.
    init = special.ndtri((np.arange(n) + 0.5) / n) * math.sqrt(3.0)
    return _lloyd(_gaussian_moments, init, -np.inf, np.inf)


def _sphere_moments_factory(dim: int):
    alpha = 0.5 * (dim - 1)
    # Density constant Gamma(d/2) / (sqrt(pi) Gamma((d-1)/2)), via log-gamma for large d.
    log_c = special.gammaln(0.5 * dim) - 0.5 * math.log(math.pi) - special.gammaln(alpha)
    c = math.exp(log_c)

    def cdf(t):
        return 0.5 + 0.5 * np.sign(t) * special.betainc(0.5, alpha, np.minimum(t * t, 1.0))

    def second(t):  # integral_0^t s^2 f(s) ds, odd in t
        return 0.5 * np.sign(t) * special.betainc(1.5, alpha, np.minimum(t * t, 1.0)) / dim

    def first(t):  # antiderivative of t f(t)
        return -c * np.power(np.maximum(1.0 - t * t, 0.0), alpha) / (2.0 * alpha)

    def moments(a, b):
        return cdf(b) - cdf(a), first(b) - first(a), second(b) - second(a)

    return moments


@functools.lru_cache(maxsize=256)
def lloyd_max_sphere(bits: int, dim: int) -> Codebook:
    """The Lloyd-Max codebook of one coordinate of a uniformly random unit vector in ``dim`` dims.

    Parameters
    ----------
    bits : int
        Bits per coordinate, 1 to 6.
    dim : int
        The dimension ``d >= 2`` of the vectors (the head dimension, or the size of a channel
        subset). The coordinate variance is ``1/d``.

    Returns
    -------
    Codebook
        ``mse_per_element`` is the expected squared error of one coordinate; multiplied by
        ``dim`` it is the expected squared error of a whole unit vector (TurboQuant's D_mse).

    Examples
    --------
    >>> from kvinfo.codecs.quant.lloyd_max import lloyd_max_sphere
    >>> cb = lloyd_max_sphere(2, 128)
    >>> print(f"{128 * cb.mse_per_element:.4f}")  # tends to the Gaussian 0.1175 as d grows
    0.1160
    """
    bits = _check_bits(bits)
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or int(dim) < 2:
        raise CodecConfigError(f"dim must be an integer >= 2; found {dim!r}")
    dim = int(dim)
    n = 1 << bits
    sigma = 1.0 / math.sqrt(dim)
    init = np.clip(special.ndtri((np.arange(n) + 0.5) / n) * sigma * math.sqrt(3.0), -0.99, 0.99)
    return _lloyd(_sphere_moments_factory(dim), init, -1.0, 1.0)


def quantize_to_codebook(x: np.ndarray, codebook: Codebook) -> np.ndarray:
    """Indices (uint8) of the nearest level of ``codebook`` for each element of ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> from kvinfo.codecs.quant.lloyd_max import lloyd_max_gaussian, quantize_to_codebook
    >>> quantize_to_codebook(np.array([-3.0, -0.1, 0.1, 3.0]), lloyd_max_gaussian(2)).tolist()
    [0, 1, 2, 3]
    """
    return np.searchsorted(codebook.boundaries, x, side="left").astype(np.uint8)
