"""Quality of SmolLM2-135M-Instruct with a compressed KV cache, for the standard codec sweep.

Runs :func:`kvinfo.evaluate.evaluate` once (one shared baseline) over KIVI-style uniform
(keys per channel, values per token; 2/4/8 bits), ecsq at three steps and turbo at 2/3/4 bits,
all with the ``rans`` coder, on the built-in default text, and prints a Markdown table for
``docs/benchmarks.md``.

Usage::

    python benchmarks/eval_sweep.py [--prefix 512] [--max-tokens 1024] [--block 0] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

RANS = {"id": "rans"}


def sweep() -> list[tuple[str, dict]]:
    out = []
    for bits in (2, 4, 8):
        out.append(
            (
                f"uniform {bits}b (K/channel, V/token)",
                {
                    "keys": {"id": "uniform", "bits": bits, "axis": "channel", "coder": RANS},
                    "values": {"id": "uniform", "bits": bits, "axis": "token", "coder": RANS},
                },
            )
        )
    for step in (0.5, 0.25, 0.1):
        out.append(
            (
                f"ecsq step {step} x RMS",
                {"id": "ecsq", "step": step, "step_mode": "relative", "coder": RANS},
            )
        )
    for bits in (2, 3, 4):
        out.append((f"turbo {bits}b", {"id": "turbo", "bits": bits, "coder": RANS}))
    out.append(("lossless", {"id": "lossless"}))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefix", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--block", type=int, default=0)
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args(argv)

    from kvinfo.dumps.capture import load_model
    from kvinfo.evaluate import evaluate

    model, tok, name = load_model(None, dtype="float32")
    runs = sweep()
    t0 = time.perf_counter()
    res = evaluate(
        model,
        tok,
        [c for _, c in runs],
        prefix=args.prefix,
        max_tokens=args.max_tokens,
        block=args.block,
    )
    dt = time.perf_counter() - t0
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res.as_dict(), f, indent=1)
    b = res.baseline
    print(
        f"model: {name}; machine: {platform.processor() or platform.machine()}, "
        f"{platform.python_version()}; {res.num_scored_tokens} tokens scored after a "
        f"prefix of {res.prefix} (block {args.block}); {dt:.0f} s"
    )
    print()
    print(
        "| codec | bits/element (all) | keys | values | perplexity | Δppl % "
        "| KL (nats/token) | top-1 agreement |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| baseline (uncompressed float32) | 32 | | | {b.perplexity:.3f} | 0 | 0 | 1 |")
    for (label, _), r in zip(runs, res.results, strict=True):
        print(
            f"| {label} | {r.bits_per_element:.3f} | {r.bits_per_element_keys:.3f} | "
            f"{r.bits_per_element_values:.3f} | {r.perplexity:.3f} | "
            f"{r.extra['perplexity_increase_pct']:.2f} | {r.kl_nats_per_token:.5f} | "
            f"{r.top1_agreement:.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
