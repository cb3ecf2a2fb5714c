"""Perplexity, KL divergence and top-1 agreement of a model whose KV cache goes through codecs.

The model is prefilled on the first --prefix tokens of the text, every layer's cached keys
and values are replaced by decode(encode(...)) through each codec, and the rest of the
text is scored teacher-forced, next to the uncompressed baseline (one shared baseline run).
"""

from __future__ import annotations

import json
import sys

from ..errors import CodecConfigError


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
    p.add_argument("--text", metavar="FILE", help="UTF-8 text to score (default: built-in text)")
    p.add_argument(
        "--prefix",
        type=int,
        default=512,
        metavar="N",
        help="tokens prefilled and compressed (default 512)",
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


def run(args) -> int:
    from .._paths import check_output_file
    from ..cli import recorded_command
    from ..dumps.capture import load_model
    from ..evaluate import check_eval_options, eval_codec_specs, evaluate
    from ..results import write_results
    from ..tables import format_number

    # validated once, by the library, before the model loads; errors are mapped to the flags
    specs = eval_codec_specs(parse_codec_args(args.codec))
    check_eval_options(args.prefix, args.max_tokens, args.block)
    if args.output:
        check_output_file(args.output, "-o", inputs=[args.text, args.model], kind="results")
    text = read_text_file(args.text) if args.text else None
    model, tok, name = load_model(args.model, dtype=args.dtype)
    res = evaluate(model, tok, specs, text, prefix=args.prefix, max_tokens=args.max_tokens,
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
    print(f"{'codec':<58} {'bits/elem':>9} {'ppl':>9} {'dppl %':>7} {'KL nats':>9} {'top1':>6}")
    print(
        f"{'baseline (uncompressed)':<58} {'':>9} {b.perplexity:9.3f} {'':>7} "
        f"{0.0:9.5f} {1.0:6.3f}"
    )
    for r in res.results:
        label = json.dumps(r.codec, separators=(",", ":"))
        if len(label) > 58:
            label = label[:55] + "..."
        print(
            f"{label:<58} {format_number(r.bits_per_element, 9, 3)} {r.perplexity:9.3f} "
            f"{r.extra['perplexity_increase_pct']:7.2f} {r.kl_nats_per_token:9.5f} "
            f"{r.top1_agreement:6.3f}"
        )
    sys.stdout.flush()
    return 0
