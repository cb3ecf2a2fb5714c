"""Adaptive arithmetic (range) coding with channel and previous-symbol contexts.

Parameters
----------
context : {"auto", "channel+prev", "channel", "none"}, default "auto"
    What selects the adaptive model of a symbol: nothing (one adaptive order-0 model),
    its channel (the last axis, for arrays of 2 or more dimensions), or its channel and
    the previous symbol of the same channel (the element one row earlier). Context
    modelling is why this coder can go below the order-0 entropy of real KV data.
    ``"auto"`` picks, per stream, the mode with the smallest estimated size: the
    empirical conditional entropy of the symbols given the context plus the cost of
    learning each context's adaptive model (about ``0.5 log2(n)`` bits per used binary
    node visited ``n`` times, per chunk; see :func:`estimate_context_bits`). The stream
    records the layout it used.
adapt_limit : int or "auto", default "auto"
    The adaptation rate of each binary probability is ``1/(n + 2)`` after ``n``
    observations (a Krichevsky-Trofimov estimate) until ``n`` reaches this limit; after
    it, the model forgets at that rate. A low limit follows drift (real KV, where each
    row of a dump is a different token), a high one averages out estimation noise on a
    stationary source: past the limit every binary decision pays about
    ``1 / (2 adapt_limit ln 2)`` bits of noise, which is 1.1 % of a 0.05-bit-per-symbol
    Bernoulli stream at 1022 and 0.5 % at 65534 (both measured, 4 M symbols).
    ``"auto"`` encodes the first chunk (at most ``chunk_size`` symbols) with each of
    :data:`AUTO_ADAPT_LIMITS` (1022 and 65534) and codes the stream with the one that
    gave fewer bytes (a measured choice, recorded in the stream); it costs one extra
    encode of the first chunk per candidate, at most twice the time of a fixed limit.
chunk_size : int, default 1048576
    Symbols per chunk; every chunk starts from fresh models and codes independently
    (so chunks encode and decode in parallel).

Notes
-----
Overhead (format version 2): on stationary sources of 1 M symbols or more the order-0
mode stays within 0.5 % plus 64 bytes of the static order-0 entropy (about 0.00035 bit
per binary decision of estimation noise once a node has seen ``adapt_limit`` bits, plus
the learning cost of each node); the probabilities are kept at 28 bits so their updates
do not drift (version 1 kept 16 bits, which settled a p = 0.02 bit near 0.03, +2.9 %).
Symbols minus the minimum symbol are coded most-significant bit first through a binary
tree of adaptive probabilities (see :class:`~kvinfo.codecs.models.AdaptiveContextModel`)
with an LZMA-style byte-oriented binary range coder: 32-bit range, probabilities coded
with 16 bits and clamped to ``[32, 65504] / 65536``, carry propagation through a cache
byte. No model table is stored: the decoder rebuilds the same adaptive state. At most ``2**22``
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

import dataclasses

import numpy as np

from ..errors import CodecConfigError, CorruptStreamError
from ..kernels import cpu
from . import _container as C
from ._deprecated import deprecated_aliases
from .models import AdaptiveContextModel
from .registry import register_codec

__all__ = ["ArithCodec", "ARITH_INDEX_DTYPE", "AUTO_ADAPT_LIMITS", "CONTEXTS",
           "estimate_context_bits"]

CONTEXTS = ("auto", "channel+prev", "channel", "none")
#: the adaptation limits ``adapt_limit="auto"`` measures: fast (follows drift) and slow
#: (stationary sources; 65534 is the largest the format holds)
AUTO_ADAPT_LIMITS = (1022, 65534)
#: probability precision of format version 2 streams (version 1: 16)
PROB_BITS = 28

#: one chunk-index record (little-endian, 16 bytes)
ARITH_INDEX_DTYPE = np.dtype([("byte_offset", "<u8"), ("num_symbols", "<u4"),
                              ("num_bytes", "<u4")])

_PARAM_SPEC = {
    "prob_bits": (16, 30),
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
#: version 1 had no prob_bits (probabilities were kept at a fixed precision)
_PARAM_SPEC_V1 = {k: v for k, v in _PARAM_SPEC.items() if k != "prob_bits"}
C.register_layout("arith", tuple(_PARAM_SPEC), ("index", "payload"))


def estimate_context_bits(idx: np.ndarray, period: int, model: AdaptiveContextModel,
                          chunk_size: int) -> float:
    """Estimated code length in bits of indices ``idx`` under ``model``'s context layout.

    The empirical conditional entropy of the symbol given its context, plus a learning
    cost per context and chunk: ``0.5 log2(1 + n_c / m_c) + 1`` bits for each of the
    ``m_c - 1`` free parameters of a context that sees ``n_c`` symbols of ``m_c`` distinct
    values in a chunk. It ranks the context modes; it is not a bound.
    """
    n = idx.shape[0]
    if n == 0:
        return 0.0
    ctx = np.zeros(n, np.int64)
    if model.num_channel_contexts > 1:
        ctx += np.arange(n, dtype=np.int64) % period
    if model.prev_bits:
        prev = np.zeros(n, np.int64)
        prev[period:] = idx[:-period].astype(np.int64) >> (model.symbol_bits - model.prev_bits)
        ctx = (ctx << model.prev_bits) | prev
    span = int(idx.max()) + 1
    cells = np.bincount(ctx * span + idx, minlength=0)
    nz = np.flatnonzero(cells)
    c = cells[nz].astype(np.float64)
    cid = nz // span
    n_ctx = np.bincount(cid, weights=c)
    m_ctx = np.bincount(cid)
    keep = n_ctx > 0
    h = float(-(c * np.log2(c / n_ctx[cid])).sum())
    chunks = max(1, -(-n // chunk_size))
    nc, mc = n_ctx[keep] / chunks, m_ctx[keep]
    learn = chunks * float(((mc - 1) * (0.5 * np.log2(1 + nc / mc) + 1)).sum())
    return h + learn


@register_codec
class ArithCodec(C.ContainerCoder):
    """Adaptive context-modelling range coder; the module docstring lists parameters."""

    codec_id = "arith"

    def __init__(self, context: str = "auto", adapt_limit: int | str = "auto",
                 chunk_size: int = 1 << 20):
        if context not in CONTEXTS:
            raise CodecConfigError(f"arith: context must be one of {CONTEXTS}, found {context!r}")
        for name, v, lo, hi in (("adapt_limit", adapt_limit, 1, 65534),
                                ("chunk_size", chunk_size, 1, 1 << 30)):
            if name == "adapt_limit" and v == "auto":
                continue
            if type(v) is not int or not lo <= v <= hi:
                extra = ' or "auto"' if name == "adapt_limit" else ""
                raise CodecConfigError(
                    f"arith: {name} must be an int in [{lo}, {hi}]{extra}, found {v!r}")
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
        payload = np.empty(0, np.uint8)
        num_bytes = np.zeros(nchunks, np.uint32)
        idx = np.subtract(flat, lo, dtype=np.int32) if n else flat.astype(np.int32)
        model = self._model(idx, span, period)
        if n:
            model, (payload, num_bytes) = self._encode_chunks(idx, period, model)
        params = {
            "prob_bits": PROB_BITS,
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
        return C.pack(self.codec_id, a.shape, a.dtype.name, params,
                      [("index", np.asarray(num_bytes, "<u4").tobytes()),
                       ("payload", payload.tobytes())],
                      C.symbols_crc32(a))

    def _encode_chunks(self, idx, period, model):
        """``(model used, (payload, bytes per chunk))`` of the whole stream; with
        ``adapt_limit="auto"`` the limit is the one of :data:`AUTO_ADAPT_LIMITS` that codes
        the first chunk in the fewest bytes (ties: the first). Thread-safe (no state)."""

        def run(m, x):
            return cpu.arith_encode(x, self.chunk_size, period, m.symbol_bits,
                                    m.num_channel_contexts, m.prev_bits, m.adapt_limit,
                                    PROB_BITS)

        if self.adapt_limit != "auto":
            return model, run(model, idx)
        first = idx[: self.chunk_size]
        best = None
        for limit in AUTO_ADAPT_LIMITS:
            m = dataclasses.replace(model, adapt_limit=limit)
            out = run(m, first)
            if best is None or out[0].shape[0] < best[1][0].shape[0]:
                best = (m, out)
        if first.shape[0] == idx.shape[0]:
            return best  # the first chunk is the whole stream
        return best[0], run(best[0], idx)

    def _model(self, idx, span, period) -> AdaptiveContextModel:
        # the context choice does not depend on the adaptation limit (the estimate
        # charges a learning cost per context, not the forgetting)
        limit = AUTO_ADAPT_LIMITS[0] if self.adapt_limit == "auto" else self.adapt_limit
        if self.context != "auto":
            return AdaptiveContextModel.for_data(max(span, 1), period, self.context, limit)
        modes = ("none", "channel", "channel+prev") if period > 1 else ("none",)
        best = None
        for mode in modes:
            m = AdaptiveContextModel.for_data(max(span, 1), period, mode, limit)
            bits = estimate_context_bits(idx, period, m, self.chunk_size)
            if best is None or bits < best[0]:
                best = (bits, m)
        return best[1]

    def parse(self, data):
        """Validate a stream completely; return ``(container, index, payload)``."""
        c = C.unpack(data, self.codec_id)
        p = C.require_params(c.params, _PARAM_SPEC if c.version >= 2 else _PARAM_SPEC_V1)
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
        if c.version >= 2:
            nb_v2 = C.section_array(c, "index", "<u4", p["num_chunks"])  # length checked first
            index = np.zeros(p["num_chunks"], ARITH_INDEX_DTYPE)
            index["num_bytes"] = nb_v2
            if p["num_chunks"] > 1:
                index["byte_offset"][1:] = np.cumsum(index["num_bytes"][:-1], dtype=np.uint64)
            index["num_symbols"] = np.minimum(
                p["chunk_size"], n - np.arange(p["num_chunks"], dtype=np.int64) * p["chunk_size"]
            )
        else:
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
        # every binary decision costs at least log2(65536 / 65504) bits
        C.check_min_bits(c, n, p["symbol_bits"] * float(np.log2(65536 / 65504)),
                         8.0 * payload.shape[0] + 40.0 * p["num_chunks"], "arith")
        return c, index, payload

    def decode(self, data, device: str = "cpu", max_output_bytes: int | None = None
               ) -> np.ndarray:
        if device != "cpu":
            raise CodecConfigError(f"arith: this decoder runs on device 'cpu', found {device!r}")
        c, index, payload = self.parse(data)
        p = c.params
        n = c.num_symbols
        nodes = (p["num_channel_contexts"] << p["prev_bits"]) << p["symbol_bits"]
        out = C.allocate_output(c, max_output_bytes,
                                4 * n + 16 * nodes * min(p["num_chunks"], 2) if n else 0)
        if n:
            idx, status = cpu.arith_decode(
                payload, np.ascontiguousarray(index["num_bytes"], np.uint32), n,
                p["chunk_size"], p["period"], p["symbol_bits"], p["num_channel_contexts"],
                p["prev_bits"], p["adapt_limit"], p.get("prob_bits", 16),
            )
            C.raise_status(status, "arith")
            if int(idx.max()) >= p["alphabet_size"]:
                raise CorruptStreamError("corrupt kvinfo stream: decoded symbol outside alphabet")
            if p["min_symbol"]:
                idx += p["min_symbol"]
            out[:] = idx
        out = out.reshape(c.shape)
        C.check_symbols(c, out)
        return out


#: old class name, deprecated (one release)
__getattr__ = deprecated_aliases(__name__, {"Arith": "ArithCodec"})
