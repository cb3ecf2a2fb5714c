"""``turbo``: the TurboQuant MSE scheme -- norm, random rotation, Lloyd-Max per coordinate.

Each vector ``x`` (one token of one head) is coded as its norm ``||x||`` (stored in
``side_dtype``) and the direction ``u = x / ||x||``. The direction is rotated by a seeded random
orthogonal matrix ``R`` (a randomized Hadamard transform when the dimension is a power of
two), after which every coordinate of ``R u`` follows the same known density, that of one
coordinate of a uniformly random unit vector (:mod:`kvinfo.codecs.quant.lloyd_max`). Each
coordinate is then quantized with the Lloyd-Max codebook of that density at ``bits`` bits, and
the indices go through the entropy coder. The reconstruction is ``||x|| R^T c[q]``.

For a unit vector the expected squared error is ``d * D_LM(bits, d)``: about 0.36, 0.117,
0.034 and 0.0094 at 1 to 4 bits for large ``d`` -- the values TurboQuant reports, within a
factor ``sqrt(3) pi / 2 ~ 2.7`` of the information-theoretic lower bound ``4**-bits``. For
isotropic Gaussian vectors, whose norm and direction are independent, the mean squared
error per element is the same number.

Options:

* ``num_outliers=k``: the ``k`` channels of largest variance in each slab (or of largest mean
  square, with ``outlier_by="energy"``, which also catches channels with a large constant
  offset, as keys have) are split off and coded by a second, independent TurboQuant
  instance at ``outlier_bits`` (their indices are side information). This is the paper's
  outlier treatment (e.g. 32 channels at 3 bits and 96 at 2 bits for 2.5 bits per element).
* ``sink_tokens=n``: the first ``n`` tokens of each slab (or of each sequence, when
  ``encode(..., sequence_starts=[...])`` names where sequences start) are stored verbatim in the
  input dtype, as side information. Attention sinks carry a large share of attention.

Stream sections::

    params   "<BBHBBQ": bits, outlier_bits, num_outliers k, rotation (0 auto, 1 hadamard,
             2 orthogonal), side dtype (1 float16, 3 float32), seed (uint64)
    side     full-precision row indices (flat row = slab * tokens + token), uint32
    side     those rows verbatim, input dtype, (n_rows, head_dim)
    side     outlier channel indices per slab, uint16, (slabs, k) (empty when k = 0)
    side     norms of the main channels of every other row, side dtype
    coded    Lloyd-Max indices of the main channels, uint8, (rows, head_dim - k)
    side     norms of the outlier channels (only when k > 0)
    coded    indices of the outlier channels, uint8, (rows, k) (only when k > 0)

The main channels use the rotation seeded with ``seed``; the outlier channels use ``seed + 1``.

References
----------
A. Zandieh, M. Daliri, M. Hadian, V. Mirrokni, "TurboQuant: Online Vector Quantization with
Near-optimal Distortion Rate", arXiv:2504.19874, 2025.
G. Xiao et al., "Efficient Streaming Language Models with Attention Sinks", ICLR 2024.
"""

from __future__ import annotations

import struct

import numpy as np

from ...errors import CodecConfigError, CorruptStreamError
from ..registry import register_codec
from ._base import (
    DTYPE_CODES,
    SIDE_DTYPES,
    QuantCodec,
    Section,
    as_slabs,
    build_stream,
    check_float_array,
    finite_side,
    guard_memory,
    round_side,
    side_array,
    to_le_bytes,
    to_output,
    unpack_params,
)
from .lloyd_max import MAX_CODEBOOK_BITS, lloyd_max_sphere, quantize_to_codebook
from .rotation import ROTATIONS, resolve_rotation, rotation_matrix

__all__ = ["TurboCodec", "turbo_quantize", "turbo_dequantize"]

_PARAMS = "<BBHBBQ"
#: the largest channel subset a rotation is built for: the dense d x d rotation costs
#: 8 d^2 bytes and ~3 d^3 operations, so a stream claiming a huge head_dim is refused
MAX_ROTATION_DIM = 8192
_OUTLIER_BY = ("variance", "energy")
_MASK64 = (1 << 64) - 1


def turbo_quantize(
    x: np.ndarray, bits: int, rotation: str = "auto", seed: int = 0, side_dtype: str = "float16"
) -> tuple[np.ndarray, np.ndarray]:
    """TurboQuant-MSE of the rows of ``x`` (n, d): returns ``(indices uint8 (n, d), norms)``.

    ``norms`` are rounded to ``side_dtype``, as stored.

    Examples
    --------
    >>> import numpy as np
    >>> from kvinfo.codecs.quant.turbo import turbo_quantize, turbo_dequantize
    >>> x = np.random.default_rng(0).standard_normal((4000, 64))
    >>> q, n = turbo_quantize(x, bits=3, seed=7)
    >>> y = turbo_dequantize(q, n, bits=3, seed=7)
    >>> round(float(np.mean((x - y) ** 2)), 3)  # the Lloyd-Max value, about 0.0334 at d=64
    0.033
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    rot = rotation_matrix(resolve_rotation(rotation, d), d, seed)
    cb = lloyd_max_sphere(bits, d)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    stored = round_side(norms, SIDE_DTYPES[side_dtype], "vector norms", "turbo")
    unit = x / np.where(norms > 0, norms, 1.0)[:, None]
    return quantize_to_codebook(unit @ rot.T, cb), stored


def turbo_dequantize(
    indices: np.ndarray, norms: np.ndarray, bits: int, rotation: str = "auto", seed: int = 0
) -> np.ndarray:
    """Reconstruct float64 rows from :func:`turbo_quantize`'s output."""
    n, d = indices.shape
    rot = rotation_matrix(resolve_rotation(rotation, d), d, seed)
    cb = lloyd_max_sphere(bits, d)
    return (cb.levels[indices] @ rot) * norms.astype(np.float64)[:, None]


def _check_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not lo <= value <= hi:
        raise CodecConfigError(f"turbo: {name} must be an integer in {lo}..{hi}; found {value!r}")
    return int(value)


@register_codec
class TurboCodec(QuantCodec):
    """TurboQuant MSE: stored norm, seeded rotation, Lloyd-Max per coordinate, entropy-coded.

    Parameters
    ----------
    bits : int
        Bits per coordinate of the Lloyd-Max codebook, 1 to 6 (TurboQuant uses 1 to 4).
    num_outliers : int
        Number ``k`` of largest-variance channels per slab coded separately at
        ``outlier_bits`` (0 disables; both channel subsets need at least 2 channels).
    outlier_bits : int or None
        Bits for the outlier channels, 1 to 6; default ``bits + 1`` (capped at 6).
    outlier_by : {"variance", "energy"}
        Rank channels by variance over the slab's tokens, or by mean square.
    sink_tokens : int
        Tokens at the start of each slab (or sequence) kept verbatim; 0 disables.
    rotation : {"auto", "hadamard", "orthogonal"}
        The random rotation; ``"auto"`` is Hadamard at power-of-two dimensions.
    seed : int
        Seed of the rotation (stored in the stream).
    side_dtype : {"float16", "float32"}
        Storage of the norms.
    coder : dict
        Config of the lossless coder for the indices; default ``{"id": "rans"}``.

    Examples
    --------
    >>> import numpy as np
    >>> from kvinfo.codecs import get_codec
    >>> codec = get_codec({"id": "turbo", "bits": 2, "sink_tokens": 1})
    >>> x = np.random.default_rng(0).standard_normal((2, 256, 64)).astype(np.float16)
    >>> y = codec.decode(codec.encode(x))
    >>> y.dtype, bool(np.array_equal(y[:, 0], x[:, 0]))
    (dtype('float16'), True)
    """

    codec_id = "turbo"
    _tag = 3

    def __init__(
        self,
        bits: int = 3,
        num_outliers: int = 0,
        outlier_bits: int | None = None,
        outlier_by: str = "variance",
        sink_tokens: int = 0,
        rotation: str = "auto",
        seed: int = 0,
        side_dtype: str = "float16",
        coder: dict | None = None,
    ):
        self.bits = _check_int("bits", bits, 1, MAX_CODEBOOK_BITS)
        self.num_outliers = _check_int("num_outliers", num_outliers, 0, 0xFFFF)
        if self.num_outliers == 1:
            raise CodecConfigError("turbo: num_outliers must be 0 or at least 2; found 1")
        if outlier_bits is None:
            outlier_bits = min(self.bits + 1, MAX_CODEBOOK_BITS)
        self.outlier_bits = _check_int("outlier_bits", outlier_bits, 1, MAX_CODEBOOK_BITS)
        if outlier_by not in _OUTLIER_BY:
            raise CodecConfigError(
                f"turbo: outlier_by must be one of {_OUTLIER_BY}; found {outlier_by!r}"
            )
        self.outlier_by = outlier_by
        self.sink_tokens = _check_int("sink_tokens", sink_tokens, 0, 0xFFFFFFFF)
        if rotation not in ROTATIONS:
            raise CodecConfigError(
                f"turbo: rotation must be one of {ROTATIONS}; found {rotation!r}"
            )
        self.rotation = rotation
        self.seed = _check_int("seed", seed, 0, _MASK64)
        if side_dtype not in SIDE_DTYPES:
            raise CodecConfigError(
                f"turbo: side_dtype must be one of {tuple(SIDE_DTYPES)}; found {side_dtype!r}"
            )
        self.side_dtype = side_dtype
        super().__init__(coder)

    def get_config(self) -> dict:
        return {
            "id": self.codec_id,
            "bits": self.bits,
            "num_outliers": self.num_outliers,
            "outlier_bits": self.outlier_bits,
            "outlier_by": self.outlier_by,
            "sink_tokens": self.sink_tokens,
            "rotation": self.rotation,
            "seed": self.seed,
            "side_dtype": self.side_dtype,
            "coder": self.coder_config,
        }

    # -- helpers -----------------------------------------------------------------------
    def _sink_mask(self, tokens: int, sequence_starts) -> np.ndarray:
        mask = np.zeros(tokens, dtype=bool)
        if self.sink_tokens == 0:
            return mask
        if sequence_starts is None:
            starts = [0]
        else:
            starts = sorted({int(s) for s in np.asarray(sequence_starts).ravel()})
            if any(s < 0 or s >= tokens for s in starts):
                raise CodecConfigError(
                    f"turbo: sequence_starts must lie in 0..{tokens - 1}; found {starts}"
                )
        ends = starts[1:] + [tokens]
        for s, e in zip(starts, ends, strict=True):
            mask[s : min(s + self.sink_tokens, e)] = True
        return mask

    def _split_channels(self, x3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-slab outlier channels (largest variance or energy, sorted) and the others."""
        k = self.num_outliers
        var = x3.var(axis=1) if self.outlier_by == "variance" else np.mean(x3 * x3, axis=1)
        order = np.argsort(-var, axis=1, kind="stable")
        outl = np.sort(order[:, :k], axis=1)
        main = np.sort(order[:, k:], axis=1)
        return outl.astype(np.int64), main.astype(np.int64)

    @staticmethod
    def _main_channels(outl: np.ndarray, d: int) -> np.ndarray:
        b = outl.shape[0]
        keep = np.ones((b, d), dtype=bool)
        np.put_along_axis(keep, outl, False, axis=1)
        return np.nonzero(keep)[1].reshape(b, d - outl.shape[1])

    def _check_dims(self, d: int) -> None:
        k = self.num_outliers
        if d - k > MAX_ROTATION_DIM:
            raise CodecConfigError(
                f"turbo: head_dim {d} leaves {d - k} rotated channels; at most "
                f"{MAX_ROTATION_DIM} are supported"
            )
        if d - k < 2:
            raise CodecConfigError(
                f"turbo: head_dim {d} leaves {d - k} channels after {k} outliers; need at least 2"
            )
        resolve_rotation(self.rotation, d - k)
        if k:
            resolve_rotation(self.rotation, k)

    # -- codec ---------------------------------------------------------------------------
    def encode(self, array, *, sequence_starts=None) -> bytes:
        """Encode ``(..., tokens, head_dim)`` floats.

        ``sequence_starts`` (optional) lists the token indices at which sequences begin
        within each slab; the first ``sink_tokens`` of each are kept verbatim.
        """
        array = check_float_array(array, self.codec_id)
        x3 = as_slabs(array)
        b, t, d = x3.shape
        self._check_dims(d)
        k = self.num_outliers
        sink = np.tile(self._sink_mask(t, sequence_starts), b)
        rows = x3.reshape(b * t, d)
        sink_rows = np.nonzero(sink)[0].astype(np.uint32)
        keep = ~sink
        slab_of_row = np.repeat(np.arange(b), t)[keep]
        xq = rows[keep]
        sd = self.side_dtype
        if k:
            outl, main = self._split_channels(x3)
            x_main = np.take_along_axis(xq, main[slab_of_row], axis=1)
            x_out = np.take_along_axis(xq, outl[slab_of_row], axis=1)
        else:
            outl = np.zeros((b, 0), dtype=np.int64)
            x_main = xq
        q_main, n_main = turbo_quantize(x_main, self.bits, self.rotation, self.seed, sd)
        params = struct.pack(
            _PARAMS,
            self.bits,
            self.outlier_bits,
            k,
            ROTATIONS.index(self.rotation),
            DTYPE_CODES[sd],
            self.seed,
        )
        flat_in = np.ascontiguousarray(array).reshape(b * t, d)
        sections = [
            Section(0, to_le_bytes(sink_rows)),
            Section(0, to_le_bytes(flat_in[sink_rows])),
            Section(0, to_le_bytes(outl.astype(np.uint16))),
            Section(0, to_le_bytes(n_main)),
            self._coded(q_main),
        ]
        if k:
            seed2 = (self.seed + 1) & _MASK64
            q_out, n_out = turbo_quantize(x_out, self.outlier_bits, self.rotation, seed2, sd)
            sections += [Section(0, to_le_bytes(n_out)), self._coded(q_out)]
        return build_stream(self._tag, array.dtype, array.shape, params, sections)

    @guard_memory
    def decode(
        self, data, device: str = "cpu", max_output_bytes: int | None = None
    ) -> np.ndarray:
        """Decode a stream; see the module docstring for its layout and
        ``docs/damaged-input.md`` for what is checked before any allocation.
        ``max_output_bytes`` caps the output (:mod:`kvinfo.codecs.limits`)."""
        self._check_device(device)
        p = self._parse(data, max_output_bytes)
        bits, obits, k, rot_code, sd_code, seed = unpack_params(_PARAMS, p.params)
        if (
            not 1 <= bits <= MAX_CODEBOOK_BITS
            or not 1 <= obits <= MAX_CODEBOOK_BITS
            or rot_code >= len(ROTATIONS)
            or sd_code not in (1, 3)
            or len(p.shape) < 2
        ):
            raise CorruptStreamError("bad turbo parameter block")
        rotation = ROTATIONS[rot_code]
        sd = SIDE_DTYPES["float16" if sd_code == 1 else "float32"]
        t, d = p.shape[-2:]
        b = int(np.prod(p.shape[:-2], dtype=np.int64))
        secs = p.sections
        if len(secs) != (7 if k else 5) or d - k < 2 or k == 1:
            raise CorruptStreamError("bad turbo stream layout")
        if max(d - k, k) > MAX_ROTATION_DIM:
            raise CorruptStreamError(
                f"bad turbo stream: head_dim {d} needs a rotation of {max(d - k, k)} channels; "
                f"at most {MAX_ROTATION_DIM} are supported"
            )
        if len(secs[0].data) % 4:
            raise CorruptStreamError("bad turbo full-precision row index section")
        n_sink = len(secs[0].data) // 4
        sink_rows = side_array(secs[0], np.uint32, n_sink).astype(np.int64)
        if n_sink and (np.any(np.diff(sink_rows) <= 0) or sink_rows[-1] >= b * t):
            raise CorruptStreamError("bad turbo full-precision row indices")
        sink_vals = side_array(secs[1], p.dtype, n_sink * d).reshape(n_sink, d)
        finite_side(sink_vals, "full-precision tokens")
        outl = side_array(secs[2], np.uint16, b * k).reshape(b, k).astype(np.int64)
        if k and (np.any(outl >= d) or np.any(np.diff(outl, axis=1) <= 0)):
            raise CorruptStreamError("bad turbo outlier channel indices")
        n_rows = b * t - n_sink
        n_main = finite_side(side_array(secs[3], sd, n_rows), "norms", nonnegative=True)
        q_main = self._decode_symbols(secs[4], (n_rows, d - k), (1 << bits) - 1)
        if k:
            n_out = finite_side(side_array(secs[5], sd, n_rows), "norms", nonnegative=True)
            q_out = self._decode_symbols(secs[6], (n_rows, k), (1 << obits) - 1)
        keep = np.ones(b * t, dtype=bool)
        keep[sink_rows] = False
        slab_of_row = np.repeat(np.arange(b), t)[keep]
        try:
            y_main = turbo_dequantize(q_main, n_main, bits, rotation, seed)
            if k:
                main = self._main_channels(outl, d)
                y_out = turbo_dequantize(q_out, n_out, obits, rotation, (seed + 1) & _MASK64)
                yq = np.empty((n_rows, d), dtype=np.float64)
                np.put_along_axis(yq, main[slab_of_row], y_main, axis=1)
                np.put_along_axis(yq, outl[slab_of_row], y_out, axis=1)
            else:
                yq = y_main
        except CodecConfigError as exc:  # a rotation that cannot exist at this dimension
            raise CorruptStreamError(f"bad turbo stream: {exc}") from None
        out = np.empty((b * t, d), dtype=np.float64)
        out[keep] = yq
        result = to_output(out, p.dtype)
        result[sink_rows] = sink_vals
        return result.reshape(p.shape)
