"""How much each slab's error costs the model: the Fisher information of the cached K/V.

For a text, the model is prefilled on the first half of each sequence; the cached keys and
values of every layer are then made leaf tensors (``requires_grad``) and the second half is
scored teacher-forced on top of that cache. For a small perturbation ``delta`` of the
cache, the mean next-token KL divergence from the unperturbed model is, to second order,

    KL ~= 0.5 * delta^T F delta / N_scored,

where ``F = sum_t E_{y ~ p_t}[g_t(y) g_t(y)^T]`` is the Fisher information of the scored
distributions with respect to the cache and ``g_t(y)`` the gradient of ``log p_t(y)`` (the
first-order term vanishes: the KL is minimal at ``delta = 0``). A codec's error is close to
zero-mean noise independent across elements, so only the diagonal of ``F`` matters:
``E[KL] ~= 0.5 * sum_i F_ii E[delta_i^2] / N_scored``.

The diagonal is estimated by Monte Carlo (the *sampled* Fisher, not the empirical one: the
targets are drawn from the model's own next-token distributions, which makes the estimate
unbiased for the KL's Hessian): for each of ``samples`` draws, one target per scored
position ``y_t ~ p_t``, one backward pass of ``sum_t log p_t(y_t)``, and ``g**2`` summed
over draws. Draws at different positions are independent given the teacher-forced inputs,
so the cross terms have zero mean and one backward pass per draw suffices.

Stored per (layer, kind, head, channel): ``fisher_per_channel = sum over cached tokens of
F_ii / (N_scored * samples)``, in nats per scored token per squared unit of the cache. A
slab whose error has mean square ``D_c`` in channel ``c`` (over its tokens) then costs an
estimated ``0.5 * sum_c fisher_per_channel[c] * D_c`` nats per scored token; the slab's
scalar weight is ``w_s = mean_c fisher_per_channel[c] / tokens_per_slab`` in the form
``0.5 * w_s * D_s * n_s`` (``n_s`` elements).

Cost: one no-grad prefill plus ``samples`` forward-and-backward passes over each sequence's
second half (stated in the file as ``seconds``); on SmolLM2-135M and the default dump cut to
256 tokens per sequence (975 scored tokens) with 2 samples: 1,151 s measured on a shared,
heavily loaded 2-core machine (docs/benchmarks.md).
"""

from __future__ import annotations

import inspect
import json
import os
import time
from dataclasses import dataclass

import numpy as np

from .._paths import (
    atomic_write,
    check_output_file,
)
from .._version import __version__
from ..codecs.spec import KINDS
from ..errors import AllocationError
from .perturb import PERTURB_VERSION, check_measured_geometry, perturb_from_json

__all__ = ["Sensitivity", "measure_sensitivity", "load_sensitivity", "SENSITIVITY_SCHEMA"]

SENSITIVITY_SCHEMA = "kvinfo.sensitivity"



@dataclass
class Sensitivity:
    """The diagonal Fisher information of the cache, per (layer, kind, head, channel).

    Attributes
    ----------
    fisher_per_channel : ndarray, shape (num_layers, 2, num_kv_heads, head_dim)
        Kinds in the order keys, values; see the module docstring for the units.
    geometry : dict
        ``num_layers``, ``num_kv_heads``, ``head_dim``.
    num_scored_tokens, num_cached_tokens, samples : int
    seconds : float
        Wall time of the measurement.
    source : dict
        The model and the text (dump path, number of sequences).
    method : str
    """

    fisher_per_channel: np.ndarray
    geometry: dict
    num_scored_tokens: int
    num_cached_tokens: int
    samples: int
    seconds: float
    source: dict
    method: str = "sampled Fisher diagonal of the teacher-forced next-token log-likelihood"

    def weight(self, layer: int, kind: str, head: int) -> np.ndarray:
        """``fisher_per_channel`` of one slab, shape ``(head_dim,)``."""
        return self.fisher_per_channel[layer, KINDS.index(kind), head]

    def check_geometry(self, geometry: dict, where: str = "the dump") -> None:
        """Refuse (:class:`AllocationError`) a geometry other than the one measured."""
        check_measured_geometry(self.geometry, geometry, where)

    def to_json(self) -> dict:
        return {
            "schema": SENSITIVITY_SCHEMA, "version": 1, "kvinfo_version": __version__,
            "method": self.method, "geometry": self.geometry, "kinds": list(KINDS),
            "num_scored_tokens": self.num_scored_tokens,
            "num_cached_tokens": self.num_cached_tokens, "samples": self.samples,
            "seconds": self.seconds, "source": self.source,
            "units": "nats per scored token per squared cache unit, summed over cached tokens",
            "fisher_per_channel": self.fisher_per_channel.tolist(),
        }

    def save(self, path) -> None:
        """Write the JSON file (temporary name, then rename)."""
        path = check_output_file(path)
        with atomic_write(path) as f:
            json.dump(self.to_json(), f)


def load_sensitivity(path):
    """Read a file written by :meth:`Sensitivity.save` or :meth:`PerturbSensitivity.save`.

    Returns a :class:`Sensitivity` (Fisher, version 1) or a
    :class:`~kvinfo.allocation.PerturbSensitivity` (version 2); :class:`AllocationError`
    if the file is neither.
    """
    where = os.fspath(path)
    try:
        with open(where, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise AllocationError(f"{where}: no such sensitivity file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AllocationError(f"{where}: not a sensitivity JSON file ({exc})") from None
    if isinstance(doc, dict) and doc.get("schema") == SENSITIVITY_SCHEMA and doc.get(
        "version"
    ) == PERTURB_VERSION and doc.get("method") == "perturb":
        return perturb_from_json(doc, where)
    if not isinstance(doc, dict) or doc.get("schema") != SENSITIVITY_SCHEMA or doc.get(
        "version"
    ) != 1:
        raise AllocationError(f"{where}: not a kvinfo sensitivity file (version 1, Fisher, or "
                              f"version {PERTURB_VERSION}, perturbation)")
    try:
        g = {k: int(doc["geometry"][k]) for k in ("num_layers", "num_kv_heads", "head_dim")}
        f = np.asarray(doc["fisher_per_channel"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise AllocationError(f"{where}: damaged sensitivity file ({exc})") from None
    if f.shape != (g["num_layers"], 2, g["num_kv_heads"], g["head_dim"]) or not np.all(
        np.isfinite(f)
    ) or np.any(f < 0):
        raise AllocationError(f"{where}: fisher_per_channel does not match its geometry or "
                              "holds negative or non-finite values")
    return Sensitivity(f, g, int(doc["num_scored_tokens"]), int(doc["num_cached_tokens"]),
                       int(doc["samples"]), float(doc["seconds"]), doc.get("source", {}),
                       doc.get("method", ""))


def _cache_argument(model) -> str:
    # the forward's name of the cache argument (as kvinfo.evaluate: ``cache`` since
    # transformers 5, ``past_key_values`` before)
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def measure_sensitivity(model, sequences, *, samples: int = 4, prefix_fraction: float = 0.5,
                        seed: int = 0, source: dict | None = None,
                        progress: bool = False) -> Sensitivity:
    """Measure the cache's diagonal Fisher information on token sequences.

    Parameters
    ----------
    model
        A loaded transformers causal LM (eval mode).
    sequences : list of array of int
        Token ids, one array per sequence (e.g. the dump's own sequences); each needs at
        least 4 tokens.
    samples : int
        Monte Carlo draws of the targets per sequence (one backward pass each).
    prefix_fraction : float
        The share of each sequence prefilled (cached); the rest is scored.
    seed : int
        Seed of the target draws.
    source : dict, optional
        Recorded in the file (e.g. the dump's path and the model's name).
    progress : bool
        Show a progress bar over the sequences.

    Returns
    -------
    Sensitivity

    Raises
    ------
    AllocationError
        No usable sequence, or bad ``samples`` / ``prefix_fraction``.
    """
    import torch
    from tqdm.auto import tqdm

    from ..dumps.capture import output_cache

    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= 1000:
        raise AllocationError(f"samples must be an integer in 1..1000; found {samples!r}")
    if not 0.0 < float(prefix_fraction) < 1.0:
        raise AllocationError(f"prefix_fraction must be in (0, 1); found {prefix_fraction!r}")
    seqs = [np.asarray(s, dtype=np.int64) for s in sequences]
    seqs = [s for s in seqs if s.size >= 4]
    if not seqs:
        raise AllocationError("the sensitivity needs at least one sequence of 4 or more tokens")
    arg = _cache_argument(model)
    gen = torch.Generator().manual_seed(int(seed))
    acc = None
    n_scored = n_cached = 0
    t0 = time.perf_counter()
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for s in tqdm(seqs, desc="sensitivity", disable=not progress):
            ids = torch.from_numpy(s)[None]
            p_len = min(max(int(round(s.size * prefix_fraction)), 1), s.size - 2)
            with torch.no_grad():
                cache = output_cache(model(ids[:, :p_len], use_cache=True))
            layers = cache.layers
            leaves = []
            for layer in layers:
                layer.keys = layer.keys.detach().clone().requires_grad_(True)
                layer.values = layer.values.detach().clone().requires_grad_(True)
                leaves.append((layer.keys, layer.values))
            if acc is None:
                h, d = leaves[0][0].shape[1], leaves[0][0].shape[-1]
                acc = np.zeros((len(layers), 2, h, d))
            logits = model(ids[:, p_len:-1], use_cache=True, **{arg: cache}).logits[0]
            logp = torch.log_softmax(logits.float(), dim=-1)
            probs = logp.detach().exp()
            flat = [t for pair in leaves for t in pair]
            for r in range(samples):
                y = torch.multinomial(probs, 1, generator=gen)[:, 0]
                ll = logp.gather(1, y[:, None]).sum()
                grads = torch.autograd.grad(ll, flat, retain_graph=r < samples - 1)
                for i in range(len(layers)):
                    for k in range(2):
                        g = grads[2 * i + k][0].double()  # (heads, cached tokens, head_dim)
                        acc[i, k] += (g * g).sum(dim=1).numpy()
            n_scored += logits.shape[0]
            n_cached += p_len
            del logits, logp, probs, cache, leaves, flat
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
    fisher = acc / (n_scored * samples)
    geometry = {"num_layers": int(fisher.shape[0]), "num_kv_heads": int(fisher.shape[2]),
                "head_dim": int(fisher.shape[3])}
    return Sensitivity(fisher, geometry, n_scored, n_cached, samples,
                       time.perf_counter() - t0, dict(source or {}))
