"""``lossless``: exact coding of float16/bfloat16/float32 KV by splitting the float fields.

The bits of a float are ``sign | exponent | mantissa``. The exponent of real activations has
a small, peaked distribution (about 2.6 bits of entropy in 8-bit bf16 exponents), while the
low mantissa bits are close to uniform. Like DFloat11 does for weights, this codec sends the
sign, the exponent and the ``h`` highest mantissa bits as one symbol (``1 + E + h`` bits, at
most 16) through the entropy coder, and stores the remaining ``M - h`` mantissa bits verbatim,
bit-packed. Every bit pattern, NaN payloads and infinities included, round-trips exactly.

``mantissa_bits="auto"`` picks ``h`` for each array by estimating, for every admissible ``h``,
``N * H0(symbols_h) + N * (M - h) + 32 * distinct(symbols_h)`` bits (the pooled order-0
entropy, the literal bits, and a rough table cost), and takes the smallest.

Field widths: float16 (E=5, M=10), bfloat16 (E=8, M=7), float32 (E=8, M=23), float64
(E=11, M=52).

Stream sections::

    params   "<B": h, the mantissa bits coded with the exponent
    coded    symbols (bits >> (M - h)), uint8 when 1 + E + h <= 8 else uint16, input shape
    raw      the low M - h bits of every element, element order, LSB first within an
             element, packed little-endian into bytes (last byte zero-padded)

Only the literal bits of the raw section (``N * (M - h)``) count as symbol bits; its padding
is side information.

References
----------
T. Zhang et al., "70% Size, 100% Accuracy: Lossless LLM Compression for Efficient GPU
Inference via Dynamic-Length Float (DFloat11)", arXiv:2504.11651, 2025.
"""

from __future__ import annotations

import struct

import numpy as np

from ...errors import CodecConfigError, CorruptStreamError
from ..registry import register_codec
from ._base import (
    RAW,
    ParsedStream,
    QuantCodec,
    Section,
    build_stream,
    check_float_array,
    guard_memory,
)

__all__ = ["LosslessCodec", "FLOAT_FIELDS", "split_fields", "plugin_entropy_bits"]

#: name -> (unsigned view dtype, exponent bits E, mantissa bits M)
FLOAT_FIELDS = {
    "float16": (np.uint16, 5, 10),
    "bfloat16": (np.uint16, 8, 7),
    "float32": (np.uint32, 8, 23),
    "float64": (np.uint64, 11, 52),
}
_PARAMS = "<B"


def _fields(dtype: np.dtype):
    from ._base import dtype_name

    return FLOAT_FIELDS[dtype_name(dtype)]


def max_mantissa_bits(dtype) -> int:
    """The largest ``h`` such that sign, exponent and ``h`` mantissa bits fit 16 bits."""
    _, e, m = _fields(np.dtype(dtype))
    return min(m, 15 - e)


def split_fields(array: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray]:
    """``(symbols, low_bits)``: the top ``1 + E + h`` bits and the low ``M - h`` bits (uint64).

    Examples
    --------
    >>> import numpy as np
    >>> from kvinfo.codecs.quant.lossless import split_fields
    >>> s, lo = split_fields(np.array([1.0, -2.0], dtype=np.float16), h=0)
    >>> s.tolist(), lo.tolist()  # sign|exponent of 1.0 = 0|01111, of -2.0 = 1|10000
    ([15, 48], [0, 0])
    """
    view, e, m = _fields(array.dtype)
    bits = np.ascontiguousarray(array).view(view).astype(np.uint64)
    shift = np.uint64(m - h)
    sym = bits >> shift
    low = bits & np.uint64((1 << (m - h)) - 1)
    sdt = np.uint8 if 1 + e + h <= 8 else np.uint16
    return sym.astype(sdt), low


def plugin_entropy_bits(symbols: np.ndarray) -> tuple[float, int]:
    """Order-0 plug-in entropy (bits per symbol) and the number of distinct symbols."""
    counts = np.bincount(symbols.ravel().astype(np.int64))
    counts = counts[counts > 0]
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum()), int(counts.size)


def _pack_low(low: np.ndarray, width: int) -> bytes:
    if width == 0 or low.size == 0:
        return b""
    flat = low.ravel()
    out = []
    step = 1 << 18
    for i in range(0, flat.size, step):  # bounded temporaries
        chunk = flat[i : i + step]
        bits = ((chunk[:, None] >> np.arange(width, dtype=np.uint64)) & np.uint64(1)).astype(
            np.uint8
        )
        out.append(bits.ravel())
    return np.packbits(np.concatenate(out), bitorder="little").tobytes()


def _unpack_low(data: bytes, n: int, width: int) -> np.ndarray:
    if width == 0 or n == 0:
        return np.zeros(n, dtype=np.uint64)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[: n * width]
    weights = np.uint64(1) << np.arange(width, dtype=np.uint64)
    out = np.empty(n, dtype=np.uint64)
    step = 1 << 18
    for i in range(0, n, step):
        blk = bits[i * width : min(n, i + step) * width].reshape(-1, width).astype(np.uint64)
        out[i : i + blk.shape[0]] = (blk * weights).sum(axis=1, dtype=np.uint64)
    return out


@register_codec
class LosslessCodec(QuantCodec):
    """Bit-exact float codec: sign, exponent and high mantissa bits entropy-coded (DFloat11-style).

    Parameters
    ----------
    mantissa_bits : int or "auto"
        How many of the highest mantissa bits join the coded symbol (0 up to ``15 - E``,
        capped at ``M``); ``"auto"`` chooses per array by estimated size.
    coder : dict
        Config of the lossless coder of the symbols; default ``{"id": "rans"}``.

    Notes
    -----
    Accepts float16, bfloat16, float32 and float64 arrays of any shape with at least one
    axis, including empty ones and non-finite values (they are bit patterns like any other).

    Examples
    --------
    >>> import ml_dtypes, numpy as np
    >>> from kvinfo.codecs import get_codec
    >>> codec = get_codec({"id": "lossless"})
    >>> x = np.random.default_rng(0).standard_normal((64, 64)).astype(ml_dtypes.bfloat16)
    >>> data = codec.encode(x)
    >>> bool(np.array_equal(codec.decode(data).view(np.uint16), x.view(np.uint16)))
    True
    >>> codec.rate(data)["bits_per_element"] < 16
    True
    """

    codec_id = "lossless"
    _tag = 4
    lossy = False  # bit-exact

    def __init__(self, mantissa_bits: int | str = "auto", coder: dict | None = None):
        if mantissa_bits != "auto" and (
            isinstance(mantissa_bits, bool)
            or not isinstance(mantissa_bits, int | np.integer)
            or not 0 <= mantissa_bits <= 10
        ):
            raise CodecConfigError(
                f"lossless: mantissa_bits must be 'auto' or an integer in 0..10; "
                f"found {mantissa_bits!r}"
            )
        super().__init__(coder)
        self.mantissa_bits = mantissa_bits if mantissa_bits == "auto" else int(mantissa_bits)

    def get_config(self) -> dict:
        return {
            "id": self.codec_id,
            "mantissa_bits": self.mantissa_bits,
            "coder": self.coder_config,
        }

    def choose_mantissa_bits(self, array: np.ndarray) -> int:
        """The ``h`` this codec uses for ``array`` (see the module docstring)."""
        hmax = max_mantissa_bits(array.dtype)
        if self.mantissa_bits != "auto":
            if self.mantissa_bits > hmax:
                raise CodecConfigError(
                    f"lossless: mantissa_bits must be at most {hmax} for {array.dtype}; "
                    f"found {self.mantissa_bits}"
                )
            return int(self.mantissa_bits)
        if array.size == 0:
            return 0
        _, _, m = _fields(array.dtype)
        n = array.size
        best, best_cost = 0, np.inf
        for h in range(hmax + 1):
            sym, _ = split_fields(array, h)
            ent, distinct = plugin_entropy_bits(sym)
            cost = n * ent + n * (m - h) + 32 * distinct
            if cost < best_cost:
                best, best_cost = h, cost
        return best

    def encode(self, array) -> bytes:
        array = check_float_array(array, self.codec_id, min_ndim=1, finite=False, allow_empty=True)
        h = self.choose_mantissa_bits(array)
        _, _, m = _fields(array.dtype)
        sym, low = split_fields(array, h)
        sections = [self._coded(sym), Section(RAW, _pack_low(low, m - h))]
        return build_stream(self._tag, array.dtype, array.shape, struct.pack(_PARAMS, h), sections)

    def _raw_payload_bits(self, parsed: ParsedStream) -> int:
        (h,) = struct.unpack(_PARAMS, parsed.params)
        _, _, m = _fields(parsed.dtype)
        return int(np.prod(parsed.shape, dtype=np.int64)) * (m - h)

    @guard_memory
    def decode(
        self, data, device: str = "cpu", max_output_bytes: int | None = None
    ) -> np.ndarray:
        """Decode a stream; see the module docstring for its layout and
        ``docs/damaged-input.md`` for what is checked before any allocation.
        ``max_output_bytes`` caps the output (:mod:`kvinfo.codecs.limits`)."""
        self._check_device(device)
        p = self._parse(data, max_output_bytes)
        if len(p.params) != 1 or len(p.sections) != 2 or p.sections[1].kind != RAW:
            raise CorruptStreamError("bad lossless stream layout")
        (h,) = struct.unpack(_PARAMS, p.params)
        view, e, m = _fields(p.dtype)
        if h > max_mantissa_bits(p.dtype):
            raise CorruptStreamError(f"bad lossless parameter: h={h}")
        n = int(np.prod(p.shape, dtype=np.int64))
        width = m - h
        if len(p.sections[1].data) != (n * width + 7) // 8:
            raise CorruptStreamError("bad lossless raw-bits section length")
        sym = self._decode_symbols(p.sections[0], p.shape, (1 << (1 + e + h)) - 1)
        low = _unpack_low(p.sections[1].data, n, width)
        bits = (sym.ravel().astype(np.uint64) << np.uint64(width)) | low
        return bits.astype(view).view(p.dtype).reshape(p.shape)
