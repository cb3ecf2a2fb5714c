"""Lossless and lossy information limits of a KV dump, per (layer, K/V, head).

For every selected slab: order-0 entropies of the stored bit patterns (pooled, per channel,
sign/exponent/mantissa), Gaussian R(D) with full and diagonal covariance, a lower curve on
R(D) and a clustered achievable upper bound that hold on non-Gaussian sources, a kNN-based
Shannon lower bound estimate, the temporal (lag-1) prediction gain, total correlation,
per-vector ideal code lengths under the fitted Gaussian, and per-channel statistics. Slab
results are averaged per (layer, kind), per kind and overall. Writes the kvinfo results JSON
(docs/results-schema.md) and prints a table. Rates are bits per element; distortion is MSE
per element.
"""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np

from ..dumps import parse_index_list  # noqa: F401  (re-exported for callers)
from ..errors import AnalysisInputError

#: metrics that are per-channel or per-slab details, never averaged into aggregates
_NOT_AGGREGATED = frozenset(
    {
        "dtype",
        "channel_mean",
        "channel_variance",
        "channel_excess_kurtosis",
        "outlier_channels",
        "outlier_channel_rms_ratio",
        "zero_variance_channels",
        "pervector_top_tokens",
        "notes",
        "nonfinite_elements",
        "excluded_vectors",
        "pervector_p50_bits_per_element",
        "pervector_p90_bits_per_element",
        "pervector_p99_bits_per_element",
        "pervector_max_bits_per_element",
        "pervector_first_token_bits_per_element",
        "pervector_first_token_to_median_ratio",
        "pervector_first_token_percentile",
    }
)


def add_arguments(p) -> None:
    p.add_argument("dump", help="a kvdump (.h5)")
    p.add_argument("-o", "--output", help="results JSON to write (default: print the table only)")
    p.add_argument("--layers", help="layers to analyse, e.g. '0,3,10-12' (default: all)")
    p.add_argument(
        "--kinds", help="comma-separated kinds among keys,values,queries,keys_pre_rope "
        "(default: keys,values)"
    )
    p.add_argument("--heads", help="heads to analyse, e.g. '0-1' (default: all)")
    p.add_argument(
        "--snr-db",
        default="0:40:2",
        help="distortion grid as SNR in dB relative to each slab's variance: START:STOP:STEP "
        "(inclusive) or a comma list (default 0:40:2)",
    )
    p.add_argument(
        "--pervector-snr-db", type=float, default=20.0,
        help="SNR (dB) at which per-vector code lengths are computed (default 20)",
    )
    p.add_argument(
        "--table-snr-db", type=float, default=None,
        help="grid point shown in the printed table (default: the grid point nearest 20 dB)",
    )
    p.add_argument(
        "--knn-samples", type=int, default=2000,
        help="vectors subsampled per slab for the kNN entropy estimate (default 2000)",
    )
    p.add_argument("--knn-k", type=int, default=4, help="kNN neighbour order (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kNN subsample and dither")
    p.add_argument("--top-tokens", type=int, default=5, help="most expensive tokens to list")
    p.add_argument(
        "--outlier-rms-ratio", type=float, default=4.0,
        help="a channel whose RMS exceeds this multiple of the median is an outlier (default 4)",
    )
    p.add_argument("--per-slab", action="store_true", help="print one table row per slab")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


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
# aggregation
# --------------------------------------------------------------------------------------


def _is_num(v) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def aggregate_metrics(slabs: list[dict]) -> dict:
    """Mean of the numeric scalar and grid metrics over slabs (ignoring nulls)."""
    out: dict = {"num_slabs": len(slabs)}
    keys: list[str] = []
    for m in slabs:
        keys.extend(k for k in m if k not in keys)
    for key in keys:
        if key in _NOT_AGGREGATED:
            continue
        vals = [m.get(key) for m in slabs]
        present = [v for v in vals if v is not None]
        if not present:
            out[key] = None
            continue
        if all(isinstance(v, bool | np.bool_) for v in present):
            out[key] = float(np.mean(present))  # a flag: the fraction of slabs where it holds
            continue
        if all(_is_num(v) for v in present):
            out[key] = float(np.mean([float(v) for v in present]))
            continue
        arrs = [np.asarray(v, dtype=object) for v in present]
        if all(a.ndim == 1 for a in arrs) and len({a.size for a in arrs}) == 1:
            try:
                mat = np.array(
                    [[np.nan if e is None else float(e) for e in a] for a in arrs], dtype=float
                )
            except (TypeError, ValueError):
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out[key] = np.nanmean(mat, axis=0)
    out["nonfinite_elements"] = int(sum(m.get("nonfinite_elements", 0) for m in slabs))
    out["excluded_vectors"] = int(sum(m.get("excluded_vectors", 0) for m in slabs))
    return out


# --------------------------------------------------------------------------------------
# table
# --------------------------------------------------------------------------------------


def _f(v, width=6, prec=2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return f"{'-':>{width}}"
    return f"{v:>{width}.{prec}f}"


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
}


def _cell(m: dict, key: str, v) -> str:
    flag = _MARKS.get(key)
    if flag is None:
        return _f(v)
    return _f(v, 5) + (flag[1] if m.get(flag[0]) else " ")
_PV_COLUMNS = (
    ("pv50", "pervector_p50_bits_per_element"),
    ("pvmax", "pervector_max_bits_per_element"),
)


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
        "and was clipped, so SLB~ = R_G (in at least one slab of the row)",
        head,
        "-" * len(head),
    ]
    for r in records:
        m = r["metrics"]
        lay = "" if r["layer"] is None else str(r["layer"])
        hd = "" if r["head"] is None else str(r["head"])
        row = f"{r['scope']:<7} {lay:>5} {(r['kind'] or 'all'):<8} {hd:>4} "
        row += " ".join(_cell(m, k, m.get(k)) for _, k in _COLUMNS) + " | "
        row += " ".join(_cell(m, k, _grid_at(m, k, grid_index)) for _, k in _GRID_COLUMNS)
        row += " | "
        row += " ".join(_f(m.get(k)) for _, k in _PV_COLUMNS)
        lines.append(row)
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


# --------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------


def check_knn_args(args) -> None:
    """One-line errors for --knn-samples, --knn-k and --pervector-snr-db (analyze, bench)."""
    if args.knn_samples < 2:
        raise AnalysisInputError(f"--knn-samples must be at least 2; got {args.knn_samples}")
    if args.knn_k < 1:
        raise AnalysisInputError(f"--knn-k must be at least 1; got {args.knn_k}")
    if not math.isfinite(args.pervector_snr_db):
        raise AnalysisInputError("--pervector-snr-db must be finite")


def run(args) -> int:
    from tqdm import tqdm

    from .. import results
    from .._paths import check_output_file
    from ..analysis import AnalysisWarning, analyze_slab
    from ..analysis._slab import TokenCost
    from ..analysis._stats import warmup
    from ..dumps import open_dump

    snr = parse_snr_grid(args.snr_db)
    check_knn_args(args)
    if args.top_tokens < 0:
        raise AnalysisInputError(f"--top-tokens must be >= 0; got {args.top_tokens}")
    if args.table_snr_db is not None and not math.isfinite(args.table_snr_db):
        raise AnalysisInputError("--table-snr-db must be finite")
    if not (math.isfinite(args.outlier_rms_ratio) and args.outlier_rms_ratio > 0):
        raise AnalysisInputError(
            f"--outlier-rms-ratio must be a finite number > 0; got {args.outlier_rms_ratio}"
        )
    if args.output:
        check_output_file(args.output, "-o")
    warmup()

    with open_dump(args.dump) as d:
        available = tuple(d.kinds)
        if args.kinds is None:
            kinds = [k for k in ("keys", "values") if k in available]
        else:
            kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
            bad = [k for k in kinds if k not in available]
            if bad:
                raise AnalysisInputError(
                    f"--kinds: {bad} not in this dump; it has {list(available)}"
                )
        if not kinds:
            raise AnalysisInputError("empty selection: no kinds selected")
        layers = parse_index_list(args.layers, d.num_layers, "layers")
        heads_of = {
            k: (d.num_heads if k == "queries" else d.num_kv_heads) for k in kinds
        }
        heads_sel = {
            k: parse_index_list(args.heads, heads_of[k], "heads") for k in kinds
        }
        jobs = [(lay, k, h) for lay in layers for k in kinds for h in heads_sel[k]]
        if not jobs:
            raise AnalysisInputError("empty selection: no slabs selected")
        sequences = d.sequences()
        token_ids = np.asarray(d.token_ids)
        seq = d.sequence_index()
        pos = d.positions()
        n_tok = d.num_tokens
        source = d.describe()
        source["dump"] = str(d.path)

        settings = {
            "layers": layers,
            "kinds": kinds,
            "heads": {k: v for k, v in heads_sel.items()},
            "snr_db": snr,
            "pervector_snr_db": args.pervector_snr_db,
            "knn_samples": args.knn_samples,
            "knn_k": args.knn_k,
            "seed": args.seed,
            "top_tokens": args.top_tokens,
            "outlier_rms_ratio": args.outlier_rms_ratio,
            "grid_reference": "variance_per_element",
        }
        slab_records = []
        slab_metrics: dict = {}
        cost_layer: dict = {}
        cost_kind: dict = {}
        cost_all = TokenCost(n_tok)
        bar = tqdm(
            jobs, desc="analyze", unit="slab", file=sys.stderr, disable=args.no_progress,
            dynamic_ncols=True,
        )
        for lay, kind, head in bar:
            bar.set_postfix_str(f"layer {lay} {kind} head {head}")
            slab = d.slab(kind, lay, head)
            label = f"layer {lay} {kind} head {head}"
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", AnalysisWarning)
                try:
                    m, bits = analyze_slab(
                        slab,
                        snr_db=snr,
                        sequences=sequences,
                        token_ids=token_ids,
                        knn_samples=args.knn_samples,
                        knn_k=args.knn_k,
                        seed=args.seed,
                        pervector_snr_db=args.pervector_snr_db,
                        top_tokens=args.top_tokens,
                        outlier_rms_ratio=args.outlier_rms_ratio,
                        return_token_bits=True,
                    )
                except AnalysisInputError as exc:
                    raise AnalysisInputError(f"{label}: {exc}") from None
            for note in m.get("notes", []):
                tqdm.write(f"kvinfo analyze: warning: {label}: {note}", file=sys.stderr)
            del caught
            slab_metrics[(lay, kind, head)] = m
            slab_records.append(results.make_record("slab", m, layer=lay, kind=kind, head=head))
            cost_layer.setdefault((lay, kind), TokenCost(n_tok)).add(bits)
            cost_kind.setdefault(kind, TokenCost(n_tok)).add(bits)
            cost_all.add(bits)
        bar.close()

    top = args.top_tokens
    layer_records = []
    for lay in layers:
        for kind in kinds:
            ms = [slab_metrics[(lay, kind, h)] for h in heads_sel[kind]]
            agg = aggregate_metrics(ms)
            agg.update(cost_layer[(lay, kind)].metrics(seq, pos, token_ids, top))
            layer_records.append(results.make_record("layer", agg, layer=lay, kind=kind))
    kind_records = []
    for kind in kinds:
        ms = [m for (lay, k, h), m in slab_metrics.items() if k == kind]
        agg = aggregate_metrics(ms)
        agg.update(cost_kind[kind].metrics(seq, pos, token_ids, top))
        kind_records.append(results.make_record("kind", agg, kind=kind))
    agg = aggregate_metrics(list(slab_metrics.values()))
    agg.update(cost_all.metrics(seq, pos, token_ids, top))
    overall = results.make_record("overall", agg)

    records = slab_records + layer_records + kind_records + [overall]
    doc = results.new_results(
        "analyze", source, settings, command=["kvinfo", "analyze", *_argv_of(args)]
    )
    doc["records"] = records
    if args.output:
        results.write_results(doc, args.output)

    ref = 20.0 if args.table_snr_db is None else args.table_snr_db
    gi = int(np.argmin(np.abs(np.asarray(snr) - ref)))
    shown = (slab_records if args.per_slab else []) + layer_records + kind_records + [overall]
    print(format_table(shown, snr, gi, args.pervector_snr_db))
    print()
    print(format_tokens(kind_records))
    if args.output:
        print(f"\nwrote {args.output} ({len(records)} records)")
    return 0


def _argv_of(args) -> list[str]:
    out = [str(args.dump)]
    if args.output:
        out += ["-o", str(args.output)]
    for opt in ("layers", "kinds", "heads"):
        v = getattr(args, opt)
        if v is not None:
            out += [f"--{opt}", str(v)]
    out += ["--snr-db", str(args.snr_db), "--pervector-snr-db", str(args.pervector_snr_db)]
    out += ["--knn-samples", str(args.knn_samples), "--knn-k", str(args.knn_k)]
    out += ["--seed", str(args.seed)]
    return out
