"""The report's figures (matplotlib, Agg backend). Each function returns a Figure or None.

Every figure function takes a :class:`~kvinfo.report._data.ReportData` and draws only what
the data holds; it returns None when there is nothing to draw (the report says so).
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

import numpy as np

from .._paths import output_error

__all__ = [
    "atomic_output",
    "save_figure",
    "family_colors",
    "fig_rate_distortion",
    "fig_analysis_heatmaps",
    "fig_gap_heatmaps",
    "fig_pervector_histograms",
    "fig_throughput",
    "fig_quality",
]

_KIND_TITLE = {"keys": "Keys", "values": "Values", "queries": "Queries",
               "keys_pre_rope": "Keys (pre-RoPE)"}
_MARKERS = "osD^vP*Xh<>p"


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def atomic_output(path, write, *args, **kwargs) -> Path:
    """``write(tmp, *args, **kwargs)`` to a temporary name beside ``path``, then rename; after
    a failure the temporary is removed (an OSError becomes ``OutputPathError``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp, *args, **kwargs)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise output_error(path, exc) from None
        raise
    return path


def save_figure(fig, path, dpi: int = 110, fmt: str | None = None) -> Path:
    """Save ``fig`` to ``path`` atomically in ``fmt`` (default: from the suffix, PNG without
    one), create its folder, and close the figure."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_output(path, fig.savefig, dpi=dpi,
                             format=fmt or path.suffix[1:].lower() or "png")
    finally:
        _plt().close(fig)


def family_colors(data) -> dict:
    """One stable colour (and marker) per codec family, shared by every figure."""
    plt = _plt()
    fams = data.families()
    cmap = plt.get_cmap("tab10" if len(fams) <= 10 else "tab20")
    return {
        f: (cmap(i % cmap.N), _MARKERS[i % len(_MARKERS)]) for i, f in enumerate(fams)
    }


def _num(v):
    return v is not None and isinstance(v, int | float) and math.isfinite(v)


def _grid_at(values, index):
    if values is None or index >= len(values) or values[index] is None:
        return np.nan
    return float(values[index])


# --------------------------------------------------------------------------------------
# 1. rate-distortion
# --------------------------------------------------------------------------------------


def _band_from_analyze(data, kind):
    recs = data.records("analyze", "kind", kind=kind)
    if not recs:
        return None
    m = recs[0]["metrics"]
    snr = m.get("snr_db")
    if not snr:
        return None
    snr = np.asarray(snr, float)

    def grid(key):
        return np.array([_grid_at(m.get(key), i) for i in range(snr.size)])

    ri = grid("rd_gaussian_independent_bits_per_element")
    low, up = grid("rd_lower_bound_bits_per_element"), grid("rd_upper_bound_bits_per_element")
    if np.any(np.isfinite(low)) and np.any(np.isfinite(up)):
        # the bounds that hold: [lower curve, best achievable rate]
        return snr, low, up, ri, "kvinfo analyze bounds (mean over slabs at each per-slab SNR)"
    rg, slb = grid("rd_gaussian_bits_per_element"), grid("slb_estimate_bits_per_element")
    return snr, slb, rg, ri, "kvinfo analyze (mean over slabs at each per-slab SNR)"


def _gaussian_from_analyze(data, kind):
    """The Gaussian R(D) grid of the kind's analyze record (drawn next to the band)."""
    recs = data.records("analyze", "kind", kind=kind)
    m = recs[0]["metrics"] if recs else {}
    snr = m.get("snr_db") or []
    return np.array([_grid_at(m.get("rd_gaussian_bits_per_element"), i) for i in range(len(snr))])


def _band_from_bench(data, kind):
    pts = []
    for r in data.records("bench", "kind", kind=kind):
        m = r["metrics"]
        if _num(m.get("snr_db")) and _num(m.get("rd_gaussian_bits_per_element")):
            slb = m.get("slb_estimate_bits_per_element")
            pts.append(
                (m["snr_db"], slb if _num(slb) else np.nan, m["rd_gaussian_bits_per_element"],
                 m.get("rd_gaussian_independent_bits_per_element") or np.nan)
            )
    if len(pts) < 2:
        return None
    pts.sort()
    a = np.array(pts, float)
    return a[:, 0], a[:, 1], a[:, 2], a[:, 3], "bench (bounds at each codec's distortion)"


def fig_rate_distortion(data, colors):
    """Bits per element against SNR, one panel per kind (keys, values), with the bound band."""
    plt = _plt()
    kinds = [k for k in ("keys", "values") if k in data.kinds()]
    if not kinds:
        return None
    have = False
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.2 * len(kinds), 5.0), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        band = _band_from_analyze(data, kind) or _band_from_bench(data, kind)
        if band is not None:
            snr, lo, hi, ri, where = band
            ok = np.isfinite(lo) & np.isfinite(hi)
            if where.startswith("kvinfo analyze bounds"):
                ax.fill_between(
                    snr[ok], lo[ok], hi[ok], color="0.6", alpha=0.35, lw=0,
                    label="lower curve to best achievable rate\n(R(D) lies inside when the data "
                    "fit\none of the lower curve's models)",
                )
                ax.plot(snr, hi, color="0.15", lw=1.6, label="best achievable rate (upper bound)")
                rg = _gaussian_from_analyze(data, kind)
                if rg.size == snr.size:
                    ax.plot(snr, rg, color="0.35", lw=1.0, label="Gaussian R(D) (upper bound)")
                ax.plot(snr, lo, color="0.15", lw=1.2, ls="--",
                        label="lower curve (a lower bound under its models)")
            else:
                ax.fill_between(
                    snr[ok], lo[ok], hi[ok], color="0.6", alpha=0.35, lw=0,
                    label="between the SLB estimate and the Gaussian R(D)\n(the estimate "
                    "can exceed R(D))",
                )
                ax.plot(snr, hi, color="0.15", lw=1.6, label="Gaussian R(D) (upper bound)")
                ax.plot(snr, lo, color="0.15", lw=1.2, ls="--",
                        label="Shannon lower bound (estimate, not a bound)")
            if np.any(np.isfinite(ri)):
                ax.plot(snr, ri, color="0.45", lw=1.0, ls=":",
                        label="Gaussian R(D), channels coded independently")
            have = True
        fams: dict = {}
        for r in data.records("bench", "kind", kind=kind):
            m = r["metrics"]
            if not (_num(m.get("snr_db")) and _num(m.get("bits_per_element"))):
                continue
            fams.setdefault(data.family(r["codec"]), []).append(
                (m["snr_db"], m["bits_per_element"])
            )
        for fam, pts in fams.items():
            pts.sort()
            x, y = zip(*pts, strict=True)
            c, mk = colors.get(fam, ("C0", "o"))
            ax.plot(x, y, marker=mk, color=c, lw=1.3, ms=6, label=fam)
            have = True
        ax.set_title(f"{_KIND_TITLE.get(kind, kind)}: rate against distortion")
        ax.set_xlabel("SNR (dB) = 10·log10(variance / MSE), per slab")
        ax.set_ylabel("bits per element (side information included)")
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    if not have:
        plt.close(fig)
        return None
    handles, labels = {}, []
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    ncol = 3 if len(labels) > 6 else 2
    fig.suptitle("Codecs against the rate-distortion bounds (mean over the benched slabs)",
                 fontsize=12)
    fig.tight_layout()
    nrows = math.ceil(len(labels) / ncol)
    bottom = min(0.45, 0.035 * nrows + 0.05)
    fig.subplots_adjust(bottom=bottom + 0.06)
    fig.set_figheight(5.0 / (1 - bottom))
    fig.legend([handles[k] for k in labels], labels, loc="lower center", ncol=ncol,
               fontsize=8, frameon=False)
    return fig


# --------------------------------------------------------------------------------------
# 2. heatmaps over layers x heads
# --------------------------------------------------------------------------------------


def _layer_head_grid(records, key, grid_index=None):
    layers = sorted({r["layer"] for r in records})
    heads = sorted({r["head"] for r in records})
    if not layers or not heads:
        return None
    z = np.full((len(layers), len(heads)), np.nan)
    for r in records:
        v = r["metrics"].get(key)
        if grid_index is not None:
            v = _grid_at(v, grid_index)
        if _num(v):
            z[layers.index(r["layer"]), heads.index(r["head"])] = v
    if not np.any(np.isfinite(z)):
        return None
    return layers, heads, z


def _heatmap(ax, fig, grid, title, cmap="viridis", vmin=None, vmax=None, cbar_label=""):
    layers, heads, z = grid
    im = ax.imshow(
        np.ma.masked_invalid(z), aspect="auto", origin="lower", cmap=cmap, vmin=vmin, vmax=vmax,
        interpolation="nearest",
    )
    ax.set_title(title, fontsize=9)
    ax.set_xticks(range(len(heads)), [str(h) for h in heads], fontsize=7)
    step = max(1, len(layers) // 10)
    ax.set_yticks(range(0, len(layers), step), [str(v) for v in layers[::step]], fontsize=7)
    ax.set_xlabel("KV head", fontsize=8)
    ax.set_ylabel("layer", fontsize=8)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.ax.tick_params(labelsize=7)
    cb.set_label(cbar_label, fontsize=7)
    return im


def _snr_index(settings, target=20.0):
    snr = settings.get("snr_db") or []
    if not snr:
        return None, None
    i = int(np.argmin(np.abs(np.asarray(snr, float) - target)))
    return i, float(snr[i])


def fig_analysis_heatmaps(data):
    """Lossless entropy, transform gain and prediction gain per (layer, head), per kind."""
    plt = _plt()
    kinds = [k for k in ("keys", "values") if k in data.kinds()]
    src = "analyze" if data.analyze else "bench_ref"
    gi, snr = _snr_index(data.analyze_settings)
    panels = [("h0_pooled_bits_per_element", None,
               "lossless: order-0 entropy of the stored values", "bits/element", "viridis")]
    if src == "analyze" and gi is not None:
        panels += [
            ("transform_coding_gain_bits_per_element", gi,
             f"transform (decorrelation) gain at {snr:g} dB", "bits/element", "magma"),
            ("temporal_prediction_gain_bits_per_element", gi,
             f"lag-1 prediction gain at {snr:g} dB", "bits/element", "cividis"),
        ]
    grids = []
    for kind in kinds:
        recs = [r for r in getattr(data, src) if r["scope"] == "slab" and r["kind"] == kind]
        row = [_layer_head_grid(recs, key, idx) for key, idx, *_ in panels]
        grids.append(row)
    if not any(g is not None for row in grids for g in row):
        return None
    fig, axes = plt.subplots(
        len(kinds), len(panels), figsize=(3.6 * len(panels) + 0.5, 3.4 * len(kinds) + 0.6),
        squeeze=False,
    )
    for i, kind in enumerate(kinds):
        for j, (_key, _, title, unit, cmap) in enumerate(panels):
            ax = axes[i][j]
            g = grids[i][j]
            if g is None:
                ax.set_axis_off()
                ax.text(0.5, 0.5, "not measured", ha="center", va="center")
                continue
            _heatmap(ax, fig, g, f"{_KIND_TITLE.get(kind, kind)}: {title}", cmap=cmap,
                     cbar_label=unit)
    fig.suptitle("Per (layer, head): lossless entropy, transform gain and prediction gain",
                 fontsize=11)
    fig.tight_layout()
    return fig


def fig_gap_heatmaps(data, bound="slb_estimate"):
    """Each codec's gap to a bound (bits per element) per (layer, head), keys and values."""
    plt = _plt()
    kinds = [k for k in ("keys", "values") if k in data.kinds()]
    key = f"gap_to_{bound}_bits_per_element"
    panels = []
    for cfg in data.codecs.values():
        for kind in kinds:
            recs = data.records("bench", "slab", kind=kind, codec=cfg)
            g = _layer_head_grid(recs, key)
            if g is not None:
                panels.append((cfg, kind, g))
    if not panels:
        return None
    allv = np.concatenate([g[2][np.isfinite(g[2])] for _, _, g in panels])
    vmin, vmax = float(np.min(allv)), float(np.max(allv))
    if vmin < 0 < vmax:
        import matplotlib.colors as mcolors

        norm = mcolors.TwoSlopeNorm(vmin=vmin, vcenter=0.0, vmax=vmax)
        cmap = "RdBu_r"
    else:
        norm = None
        cmap = "Reds" if vmin >= 0 else "Blues_r"
    ncols = min(len(panels), 6)
    nrows = math.ceil(len(panels) / ncols)
    nl = len(panels[0][2][0])
    h = min(max(1.9, 0.09 * nl + 1.4), 4.5)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.35 * ncols + 1.2, h * nrows + 0.9),
                             squeeze=False)
    im = None
    for idx, (cfg, kind, (layers, heads, z)) in enumerate(panels):
        ax = axes[idx // ncols][idx % ncols]
        im = ax.imshow(np.ma.masked_invalid(z), aspect="auto", origin="lower", cmap=cmap,
                       norm=norm, vmin=None if norm else vmin, vmax=None if norm else vmax,
                       interpolation="nearest")
        title = f"{kind[0].upper()}: {data.label(cfg)}"
        ax.set_title("\n".join(textwrap.wrap(title, 24)), fontsize=7.5)
        ax.set_xticks(range(len(heads)), [str(v) for v in heads], fontsize=6.5)
        step = max(1, len(layers) // 8)
        ax.set_yticks(range(0, len(layers), step), [str(v) for v in layers[::step]],
                      fontsize=6.5)
        ax.set_xlabel("KV head", fontsize=7)
        if idx % ncols == 0:
            ax.set_ylabel("layer", fontsize=7)
    for idx in range(len(panels), nrows * ncols):
        axes[idx // ncols][idx % ncols].set_axis_off()
    what = {"slb_estimate": "Shannon lower bound estimate",
            "rd_gaussian": "Gaussian R(D)"}.get(bound, bound)
    fig.suptitle(f"Gap of each codec to the {what} at its own distortion "
                 "(bits per element; K = keys, V = values)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.92, 1))
    cax = fig.add_axes((0.935, 0.12, 0.015, 0.72))
    cb = fig.colorbar(im, cax=cax)
    cb.set_label("bits per element above the bound", fontsize=8)
    return fig


# --------------------------------------------------------------------------------------
# 3. per-vector code lengths
# --------------------------------------------------------------------------------------


def fig_pervector_histograms(data):
    """Histogram of the per-vector Shannon code lengths, with the most expensive tokens."""
    plt = _plt()
    recs = [
        r for r in data.bench_ref
        if r["scope"] == "kind" and r["metrics"].get("pervector_histogram_counts")
    ]
    if not recs:
        return None
    order = {"keys": 0, "values": 1}
    recs.sort(key=lambda r: order.get(r["kind"], 9))
    fig, axes = plt.subplots(1, len(recs), figsize=(6.2 * len(recs), 5.6), squeeze=False)
    for ax, r in zip(axes[0], recs, strict=True):
        m = r["metrics"]
        counts = np.asarray(m["pervector_histogram_counts"], float)
        edges = np.asarray(m["pervector_histogram_bin_edges_bits_per_element"], float)
        ax.stairs(counts, edges, fill=True, color="C0", alpha=0.55, label="vectors (tokens)")
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.7)
        top = m.get("pervector_top_tokens") or []
        trans = ax.get_xaxis_transform()
        for j, t in enumerate(top):
            b = t["bits_per_element"]
            tid = "" if t.get("token_id") is None else f", id {t['token_id']}"
            ax.axvline(b, color="C3", lw=1.0, alpha=0.8,
                       label=f"{j + 1}: token #{t['token_index']} (seq {t['sequence']}, "
                       f"pos {t['position']}{tid}) {b:.2f}")
            ax.text(b, 1.0 - 0.06 * (j % 3), str(j + 1), transform=trans, color="C3",
                    fontsize=7.5, ha="center", va="top",
                    bbox={"boxstyle": "round,pad=0.12", "fc": "white", "ec": "none"})
        fb = m.get("pervector_first_token_bits_per_element")
        if _num(fb):
            pct = m.get("pervector_first_token_percentile")
            ax.axvline(fb, color="k", ls="--", lw=1.0,
                       label=f"first token of each sequence (mean; pctl {pct:.1f})"
                       if _num(pct) else "first token of each sequence (mean)")
        p50 = m.get("pervector_p50_bits_per_element")
        if _num(p50):
            ax.axvline(p50, color="0.4", ls=":", lw=1.0, label="median vector")
        snr = m.get("pervector_snr_db")
        ax.set_title(f"{_KIND_TITLE.get(r['kind'], r['kind'])}: per-vector code length at "
                     f"{snr:g} dB (mean over layers and heads)", fontsize=9.5)
        ax.set_xlabel("ideal code length (bits per element) under the Gaussian model")
        ax.set_ylabel("number of tokens (log scale)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2,
                  frameon=False, title="red lines: the most expensive tokens", title_fontsize=7)
    fig.suptitle("Which tokens cost the most bits (Shannon code lengths, an estimate)",
                 fontsize=11)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# 4. bits against decode throughput
# --------------------------------------------------------------------------------------


def fig_throughput(data, colors):
    """Bits per element against decode throughput: the entropy coder alone, and the codec."""
    plt = _plt()
    recs = data.records("bench", "overall")
    if not recs:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.8), squeeze=False)
    panels = (
        ("coder_decode_msymbols_per_s", "gpu_coder_decode_msymbols_per_s",
         "coded_blob_bits_per_element",
         "entropy coder alone: decode speed (M symbols/s, log scale)",
         "coded bits per element (coder stream only)",
         "Entropy coders on the codecs' own symbols"),
        ("decode_mbytes_per_s", "gpu_decode_mbytes_per_s", "bits_per_element",
         "whole codec: decode speed (MB/s of KV, log scale)",
         "bits per element (side information included)",
         "Whole codecs (decode + dequantize)"),
    )
    any_gpu = False
    for ax, (cpu_k, gpu_k, bits_k, xl, yl, title) in zip(axes[0], panels, strict=True):
        labelled = set()
        for r in recs:
            m = r["metrics"]
            fam = data.family(r["codec"])
            c, mk = colors.get(fam, ("C0", "o"))
            y = m.get(bits_k)
            if not _num(y):
                continue
            label = fam if fam not in labelled else None
            if _num(m.get(cpu_k)):
                ax.scatter(m[cpu_k], y, color=c, marker=mk, s=42, label=label, zorder=3)
                labelled.add(fam)
            if _num(m.get(gpu_k)):
                any_gpu = True
                ax.scatter(m[gpu_k], y, facecolors="none", edgecolors=c, marker=mk, s=60,
                           zorder=3)
                if _num(m.get(cpu_k)):
                    ax.plot([m[cpu_k], m[gpu_k]], [y, y], color=c, lw=0.7, alpha=0.5)
        ax.set_xscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        if labelled:
            ax.legend(fontsize=7, loc="best")
    gpu = data.bench_settings.get("gpu") or {}
    note = (f"filled: CPU ({data.bench_settings.get('cpu_threads') or '?'} threads); hollow: GPU "
            f"({gpu.get('device')})" if any_gpu else
            f"CPU only ({gpu.get('reason') or 'no GPU measurement'}); "
            f"{data.bench_settings.get('cpu_threads') or '?'} threads")
    fig.suptitle(f"Bits against decode throughput, overall means. {note}", fontsize=10.5)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# 5. bits against model quality
# --------------------------------------------------------------------------------------


def fig_quality(data, colors):
    """Perplexity increase and KL divergence against bits per element (kvinfo eval)."""
    plt = _plt()
    pts: dict = {}
    for r in data.quality:
        m = r["metrics"]
        if not (_num(m.get("bits_per_element")) and _num(m.get("perplexity_increase_pct"))):
            continue
        pts.setdefault(data.family(r["codec"]), []).append(
            (m["bits_per_element"], m["perplexity_increase_pct"], m.get("kl_nats_per_token"))
        )
    if not pts:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.8), squeeze=False)
    ax1, ax2 = axes[0]
    for fam, p in pts.items():
        p.sort()
        c, mk = colors.get(fam, ("C0", "o"))
        x = [v[0] for v in p]
        ax1.plot(x, [v[1] for v in p], marker=mk, color=c, label=fam, lw=1.2)
        kl = [(v[0], v[2]) for v in p if _num(v[2]) and v[2] > 0]
        if kl:
            ax2.plot(*zip(*kl, strict=True), marker=mk, color=c, label=fam, lw=1.2)
    ax1.set_yscale("symlog", linthresh=1.0)
    ax1.axhline(0, color="0.3", lw=0.8)
    ax1.set_xlabel("bits per element of the compressed cache (side information included)")
    ax1.set_ylabel("perplexity increase over the uncompressed model (%)")
    base = data.baseline or {}
    bp = base.get("perplexity")
    ax1.set_title("Perplexity cost" + (f" (baseline perplexity {bp:.3f})" if _num(bp) else ""),
                  fontsize=10)
    ax2.set_yscale("log")
    ax2.set_xlabel("bits per element of the compressed cache (side information included)")
    ax2.set_ylabel("mean KL(baseline ‖ compressed), nats per token")
    ax2.set_title("Next-token distribution shift", fontsize=10)
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7.5)
    fig.suptitle("Model quality with a compressed KV cache (kvinfo eval, teacher-forced)",
                 fontsize=11)
    fig.tight_layout()
    return fig
