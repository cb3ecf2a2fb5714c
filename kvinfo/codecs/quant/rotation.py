"""Seeded random orthogonal rotations: randomized Hadamard and Haar-random orthogonal.

Both are built from a seed with a self-contained SplitMix64 generator (not numpy's
``Generator``, whose streams numpy does not promise to keep across versions), so a stream
written today decodes to the same rotation tomorrow.

* ``"hadamard"`` -- three rounds of the randomized Hadamard transform,
  :math:`R = \\prod_{r=1}^{3} H\\,\\mathrm{diag}(s_r) / \\sqrt d` with the Sylvester Hadamard
  matrix ``H`` and independent random signs ``s_r``; ``d`` must be a power of two. One round
  (as in QuaRot) is not enough for a data-independent distortion: it maps a basis vector to
  a flat vector of entries :math:`\\pm 1/\\sqrt d`, which 2-bit Lloyd-Max codes with about
  2.2 times the expected error. After three rounds the error on such adversarial inputs
  matches that of a Haar rotation (within 1 % over 300 seeds). kvinfo applies ``R`` as a
  dense matrix, so the extra rounds cost nothing at decode time; a fused GPU kernel would
  apply three fast transforms.
* ``"orthogonal"`` -- the Q factor of a QR decomposition of a seeded Gaussian matrix, with
  the signs of R's diagonal folded in (Haar distributed; Mezzadri 2007). Any ``d``.

The rotated vector of a row vector ``x`` is ``x @ R.T``; the inverse is ``y @ R``.

References
----------
F. Mezzadri, "How to generate random matrices from the classical compact groups",
Notices of the AMS 54(5), 2007.
N. Ailon, B. Chazelle, "The fast Johnson-Lindenstrauss transform", STOC 2006.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import linalg

from ...errors import CodecConfigError

__all__ = ["ROTATIONS", "rotation_matrix", "splitmix64", "resolve_rotation"]

ROTATIONS = ("auto", "hadamard", "orthogonal")

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(seed: int, n: int) -> np.ndarray:
    """``n`` pseudo-random uint64 words from SplitMix64 started at ``seed`` (Steele et al. 2014).

    Examples
    --------
    >>> from kvinfo.codecs.quant.rotation import splitmix64
    >>> hex(int(splitmix64(0, 1)[0]))
    '0xe220a8397b1dcdaf'
    """
    with np.errstate(over="ignore"):
        z = np.uint64(seed % (1 << 64)) + _GOLDEN * np.arange(1, n + 1, dtype=np.uint64)
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _uniform01(seed: int, n: int) -> np.ndarray:
    # 53 random bits -> (0, 1), never exactly 0.
    return ((splitmix64(seed, n) >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def resolve_rotation(kind: str, dim: int) -> str:
    """The concrete rotation for ``kind`` at ``dim`` (``"auto"``: Hadamard at powers of two)."""
    if kind not in ROTATIONS:
        raise CodecConfigError(f"rotation must be one of {ROTATIONS}; found {kind!r}")
    is_pow2 = dim >= 1 and dim & (dim - 1) == 0
    if kind == "auto":
        return "hadamard" if is_pow2 else "orthogonal"
    if kind == "hadamard" and not is_pow2:
        raise CodecConfigError(
            f"rotation 'hadamard' needs a power-of-two dimension; found {dim} "
            "(use 'orthogonal' or 'auto')"
        )
    return kind


@functools.lru_cache(maxsize=64)
def rotation_matrix(kind: str, dim: int, seed: int) -> np.ndarray:
    """The ``dim`` x ``dim`` orthogonal float64 matrix for ``(kind, dim, seed)``; read-only, cached.

    Examples
    --------
    >>> import numpy as np
    >>> from kvinfo.codecs.quant.rotation import rotation_matrix
    >>> r = rotation_matrix("hadamard", 8, seed=3)
    >>> bool(np.allclose(r @ r.T, np.eye(8)))
    True
    """
    kind = resolve_rotation(kind, dim)
    if kind == "hadamard":
        signs = np.where(splitmix64(seed, 3 * dim) >> np.uint64(63), -1.0, 1.0).reshape(3, dim)
        h = linalg.hadamard(dim).astype(np.float64) / math.sqrt(dim)
        r = np.eye(dim)
        for s in signs:  # R = H D3 H D2 H D1
            r = (h * s[None, :]) @ r
    else:
        u1 = _uniform01(seed, dim * dim)
        u2 = _uniform01(seed ^ 0x5DEECE66D, dim * dim)
        g = (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)).reshape(dim, dim)
        q, rr = np.linalg.qr(g)
        d = np.sign(np.diag(rr))
        d[d == 0] = 1.0
        r = q * d[None, :]
    r = np.ascontiguousarray(r)
    r.setflags(write=False)
    return r
