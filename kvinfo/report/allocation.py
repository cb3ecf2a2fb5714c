"""Figures of an allocation: the plan over layers x heads, and quality against bits.

* :func:`plot_allocation` -- two heatmaps (keys, values) over layers x KV heads of the bits
  per element each slab's chosen setting measured on the calibration dump, annotated with
  the setting's label;
* :func:`plot_quality_vs_bits` -- measured KL against measured bits per element for plans
  and for the single settings of the same family (with bootstrap intervals when given).

Both write a ``.png`` or ``.svg`` file (matplotlib, Agg backend) and return its path.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .._paths import check_output_file, make_dirs
from ._figures import save_figure

__all__ = ["plot_allocation", "plot_quality_vs_bits"]


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _grids(plan: dict):
    g = plan["geometry"]
    grids = {k: np.full((g["num_layers"], g["num_kv_heads"]), np.nan) for k in ("keys", "values")}
    labels = {k: np.full(grids[k].shape, "", dtype=object) for k in grids}
    for r in plan.get("records", []):
        if r.get("scope") == "slab" and r.get("kind") in grids:
            m = r["metrics"]
            grids[r["kind"]][r["layer"], r["head"]] = m.get("bits_per_element", np.nan)
            labels[r["kind"]][r["layer"], r["head"]] = str(m.get("setting_label", ""))
    return grids, labels


def plot_allocation(plan: dict, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Draw a plan (:func:`kvinfo.allocation.allocate`) as heatmaps over layers x heads.

    Colour: bits per element of each slab's setting (a measurement on the calibration dump,
    side information included); text: the setting's label.
    """
    plt = _plt()
    path = check_output_file(path, "path")
    make_dirs(path.parent)
    grids, labels = _grids(plan)
    vals = np.concatenate([x[np.isfinite(x)] for x in grids.values()] or [np.zeros(1)])
    vmin, vmax = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 1.0)
    nl, nh = grids["keys"].shape
    fig, axes = plt.subplots(1, 2, figsize=(2.2 + 1.1 * nh * 2, 1.2 + 0.28 * nl),
                             squeeze=False)
    im = None
    for ax, kind in zip(axes[0], ("keys", "values"), strict=True):
        im = ax.imshow(grids[kind], aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax,
                       origin="lower")
        ax.set_title(f"{kind.capitalize()}")
        ax.set_xlabel("KV head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(nh))
        if nl * nh <= 400:
            for (i, j), lab in np.ndenumerate(labels[kind]):
                short = lab.replace(" bits", "b").replace("step ", "").replace(" dB", "")
                ax.text(j, i, short, ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(im, ax=axes[0].tolist(), label="bits per element (measurement)")
    p = plan.get("predicted", {})
    fig.suptitle(f"Allocation: {plan.get('family')}, "
                 f"{p.get('bits_per_element', float('nan')):.3f} bits per element")
    return save_figure(fig, path, dpi=dpi)


def plot_quality_vs_bits(points: list[dict], path: str | os.PathLike, *, dpi: int = 110,
                         title: str = "KL against bits: plans and single settings") -> Path:
    """KL (nats per token, a measurement) against bits per element (a measurement).

    ``points``: dicts with ``family``, ``kind`` (``"plan"`` or ``"single"``),
    ``bits_per_element``, ``kl_nats_per_token`` and optionally ``kl_ci`` (low, high) and
    ``label``. Single settings of one family are joined by a line; plans are stars.
    """
    plt = _plt()
    path = check_output_file(path, "path")
    make_dirs(path.parent)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    fams = sorted({p["family"] for p in points})
    cmap = plt.get_cmap("tab10")
    for i, fam in enumerate(fams):
        col = cmap(i % 10)
        for kind, marker, ls in (("single", "o", "-"), ("plan", "*", "none")):
            pts = sorted((p for p in points if p["family"] == fam and p["kind"] == kind),
                         key=lambda p: p["bits_per_element"])
            if not pts:
                continue
            x = [p["bits_per_element"] for p in pts]
            y = [p["kl_nats_per_token"] for p in pts]
            err = None
            if all(p.get("kl_ci") for p in pts):
                err = np.array([[yy - p["kl_ci"][0] for yy, p in zip(y, pts, strict=True)],
                                [p["kl_ci"][1] - yy for yy, p in zip(y, pts, strict=True)]])
                err = np.clip(err, 0, None)
            ax.errorbar(x, y, yerr=err, marker=marker, ls=ls, color=col,
                        ms=12 if kind == "plan" else 5, capsize=2,
                        label=f"{fam} {'plan' if kind == 'plan' else 'single setting'}")
    ax.set_yscale("log")
    ax.set_xlabel("bits per element (measurement, side information included)")
    ax.set_ylabel("KL, nats per token (measurement)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi)
