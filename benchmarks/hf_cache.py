"""CompressedCache and long-context evaluation on the default model (issue 18 targets).

Usage: ``OPENBLAS_NUM_THREADS=1 python benchmarks/hf_cache.py OUT_DIR [PARTS...]`` with parts
among ``memory`` (bytes held at 8K tokens and per-token decode time against the plain
cache), ``ppl4k`` (a 4K-context perplexity run for one codec, timed), ``sweep2k`` /
``sweep8k`` (the quality sweep with bootstrap CIs) and ``needle`` (retrieval at 2K/4K/8K).
Environment: ``KVINFO_BENCH_SEGMENTS`` (segments per context, default 8) and
``KVINFO_BENCH_NEEDLE`` (comma lengths, default 2048,4096,8192). Each part writes
``OUT_DIR/<part>.json`` (``eval`` results documents for the quality parts).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

RANS = {"id": "rans"}
UNIFORM4 = {"keys": {"id": "uniform", "bits": 4, "axis": "channel", "coder": RANS},
            "values": {"id": "uniform", "bits": 4, "axis": "token", "coder": RANS}}
SWEEP = [
    ("lossless", {"id": "lossless"}),
    ("uniform 4b (K/channel, V/token)", UNIFORM4),
    ("ecsq step 0.25 x RMS", {"id": "ecsq", "step": 0.25, "step_mode": "relative",
                              "coder": RANS}),
    ("turbo 3b", {"id": "turbo", "bits": 3, "coder": RANS}),
    ("turbo 4b", {"id": "turbo", "bits": 4, "coder": RANS}),
]


def _machine():
    return {"machine": platform.machine(), "cpus": os.cpu_count(),
            "load_avg_1min": os.getloadavg()[0]}


def memory(model, tok, out: Path, context: int = 8192, steps: int = 6):
    import torch
    from transformers import DynamicCache

    from kvinfo.corpus import load_corpus
    from kvinfo.hf import CompressedCache, cache_kwargs

    ids = tok(load_corpus().text, return_tensors="pt").input_ids[:, :context + steps]
    prompt, nxt = ids[:, :context], ids[:, context:]
    t0 = time.perf_counter()
    plain = DynamicCache()
    with torch.no_grad():
        model(prompt, use_cache=True, logits_to_keep=1, **cache_kwargs(model, plain))
    prefill_s = time.perf_counter() - t0
    comp = CompressedCache(UNIFORM4, window=128, block=128).ingest(plain)

    def step_times(cache):
        ts = []
        with torch.no_grad():
            for i in range(steps):
                t = time.perf_counter()
                model(nxt[:, i:i + 1], use_cache=True, **cache_kwargs(model, cache))
                ts.append(time.perf_counter() - t)
        return ts

    # alternate so that load drift hits both alike
    plain_t, comp_t = [], []
    for _ in range(2):
        plain_t += step_times(plain)
        comp_t += step_times(comp)
    rep = comp.memory_report("bfloat16")
    rep.update(plain_float32_bytes=comp.plain_bytes("float32"), context=context,
               codec=UNIFORM4, window=128, block=128, prefill_s=prefill_s,
               plain_step_s_median=statistics.median(plain_t),
               compressed_step_s_median=statistics.median(comp_t),
               step_ratio=statistics.median(comp_t) / statistics.median(plain_t),
               **_machine())
    (out / "memory.json").write_text(json.dumps(rep, indent=1))
    print(json.dumps(rep, indent=1), flush=True)


def _ctx(model, tok, out, name, context, codecs, segments):
    from kvinfo.evaluate import evaluate_context

    res = evaluate_context(model, tok, [c for _, c in codecs], context=context,
                           max_segments=segments, min_scored_tokens=10**9, progress=True)
    res.model = "SmolLM2-135M-Instruct (Q4_1 GGUF, float32)"
    doc = res.to_results(settings={"labels": [n for n, _ in codecs], **_machine()})
    (out / f"{name}.json").write_text(json.dumps(doc, indent=1))
    print(name, f"{res.seconds:.0f} s", res.num_segments, "segments",
          res.num_scored_tokens, "tokens", flush=True)
    for (label, _), r in zip([("baseline", None), *codecs], [res.baseline, *res.results],
                             strict=True):
        print(f"  {label:<34} bits {r.bits_per_element} ppl {r.perplexity:.3f} "
              f"{r.perplexity_ci} dppl {r.perplexity_increase_pct:.2f}% "
              f"{r.perplexity_increase_ci} KL {r.kl_nats_per_token:.5f} {r.kl_ci} "
              f"top1 {r.top1_agreement:.3f}", flush=True)


def main(argv):
    from kvinfo.dumps.capture import load_model

    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    parts = argv[1:] or ["memory", "ppl4k", "sweep2k", "needle"]
    seg = int(os.environ.get("KVINFO_BENCH_SEGMENTS", "8"))
    model, tok, _ = load_model(None, dtype="float32")
    for part in parts:
        if part == "memory":
            memory(model, tok, out)
        elif part == "ppl4k":
            _ctx(model, tok, out, "ppl4k", 4096, [SWEEP[1]], seg)
        elif part == "sweep2k":
            _ctx(model, tok, out, "sweep2k", 2048, SWEEP, seg)
        elif part == "sweep8k":
            _ctx(model, tok, out, "sweep8k", 8192, SWEEP, seg)
        elif part == "needle":
            from kvinfo.needle import evaluate_needle

            lengths = [int(x) for x in
                       os.environ.get("KVINFO_BENCH_NEEDLE", "2048,4096,8192").split(",")]
            codecs = [SWEEP[0], SWEEP[1], SWEEP[3]]
            t0 = time.perf_counter()
            res = evaluate_needle(model, tok, [c for _, c in codecs], lengths=lengths,
                                  depths=(0.0, 0.5, 1.0), num_trials=1, progress=True)
            res.model = "SmolLM2-135M-Instruct (Q4_1 GGUF, float32)"
            doc = res.to_results(settings={"seconds": time.perf_counter() - t0, **_machine()})
            (out / "needle.json").write_text(json.dumps(doc, indent=1, default=str))
            print(json.dumps(res.as_dict(), indent=1, default=str), flush=True)
        else:
            raise SystemExit(f"unknown part {part!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
