"""The gap-decomposition figure: each codec's ``bits - R_G(D)`` split into its named terms.

One panel per kind (keys, values), one stacked bar per codec, from the bench ``kind``
records (element-weighted means over the benched slabs). Positive terms stack upwards from
0, negative ones (a coder whose contexts beat the order-0 model, a residual below 0 when the
source is easier than the Gaussian model) downwards; a black tick marks the total gap. The
terms and their formulas: ``docs/analysis.md``, "Gap decomposition".
"""

from __future__ import annotations

import textwrap

import numpy as np

__all__ = ["fig_gap_decomposition", "TERM_LABELS"]

#: record metric -> legend label, in stacking order
TERM_LABELS = {
    "gap_side_information_bits_per_element": "side information",
    "gap_coder_overhead_bits_per_element": "coder overhead",
    "gap_modelling_bits_per_element": "modelling (pooled tables)",
    "gap_decorrelation_bits_per_element": "decorrelation",
    "gap_allocation_bits_per_element": "distortion allocation",
    "gap_scalar_quantizer_bits_per_element": "scalar quantizer",
    "gap_residual_bits_per_element": "residual",
}
_COLORS = ("#4c72b0", "#dd8452", "#937860", "#55a868", "#8172b3", "#c44e52", "#b0b0b0")


def _bars(data, kind):
    out = []
    for cfg in data.codecs.values():
        recs = data.records("bench", "kind", kind=kind, codec=cfg)
        if not recs:
            continue
        m = recs[0]["metrics"]
        vals = [m.get(k) for k in TERM_LABELS]
        total = m.get("gap_to_rd_gaussian_bits_per_element")
        if total is None or any(v is None for v in vals):
            continue
        out.append((data.label(cfg), np.asarray(vals, float), float(total)))
    return out


def fig_gap_decomposition(data):
    """Stacked bars of the gap terms per codec, keys and values; None without the terms."""
    from ._figures import _plt

    plt = _plt()
    kinds = [k for k in ("keys", "values") if k in data.kinds()]
    panels = [(k, b) for k in kinds if (b := _bars(data, k))]
    if not panels:
        return None
    nmax = max(len(b) for _, b in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.5, 0.75 * nmax + 2.2) * len(panels),
                                                      4.6), squeeze=False)
    for ax, (kind, bars) in zip(axes[0], panels, strict=True):
        x = np.arange(len(bars))
        up = np.zeros(len(bars))
        down = np.zeros(len(bars))
        for j, (name, label) in enumerate(TERM_LABELS.items()):
            v = np.array([b[1][j] for b in bars])
            pos, neg = np.where(v > 0, v, 0.0), np.where(v < 0, v, 0.0)
            ax.bar(x, pos, 0.62, bottom=up, color=_COLORS[j], label=label, edgecolor="white",
                   linewidth=0.4)
            ax.bar(x, neg, 0.62, bottom=down, color=_COLORS[j], edgecolor="white",
                   linewidth=0.4, hatch="//" if name.endswith("residual_bits_per_element")
                   else None)
            up += pos
            down += neg
        ax.scatter(x, [b[2] for b in bars], marker="_", s=400, color="black", zorder=5,
                   label="total: bits - R_G(D)")
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_xticks(x, ["\n".join(textwrap.wrap(b[0], 16)) for b in bars], fontsize=6.5,
                      rotation=0)
        ax.set_ylabel("bits per element above the Gaussian R(D)", fontsize=8)
        ax.set_title(f"{kind.capitalize()}: where each codec's bits go", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig
