"""The model side of rematerialization: K and V from X with the model's own weights.

:class:`ModelAdapter` wraps a loaded Llama-style Hugging Face causal LM (attention modules
with ``k_proj``/``v_proj``, optional ``k_norm``, a rotary embedding on the backbone and the
architecture's ``apply_rotary_pos_emb``). It computes K and V from a layer input X exactly
as the model's attention does (same modules, same dtype), so K and V recomputed from the
true X equal the model's cache bit for bit (tested).
"""

from __future__ import annotations

import sys
import weakref

import numpy as np

from ..dumps.capture import decoder_layers, weights_checksum
from ..errors import CodecConfigError, ModelMismatchError

__all__ = ["ModelAdapter", "model_fingerprint", "FINGERPRINT_BYTES"]

#: bytes of the weights' SHA-256 a stream records (a check against accidental mismatch)
FINGERPRINT_BYTES = 4

_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_fingerprint(model) -> bytes:
    """The first :data:`FINGERPRINT_BYTES` bytes of the SHA-256 of the model's weights
    (:func:`kvinfo.dumps.capture.weights_checksum`), computed once per model object."""
    fp = _FINGERPRINTS.get(model)
    if fp is None:
        digest = weights_checksum(model).split(":", 1)[1]
        fp = _FINGERPRINTS[model] = bytes.fromhex(digest)[:FINGERPRINT_BYTES]
    return fp


def check_fingerprint(model, recorded: bytes, codec_id: str) -> None:
    """Refuse (:class:`ModelMismatchError`) a model whose weights are not the stream's."""
    found = model_fingerprint(model)
    if found != recorded:
        raise ModelMismatchError(
            f"{codec_id}: the stream was made with model weights {recorded.hex()} (first "
            f"{FINGERPRINT_BYTES} bytes of their SHA-256); the model given has {found.hex()}. "
            "Decode it with the model that encoded it"
        )


class ModelAdapter:
    """K and V of every layer from X, with the model's projections, norms and RoPE.

    Parameters
    ----------
    model
        A loaded Llama-style causal LM in eval mode.
    """

    def __init__(self, model):
        self.model = model
        self.layers = decoder_layers(model)
        cfg = model.config
        self.num_layers = len(self.layers)
        self.hidden_size = int(cfg.hidden_size)
        self.num_heads = int(cfg.num_attention_heads)
        self.num_kv_heads = int(getattr(cfg, "num_key_value_heads", None) or self.num_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or self.hidden_size // self.num_heads)
        self.vocab_size = int(cfg.vocab_size)
        self.dtype = next(model.parameters()).dtype
        backbone = getattr(model, "model", model)
        self.rotary = getattr(backbone, "rotary_emb", None)
        attn = self.layers[0][1]
        self._rope = getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb", None)
        if self.rotary is None or self._rope is None:
            raise CodecConfigError(
                f"{type(model).__name__}: rematerialization needs a rotary embedding "
                "(model.model.rotary_emb) and apply_rotary_pos_emb (Llama-style models)"
            )

    @property
    def kv_width(self) -> int:
        """Width of K plus V of one layer (``2 * num_kv_heads * head_dim``)."""
        return 2 * self.num_kv_heads * self.head_dim

    def norm(self, layer: int, residual):
        """The layer's input norm applied to its residual stream (torch, model dtype)."""
        return self.layers[layer][0].input_layernorm(residual)

    def heads(self, t, n_tokens):
        """``(1, T, heads*head_dim)`` as ``(1, heads, T, head_dim)``."""
        return t.view(1, n_tokens, -1, self.head_dim).transpose(1, 2)

    def finish_keys(self, layer: int, k_pre, positions):
        """Apply the attention's ``k_norm`` (if any) and RoPE to pre-RoPE keys
        ``(1, kv_heads, T, head_dim)``."""
        import torch

        attn = self.layers[layer][1]
        if hasattr(attn, "k_norm"):
            k_pre = attn.k_norm(k_pre)
        pos = torch.as_tensor(positions, dtype=torch.long).reshape(1, -1)
        cos, sin = self.rotary(k_pre, pos)
        _, k = self._rope(k_pre, k_pre, cos, sin)
        return k

    def kv_from_inputs(self, layer: int, x, positions):
        """``(K, V)``, each ``(1, kv_heads, T, head_dim)`` in the model dtype, from X of
        shape ``(T, hidden_size)`` (torch or numpy) at token ``positions``."""
        import torch

        attn = self.layers[layer][1]
        x = self.as_torch(x)
        n = x.shape[0]
        with torch.no_grad():
            k = self.heads(attn.k_proj(x[None]), n)
            v = self.heads(attn.v_proj(x[None]), n)
            return self.finish_keys(layer, k, positions), v

    def as_torch(self, x):
        """A torch tensor of the model dtype from a numpy or torch array."""
        import torch

        if isinstance(x, torch.Tensor):
            return x.to(self.dtype)
        x = np.ascontiguousarray(x)
        if x.dtype.name == "bfloat16":
            return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16).to(self.dtype)
        return torch.from_numpy(x.astype(np.float32, copy=False)).to(self.dtype)

    def stacked_kv_weight(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """``(W, b)``: the stacked ``[W_k; W_v]`` of shape ``(kv_width, hidden_size)`` and
        its bias (zeros without one), float64."""
        attn = self.layers[layer][1]
        ws, bs = [], []
        for proj in (attn.k_proj, attn.v_proj):
            w = proj.weight.detach().float().cpu().numpy().astype(np.float64)
            ws.append(w)
            b = getattr(proj, "bias", None)
            bs.append(np.zeros(w.shape[0]) if b is None else
                      b.detach().float().cpu().numpy().astype(np.float64))
        return np.concatenate(ws), np.concatenate(bs)
