"""``uniform``: asymmetric uniform quantization with a scale and zero point per group (KIVI).

For every group of ``group_size`` elements along the reduced axis, the codec stores the
minimum ``z`` (the zero point) and the step ``s = (max - min) / (2**bits - 1)``, both rounded to
``side_dtype``, and codes each element as ``q = clip(round((x - z) / s), 0, 2**bits - 1)``.
The reconstruction is ``z + q * s``.

* ``axis="channel"``: statistics per channel, over groups of ``group_size`` consecutive tokens
  (KIVI's choice for keys, whose outlier channels are fixed).
* ``axis="token"``: statistics per token, over groups of ``group_size`` consecutive channels
  (KIVI's choice for values).

``group_size=None`` uses the whole axis as one group; a last group shorter than
``group_size`` gets its own statistics.

Stream sections (see :mod:`kvinfo.codecs.quant._base` for the container)::

    params   "<BBBI": bits, axis (0 channel, 1 token), side dtype (1 float16, 3 float32),
             group_size (0 = whole axis)
    side     zero points, side dtype, shape (slabs, groups, other axis), C order
    side     steps, same layout
    coded    symbols, uint8, the input's shape (channels on the last axis)

References
----------
Z. Liu et al., "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache",
ICML 2024, arXiv:2402.02750.
"""

from __future__ import annotations

import struct

import ml_dtypes
import numpy as np

from ...errors import CodecConfigError, CorruptStreamError
from .._device import front_end, has_cuda_decoder
from ..registry import register_codec
from ._base import (
    CODED,
    DTYPE_CODES,
    SIDE_DTYPES,
    QuantCodec,
    Section,
    as_slabs,
    build_stream,
    check_float_array,
    dtype_name,
    finite_side,
    guard_memory,
    round_side,
    side_array,
    to_le_bytes,
    to_output,
    unpack_params,
)

__all__ = ["UniformCodec", "uniform_quantize", "uniform_dequantize"]

_AXES = ("channel", "token")
_PARAMS = "<BBBI"


def _grouped(x: np.ndarray, group_size: int | None) -> tuple[np.ndarray, int]:
    """Pad the reduced axis (1) of ``(slabs, L, other)`` to whole groups, by repeating its
    last element (which leaves every group's min and max unchanged), and reshape to
    ``(slabs, groups, group, other)``."""
    b, length, other = x.shape
    g = length if not group_size else min(int(group_size), length)
    ngroups = -(-length // g)
    pad = ngroups * g - length
    if pad:
        x = np.concatenate([x, np.repeat(x[:, -1:, :], pad, axis=1)], axis=1)
    return x.reshape(b, ngroups, g, other), g


def _orient(x3: np.ndarray, axis: str) -> np.ndarray:
    return x3 if axis == "channel" else x3.transpose(0, 2, 1)


def uniform_quantize(
    x: np.ndarray,
    bits: int,
    axis: str = "channel",
    group_size: int | None = None,
    side_dtype: str = "float16",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize ``(slabs, tokens, head_dim)`` floats; returns ``(symbols, zero, step)``.

    ``symbols`` is uint8 with the shape of ``x``; ``zero`` and ``step`` have the shape
    ``(slabs, groups, other)`` and the dtype ``side_dtype`` (they are what gets stored).

    Examples
    --------
    >>> import numpy as np
    >>> from kvinfo.codecs.quant.uniform import uniform_quantize, uniform_dequantize
    >>> x = np.array([[[0.0, 1.0], [0.5, 3.0], [1.0, 2.0]]])
    >>> q, z, s = uniform_quantize(x, bits=2, axis="channel")
    >>> q[0].tolist()
    [[0, 0], [2, 3], [3, 2]]
    >>> uniform_dequantize(q, z, s, axis="channel")[0].tolist()  # steps stored as float16
    [[0.0, 1.0], [0.66650390625, 2.99951171875], [0.999755859375, 2.3330078125]]
    """
    if axis not in _AXES:
        raise CodecConfigError(f"uniform: axis must be one of {_AXES}; found {axis!r}")
    sd = SIDE_DTYPES[side_dtype]
    xo = _orient(np.asarray(x, dtype=np.float64), axis)
    length = xo.shape[1]
    xg, _ = _grouped(xo, group_size)
    levels = (1 << bits) - 1
    lo = xg.min(axis=2)
    hi = xg.max(axis=2)
    zero = round_side(lo, sd, "zero points", "uniform")
    step = round_side((hi - lo) / levels, sd, "steps", "uniform")
    z64 = zero.astype(np.float64)[:, :, None, :]
    s64 = step.astype(np.float64)[:, :, None, :]
    safe = np.where(s64 > 0, s64, 1.0)
    q = np.clip(np.rint((xg - z64) / safe), 0, levels)
    q = np.where(s64 > 0, q, 0).astype(np.uint8)
    b, ng, g, other = q.shape
    q = q.reshape(b, ng * g, other)[:, :length, :]
    return np.ascontiguousarray(_orient(q, axis)), zero, step


def uniform_dequantize(
    symbols: np.ndarray,
    zero: np.ndarray,
    step: np.ndarray,
    axis: str = "channel",
    group_size: int | None = None,
) -> np.ndarray:
    """Reconstruct float64 ``(slabs, tokens, head_dim)`` from :func:`uniform_quantize`'s output."""
    qo = _orient(np.asarray(symbols), axis)
    length = qo.shape[1]
    qg, _ = _grouped(qo.astype(np.float64), group_size)
    x = zero.astype(np.float64)[:, :, None, :] + qg * step.astype(np.float64)[:, :, None, :]
    b, ng, g, other = x.shape
    return _orient(x.reshape(b, ng * g, other)[:, :length, :], axis)


def _num_groups(length: int, group_size: int) -> int:
    g = length if not group_size else min(group_size, length)
    return -(-length // g)


@register_codec
class UniformCodec(QuantCodec):
    """Asymmetric uniform quantizer with per-group scale and zero point (KIVI), entropy-coded.

    Parameters
    ----------
    bits : int
        Bits per element of the quantizer, 1 to 8 (``2**bits`` levels). The coded rate is
        usually lower: the symbols go through ``coder``.
    axis : {"channel", "token"}
        ``"channel"``: a scale and zero point per channel (over groups of tokens);
        ``"token"``: per token (over groups of channels).
    group_size : int or None
        Elements per group along the reduced axis; None for the whole axis.
    side_dtype : {"float16", "float32"}
        Storage of the zero points and steps (counted as side information).
    coder : dict
        Config of the lossless coder for the symbols; default ``{"id": "rans"}``.

    Examples
    --------
    >>> import numpy as np
    >>> from kvinfo.codecs import get_codec
    >>> codec = get_codec({"id": "uniform", "bits": 4, "axis": "channel", "group_size": 64,
    ...                    "coder": {"id": "rans"}})
    >>> x = np.random.default_rng(0).standard_normal((128, 64)).astype(np.float32)
    >>> y = codec.decode(codec.encode(x))
    >>> y.shape, y.dtype
    ((128, 64), dtype('float32'))
    >>> bool(np.mean((x - y) ** 2) < 0.02)
    True
    """

    codec_id = "uniform"
    _tag = 1

    def __init__(
        self,
        bits: int = 4,
        axis: str = "channel",
        group_size: int | None = None,
        side_dtype: str = "float16",
        coder: dict | None = None,
    ):
        if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or not 1 <= bits <= 8:
            raise CodecConfigError(f"uniform: bits must be an integer in 1..8; found {bits!r}")
        if axis not in _AXES:
            raise CodecConfigError(f"uniform: axis must be one of {_AXES}; found {axis!r}")
        if group_size is not None and (
            isinstance(group_size, bool)
            or not isinstance(group_size, int | np.integer)
            or not 1 <= group_size <= 0xFFFFFFFF
        ):
            raise CodecConfigError(
                f"uniform: group_size must be None or a positive integer; found {group_size!r}"
            )
        if side_dtype not in SIDE_DTYPES:
            raise CodecConfigError(
                f"uniform: side_dtype must be one of {tuple(SIDE_DTYPES)}; found {side_dtype!r}"
            )
        super().__init__(coder)
        self.bits = int(bits)
        self.axis = axis
        self.group_size = None if group_size is None else int(group_size)
        self.side_dtype = side_dtype

    def get_config(self) -> dict:
        return {
            "id": self.codec_id,
            "bits": self.bits,
            "axis": self.axis,
            "group_size": self.group_size,
            "side_dtype": self.side_dtype,
            "coder": self.coder_config,
        }

    def encode(self, array) -> bytes:
        array = check_float_array(array, self.codec_id)
        x3 = as_slabs(array)
        q, zero, step = uniform_quantize(x3, self.bits, self.axis, self.group_size, self.side_dtype)
        params = struct.pack(
            _PARAMS,
            self.bits,
            _AXES.index(self.axis),
            DTYPE_CODES[self.side_dtype],
            self.group_size or 0,
        )
        sections = [
            Section(0, to_le_bytes(zero)),
            Section(0, to_le_bytes(step)),
            self._coded(q.reshape(array.shape)),
        ]
        return build_stream(self._tag, array.dtype, array.shape, params, sections)

    def max_abs_error(self, array) -> np.ndarray:
        """A bound on ``|x - decode(encode(x))|`` per element, stated for
        :func:`kvinfo.testing.check_lossy_codec`.

        Per group, with the stored zero point ``z`` and step ``s`` and the group's minimum
        and maximum: half a step inside ``[z, z + (2**bits - 1) s]``, and the clipping
        error where rounding the side information moved that range inside
        ``[min, max]`` (``z - min``, ``max - z - (2**bits - 1) s``); plus 1e-12 of the
        range for float64 arithmetic and the final rounding to the output dtype (a unit in
        the last place of the reconstruction plus the smallest subnormal).
        """
        array = check_float_array(array, self.codec_id)
        x3 = as_slabs(array)
        _, zero, step = uniform_quantize(x3, self.bits, self.axis, self.group_size,
                                         self.side_dtype)
        xo = _orient(x3, self.axis)
        xg, _ = _grouped(xo, self.group_size)
        lo, hi = xg.min(axis=2), xg.max(axis=2)
        z, st = zero.astype(np.float64), step.astype(np.float64)
        top = z + ((1 << self.bits) - 1) * st
        group = np.maximum.reduce([st / 2, z - lo, hi - top]) + 1e-12 * (np.abs(z) + np.abs(top))
        b, length, other = xo.shape
        e = np.broadcast_to(group[:, :, None, :], xg.shape).reshape(b, -1, other)[:, :length]
        e = _orient(e, self.axis)
        fin = ml_dtypes.finfo(array.dtype)
        rounding = np.maximum(np.abs(x3) + e, float(fin.tiny)) * float(fin.eps)
        return (e + rounding + float(fin.smallest_subnormal)).reshape(array.shape)

    def _read(self, data, max_output_bytes: int | None = None):
        """Parse and validate a stream: the one parser of the ``uniform`` format, shared by
        the CPU decode and :meth:`prepare_cuda`. Returns ``(parsed, bits, axis, group_size,
        zero, step)``, ``zero`` and ``step`` as float64 ``(slabs, groups, other axis)``."""
        p = self._parse(data, max_output_bytes)
        bits, axis_code, sd_code, group_size = unpack_params(_PARAMS, p.params)
        if not 1 <= bits <= 8 or axis_code > 1 or sd_code not in (1, 3):
            raise CorruptStreamError("bad uniform parameter block")
        if len(p.shape) < 2 or len(p.sections) != 3 or p.sections[2].kind != CODED:
            raise CorruptStreamError("bad uniform stream layout")
        axis = _AXES[axis_code]
        sd = SIDE_DTYPES["float16" if sd_code == 1 else "float32"]
        t, d = p.shape[-2:]
        b = int(np.prod(p.shape[:-2], dtype=np.int64))
        length, other = (t, d) if axis == "channel" else (d, t)
        ng = _num_groups(length, group_size)
        zero = side_array(p.sections[0], sd, b * ng * other).reshape(b, ng, other)
        step = side_array(p.sections[1], sd, b * ng * other).reshape(b, ng, other)
        zero = finite_side(zero, "zero points")
        step = finite_side(step, "steps", nonnegative=True)
        return p, bits, axis, group_size, zero, step

    def prepare_cuda(self, data):
        """Validate ``data`` on the host (as :meth:`decode` does) and upload it for the fused
        decode-and-dequantize kernels; returns a :class:`kvinfo.kernels.gpu.PreparedStream`.

        The coder must be ``rans`` or ``huffman``
        (else :class:`~kvinfo.errors.CodecConfigError`).
        """
        gpu = front_end()
        coder = self.coder
        if not has_cuda_decoder(coder):
            raise CodecConfigError(
                f"uniform: no CUDA decoder for coder {coder.codec_id!r}; expected 'rans' or "
                f"'huffman', or decode with device='cpu'"
            )
        p, bits, axis, group_size, zero, step = self._read(data)
        t, d = p.shape[-2:]
        length = t if axis == "channel" else d
        dq = gpu.Dequant(
            zero.reshape(-1), step.reshape(-1), tokens=t, head_dim=d,
            group_size=length if not group_size else min(group_size, length),
            num_groups=zero.shape[1], per_token=axis == "token", out_dtype=dtype_name(p.dtype),
        )
        return coder.prepare_cuda(p.sections[2].data, dequant=dq, shape=p.shape,
                                  max_symbol=(1 << bits) - 1)

    @guard_memory
    def decode(
        self, data, device: str = "cpu", max_output_bytes: int | None = None
    ) -> np.ndarray:
        """Decode a stream; see the module docstring for its layout and
        ``docs/damaged-input.md`` for what is checked before any allocation.
        ``max_output_bytes`` caps the output (:mod:`kvinfo.codecs.limits`)."""
        if device == "cuda":  # fused decode + dequantize on the GPU, output in device memory
            return self.prepare_cuda(data).decode()
        self._check_device(device)
        p, bits, axis, group_size, zero, step = self._read(data, max_output_bytes)
        t, d = p.shape[-2:]
        b = int(np.prod(p.shape[:-2], dtype=np.int64))
        q = self._decode_symbols(p.sections[2], p.shape, (1 << bits) - 1)
        x = uniform_dequantize(q.reshape(b, t, d), zero, step, axis, group_size or None)
        return to_output(x.reshape(p.shape), p.dtype)
