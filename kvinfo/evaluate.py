"""Model quality with a compressed KV cache: perplexity, KL divergence, top-1 agreement.

The procedure, for a text of ``N`` tokens and a prefix of ``P`` tokens:

1. prefill the model on tokens ``[0, P)`` (one forward, ``use_cache=True``);
2. replace every layer's cached keys and values with ``decode(encode(...))`` through the
   codec (a whole layer, shape ``(kv_heads, P, head_dim)``, is one codec call);
3. score tokens ``[P, N)`` teacher-forced: the prefill's last logits predict token ``P``
   and one forward over tokens ``[P, N-1)`` on top of the cache predicts the rest.

The baseline goes through exactly the same steps without the codec, so a lossless codec
reproduces the baseline logits bit for bit. With ``block > 0`` (the serving case) the
scored tokens are fed ``block`` at a time, and after each block its fresh keys and values
are also sent through the codec before the next block attends to them.

Reported per codec: perplexity, mean KL divergence ``KL(p_baseline || p_codec)`` in nats
per scored token, top-1 agreement with the baseline, and the codec's effective
``bits_per_element`` over every element it compressed (side information included).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .codecs.spec import KINDS, KVCodecSpec
from .errors import CaptureInputError, CodecConfigError

__all__ = ["EvalInputError", "CacheCodec", "evaluate", "default_text", "QualityResult"]


class EvalInputError(CaptureInputError):
    """The text or options given to :func:`evaluate` cannot be used."""


class CacheCodec:
    """One codec for keys and values, or one per kind.

    ``spec`` is a codec config (``{"id": ...}``) used for both kinds, or
    ``{"keys": config, "values": config}``.
    """

    def __init__(self, spec: dict):
        kv = KVCodecSpec(spec, require=KINDS)
        self.spec = kv.spec
        self.codecs = kv.codecs
        self.total_bits = 0
        self.num_elements = 0
        self.bits_by_kind = {"keys": 0, "values": 0}
        self.elements_by_kind = {"keys": 0, "values": 0}

    def roundtrip(self, tensor, kind: str, layer: int | None = None, start: int = 0):
        """``decode(encode(tensor))`` for a torch tensor (batch 1), counting the bits.

        ``layer`` and ``start`` (the position of the first token) bind codecs that have the
        slab identity hook ``for_slab`` (klt; see docs/codecs.md)."""
        import torch

        x = tensor.detach()[0].cpu().contiguous()
        if x.dtype == torch.bfloat16:
            import ml_dtypes

            arr = x.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            arr = x.numpy()
        codec = self.codecs[kind]
        if layer is not None and hasattr(codec, "for_slab"):
            codec = codec.for_slab(layer, kind, None, positions=start + np.arange(arr.shape[-2]))
        data = codec.encode(arr)
        out = codec.decode(data)
        if out.shape != arr.shape or out.dtype != arr.dtype:
            raise CodecConfigError(
                f"codec {self.codecs[kind]!r} returned {out.dtype}{out.shape} "
                f"for {arr.dtype}{arr.shape}"
            )
        bits = 8 * len(data)
        self.total_bits += bits
        self.num_elements += arr.size
        self.bits_by_kind[kind] += bits
        self.elements_by_kind[kind] += arr.size
        if x.dtype == torch.bfloat16:
            back = torch.from_numpy(np.ascontiguousarray(out).view(np.int16)).view(torch.bfloat16)
        else:
            back = torch.from_numpy(np.ascontiguousarray(out))
        return back.unsqueeze(0).to(tensor.device)

    def apply(self, cache, start: int = 0) -> None:
        """Send tokens ``[start, end)`` of every layer of a transformers cache through the codec."""
        for i, layer in enumerate(_layers(cache)):
            for kind, attr in (("keys", "keys"), ("values", "values")):
                t = getattr(layer, attr)
                new = self.roundtrip(t[:, :, start:], kind, i, start)
                setattr(layer, attr, new if start == 0 else _cat(t[:, :, :start], new))

    @property
    def bits_per_element(self) -> float:
        return self.total_bits / self.num_elements if self.num_elements else float("nan")


def _cat(a, b):
    import torch

    return torch.cat([a, b], dim=2)


def _layers(cache):
    layers = getattr(cache, "layers", None)
    if layers is None or not all(hasattr(x, "keys") and hasattr(x, "values") for x in layers):
        raise EvalInputError(
            f"unsupported cache type {type(cache).__name__}: kvinfo eval needs a transformers "
            "DynamicCache with .layers[i].keys/.values (transformers >= 4.56)"
        )
    return layers


def default_text() -> str:
    """The built-in default text: the default capture prompts joined by blank lines."""
    from .dumps._prompts import default_prompts

    return "\n\n".join(default_prompts())


@dataclass
class QualityResult:
    codec: dict | None
    perplexity: float
    nll_nats_per_token: float
    kl_nats_per_token: float = 0.0
    top1_agreement: float = 1.0
    bits_per_element: float | None = None
    bits_per_element_keys: float | None = None
    bits_per_element_values: float | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {
            "codec": self.codec,
            "bits_per_element": self.bits_per_element,
            "bits_per_element_keys": self.bits_per_element_keys,
            "bits_per_element_values": self.bits_per_element_values,
            "perplexity": self.perplexity,
            "nll_nats_per_token": self.nll_nats_per_token,
            "kl": self.kl_nats_per_token,
            "top1_agreement": self.top1_agreement,
        }
        d.update(self.extra)
        if self.codec is None:
            for k in (
                "codec",
                "bits_per_element",
                "bits_per_element_keys",
                "bits_per_element_values",
            ):
                d.pop(k)
        return d


def _score(model, ids, prefix: int, block: int, cache_codec: CacheCodec | None):
    """Logits (float64, shape (N - prefix, vocab)) predicting tokens [prefix, N)."""
    import torch

    with torch.no_grad():
        out = model(ids[:, :prefix], use_cache=True)
        cache = out.past_key_values
        first = out.logits[0, -1:].double()
        if cache_codec is not None:
            cache_codec.apply(cache)
        rest = ids[:, prefix:-1]
        if rest.shape[1] == 0:
            return first
        if block <= 0:
            logits = model(rest, past_key_values=cache, use_cache=True).logits[0].double()
            return torch.cat([first, logits])
        parts = [first]
        for s in range(0, rest.shape[1], block):
            seen = cache.get_seq_length()
            parts.append(
                model(rest[:, s : s + block], past_key_values=cache, use_cache=True)
                .logits[0]
                .double()
            )
            if cache_codec is not None:
                cache_codec.apply(cache, start=seen)
        return torch.cat(parts)


def evaluate(
    model,
    tokenizer,
    codecs: Sequence[dict],
    text: str | None = None,
    *,
    prefix: int = 512,
    max_tokens: int = 1024,
    block: int = 0,
    progress: bool = False,
) -> dict:
    """Quality of ``model`` when its KV cache goes through each codec in ``codecs``.

    Parameters
    ----------
    model, tokenizer
        A loaded causal LM (eval mode) and its tokenizer.
    codecs : sequence of dict
        Codec specs (see :class:`CacheCodec`); all share one baseline run.
    text : str, optional
        Default: :func:`default_text`.
    prefix : int
        Tokens prefilled and then compressed.
    max_tokens : int
        The text is cut to this many tokens; tokens ``[prefix, max_tokens)`` are scored.
    block : int
        If > 0, also compress the scored tokens' cache ``block`` tokens at a time.

    Returns
    -------
    dict
        ``{"baseline": {...}, "results": [...], "num_scored_tokens": ..., "prefix": ...}``;
        results are in the order of ``codecs``.
    """
    import torch
    from tqdm.auto import tqdm

    if text is None:
        text = default_text()
    if prefix < 1:
        raise EvalInputError(f"--prefix must be at least 1, got {prefix}")
    if max_tokens <= prefix:
        raise EvalInputError(
            f"--max-tokens must be larger than --prefix ({prefix}) to leave tokens to score, "
            f"got {max_tokens}"
        )
    if block < 0:
        raise EvalInputError(f"--block must be 0 (off) or a positive block size, got {block}")
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :max_tokens]
    n = ids.shape[1]
    if n <= prefix:
        raise EvalInputError(
            f"the text has {n} tokens (after --max-tokens {max_tokens}), not more than the prefix "
            f"of {prefix}; give a longer text or a smaller --prefix"
        )
    specs = [dict(c) for c in codecs]
    cache_codecs = [CacheCodec(c) for c in specs]  # validate every config before any work
    targets = ids[0, prefix:]

    def stats(logits):
        logp = torch.log_softmax(logits, dim=-1)
        nll = -logp.gather(1, targets[:, None]).mean().item()
        return logp, nll

    base_logp, base_nll = stats(_score(model, ids, prefix, block, None))
    base_p = base_logp.exp()
    base_top1 = base_logp.argmax(-1)
    results = []
    for spec, cc in zip(specs, tqdm(cache_codecs, desc="eval", disable=not progress), strict=True):
        logp, nll = stats(_score(model, ids, prefix, block, cc))
        kl = (base_p * (base_logp - logp)).sum(-1).mean().item()
        be = cc.elements_by_kind
        results.append(
            QualityResult(
                codec=spec,
                perplexity=math.exp(nll),
                nll_nats_per_token=nll,
                kl_nats_per_token=max(kl, 0.0),
                top1_agreement=(logp.argmax(-1) == base_top1).double().mean().item(),
                bits_per_element=cc.bits_per_element,
                bits_per_element_keys=cc.bits_by_kind["keys"] / be["keys"] if be["keys"] else None,
                bits_per_element_values=(
                    cc.bits_by_kind["values"] / be["values"] if be["values"] else None
                ),
                extra={"perplexity_increase_pct": 100 * (math.exp(nll - base_nll) - 1)},
            ).as_dict()
        )
    baseline = QualityResult(codec=None, perplexity=math.exp(base_nll), nll_nats_per_token=base_nll)
    return {
        "baseline": baseline.as_dict(),
        "results": results,
        "num_tokens": n,
        "prefix": prefix,
        "num_scored_tokens": n - prefix,
        "block": block,
    }
