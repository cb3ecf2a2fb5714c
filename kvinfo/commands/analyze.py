"""Lossless and lossy information limits of a KV dump, per (layer, K/V, head).

For every selected slab: order-0 entropies of the stored bit patterns (pooled, per channel,
sign/exponent/mantissa), Gaussian R(D) with full and diagonal covariance, a lower curve on
R(D) and a clustered achievable upper bound that hold on non-Gaussian sources, a kNN-based
Shannon lower bound estimate, the temporal (lag-1) prediction gain, total correlation,
per-vector ideal code lengths under the fitted Gaussian, and per-channel statistics. Slab
results are averaged per (layer, kind), per kind and overall. Writes the kvinfo results JSON
(docs/results-schema.md) and prints a table. Rates are bits per element; distortion is MSE
per element.

The engine is :func:`kvinfo.analysis.analyze_dump`; this command parses, calls it, prints.
"""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np

from ..cli import recorded_command
from ..errors import AnalysisInputError
from ..tables import SMALL_DATA_MARK, format_number
from ._common import (
    add_knn_arguments,
    add_scale_arguments,
    add_selection_arguments,
    scale_options,
    selection_of,
)


def add_arguments(p) -> None:
    p.add_argument("dump", nargs="+",
                   help="one kvdump (.h5 or a converted .zarr store), or several, or glob "
                   "patterns ('dumps/*.h5'): several dumps are combined per (layer, kind, head) "
                   "as one (their statistics merged exactly; docs/scale-out.md)")
    p.add_argument("-o", "--output",
                   help="results JSON to write, replacing a results file there (never the input "
                   "dump); default: print the table only")
    add_selection_arguments(p, "analyse")
    p.add_argument(
        "--snr-db",
        default="0:40:2",
        help="distortion grid as SNR in dB relative to each slab's variance: START:STOP:STEP "
        "(inclusive) or a comma list (default 0:40:2)",
    )
    p.add_argument(
        "--table-snr-db", type=float, default=None,
        help="grid point shown in the printed table (default: the grid point nearest 20 dB)",
    )
    add_knn_arguments(p)
    p.add_argument("--top-tokens", type=int, default=5, help="most expensive tokens to list")
    p.add_argument(
        "--outlier-rms-ratio", type=float, default=4.0,
        help="a channel whose RMS exceeds this multiple of the median is an outlier (default 4)",
    )
    p.add_argument("--per-slab", action="store_true", help="print one table row per slab")
    p.add_argument("--inputs", action="store_true",  # remat hook (issue 17)
                   help="also bound caching the layer inputs X (dumps from capture --inputs): "
                   "R(D) of X, its cross-layer difference and K/V given the previous layer, "
                   "per selected layer, all tokens (docs/remat.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_scale_arguments(p)


# --------------------------------------------------------------------------------------
# option parsing
# --------------------------------------------------------------------------------------


def parse_snr_grid(spec: str) -> list[float]:
    """``'0:40:2'`` (inclusive) or ``'5,10,20'`` -> list of SNR values in dB."""
    s = str(spec).strip()
    try:
        if ":" in s:
            parts = [float(v) for v in s.split(":")]
            if len(parts) != 3 or parts[2] <= 0 or parts[1] < parts[0]:
                raise ValueError
            start, stop, step = parts
            num = int(math.floor((stop - start) / step + 1e-9)) + 1
            vals = [start + i * step for i in range(num)]
        else:
            vals = [float(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise AnalysisInputError(
            f"--snr-db: expected START:STOP:STEP with STEP > 0 and STOP >= START, or a comma "
            f"list of numbers; got {spec!r}"
        ) from None
    if not vals or not all(math.isfinite(v) for v in vals):
        raise AnalysisInputError(f"--snr-db: expected finite numbers; got {spec!r}")
    if len(vals) > 1000:
        raise AnalysisInputError(f"--snr-db: {len(vals)} points; at most 1000")
    return [round(v, 10) for v in vals]


# --------------------------------------------------------------------------------------
# table
# --------------------------------------------------------------------------------------


def _grid_at(m: dict, key: str, i: int):
    v = m.get(key)
    if v is None:
        return None
    v = list(v)
    return None if i >= len(v) or v[i] is None else float(v[i])


_COLUMNS = (
    ("H0", "h0_pooled_bits_per_element"),
    ("H0/ch", "h0_per_channel_bits_per_element"),
    ("Hexp", "h0_exponent_bits_per_element"),
    ("hG", "h_gaussian_bits_per_element"),
    ("h~knn", "h_knn_estimate_bits_per_element"),
    ("TC_G", "total_correlation_gaussian_bits_per_element"),
)
_GRID_COLUMNS = (
    ("R_G", "rd_gaussian_bits_per_element"),
    ("R_up", "rd_upper_bound_bits_per_element"),
    ("R_lo", "rd_lower_bound_bits_per_element"),
    ("R_ind", "rd_gaussian_independent_bits_per_element"),
    ("SLB~", "slb_estimate_bits_per_element"),
    ("R_inn", "rd_temporal_innovation_bits_per_element"),
)
#: column -> flag metric; the cell gets a trailing mark where the flag holds (in any slab)
_MARKS = {
    "h0_per_channel_bits_per_element": ("h0_per_channel_undersampled", "u"),
    "slb_estimate_bits_per_element": ("h_knn_clipped_to_gaussian", "*"),
    "rd_lower_bound_bits_per_element": ("rd_lower_bound_exceeds_upper", "!"),
}


def _cell(m: dict, key: str, v) -> str:
    flag = _MARKS.get(key)
    if flag is None:
        return format_number(v, mark=_mark(m, key))
    return format_number(v, 5, mark=_mark(m, key)) + (flag[1] if m.get(flag[0]) else " ")
_PV_COLUMNS = (
    ("pv50", "pervector_p50_bits_per_element"),
    ("pvmax", "pervector_max_bits_per_element"),
)


def _mark(m: dict, key: str) -> str | None:
    """The table mark of a metric null for lack of data (named in ``null_reasons``)."""
    return SMALL_DATA_MARK if key in (m.get("null_reasons") or {}) else None


def format_table(records: list[dict], snr_db: list[float], grid_index: int, pv_snr: float) -> str:
    snr = snr_db[grid_index]
    head = f"{'scope':<7} {'layer':>5} {'kind':<8} {'head':>4} "
    head += " ".join(f"{c:>6}" for c, _ in _COLUMNS) + " | "
    head += " ".join(f"{c:>6}" for c, _ in _GRID_COLUMNS) + " | "
    head += " ".join(f"{c:>6}" for c, _ in _PV_COLUMNS)
    lines = [
        f"bits per element; R_*, SLB~ at SNR {snr:g} dB; per-vector (pv) at {pv_snr:g} dB; "
        "~ marks estimates; R_lo: lower curve (holds when the data fit one of its models, "
        "docs/analysis.md); R_up: achievable (upper bound)",
        "u: per-channel H0 undersampled (plug-in caps near log2 n); *: kNN h exceeded h_G "
        "and was clipped, so SLB~ = R_G; !: R_lo exceeds R_up at some SNR, the data fit none "
        "of its models (in at least one slab of the row)",
        head,
        "-" * len(head),
    ]
    small = False
    for r in records:
        m = r["metrics"]
        lay = "" if r["layer"] is None else str(r["layer"])
        hd = "" if r["head"] is None else str(r["head"])
        row = f"{r['scope']:<7} {lay:>5} {(r['kind'] or 'all'):<8} {hd:>4} "
        row += " ".join(_cell(m, k, m.get(k)) for _, k in _COLUMNS) + " | "
        row += " ".join(_cell(m, k, _grid_at(m, k, grid_index)) for _, k in _GRID_COLUMNS)
        row += " | "
        row += " ".join(_cell(m, k, m.get(k)) for _, k in _PV_COLUMNS)
        small = small or SMALL_DATA_MARK in row
        lines.append(row)
    if small:
        lines.append(
            f"{SMALL_DATA_MARK}: null, the slab has no more vectors than dimensions (the reason "
            "is in the JSON's null_reasons); aggregates use the slabs where a value is defined"
        )
    return "\n".join(lines)


def format_tokens(records: list[dict]) -> str:
    lines = []
    for r in records:
        if r["scope"] != "kind":
            continue
        m = r["metrics"]
        lines.append(f"most expensive tokens, {r['kind']} (mean over layers and heads):")
        for t in m.get("pervector_top_tokens") or []:
            tid = "-" if t["token_id"] is None else str(t["token_id"])
            lines.append(
                f"  token {t['token_index']:>6}  seq {t['sequence']:>3}  pos {t['position']:>5}  "
                f"id {tid:>6}  {t['bits_per_element']:.2f} bits/element"
            )
        ratio = m.get("pervector_first_token_to_median_ratio")
        if ratio is not None:
            pct = m.get("pervector_first_token_percentile")
            flag = "  <- attention sink stands out" if pct is not None and pct >= 99.0 else ""
            lines.append(
                f"  first token of each sequence: {ratio:.1f}x the median vector, "
                f"percentile {pct:.1f}{flag}"
            )
    return "\n".join(lines)


def print_analysis(doc: dict, *, per_slab: bool = False, table_snr_db: float | None = None,
                   output=None) -> None:
    """Print an analyze document's table and token list (what ``kvinfo analyze`` prints)."""
    snr = doc["settings"]["snr_db"]
    ref = 20.0 if table_snr_db is None else table_snr_db
    gi = int(np.argmin(np.abs(np.asarray(snr) - ref)))
    recs = doc["records"]
    slab_records = [r for r in recs if r["scope"] == "slab"]
    kind_records = [r for r in recs if r["scope"] == "kind"]
    shown = (slab_records if per_slab else []) + [r for r in recs if r["scope"] != "slab"]
    print(format_table(shown, snr, gi, doc["settings"]["pervector_snr_db"]))
    print()
    print(format_tokens(kind_records))
    if output:
        print(f"\nwrote {output} ({len(recs)} records)")


def run_analysis(dump, selection, *, progress: bool, command=None, scale=None,
                 **options) -> dict:
    """:func:`kvinfo.analysis.analyze_dump` with its notes printed as one-line warnings and
    (shared by ``analyze`` and ``demo``). With ``scale`` (the
    :func:`~kvinfo.commands._common.scale_options` of several dumps, workers or a
    scheduler), :func:`kvinfo.analysis.analyze_dumps` instead."""
    from ..analysis import AnalysisWarning, analyze_dump, analyze_dumps

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AnalysisWarning)
        if scale is not None:
            doc = analyze_dumps(scale["dumps"], selection, workers=scale["workers"],
                                scheduler=scale["scheduler"], skip_failed=scale["skip_failed"],
                                progress=progress, command=command, **options)
        else:
            doc = analyze_dump(dump, selection, progress=progress, command=command, **options)
    print_notes(caught, "analyze")
    return doc


def print_notes(caught, tool: str) -> None:
    """Print recorded slab warnings as one-line warnings, one line per distinct note (a note
    shared by many slabs names the first and counts the rest)."""
    from ..analysis import AnalysisWarning

    groups: dict = {}
    for w in caught:
        if not issubclass(w.category, AnalysisWarning):
            continue
        msg = w.message
        note = getattr(msg, "note", None) or str(msg)
        groups.setdefault(note, []).append(getattr(msg, "slab", None))
    for note, slabs in groups.items():
        labels = [s for s in slabs if s]
        if not labels:
            where = ""
        elif len(labels) == 1:
            where = f"{labels[0]}: "
        else:
            where = f"{labels[0]} and {len(labels) - 1} more slabs: "
        print(f"kvinfo {tool}: warning: {where}{note}", file=sys.stderr)


# --------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------


def run(args) -> int:
    from .. import results
    from .._paths import check_output_file

    snr = parse_snr_grid(args.snr_db)
    if args.table_snr_db is not None and not math.isfinite(args.table_snr_db):
        raise AnalysisInputError("--table-snr-db must be finite")
    scale = scale_options(args)
    if args.output:
        check_output_file(args.output, "-o", inputs=scale["inputs"], kind="results")
    doc = run_analysis(
        scale["inputs"][0], selection_of(args), progress=not args.no_progress,
        command=recorded_command(args), scale=scale if scale["multi"] else None, snr_db=snr,
        pervector_snr_db=args.pervector_snr_db, knn_samples=args.knn_samples,
        knn_k=args.knn_k, seed=args.seed, top_tokens=args.top_tokens,
        outlier_rms_ratio=args.outlier_rms_ratio,
    )
    # -- remat hook (issue 17): bounds of caching the layer inputs X --
    if getattr(args, "inputs", False):
        from ..analysis.inputs import analyze_inputs, format_inputs_table
        from ..dumps import open_dump

        if len(scale["inputs"]) > 1:
            raise AnalysisInputError("--inputs analyzes one dump; got "
                                     f"{len(scale['inputs'])}")
        with open_dump(scale["inputs"][0]) as d:
            sel = selection_of(args).resolve(d)
            inputs_records = analyze_inputs(d, layers=sel.layers)
        doc["records"].extend(inputs_records)
    # -- end remat hook --
    if args.output:
        results.write_results(doc, args.output)
    print_analysis(doc, per_slab=args.per_slab, table_snr_db=args.table_snr_db,
                   output=args.output)
    if getattr(args, "inputs", False):  # remat hook (issue 17)
        print(format_inputs_table(inputs_records, args.table_snr_db or 20.0))
    return 0

