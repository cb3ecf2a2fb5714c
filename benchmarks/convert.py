"""Benchmark ``kvinfo convert`` throughput against zarr's own default compressor.

Run::

    python benchmarks/convert.py --dump dumps/default.h5 [--repeats 3] [--codecs rans,lossless]

The dump is the default model over the built-in prompts (``kvinfo capture``; 30 layers x 3
KV heads x 3,321 tokens x 64, float32: 153 MB of KV). Every kvinfo codec named in
``--codecs`` converts it with :func:`kvinfo.storage.convert_dump` (one zarr chunk per
(layer, head) slab, written to a temporary folder on local disk), and, interleaved with
them in the same run, the peer writes the same slabs with the same chunking through zarr's
default pipeline (``bytes`` + ``zstd`` level 0). Per codec: the median run of ``--repeats`` by
MB/s of uncompressed KV (wall time of the whole conversion, a measurement), the process CPU
seconds of the median run (all threads, so a reader can tell load from work), and the bits
per element on disk. The load average is printed before and after: the machine may be
shared, and only the ratio to the peer in the same run carries over between machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _load() -> str:
    a, b, c = os.getloadavg()
    return f"load average {a:.2f} {b:.2f} {c:.2f} on {os.cpu_count()} CPUs"


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def run_kvinfo(dump: str, out: Path, codec: dict) -> tuple[float, float, float]:
    """``(MB/s of KV, CPU seconds, bits per element)`` of one conversion."""
    from kvinfo.storage import convert_dump

    c0 = _cpu_s()
    info = convert_dump(dump, out, codec)
    return info["kv_mb_per_s"], _cpu_s() - c0, info["bits_per_element"]


def run_peer(dump: str, out: Path) -> tuple[float, float, float]:
    """zarr's default compressor on the same slabs, same chunking, same write pattern."""
    import zarr

    from kvinfo.dumps import open_dump

    shutil.rmtree(out, ignore_errors=True)
    with open_dump(dump) as d:
        c0 = _cpu_s()
        t = time.perf_counter()
        root = zarr.open_group(str(out), mode="w")
        kv = 0
        for kind in ("keys", "values"):
            a = None
            for lay in range(d.num_layers):
                x = np.ascontiguousarray(d.tensor(kind, lay))
                if a is None:
                    a = root.create_array(kind, shape=(d.num_layers, *x.shape), dtype=x.dtype,
                                          chunks=(1, 1, *x.shape[1:]))
                a[lay] = x
                kv += x.nbytes
        sec = time.perf_counter() - t
        cpu = _cpu_s() - c0
    return kv / 1e6 / sec, cpu, 8 * _size(out) / (kv / x.itemsize)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dump", required=True, help="a real dump (the default capture)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--codecs", default="rans",
                   help="kvinfo codecs: comma-separated ids, or ';'-separated JSON configs "
                        "(e.g. '{\"id\": \"rans\", \"store_below\": 0.005};rans')")
    args = p.parse_args(argv)
    from kvinfo.kernels import warmup

    warmup()
    sep = ";" if "{" in args.codecs else ","
    specs = [c.strip() for c in args.codecs.split(sep) if c.strip()]
    cfgs = {c: json.loads(c) if c.startswith("{") else {"id": c} for c in specs}
    codecs = list(cfgs)
    tmp = Path(tempfile.mkdtemp(prefix="kvinfo-convert-"))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}; dump {args.dump}")
    print(f"before: {_load()}")
    # one untimed conversion each (file cache, zarr imports, codec set-up)
    for cid in codecs:
        run_kvinfo(args.dump, tmp / "warm.zarr", cfgs[cid])
    run_peer(args.dump, tmp / "warm-peer.zarr")
    runs: dict[str, list] = {cid: [] for cid in codecs}
    runs["zarr default (zstd), peer"] = []
    for _ in range(args.repeats):  # interleaved, so load changes hit every codec alike
        for cid in codecs:
            runs[cid].append(run_kvinfo(args.dump, tmp / f"run{codecs.index(cid)}.zarr",
                                        cfgs[cid]))
        runs["zarr default (zstd), peer"].append(run_peer(args.dump, tmp / "peer.zarr"))
    def median_run(vals):
        return sorted(vals, key=lambda r: r[0])[len(vals) // 2]

    peer = median_run(runs["zarr default (zstd), peer"])[0]
    print(f"after: {_load()}")
    print("| codec | MB/s of KV (median) | vs peer | CPU s (median run) | bits per element |")
    print("|---|---|---|---|---|")
    for label, vals in runs.items():
        med = median_run(vals)
        print(f"| {label} | {med[0]:.1f} | {med[0] / peer:.2f}x | {med[1]:.2f} | {med[2]:.2f} |")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
