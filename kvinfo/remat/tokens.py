"""``tokens``: store only the token ids, arithmetic-coded with the model's own probabilities.

The cache is a deterministic function of the tokens, so the smallest thing to store is the
tokens themselves, coded with the model's next-token distribution: about the model's
cross-entropy on the text, a few bits per token. K and V come back by a prefill of the
decoded tokens, which is the very computation that made the original cache, so they are
bit-identical to it (KL exactly 0).

Parameters
----------
precision_bits : int, default 24
    The next-token probabilities are quantized to integer frequencies summing to
    ``2**precision_bits`` (10..30); every token keeps a frequency of at least 1.

Notes
-----
**One shared computation path.** Decoding is sequential: token ``i`` is decoded with the
probabilities given tokens ``< i``. A batched prefill and an incremental decode differ in
floating point, and the coder desynchronises on the first differing frequency, so encoder
and decoder both use :class:`NextTokenTables`: the model is run one token at a time on a
growing cache (the fixed procedure), on one CPU thread (so that no reduction order depends
on the thread count), its float32 logits are turned into float64 probabilities by numpy
(``exp(l - max) / sum``) and quantized by :func:`quantize_probabilities`. The encoder runs
the very same steps as the decoder, token by token, so they compute the same integers on
the same software and hardware. Token 0 is coded with the uniform distribution.

**Coder.** A Witten-Neal-Cleary binary arithmetic coder with 62-bit registers (exact
integer arithmetic), so a token of frequency ``f`` costs ``-log2(f / 2**precision_bits)``
bits up to a rounding of under ``2**(precision_bits - 60)`` relative; the whole payload is
within 2 bits (plus padding to a byte) of the summed ideal code length
``sum_i -log2(f_i / 2**precision_bits)``. The quantization of the probabilities costs at
most ``-log2(1 - V / 2**precision_bits)`` bits per token against the model's own
``-log2 p`` (0.004 bit for SmolLM2's 49,152-token vocabulary at 24 bits). The stream's header
and CRC add 15 to 17 bytes (:mod:`kvinfo.remat._stream`).

**Compute.** Decoding costs one incremental forward per token (with the language-model
head) plus one prefill of the decoded tokens: see :func:`kvinfo.remat.flops_per_token`.

References
----------
I. H. Witten, R. M. Neal, J. G. Cleary, "Arithmetic coding for data compression", CACM
30(6), 1987. G. Delétang et al., "Language Modeling Is Compression", ICLR 2024.
"""

from __future__ import annotations

import contextlib
import inspect

import numpy as np

from ..errors import CodecConfigError, CorruptStreamError
from ._base import RematCodec, check_int
from ._model import check_fingerprint, model_fingerprint
from ._stream import pack_stream, unpack_stream

__all__ = ["TokensCodec", "NextTokenTables", "quantize_probabilities", "ArithmeticEncoder",
           "ArithmeticDecoder"]

_PREC = 62
_FULL = 1 << _PREC
_HALF = _FULL >> 1
_QUARTER = _FULL >> 2


class ArithmeticEncoder:
    """Binary arithmetic encoder over integer frequency tables (exact integer arithmetic)."""

    def __init__(self):
        self.low, self.high, self.pending = 0, _FULL - 1, 0
        self.bits: list[int] = []

    def _emit(self, bit: int) -> None:
        self.bits.append(bit)
        if self.pending:
            self.bits.extend([1 - bit] * self.pending)
            self.pending = 0

    def encode(self, cum_low: int, freq: int, precision_bits: int) -> None:
        """Code the symbol whose interval is ``[cum_low, cum_low + freq)`` of
        ``2**precision_bits``."""
        rng = self.high - self.low + 1
        self.high = self.low + ((rng * (cum_low + freq)) >> precision_bits) - 1
        self.low = self.low + ((rng * cum_low) >> precision_bits)
        while True:
            if self.high < _HALF:
                self._emit(0)
            elif self.low >= _HALF:
                self._emit(1)
                self.low -= _HALF
                self.high -= _HALF
            elif self.low >= _QUARTER and self.high < 3 * _QUARTER:
                self.pending += 1
                self.low -= _QUARTER
                self.high -= _QUARTER
            else:
                break
            self.low <<= 1
            self.high = (self.high << 1) | 1

    def finish(self) -> bytes:
        """Flush (two bits pin the final interval) and pack the bits, zero-padded."""
        self.pending += 1
        self._emit(0 if self.low < _QUARTER else 1)
        return np.packbits(np.asarray(self.bits, dtype=np.uint8)).tobytes()


class ArithmeticDecoder:
    """The decoder of :class:`ArithmeticEncoder`; bits past the payload read as zeros."""

    def __init__(self, payload: bytes):
        self._bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8)).tolist()
        self._pos = 0
        self.low, self.high = 0, _FULL - 1
        self.value = 0
        for _ in range(_PREC):
            self.value = (self.value << 1) | self._next()

    def _next(self) -> int:
        p = self._pos
        self._pos += 1
        return self._bits[p] if p < len(self._bits) else 0

    def decode(self, cumulative: np.ndarray, precision_bits: int) -> int:
        """The symbol coded next, given the table's cumulative frequencies (length V + 1)."""
        rng = self.high - self.low + 1
        target = (((self.value - self.low + 1) << precision_bits) - 1) // rng
        s = int(np.searchsorted(cumulative, target, side="right")) - 1
        if not 0 <= s < cumulative.size - 1:
            raise CorruptStreamError("tokens: arithmetic-coded payload is damaged")
        lo, hi = int(cumulative[s]), int(cumulative[s + 1])
        self.high = self.low + ((rng * hi) >> precision_bits) - 1
        self.low = self.low + ((rng * lo) >> precision_bits)
        while True:
            if self.high < _HALF:
                pass
            elif self.low >= _HALF:
                self.low -= _HALF
                self.high -= _HALF
                self.value -= _HALF
            elif self.low >= _QUARTER and self.high < 3 * _QUARTER:
                self.low -= _QUARTER
                self.high -= _QUARTER
                self.value -= _QUARTER
            else:
                break
            self.low <<= 1
            self.high = (self.high << 1) | 1
            self.value = (self.value << 1) | self._next()
        return s


def quantize_probabilities(logits, precision_bits: int) -> np.ndarray:
    """Integer frequencies (int64, summing to ``2**precision_bits``, each >= 1) of the
    softmax of ``logits``.

    ``p = exp(l - max) / sum`` in float64; ``f = floor(p * (2**precision_bits - V)) + 1``;
    what the floors leave is given to the most probable token. Deterministic for the same
    input array (numpy on one thread).
    """
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max())
    p = z / z.sum()
    total = 1 << precision_bits
    f = np.floor(p * float(total - p.size)).astype(np.int64) + 1
    f[int(np.argmax(p))] += total - int(f.sum())
    return f


@contextlib.contextmanager
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _cache_argument(model) -> str:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


class NextTokenTables:
    """The one computation path of the next-token frequency tables (encoder and decoder).

    ``first()`` is the table of token 0 (uniform); ``after(token)`` feeds ``token`` to the
    model (one incremental step on a growing cache) and returns the table of the next
    token. Use inside ``with NextTokenTables(...) as tables`` (one CPU thread, no grad).
    """

    def __init__(self, model, vocab_size: int, precision_bits: int):
        self.model = model
        self.vocab_size = int(vocab_size)
        self.precision_bits = int(precision_bits)
        self._arg = _cache_argument(model)
        self._cache = None
        self._stack = None

    def __enter__(self):
        import torch

        self._stack = contextlib.ExitStack()
        self._stack.enter_context(_one_thread())
        self._stack.enter_context(torch.no_grad())
        return self

    def __exit__(self, *exc):
        self._stack.close()

    def first(self) -> np.ndarray:
        total = 1 << self.precision_bits
        f = np.full(self.vocab_size, total // self.vocab_size, dtype=np.int64)
        f[: total - int(f.sum())] += 1
        return f

    def after(self, token: int) -> np.ndarray:
        import torch

        from ..dumps.capture import output_cache

        kw = {} if self._cache is None else {self._arg: self._cache}
        out = self.model(torch.tensor([[int(token)]]), use_cache=True, **kw)
        self._cache = output_cache(out)
        logits = out.logits[0, -1].float().cpu().numpy()
        return quantize_probabilities(logits[: self.vocab_size], self.precision_bits)


class TokensCodec(RematCodec):
    """Token ids arithmetic-coded with the model's probabilities (see the module docs)."""

    codec_id = "tokens"

    def __init__(self, precision_bits: int = 24):
        self.precision_bits = check_int(self.codec_id, "precision_bits", precision_bits, 10, 30)

    def get_config(self) -> dict:
        return {"id": self.codec_id, "precision_bits": self.precision_bits}

    def _vocab(self, model) -> int:
        v = int(model.get_output_embeddings().weight.shape[0])
        if v > (1 << self.precision_bits) // 2:
            raise CodecConfigError(
                f"tokens: a vocabulary of {v} needs precision_bits of at least "
                f"{(2 * v - 1).bit_length()}; found {self.precision_bits}"
            )
        return v

    def encode(self, model, token_ids, inputs=None, residual=None) -> bytes:
        data, _ = self.encode_with_stats(model, token_ids)
        return data

    def encode_with_stats(self, model, token_ids) -> tuple[bytes, dict]:
        """The stream and ``{"ideal_bits": sum -log2(f/2**P), "num_tokens": T}``."""
        ids = np.asarray(token_ids).reshape(-1)
        if ids.size == 0:
            raise CodecConfigError("tokens: no token ids to encode")
        if not np.issubdtype(ids.dtype, np.integer):
            raise CodecConfigError(f"tokens: token ids must be integers, got {ids.dtype}")
        v = self._vocab(model)
        if ids.min() < 0 or ids.max() >= v:
            raise CodecConfigError(
                f"tokens: token ids must be in 0..{v - 1} (the model's vocabulary); found "
                f"{int(ids.min())}..{int(ids.max())}"
            )
        P = self.precision_bits
        enc = ArithmeticEncoder()
        ideal = 0.0
        with NextTokenTables(model, v, P) as tables:
            f = tables.first()
            for i, t in enumerate(ids.tolist()):
                cum_low = int(f[:t].sum())
                ideal += P - np.log2(float(f[t]))
                enc.encode(cum_low, int(f[t]), P)
                if i + 1 < ids.size:
                    f = tables.after(t)
        payload = enc.finish()
        data = pack_stream(self.codec_id, model_fingerprint(model), ids.size, bytes([P]),
                           payload)
        return data, {"ideal_bits": ideal, "num_tokens": int(ids.size),
                      "payload_bits": 8 * len(payload), "stream_bits": 8 * len(data)}

    def decode_tokens(self, data, model) -> np.ndarray:
        """The token ids (int64) of a stream, decoded with ``model``."""
        s = unpack_stream(data, self.codec_id)
        check_fingerprint(model, s.fingerprint, self.codec_id)
        if len(s.params) != 1 or s.params[0] != self.precision_bits:
            raise CorruptStreamError(
                f"tokens: stream parameters {s.params.hex()} do not match precision_bits="
                f"{self.precision_bits}"
            )
        v = self._vocab(model)
        P = self.precision_bits
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 20)
        if s.num_tokens > limit:
            raise CorruptStreamError(
                f"tokens: the stream claims {s.num_tokens} tokens, more than the model's "
                f"{limit} positions"
            )
        dec = ArithmeticDecoder(s.payload)
        out = np.empty(s.num_tokens, dtype=np.int64)
        with NextTokenTables(model, v, P) as tables:
            f = tables.first()
            for i in range(s.num_tokens):
                cum = np.zeros(v + 1, dtype=np.int64)
                np.cumsum(f, out=cum[1:])
                out[i] = dec.decode(cum, P)
                if i + 1 < s.num_tokens:
                    f = tables.after(int(out[i]))
        return out

    def rematerialize(self, data, model) -> list:
        """Decode the tokens, then prefill them: the model's own cache, per layer."""
        import torch

        from ..dumps.capture import output_cache

        ids = self.decode_tokens(data, model)
        with torch.no_grad():
            out = model(torch.from_numpy(ids)[None], use_cache=True)
        cache = output_cache(out)
        return [(layer.keys, layer.values) for layer in cache.layers]
