"""``xquant``: cache the quantized layer input X instead of K and V, rematerialize K and V.

Every layer's X (the normed hidden state that enters the attention projections, shape
``(T, hidden_size)``) is quantized uniformly per token, in groups of ``group_size``
consecutive channels with a float16 zero point and step each (kvinfo's ``uniform`` codec
with ``axis="token"``, whose symbols go through any kvinfo ``coder``). K and V come back as
``k_proj(X^)`` and ``v_proj(X^)`` of the model itself, then its ``k_norm`` (if any) and RoPE
at positions ``0..T-1``.

Parameters
----------
bits : int, default 4
    Bits per element of the uniform quantizer (1..8).
group_size : int, default 64
    Channels sharing one zero point and step (``None``: the whole token).
coder : dict, optional
    The entropy coder of the symbols (default: the ``uniform`` codec's).

Notes
-----
For a grouped-query model X is wider than K plus V together (SmolLM2: 576 against
2 x 3 x 64 = 384 per layer), so at equal bits per element caching X costs 1.5 times as many
bits per token as caching K and V; :mod:`kvinfo.remat.latent` caches the 384-dimensional
projection instead. Compute: ``2 * hidden_size * kv_width`` FLOPs per token and layer for the
projections, plus RoPE (:func:`kvinfo.remat.flops_per_token`).

References
----------
A. Tomar et al., "XQuant: Breaking the Memory Wall for LLM Inference with KV Cache
Rematerialization", arXiv:2508.10395, 2025.
"""

from __future__ import annotations

import numpy as np

from ..codecs import get_codec
from ..errors import CodecConfigError, CorruptStreamError
from ._base import RematCodec, check_int
from ._model import ModelAdapter, check_fingerprint, model_fingerprint
from ._stream import pack_stream, read_varint, unpack_stream, write_varint

__all__ = ["XQuantCodec", "ActivationCoder", "as_numpy", "pack_layers", "unpack_layers"]


def as_numpy(x) -> np.ndarray:
    """A numpy array of the model's dtype (bfloat16 as ml_dtypes) from torch or numpy."""
    import torch

    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            import ml_dtypes

            return x.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return x.numpy()
    return np.asarray(x)


class ActivationCoder:
    """Uniform per-token quantization of ``(T, width)`` activations, one stream per layer.

    The shared machinery of ``xquant``, ``xquant-cl`` and ``xquant-latent``: the
    ``uniform`` codec (``axis="token"``) with the given bits, group size and coder.
    """

    def __init__(self, codec_id: str, bits, group_size, coder):
        self.bits = check_int(codec_id, "bits", bits, 1, 8)
        if group_size is not None:
            group_size = check_int(codec_id, "group_size", group_size, 1, 1 << 20)
        self.group_size = group_size
        if coder is not None and not isinstance(coder, dict):
            raise CodecConfigError(f"{codec_id}: coder must be a codec config dict; found "
                                   f"{coder!r}")
        cfg = {"id": "uniform", "bits": self.bits, "axis": "token",
               "group_size": self.group_size}
        if coder is not None:
            cfg["coder"] = coder
        self.codec = get_codec(cfg)
        self.coder = self.codec.get_config()["coder"]

    def config(self) -> dict:
        return {"bits": self.bits, "group_size": self.group_size, "coder": self.coder}

    def encode(self, x: np.ndarray) -> bytes:
        return self.codec.encode(np.ascontiguousarray(x)[None])

    def decode(self, data: bytes, shape: tuple[int, int]) -> np.ndarray:
        out = self.codec.decode(data)
        if out.shape != (1, *shape):
            raise CorruptStreamError(
                f"xquant: a layer stream decodes to shape {out.shape}; expected {(1, *shape)}"
            )
        return out[0]


def pack_layers(parts: list[bytes]) -> bytes:
    out = bytearray()
    for p in parts:
        write_varint(out, len(p))
        out += p
    return bytes(out)


def unpack_layers(payload: bytes, num_layers: int, codec_id: str) -> list[bytes]:
    parts, pos = [], 0
    for _ in range(num_layers):
        n, pos = read_varint(payload, pos, len(payload))
        if pos + n > len(payload):
            raise CorruptStreamError(f"{codec_id}: a layer stream runs past the payload")
        parts.append(payload[pos:pos + n])
        pos += n
    if pos != len(payload):
        raise CorruptStreamError(f"{codec_id}: {len(payload) - pos} bytes after the last layer")
    return parts


class XQuantCodec(RematCodec):
    """Quantized X per layer; K and V rematerialized by the model's projections."""

    codec_id = "xquant"
    needs = frozenset({"inputs"})

    def __init__(self, bits: int = 4, group_size: int | None = 64, coder: dict | None = None):
        self.x = ActivationCoder(self.codec_id, bits, group_size, coder)

    def get_config(self) -> dict:
        return {"id": self.codec_id, **self.x.config()}

    def _begin(self, model, token_ids, inputs, residual):
        a = ModelAdapter(model)
        n = int(np.asarray(token_ids).reshape(-1).size)
        if n == 0:
            raise CodecConfigError(f"{self.codec_id}: no tokens to encode")
        self._check_activations(inputs, residual, a.num_layers, n, a.hidden_size)
        return a, n

    def encode(self, model, token_ids, inputs=None, residual=None) -> bytes:
        a, n = self._begin(model, token_ids, inputs, residual)
        parts = [self.x.encode(as_numpy(inputs[i])) for i in range(a.num_layers)]
        return pack_stream(self.codec_id, model_fingerprint(model), n, b"", pack_layers(parts))

    def _open(self, data, model):
        s = unpack_stream(data, self.codec_id)
        check_fingerprint(model, s.fingerprint, self.codec_id)
        a = ModelAdapter(model)
        return s, a, unpack_layers(s.payload, a.num_layers, self.codec_id)

    def rematerialize(self, data, model) -> list:
        s, a, parts = self._open(data, model)
        pos = np.arange(s.num_tokens)
        out = []
        for i, p in enumerate(parts):
            x = self.x.decode(p, (s.num_tokens, a.hidden_size))
            out.append(a.kv_from_inputs(i, x, pos))
        return out
