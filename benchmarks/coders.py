"""Benchmark the lossless coders against the order-0 entropy and against constriction.

Run::

    python benchmarks/coders.py [--dump dumps/default.h5] [--symbols 4200000] [--repeats 5]

Sources of ``--symbols`` symbols each, from 0.05 to 8 bits per symbol:

* ``kv4``: real KV (keys and values of the first layers/heads of ``--dump``), each token
  row quantized to 4 bits with its own absmax scale (16 levels). Without a dump a
  synthetic one is generated and the table says so.
* ``bern0.05``: Bernoulli with H = 0.05 bit (p = 0.00558), the sparse/low-rate regime.
* ``bern0.02``: Bernoulli, p = 0.02 (0.141 bit).
* ``laplace16``: Laplace (scale 1.2) over 16 levels with per-channel scales 0.3..3
  (64 channels), where per-channel tables pay.
* ``gauss16``: a discretised Gaussian (sigma 2.5 levels) over 16 levels.
* ``zipf256``: Zipf (exponent 1.3) truncated to 256 levels.
* ``heavy256``: Student t (2 degrees of freedom, scale 4) over 256 levels.
* ``uniform256``: uniform over 256 levels (8 bits).

For each coder the first table gives the total rate in bits per symbol (stream length,
so header, tables, chunk index and checksums included), its overhead over the empirical
order-0 entropy of the whole array, the side information, and single-thread encode and
decode throughput in M symbols/s of the full codec (``encode``/``decode`` including
histogram, table building, validation and CRCs), median of ``--repeats`` after warm-up,
with the ratio to ``constriction-ans`` measured in the same run.
A second table compares the bare coders: ``kvinfo.kernels.cpu.rans_encode/decode``
(the decoder builds its slot tables itself) against
``constriction.stream.stack.AnsCoder.encode_reverse``/``decode`` with a prepared model,
same symbols, single thread, then kvinfo's rans with all threads
(``numba.get_num_threads()`` at start).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import pathlib
import platform
import sys
import tempfile
import time

import numba
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import constriction  # noqa: E402

import kvinfo  # noqa: E402
from kvinfo.codecs import get_codec  # noqa: E402
from kvinfo.codecs.constriction_peers import categorical_models  # noqa: E402
from kvinfo.codecs.models import PerChannelTables, entropy_bits  # noqa: E402
from kvinfo.kernels import cpu, warmup  # noqa: E402

CODERS = [
    ("rans", {"id": "rans"}),
    ("rans 2^16-symbol chunks (GPU)", {"id": "rans", "chunk_size": 1 << 16}),
    ("huffman", {"id": "huffman"}),
    ("arith", {"id": "arith"}),
    ("arith order-0", {"id": "arith", "context": "none"}),
    ("constriction-ans", {"id": "constriction-ans"}),
    ("constriction-range", {"id": "constriction-range"}),
]


def kv4_source(dump: str | None, n: int) -> tuple[np.ndarray, str]:
    note = ""
    if dump is None or not os.path.exists(dump):
        tmp = pathlib.Path(tempfile.mkdtemp()) / "synthetic.h5"
        kvinfo.dumps.write_synthetic_dump(tmp, num_layers=4, num_kv_heads=2, num_heads=4,
                                          num_tokens=4200, head_dim=64, queries=False)
        dump, note = str(tmp), "SYNTHETIC dump (no real dump given)"
    rows = []
    total = 0
    with kvinfo.open_dump(dump) as d:
        name = d.meta.get("model", "?")
        for _layer, _kind, _head, a in d.iter_slabs(kinds=("keys", "values")):
            x = np.asarray(a, dtype=np.float32)
            scale = np.abs(x).max(axis=1, keepdims=True)
            scale[scale == 0] = 1
            rows.append(np.clip(np.round(x / scale * 7.5 + 7.5), 0, 15).astype(np.uint8))
            total += x.size
            if total >= n:
                break
    q = np.concatenate(rows)
    return q, note or f"{name}, {len(rows)} slabs of {dump}"


def sources(dump, n, seed=0):
    rng = np.random.default_rng(seed)
    kv, note = kv4_source(dump, n)
    n = n // 64 * 64
    g = np.clip(np.round(rng.normal(7.5, 2.5, n)), 0, 15).astype(np.uint8).reshape(-1, 64)
    h = np.clip(np.round(rng.standard_t(2, n) * 4) + 128, 0, 255).astype(np.uint8).reshape(-1, 64)
    lap = np.clip(np.round(rng.laplace(0, 1.2 * np.linspace(0.25, 2.5, 64), (n // 64, 64))),
                  -8, 7).astype(np.int32)
    z = (np.minimum(rng.zipf(1.3, n), 256) - 1).astype(np.uint8).reshape(-1, 64)
    return [("kv4", kv, note),
            ("bern0.05", (rng.random(n) < 0.00558).astype(np.uint8), "Bernoulli p = 0.00558"),
            ("bern0.02", (rng.random(n) < 0.02).astype(np.uint8), "Bernoulli p = 0.02"),
            ("laplace16", lap, "Laplace, 64 channels of scale 0.3..3, clipped to -8..7"),
            ("gauss16", g, "N(7.5, 2.5) rounded, clipped to 0..15"),
            ("zipf256", z, "Zipf 1.3 truncated to 0..255"),
            ("heavy256", h, "round(4 t_2) + 128 clipped to 0..255"),
            ("uniform256", rng.integers(0, 256, n, dtype=np.uint8).reshape(-1, 64),
             "uniform 0..255")]


def best_time(fn, repeats):
    """Median time of ``repeats`` calls (the machine may be shared) and the last result,
    after one untimed call: the first full-size calls of a coder pay the allocator's
    first-touch page faults of the output (glibc then raises its mmap threshold), which
    measured 10 to 14 ms against 10 for the same 4.2 M-symbol decode once warm."""
    fn()
    times = []
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def codec_table(srcs, repeats, threads_all, emit=print, coders=CODERS):
    lines = ["| source | coder | bits/sym | vs H0 | side bits/sym | enc M/s (1 thr) | "
             f"dec M/s (1 thr) | enc / dec vs constriction-ans (1 thr) | enc M/s ({threads_all}"
             f" thr) | dec M/s ({threads_all} thr) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    emit("\n".join(lines))
    for name, x, _ in srcs:
        start = len(lines)
        counts = np.unique(x, return_counts=True)[1]
        h0 = entropy_bits(counts) / x.size
        lines.append(f"| {name} | order-0 entropy H0 | {h0:.4f} | | | | | | | |")
        rows, peer = [], None
        for label, cfg in coders:
            codec = get_codec(cfg)
            codec.decode(codec.encode(x[:1000]))
            res = {}
            for thr in (1, threads_all):
                numba.set_num_threads(thr)
                te, data = best_time(lambda c=codec, x=x: c.encode(x), repeats)
                td, y = best_time(lambda c=codec, d=data: c.decode(d), repeats)
                assert np.array_equal(y, x)
                res[thr] = (te, td, data)
            numba.set_num_threads(threads_all)
            r = codec.rate(res[1][2])
            if cfg["id"] == "constriction-ans":
                peer = res[1]
            rows.append((label, cfg, r, res))
        for label, cfg, r, res in rows:
            bps = r["bits_per_element"]
            par = (f"{x.size / res[threads_all][0] / 1e6:.1f} | "
                   f"{x.size / res[threads_all][1] / 1e6:.1f}"
                   if not cfg["id"].startswith("constriction") else "- | -")
            ratio = f"{peer[0] / res[1][0]:.2f}x / {peer[1] / res[1][1]:.2f}x"
            lines.append(
                f"| {name} | {label} | {bps:.4f} | {100 * (bps / h0 - 1):+.3f} % | "
                f"{r['side_bits_per_element']:.4f} | {x.size / res[1][0] / 1e6:.1f} | "
                f"{x.size / res[1][1] / 1e6:.1f} | {ratio} | {par} |"
            )
        emit("\n".join(lines[start:]))
    return lines


def coder_table(srcs, repeats, threads_all, emit=print):
    lines = ["| source | constriction enc M/s | constriction dec M/s | rans enc M/s (1 thr) | "
             f"rans dec M/s (1 thr) | enc ratio | dec ratio | rans enc M/s ({threads_all} thr)"
             f" | rans dec M/s ({threads_all} thr) |",
             "|---|---|---|---|---|---|---|---|---|"]
    emit("\n".join(lines))
    for name, x, _ in srcs:
        flat = x.reshape(-1)
        if flat.dtype != np.uint8:
            continue
        counts = cpu.histogram(flat, 0, int(flat.max()) + 1)
        tables = PerChannelTables.from_counts(counts, 12, 0)
        (model,) = categorical_models(tables)
        sym32 = flat.astype(np.int32)

        def c_enc(m=model, s=sym32):
            coder = constriction.stream.stack.AnsCoder()
            coder.encode_reverse(s, m)
            return coder.get_compressed()

        ce, comp = best_time(c_enc, repeats)
        cd, cy = best_time(lambda m=model, w=comp, k=sym32.size:
                           constriction.stream.stack.AnsCoder(w).decode(m, k), repeats)
        assert np.array_equal(cy, sym32)
        f = tables.frequencies
        out = np.empty_like(flat)
        res = {}
        for thr in (1, threads_all):
            numba.set_num_threads(thr)
            re_, (w, nw, st) = best_time(
                lambda fl=flat, c=counts, f=f: cpu.rans_encode(fl, 0, f, 12, 1 << 16, counts=c),
                repeats)
            rd, _ = best_time(lambda w=w, nw=nw, st=st, f=f, o=out: cpu.rans_decode(
                w, nw, st, f, 12, 1 << 16, 0, 1, o), repeats)
            assert np.array_equal(out, flat)
            res[thr] = (re_, rd)
        numba.set_num_threads(threads_all)
        m = flat.size / 1e6
        lines.append(
            f"| {name} | {m / ce:.1f} | {m / cd:.1f} | {m / res[1][0]:.1f} | {m / res[1][1]:.1f} "
            f"| {ce / res[1][0]:.2f}x | {cd / res[1][1]:.2f}x | {m / res[threads_all][0]:.1f} | "
            f"{m / res[threads_all][1]:.1f} |"
        )
        emit(lines[-1])
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dump", default="dumps/default.h5", help="KV dump for the kv4 source")
    ap.add_argument("--symbols", type=int, default=4_200_000, help="symbols per source")
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats (median is kept)")
    ap.add_argument("--coders", default=None,
                    help="comma-separated labels of the coder rows to run (default: all; "
                         "constriction-ans, the peer, always runs)")
    ap.add_argument("--sources", default=None, help="comma-separated source names (default: all)")
    ap.add_argument("--skip-bare", action="store_true", help="skip the bare-coder table")
    args = ap.parse_args(argv)
    coders = CODERS
    if args.coders:
        want = {c.strip() for c in args.coders.split(",")} | {"constriction-ans"}
        coders = [(label, cfg) for label, cfg in CODERS if label in want]
        unknown = want - {label for label, _ in CODERS}
        if unknown:
            ap.error(f"unknown coder rows {sorted(unknown)}; expected labels of {CODERS}")
    threads_all = numba.get_num_threads()
    t = time.perf_counter()
    warmup()
    print(f"warmup (compile or load cache): {time.perf_counter() - t:.1f} s")
    srcs = sources(args.dump, args.symbols)
    if args.sources:
        keep = {x.strip() for x in args.sources.split(",")}
        srcs = [src for src in srcs if src[0] in keep]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"numba {numba.__version__} ({numba.threading_layer()}), constriction "
          f"{importlib.metadata.version('constriction')}, numpy {np.__version__}, "
          f"load average {os.getloadavg()[0]:.2f}")
    for name, x, note in srcs:
        print(f"source {name}: {x.size} symbols, shape {x.shape}, {note}")
    def emit(text):
        print(text, flush=True)

    emit("\nFull codecs (rate includes every byte of the stream):\n")
    codec_table(srcs, args.repeats, threads_all, emit, coders)
    if not args.skip_bare:
        emit("\nBare rANS coder vs constriction AnsCoder (same symbols, same 12-bit table):\n")
        coder_table(srcs, args.repeats, threads_all, emit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
