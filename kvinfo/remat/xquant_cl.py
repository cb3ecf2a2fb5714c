"""``xquant-cl``: closed-loop coding of the residual stream's cross-layer differences.

All layers read one residual stream ``r_l`` (the input of layer ``l``, before its norm), and
consecutive layers change it little. The codec codes ``d_0 = r_0`` and, for ``l >= 1``,
``d_l = r_l - r^_{l-1}``: the difference from the *reconstruction* of the previous layer
(closed loop), so ``r^_l = r^_{l-1} + Q(d_l)`` has exactly the error of ``Q(d_l)`` and
errors do not accumulate over the layers. ``Q`` is the per-token uniform quantizer of
``xquant``; K and V come back from ``X^_l = input_layernorm_l(r^_l)`` through the model's
projections and RoPE. The decoder runs the same float64 recursion as the encoder.

Parameters
----------
bits : int, default 4
group_size : int, default 64
coder : dict, optional
    As for :mod:`kvinfo.remat.xquant`.

Notes
-----
Compute per token and layer: the norm (about ``4 * hidden_size`` FLOPs), one addition and
the projections and RoPE of ``xquant``.

References
----------
A. Tomar et al., "XQuant", arXiv:2508.10395, 2025 (XQuant-CL, cross-layer deltas).
"""

from __future__ import annotations

import numpy as np

from ._model import model_fingerprint
from ._stream import pack_stream
from .xquant import XQuantCodec, as_numpy, pack_layers

__all__ = ["XQuantCLCodec"]


class XQuantCLCodec(XQuantCodec):
    """Closed-loop cross-layer differences of the residual stream, uniformly quantized."""

    codec_id = "xquant-cl"
    needs = frozenset({"residual"})

    def encode(self, model, token_ids, inputs=None, residual=None) -> bytes:
        a, n = self._begin(model, token_ids, inputs, residual)
        prev = np.zeros((n, a.hidden_size))
        parts = []
        for i in range(a.num_layers):
            r = as_numpy(residual[i]).astype(np.float64)
            d = (r - prev).astype(np.float32)
            p = self.x.encode(d)
            parts.append(p)
            prev = prev + self.x.decode(p, d.shape).astype(np.float64)
        return pack_stream(self.codec_id, model_fingerprint(model), n, b"", pack_layers(parts))

    def rematerialize(self, data, model) -> list:
        import torch

        s, a, parts = self._open(data, model)
        pos = np.arange(s.num_tokens)
        prev = np.zeros((s.num_tokens, a.hidden_size))
        out = []
        for i, p in enumerate(parts):
            prev = prev + self.x.decode(p, (s.num_tokens, a.hidden_size)).astype(np.float64)
            with torch.no_grad():
                x = a.norm(i, a.as_torch(prev.astype(np.float32)))
            out.append(a.kv_from_inputs(i, x, pos))
        return out
