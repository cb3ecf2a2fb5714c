"""``xquant-latent``: cache a low-rank latent of X for grouped-query attention.

K (before RoPE) and V of a layer are ``W X + b`` with the stacked ``W = [W_k; W_v]`` of shape
``(kv_width, hidden_size)``: X is wider than what the layer reads of it (SmolLM2: 576 against
384). With the SVD ``W = U S V^T`` the codec caches, per token, the latent
``z = U_r^T W X`` (the first ``rank`` coordinates of ``[K_pre; V]`` in the basis ``U``),
quantized per token as ``xquant`` quantizes X, and rematerializes ``[K_pre; V] = U_r z^ + b``
then ``k_norm`` (if any) and RoPE. Since ``U`` is orthonormal, the squared error on
``[K_pre; V]`` is that of ``z`` plus the energy of the dropped coordinates; at
``rank = kv_width`` nothing is dropped. The basis is computed from the model's weights (numpy
SVD, float64) by encoder and decoder alike and is not stored.

Parameters
----------
bits : int, default 4
group_size : int, default 64
coder : dict, optional
    As for :mod:`kvinfo.remat.xquant`.
rank : int, optional
    Latent width (default: ``min(kv_width, hidden_size)``, lossless before quantization).

Notes
-----
Compute per token and layer: ``2 * rank * kv_width`` FLOPs (``U_r z``) plus RoPE.

References
----------
A. Tomar et al., "XQuant", arXiv:2508.10395, 2025 (the low-rank variant for GQA models).
"""

from __future__ import annotations

import weakref

import numpy as np

from ..errors import CodecConfigError
from ._base import check_int
from ._model import ModelAdapter, model_fingerprint
from ._stream import pack_stream, write_varint
from .xquant import XQuantCodec, as_numpy, pack_layers

__all__ = ["XQuantLatentCodec", "kv_basis"]

_BASES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def kv_basis(model, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(W, b, U, s)`` of one layer: ``[W_k; W_v]``, its bias, the left singular vectors
    (columns, by decreasing singular value) and the singular values (float64)."""
    per_model = _BASES.setdefault(model, {})
    if layer not in per_model:
        w, b = ModelAdapter(model).stacked_kv_weight(layer)
        u, s, _ = np.linalg.svd(w, full_matrices=False)
        per_model[layer] = (w, b, u, s)
    return per_model[layer]


class XQuantLatentCodec(XQuantCodec):
    """Per-token quantized SVD latent of ``[K_pre; V]``; K, V by ``U_r z + b`` and RoPE."""

    codec_id = "xquant-latent"
    needs = frozenset({"inputs"})

    def __init__(self, bits: int = 4, group_size: int | None = 64, coder: dict | None = None,
                 rank: int | None = None):
        super().__init__(bits, group_size, coder)
        self.rank = None if rank is None else check_int(self.codec_id, "rank", rank, 1, 1 << 20)

    def get_config(self) -> dict:
        return {**super().get_config(), "rank": self.rank}

    def _rank(self, a: ModelAdapter) -> int:
        full = min(a.kv_width, a.hidden_size)
        if self.rank is not None and self.rank > full:
            raise CodecConfigError(
                f"{self.codec_id}: rank {self.rank} exceeds min(kv_width, hidden_size) = {full}"
            )
        return self.rank or full

    def encode(self, model, token_ids, inputs=None, residual=None) -> bytes:
        a, n = self._begin(model, token_ids, inputs, residual)
        r = self._rank(a)
        parts = []
        for i in range(a.num_layers):
            w, _, u, _ = kv_basis(model, i)
            x = as_numpy(inputs[i]).astype(np.float64)
            z = (x @ w.T) @ u[:, :r]
            parts.append(self.x.encode(z.astype(np.float32)))
        params = bytearray()
        write_varint(params, r)
        return pack_stream(self.codec_id, model_fingerprint(model), n, bytes(params),
                           pack_layers(parts))

    def rematerialize(self, data, model) -> list:
        from ..errors import CorruptStreamError
        from ._stream import read_varint

        s, a, parts = self._open(data, model)
        r, _ = read_varint(s.params, 0, len(s.params))
        if r != self._rank(a):
            raise CorruptStreamError(f"{self.codec_id}: stream rank {r}, codec rank "
                                     f"{self._rank(a)}")
        pos = np.arange(s.num_tokens)
        half = a.kv_width // 2
        out = []
        for i, p in enumerate(parts):
            _, b, u, _ = kv_basis(model, i)
            z = self.x.decode(p, (s.num_tokens, r)).astype(np.float64)
            kv = z @ u[:, :r].T + b
            k = a.as_torch(kv[:, :half].astype(np.float32))
            v = a.as_torch(kv[:, half:].astype(np.float32))
            k = a.heads(k[None], s.num_tokens)
            v = a.heads(v[None], s.num_tokens)
            import torch

            with torch.no_grad():
                out.append((a.finish_keys(i, k, pos), v))
        return out
