"""Measured-perturbation sensitivity: the KL each (layer, kind) group costs at each setting.

The diagonal Fisher (:mod:`kvinfo.allocation.sensitivity`) is a second-order estimate: it
ranks slabs at small distortion but under-predicts, by up to an order of magnitude, the KL
of the coarse settings a solver picks at low budgets (docs/benchmarks.md). This module
measures the cost itself: for every (layer, kind) group and every setting of a codec family,
that group's cached keys (or values), all heads, go through the real codec, every other
group stays exact, and the mean next-token KL divergence from the unperturbed model is
measured on calibration text.

**Protocol** (that of ``kvinfo eval``): each sequence is split into a prefix of ``P`` tokens,
prefilled and cached, and the last ``S`` scored tokens, run teacher-forced on top of that
cache. Only the prefix cache is coded.

**Replay.** Coding layer ``l``'s prefix cache changes nothing below layer ``l`` for the
scored tokens: their hidden states at the input of layers ``0..l`` are those of the
unperturbed run. The baseline run stores them (the input of every decoder layer, with the
layer's call arguments: mask, rotary embeddings, positions), and each perturbation replays
only layers ``l..L-1``, the final norm and the LM head, over the ``S`` scored tokens, the
settings of one group batched together. The replay of the unperturbed cache must give the
baseline logits: its largest deviation is measured and stored
(``replay_max_abs_logit_deviation``; ``tests/allocation/test_perturb.py`` checks it).

**Cost model.** A plan's cost is ``sum over groups of KL_g(setting_g)``: the additivity
assumption, checked by :func:`measure_assignment_kl` (the KL of a whole assignment, all
groups coded at once, full forward of the scored tokens) against that sum.

All KL values are **measurements** in nats per scored token on the calibration text.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np

from .._paths import atomic_write, check_output_file
from .._version import __version__
from ..codecs.spec import KINDS
from ..errors import AllocationError, CodecConfigError
from .families import Family

__all__ = [
    "PerturbSensitivity",
    "measure_perturb_sensitivity",
    "measure_assignment_kl",
    "perturb_from_json",
    "PERTURB_VERSION",
]

PERTURB_VERSION = 2
_SCHEMA = "kvinfo.sensitivity"


def check_measured_geometry(measured: dict, geometry: dict, where: str = "the dump") -> None:
    """Refuse (:class:`AllocationError`) ``geometry`` unless it is the ``measured`` one
    (layers, KV heads, head_dim); shared by every sensitivity file kind."""
    keys = ("num_layers", "num_kv_heads", "head_dim")
    if any(int(geometry[k]) != int(measured[k]) for k in keys):
        g, h = measured, geometry
        raise AllocationError(
            f"the sensitivity was measured for {g['num_layers']} layers x "
            f"{g['num_kv_heads']} KV heads x head_dim {g['head_dim']}; {where} has "
            f"{h['num_layers']} x {h['num_kv_heads']} x {h['head_dim']}"
        )



@dataclass
class PerturbSensitivity:
    """Measured KL per (layer, kind) group and family setting.

    Attributes
    ----------
    kl_nats_per_token : ndarray, shape (num_layers, 2, settings)
        Mean next-token KL (nats per scored token, measurement) with only that group coded
        at that setting; NaN where the setting cannot code the group. Kinds: keys, values.
    family : str
    settings : dict
        Kind -> the family's codec configs (the table the KL belongs to).
    labels : list of str
    geometry : dict
        ``num_layers``, ``num_kv_heads``, ``head_dim``.
    num_scored_tokens, num_cached_tokens, num_sequences : int
    seconds : float
        Wall time of the measurement.
    replay_max_abs_logit_deviation : float
        Largest ``|logit|`` difference between the replay of the exact cache and the full
        forward (measurement; float32 rounding).
    bits_per_element : ndarray, shape (num_layers, 2, settings)
        The codec's measured rate on the coded prefixes (side information included): for
        information; the solver's rates come from the R-D curves of the calibration dump.
    source : dict
    """

    kl_nats_per_token: np.ndarray
    family: str
    settings: dict
    labels: list
    geometry: dict
    num_scored_tokens: int
    num_cached_tokens: int
    num_sequences: int
    seconds: float
    replay_max_abs_logit_deviation: float
    bits_per_element: np.ndarray
    source: dict = field(default_factory=dict)
    method: str = "perturb"

    def check_geometry(self, geometry: dict, where: str = "the dump") -> None:
        """Refuse (:class:`AllocationError`) a geometry other than the one measured."""
        check_measured_geometry(self.geometry, geometry, where)

    def check_family(self, family: Family) -> None:
        """Refuse a family whose settings table differs from the one measured."""
        if family.name != self.family or family.settings != self.settings:
            raise AllocationError(
                f"the perturbation sensitivity was measured for family {self.family!r} "
                f"({len(self.labels)} settings: {self.labels[0]} .. {self.labels[-1]}); the "
                f"allocation asks for family {family.name!r} with "
                f"{'the same' if family.name == self.family else 'other'} name and other "
                "settings: measure it for that family (kvinfo sensitivity --method perturb "
                "--family ...)"
            )

    def to_json(self) -> dict:
        return {
            "schema": _SCHEMA, "version": PERTURB_VERSION, "kvinfo_version": __version__,
            "method": "perturb", "geometry": self.geometry, "kinds": list(KINDS),
            "family": self.family, "settings": self.settings, "labels": self.labels,
            "num_scored_tokens": self.num_scored_tokens,
            "num_cached_tokens": self.num_cached_tokens, "num_sequences": self.num_sequences,
            "seconds": self.seconds,
            "replay_max_abs_logit_deviation": self.replay_max_abs_logit_deviation,
            "source": self.source,
            "units": "nats per scored token (measurement), [layer][kind][setting]; null: the "
                     "setting cannot code the group",
            "kl_nats_per_token": _nan_to_none(self.kl_nats_per_token),
            "bits_per_element": _nan_to_none(self.bits_per_element),
        }

    def save(self, path) -> None:
        """Write the JSON file (temporary name, then rename)."""
        path = check_output_file(path)
        with atomic_write(path) as f:
            json.dump(self.to_json(), f, allow_nan=False)


def _nan_to_none(a: np.ndarray):
    return [[[None if not np.isfinite(x) else float(x) for x in row] for row in lay]
            for lay in a]


def perturb_from_json(doc: dict, where: str) -> PerturbSensitivity:
    """Build a :class:`PerturbSensitivity` from its JSON document (validated)."""
    try:
        g = {k: int(doc["geometry"][k]) for k in ("num_layers", "num_kv_heads", "head_dim")}
        labels = [str(x) for x in doc["labels"]]
        settings = doc["settings"]
        kl = np.array([[[np.nan if x is None else float(x) for x in row] for row in lay]
                       for lay in doc["kl_nats_per_token"]], dtype=np.float64)
        bits = np.array([[[np.nan if x is None else float(x) for x in row] for row in lay]
                         for lay in doc["bits_per_element"]], dtype=np.float64)
        sens = PerturbSensitivity(
            kl, str(doc["family"]), settings, labels, g, int(doc["num_scored_tokens"]),
            int(doc["num_cached_tokens"]), int(doc["num_sequences"]), float(doc["seconds"]),
            float(doc["replay_max_abs_logit_deviation"]), bits, doc.get("source", {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise AllocationError(f"{where}: damaged perturbation sensitivity file ({exc})") from None
    shape = (g["num_layers"], 2, len(labels))
    if (kl.shape != shape or bits.shape != shape or not isinstance(settings, dict)
            or sorted(settings) != sorted(KINDS)
            or any(len(settings[k]) != len(labels) for k in KINDS)):
        raise AllocationError(f"{where}: kl_nats_per_token does not match its geometry and "
                              f"settings (expected {shape}, found {kl.shape})")
    ok = np.isfinite(kl)
    if np.any(kl[ok] < 0):
        raise AllocationError(f"{where}: negative KL values")
    return sens


class _ReplayCache:
    """A stand-in for a transformers cache: ``update`` returns prefix + new, stores nothing."""

    def __init__(self, prefix):
        self.prefix = prefix  # list over layers of (keys, values), (B or 1, H, P, d)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        import torch

        k, v = self.prefix[layer_idx]
        b = key_states.shape[0]
        k = k.expand(b, *k.shape[1:]) if k.shape[0] != b else k
        v = v.expand(b, *v.shape[1:]) if v.shape[0] != b else v
        return torch.cat([k, key_states], dim=-2), torch.cat([v, value_states], dim=-2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.prefix[layer_idx][0].shape[-2])


def _decoder(model):
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if inner is None or layers is None or not hasattr(inner, "norm") or not hasattr(
        model, "lm_head"
    ):
        raise AllocationError("the perturbation replay needs a Llama-like model "
                              "(model.model.layers, model.model.norm, model.lm_head)")
    return inner, layers


class _Sequence:
    """One sequence's baseline: prefix cache, scored tokens' layer inputs, baseline log-probs."""

    def __init__(self, model, ids: np.ndarray, prefix: int):
        import torch

        from ..dumps.capture import output_cache
        from .sensitivity import _cache_argument

        inner, layers = _decoder(model)
        self.model, self.layers, self.norm = model, layers, inner.norm
        t = torch.from_numpy(np.asarray(ids, dtype=np.int64))[None]
        arg = _cache_argument(model)
        with torch.no_grad():
            cache = output_cache(model(t[:, :prefix], use_cache=True))
            self.prefix = [(k.detach().clone(), v.detach().clone())
                           for k, v in _layers_kv(cache)]
            calls = []

            def hook(mod, args, kwargs):
                hs = args[0] if args else kwargs["hidden_states"]
                kw = {k: v for k, v in kwargs.items() if k not in ("hidden_states",)}
                calls.append((hs.detach().clone(), kw))

            handles = [lay.register_forward_pre_hook(hook, with_kwargs=True) for lay in layers]
            try:
                logits = model(t[:, prefix:], use_cache=True, **{arg: cache}).logits
            finally:
                for h in handles:
                    h.remove()
        if len(calls) != len(layers):
            raise AllocationError(f"expected one call per decoder layer ({len(layers)}), "
                                  f"saw {len(calls)}")
        self.inputs = [c[0] for c in calls]
        self.kwargs = []
        for _, kw in calls:
            kw = dict(kw)
            for name in ("cache", "past_key_values", "past_key_value"):
                kw.pop(name, None)
            self.kwargs.append(kw)
        self.base_logits = logits[0].detach()
        self.base_logp = torch.log_softmax(self.base_logits.double(), -1)
        self.base_p = self.base_logp.exp()
        self.num_scored = int(logits.shape[1])
        self.num_cached = int(prefix)

    def replay(self, start: int, prefix):
        """Logits (B, S, V) of layers ``start..`` with prefix caches ``prefix`` (per layer)."""
        import torch

        cache = _ReplayCache(prefix)
        b = max(int(t.shape[0]) for pair in prefix[start:] for t in pair)
        h = self.inputs[start]
        h = h.expand(b, *h.shape[1:]).contiguous() if h.shape[0] != b else h
        with torch.no_grad():
            for i in range(start, len(self.layers)):
                out = self.layers[i](h, cache=cache, **self.kwargs[i])
                h = out[0] if isinstance(out, tuple) else out
            return self.model.lm_head(self.norm(h))

    def kl(self, logits) -> np.ndarray:
        """Mean KL(baseline || perturbed) per batch element, nats per scored token."""
        import torch

        out = []
        for b in range(logits.shape[0]):
            lp = torch.log_softmax(logits[b].double(), -1)
            out.append(float((self.base_p * (self.base_logp - lp)).sum(-1).mean()))
        return np.array(out)


def _layers_kv(cache):
    """``[(keys, values), ...]`` of a transformers cache (``layers`` since 4.56, else lists)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


def _code(codec, arr: np.ndarray, layer: int, kind: str):
    """``decode(encode(arr))`` of one layer's (heads, tokens, dim) prefix, and its bits."""
    from ..hf import keep_torch_threads

    if hasattr(codec, "for_slab"):
        codec = codec.for_slab(layer, kind, None, positions=np.arange(arr.shape[-2]))
    with keep_torch_threads():
        data = codec.encode(np.ascontiguousarray(arr))
        out = np.asarray(codec.decode(data), dtype=arr.dtype)
    return out, 8 * len(data)


def _check_sequences(sequences, scored: int):
    if isinstance(scored, bool) or not isinstance(scored, int) or scored < 1:
        raise AllocationError(f"scored must be a positive integer; found {scored!r}")
    seqs = [np.asarray(s, dtype=np.int64) for s in sequences]
    seqs = [s for s in seqs if s.size >= scored + 2]
    if not seqs:
        raise AllocationError(f"the perturbation sensitivity needs a sequence of at least "
                              f"{scored + 2} tokens (scored={scored} plus a prefix)")
    return seqs


def measure_perturb_sensitivity(model, sequences, family: Family, *, scored: int = 128,
                                source: dict | None = None,
                                progress: bool = False) -> PerturbSensitivity:
    """Measure ``KL_g(setting)`` for every (layer, kind) group and family setting.

    Parameters
    ----------
    model
        A loaded Llama-like transformers causal LM (eval mode).
    sequences : list of array of int
        Token ids; each sequence's last ``scored`` tokens are scored, the rest is the
        prefix (coded). Sequences shorter than ``scored + 2`` are skipped.
    family : Family
        From :func:`~kvinfo.allocation.get_family`.
    scored : int
        Scored tokens per sequence.
    source : dict, optional
        Recorded in the file.
    progress : bool
        A progress bar over sequences x groups.

    Returns
    -------
    PerturbSensitivity

    Raises
    ------
    AllocationError
        No usable sequence, or a model the replay does not support.
    """
    import torch
    from tqdm.auto import tqdm

    from ..codecs import get_codec

    seqs = _check_sequences(sequences, scored)
    codecs = {k: [get_codec(c) for c in family.settings[k]] for k in KINDS}
    k_n = len(family)
    t0 = time.perf_counter()
    kl_sum = bits_sum = elems = None
    n_scored = n_cached = 0
    deviation = 0.0
    bar = None
    for s in seqs:
        seq = _Sequence(model, s, int(s.size - scored))
        n_l = len(seq.layers)
        if kl_sum is None:
            h, d = seq.prefix[0][0].shape[1], seq.prefix[0][0].shape[-1]
            geometry = {"num_layers": n_l, "num_kv_heads": int(h), "head_dim": int(d)}
            kl_sum = np.zeros((n_l, 2, k_n))
            bits_sum = np.zeros((n_l, 2, k_n))
            elems = np.zeros((n_l, 2, k_n))
            bar = tqdm(total=len(seqs) * n_l * 2, desc="perturb", disable=not progress)
        # the replay of the exact cache must equal the full forward
        for start in sorted({0, n_l // 2, n_l - 1}):
            dev = (seq.replay(start, seq.prefix)[0] - seq.base_logits).abs().max()
            deviation = max(deviation, float(dev))
        w = seq.num_scored
        for lay in range(n_l):
            for ki, kind in enumerate(KINDS):
                x = seq.prefix[lay][ki][0].numpy()  # (heads, prefix tokens, dim)
                coded, ok = [], []
                for j in range(k_n):
                    try:
                        y, nb = _code(codecs[kind][j], x, lay, kind)
                    except CodecConfigError:
                        continue  # this setting cannot code this group: NaN, never chosen
                    coded.append(torch.from_numpy(np.ascontiguousarray(y)))
                    ok.append(j)
                    bits_sum[lay, ki, j] += nb
                    elems[lay, ki, j] += x.size
                if ok:
                    t = torch.stack(coded)  # (B, heads, P, dim)
                    prefix = list(seq.prefix)
                    pair = list(prefix[lay])
                    pair[ki] = t
                    prefix[lay] = tuple(pair)
                    kls = seq.kl(seq.replay(lay, prefix))
                    for j, v in zip(ok, kls, strict=True):
                        kl_sum[lay, ki, j] += v * w
                missing = [j for j in range(k_n) if j not in ok]
                for j in missing:
                    kl_sum[lay, ki, j] = np.nan
                bar.update(1)
        n_scored += seq.num_scored
        n_cached += seq.num_cached
        del seq
    bar.close()
    kl = kl_sum / n_scored
    kl = np.where(np.isfinite(kl), np.maximum(kl, 0.0), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        bits = np.where(elems > 0, bits_sum / np.maximum(elems, 1), np.nan)
    return PerturbSensitivity(
        kl, family.name, family.settings, list(family.labels), geometry, n_scored, n_cached,
        len(seqs), time.perf_counter() - t0, deviation, bits, dict(source or {}),
    )


def measure_assignment_kl(model, sequences, family: Family, assignment, *,
                          scored: int = 128) -> float:
    """Measured mean KL with every group coded at once at its setting (the additivity check).

    ``assignment`` is an int array ``(num_layers, 2)`` of setting indices (keys, values), or
    a plan document (its ``assignment``; the first head's setting of each group, heads of a
    group must agree). Same protocol and scored tokens as
    :func:`measure_perturb_sensitivity`; the scored tokens are run through every layer.
    """
    import torch

    from ..codecs import get_codec

    if isinstance(assignment, dict):
        a = assignment["assignment"]
        assignment = np.array([[a[k][lay][0] for k in KINDS] for lay in range(len(a["keys"]))])
    assignment = np.asarray(assignment, dtype=np.int64)
    seqs = _check_sequences(sequences, scored)
    total = n = 0.0
    for s in seqs:
        seq = _Sequence(model, s, int(s.size - scored))
        if assignment.shape != (len(seq.layers), 2):
            raise AllocationError(f"assignment must have shape ({len(seq.layers)}, 2); found "
                                  f"{assignment.shape}")
        prefix = []
        for lay, (k, v) in enumerate(seq.prefix):
            pair = []
            for ki, (kind, t) in enumerate(zip(KINDS, (k, v), strict=True)):
                codec = get_codec(family.settings[kind][int(assignment[lay, ki])])
                y, _ = _code(codec, t[0].numpy(), lay, kind)
                pair.append(torch.from_numpy(np.ascontiguousarray(y))[None])
            prefix.append(tuple(pair))
        total += float(seq.kl(seq.replay(0, prefix))[0]) * seq.num_scored
        n += seq.num_scored
    return total / n
