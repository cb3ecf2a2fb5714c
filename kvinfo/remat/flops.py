"""FLOPs per cached token to get the K/V cache back, counted from the model's shapes.

A multiply-add counts 2 FLOPs; elementwise work (dequantization, RoPE, norms) is counted
at the numbers of operations given below; softmax, embedding look-ups and Python overhead
are not counted. These are estimates of arithmetic, not of time (the time is measured by
``benchmarks/remat.py``).

* K/V codecs (``uniform``, ``klt``...): 0 model FLOPs (their decode is not a model op).
* ``xquant``, per layer: dequantize X (2 H), ``k_proj`` and ``v_proj`` (2 H W with W the
  K-plus-V width ``2 kv_heads head_dim``), RoPE on the keys (3 per key element).
* ``xquant-cl``: as ``xquant`` plus dequantize and add the difference (3 H) and the RMS
  norm (4 H).
* ``xquant-latent`` at rank ``r``: dequantize (2 r), ``U_r z + b`` (2 r W + W), RoPE.
* ``tokens``: one incremental forward per token with the language-model head (the
  sequential decode: ``2 x`` the non-embedding weights, ``2 H V`` for the head, and
  attention over the ``(T - 1) / 2`` earlier tokens on average, ``4 heads head_dim`` per
  earlier token and layer), then the prefill of the ``T`` tokens (the same without the head).
"""

from __future__ import annotations

from ..errors import CodecConfigError

__all__ = ["ModelShapes", "model_shapes", "flops_per_token", "forward_flops_per_token"]


class ModelShapes(dict):
    """``hidden_size``, ``num_layers``, ``num_heads``, ``num_kv_heads``, ``head_dim``,
    ``intermediate_size``, ``vocab_size`` of a model (a dict)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def model_shapes(model_or_config) -> ModelShapes:
    """The shapes of a Hugging Face model or config (or a dict of them)."""
    cfg = getattr(model_or_config, "config", model_or_config)
    get = cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
    h = int(get("hidden_size"))
    nh = int(get("num_attention_heads", None) or get("num_heads"))
    return ModelShapes(
        hidden_size=h,
        num_layers=int(get("num_hidden_layers", None) or get("num_layers")),
        num_heads=nh,
        num_kv_heads=int(get("num_key_value_heads", None) or get("num_kv_heads", None) or nh),
        head_dim=int(get("head_dim", None) or h // nh),
        intermediate_size=int(get("intermediate_size")),
        vocab_size=int(get("vocab_size")),
    )


def forward_flops_per_token(s: ModelShapes, context: float, head: bool) -> float:
    """FLOPs of one token's forward through every layer attending to ``context`` tokens,
    with or without the language-model head."""
    h, d = s.hidden_size, s.head_dim
    q_o = 2 * h * s.num_heads * d
    kv = 2 * h * s.num_kv_heads * d
    mlp = 3 * h * s.intermediate_size
    per_layer = 2 * (q_o + kv + mlp) + 4 * s.num_heads * d * context
    return s.num_layers * per_layer + (2 * h * s.vocab_size if head else 0)


def flops_per_token(codec: dict | None, shapes, num_tokens: int) -> float:
    """Estimated FLOPs per cached token to rematerialize a cache of ``num_tokens`` tokens.

    ``codec`` is a codec config (a K/V codec gives 0), ``shapes`` a :class:`ModelShapes`
    (or anything :func:`model_shapes` takes).

    Examples
    --------
    >>> s = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
    ...      "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152}
    >>> flops_per_token({"id": "xquant", "bits": 4}, s, 1024) / 1e6   # about 13 MFLOP
    13.32288
    """
    s = shapes if isinstance(shapes, ModelShapes) else model_shapes(shapes)
    if not isinstance(num_tokens, int) or num_tokens < 1:
        raise CodecConfigError(f"num_tokens must be a positive integer, got {num_tokens!r}")
    cid = (codec or {}).get("id") if isinstance(codec, dict) else None
    h, w = s.hidden_size, 2 * s.num_kv_heads * s.head_dim
    rope = 3 * s.num_kv_heads * s.head_dim
    if cid == "xquant":
        return float(s.num_layers * (2 * h + 2 * h * w + rope))
    if cid == "xquant-cl":
        return float(s.num_layers * (2 * h + 3 * h + 4 * h + 2 * h * w + rope))
    if cid == "xquant-latent":
        r = codec.get("rank") or min(w, h)
        return float(s.num_layers * (2 * r + 2 * r * w + w + rope))
    if cid == "tokens":
        ctx = (num_tokens - 1) / 2
        return float(forward_flops_per_token(s, ctx, True) + forward_flops_per_token(s, ctx,
                                                                                     False))
    return 0.0
