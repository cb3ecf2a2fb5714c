"""``ecsq``: entropy-coded scalar quantization with a fixed uniform step.

Every element is quantized to the nearest multiple of the step ``Delta`` (a mid-tread
uniform quantizer with unbounded index), ``k = round(x / Delta)``, and the indices go through
the entropy coder. The step, not a bit width, sets the distortion: at high rate the error is
uniform on ``[-Delta/2, Delta/2]``, so ``mse_per_element = Delta**2 / 12``, and the coded rate
approaches ``h(X) - log2(Delta)``. That is ``0.5 * log2(2 pi e / 12) = 0.2546`` bit per element
above the Shannon lower bound ``h(X) - 0.5 * log2(2 pi e D)`` (Gish and Pierce 1968), the
classic gap of scalar quantization with ideal entropy coding.

``step_mode="relative"`` multiplies the step by the RMS of each slab (stored as float32 side
information), which gives a comparable SNR across layers whose scales differ by orders of
magnitude.

Stream sections::

    params   "<dBq": step (float64), mode (0 absolute, 1 relative), k_min (int64)
    side     per-slab RMS, float32, one per slab (relative mode only; empty otherwise)
    coded    symbols k - k_min, uint8 if the index range fits 256 values, else uint16,
             the input's shape

References
----------
H. Gish, J. N. Pierce, "Asymptotically efficient quantizing", IEEE Trans. IT 14(5), 1968.
"""

from __future__ import annotations

import math
import struct

import ml_dtypes
import numpy as np

from ...errors import CodecConfigError, CorruptStreamError
from ..registry import register_codec
from ._base import (
    QuantCodec,
    Section,
    as_slabs,
    build_stream,
    check_float_array,
    finite_side,
    guard_memory,
    side_array,
    to_le_bytes,
    to_output,
    unpack_params,
)

__all__ = ["EcsqCodec", "ecsq_steps"]

_MODES = ("absolute", "relative")
_PARAMS = "<dBq"
MAX_ALPHABET = 65536


def ecsq_steps(x3: np.ndarray, step: float, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-slab steps (float64, shape ``(slabs,)``) and the stored per-slab RMS (float32)."""
    if mode == "absolute":
        return np.full(x3.shape[0], float(step)), np.zeros(0, np.float32)
    rms = np.sqrt(np.mean(np.square(x3), axis=(1, 2))).astype(np.float32)
    rms64 = rms.astype(np.float64)
    return float(step) * np.where(rms64 > 0, rms64, 1.0), rms


@register_codec
class EcsqCodec(QuantCodec):
    """Entropy-coded uniform scalar quantizer: a step sets the distortion, the coder the rate.

    Parameters
    ----------
    step : float
        The quantization step ``Delta > 0`` (absolute, or relative to each slab's RMS).
    step_mode : {"absolute", "relative"}
        Whether ``step`` is in the data's units or a fraction of each slab's RMS.
    coder : dict
        Config of the lossless coder for the indices; default ``{"id": "rans"}``.

    Notes
    -----
    The index range of one array must fit 65536 values; a step too small for the data's
    range raises :class:`~kvinfo.errors.CodecConfigError`.

    Examples
    --------
    >>> import numpy as np
    >>> from kvinfo.codecs import get_codec
    >>> codec = get_codec({"id": "ecsq", "step": 0.1})
    >>> x = np.random.default_rng(0).standard_normal((256, 64))
    >>> y = codec.decode(codec.encode(x))
    >>> round(float(np.mean((x - y) ** 2)) / (0.1 ** 2 / 12), 1)
    1.0
    """

    codec_id = "ecsq"
    _tag = 2

    def __init__(self, step: float = 0.1, step_mode: str = "absolute", coder: dict | None = None):
        if (
            isinstance(step, bool)
            or not isinstance(step, int | float | np.integer | np.floating)
            or not math.isfinite(step)
            or step <= 0
        ):
            raise CodecConfigError(f"ecsq: step must be a finite number > 0; found {step!r}")
        if step_mode not in _MODES:
            raise CodecConfigError(f"ecsq: step_mode must be one of {_MODES}; found {step_mode!r}")
        super().__init__(coder)
        self.step = float(step)
        self.step_mode = step_mode

    def get_config(self) -> dict:
        return {
            "id": self.codec_id,
            "step": self.step,
            "step_mode": self.step_mode,
            "coder": self.coder_config,
        }

    def encode(self, array) -> bytes:
        array = check_float_array(array, self.codec_id)
        x3 = as_slabs(array)
        steps, rms = ecsq_steps(x3, self.step, self.step_mode)
        k = np.rint(x3 / steps[:, None, None])
        k_min, k_max = float(k.min()), float(k.max())
        span = k_max - k_min + 1
        if span > MAX_ALPHABET:
            raise CodecConfigError(
                f"ecsq: step {self.step:g} needs {span:.0f} index values for this data; "
                f"at most {MAX_ALPHABET} fit (use a larger step)"
            )
        dtype = np.uint8 if span <= 256 else np.uint16
        symbols = (k - k_min).astype(dtype).reshape(array.shape)
        params = struct.pack(_PARAMS, self.step, _MODES.index(self.step_mode), int(k_min))
        sections = [Section(0, to_le_bytes(rms)), self._coded(symbols)]
        return build_stream(self._tag, array.dtype, array.shape, params, sections)

    def max_abs_error(self, array) -> np.ndarray:
        """A bound on ``|x - decode(encode(x))|`` per element, stated for
        :func:`kvinfo.testing.check_lossy_codec`: half the slab's step (rounding to the
        nearest multiple), plus the final rounding to the output dtype (half a unit in the
        last place of the reconstruction, taken as a full unit above the smallest normal,
        plus the smallest subnormal), plus 1e-9 of the step for float64 arithmetic."""
        array = check_float_array(array, self.codec_id)
        x3 = as_slabs(array)
        steps, _ = ecsq_steps(x3, self.step, self.step_mode)
        half = 0.5 * steps[:, None, None]
        fin = ml_dtypes.finfo(array.dtype)
        rounding = np.maximum(np.abs(x3) + half, float(fin.tiny)) * float(fin.eps)
        bound = half * (1 + 1e-9) + rounding + float(fin.smallest_subnormal)
        return bound.reshape(array.shape)

    @guard_memory
    def decode(
        self, data, device: str = "cpu", max_output_bytes: int | None = None
    ) -> np.ndarray:
        """Decode a stream; see the module docstring for its layout and
        ``docs/damaged-input.md`` for what is checked before any allocation.
        ``max_output_bytes`` caps the output (:mod:`kvinfo.codecs.limits`)."""
        self._check_device(device)
        p = self._parse(data, max_output_bytes)
        step, mode, k_min = unpack_params(_PARAMS, p.params)
        if not (math.isfinite(step) and step > 0) or mode > 1:
            raise CorruptStreamError("bad ecsq parameter block")
        if len(p.shape) < 2 or len(p.sections) != 2:
            raise CorruptStreamError("bad ecsq stream layout")
        t, d = p.shape[-2:]
        b = int(np.prod(p.shape[:-2], dtype=np.int64))
        if mode == 1:
            rms = side_array(p.sections[0], np.float32, b)
            rms = finite_side(rms, "slab RMS values", nonnegative=True)
        else:
            side_array(p.sections[0], np.float32, 0)
        sym = self._decode_symbols(p.sections[1], p.shape, MAX_ALPHABET - 1)
        steps = step * np.where(rms > 0, rms, 1.0) if mode == 1 else np.full(b, step)
        k = sym.reshape(b, t, d).astype(np.float64) + float(k_min)
        with np.errstate(over="ignore"):
            x = k * steps[:, None, None]
        if not np.all(np.isfinite(x)):
            raise CorruptStreamError("ecsq stream reconstructs values beyond float64 range")
        return to_output(x.reshape(p.shape), p.dtype)
