"""Synthetic kvdumps with the structure of real KV caches, for tests and examples.

The data is random but shaped like a real cache: channels are correlated (a decaying
spectrum), tokens follow an AR(1) process inside each sequence, keys have one fixed
outlier channel with a large offset, and the first token of each sequence (the
attention sink) has a much larger norm.
"""

from __future__ import annotations

import numpy as np

from ._format import logical_numpy_dtype
from ._writer import capture_writer

__all__ = ["write_synthetic_dump", "synthetic_sequence"]


def synthetic_sequence(rng, num_layers, heads, T, D, *, outlier=False, rho=0.8, scale=1.0):
    """One sequence's tensor ``(num_layers, heads, T, D)`` as float32."""
    out = np.empty((num_layers, heads, T, D), dtype=np.float32)
    for layer in range(num_layers):
        for h in range(heads):
            eig = scale * np.exp(-np.arange(D) / max(D / 6, 1.0))
            mix = np.linalg.qr(rng.standard_normal((D, D)))[0] * np.sqrt(eig)
            z = rng.standard_normal((T, D))
            x = np.empty_like(z)
            x[0] = z[0]
            for t in range(1, T):
                x[t] = rho * x[t - 1] + np.sqrt(1 - rho**2) * z[t]
            x = x @ mix.T
            if outlier:
                x[:, (layer + h) % D] += 8.0 * scale
            x[0] *= 6.0
            out[layer, h] = x
    return out


def write_synthetic_dump(
    path,
    *,
    num_layers: int = 2,
    num_kv_heads: int = 2,
    num_heads: int = 4,
    num_tokens: int = 256,
    head_dim: int = 16,
    dtype: str = "float32",
    queries: bool = True,
    pre_rope: bool = False,
    num_sequences: int = 2,
    seed: int = 0,
):
    """Write a synthetic kvdump and return its path (see the module docstring).

    The tokens are split as evenly as possible over ``num_sequences`` sequences.
    """
    rng = np.random.default_rng(seed)
    bounds = np.linspace(0, num_tokens, num_sequences + 1).astype(int)
    np_dtype = logical_numpy_dtype(dtype)
    with capture_writer(
        path,
        model="synthetic",
        dtype=dtype,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        queries=queries,
        pre_rope=pre_rope,
        weights_checksum="none",
        rope={},
        capture={"synthetic": True, "seed": seed},
    ) as w:
        for s in range(num_sequences):
            T = int(bounds[s + 1] - bounds[s])
            k = synthetic_sequence(rng, num_layers, num_kv_heads, T, head_dim, outlier=True)
            t = {
                "keys": k,
                "values": synthetic_sequence(rng, num_layers, num_kv_heads, T, head_dim, scale=0.3),
            }
            if queries:
                rep = np.repeat(k, num_heads // num_kv_heads, axis=1)
                noise = synthetic_sequence(rng, num_layers, num_heads, T, head_dim)
                t["queries"] = 0.5 * rep + noise
            if pre_rope:
                t["keys_pre_rope"] = k[..., ::-1].copy()
            tensors = {name: a.astype(np_dtype) for name, a in t.items()}
            w.append(rng.integers(0, 1000, size=T), tensors)
    return w.path
