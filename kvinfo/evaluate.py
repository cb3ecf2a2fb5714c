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
per scored token (``kl_nats_per_token``), top-1 agreement with the baseline (a fraction), and
the codec's effective ``bits_per_element`` over every element it compressed (side
information included).

:func:`evaluate` is the engine of ``kvinfo eval`` (and of ``kvinfo bench --eval``): it
validates its inputs once (:func:`check_eval_options`, :func:`eval_codec_specs`; errors name
its own parameters, and the command line maps them to its flags) and returns an
:class:`EvalResult`, which builds the results document (:meth:`EvalResult.to_results`) and
the quality records (:meth:`EvalResult.records`, the one place they are built).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import remat as _remat
from .codecs.spec import KINDS, KVCodecSpec
from .errors import CodecConfigError, EvalInputError

__all__ = [
    "EvalInputError",
    "CacheCodec",
    "evaluate",
    "check_eval_options",
    "eval_codec_specs",
    "default_text",
    "QualityResult",
    "QualityDict",
    "EvalResult",
]


def check_eval_options(prefix: int, max_tokens: int, block: int = 0) -> None:
    """Refuse sizes that cannot work (:class:`EvalInputError`), before any model is loaded."""
    for name, v in (("prefix", prefix), ("max_tokens", max_tokens), ("block", block)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise EvalInputError.about("{" + name + "} must be an integer, got {got!r}", got=v)
    if prefix < 1:
        raise EvalInputError.about("{prefix} must be at least 1, got {got}", got=prefix)
    if max_tokens <= prefix:
        raise EvalInputError.about(
            "{max_tokens} must be larger than {prefix} ({p}) to leave tokens to score, "
            "got {got}", p=prefix, got=max_tokens
        )
    if block < 0:
        raise EvalInputError.about(
            "{block} must be 0 (off) or a positive block size, got {got}", got=block
        )


def eval_codec_specs(codecs: Sequence[dict | KVCodecSpec]) -> list[KVCodecSpec]:
    """Validated specs (a codec for keys and values each) of ``codecs``, in order.

    Raises :class:`~kvinfo.errors.CodecConfigError` (or a subclass) for a spec that is not a
    KV codec or leaves a kind without one. A :class:`~kvinfo.codecs.spec.KVCodecSpec` is
    passed on as it is, once checked to cover both kinds.
    """
    if isinstance(codecs, dict | str | KVCodecSpec):
        raise CodecConfigError("codecs must be a sequence of codec specs, not one spec")
    out = []
    for c in codecs:
        # -- remat hook (issue 17): rematerializing codecs are validated by kvinfo.remat --
        if _remat.is_remat_spec(c):
            _remat.get_remat_codec(c)
            out.append(c)
            continue
        # -- end remat hook --
        if isinstance(c, KVCodecSpec):
            missing = [k for k in KINDS if k not in c.codecs]
            if missing:
                KVCodecSpec(c.spec, require=KINDS)  # raises the usual message
            out.append(c)
        else:
            out.append(KVCodecSpec(c, require=KINDS))
    return out


class CacheCodec:
    """One codec for keys and values, or one per kind.

    ``spec`` is a codec config (``{"id": ...}``) used for both kinds, or
    ``{"keys": config, "values": config}``, or a validated
    :class:`~kvinfo.codecs.spec.KVCodecSpec`.
    """

    def __init__(self, spec: dict | KVCodecSpec):
        (kv,) = eval_codec_specs([spec])
        self.spec = kv.spec
        self.codecs = kv.codecs
        self.total_bits = 0
        self.num_elements = 0
        self.bits_by_kind = {"keys": 0, "values": 0}
        self.elements_by_kind = {"keys": 0, "values": 0}
        self.num_tokens = 0  # cached tokens compressed (bits_per_token, issue 17)

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
            if i == 0:
                self.num_tokens += int(layer.keys.shape[2]) - start
            for kind, attr in (("keys", "keys"), ("values", "values")):
                t = getattr(layer, attr)
                new = self.roundtrip(t[:, :, start:], kind, i, start)
                setattr(layer, attr, new if start == 0 else _cat(t[:, :, :start], new))

    @property
    def bits_per_element(self) -> float:
        return self.total_bits / self.num_elements if self.num_elements else float("nan")

    @property
    def bits_per_token(self) -> float:
        """Stored bits per cached token, all layers and both kinds (side information
        included)."""
        return self.total_bits / self.num_tokens if self.num_tokens else float("nan")


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
    from .dumps import default_prompts

    return "\n\n".join(default_prompts())


def _deprecated_kl(stacklevel: int = 3) -> None:
    warnings.warn(
        "'kl' is deprecated (results schema 2): use 'kl_nats_per_token'",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


class QualityDict(dict):
    """A quality dict in which the version-1 name ``kl`` still reads (deprecated).

    ``d["kl"]`` and ``d.get("kl")`` return ``d["kl_nats_per_token"]`` with a
    :class:`DeprecationWarning`; the alias is not stored, so JSON output has the new name only.
    """

    def __missing__(self, key):
        if key == "kl" and "kl_nats_per_token" in self:
            _deprecated_kl()
            return self["kl_nats_per_token"]
        raise KeyError(key)

    def get(self, key, default=None):
        if key == "kl" and "kl" not in self and "kl_nats_per_token" in self:
            _deprecated_kl()
            return self["kl_nats_per_token"]
        return super().get(key, default)


@dataclass
class QualityResult:
    """The quality of the model with one codec on its cache (or of the baseline).

    Attributes
    ----------
    codec : dict or None
        The codec spec as given (None for the uncompressed baseline).
    perplexity : float
        ``exp(nll_nats_per_token)`` over the scored tokens.
    nll_nats_per_token : float
        Mean negative log-likelihood of the scored tokens.
    kl_nats_per_token : float
        Mean ``KL(p_baseline || p_codec)`` of the next-token distributions (0 for the baseline).
    top1_agreement : float
        Fraction of scored positions whose most likely token is the baseline's.
    bits_per_element, bits_per_element_keys, bits_per_element_values : float or None
        The compressed cache's rate, side information included (None for the baseline;
        the per-kind rates are None for a codec that codes both kinds in one stream).
    bits_per_token : float or None
        The stored bits per cached token, all layers (None for the baseline).
    extra : dict
        Further metrics (``perplexity_increase_pct``).
    """

    codec: dict | None
    perplexity: float
    nll_nats_per_token: float
    kl_nats_per_token: float = 0.0
    top1_agreement: float = 1.0
    bits_per_element: float | None = None
    bits_per_element_keys: float | None = None
    bits_per_element_values: float | None = None
    bits_per_token: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def kl(self) -> float:
        """Deprecated alias of :attr:`kl_nats_per_token` (results schema 1 name)."""
        _deprecated_kl()
        return self.kl_nats_per_token

    def as_dict(self) -> QualityDict:
        """``codec`` (not for the baseline) and :meth:`metrics`."""
        d = QualityDict() if self.codec is None else QualityDict(codec=self.codec)
        d.update(self.metrics())
        return d

    def metrics(self) -> dict:
        """The metrics of this result, named as results files name them."""
        d = {
            "bits_per_element": self.bits_per_element,
            "bits_per_element_keys": self.bits_per_element_keys,
            "bits_per_element_values": self.bits_per_element_values,
            "bits_per_token": self.bits_per_token,
            "perplexity": self.perplexity,
            "nll_nats_per_token": self.nll_nats_per_token,
            "kl_nats_per_token": self.kl_nats_per_token,
            "top1_agreement": self.top1_agreement,
        }
        if self.codec is None:
            for k in ("bits_per_element", "bits_per_element_keys", "bits_per_element_values",
                      "bits_per_token"):
                d.pop(k)
        d.update(self.extra)
        return d


_SUMMARY = ("num_tokens", "prefix", "num_scored_tokens", "block", "model")


@dataclass
class EvalResult:
    """What :func:`evaluate` measured: one shared baseline and one result per codec.

    Attributes
    ----------
    baseline : QualityResult
        The uncompressed model.
    results : list of QualityResult
        One per codec, in the order given.
    num_tokens, prefix, max_tokens, num_scored_tokens, block : int
        The text's length after ``max_tokens``, and the options of the run.
    model : str or None
        The model's name, recorded in results files (set it after loading the model).
    """

    baseline: QualityResult
    results: list[QualityResult]
    num_tokens: int
    prefix: int
    max_tokens: int
    num_scored_tokens: int
    block: int = 0
    model: str | None = None

    def as_dict(self) -> dict:
        """``{"baseline", "results", "num_tokens", "prefix", "num_scored_tokens", "block"}``
        (and ``"model"`` when known): what ``kvinfo eval --json`` prints."""
        d = {
            "baseline": self.baseline.as_dict(),
            "results": [r.as_dict() for r in self.results],
            "num_tokens": self.num_tokens,
            "prefix": self.prefix,
            "num_scored_tokens": self.num_scored_tokens,
            "block": self.block,
        }
        if self.model is not None:
            d["model"] = self.model
        return d

    def records(self) -> list[dict]:
        """The quality records (``scope: "run"``) of a results document.

        One ``codec: null`` record for the baseline (``quality_baseline: true``), then one per
        codec (its normalised config) with :meth:`QualityResult.metrics` plus
        ``baseline_perplexity``. ``kvinfo eval -o`` and ``kvinfo bench --eval`` both write
        these records, so the same codec joins into one row in ``kvinfo report``.
        """
        from .results import make_record

        base = self.baseline.metrics()
        out = [make_record("run", {**base, "quality_baseline": True})]
        for r in self.results:
            m = {**r.metrics(), "baseline_perplexity": base["perplexity"]}
            out.append(make_record("run", m, codec=r.codec))
        return out

    def settings(self) -> dict:
        """``num_tokens``, ``prefix``, ``num_scored_tokens``, ``block`` and ``model``."""
        return {k: getattr(self, k) for k in _SUMMARY}

    def to_results(self, *, source: dict | None = None, settings: dict | None = None,
                   command: list[str] | None = None) -> dict:
        """The ``tool: "eval"`` results document (``docs/results-schema.md``).

        ``source`` (e.g. the text's file) and ``settings`` (e.g. the model's dtype) are added
        to what the result knows: the model, ``num_tokens``, ``prefix``, ``max_tokens``,
        ``block`` and the normalised ``codecs``.
        """
        from .results import new_results, normalize_codec

        src = {"model": self.model, "text": "built-in", "num_tokens": self.num_tokens}
        src.update(source or {})
        sets = {
            "prefix": self.prefix,
            "max_tokens": self.max_tokens,
            "block": self.block,
            "codecs": [normalize_codec(r.codec) for r in self.results],
        }
        sets.update(settings or {})
        doc = new_results("eval", source=src, settings=sets, command=command)
        doc["records"] = self.records()
        return doc

    def add_to(self, doc: dict) -> dict:
        """Append :meth:`records` to a ``bench`` document and set its ``settings["eval"]``."""
        doc["records"].extend(self.records())
        doc["settings"]["eval"] = self.settings()
        return doc

    # -- the dict that evaluate() returned before 0.2 (deprecated) ---------------------------

    def __getitem__(self, key: str):
        warnings.warn(
            "evaluate() returns an EvalResult: use its attributes (.baseline, .results, ...) "
            "or .as_dict() instead of indexing it",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.as_dict()[key]

    def get(self, key: str, default=None):
        """Deprecated, as indexing: ``as_dict().get(key, default)``."""
        warnings.warn(
            "evaluate() returns an EvalResult: use its attributes or .as_dict()",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.as_dict().get(key, default)

    def __setitem__(self, key: str, value) -> None:
        if key != "model":
            raise KeyError(key)
        warnings.warn("set EvalResult.model instead of result['model']", DeprecationWarning,
                      stacklevel=2)
        self.model = value


def _cache_argument(model) -> str:
    """The forward's name of the KV-cache argument: ``cache`` since transformers 5 (which
    deprecates ``past_key_values``), ``past_key_values`` before."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - not a python callable
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _score(model, ids, prefix: int, block: int, cache_codec: CacheCodec | None):
    """Logits (float64, shape (N - prefix, vocab)) predicting tokens [prefix, N)."""
    import torch

    from .dumps.capture import output_cache

    arg = _cache_argument(model)
    # -- remat hook (issue 17): a rematerializing codec watches the prefill --
    watch = getattr(cache_codec, "watch", None)
    watching = watch(model, ids[:, :prefix]) if watch else contextlib.nullcontext()
    # -- end remat hook --
    with torch.no_grad(), watching:
        out = model(ids[:, :prefix], use_cache=True)
        cache = output_cache(out)
        first = out.logits[0, -1:].double()
        if cache_codec is not None:
            cache_codec.apply(cache)
        rest = ids[:, prefix:-1]
        if rest.shape[1] == 0:
            return first
        if block <= 0:
            logits = model(rest, use_cache=True, **{arg: cache}).logits[0].double()
            return torch.cat([first, logits])
        parts = [first]
        for s in range(0, rest.shape[1], block):
            seen = cache.get_seq_length()
            parts.append(
                model(rest[:, s : s + block], use_cache=True, **{arg: cache}).logits[0].double()
            )
            if cache_codec is not None:
                cache_codec.apply(cache, start=seen)
        return torch.cat(parts)


def evaluate(
    model,
    tokenizer,
    codecs: Sequence[dict | KVCodecSpec],
    text: str | None = None,
    *,
    prefix: int = 512,
    max_tokens: int = 1024,
    block: int = 0,
    progress: bool = False,
) -> EvalResult:
    """Quality of ``model`` when its KV cache goes through each codec in ``codecs``.

    Parameters
    ----------
    model, tokenizer
        A loaded causal LM (eval mode) and its tokenizer.
    codecs : sequence of dict or KVCodecSpec
        Codec specs (see :class:`CacheCodec`); all share one baseline run.
    text : str, optional
        Default: :func:`default_text`.
    prefix : int
        Tokens prefilled and then compressed.
    max_tokens : int
        The text is cut to this many tokens; tokens ``[prefix, max_tokens)`` are scored.
    block : int
        If > 0, also compress the scored tokens' cache ``block`` tokens at a time.
    progress : bool
        Show a progress bar over the codecs.

    Returns
    -------
    EvalResult
        The baseline and one :class:`QualityResult` per codec, in the order of ``codecs``;
        :meth:`EvalResult.to_results` makes the results document.

    Raises
    ------
    EvalInputError
        Options that cannot work, or a text not longer than ``prefix`` tokens (checked
        before the model runs); the message names these parameters.
    kvinfo.errors.CodecConfigError
        A spec that is not a KV codec for keys and values (checked before the model runs).
    """
    import torch
    from tqdm.auto import tqdm

    check_eval_options(prefix, max_tokens, block)
    specs = eval_codec_specs(codecs)
    if text is None:
        text = default_text()
    if not isinstance(text, str):
        raise EvalInputError.about("{text} must be a string, got {t}", t=type(text).__name__)
    # -- remat hook (issue 17) --
    cache_codecs = [_remat.RematCacheCodec(s, block) if _remat.is_remat_spec(s) else CacheCodec(s)
                    for s in specs]
    # -- end remat hook --
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :max_tokens]
    n = ids.shape[1]
    if n <= prefix:
        raise EvalInputError.about(
            "the text has {n} tokens (after {max_tokens} {mt}), not more than the prefix of "
            "{p}; give a longer text or a smaller {prefix}", n=n, mt=max_tokens, p=prefix
        )
    targets = ids[0, prefix:]

    def stats(logits):
        logp = torch.log_softmax(logits, dim=-1)
        nll = -logp.gather(1, targets[:, None]).mean().item()
        return logp, nll

    base_logp, base_nll = stats(_score(model, ids, prefix, block, None))
    base_p = base_logp.exp()
    base_top1 = base_logp.argmax(-1)
    results = []
    for cc in tqdm(cache_codecs, desc="eval", disable=not progress):
        logp, nll = stats(_score(model, ids, prefix, block, cc))
        kl = (base_p * (base_logp - logp)).sum(-1).mean().item()
        be = cc.elements_by_kind
        results.append(
            QualityResult(
                codec=cc.spec,
                perplexity=math.exp(nll),
                nll_nats_per_token=nll,
                kl_nats_per_token=max(kl, 0.0),
                top1_agreement=(logp.argmax(-1) == base_top1).double().mean().item(),
                bits_per_element=cc.bits_per_element,
                bits_per_token=cc.bits_per_token,
                bits_per_element_keys=cc.bits_by_kind["keys"] / be["keys"] if be["keys"] else None,
                bits_per_element_values=(
                    cc.bits_by_kind["values"] / be["values"] if be["values"] else None
                ),
                extra={"perplexity_increase_pct": 100 * (math.exp(nll - base_nll) - 1),
                       **(cc.extra() if hasattr(cc, "extra") else {})},  # remat hook
            )
        )
    baseline = QualityResult(codec=None, perplexity=math.exp(base_nll), nll_nats_per_token=base_nll)
    return EvalResult(
        baseline=baseline,
        results=results,
        num_tokens=n,
        prefix=prefix,
        max_tokens=max_tokens,
        num_scored_tokens=n - prefix,
        block=block,
    )
