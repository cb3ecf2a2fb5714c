"""The capacity figure: largest batch against context per codec, within a memory budget."""

from __future__ import annotations

from pathlib import Path

__all__ = ["fig_capacity", "write_capacity_figure"]


def fig_capacity(result: dict):
    """Max batch (log scale) against context for every row of a
    :meth:`kvinfo.capacity.CapacityResult.as_dict`."""
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ctx = result["contexts"]
    for row in result["rows"]:
        ax.plot(ctx, [max(b, 0.5) for b in row["max_batch"]], marker="o",
                label=f"{row['label']} ({row['bits_per_element']:.2f} b/elem)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("largest batch that fits (estimate)")
    g = result["geometry"]
    free = (result["budget_bytes"] - result["weights_bytes"]) / 1e9
    ax.set_title(f"{g['name']}: {g['num_layers']} layers x {g['num_kv_heads']} KV heads x "
                 f"{g['head_dim']}; {free:.1f} GB for the cache, window {result['window']}",
                 fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_capacity_figure(result: dict, path) -> Path:
    """Draw :func:`fig_capacity` into ``path`` (PNG), atomically."""
    from ._figures import save_figure

    fig = fig_capacity(result)
    return save_figure(fig, path, dpi=110, fmt="png")
