"""Benchmark scale-out and storage: analyze over 8 dumps on 1 vs 2 Dask workers, and
``kvinfo convert`` throughput.

Run::

    python benchmarks/scale.py --dump dumps/default.h5 [--dumps 8] [--layers 0-9] [--repeats 1]

What it measures (every figure a measurement on this machine, with the load average):

1. **analyze over 8 dumps.** The real dump ``--dump`` (default: the default model over the
   built-in prompts, ``kvinfo capture``) holds 8 sequences; each becomes its own dump (real
   KV, not the test fixtures), and :func:`kvinfo.analysis.analyze_dumps` combines them. The
   same run is timed on a ``LocalCluster`` of 1 worker and of 2 workers (single-threaded
   processes, ``NUMBA_NUM_THREADS``/``OMP``/``MKL``/``OPENBLAS`` = 1 in both), cluster start
   excluded, alternating ``--repeats`` times, median wall time and the ratio; the two
   documents are compared record by record.
2. **per-task overhead**: 200 no-op tasks through the 2-worker cluster (scheduler round trip
   per task), and the time a task spends opening the 8 dumps (first task on a worker; later
   tasks reuse the open set).
3. **the scaling model** ``T(N) = T_client + ceil-ish(S / N) * (t_slab + t_task)``
   with the measured per-slab time ``t_slab`` (in-process, one thread), so that a reader can
   predict a run on N workers (see docs/scale-out.md).
4. **convert**: the default dump into zarr with ``{"id": "rans"}``, and in the same run with
   zarr's own default compressor (zstd, the peer) and with kvinfo ``lossless``: MB/s of KV
   and bits per element.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def _load() -> str:
    a, b, c = os.getloadavg()
    return f"load average {a:.2f} {b:.2f} {c:.2f} on {os.cpu_count()} CPUs"


def split_dump(src: str, out_dir: Path, count: int) -> list[str]:
    """One dump per sequence of ``src`` (the first ``count`` sequences)."""
    import h5py

    from kvinfo.dumps import DumpWriter, open_dump

    paths = []
    with open_dump(src) as d, h5py.File(src, "r") as f:
        seqs = d.sequences()[:count]
        if len(seqs) < count:
            sys.exit(f"{src} has {len(seqs)} sequences; need {count}")
        raw = dict(f.attrs.items())
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()
                 if k in ("weights_checksum", "rope", "capture", "model_type")}
        for k in ("rope", "capture"):
            if isinstance(attrs.get(k), str):
                attrs[k] = json.loads(attrs[k])
        for i, (a, b) in enumerate(seqs):
            p = out_dir / f"part{i}.h5"
            w = DumpWriter(p, model=d.meta["model"], dtype=d.dtype, num_layers=d.num_layers,
                           num_heads=d.num_heads, num_kv_heads=d.num_kv_heads,
                           head_dim=d.head_dim, kinds=("keys", "values"), attrs=attrs)
            w.append(np.asarray(d.token_ids)[a:b],
                     {k: np.asarray(f[k][:, :, a:b]) for k in ("keys", "values")})
            paths.append(str(w.close()))
    return paths


def _records(doc):
    return json.loads(json.dumps(doc["records"]))


def bench_analyze(paths, selection, repeats, knn_samples):
    from kvinfo.analysis import AnalysisWarning, analyze_dumps
    from kvinfo.analysis.engine import analyze_one_slab
    from kvinfo.analysis.multi import open_dump_set, release_dump_set
    from kvinfo.cluster import TaskRunner, pinned_environment

    opts = {"knn_samples": knn_samples}
    warnings.simplefilter("ignore", AnalysisWarning)
    print(f"before: {_load()}")
    # in-process per-slab time (this process, threads as configured), the model's t_slab
    t0 = time.perf_counter()
    d = open_dump_set(paths)
    t_open = time.perf_counter() - t0
    sel = selection.resolve(d)
    from kvinfo.analysis import DEFAULT_SNR_DB
    from kvinfo.analysis.engine import _options

    # the options analyze_dumps uses; slabs spread evenly over the selection (slab cost
    # grows with the layer), so that their mean is the mean task of the run
    o = _options(DEFAULT_SNR_DB, 20.0, knn_samples, 4, 0, 5, 4.0)
    every = sel.slabs()
    sample = every[:: max(1, len(every) // 6)][:6]
    w0 = sample[0]
    analyze_one_slab(sel.take(d.slab(w0[1], w0[0], w0[2])), sel, o, w0)  # warm
    ts = []
    for w in sample:
        t = time.perf_counter()
        analyze_one_slab(sel.take(d.slab(w[1], w[0], w[2])), sel, o, w)
        ts.append(time.perf_counter() - t)
    t_slab = statistics.fmean(ts)
    release_dump_set()
    print(f"per-slab analysis in-process: t_slab = {t_slab * 1e3:.0f} ms (mean of "
          f"{len(ts)} slabs spread over the selection); opening the {len(paths)} dumps: "
          f"{t_open * 1e3:.0f} ms", flush=True)
    S = len(sel.slabs())
    runners = {}
    starts = {}
    for n in (1, 2):
        t = time.perf_counter()
        runners[n] = TaskRunner(workers=n).__enter__()
        starts[n] = time.perf_counter() - t
        print(f"  cluster of {n} started in {starts[n]:.1f} s", flush=True)
        env = [r for _, r in runners[n].map(pinned_environment, list(range(n)))]
        assert all(e["numba_threads"] == 1 and e["OPENBLAS_NUM_THREADS"] == "1" for e in env)
        # warm every worker: imports, Numba cache loads, the open dump set
        analyze_dumps(paths, selection, scheduler=runners[n].client.scheduler.address,
                      **{**opts, "knn_samples": 50})
    times = {1: [], 2: []}
    docs = {}
    from distributed import get_task_stream

    task_s = {1: [], 2: []}  # compute seconds of each task on its worker (Dask task stream)
    for _ in range(repeats):
        for n in (1, 2):
            t = time.perf_counter()
            with get_task_stream(runners[n].client) as stream:
                docs[n] = analyze_dumps(paths, selection,
                                        scheduler=runners[n].client.scheduler.address, **opts)
            times[n].append(time.perf_counter() - t)
            task_s[n] = [sum(ss["stop"] - ss["start"] for ss in rec["startstops"]
                             if ss["action"] == "compute") for rec in stream.data]
            print(f"  --workers {n}: {times[n][-1]:.2f} s ({_load()})", flush=True)
    same = _records(docs[1]) == _records(docs[2])
    # per-task overhead: no-op tasks through the 2-worker cluster
    t = time.perf_counter()
    k = 200
    list(runners[2].map(abs, list(range(-k, 0))))
    t_task = (time.perf_counter() - t) / k * 2  # per task per worker (2 run at once)
    for r in runners.values():
        r.close()
    m1, m2 = statistics.median(times[1]), statistics.median(times[2])
    print(f"after: {_load()}")
    print(f"dumps: {len(paths)} (one per sequence of the source), slabs: {S}, "
          f"tokens per slab: {sel.num_tokens}")
    print(f"analyze, --workers 1: {m1:.2f} s (median of {repeats}: "
          f"{', '.join(f'{v:.2f}' for v in times[1])})")
    print(f"analyze, --workers 2: {m2:.2f} s (median of {repeats}: "
          f"{', '.join(f'{v:.2f}' for v in times[2])})")
    print(f"speed-up 2 vs 1 workers: {m1 / m2:.2f}x (measurement, same run); results "
          f"identical: {same}")
    print(f"cluster start: {starts[1]:.1f} s (1 worker), {starts[2]:.1f} s (2 workers), "
          "not in the times above")
    print(f"per-slab analysis in-process: t_slab = {t_slab * 1e3:.0f} ms (mean of "
          f"{len(ts)} slabs spread over the selection); opening the {len(paths)} dumps: "
          f"{t_open * 1e3:.0f} ms (once per worker)")
    print(f"per-task overhead (no-op task round trip per worker): {t_task * 1e3:.1f} ms")
    if task_s[1]:
        t_slab = statistics.fmean(task_s[1])  # on the worker, one thread, as in the runs
        print(f"per-task compute on the workers (task stream): mean {t_slab * 1e3:.0f} ms with "
              f"1 worker, {statistics.fmean(task_s[2]) * 1e3:.0f} ms with 2 (max "
              f"{max(task_s[1]) * 1e3:.0f} ms); the model uses the 1-worker mean")
    t_client = max(m1 - S * (t_slab + t_task), 0.0)
    print(f"model: T(N) = T_client + ceil(S / N) * (t_slab + t_task), S = {S}, "
          f"T_client = {t_client:.2f} s (from the 1-worker run); predicts "
          f"T(2) = {t_client + math.ceil(S / 2) * (t_slab + t_task):.2f} s (measured "
          f"{m2:.2f}), T(64) = {t_client + math.ceil(S / 64) * (t_slab + t_task):.2f} s with "
          f"S = {S} "
          f"(at most S workers are busy)")
    return {"t1": m1, "t2": m2, "same": same}


def bench_convert(dump, repeats):
    """The convert part: ``benchmarks/convert.py`` (kvinfo ``rans`` and ``lossless`` against
    zarr's default zstd on the same slabs, same chunking, interleaved)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import convert

    convert.main(["--dump", str(dump), "--repeats", str(repeats), "--codecs", "rans,lossless"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dump", required=True, help="a real dump with at least --dumps sequences")
    p.add_argument("--dumps", type=int, default=8)
    p.add_argument("--layers", default="0-9", help="layers analysed (default 0-9)")
    p.add_argument("--knn-samples", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--skip-analyze", action="store_true")
    p.add_argument("--skip-convert", action="store_true")
    args = p.parse_args(argv)
    from kvinfo.dumps import Selection

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}")
    if not args.skip_analyze:
        tmp = Path(tempfile.mkdtemp(prefix="kvinfo-scale-"))
        paths = split_dump(args.dump, tmp, args.dumps)
        bench_analyze(paths, Selection(layers=args.layers), args.repeats, args.knn_samples)
    if not args.skip_convert:
        bench_convert(args.dump, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
