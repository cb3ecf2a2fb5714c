"""The needle-retrieval heatmap: depth x length per run (baseline, then each codec).

Reads a ``kvinfo eval --task needle`` results document (its ``needle`` records carry the
mean answer log-likelihood per depth at each length) and draws one panel per run: the mean
teacher-forced log-likelihood of the answer in nats (measured), with the exact-match rate
written in each cell where the baseline's rate at that length is at least 50 %.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["needle_grids", "fig_needle_heatmap", "write_needle_heatmap"]


def needle_grids(doc: dict) -> list[dict]:
    """``[{"label", "lengths", "depths", "logprob": (depths, lengths), "exact_match": ...}]``
    per run, from the ``task: "needle"`` records of ``doc`` (empty if there are none)."""
    from ..codecs.labels import codec_label

    runs: dict = {}
    order = []
    for rec in doc.get("records", ()):
        m = rec.get("metrics", {})
        if m.get("task") != "needle":
            continue
        codec = rec.get("codec")
        key = "baseline" if codec is None else codec_label(codec)
        if key not in runs:
            runs[key] = {}
            order.append(key)
        runs[key][int(m["context"])] = m
    out = []
    for key in order:
        by_len = runs[key]
        lengths = sorted(by_len)
        depths = list(by_len[lengths[0]]["depths"])
        lp = np.array([by_len[L]["answer_logprob_by_depth"] for L in lengths], float).T
        em = np.array([[np.nan if v is None else v for v in by_len[L]["exact_match_by_depth"]]
                       for L in lengths], float).T
        shown = [by_len[L]["exact_match"] is not None for L in lengths]
        out.append({"label": "baseline (uncompressed)" if key == "baseline" else key,
                    "lengths": lengths, "depths": depths, "logprob": lp, "exact_match": em,
                    "em_shown": shown,
                    "baseline_success": [by_len[L]["baseline_success_rate"] for L in lengths]})
    return out


def fig_needle_heatmap(doc: dict):
    """The figure (matplotlib), or None when ``doc`` has no needle records."""
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    grids = needle_grids(doc)
    if not grids:
        return None
    lo = min(float(np.nanmin(g["logprob"])) for g in grids)
    fig, axes = plt.subplots(1, len(grids), figsize=(3.2 * len(grids) + 1, 3.6), squeeze=False)
    im = None
    for ax, g in zip(axes[0], grids, strict=True):
        im = ax.imshow(g["logprob"], aspect="auto", cmap="viridis", vmin=min(lo, 0), vmax=0,
                       origin="upper")
        ax.set_xticks(range(len(g["lengths"])), [str(L) for L in g["lengths"]])
        ax.set_yticks(range(len(g["depths"])), [f"{100 * d:.0f}%" for d in g["depths"]])
        ax.set_xlabel("prompt length (tokens)")
        ax.set_title(g["label"], fontsize=8)
        for j, shown in enumerate(g["em_shown"]):
            if not shown:
                continue
            for i in range(len(g["depths"])):
                v = g["exact_match"][i, j]
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.0%}", ha="center", va="center", color="w", fontsize=7)
    axes[0][0].set_ylabel("needle depth")
    fig.colorbar(im, ax=axes[0].tolist(), label="answer log-likelihood (nats, measured)")
    fig.suptitle("needle retrieval: answer log-likelihood; exact match where the baseline "
                 "retrieves >= 50 %", fontsize=9)
    return fig


def write_needle_heatmap(doc: dict, path) -> Path | None:
    """Draw :func:`fig_needle_heatmap` into ``path`` (PNG); None when there is nothing to
    draw."""
    from ._figures import save_figure

    fig = fig_needle_heatmap(doc)
    if fig is None:
        return None
    return save_figure(fig, path, dpi=110, fmt="png")
