"""One aggregator for every engine: slab metrics -> layer, kind and overall metrics.

The rule for nulls (``docs/results-schema.md``, "Aggregates"): **an aggregate uses the
slabs where the value is defined, and records how many of how many it used.** A metric
is *applicable* in a slab when the slab's metrics have the key, and *defined* when its
value there is a number (not null, not NaN). The aggregate of a metric is computed over
its defined slabs only; it is null when no slab defines it. ``counts[name]`` is
``[num_defined, num_total]`` (``num_total``: the slabs where the metric is applicable);
for a grid metric (a list aligned with a grid, such as ``snr_db``) ``num_defined`` is a
list with one count per grid point. So a few slabs too small for a covariance never null
a whole layer, and a reader can see that the layer's bound rests on 3 of its 4 heads.

Examples
--------
>>> agg = aggregate_metrics([{"x": 1.0, "g": [1.0, None]}, {"x": None, "g": [3.0, 2.0]}])
>>> agg["x"], agg["g"].tolist(), agg["counts"]
(1.0, [2.0, 2.0], {'x': [1, 2], 'g': [[2, 1], 2]})
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import numpy as np

__all__ = ["aggregate_metrics", "is_defined", "null_reasons"]


def _is_num(v) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def is_defined(v) -> bool:
    """True for a number that is not NaN (the values an aggregate uses)."""
    return _is_num(v) and not (isinstance(v, float | np.floating) and math.isnan(v))


def _as_grid(v) -> list | None:
    if isinstance(v, np.ndarray):
        return v.tolist() if v.ndim == 1 else None
    if isinstance(v, list | tuple) and all(e is None or _is_num(e) for e in v):
        return list(v)
    return None


def aggregate_metrics(
    slabs: Sequence[dict],
    *,
    keys: Sequence[str] | None = None,
    skip: Collection[str] = (),
    sums: Collection[str] = (),
    weight: str | None = None,
    weighted: Collection[str] | None = None,
) -> dict:
    """Aggregate the metrics of a group of slabs by the rule for nulls (module docstring).

    Parameters
    ----------
    slabs : sequence of dict
        One metrics dict per slab.
    keys : sequence of str, optional
        The metrics to aggregate (default: every key of any slab, in first-seen order).
    skip : collection of str
        Metrics never aggregated (per-channel details, notes...).
    sums : collection of str
        Metrics aggregated as the sum over the defined slabs (counts, seconds).
    weight : str, optional
        A metric (e.g. ``num_elements``) whose value weights the means of ``weighted``.
    weighted : collection of str, optional
        The metrics averaged with ``weight`` (default: all, when ``weight`` is given).

    Returns
    -------
    dict
        ``num_slabs``; for each numeric scalar metric its sum or (weighted) mean over the
        slabs that define it, for each grid metric its per-point mean (NaN where no slab
        defines the point); and ``counts`` (``[num_defined, num_total]`` per metric).
        Metrics that are neither numbers nor grids of numbers are left out.
    """
    out: dict = {"num_slabs": len(slabs)}
    counts: dict = {}
    if keys is None:
        order: dict = {}
        for m in slabs:
            for k in m:
                order.setdefault(k, None)
        keys = list(order)
    skip = frozenset(skip)
    sums = frozenset(sums)
    for key in keys:
        if key in skip or key == "counts":
            continue
        present = [(i, m[key]) for i, m in enumerate(slabs) if key in m]
        if not present:
            continue
        w = None
        if weight is not None and (weighted is None or key in weighted):
            w = [float(slabs[i].get(weight) or 0.0) for i, _ in present]
        scalars = [v for _, v in present if v is not None]
        if scalars and all(isinstance(v, bool | np.bool_) for v in scalars):
            counts[key] = [len(scalars), len(present)]
            out[key] = float(np.mean(scalars))  # a flag: the fraction of slabs where it holds
            continue
        if all(_is_num(v) for v in scalars):
            ok = [(j, float(v)) for j, (_, v) in enumerate(present) if is_defined(v)]
            counts[key] = [len(ok), len(present)]
            if not ok:
                out[key] = None
            elif key in sums:
                out[key] = sum(v for _, v in ok)
                if all(isinstance(v, int | np.integer) for _, v in present if v is not None):
                    out[key] = int(out[key])
            else:
                out[key] = _mean([v for _, v in ok], None if w is None else [w[j] for j, _ in ok])
            continue
        grids = [_as_grid(v) for _, v in present]
        if any(g is None for g in grids) or len({len(g) for g in grids}) != 1:
            continue
        n_pts = len(grids[0])
        agg = np.full(n_pts, np.nan)
        num_def = []
        for p in range(n_pts):
            ok = [(j, float(g[p])) for j, g in enumerate(grids) if is_defined(g[p])]
            num_def.append(len(ok))
            if ok:
                agg[p] = _mean([v for _, v in ok], None if w is None else [w[j] for j, _ in ok])
        out[key] = agg
        counts[key] = [num_def, len(present)]
    out["counts"] = counts
    return out


def _mean(vals: list[float], w: list[float] | None) -> float:
    if w is None or sum(w) <= 0:
        return float(np.mean(vals))
    return float(np.dot(w, vals) / np.sum(w))


def null_reasons(slabs: Sequence[dict], aggregate: dict) -> dict:
    """Why metrics of an aggregate are null: for each metric that no slab defines (every
    grid point, for a grid) and that some slab's ``null_reasons`` explains, that reason."""
    out: dict = {}
    for key, (num_def, _total) in aggregate.get("counts", {}).items():
        none = num_def == 0 if isinstance(num_def, int) else not any(num_def)
        if not none:
            continue
        for m in slabs:
            reason = (m.get("null_reasons") or {}).get(key)
            if reason:
                out[key] = reason
                break
    return out
