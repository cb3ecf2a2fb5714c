"""Adaptive arithmetic (range) coding with channel and previous-symbol contexts.

Parameters
----------
context : {"channel+prev", "channel", "none"}, default "channel+prev"
    What selects the adaptive model of a symbol: nothing (one adaptive order-0 model),
    its channel (the last axis, for arrays of 2 or more dimensions), or its channel and
    the previous symbol of the same channel (the element one row earlier). Context
    modelling is why this coder can go below the order-0 entropy of real KV data.
adapt_limit : int, default 1022
    The adaptation rate of each binary probability is ``1/(n + 2)`` after ``n``
    observations (a Krichevsky-Trofimov estimate) until ``n`` reaches this limit.
chunk_size : int, default 1048576
    Symbols per chunk; every chunk starts from fresh models and codes independently
    (so chunks encode and decode in parallel).

Notes
-----
Symbols minus the minimum symbol are coded most-significant bit first through a binary
tree of adaptive probabilities (see :class:`~kvinfo.codecs.models.AdaptiveContextModel`)
with an LZMA-style byte-oriented binary range coder: 32-bit range, 16-bit probabilities
clamped to ``[32, 65504] / 65536``, carry propagation through a cache byte. No model
table is stored: the decoder rebuilds the same adaptive state. At most ``2**22``
adaptive probabilities per chunk are used; for large alphabets the previous-symbol
context keeps only the high bits of the previous symbol and, if still too large, the
channel context is dropped (the stream records the layout). CPU only. Symbols are uint8,
uint16 or int32 (negative allowed; ``max - min + 1 <= 65536``).

Examples
--------
>>> import numpy as np
>>> from kvinfo.codecs import get_codec
>>> codec = get_codec({"id": "arith"})
>>> walk = np.cumsum(np.random.default_rng(0).integers(-1, 2, size=(4096, 2)), axis=0) % 16
>>> x = walk.astype(np.uint8)  # a random walk per channel: order-0 entropy is 4 bits
>>> data = codec.encode(x)
>>> bool(np.array_equal(codec.decode(data), x))
True
>>> codec.rate(data)["symbol_bits_per_element"] < 1.8  # the step costs log2(3) = 1.58 bits
True

References
----------
I. H. Witten, R. M. Neal, J. G. Cleary, "Arithmetic coding for data compression",
CACM 30(6), 1987. G. N. N. Martin, "Range encoding", 1979. I. Pavlov, LZMA SDK
(range coder with cache byte).
"""

from __future__ import annotations

import numpy as np

from ..errors import CodecConfigError, CorruptStreamError
from ..kernels import cpu
from . import _container as C
from ._deprecated import deprecated_aliases
from .models import AdaptiveContextModel
from .registry import register_codec

__all__ = ["ArithCodec", "ARITH_INDEX_DTYPE", "CONTEXTS"]

CONTEXTS = ("channel+prev", "channel", "none")

#: one chunk-index record (little-endian, 16 bytes)
ARITH_INDEX_DTYPE = np.dtype([("byte_offset", "<u8"), ("num_symbols", "<u4"),
                              ("num_bytes", "<u4")])

_PARAM_SPEC = {
    "symbol_bits": (1, 16),
    "num_channel_contexts": (1, AdaptiveContextModel.MAX_NODES),
    "prev_bits": (0, 16),
    "adapt_limit": (1, 65534),
    "chunk_size": (1, 1 << 30),
    "period": (1, 1 << 40),
    "min_symbol": (-(1 << 31), (1 << 32) - 1),
    "alphabet_size": (0, C.MAX_ALPHABET),
    "num_chunks": (0, 1 << 40),
}


@register_codec
class ArithCodec(C.ContainerCoder):
    """Adaptive context-modelling range coder; the module docstring lists parameters."""

    codec_id = "arith"

    def __init__(self, context: str = "channel+prev", adapt_limit: int = 1022,
                 chunk_size: int = 1 << 20):
        if context not in CONTEXTS:
            raise CodecConfigError(f"arith: context must be one of {CONTEXTS}, found {context!r}")
        for name, v, lo, hi in (("adapt_limit", adapt_limit, 1, 65534),
                                ("chunk_size", chunk_size, 1, 1 << 30)):
            if type(v) is not int or not lo <= v <= hi:
                raise CodecConfigError(f"arith: {name} must be an int in [{lo}, {hi}], found {v!r}")
        self.context = context
        self.adapt_limit = adapt_limit
        self.chunk_size = chunk_size

    def get_config(self) -> dict:
        return {"id": self.codec_id, "context": self.context, "adapt_limit": self.adapt_limit,
                "chunk_size": self.chunk_size}

    def encode(self, array: np.ndarray) -> bytes:
        a = C.as_symbol_array(array, self.codec_id)
        flat = a.reshape(-1)
        n = flat.size
        period = C.channel_period(a.shape)
        nchunks = -(-n // self.chunk_size)
        lo, span = (C.symbol_range(flat, self.codec_id) if n else (0, 0))
        model = AdaptiveContextModel.for_data(max(span, 1), period, self.context,
                                              self.adapt_limit)
        payload = np.empty(0, np.uint8)
        num_bytes = np.zeros(nchunks, np.uint32)
        if n:
            idx = np.subtract(flat, lo, dtype=np.int32)
            payload, num_bytes = cpu.arith_encode(
                idx, self.chunk_size, period, model.symbol_bits, model.num_channel_contexts,
                model.prev_bits, model.adapt_limit,
            )
        index = np.zeros(nchunks, ARITH_INDEX_DTYPE)
        index["num_bytes"] = num_bytes
        if nchunks > 1:
            index["byte_offset"][1:] = np.cumsum(num_bytes[:-1], dtype=np.uint64)
        index["num_symbols"] = np.minimum(
            self.chunk_size, n - np.arange(nchunks, dtype=np.int64) * self.chunk_size
        )
        params = {
            "symbol_bits": model.symbol_bits,
            "num_channel_contexts": model.num_channel_contexts,
            "prev_bits": model.prev_bits,
            "adapt_limit": model.adapt_limit,
            "chunk_size": self.chunk_size,
            "period": period,
            "min_symbol": lo,
            "alphabet_size": span,
            "num_chunks": nchunks,
        }
        return C.pack(self.get_config(), a.shape, a.dtype.name, params,
                      [("index", index.tobytes()), ("payload", payload.tobytes())],
                      C.symbols_crc32(a))

    def parse(self, data):
        """Validate a stream completely; return ``(container, index, payload)``."""
        c = C.unpack(data, self.codec_id)
        p = C.require_params(c.params, _PARAM_SPEC)
        n = c.num_symbols
        C.check_chunks(p, n)
        if set(c.sections) != {"index", "payload"} or p["period"] != C.channel_period(c.shape):
            raise CorruptStreamError("corrupt kvinfo stream: bad arith layout")
        if p["num_channel_contexts"] not in (1, p["period"]) or p["prev_bits"] > p[
            "symbol_bits"
        ] or (p["num_channel_contexts"] << (p["prev_bits"] + p["symbol_bits"])) > (
            AdaptiveContextModel.MAX_NODES
        ):
            raise CorruptStreamError("corrupt kvinfo stream: bad arith context layout")
        index = C.section_array(c, "index", ARITH_INDEX_DTYPE, p["num_chunks"])
        payload = C.section_array(c, "payload", np.uint8)
        if n == 0:
            if p["alphabet_size"] or len(payload):
                raise CorruptStreamError("corrupt kvinfo stream: empty array with non-empty data")
            return c, index, payload
        if not 1 <= p["alphabet_size"] <= 1 << p["symbol_bits"]:
            raise CorruptStreamError("corrupt kvinfo stream: alphabet does not fit symbol_bits")
        C.check_dtype_range(p, c.dtype)
        nb = index["num_bytes"].astype(np.int64)
        offs = np.zeros_like(nb)
        np.cumsum(nb[:-1], out=offs[1:])
        cs = p["chunk_size"]
        expect = np.minimum(cs, n - np.arange(p["num_chunks"], dtype=np.int64) * cs)
        if (not np.array_equal(index["byte_offset"].astype(np.int64), offs)
                or not np.array_equal(index["num_symbols"].astype(np.int64), expect)
                or int(nb.sum()) != payload.shape[0]):
            raise CorruptStreamError("corrupt kvinfo stream: arith chunk index inconsistent")
        return c, index, payload

    def decode(self, data, device: str = "cpu") -> np.ndarray:
        if device != "cpu":
            raise CodecConfigError(f"arith: this decoder runs on device 'cpu', found {device!r}")
        c, index, payload = self.parse(data)
        p = c.params
        n = c.num_symbols
        if n == 0:
            out = np.empty(0, c.dtype)
        else:
            idx, status = cpu.arith_decode(
                payload, np.ascontiguousarray(index["num_bytes"], np.uint32), n,
                p["chunk_size"], p["period"], p["symbol_bits"], p["num_channel_contexts"],
                p["prev_bits"], p["adapt_limit"],
            )
            C.raise_status(status, "arith")
            if int(idx.max()) >= p["alphabet_size"]:
                raise CorruptStreamError("corrupt kvinfo stream: decoded symbol outside alphabet")
            out = (idx.astype(np.int64) + p["min_symbol"]).astype(c.dtype)
        out = out.reshape(c.shape)
        C.check_symbols(c, out)
        return out


#: old class name, deprecated (one release)
__getattr__ = deprecated_aliases(__name__, {"Arith": "ArithCodec"})
