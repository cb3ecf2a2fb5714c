"""constriction's ANS and range coders behind the kvinfo codec interface (the reference peer).

Two codecs, ``"constriction-ans"`` (``constriction.stream.stack.AnsCoder``) and
``"constriction-range"`` (``constriction.stream.queue.RangeEncoder``), model the data
with the same quantized :class:`~kvinfo.codecs.models.PerChannelTables` that ``rans``
uses and hand the probabilities ``frequency / 2**precision_bits`` to
``constriction.stream.model.Categorical(perfect=False)``, which re-quantizes them to its
own 24-bit precision. Rates and speeds of kvinfo's coders are measured against these.

Parameters
----------
precision_bits : int, default 12
    Precision of the stored frequency table (the model side information), as in rans.
per_channel : bool, default False
    One table per channel (last axis); channels are coded one after the other.

Notes
-----
The stream is the kvinfo container with sections ``tables`` and ``payload`` (the
compressed ``uint32`` words, little-endian). constriction's bitstream is whatever
constriction 0.4/0.5 writes; only the decoded symbols are compared with kvinfo's coders.
A one-symbol alphabet gets a zero-probability dummy second symbol because
``Categorical`` needs two. Not parallel and no chunk index: a single stream.

Examples
--------
>>> import numpy as np
>>> from kvinfo.codecs import get_codec
>>> codec = get_codec({"id": "constriction-ans"})
>>> x = np.random.default_rng(0).integers(0, 16, size=(64, 128), dtype=np.uint8)
>>> bool(np.array_equal(codec.decode(codec.encode(x)), x))
True

References
----------
R. Bamler, "Understanding entropy coding with asymmetric numeral systems (ANS): a
statistician's perspective", arXiv:2201.01741, 2022 (constriction).
"""

from __future__ import annotations

import constriction
import numpy as np

from ..errors import CodecConfigError, CorruptStreamError
from . import _container as C
from ._deprecated import deprecated_aliases
from .models import PerChannelTables
from .rans import encode_tables
from .registry import register_codec

__all__ = ["ConstrictionAnsCodec", "ConstrictionRangeCodec", "categorical_models"]

_PARAM_SPEC = {
    "precision_bits": (1, 16),
    "num_tables": (0, 1 << 24),
    "period": (1, 1 << 40),
    "min_symbol": (-(1 << 31), (1 << 32) - 1),
    "alphabet_size": (0, C.MAX_ALPHABET),
}


def categorical_models(tables: PerChannelTables) -> list:
    """One ``constriction`` Categorical model per table row (probabilities ``f / 2**P``)."""
    models = []
    for row in tables.probabilities:
        p = row if row.shape[0] > 1 else np.array([1.0, 0.0])
        models.append(constriction.stream.model.Categorical(p.astype(np.float64), perfect=False))
    return models


class _ConstrictionPeer(C.ContainerCoder):
    _stack = True

    def __init__(self, precision_bits: int = 12, per_channel: bool = False):
        if type(precision_bits) is not int or not 1 <= precision_bits <= 16:
            raise CodecConfigError(
                f"{self.codec_id}: precision_bits must be an int in [1, 16], found "
                f"{precision_bits!r}"
            )
        if not isinstance(per_channel, bool):
            raise CodecConfigError(
                f"{self.codec_id}: per_channel must be a bool, found {per_channel!r}"
            )
        self.precision_bits = precision_bits
        self.per_channel = per_channel

    def get_config(self) -> dict:
        return {"id": self.codec_id, "precision_bits": self.precision_bits,
                "per_channel": self.per_channel}

    def _columns(self, flat: np.ndarray, num_tables: int, period: int):
        if num_tables == 1:
            return [flat]
        cols = flat.reshape(-1, period)
        return [cols[:, t] for t in range(num_tables)]

    def encode(self, array: np.ndarray) -> bytes:
        a, flat, period, lo, span, tables, _ = encode_tables(
            self.codec_id, array, self.precision_bits, self.per_channel
        )
        words = np.empty(0, np.uint32)
        num_tables, prec, tbytes = 0, self.precision_bits, b""
        if flat.size:
            num_tables, prec, tbytes = tables.num_tables, tables.precision_bits, tables.to_bytes()
            idx = np.subtract(flat, lo, dtype=np.int32)
            models = categorical_models(tables)
            cols = self._columns(idx, num_tables, period)
            if self._stack:
                coder = constriction.stream.stack.AnsCoder()
                for t in reversed(range(num_tables)):
                    coder.encode_reverse(np.ascontiguousarray(cols[t]), models[t])
            else:
                coder = constriction.stream.queue.RangeEncoder()
                for t in range(num_tables):
                    coder.encode(np.ascontiguousarray(cols[t]), models[t])
            words = np.asarray(coder.get_compressed(), dtype=np.uint32)
        params = {"precision_bits": prec, "num_tables": num_tables, "period": period,
                  "min_symbol": lo, "alphabet_size": span}
        return C.pack(self.get_config(), a.shape, a.dtype.name, params,
                      [("tables", tbytes), ("payload", words.astype("<u4").tobytes())],
                      C.symbols_crc32(a))

    def decode(self, data, device: str = "cpu") -> np.ndarray:
        if device != "cpu":
            raise CodecConfigError(
                f"{self.codec_id}: this decoder runs on device 'cpu', found {device!r}"
            )
        c = C.unpack(data, self.codec_id)
        p = C.require_params(c.params, _PARAM_SPEC)
        n = c.num_symbols
        if set(c.sections) != {"tables", "payload"} or p["period"] != C.channel_period(c.shape):
            raise CorruptStreamError(f"corrupt kvinfo stream: bad {self.codec_id} layout")
        if n == 0:
            out = np.empty(0, c.dtype)
        else:
            if p["alphabet_size"] < 1 or p["num_tables"] not in (1, p["period"]):
                raise CorruptStreamError("corrupt kvinfo stream: inconsistent table parameters")
            C.check_dtype_range(p, c.dtype)
            tables = PerChannelTables.from_bytes(
                c.sections["tables"], p["num_tables"], p["alphabet_size"], p["precision_bits"],
                p["min_symbol"],
            )
            words = C.section_array(c, "payload", "<u4")
            models = categorical_models(tables)
            nt = p["num_tables"]
            rows = n // p["period"] if nt > 1 else n
            idx = np.empty((rows, nt), np.int32) if nt > 1 else np.empty((n, 1), np.int32)
            try:
                if self._stack:
                    coder = constriction.stream.stack.AnsCoder(words)
                else:
                    coder = constriction.stream.queue.RangeDecoder(words)
                for t in range(nt):
                    idx[:, t] = coder.decode(models[t], idx.shape[0])
            except (ValueError, RuntimeError, AssertionError, OverflowError) as exc:
                raise CorruptStreamError(
                    f"corrupt kvinfo stream: constriction failed: {exc}"
                ) from None
            idx = idx.reshape(-1)
            if np.any(idx >= p["alphabet_size"]):
                raise CorruptStreamError("corrupt kvinfo stream: decoded symbol outside alphabet")
            out = (idx.astype(np.int64) + p["min_symbol"]).astype(c.dtype)
        out = out.reshape(c.shape)
        C.check_symbols(c, out)
        return out



@register_codec
class ConstrictionAnsCodec(_ConstrictionPeer):
    """constriction's ``AnsCoder`` (a stack) as a kvinfo codec; see the module docstring."""

    codec_id = "constriction-ans"
    _stack = True


@register_codec
class ConstrictionRangeCodec(_ConstrictionPeer):
    """constriction's range coder (a queue) as a kvinfo codec; see the module docstring."""

    codec_id = "constriction-range"
    _stack = False


#: old class names, deprecated (one release)
__getattr__ = deprecated_aliases(__name__, {"ConstrictionAns": "ConstrictionAnsCodec",
                                             "ConstrictionRange": "ConstrictionRangeCodec"})
