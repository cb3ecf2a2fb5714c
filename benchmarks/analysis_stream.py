"""Streaming throughput of kvinfo.analysis sufficient statistics, single core.

Measures MB/s of stored KV (bf16: 2 bytes per element) for the order-0 pattern counts, the
covariance, both together (the issue's target: >= 200 MB/s per core), and the full
SlabStats (adds kurtosis and lag-1 pair statistics), with numpy peers measured in the same
run: ``np.bincount`` on uint16 views for the counts, ``np.cov`` for the covariance and a
plain read of the data (``sum`` of the uint16 view) as the memory-bandwidth ceiling.
Then it times :func:`analyze_slab` on a real-size slab and, if the dump exists, the whole
``kvinfo analyze`` of the default-model dump.

Usage::

    python benchmarks/analysis_stream.py [--dump dumps/default.h5] [--mb 64] [--chunk 8192]

BLAS and OpenMP are pinned to one thread before numpy is imported.
"""

from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402

from kvinfo.analysis import MomentStats, PatternCounts, SlabStats, analyze_slab  # noqa: E402
from kvinfo.analysis._stats import _count_u16_numpy, bit_view, to_float64, warmup  # noqa: E402


def _data(dump: Path | None, mb: float, d_default: int = 64):
    """A bf16 stream of about ``mb`` MB: real keys/values tiled, or Gaussian if no dump."""
    if dump is not None and dump.exists():
        from kvinfo import open_dump

        parts = []
        with open_dump(dump) as dd:
            if dd.dtype == "bfloat16":
                for _layer, _kind, _head, slab in dd.iter_slabs():
                    parts.append(np.asarray(slab))
                    if sum(p.nbytes for p in parts) >= mb * 1e6:
                        break
        if parts:
            x = np.concatenate(parts)
            reps = int(np.ceil(mb * 1e6 / x.nbytes))
            return np.tile(x, (reps, 1))[: int(mb * 1e6 / (2 * x.shape[1]))], f"real ({dump})"
    rng = np.random.default_rng(0)
    n = int(mb * 1e6 / (2 * d_default))
    return rng.standard_normal((n, d_default)).astype(ml_dtypes.bfloat16), "Gaussian"


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dump", type=Path, default=Path("dumps/default.h5"))
    ap.add_argument("--mb", type=float, default=64.0)
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    warmup()
    x, what = _data(args.dump, args.mb)
    n, d = x.shape
    mb = x.nbytes / 1e6
    bits = bit_view(x)
    chunk = args.chunk
    print(f"# analysis streaming, {platform.processor() or platform.machine()}, 1 thread")
    print(f"# data: {what}, bf16, {n} vectors x {d} dims = {mb:.1f} MB, chunks of {chunk} rows\n")

    def read():
        for s in range(0, n, chunk):
            int(bits[s : s + chunk].sum(dtype=np.uint64))

    def counts_kernel():
        pc = PatternCounts(d, "bfloat16")
        for s in range(0, n, chunk):
            pc.update(bits[s : s + chunk])

    def counts_numpy():
        c = np.zeros((d, 1 << 16), np.int64)
        for s in range(0, n, chunk):
            _count_u16_numpy(bits[s : s + chunk], c)

    def cov_stream():
        m = MomentStats(d, higher=False)
        for s in range(0, n, chunk):
            m.update(to_float64(x[s : s + chunk]), overwrite=True)
        return m.covariance()

    def cov_numpy():
        return np.cov(x.astype(np.float32).astype(np.float64), rowvar=False)

    def order0_and_cov():
        pc = PatternCounts(d, "bfloat16")
        m = MomentStats(d, higher=False)
        for s in range(0, n, chunk):
            c = x[s : s + chunk]
            pc.update(bit_view(c))
            m.update(to_float64(c), overwrite=True)

    def full():
        st = SlabStats(d, "bfloat16")
        starts = np.zeros(chunk, bool)
        for s in range(0, n, chunk):
            c = x[s : s + chunk]
            st.update(c, starts[: c.shape[0]])

    np.testing.assert_allclose(cov_stream(), cov_numpy(), rtol=1e-8, atol=1e-10)
    rows = [
        ("read (sum of uint16 view), peer ceiling", read),
        ("order-0 counts, kvinfo kernel", counts_kernel),
        ("order-0 counts, numpy bincount peer", counts_numpy),
        ("covariance, kvinfo streaming (Chan merge)", cov_stream),
        ("covariance, np.cov whole array peer", cov_numpy),
        ("order-0 + covariance (target >= 200)", order0_and_cov),
        ("full SlabStats (+kurtosis, +lag-1 pairs)", full),
    ]
    res = {}
    print(f"| {'statistic':<44} | {'MB/s':>7} | {'vs peer':>8} |")
    print(f"|{'-' * 46}|{'-' * 9}|{'-' * 10}|")
    for name, fn in rows:
        fn()  # warm
        res[name] = mb / _best(fn, args.repeats)
    peer = {
        "order-0 counts, kvinfo kernel": "order-0 counts, numpy bincount peer",
        "covariance, kvinfo streaming (Chan merge)": "covariance, np.cov whole array peer",
    }
    for name, _ in rows:
        ratio = f"{res[name] / res[peer[name]]:.2f}x" if name in peer else ""
        if name.startswith(("order-0 +", "full")):
            ratio = f"{res[name] / res[rows[0][0]]:.3f} of read"
        print(f"| {name:<44} | {res[name]:>7.0f} | {ratio:>8} |")

    # per-slab analysis at the real geometry (3321 tokens x 64 dims, kNN on 2000)
    real = x[:3321]
    analyze_slab(real, knn_samples=2000)  # warm (Gaussian kNN bias reference is cached)
    t = _best(lambda: analyze_slab(real, knn_samples=2000), args.repeats)
    print(f"\nanalyze_slab on one {real.shape[0]} x {d} bf16 slab (kNN 2000): {t * 1e3:.0f} ms")

    if args.dump.exists():
        from kvinfo.cli import main as cli_main

        out = Path(os.environ.get("TMPDIR", "/tmp")) / "analysis_stream_bench.json"
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            rc = cli_main(["analyze", str(args.dump), "-o", str(out), "--no-progress"])
        dt = time.perf_counter() - t0
        print(f"kvinfo analyze {args.dump} (all layers, keys+values): {dt:.1f} s, exit {rc}")


if __name__ == "__main__":
    main()
