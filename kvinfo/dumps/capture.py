"""Capture the KV cache of a Hugging Face causal LM into a kvdump.

For each prompt the token ids are formed (prompt, truncated to ``max_tokens``, then
optionally ``generate`` greedily generated tokens), one forward pass with ``use_cache=True``
runs over them, and the model's own ``past_key_values`` for those ids are written, in the
model's dtype, bit-exactly. Queries (post-RoPE, as used in the attention scores) and
pre-RoPE keys are taken with hooks on the attention modules' projections; kvinfo checks
that applying the model's own rotary embedding to the hooked keys reproduces the cached
keys exactly, and refuses architectures where it does not.

The file is written sequence by sequence through :class:`~kvinfo.dumps.DumpWriter` (set up
by :func:`~kvinfo.dumps._writer.capture_writer`, shared with the synthetic dumps), so
memory is bounded by one sequence, and it appears at its path only once complete.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._paths import check_output_file
from .._version import __version__
from ..errors import CaptureInputError
from ._format import dtype_name
from ._model import load_model, weights_checksum
from ._prompts import default_prompts, default_prompts_source
from ._writer import capture_writer

__all__ = [
    "capture",
    "capture_model",
    "read_prompts",
    "load_model",
    "output_cache",
    "InputHooks",
    "decoder_layers",
    "weights_checksum",
]


def read_prompts(path: str | Path) -> list[str]:
    """Read prompts from a ``.txt`` file (one per line) or ``.jsonl`` file.

    A JSONL line is either a JSON string or an object with a ``"prompt"`` or ``"text"`` key.
    Blank lines are skipped.
    """
    path = Path(path)
    if path.is_dir():
        raise CaptureInputError(f"{path}: no such prompts file (it is a folder)")
    if not path.is_file():
        raise CaptureInputError(f"{path}: no such prompts file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise CaptureInputError(f"{path}: prompts file is not UTF-8 text") from None
    prompts = []
    if path.suffix == ".jsonl":
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CaptureInputError(f"{path}:{i}: invalid JSON ({exc.msg})") from None
            if isinstance(obj, dict):
                obj = obj.get("prompt", obj.get("text"))
            if not isinstance(obj, str):
                raise CaptureInputError(
                    f"{path}:{i}: expected a string or an object with 'prompt' or 'text'"
                )
            prompts.append(obj)
    elif path.suffix == ".txt":
        prompts = [line for line in lines if line.strip()]
    else:
        raise CaptureInputError(f"{path}: prompts file must end in .txt or .jsonl")
    if not prompts:
        raise CaptureInputError(f"{path}: no prompts in file")
    return prompts


def output_cache(outputs):
    """The KV cache a transformers forward returned.

    ``outputs.cache`` since transformers 5 renamed ``past_key_values`` to ``cache`` (the old
    attribute still reads, with a deprecation warning); ``outputs.past_key_values`` before.
    """
    cache = getattr(outputs, "cache", None)
    return cache if cache is not None else outputs.past_key_values


def _cache_layers(pkv):
    """``[(keys, values), ...]`` tensors of shape (batch, kv_heads, T, head_dim) per layer."""
    if hasattr(pkv, "layers"):
        return [(layer.keys, layer.values) for layer in pkv.layers]
    if hasattr(pkv, "key_cache"):
        return list(zip(pkv.key_cache, pkv.value_cache, strict=True))
    return [(k, v) for k, v in pkv]


def _attention_modules(model):
    mods = [m for name, m in model.named_modules() if name.endswith("self_attn")]
    if not mods or not all(hasattr(m, "q_proj") and hasattr(m, "k_proj") for m in mods):
        raise CaptureInputError(
            f"--queries/--pre-rope need attention modules with q_proj/k_proj "
            f"(Llama-style); {type(model).__name__} has none"
        )
    return mods


def decoder_layers(model) -> list:
    """``[(decoder_layer, attention_module), ...]`` of a Llama-style model, in layer order.

    The decoder layer is the parent of each ``self_attn`` module; the attention module must
    have ``k_proj`` and ``v_proj`` (the projections that K and V are computed by).
    """
    out = []
    for name, m in model.named_modules():
        if name.endswith("self_attn") and hasattr(m, "k_proj") and hasattr(m, "v_proj"):
            parent = model.get_submodule(name[: -len(".self_attn")]) if "." in name else model
            out.append((parent, m))
    if not out:
        raise CaptureInputError(
            f"--inputs needs attention modules with k_proj/v_proj (Llama-style); "
            f"{type(model).__name__} has none"
        )
    return out


class InputHooks:
    """Hooks that record, per decoder layer, the residual stream entering the layer and the
    input X of its key/value projections (the normed hidden state), for one forward.

    X is taken as the very tensor handed to ``k_proj`` (a forward pre-hook), so it is what
    the model multiplies by W_k and W_v, bit for bit; the residual is the first argument of
    the decoder layer. Use :meth:`clear` before a forward, :meth:`tensors` after it, and
    :meth:`remove` at the end.
    """

    def __init__(self, model):
        self.layers = decoder_layers(model)
        self.rec = [{} for _ in self.layers]
        self.handles = []
        for i, (layer, attn) in enumerate(self.layers):
            self.handles.append(layer.register_forward_pre_hook(self._res(i), with_kwargs=True))
            self.handles.append(attn.k_proj.register_forward_pre_hook(self._x(i)))

    def _res(self, i):
        def hook(module, args, kwargs):
            h = args[0] if args else kwargs.get("hidden_states")
            self.rec[i]["residual"] = h.detach()

        return hook

    def _x(self, i):
        def hook(module, args):
            self.rec[i]["inputs"] = args[0].detach()

        return hook

    def clear(self) -> None:
        for r in self.rec:
            r.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def tensors(self) -> tuple[list, list]:
        """``(inputs, residual)``: per layer, torch tensors of shape ``(T, hidden_size)``
        (batch 1)."""
        for i, r in enumerate(self.rec):
            if "inputs" not in r or "residual" not in r:
                raise CaptureInputError(f"layer {i}: its inputs were not seen by the hooks")
        return [r["inputs"][0] for r in self.rec], [r["residual"][0] for r in self.rec]


class _QKHooks:
    """Hooks that record q/k projections and rotary embeddings of every attention layer."""

    def __init__(self, model):
        self.mods = _attention_modules(model)
        self.rec = [{} for _ in self.mods]
        self.handles = []
        for i, m in enumerate(self.mods):
            self.handles.append(m.register_forward_pre_hook(self._pre(i), with_kwargs=True))
            self.handles.append(m.q_proj.register_forward_hook(self._out(i, "q")))
            self.handles.append(m.k_proj.register_forward_hook(self._out(i, "k")))

    def _pre(self, i):
        def hook(module, args, kwargs):
            self.rec[i]["pos"] = kwargs.get("position_embeddings")

        return hook

    def _out(self, i, key):
        def hook(module, args, output):
            self.rec[i][key] = output.detach()

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()

    def tensors(self, cached_keys):
        """``(queries, keys_pre_rope)`` per layer, shape (heads, T, head_dim), checked."""
        queries, pre = [], []
        for i, m in enumerate(self.mods):
            r = self.rec[i]
            if r.get("pos") is None or "q" not in r or "k" not in r:
                raise CaptureInputError(
                    f"cannot hook queries in {type(m).__name__}: no position_embeddings seen"
                )
            hd = m.head_dim
            q = r["q"].view(*r["q"].shape[:-1], -1, hd).transpose(1, 2)
            k = r["k"].view(*r["k"].shape[:-1], -1, hd).transpose(1, 2)
            if hasattr(m, "q_norm"):
                q, k = m.q_norm(q), m.k_norm(k)
            rope = getattr(sys.modules[type(m).__module__], "apply_rotary_pos_emb", None)
            if rope is None:
                raise CaptureInputError(f"{type(m).__module__} has no apply_rotary_pos_emb")
            cos, sin = r["pos"]
            q_rot, k_rot = rope(q, k, cos, sin)
            if not (k_rot.shape == cached_keys[i].shape and bool((k_rot == cached_keys[i]).all())):
                raise CaptureInputError(
                    f"{type(m).__name__}: hooked keys do not reproduce the cached keys; "
                    "--queries/--pre-rope are not supported for this architecture"
                )
            queries.append(q_rot[0])
            pre.append(k[0])
        return queries, pre


def _to_numpy(tensors, dtype: str) -> np.ndarray:
    """Stack per-layer torch tensors (heads, T, D) into a numpy array of the dump dtype."""
    import torch

    t = torch.stack([x.detach().cpu() for x in tensors])
    if dtype == "bfloat16":
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def capture_model(
    model,
    tokenizer,
    out: str | Path,
    prompts: Sequence[str] | None = None,
    *,
    model_name: str = "model",
    max_tokens: int = 512,
    generate: int = 0,
    queries: bool = False,
    pre_rope: bool = False,
    inputs: bool = False,
    progress: bool = True,
    extra_settings: dict | None = None,
) -> Path:
    """Capture ``model``'s KV cache over ``prompts`` into the kvdump ``out``.

    Parameters
    ----------
    model, tokenizer
        A loaded Hugging Face causal LM (in eval mode, in the dtype to capture) and its
        tokenizer.
    out : path-like
        The dump to write (atomically).
    prompts : sequence of str, optional
        Default: :func:`kvinfo.dumps._prompts.default_prompts`.
    max_tokens : int
        Prompt tokens kept per prompt (the rest is cut).
    generate : int
        Tokens generated greedily after each prompt; the cache of prompt and generated
        tokens together is captured.
    queries, pre_rope : bool
        Also write ``queries`` (post-RoPE) and ``keys_pre_rope``.
    inputs : bool
        Also write, per layer, ``inputs`` (X, the normed hidden state that enters the key
        and value projections) and ``residual`` (the residual stream entering the layer);
        the dump is then format version 2. The projection weights are not copied: they
        are read from the model (the dump records its ``weights_checksum``).

    Returns
    -------
    pathlib.Path
        The written dump.
    """
    import torch
    from tqdm.auto import tqdm

    using_default = prompts is None
    prompts = default_prompts() if using_default else list(prompts)
    if not prompts:
        raise CaptureInputError("no prompts given")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise CaptureInputError(f"prompt {i} is empty")
    if max_tokens < 1:
        raise CaptureInputError(f"--max-tokens must be at least 1, got {max_tokens}")
    if generate < 0:
        raise CaptureInputError(f"--generate must be non-negative, got {generate}")
    cfg = model.config
    param = next(model.parameters())
    dtype = dtype_name(param.dtype)
    num_layers = cfg.num_hidden_layers
    num_heads = cfg.num_attention_heads
    num_kv_heads = getattr(cfg, "num_key_value_heads", None) or num_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // num_heads
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if hasattr(cfg, "rope_theta"):
        rope = {"rope_theta": cfg.rope_theta, **dict(rope)}
    settings = {
        "max_tokens": max_tokens,
        "generate": generate,
        "queries": queries,
        "pre_rope": pre_rope,
        "inputs": inputs,
        "dtype": dtype,
        "num_prompts": len(prompts),
        "prompts": default_prompts_source() if using_default else "user",
        "torch": torch.__version__,
        **(extra_settings or {}),
    }
    hooks = None
    in_hooks = None
    try:
        with capture_writer(
            out,
            model=model_name,
            dtype=dtype,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            queries=queries,
            pre_rope=pre_rope,
            weights_checksum=weights_checksum(model),
            rope=rope,
            capture=settings,
            model_type=getattr(cfg, "model_type", ""),
            inputs=inputs,
            hidden_size=cfg.hidden_size if inputs else None,
        ) as writer:
            hooks = _QKHooks(model) if (queries or pre_rope) else None
            in_hooks = InputHooks(model) if inputs else None
            bar = tqdm(prompts, desc="capture", unit="seq", disable=not progress,
                       file=sys.stderr)
            for i, prompt in enumerate(bar):
                ids = tokenizer(prompt, return_tensors="pt").input_ids[:, :max_tokens]
                if ids.shape[1] == 0:
                    raise CaptureInputError(f"prompt {i} tokenizes to no tokens")
                with torch.no_grad():
                    if generate:
                        pad = getattr(tokenizer, "pad_token_id", None)
                        pad = pad if pad is not None else getattr(cfg, "eos_token_id", 0)
                        ids = model.generate(
                            ids,
                            attention_mask=torch.ones_like(ids),
                            max_new_tokens=generate,
                            do_sample=False,
                            pad_token_id=pad,
                        )
                    if hooks is not None:
                        for r in hooks.rec:
                            r.clear()
                    if in_hooks is not None:
                        in_hooks.clear()
                    outputs = model(ids, use_cache=True)
                layers = _cache_layers(output_cache(outputs))
                tensors = {
                    "keys": _to_numpy([k[0] for k, _ in layers], dtype),
                    "values": _to_numpy([v[0] for _, v in layers], dtype),
                }
                if hooks is not None:
                    q, pre = hooks.tensors([k for k, _ in layers])
                    if queries:
                        tensors["queries"] = _to_numpy(q, dtype)
                    if pre_rope:
                        tensors["keys_pre_rope"] = _to_numpy(pre, dtype)
                if in_hooks is not None:
                    x, res = in_hooks.tensors()
                    tensors["inputs"] = _to_numpy(x, dtype)
                    tensors["residual"] = _to_numpy(res, dtype)
                writer.append(ids[0].numpy(), tensors)
                bar.set_postfix(tokens=writer.num_tokens)
        return writer.path
    finally:
        if hooks is not None:
            hooks.remove()
        if in_hooks is not None:
            in_hooks.remove()


def capture(
    out: str | Path,
    prompts: Sequence[str] | None = None,
    *,
    model: str | None = None,
    dtype: str | None = "float32",
    **kwargs,
) -> Path:
    """Load ``model`` (see :func:`kvinfo.dumps._model.load_model`) and capture it into ``out``."""
    check_output_file(out, kind="kvdump")  # a bad output path fails before the model loads
    m, tok, name = load_model(model, dtype=dtype)
    return capture_model(
        m, tok, out, prompts, model_name=name, extra_settings={"kvinfo": __version__}, **kwargs
    )
