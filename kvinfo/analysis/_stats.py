"""Streaming, mergeable sufficient statistics of one (layer, kind, head) slab.

Everything the analysis needs from the full slab is accumulated chunk by chunk, so a slab
(or a whole dump) can be fed in pieces, on one machine or many, and the pieces merged:

- :class:`PatternCounts`: counts of the stored bit patterns, per channel (order-0 lossless
  statistics, and the sign/exponent/mantissa split);
- :class:`MomentStats`: count, mean, the full scatter matrix ``sum (x - mean)(x - mean)^T``
  and per-channel third and fourth central moments (Chan et al. / Pebay pairwise updates);
- :class:`PairStats`: the same moments of consecutive pairs ``[x_{t-1}, x_t]`` inside each
  sequence (lag-1 cross covariance, for the temporal prediction gain);
- :class:`SlabStats`: all three plus the count of NaN/Inf values.

Memory is independent of the number of vectors: ``O(d * 2**16)`` counts for 16-bit formats
(sparse for 32-bit formats), ``O(d**2)`` moments.
"""

from __future__ import annotations

import numpy as np

from ..errors import AnalysisInputError
from ._entropy import LOG2E

__all__ = [
    "FIELD_LAYOUT",
    "to_float64",
    "bit_view",
    "PatternCounts",
    "MomentStats",
    "PairStats",
    "SlabStats",
    "warmup",
]

#: stored dtype -> (total bits, exponent bits, mantissa bits); the sign is the top bit
FIELD_LAYOUT = {"bfloat16": (16, 8, 7), "float16": (16, 5, 10), "float32": (32, 8, 23)}

_BITS_DTYPE = {16: np.uint16, 32: np.uint32}

try:  # private kernels; the numpy fallbacks below are the references
    from numba import njit

    @njit(cache=True, nogil=True)
    def _count_u16_kernel(bits, counts):  # pragma: no cover - compiled
        # channel-major so that one channel's 65536-entry row stays in cache
        n, d = bits.shape
        for j in range(d):
            row = counts[j]
            for i in range(n):
                row[bits[i, j]] += 1

    @njit(cache=True, nogil=True)
    def _central_34_kernel(x, mean, m3, m4):  # pragma: no cover - compiled
        n, d = x.shape
        for i in range(n):
            for j in range(d):
                v = x[i, j] - mean[j]
                v2 = v * v
                m3[j] += v2 * v
                m4[j] += v2 * v2

except ImportError:  # pragma: no cover
    _count_u16_kernel = None
    _central_34_kernel = None


def _count_u16_numpy(bits: np.ndarray, counts: np.ndarray) -> None:
    d = bits.shape[1]
    idx = bits.astype(np.int64) + (np.arange(d, dtype=np.int64) << 16)
    counts += np.bincount(idx.ravel(), minlength=d << 16).reshape(d, 1 << 16).astype(counts.dtype)


def _central_34_numpy(x, mean, m3, m4) -> None:
    xc = x - mean
    xc2 = xc * xc
    m3 += np.einsum("ij,ij->j", xc2, xc)
    m4 += np.einsum("ij,ij->j", xc2, xc2)


def warmup() -> None:
    """Compile (or load from cache) the private kernels, outside any measurement."""
    if _count_u16_kernel is not None:
        for dt in (np.int32, np.int64):
            _count_u16_kernel(np.zeros((1, 1), np.uint16), np.zeros((1, 1 << 16), dt))
        _central_34_kernel(np.zeros((1, 1)), np.zeros(1), np.zeros(1), np.zeros(1))


def dtype_name(a: np.ndarray) -> str:
    name = str(a.dtype)
    if name not in FIELD_LAYOUT:
        raise AnalysisInputError(
            f"slab dtype must be one of {sorted(FIELD_LAYOUT)}; got {name}"
        )
    return name


def bit_view(a: np.ndarray) -> np.ndarray:
    """The stored bit patterns of a float array (uint16 for 16-bit formats, uint32 for fp32)."""
    name = dtype_name(a)
    return np.ascontiguousarray(a).view(_BITS_DTYPE[FIELD_LAYOUT[name][0]])


def to_float64(a: np.ndarray) -> np.ndarray:
    """Convert a float32/float16/bfloat16 array to float64 (bfloat16 by a bit shift, fast)."""
    name = dtype_name(a)
    if name == "bfloat16":
        b = np.left_shift(np.ascontiguousarray(a).view(np.uint16), 16, dtype=np.uint32)
        return b.view(np.float32).astype(np.float64)
    return np.asarray(a, dtype=np.float64)


# --------------------------------------------------------------------------------------
# bit pattern counts
# --------------------------------------------------------------------------------------


def _grouped_entropy(groups: np.ndarray, counts: np.ndarray, num_groups: int, estimator: str):
    """Entropy (bits) of each group's histogram given as sparse (group, count) entries."""
    c = counts.astype(np.float64)
    n = np.bincount(groups, weights=c, minlength=num_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = c / n[groups]
        h = -np.bincount(groups, weights=p * np.log2(p), minlength=num_groups)
    if estimator == "miller-madow":
        m = np.bincount(groups, minlength=num_groups)
        with np.errstate(divide="ignore", invalid="ignore"):
            h = h + np.where(n > 0, (m - 1) / (2.0 * n) * LOG2E, 0.0)
    elif estimator != "plugin":
        raise AnalysisInputError(f"estimator must be 'plugin' or 'miller-madow'; got {estimator!r}")
    return np.maximum(np.where(n > 0, h, 0.0), 0.0)


def _hist(keys: np.ndarray, weights: np.ndarray, size: int | None = None):
    """Sparse histogram: return the counts of the distinct keys (order irrelevant)."""
    if size is not None and size <= (1 << 22):
        h = np.bincount(keys.astype(np.int64), weights=weights, minlength=size)
        return h[h > 0]
    _, inv = np.unique(keys, return_inverse=True)
    return np.bincount(inv.ravel(), weights=weights)


class PatternCounts:
    """Per-channel counts of stored bit patterns (order-0 statistics), mergeable.

    Parameters
    ----------
    num_channels : int
    dtype : {"bfloat16", "float16", "float32"}
        The stored format; 16-bit formats use a dense ``(d, 65536)`` table, float32 a sparse
        one.

    Examples
    --------
    >>> import ml_dtypes
    >>> a = np.array([[1.0, 2.0], [1.0, -2.0]], dtype=ml_dtypes.bfloat16)
    >>> pc = PatternCounts(2, "bfloat16")
    >>> pc.update(bit_view(a))
    >>> pc.entropies()["h0_per_channel_bits_per_element"]
    0.5
    """

    def __init__(self, num_channels: int, dtype: str):
        if dtype not in FIELD_LAYOUT:
            raise AnalysisInputError(f"dtype must be one of {sorted(FIELD_LAYOUT)}; got {dtype!r}")
        self.num_channels = int(num_channels)
        self.dtype = dtype
        self.total_bits, self.exponent_bits, self.mantissa_bits = FIELD_LAYOUT[dtype]
        self.n = 0
        if self.total_bits == 16:
            # int32 halves the cache footprint; widened to int64 before it could overflow
            self._dense = np.zeros((self.num_channels, 1 << 16), dtype=np.int32)
            self._keys = self._vals = None
        else:
            self._dense = None
            self._keys = np.zeros(0, dtype=np.uint64)
            self._vals = np.zeros(0, dtype=np.int64)

    def update(self, bits: np.ndarray) -> None:
        """Add a chunk of bit patterns, shape ``(rows, num_channels)``."""
        if bits.ndim != 2 or bits.shape[1] != self.num_channels:
            raise AnalysisInputError(
                f"expected bit patterns of shape (rows, {self.num_channels}); got {bits.shape}"
            )
        want = _BITS_DTYPE[self.total_bits]
        if bits.dtype != want:
            raise AnalysisInputError(f"expected {np.dtype(want).name} patterns; got {bits.dtype}")
        self.n += bits.shape[0]
        if self._dense is not None:
            if self.n >= np.iinfo(self._dense.dtype).max:
                self._dense = self._dense.astype(np.int64)
            if _count_u16_kernel is not None:
                _count_u16_kernel(np.ascontiguousarray(bits), self._dense)
            else:  # pragma: no cover
                _count_u16_numpy(bits, self._dense)
            return
        keys = bits.astype(np.uint64) | (
            np.arange(self.num_channels, dtype=np.uint64) << np.uint64(32)
        )
        k, c = np.unique(keys.ravel(), return_counts=True)
        self._merge_sparse(k, c)

    def _merge_sparse(self, k, c) -> None:
        allk = np.concatenate([self._keys, k])
        allc = np.concatenate([self._vals, c.astype(np.int64)])
        uk, inv = np.unique(allk, return_inverse=True)
        self._keys = uk
        self._vals = np.bincount(inv.ravel(), weights=allc).astype(np.int64)

    def merge(self, other: PatternCounts) -> PatternCounts:
        """Add another accumulator's counts into this one (in place); return self."""
        if (other.num_channels, other.dtype) != (self.num_channels, self.dtype):
            raise AnalysisInputError("cannot merge pattern counts of different shape or dtype")
        self.n += other.n
        if self._dense is not None:
            if self.n >= np.iinfo(self._dense.dtype).max:
                self._dense = self._dense.astype(np.int64)
            self._dense += other._dense
        else:
            self._merge_sparse(other._keys, other._vals)
        return self

    def triplets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Non-zero entries as ``(channel, pattern, count)`` arrays."""
        if self._dense is not None:
            nz = np.flatnonzero(self._dense)
            c = self._dense.ravel()[nz].astype(np.int64)
            return (nz >> 16).astype(np.int64), (nz & 0xFFFF).astype(np.int64), c
        ch = (self._keys >> np.uint64(32)).astype(np.int64)
        pat = (self._keys & np.uint64(0xFFFFFFFF)).astype(np.int64)
        return ch, pat, self._vals

    def channel_entropies(self, estimator: str = "plugin") -> np.ndarray:
        """Order-0 entropy of each channel's patterns, bits per element."""
        ch, _, c = self.triplets()
        return _grouped_entropy(ch, c, self.num_channels, estimator)

    def entropies(self) -> dict:
        """Order-0 entropies (bits per element) of the patterns and of their fields.

        Plug-in estimates, plus Miller-Madow versions of the pooled and per-channel ones
        (keys ending in ``_miller_madow_bits_per_element``).
        """
        if self.n == 0:
            raise AnalysisInputError("no values were counted")
        ch, pat, c = self.triplets()
        d = self.num_channels
        tb, eb, mb = self.total_bits, self.exponent_bits, self.mantissa_bits
        size = 1 << tb if tb <= 16 else None

        def pooled(keys, sz, estimator="plugin"):
            h = _hist(keys, c, sz)
            return float(_grouped_entropy(np.zeros(h.size, np.int64), h, 1, estimator)[0])

        sign = pat >> (tb - 1)
        expo = (pat >> mb) & ((1 << eb) - 1)
        mant = pat & ((1 << mb) - 1)
        pooled_counts = _hist(pat, c, size)
        zeros = np.zeros(pooled_counts.size, np.int64)
        h_joint = float(_grouped_entropy(zeros, pooled_counts, 1, "plugin")[0])
        h_joint_mm = float(_grouped_entropy(zeros, pooled_counts, 1, "miller-madow")[0])
        per_ch = float(_grouped_entropy(ch, c, d, "plugin").mean())
        per_ch_mm = float(_grouped_entropy(ch, c, d, "miller-madow").mean())
        h_sign_exp = pooled(pat >> mb, 1 << (1 + eb))
        per_ch_exp_counts = np.bincount(ch * (1 << eb) + expo, weights=c, minlength=d << eb)
        per_ch_exp = _grouped_entropy_dense(per_ch_exp_counts.reshape(d, 1 << eb), "plugin")
        return {
            "h0_pooled_bits_per_element": h_joint,
            # distinct stored patterns per counted value: near 1 (float32 patterns of a few
            # thousand vectors) the plug-in H0 is capped near log2(n) and biased low
            "h0_distinct_pattern_fraction": (
                float(np.count_nonzero(pooled_counts)) / (self.n * self.num_channels)
            ),
            "h0_per_channel_bits_per_element": per_ch,
            "per_channel_model_gain_bits_per_element": h_joint - per_ch,
            "h0_pooled_miller_madow_bits_per_element": h_joint_mm,
            "h0_per_channel_miller_madow_bits_per_element": per_ch_mm,
            "per_channel_model_gain_miller_madow_bits_per_element": h_joint_mm - per_ch_mm,
            "h0_sign_bits_per_element": pooled(sign, 2),
            "h0_exponent_bits_per_element": pooled(expo, 1 << eb),
            "h0_mantissa_bits_per_element": pooled(mant, 1 << mb if mb <= 22 else None),
            "h0_mantissa_given_sign_exponent_bits_per_element": max(h_joint - h_sign_exp, 0.0),
            "h0_exponent_per_channel_bits_per_element": float(per_ch_exp.mean()),
        }


def _grouped_entropy_dense(counts2d: np.ndarray, estimator: str) -> np.ndarray:
    rows, cols = np.nonzero(counts2d)
    return _grouped_entropy(rows, counts2d[rows, cols], counts2d.shape[0], estimator)


# --------------------------------------------------------------------------------------
# moments
# --------------------------------------------------------------------------------------


class MomentStats:
    """Count, mean, scatter matrix and per-channel 3rd/4th central moments; mergeable.

    Pairwise update formulas of Chan, Golub & LeVeque (1979) and Pebay (2008), so that
    chunks can be combined in any order without loss of precision.

    Parameters
    ----------
    dim : int
    higher : bool
        Also keep the per-channel third and fourth central moments (for kurtosis).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((1000, 3))
    >>> a, b = MomentStats(3), MomentStats(3)
    >>> a.update(x[:300]); b.update(x[300:])
    >>> bool(np.allclose(a.merge(b).covariance(), np.cov(x, rowvar=False)))
    True
    """

    def __init__(self, dim: int, higher: bool = True):
        self.dim = int(dim)
        self.higher = bool(higher)
        self.n = 0
        self.mean = np.zeros(self.dim)
        self.m2 = np.zeros((self.dim, self.dim))
        self.m3 = np.zeros(self.dim) if higher else None
        self.m4 = np.zeros(self.dim) if higher else None

    def update(self, x: np.ndarray, overwrite: bool = False) -> None:
        """Add a chunk of finite float64 rows, shape ``(rows, dim)``.

        ``overwrite=True`` lets the update center ``x`` in place (saves a copy).
        """
        nb = x.shape[0]
        if nb == 0:
            return
        mean = x.mean(axis=0)
        m3 = m4 = None
        if self.higher:
            m3, m4 = np.zeros(self.dim), np.zeros(self.dim)
            if _central_34_kernel is not None:
                _central_34_kernel(np.ascontiguousarray(x), mean, m3, m4)
            else:  # pragma: no cover
                _central_34_numpy(x, mean, m3, m4)
        if overwrite and x.dtype == np.float64 and x.flags.c_contiguous and x.flags.writeable:
            x -= mean
            xc = x
        else:
            xc = x - mean
        self._combine(nb, mean, xc.T @ xc, m3, m4)

    def merge(self, other: MomentStats) -> MomentStats:
        """Combine another accumulator into this one (in place); return self."""
        if other.dim != self.dim or other.higher != self.higher:
            raise AnalysisInputError("cannot merge moment statistics of different dimension")
        self._combine(other.n, other.mean, other.m2, other.m3, other.m4)
        return self

    def _combine(self, nb, mean_b, m2_b, m3_b, m4_b) -> None:
        na = self.n
        if nb == 0:
            return
        if na == 0:
            self.n, self.mean, self.m2 = nb, mean_b.copy(), m2_b.copy()
            if self.higher:
                self.m3, self.m4 = m3_b.copy(), m4_b.copy()
            return
        n = na + nb
        delta = mean_b - self.mean
        if self.higher:
            da, db = np.diag(self.m2), np.diag(m2_b)
            m4 = (
                self.m4
                + m4_b
                + delta**4 * na * nb * (na * na - na * nb + nb * nb) / n**3
                + 6.0 * delta**2 * (na * na * db + nb * nb * da) / n**2
                + 4.0 * delta * (na * m3_b - nb * self.m3) / n
            )
            m3 = (
                self.m3
                + m3_b
                + delta**3 * na * nb * (na - nb) / n**2
                + 3.0 * delta * (na * db - nb * da) / n
            )
            self.m3, self.m4 = m3, m4
        self.m2 += m2_b
        self.m2 += np.outer(delta, delta) * (na * nb / n)
        self.mean = self.mean + delta * (nb / n)
        self.n = n

    def covariance(self, ddof: int = 1) -> np.ndarray:
        """Sample covariance (``ddof=1``: unbiased)."""
        if self.n <= ddof:
            raise AnalysisInputError(f"covariance needs more than {ddof} vectors; got {self.n}")
        c = self.m2 / (self.n - ddof)
        return 0.5 * (c + c.T)

    def variance(self, ddof: int = 1) -> np.ndarray:
        return np.diag(self.covariance(ddof)).copy()

    def excess_kurtosis(self) -> np.ndarray:
        """Per-channel ``n m4 / m2**2 - 3`` (0 for a Gaussian); NaN for zero-variance channels."""
        if not self.higher:
            raise AnalysisInputError("kurtosis needs higher=True")
        m2 = np.diag(self.m2)
        with np.errstate(divide="ignore", invalid="ignore"):
            k = self.n * self.m4 / (m2 * m2) - 3.0
        return np.where(m2 > 0, k, np.nan)


class PairStats:
    """Moments of consecutive pairs ``z_t = [x_{t-1}, x_t]`` within sequences; mergeable.

    Call :meth:`update` with chunks in token order; a chunk that starts in the middle of a
    sequence is paired with the last row of the previous chunk. Merging two accumulators
    of disjoint token ranges loses only the one pair across their boundary.
    """

    def __init__(self, dim: int):
        self.dim = int(dim)
        self.moments = MomentStats(2 * self.dim, higher=False)
        self._last = None  # last row of the previous chunk (None if invalid or none)

    def update(self, x: np.ndarray, starts: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add a chunk ``x`` (rows, dim) in token order.

        ``starts[i]`` is true where row ``i`` starts a new sequence; ``valid[i]`` false marks
        rows to skip (NaN/Inf), which break the pairs around them.
        """
        n = x.shape[0]
        if n == 0:
            return
        if valid is None:
            valid = np.ones(n, dtype=bool)
        prev_valid = np.empty(n, dtype=bool)
        prev_valid[1:] = valid[:-1]
        prev_valid[0] = self._last is not None
        ok = valid & prev_valid & ~starts
        idx = np.flatnonzero(ok)
        if idx.size:
            cur = x[idx]
            prev = np.empty_like(cur)
            inner = idx > 0
            prev[inner] = x[idx[inner] - 1]
            if not inner.all():
                prev[~inner] = self._last
            self.moments.update(np.hstack([prev, cur]), overwrite=True)
        self._last = x[-1].copy() if valid[-1] else None

    def merge(self, other: PairStats) -> PairStats:
        self.moments.merge(other.moments)
        self._last = other._last
        return self

    @property
    def n(self) -> int:
        return self.moments.n

    def blocks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(C00, C11, C10)``: covariance of ``x_{t-1}``, of ``x_t``, and ``Cov(x_t, x_{t-1})``."""
        c = self.moments.covariance()
        d = self.dim
        return c[:d, :d], c[d:, d:], c[d:, :d]

    def innovation_covariance(self) -> np.ndarray:
        """Covariance of ``x_t - A x_{t-1} - b`` for the best linear predictor ``A, b``.

        ``C11 - C10 C00^+ C10^T`` (pseudo-inverse, so singular ``C00`` is allowed).
        """
        c00, c11, c10 = self.blocks()
        w = np.linalg.pinv(c00, rcond=1e-10, hermitian=True)
        e = c11 - c10 @ w @ c10.T
        return 0.5 * (e + e.T)


class SlabStats:
    """All streaming statistics of one slab: patterns, moments, lag-1 pairs, NaN/Inf count.

    Feed chunks in token order with :meth:`update`; combine partial results with
    :meth:`merge`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((500, 4)).astype(np.float32)
    >>> s = SlabStats(4, "float32")
    >>> s.update(x[:200], starts=np.arange(200) == 0)
    >>> s.update(x[200:], starts=np.zeros(300, bool))
    >>> s.moments.n, s.pairs.n
    (500, 499)
    """

    def __init__(self, dim: int, dtype: str, lag: bool = True):
        self.dim = int(dim)
        self.dtype = dtype
        self.patterns = PatternCounts(dim, dtype)
        self.moments = MomentStats(dim, higher=True)
        self.pairs = PairStats(dim) if lag else None
        self.nonfinite_elements = 0
        self.excluded_vectors = 0

    def update(self, chunk: np.ndarray, starts: np.ndarray | None = None) -> None:
        """Add a chunk of stored values, shape ``(rows, dim)``, in token order."""
        if chunk.ndim != 2 or chunk.shape[1] != self.dim:
            raise AnalysisInputError(
                f"expected a chunk of shape (rows, {self.dim}); got {chunk.shape}"
            )
        if dtype_name(chunk) != self.dtype:
            raise AnalysisInputError(f"expected {self.dtype} values; got {chunk.dtype}")
        self.patterns.update(bit_view(chunk))
        x = to_float64(chunk)
        finite = np.isfinite(x)
        if finite.all():
            valid = None
            rows = x
        else:
            self.nonfinite_elements += int(finite.size - np.count_nonzero(finite))
            valid = finite.all(axis=1)
            self.excluded_vectors += int(valid.size - np.count_nonzero(valid))
            rows = x[valid]
            x = np.where(finite, x, 0.0)
        if self.pairs is not None:
            if starts is None:
                starts = np.zeros(x.shape[0], dtype=bool)
            self.pairs.update(x, np.asarray(starts, dtype=bool), valid)
        self.moments.update(rows, overwrite=True)  # x is ours: center it in place

    def merge(self, other: SlabStats) -> SlabStats:
        self.patterns.merge(other.patterns)
        self.moments.merge(other.moments)
        if self.pairs is not None and other.pairs is not None:
            self.pairs.merge(other.pairs)
        self.nonfinite_elements += other.nonfinite_elements
        self.excluded_vectors += other.excluded_vectors
        return self
