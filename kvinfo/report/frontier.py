"""The rematerialization frontier: stored bits per token against recompute FLOPs per token.

One point per codec and setting of ``kvinfo eval`` results: y is ``bits_per_token``
(measured, log scale), x is ``remat_flops_per_token`` (the FLOPs estimate of
:func:`kvinfo.remat.flops_per_token`; K/V codecs need none and sit at 0 on the symlog
axis), the colour is the measured KL divergence (log scale; KL exactly 0, as for
``tokens``, is drawn as a star). The dashed line is the uncompressed 16-bit K/V cache. This
is the picture of where the "millions of times" lives and what it costs.
"""

from __future__ import annotations

import math

__all__ = ["fig_frontier", "frontier_points", "TITLE"]

TITLE = "Rematerialization frontier: bits per token against FLOPs per token"


def _num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def frontier_points(data) -> list[dict]:
    """``[{"label", "bits_per_token", "flops_per_token", "kl"}]`` of the eval records."""
    out = []
    for r in data.quality:
        m = r["metrics"]
        if not _num(m.get("bits_per_token")) or m["bits_per_token"] <= 0:
            continue
        fl = m.get("remat_flops_per_token")
        out.append({"label": data.label(r["codec"]), "bits_per_token": m["bits_per_token"],
                    "flops_per_token": fl if _num(fl) else 0.0,
                    "kl": m.get("kl_nats_per_token"),
                    "bits_per_element": m.get("bits_per_element")})
    return out


def fig_frontier(data):
    """The frontier figure (matplotlib Figure), or None without eval records."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    pts = frontier_points(data)
    if not pts:
        return None
    kls = [p["kl"] for p in pts if _num(p["kl"]) and p["kl"] > 0]
    lo = min(kls) if kls else 1e-6
    hi = max(kls) if kls else 1.0
    norm = LogNorm(vmin=lo, vmax=max(hi, lo * 10))
    fig, ax = plt.subplots(figsize=(9.5, 5.8))
    sc = None
    for p in pts:
        kl = p["kl"] if _num(p["kl"]) else None
        zero = kl is not None and kl <= 0
        c = norm(lo) if zero or kl is None else norm(kl)
        sc = ax.scatter([p["flops_per_token"]], [p["bits_per_token"]], c=[plt.cm.viridis(c)],
                        marker="*" if zero else "o", s=160 if zero else 50,
                        edgecolors="0.2", linewidths=0.6, zorder=3)
        ax.annotate(p["label"], (p["flops_per_token"], p["bits_per_token"]), fontsize=6.5,
                    xytext=(4, 3), textcoords="offset points")
    ref = [p["bits_per_token"] / p["bits_per_element"] * 16 for p in pts
           if _num(p["bits_per_element"]) and p["bits_per_element"] > 0]
    if ref:
        ax.axhline(ref[0], ls="--", color="0.4", lw=1)
        ax.annotate("16-bit K/V cache", (0, ref[0]), fontsize=7, xytext=(4, -10),
                    textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xscale("symlog", linthresh=1e5)
    ax.set_xlabel("rematerialization FLOPs per cached token (estimate; symlog)")
    ax.set_ylabel("stored bits per cached token (measured; log)")
    ax.grid(True, which="both", alpha=0.3)
    if sc is not None:
        mappable = plt.cm.ScalarMappable(norm=norm, cmap="viridis")
        fig.colorbar(mappable, ax=ax, label="KL(baseline ‖ compressed), nats per token")
    ax.set_title(TITLE, fontsize=10)
    fig.tight_layout()
    return fig
