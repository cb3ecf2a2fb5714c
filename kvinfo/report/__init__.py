"""Figures and a report page from kvinfo results JSON files (analyze, bench, eval).

:func:`build_report` reads any number of results documents and writes, into one folder:

* ``rate_distortion.{png,svg}`` -- bits per element against SNR, one panel for keys and one
  for values; the band between the lower curve and the best achievable rate (from analyze
  results; else the SLB estimate and the Gaussian R(D)) is shaded, each codec family is a
  curve;
* ``heatmaps_analysis.{png,svg}`` -- per (layer, head): lossless entropy, transform gain and
  prediction gain;
* ``heatmaps_gap.{png,svg}`` -- per (layer, head): each codec's gap to the SLB estimate;
* ``gap_decomposition.{png,svg}`` -- each codec's gap to the Gaussian R(D) split into named
  terms (side information, coder overhead, modelling, decorrelation, distortion allocation,
  scalar quantizer, residual), stacked bars, keys and values;
* ``pervector_histograms.{png,svg}`` -- per-vector code lengths with the most expensive tokens;
* ``throughput.{png,svg}`` -- bits against decode throughput (coders and whole codecs; CPU,
  and GPU when measured);
* ``quality.{png,svg}`` -- perplexity increase and KL against bits (when eval results exist);
* ``frontier.{png,svg}`` -- stored bits per token against rematerialization FLOPs per token,
  coloured by KL (eval results; :mod:`kvinfo.report.frontier`);
* ``report.md`` and a self-contained ``report.html`` (images embedded) with the summary
  tables and a statement of which numbers are bounds and which are estimates.

Figures are drawn with matplotlib's Agg backend. A figure whose data is absent (no analyze
file, no eval results) is listed as not drawn, with the reason.

Examples
--------
>>> import tempfile, pathlib
>>> from kvinfo.dumps import write_synthetic_dump
>>> from kvinfo.bench import bench_dump
>>> from kvinfo.report import build_report
>>> tmp = pathlib.Path(tempfile.mkdtemp())
>>> dump = write_synthetic_dump(tmp / "d.h5", num_layers=1, num_tokens=128)
>>> doc = bench_dump(dump, [{"id": "uniform", "bits": 4}], knn_samples=100, use_gpu=False)
>>> out = build_report([doc], tmp / "report")
>>> sorted(p.name for p in out["files"] if p.suffix == ".html")
['report.html']
"""

from __future__ import annotations

from pathlib import Path

from .._paths import check_output_dir, make_dirs, output_error
from ..errors import ResultsSchemaError
from ..results import load_results, upgrade_results, validate_results

__all__ = ["build_report", "FIGURES", "EXTRA_FIGURES"]

#: file stem -> (title, caption)
FIGURES = {
    "rate_distortion": (
        "Rate against distortion, keys and values",
        "Bits per element (side information included) against SNR relative to each slab's "
        "variance. The shaded band runs from the lower curve (a lower **bound** on R(D) when "
        "the data fit one of its models, docs/analysis.md section 3) to the best achievable "
        "rate (an upper **bound**: the Gaussian R(D) or the clustered code). Results without "
        "the lower curve show the kNN Shannon lower bound **estimate** instead, which can "
        "exceed R(D). "
        "Each codec family is one curve; its distance above the band is what a better codec "
        "could still save.",
    ),
    "heatmaps_analysis": (
        "Limits per layer and head",
        "Order-0 entropy of the stored values (**exact**, lossless), transform (decorrelation) "
        "gain and lag-1 prediction gain (**Gaussian-model** numbers) per (layer, KV head).",
    ),
    "heatmaps_gap": (
        "Each codec's gap to the bound, per layer and head",
        "Bits per element above the Shannon lower bound **estimate** at the codec's own "
        "distortion in each slab. Where the SLB estimate is unavailable the cell is blank.",
    ),
    "gap_decomposition": (
        "Where each codec's bits go",
        "Each codec's gap to the Gaussian R(D) at its own distortion (bits per element, mean "
        "over the benched slabs; the black tick is the total, a **measurement** minus a "
        "**bound**) split into terms that add up to it: side information and coder overhead "
        "(**measured** on the stream), modelling loss of pooled tables (**exact** entropies "
        "of the codec's symbols), decorrelation and distortion-allocation losses (Gaussian-"
        "model **estimates** from the symbols and the error), the scalar-quantizer loss of "
        "an ideal ECSQ on the Gaussian model (**computed**) and the residual; formulas in "
        "docs/analysis.md, section 7. The largest bar is the part of the codec to improve.",
    ),
    "pervector_histograms": (
        "Per-vector code lengths",
        "Histogram over tokens of the ideal code length of each vector (mean over the benched "
        "layers and heads) under the fitted Gaussian model (an **estimate**); red lines mark the "
        "most expensive tokens, the dashed line the first token of each sequence.",
    ),
    "throughput": (
        "Bits against decode throughput",
        "Left: the entropy coders alone on the codecs' own symbols (M symbols/s); right: whole "
        "codecs, decode plus dequantization (MB/s of uncompressed KV). **Measured** wall-clock "
        "time on this machine, best of the configured repeats.",
    ),
    "quality": (
        "Bits against model quality",
        "Perplexity increase and mean KL divergence of the next-token distribution when the "
        "model's KV cache goes through each codec (**measured** with kvinfo eval).",
    ),
}

#: figures drawn only when their results are given (no "missing" note otherwise)
EXTRA_FIGURES = {
    "frontier": (  # remat (issue 17): kvinfo/report/frontier.py
        "Rematerialization frontier: bits per token against FLOPs per token",
        "Stored bits per cached token (**measured**, all layers, side information included; "
        "log scale) against the FLOPs per token to get K and V back (an **estimate** from the "
        "model's shapes; K/V codecs need none), coloured by the **measured** KL divergence "
        "(nats per token); stars: KL exactly 0.",
    ),
    # hf (issue 18)
    "needle": (
        "Needle retrieval: depth x length",
        "Teacher-forced log-likelihood of the pass key after the question (nats, **measured**; "
        "0 is certain), per needle depth and prompt length, for the uncompressed cache and "
        "each codec through CompressedCache; exact-match rates are written where the "
        "baseline retrieves at least 50 % of the time at that length.",
    ),
}

_MISSING = {
    "rate_distortion": "no bench or analyze records for keys or values",
    "heatmaps_analysis": "no per-slab analyze or bench records",
    "heatmaps_gap": "no per-slab bench records with an SLB estimate",
    "gap_decomposition": "no bench records with the gap decomposition (an older bench)",
    "pervector_histograms": "no bench results (bench records the per-vector histograms)",
    "throughput": "no bench results",
    "quality": "no eval results (run kvinfo bench --eval or kvinfo eval -o)",
}


def _as_docs(inputs) -> list[tuple[str, dict]]:
    docs = []
    for i, item in enumerate(inputs):
        if isinstance(item, dict):
            name = f"results[{i}] ({item.get('tool', '?')})"
            docs.append((name, upgrade_results(validate_results(item, where=name))))
        else:
            docs.append((str(item), load_results(item)))
    if not docs:
        raise ResultsSchemaError("no results documents given")
    return docs


def build_report(inputs, out_dir, *, formats=("png", "svg"), dpi: int = 110) -> dict:
    """Write the figures, ``report.md`` and ``report.html`` for results documents.

    Parameters
    ----------
    inputs : sequence of path-like or dict
        Results JSON files (or already loaded documents) of analyze, bench and eval, of the
        current schema version or an older one (read as :func:`kvinfo.results.upgrade_results`
        converts it).
    out_dir : path-like
        Folder to write into (created if needed).
    formats : tuple of str
        Figure formats; PNG is always written (the pages embed it).
    dpi : int
        Resolution of the PNG figures.

    Returns
    -------
    dict
        ``{"files": [paths written], "figures": [{"name", "title", "png", "svg"} or
        {"name", "title", "missing"}], "markdown": path, "html": path}``.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from . import _figures as F
    from . import frontier
    from ._data import gather
    from ._gap_bars import fig_gap_decomposition
    from ._page import write_html, write_markdown
    from .needle import fig_needle_heatmap

    docs = _as_docs(inputs)
    data = gather(docs)
    out = make_dirs(check_output_dir(out_dir))
    # report.md and report.html mark a finished report: remove a previous run's before
    # drawing, and write every file atomically, so that an interrupted run never leaves
    # a page that looks complete next to figures of another run
    for name in ("report.md", "report.html"):
        try:
            (out / name).unlink(missing_ok=True)
        except OSError as exc:
            raise output_error(out / name, exc) from None
    colors = F.family_colors(data)
    makers = {
        "rate_distortion": lambda: F.fig_rate_distortion(data, colors),
        "heatmaps_analysis": lambda: F.fig_analysis_heatmaps(data),
        "heatmaps_gap": lambda: F.fig_gap_heatmaps(data),
        "gap_decomposition": lambda: fig_gap_decomposition(data),
        "pervector_histograms": lambda: F.fig_pervector_histograms(data),
        "throughput": lambda: F.fig_throughput(data, colors),
        "quality": lambda: F.fig_quality(data, colors),
        "frontier": lambda: frontier.fig_frontier(data),  # remat (issue 17)
        # hf (issue 18): the needle heatmap (kvinfo eval --task needle)
        "needle": lambda: fig_needle_heatmap(data.needle_docs[0]) if data.needle_docs else None,
    }
    fmts = ["png"] + [f for f in formats if f != "png"]
    files: list[Path] = []
    figures: list[dict] = []
    for name, make in makers.items():
        title, caption = FIGURES[name] if name in FIGURES else EXTRA_FIGURES[name]
        fig = make()
        if fig is None and name in EXTRA_FIGURES:
            continue
        if fig is None:
            figures.append({"name": name, "title": title, "missing": _MISSING[name]})
            continue
        entry = {"name": name, "title": title, "caption": caption}
        try:
            for fmt in fmts:
                p = F.atomic_output(out / f"{name}.{fmt}", fig.savefig, dpi=dpi, format=fmt)
                files.append(p)
                entry[fmt] = p.name
        finally:
            plt.close(fig)
        entry.setdefault("svg", entry["png"])
        figures.append(entry)
    md = F.atomic_output(out / "report.md", write_markdown, data, docs, figures)
    page = F.atomic_output(out / "report.html", write_html, data, docs, figures, out)
    files += [md, page]
    return {"files": files, "figures": figures, "markdown": md, "html": page}
