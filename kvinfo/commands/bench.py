"""Run KV codecs on a dump and compare their achieved bits with the information bounds.

For every selected slab and codec: bits per element (symbols and side information apart),
MSE and SNR, attention errors when the dump has queries, the bounds at the achieved
distortion (Gaussian R(D), Shannon lower bound estimate, order-0 entropy of the codec's own
symbols), the gaps to them in bits and percent, and encode/decode throughput (CPU, and GPU
when one is present). Aggregated per layer, per kind and overall; writes the kvinfo results
JSON (docs/results-schema.md). With --eval, also runs the model with each codec on its KV
cache (kvinfo eval) and adds perplexity, KL and top-1 agreement.

The engine is :func:`kvinfo.bench.bench_dump`; this command parses, calls it, prints.
"""

from __future__ import annotations

import sys

from ..cli import recorded_command


def add_arguments(p) -> None:
    from ..bench import PRESETS
    from ._common import add_knn_arguments, add_selection_arguments

    p.add_argument("dump", help="a kvdump (.h5)")
    p.add_argument(
        "--codec", action="append", default=[], metavar="JSON",
        help='codec config, e.g. \'{"id": "uniform", "bits": 4, "axis": "channel", '
        '"coder": {"id": "rans"}}\', or {"keys": CONFIG, "values": CONFIG}; repeatable',
    )
    p.add_argument(
        "--preset", action="append", default=[], choices=sorted(PRESETS),
        help="a codec sweep: " + "; ".join(f"'{k}': {v[0]}" for k, v in PRESETS.items())
        + " (default 'standard' when no --codec is given); repeatable",
    )
    p.add_argument("-o", "--output", metavar="RESULTS.json",
                   help="results JSON to write, replacing a results file there (never an input)")
    add_selection_arguments(p, "bench")
    att = p.add_mutually_exclusive_group()
    att.add_argument(
        "--attention", dest="attention", action="store_true", default=None,
        help="require attention errors (error if the dump has no queries); default: "
        "computed when the dump has queries",
    )
    att.add_argument(
        "--no-attention", dest="attention", action="store_false", help="skip attention errors"
    )
    p.add_argument(
        "--max-queries", type=int, default=64, metavar="N",
        help="evenly spaced query positions per slab for the attention errors (default 64; "
        "0 for all)",
    )
    add_knn_arguments(p, knn_help=" of the SLB (as analyze)")
    p.add_argument("--repeat", type=int, default=1, help="timings are the best of N runs")
    p.add_argument("--no-gpu", action="store_true", help="do not time GPU decoding")
    p.add_argument(
        "--eval", action="store_true",
        help="also evaluate the model with each codec on its KV cache (kvinfo eval) and add "
        "perplexity, KL and top-1 agreement to the results",
    )
    p.add_argument("--model", default=None, help="model for --eval (default: the default model)")
    p.add_argument("--eval-text", metavar="FILE", help="text for --eval (default: built-in)")
    p.add_argument("--eval-prefix", type=int, default=512, metavar="N",
                   help="tokens prefilled and compressed for --eval (default 512)")
    p.add_argument("--eval-max-tokens", type=int, default=1024, metavar="N",
                   help="text cut to N tokens for --eval (default 1024)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def print_bench(doc: dict, output=None) -> None:
    """Print a bench document's table (what ``kvinfo bench`` prints)."""
    from ..bench import format_table

    print(format_table(doc))
    if output:
        print(f"\nwrote {output} ({len(doc['records'])} records)")
    sys.stdout.flush()


def run(args) -> int:
    from .. import results
    from .._paths import check_output_file
    from ..bench import CodecSpec, add_quality, bench_dump, preset_codecs
    from ..errors import AnalysisInputError
    from ..evaluate import check_eval_options
    from ._common import check_knn_args, selection_of
    from .eval import parse_codec_args, read_text_file

    specs = parse_codec_args(args.codec)
    presets = list(args.preset) or ([] if specs else ["standard"])
    for name in presets:
        specs += preset_codecs(name)
    for s in specs:
        CodecSpec(s)  # a bad config fails before any work
    if args.max_queries < 0:
        raise AnalysisInputError(f"--max-queries must be >= 0; got {args.max_queries}")
    check_knn_args(args)
    if args.output:
        check_output_file(args.output, "-o", kind="results",
                          inputs=[args.dump, args.eval_text, args.eval and args.model])
    if args.repeat < 1:
        raise AnalysisInputError(f"--repeat must be at least 1; got {args.repeat}")
    text = None
    if args.eval:
        from ..evaluate import CacheCodec

        for s in specs:
            CacheCodec(s)  # eval needs a codec for keys and values
        check_eval_options(args.eval_prefix, args.eval_max_tokens)
        if args.eval_text:
            text = read_text_file(args.eval_text)
    model = tok = name = None
    if args.eval:  # load the model before the bench, so that a bad --model fails in seconds
        from ..dumps.capture import load_model

        model, tok, name = load_model(args.model, dtype="float32")

    doc = bench_dump(
        args.dump, specs, selection=selection_of(args), attention=args.attention,
        max_queries=args.max_queries or None, knn_samples=args.knn_samples,
        knn_k=args.knn_k, seed=args.seed, pervector_snr_db=args.pervector_snr_db,
        repeat=args.repeat, use_gpu=not args.no_gpu, progress=not args.no_progress,
        command=recorded_command(args), preset=",".join(presets) or None,
    )
    if args.eval:
        from ..evaluate import evaluate

        q = evaluate(model, tok, specs, text, prefix=args.eval_prefix,
                     max_tokens=args.eval_max_tokens, progress=not args.no_progress)
        q.model = name
        add_quality(doc, q, specs)
    if args.output:
        results.write_results(doc, args.output)
    print_bench(doc, args.output)
    return 0

