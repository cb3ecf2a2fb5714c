"""CompressedCache and long-context evaluation on the default model (issue 18 targets).

Usage: ``OPENBLAS_NUM_THREADS=1 python benchmarks/hf_cache.py OUT_DIR [PARTS...]`` with parts
among ``memory`` (bytes held at 8K tokens and per-token decode time of the plain cache,
of ``CompressedCache`` decoding every block each step and of ``keep_decoded=True``, in the same
run), ``ppl4k`` (a 4K-context perplexity run for one codec, timed), ``sweep2k`` /
``sweep8k`` (the quality sweep with bootstrap CIs) and ``needle`` (retrieval at 2K/4K/8K);
``table NAME...`` prints the tables of finished sweeps (paired codec differences included).
Environment: ``KVINFO_BENCH_SEGMENTS`` (segments per context, default 8;
``KVINFO_BENCH_SEGMENTS_8K``
for ``sweep8k``, default the same), ``KVINFO_BENCH_NEEDLE`` (comma lengths, default
2048,4096,8176: 8,192 positions less the answer's room) and ``KVINFO_BENCH_THREADS``
(torch threads, default 2). Each part writes
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
#: at 8K lossless is left out (its exactness is shown at 2K and by the tests): time
SWEEP_8K = SWEEP[1:]
#: lossless, uniform 4-bit, turbo 3-bit and the best codec per bits of the 2K sweep (turbo 4b)
NEEDLE = [SWEEP[0], SWEEP[1], SWEEP[3], SWEEP[4]]


def _machine(start_load=None):
    import torch

    d = {"machine": platform.machine(), "cpus": os.cpu_count(),
         "torch_threads": torch.get_num_threads(), "load_avg_1min": os.getloadavg()[0]}
    if start_load is not None:
        d["load_avg_1min_at_start"] = start_load
    return d


def memory(model, tok, out: Path, context: int = 8192, steps: int = 2, rounds: int = 2):
    import torch
    from transformers import DynamicCache

    from kvinfo.corpus import load_corpus
    from kvinfo.hf import CompressedCache, cache_kwargs

    start = os.getloadavg()[0]
    ids = tok(load_corpus().text, return_tensors="pt").input_ids[:, :context + steps * rounds]
    prompt, nxt = ids[:, :context], ids[:, context:]
    t0 = time.perf_counter()
    plain = DynamicCache()
    with torch.no_grad():
        model(prompt, use_cache=True, logits_to_keep=1, **cache_kwargs(model, plain))
    prefill_s = time.perf_counter() - t0
    comp = CompressedCache(UNIFORM4, window=128, block=128).ingest(plain)
    kept = CompressedCache(UNIFORM4, window=128, block=128, keep_decoded=True).ingest(plain)

    def step_times(cache, i0):
        ts = []
        with torch.no_grad():
            for i in range(i0, i0 + steps):
                t = time.perf_counter()
                model(nxt[:, i:i + 1], use_cache=True, **cache_kwargs(model, cache))
                ts.append(time.perf_counter() - t)
        return ts

    # the three caches take turns, the same tokens each, so that load drift hits all alike
    times = {"plain": [], "compressed": [], "keep_decoded": []}
    for r in range(rounds):
        for name, cache in (("plain", plain), ("compressed", comp), ("keep_decoded", kept)):
            times[name] += step_times(cache, r * steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    rep = comp.memory_report("bfloat16")
    rep.update(plain_float32_bytes=comp.plain_bytes("float32"), context=context,
               codec=UNIFORM4, window=128, block=128, prefill_s=prefill_s,
               plain_step_s_median=med["plain"],
               compressed_step_s_median=med["compressed"],
               keep_decoded_step_s_median=med["keep_decoded"],
               step_ratio=med["compressed"] / med["plain"],
               keep_decoded_step_ratio=med["keep_decoded"] / med["plain"],
               keep_decoded_memory=kept.memory_report("bfloat16"),
               step_times_s=times, **_machine(start))
    (out / "memory.json").write_text(json.dumps(rep, indent=1))
    print(json.dumps(rep, indent=1), flush=True)


def _ctx(model, tok, out, name, context, codecs, segments):
    from kvinfo.evaluate import evaluate_context

    start = os.getloadavg()[0]
    res = evaluate_context(model, tok, [c for _, c in codecs], context=context,
                           max_segments=segments, min_scored_tokens=10**9, progress=True)
    res.model = "SmolLM2-135M-Instruct (Q4_1 GGUF, float32)"
    doc = res.to_results(settings={"labels": [n for n, _ in codecs], **_machine(start)})
    (out / f"{name}.json").write_text(json.dumps(doc, indent=1))
    print(name, f"{res.seconds:.0f} s", res.num_segments, "segments",
          res.num_scored_tokens, "tokens", flush=True)
    for (label, _), r in zip([("baseline", None), *codecs], [res.baseline, *res.results],
                             strict=True):
        print(f"  {label:<34} bits {r.bits_per_element} ppl {r.perplexity:.3f} "
              f"{r.perplexity_ci} dppl {r.perplexity_increase_pct:.2f}% "
              f"{r.perplexity_increase_ci} KL {r.kl_nats_per_token:.5f} {r.kl_ci} "
              f"top1 {r.top1_agreement:.3f}", flush=True)


def _pair_ci(a, b, n, stat, seed=0):
    """Paired bootstrap interval of ``stat(a) - stat(b)`` over the same resampled segments."""
    from kvinfo.evaluate import bootstrap_ci

    return bootstrap_ci(lambda i: stat(a, i, n) - stat(b, i, n), len(n), seed=seed)


def table(out: Path, name: str):
    """Markdown tables of ``OUT/<name>.json`` (a quality sweep): every run with its 95 %
    bootstrap intervals, then paired codec-vs-codec differences (significant where the
    interval excludes 0)."""
    import math

    import numpy as np

    doc = json.loads((out / f"{name}.json").read_text())
    sets = doc["settings"]
    labels = sets["labels"]
    segs = [sets["segments"]["baseline"], *sets["segments"]["codecs"]]
    n = np.asarray(segs[0]["num_tokens"], dtype=float)
    recs = doc["records"]
    print(f"{name}: context {sets['context']}, {sets['num_segments']} segments, "
          f"{int(n.sum())} scored tokens, {sets.get('seconds', float('nan')):.0f} s, "
          f"timing {sets.get('timing')}, load {sets.get('load_avg_1min_at_start')} -> "
          f"{sets.get('load_avg_1min')}\n")
    print("| run | bits/element | perplexity (95 % CI) | ppl change % (95 % CI) | "
          "KL nats/token (95 % CI) | top-1 |")
    print("|---|---:|---|---|---|---:|")
    for label, r in zip(["baseline", *labels], recs, strict=True):
        m = r["metrics"]
        b = m.get("bits_per_element")
        print(f"| {label} | {'' if b is None else f'{b:.2f}'} | {m['perplexity']:.3f} "
              f"({m['perplexity_ci_low']:.3f} to {m['perplexity_ci_high']:.3f}) | "
              f"{m['perplexity_increase_pct']:+.2f} ({m['perplexity_increase_ci_low']:+.2f} "
              f"to {m['perplexity_increase_ci_high']:+.2f}) | {m['kl_nats_per_token']:.5f} "
              f"({m['kl_ci_low']:.5f} to {m['kl_ci_high']:.5f}) | {m['top1_agreement']:.3f} |")

    def kl(s, i, n):
        return np.asarray(s["kl_sum"])[i].sum() / n[i].sum()

    def ratio(a, b, i):  # perplexity of A over that of B, in % above 1
        d = np.asarray(a["nll_sum"])[i].sum() - np.asarray(b["nll_sum"])[i].sum()
        return 100 * (math.exp(d / n[i].sum()) - 1)

    from kvinfo.evaluate import bootstrap_ci

    print("\n| A vs B | KL(A) - KL(B) (95 % CI) | ppl(A) / ppl(B) - 1, % (95 % CI) "
          "| significant |")
    print("|---|---|---|---|")
    every = np.arange(len(n))
    for i in range(1, len(segs)):
        for j in range(i + 1, len(segs)):
            a, b = segs[i], segs[j]
            d_kl = kl(a, every, n) - kl(b, every, n)
            lo, hi = _pair_ci(a, b, n, kl)
            d_p = ratio(a, b, every)
            plo, phi = bootstrap_ci(lambda idx, a=a, b=b: ratio(a, b, idx), len(n))
            sig = [w for w, (x, y) in (("KL", (lo, hi)), ("ppl", (plo, phi)))
                   if not (x <= 0 <= y)]
            print(f"| {labels[i - 1]} vs {labels[j - 1]} | {d_kl:+.5f} ({lo:+.5f} to "
                  f"{hi:+.5f}) | {d_p:+.3f} ({plo:+.3f} to {phi:+.3f}) | "
                  f"{', '.join(sig) or 'no'} |")


def needle(model, tok, out: Path):
    """Needle retrieval, one results file per length (``OUT/needle-<L>.json``, written as
    each length finishes). ``KVINFO_BENCH_NEEDLE_DEPTHS`` sets depths per length
    (``"2048:0,0.5,1;8192:0.5"``, default 0, 0.5, 1 everywhere) and
    ``KVINFO_BENCH_NEEDLE_LOSSLESS_MAX`` the longest length that runs ``lossless`` (its
    encoder is the slowest; default every length)."""
    from kvinfo.needle import evaluate_needle

    lengths = [int(x) for x in os.environ.get("KVINFO_BENCH_NEEDLE", "2048,4096,8176").split(",")]
    depths = {}
    for item in filter(None, os.environ.get("KVINFO_BENCH_NEEDLE_DEPTHS", "").split(";")):
        length, ds = item.split(":")
        depths[int(length)] = [float(d) for d in ds.split(",")]
    lossless_max = int(os.environ.get("KVINFO_BENCH_NEEDLE_LOSSLESS_MAX", str(max(lengths))))
    for length in lengths:
        codecs = [c for c in NEEDLE if c[0] != "lossless" or length <= lossless_max]
        start, t0 = os.getloadavg()[0], time.perf_counter()
        res = evaluate_needle(model, tok, [c for _, c in codecs], lengths=[length],
                              depths=depths.get(length, (0.0, 0.5, 1.0)), num_trials=1,
                              progress=True)
        res.model = "SmolLM2-135M-Instruct (Q4_1 GGUF, float32)"
        doc = res.to_results(settings={"seconds": time.perf_counter() - t0,
                                       "labels": [n for n, _ in codecs], **_machine(start)})
        (out / f"needle-{length}.json").write_text(json.dumps(doc, indent=1, default=str))
        print(json.dumps(res.as_dict(), indent=1, default=str), flush=True)
        print(f"needle {length}: {time.perf_counter() - t0:.0f} s", flush=True)


def main(argv):
    import torch

    from kvinfo.dumps.capture import load_model

    torch.set_num_threads(int(os.environ.get("KVINFO_BENCH_THREADS", "2")))
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    parts = argv[1:] or ["memory", "ppl4k", "sweep2k", "needle"]
    if parts[0] == "table":  # reads results, loads no model
        for name in parts[1:]:
            table(out, name)
        return
    seg = int(os.environ.get("KVINFO_BENCH_SEGMENTS", "8"))
    model, tok, _ = load_model(None, dtype="float32")
    for part in parts:
        if part == "memory":
            memory(model, tok, out,
                   context=int(os.environ.get("KVINFO_BENCH_MEMORY_CONTEXT", "8192")))
        elif part == "ppl4k":
            _ctx(model, tok, out, "ppl4k", 4096, [SWEEP[1]], seg)
        elif part == "sweep2k":
            _ctx(model, tok, out, "sweep2k", 2048, SWEEP, seg)
        elif part == "sweep8k":
            _ctx(model, tok, out, "sweep8k", 8192, SWEEP_8K,
                 int(os.environ.get("KVINFO_BENCH_SEGMENTS_8K", str(seg))))
        elif part == "needle":
            needle(model, tok, out)
        else:
            raise SystemExit(f"unknown part {part!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
