"""Figures (PNG and SVG), report.md and a self-contained report.html from results JSON files.

Give any number of results files written by kvinfo analyze, bench and eval. The figures are:
rate against distortion for keys and values with the band between the lower curve and the
best achievable rate shaded (analyze results; else the SLB estimate and the Gaussian R(D));
heatmaps over layers and heads (lossless entropy, transform and prediction gains, each
codec's gap to the bound); per-vector code-length histograms with the most expensive tokens;
bits against decode throughput; and bits against perplexity increase when eval results are
present.
"""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("results", nargs="+", metavar="RESULTS.json",
                   help="results files of kvinfo analyze, bench and/or eval")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="folder to write into; figures and report pages of an earlier report "
                   "there are replaced (never an input)")
    p.add_argument("--dpi", type=int, default=110, help="PNG resolution (default 110)")
    p.add_argument("--no-svg", action="store_true", help="write PNG figures only")


def run(args) -> int:
    from .._paths import check_output_dir
    from ..errors import ResultsSchemaError
    from ..report import build_report

    if args.dpi < 30 or args.dpi > 600:
        raise ResultsSchemaError(f"--dpi must be between 30 and 600; got {args.dpi}")
    check_output_dir(args.output, "-o", inputs=args.results, writes=("report.*", "*.png", "*.svg"))
    out = build_report(args.results, args.output, dpi=args.dpi,
                       formats=("png",) if args.no_svg else ("png", "svg"))
    for f in out["figures"]:
        if "missing" in f:
            print(f"  not drawn: {f['title']} ({f['missing']})")
        else:
            print(f"  {f['title']}: {args.output}/{f['png']}")
    print(f"wrote {out['html']} and {out['markdown']} ({len(out['files'])} files)")
    return 0
