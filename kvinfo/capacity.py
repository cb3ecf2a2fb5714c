"""How many sequences of which length fit a memory budget, per codec.

For a model geometry (``num_layers``, ``num_kv_heads``, ``head_dim``) the cache of one sequence
of ``T`` tokens holds ``E(T) = 2 * num_layers * num_kv_heads * head_dim * T`` elements. With a
codec at ``b`` bits per element (side information included, as ``kvinfo bench``/``eval``
measure it) and an uncompressed recent window of ``w`` tokens at ``window_bits`` (16 for
bfloat16), one sequence takes

    bytes(T) = 2 L H D * (max(T - w, 0) * b + min(T, w) * window_bits) / 8

and the largest batch at context ``T`` is ``floor((budget - weights) / bytes(T))``. The plain
bfloat16 cache is the row ``b = 16``. These are *estimates* from measured rates: they
assume the rate measured on the captured model holds at every length and for the named
geometry, and count neither activations nor allocator slack.

Examples
--------
>>> g = GEOMETRIES["llama-3-8b"]
>>> r = capacity_table(g, {"plain bf16": 16.0, "4-bit": 4.3}, budget_bytes=80e9,
...                    weights_bytes=16e9, contexts=[8192], window=128)
>>> r.rows[0]["max_batch"][0], r.rows[1]["max_batch"][0]
(59, 212)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .errors import KvinfoError

__all__ = [
    "Geometry",
    "GEOMETRIES",
    "CapacityInputError",
    "CapacityResult",
    "bytes_per_sequence",
    "capacity_table",
    "codec_rates_from_results",
    "DEFAULT_CONTEXTS",
]

DEFAULT_CONTEXTS = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


class CapacityInputError(KvinfoError):
    """A geometry, budget or rate that cannot be used for a capacity table."""


@dataclass(frozen=True)
class Geometry:
    """A model's KV-cache geometry (and, optionally, its weight bytes in bfloat16)."""

    name: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    weights_bytes: float | None = None

    @property
    def elements_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim

    def as_dict(self) -> dict:
        return {"name": self.name, "num_layers": self.num_layers,
                "num_kv_heads": self.num_kv_heads, "head_dim": self.head_dim,
                "weights_bytes": self.weights_bytes}

    @classmethod
    def parse(cls, text: str) -> Geometry:
        """A preset name (:data:`GEOMETRIES`) or ``"LAYERS,KV_HEADS,HEAD_DIM[,WEIGHTS_GB]"``."""
        if text in GEOMETRIES:
            return GEOMETRIES[text]
        parts = text.split(",")
        try:
            nums = [int(p) for p in parts[:3]]
            w = float(parts[3]) * 1e9 if len(parts) == 4 else None
        except ValueError:
            nums, w = [], None
        if len(parts) not in (3, 4) or len(nums) != 3 or min(nums) < 1:
            raise CapacityInputError(
                f"a geometry is one of {', '.join(GEOMETRIES)} or LAYERS,KV_HEADS,HEAD_DIM"
                f"[,WEIGHTS_GB] with positive integers; got {text!r}"
            )
        return cls(text, *nums, weights_bytes=w)


#: user geometries (published configs; weights in bfloat16)
GEOMETRIES = {
    "smollm2-135m": Geometry("smollm2-135m", 30, 3, 64, 2 * 134.5e6),
    "llama-3-8b": Geometry("llama-3-8b", 32, 8, 128, 2 * 8.03e9),
    "llama-3-70b": Geometry("llama-3-70b", 80, 8, 128, 2 * 70.6e9),
    "mistral-7b": Geometry("mistral-7b", 32, 8, 128, 2 * 7.24e9),
    "qwen2.5-7b": Geometry("qwen2.5-7b", 28, 4, 128, 2 * 7.62e9),
}


def bytes_per_sequence(geometry: Geometry, context: int, bits_per_element: float,
                       window: int = 0, window_bits: float = 16.0) -> float:
    """Cache bytes of one sequence of ``context`` tokens (see the module docstring)."""
    w = min(context, window)
    return geometry.elements_per_token * ((context - w) * bits_per_element
                                          + w * window_bits) / 8


@dataclass
class CapacityResult:
    """A capacity table: per codec, the largest batch at each context (an estimate)."""

    geometry: Geometry
    budget_bytes: float
    weights_bytes: float
    window: int
    window_bits: float
    contexts: list
    rows: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"geometry": self.geometry.as_dict(), "budget_bytes": self.budget_bytes,
                "weights_bytes": self.weights_bytes, "window": self.window,
                "window_bits": self.window_bits, "contexts": self.contexts,
                "rows": self.rows, "label": "estimate"}


def capacity_table(geometry: Geometry, rates: Mapping[str, float], *, budget_bytes: float,
                   weights_bytes: float | None = None,
                   contexts: Sequence[int] = DEFAULT_CONTEXTS, window: int = 128,
                   window_bits: float = 16.0) -> CapacityResult:
    """Largest batch per context for each codec's ``rates`` (label -> bits per element).

    Each row: ``label``, ``bits_per_element``, ``bytes_per_token`` (at the longest context,
    window included), ``max_batch`` (per context), ``max_tokens`` (batch x context at each
    context) and ``gain_vs_plain`` (``max_tokens`` over that of a plain bfloat16 cache at the
    longest context).
    """
    if weights_bytes is None:
        weights_bytes = geometry.weights_bytes or 0.0
    if not (budget_bytes > 0 and math.isfinite(budget_bytes)):
        raise CapacityInputError(f"the memory budget must be positive, got {budget_bytes!r}")
    if weights_bytes < 0 or weights_bytes >= budget_bytes:
        raise CapacityInputError(
            f"the weights ({weights_bytes / 1e9:.2f} GB) leave nothing of the budget "
            f"({budget_bytes / 1e9:.2f} GB) for the cache"
        )
    contexts = sorted({int(c) for c in contexts})
    if not contexts or contexts[0] < 1:
        raise CapacityInputError(f"contexts must be positive integers, got {contexts!r}")
    if isinstance(window, bool) or window < 0:
        raise CapacityInputError(f"window must be >= 0, got {window!r}")
    if not rates:
        raise CapacityInputError("no codec rates given")
    free = budget_bytes - weights_bytes
    res = CapacityResult(geometry, float(budget_bytes), float(weights_bytes), int(window),
                         float(window_bits), contexts)
    plain_tokens = free / bytes_per_sequence(geometry, contexts[-1], 16.0) * contexts[-1]
    for label, b in rates.items():
        if not (isinstance(b, int | float) and b > 0 and math.isfinite(b)):
            raise CapacityInputError(f"bits per element of {label!r} must be positive, got {b!r}")
        per = [bytes_per_sequence(geometry, T, b, window, window_bits) for T in contexts]
        batch = [int(free // p) for p in per]
        res.rows.append({
            "label": label, "bits_per_element": float(b),
            "bytes_per_token": per[-1] / contexts[-1],
            "max_batch": batch, "max_tokens": [n * T for n, T in zip(batch, contexts,
                                                                      strict=True)],
            "gain_vs_plain": (free / per[-1] * contexts[-1]) / plain_tokens,
        })
    return res


def codec_rates_from_results(docs: Sequence[dict]) -> dict[str, float]:
    """``label -> bits_per_element`` from ``run``/``overall`` records of results documents
    (bench or eval) that carry one, first occurrence of each codec kept."""
    from .codecs.labels import codec_label

    out: dict[str, float] = {}
    for doc in docs:
        for rec in doc.get("records", ()):
            b = rec.get("metrics", {}).get("bits_per_element")
            codec = rec.get("codec")
            if codec is None or b is None or rec.get("scope") not in ("run", "overall"):
                continue
            try:
                label = codec_label(codec)
            except (KvinfoError, KeyError, TypeError):
                label = str(codec.get("id"))
            out.setdefault(label, float(b))
    return out
