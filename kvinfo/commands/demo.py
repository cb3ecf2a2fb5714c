"""The whole kvinfo pipeline on the built-in defaults, in one command.

Captures the default model (SmolLM2-135M-Instruct) on the default prompts with queries,
runs analyze and bench (standard preset) on a few evenly spaced layers, evaluates the
model with each codec on its KV cache (perplexity, KL, top-1), and writes the report. Each
step calls the library (``capture``, ``analyze_dump``, ``bench_dump``, ``evaluate``,
``build_report``) and prints what the step's command prints.
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


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def run(args) -> int:
    import importlib.util

    from .._paths import check_output_dir, make_dirs
    from ..cli import command_for
    from ..dumps import Selection, check_index_list, open_dump
    from ..errors import AnalysisInputError, CaptureInputError
    from ..evaluate import check_eval_options
    from .analyze import print_analysis, run_analysis
    from .bench import print_bench

    if args.max_tokens < 8:
        raise CaptureInputError(f"--max-tokens must be at least 8; got {args.max_tokens}")
    if args.knn_samples < 2:
        raise AnalysisInputError(f"--knn-samples must be at least 2; got {args.knn_samples}")
    if args.layers is not None:  # the syntax now; the range once the model is known
        check_index_list(args.layers, "layers")
    if not args.no_eval:
        check_eval_options(args.eval_prefix, args.eval_max_tokens)
    out = make_dirs(check_output_dir(args.output, "-o"), "-o")
    dump = out / "dump.h5"
    progress = not args.no_progress
    t_all = time.perf_counter()

    t0 = _step("1/4 capture: the default model on the default prompts, with queries")
    from ..dumps.capture import capture

    capture(dump, None, model=args.model, dtype="float32", max_tokens=args.max_tokens,
            queries=True, progress=progress)
    with open_dump(dump) as d:
        num_layers = d.num_layers
        print(f"wrote {dump}: {d.num_sequences} sequences, {d.num_tokens} tokens, "
              f"{d.num_layers} layers x {d.num_kv_heads} KV heads x {d.head_dim}, {d.dtype} "
              f"({time.perf_counter() - t0:.0f} s)")
    layers = args.layers or ",".join(str(v) for v in default_layers(num_layers))
    selection = Selection(layers=layers)

    t0 = _step(f"2/4 analyze: information limits of layers {layers}")
    from .. import results

    analyze_json = out / "analyze.json"
    doc = run_analysis(
        dump, selection, progress=progress, knn_samples=args.knn_samples,
        command=command_for("analyze", dump=str(dump), output=str(analyze_json), layers=layers,
                            knn_samples=args.knn_samples, no_progress=args.no_progress),
    )
    results.write_results(doc, analyze_json)
    print_analysis(doc, output=analyze_json)
    print(f"({time.perf_counter() - t0:.0f} s)")

    do_eval = not args.no_eval and importlib.util.find_spec("kvinfo.evaluate") is not None
    t0 = _step("3/4 bench: the standard codec sweep against the bounds"
               + (", and model quality with each codec (eval)" if do_eval else ""))
    from ..bench import add_quality, bench_dump, preset_codecs

    bench_json = out / "bench.json"
    command = command_for(
        "bench", dump=str(dump), preset=["standard"], output=str(bench_json), layers=layers,
        knn_samples=args.knn_samples, no_progress=args.no_progress, eval=do_eval,
        eval_prefix=args.eval_prefix, eval_max_tokens=args.eval_max_tokens, model=args.model,
    )
    if do_eval:
        from ..dumps.capture import load_model

        model, tok, name = load_model(args.model, dtype="float32")
    specs = preset_codecs("standard")
    bench = bench_dump(dump, specs, selection=selection, knn_samples=args.knn_samples,
                       progress=progress, command=command, preset="standard")
    if do_eval:
        from ..evaluate import evaluate

        q = evaluate(model, tok, specs, None, prefix=args.eval_prefix,
                     max_tokens=args.eval_max_tokens, progress=progress)
        q.model = name
        add_quality(bench, q, specs)
    results.write_results(bench, bench_json)
    print_bench(bench, bench_json)
    print(f"({time.perf_counter() - t0:.0f} s)")

    t0 = _step("4/4 report")
    from ..report import build_report

    report_dir = out / "report"
    rep = build_report([analyze_json, bench_json], report_dir)
    for f in rep["figures"]:
        if "missing" in f:
            print(f"  not drawn: {f['title']} ({f['missing']})")
        else:
            print(f"  {f['title']}: {report_dir}/{f['png']}")
    print(f"wrote {rep['html']} and {rep['markdown']} ({len(rep['files'])} files)")
    print(f"({time.perf_counter() - t0:.0f} s)")
    print(f"\ndone in {time.perf_counter() - t_all:.0f} s. Open {report_dir / 'report.html'} "
          f"(or read {report_dir / 'report.md'}).")
    sys.stdout.flush()
    return 0
