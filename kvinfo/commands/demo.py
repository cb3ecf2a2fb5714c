"""The whole kvinfo pipeline on the built-in defaults, in one command.

Captures the default model (SmolLM2-135M-Instruct) on the default prompts with queries,
runs analyze and bench (standard preset) on a few evenly spaced layers, evaluates the
model with each codec on its KV cache (perplexity, KL, top-1), and writes the report.
Everything goes into one folder: dump.h5, analyze.json, bench.json, report/. On a 2-core
CPU it takes a few minutes with the default sizes.
"""

from __future__ import annotations

import sys
import time


def add_arguments(p) -> None:
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to write into")
    p.add_argument("--model", default=None,
                   help="model to capture and evaluate (default: SmolLM2-135M-Instruct GGUF)")
    p.add_argument("--max-tokens", type=int, default=256, metavar="N",
                   help="prompt tokens captured per default prompt (default 256)")
    p.add_argument("--layers", default=None,
                   help="layers to analyze and bench (default: 4 evenly spaced, first and last "
                   "included)")
    p.add_argument("--no-eval", action="store_true", help="skip the model-quality evaluation")
    p.add_argument("--eval-prefix", type=int, default=256, metavar="N",
                   help="tokens prefilled and compressed in the evaluation (default 256)")
    p.add_argument("--eval-max-tokens", type=int, default=512, metavar="N",
                   help="text cut to N tokens in the evaluation (default 512)")
    p.add_argument("--knn-samples", type=int, default=1000,
                   help="kNN sample size of the entropy estimate in analyze and bench "
                   "(default 1000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def default_layers(num_layers: int, count: int = 4) -> list[int]:
    """``count`` evenly spaced layers from first to last (all when there are fewer).

    >>> default_layers(30)
    [0, 10, 19, 29]
    >>> default_layers(2)
    [0, 1]
    """
    if num_layers <= count:
        return list(range(num_layers))
    return sorted({round(i * (num_layers - 1) / (count - 1)) for i in range(count)})


def _run(argv: list[str]) -> None:
    """Run one kvinfo subcommand in-process; its errors propagate as exceptions."""
    from ..cli import build_parser

    args = build_parser().parse_args(argv)
    args._module.run(args)


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def run(args) -> int:
    import importlib.util

    from .._paths import check_output_dir, make_dirs
    from ..dumps import check_index_list, open_dump
    from ..errors import AnalysisInputError, CaptureInputError
    from .eval import check_eval_options

    if args.max_tokens < 8:
        raise CaptureInputError(f"--max-tokens must be at least 8; got {args.max_tokens}")
    if args.knn_samples < 2:
        raise AnalysisInputError(f"--knn-samples must be at least 2; got {args.knn_samples}")
    if args.layers is not None:  # the syntax now; the range once the model is known
        check_index_list(args.layers, "layers")
    if not args.no_eval:
        check_eval_options(args.eval_prefix, args.eval_max_tokens,
                           names=("--eval-prefix", "--eval-max-tokens"))
    out = make_dirs(check_output_dir(args.output, "-o"), "-o")
    dump = out / "dump.h5"
    quiet = ["--no-progress"] if args.no_progress else []
    t_all = time.perf_counter()

    t0 = _step("1/4 capture: the default model on the default prompts, with queries")
    from ..dumps.capture import capture

    capture(dump, None, model=args.model, dtype="float32", max_tokens=args.max_tokens,
            queries=True, progress=not args.no_progress)
    with open_dump(dump) as d:
        num_layers = d.num_layers
        print(f"wrote {dump}: {d.num_sequences} sequences, {d.num_tokens} tokens, "
              f"{d.num_layers} layers x {d.num_kv_heads} KV heads x {d.head_dim}, {d.dtype} "
              f"({time.perf_counter() - t0:.0f} s)")
    layers = args.layers or ",".join(str(v) for v in default_layers(num_layers))
    knn = ["--knn-samples", str(args.knn_samples)]

    t0 = _step(f"2/4 analyze: information limits of layers {layers}")
    _run(["analyze", str(dump), "-o", str(out / "analyze.json"), "--layers", layers,
          *knn, *quiet])
    print(f"({time.perf_counter() - t0:.0f} s)")

    do_eval = not args.no_eval and importlib.util.find_spec("kvinfo.evaluate") is not None
    t0 = _step("3/4 bench: the standard codec sweep against the bounds"
               + (", and model quality with each codec (eval)" if do_eval else ""))
    bench = ["bench", str(dump), "--preset", "standard", "-o", str(out / "bench.json"),
             "--layers", layers, *knn, *quiet]
    if do_eval:
        bench += ["--eval", "--eval-prefix", str(args.eval_prefix),
                  "--eval-max-tokens", str(args.eval_max_tokens)]
        if args.model:
            bench += ["--model", str(args.model)]
    _run(bench)
    print(f"({time.perf_counter() - t0:.0f} s)")

    t0 = _step("4/4 report")
    report_dir = out / "report"
    _run(["report", str(out / "analyze.json"), str(out / "bench.json"), "-o", str(report_dir)])
    print(f"({time.perf_counter() - t0:.0f} s)")
    print(f"\ndone in {time.perf_counter() - t_all:.0f} s. Open {report_dir / 'report.html'} "
          f"(or read {report_dir / 'report.md'}).")
    sys.stdout.flush()
    return 0
