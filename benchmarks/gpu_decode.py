"""GPU decode benchmark: kvinfo's CUDA rANS / Huffman / fused uniform decode against the
device copy ceiling and nvCOMP's ANS, same data, same run. Needs a CUDA GPU and CuPy;
nvCOMP (``nvidia-nvcomp-cu13``) is optional (its columns say n/a without it).

Run on the GPU machine::

    python benchmarks/gpu_decode.py [--sizes-mib 16,64,256,1024] [--repeats 10]
                                    [--out-dir DIR]

Data: uint8 symbols of a 16-level discretised Gaussian (sigma 2.47 levels, centred at
7.5, clipped), drawn fresh on the GPU each run; every size is a prefix of one array,
shaped ``(slabs, 4096 tokens, 128 channels)``. For each size the script:

1. measures the device copy ceiling (CuPy device-to-device copy; bytes read + written);
2. compresses with nvCOMP ANS (``nvidia.nvcomp.Codec(algorithm="ANS")``) on the GPU,
   checks its decode and times it;
3. encodes with kvinfo ``rans`` and ``huffman`` on the CPU, validates and uploads
   (``codec.prepare_cuda``, timed), decodes into a poisoned buffer and
   checks it against the source on the device, then times the decode kernel;
4. wraps the same rANS stream in a ``uniform`` (4-bit, channel axis, groups of 64
   tokens, random float16 zero points and steps) stream and times the fused
   decode-and-dequantize to float16, checked against numpy on the host;
5. times the CPU decoders (all cores) on the same streams at the smaller sizes.

Timings: median of ``--repeats`` after two warm-ups. "sync" times are host wall time of
one call bracketed by device synchronisations (the method used for nvCOMP, whose
Python API allocates its output inside the call); "kernel" times are CUDA events
around the kvinfo kernel launch alone (output preallocated). GB/s are 1e9 bytes/s of
decoded output (symbols: 1 byte each; fused: 2 bytes each) or of compressed input.
The table is printed last; ``--out-dir`` also gets ``gpu_decode.json`` and the PTX and
resource usage of the rANS kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIGMA = 2.47
TOKENS, CHANNELS, GROUP = 4096, 128, 64


def _median_time(fn, repeats, sync, warmup=2):
    for _ in range(warmup):
        fn()
    sync()
    ts = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts), max(ts)


def _event_time(cuda, fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    cuda.synchronize()
    ts = []
    for _ in range(repeats):
        e0, e1 = cuda.event(), cuda.event()
        e0.record()
        fn()
        e1.record()
        e1.synchronize()
        ts.append(max(e0.elapsed_time(e1), 1e-6) / 1e3)
    return statistics.median(ts), min(ts), max(ts)


def _gen_symbols(cp, n, seed):
    out = cp.empty(n, cp.uint8)
    rs = cp.random.RandomState(seed)
    piece = 1 << 27
    for a in range(0, n, piece):
        b = min(n, a + piece)
        x = rs.standard_normal(b - a, dtype=cp.float32) * SIGMA + 7.5
        out[a:b] = cp.clip(cp.rint(x), 0, 15).astype(cp.uint8)
    return out


def _entropy_bits(cp, sym):
    c = cp.bincount(sym, minlength=256).get().astype(np.float64)
    p = c[c > 0] / c.sum()
    return float(-(p * np.log2(p)).sum())


def _uniform_stream(rans_data, shape, zero, step):
    """A ``uniform`` stream (4 bits, channel axis, groups of 64 tokens) around a rans
    stream of the symbols: the exact layout :class:`UniformCodec` writes."""
    from kvinfo.codecs.quant import _base as QB

    params = struct.pack("<BBBI", 4, 0, 1, GROUP)
    sections = [QB.Section(QB.SIDE, QB.to_le_bytes(zero)),
                QB.Section(QB.SIDE, QB.to_le_bytes(step)), QB.Section(QB.CODED, rans_data)]
    return QB.build_stream(1, np.dtype(np.float16), shape, params, sections)


def _fused_reference(sym_host, zero, step, shape, out_bits, piece_rows=64):
    """Count elements of the fused float16 output that differ from numpy's float64 path."""
    b, t, d = shape
    q = sym_host.reshape(b, t, d)
    z = zero.astype(np.float64)
    s = step.astype(np.float64)
    bad = 0
    for a in range(0, b, piece_rows):
        e = min(b, a + piece_rows)
        g = np.arange(t) // GROUP
        ref = (z[a:e][:, g, :] + q[a:e].astype(np.float64) * s[a:e][:, g, :]).astype(np.float16)
        bad += int(np.count_nonzero(ref.view(np.uint16) != out_bits[a:e]))
    return bad


def _kernel_resources(kernel):
    info = {}
    for name in ("get_regs_per_thread", "get_shared_mem_per_block", "get_local_mem_per_thread"):
        try:
            v = getattr(kernel, name)()
            info[name[4:]] = list(v.values())[0] if isinstance(v, dict) else v
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            info[name[4:]] = f"n/a ({type(exc).__name__})"
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-mib", default="16,64,256,1024")
    ap.add_argument("--sizes-kib", default=None, help="override --sizes-mib (smoke runs)")
    ap.add_argument("--tokens", type=int, default=TOKENS, help="tokens per slab")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--cpu-max-mib", type=int, default=256, help="largest size for CPU decode")
    ap.add_argument("--warps", default="4,8,16",
                    help="rANS warps per block to compare (direct and ring kernels)")
    ap.add_argument("--out-dir", default=os.environ.get("OUT", "out/gpu_decode"))
    args = ap.parse_args(argv)
    sizes = [int(s) << 20 for s in args.sizes_mib.split(",")]
    if args.sizes_kib:
        sizes = [int(s) << 10 for s in args.sizes_kib.split(",")]
    tokens = args.tokens
    outdir = Path(args.out_dir)
    outdir.mkdir(parents=True, exist_ok=True)

    import cupy as cp
    import numba

    from kvinfo.codecs import get_codec
    from kvinfo.kernels import cpu, gpu

    K = gpu.require_cuda()
    cuda = K.cuda
    if K.SIMULATOR:
        name, sms = "CUDA simulator", 0
    else:
        dev = cuda.get_current_device()
        name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        sms = dev.MULTIPROCESSOR_COUNT
    env = {
        "gpu": name,
        "sms": sms,
        "numba": numba.__version__,
        "cupy": cp.__version__,
        "numpy": np.__version__,
        "cpu_threads": numba.get_num_threads(),
    }
    try:
        from nvidia import nvcomp

        env["nvcomp"] = nvcomp.__version__
    except Exception as exc:  # noqa: BLE001
        nvcomp = None
        env["nvcomp"] = f"unavailable ({type(exc).__name__}: {exc})"
    try:
        import importlib.metadata as md

        env["numba_cuda"] = md.version("numba-cuda")
    except Exception:  # noqa: BLE001
        env["numba_cuda"] = "n/a"
    print("environment:", json.dumps(env), flush=True)

    t0 = time.perf_counter()
    gpu.warmup()
    cpu.warmup()
    print(f"warm-up (compile) {time.perf_counter() - t0:.1f} s", flush=True)

    def sync():
        cuda.synchronize()
        cp.cuda.runtime.deviceSynchronize()

    seed = int(time.time_ns() % (1 << 31))
    nmax = max(sizes)
    src_dev = _gen_symbols(cp, nmax, seed)
    src_host = cp.asnumpy(src_dev)
    rows = []
    results = {"env": env, "seed": seed, "sigma": SIGMA, "sizes": []}
    rng = np.random.default_rng(seed)
    for n in sizes:
        r = {"bytes": n}
        sym = src_dev[:n]
        r["entropy_bits"] = _entropy_bits(cp, sym)
        shape = (n // (tokens * CHANNELS), tokens, CHANNELS)
        host = src_host[:n].reshape(shape)
        reps = args.repeats if n <= (256 << 20) else max(3, args.repeats // 2)

        # 1. copy ceiling
        dst = cp.empty_like(sym)
        tm = _median_time(lambda s=sym, d=dst: cp.copyto(d, s), reps, sync)
        r["copy_GBps"] = 2 * n / tm[0] / 1e9
        del dst

        # 2. nvCOMP ANS
        if nvcomp is not None:
            try:
                codec_nv = nvcomp.Codec(algorithm="ANS")
                enc = codec_nv.encode(nvcomp.as_array(sym))
                sync()
                r["nvcomp_bits"] = 8 * int(enc.buffer_size) / n
                dec = codec_nv.decode(enc)
                sync()
                dec_cp = cp.asarray(dec).reshape(-1).view(cp.uint8)
                r["nvcomp_exact"] = bool(dec_cp.size == n and cp.array_equal(dec_cp, sym))
                del dec, dec_cp
                tm = _median_time(lambda c=codec_nv, e=enc: c.decode(e), reps, sync)
                r["nvcomp_s"] = tm[0]
                r["nvcomp_out_GBps"] = n / tm[0] / 1e9
                r["nvcomp_in_GBps"] = int(enc.buffer_size) / tm[0] / 1e9
                del enc
            except Exception as exc:  # noqa: BLE001
                r["nvcomp_error"] = f"{type(exc).__name__}: {exc}"
                print("nvCOMP failed:", r["nvcomp_error"], flush=True)

        # 3. kvinfo rans / huffman
        streams = {}
        for cid in ("rans", "huffman"):
            codec = get_codec({"id": cid})
            t = time.perf_counter()
            data = codec.encode(host)
            r[f"{cid}_encode_cpu_s"] = time.perf_counter() - t
            r[f"{cid}_bits"] = 8 * len(data) / n
            t = time.perf_counter()
            prep = codec.prepare_cuda(data)
            sync()
            r[f"{cid}_prepare_s"] = time.perf_counter() - t
            out = cuda.to_device(np.full(n, 0xEE, np.uint8))  # poisoned
            res = prep.decode(out=out)
            r[f"{cid}_exact"] = bool(cp.array_equal(cp.asarray(res).reshape(-1), sym))
            tm = _median_time(lambda p=prep, o=out: p.decode(out=o, check=False), reps, sync)
            r[f"{cid}_sync_s"] = tm[0]
            tk = _event_time(cuda, lambda p=prep, o=out: p.decode(out=o, check=False), reps)
            r[f"{cid}_kernel_s"] = tk[0]
            r[f"{cid}_out_GBps"] = n / tm[0] / 1e9
            r[f"{cid}_in_GBps"] = prep.compressed_bytes / tm[0] / 1e9
            r[f"{cid}_kernel_out_GBps"] = n / tk[0] / 1e9
            streams[cid] = (codec, data, prep, out)
        # rANS launch geometry: warps per block
        codec, data, prep, out = streams["rans"]
        kern, grid, block, pre, post, status = prep._launch
        nchunks = pre[3].shape[0]
        variants = [(int(v), ring) for ring in (False, True) for v in args.warps.split(",")]
        for w, ring in variants:
            kw = K.rans_kernel(True, False, K.MODE_SYMBOLS, warps_per_block=w, ring=ring)
            g = -(-nchunks // w)
            out2 = cuda.to_device(np.full(n, 0xEE, np.uint8))
            kw[g, 32 * w](*pre, out2, *post)
            ok = bool(cp.array_equal(cp.asarray(out2), sym))
            tk = _event_time(cuda, lambda kw=kw, g=g, w=w, a=pre, o=out2, b=post:
                             kw[g, 32 * w](*a, o, *b), reps)
            name = f"rans_ring_w{w}" if ring else f"rans_direct_w{w}"
            r[f"{name}_kernel_out_GBps"] = n / tk[0] / 1e9
            r[f"{name}_exact"] = ok
            del out2
        r["rans_chunks"] = int(nchunks)

        # 4. fused uniform (float16 out)
        b = shape[0]
        zero = (rng.standard_normal((b, tokens // GROUP, CHANNELS)) * 0.5 - 2).astype(np.float16)
        step = rng.uniform(0.05, 0.3, (b, tokens // GROUP, CHANNELS)).astype(np.float16)
        ucodec = get_codec({"id": "uniform", "bits": 4, "axis": "channel", "group_size": GROUP,
                            "coder": {"id": "rans"}})
        udata = _uniform_stream(data, shape, zero, step)
        t = time.perf_counter()
        uprep = ucodec.prepare_cuda(udata)
        sync()
        r["fused_prepare_s"] = time.perf_counter() - t
        uout = cuda.to_device(np.full(n, 0x7E01, np.uint16).view(np.float16))
        ures = uprep.decode(out=uout)
        bits = ures.copy_to_host().reshape(shape).view(np.uint16)
        r["fused_mismatches"] = _fused_reference(host, zero, step, shape, bits)
        if n <= (16 << 20):
            ref = ucodec.decode(udata)
            r["fused_equals_cpu_decode"] = bool(np.array_equal(ref.view(np.uint16), bits))
        del bits
        tm = _median_time(lambda p=uprep, o=uout: p.decode(out=o, check=False), reps, sync)
        tk = _event_time(cuda, lambda p=uprep, o=uout: p.decode(out=o, check=False), reps)
        r["fused_out_GBps"] = 2 * n / tm[0] / 1e9
        r["fused_in_GBps"] = uprep.compressed_bytes / tm[0] / 1e9
        r["fused_kernel_out_GBps"] = 2 * n / tk[0] / 1e9
        r["fused_Gelem_per_s"] = n / tm[0] / 1e9
        del uprep, uout, ures

        # 5. CPU decoders (all cores), full codec.decode (validation and CRC included)
        if n <= args.cpu_max_mib << 20:
            for cid in ("rans", "huffman"):
                c, d = streams[cid][0], streams[cid][1]
                tm = _median_time(lambda c=c, d=d: c.decode(d), max(3, reps // 3), lambda: None,
                                  warmup=1)
                r[f"cpu_{cid}_out_GBps"] = n / tm[0] / 1e9
        streams.clear()
        results["sizes"].append(r)
        print(json.dumps(r), flush=True)
        rows.append(r)
        cp.get_default_memory_pool().free_all_blocks()

    # resources and PTX of the main kernel
    main_k = K.rans_kernel(True, False, K.MODE_SYMBOLS)
    results["rans_kernel_resources"] = _kernel_resources(main_k)
    results["rans_ring_kernel_resources"] = _kernel_resources(
        K.rans_kernel(True, False, K.MODE_SYMBOLS, ring=True))
    results["fused_kernel_resources"] = _kernel_resources(K.rans_kernel(True, False, K.MODE_F16))
    results["huffman_kernel_resources"] = _kernel_resources(K.huffman_kernel(True,
                                                                             K.MODE_SYMBOLS))
    try:
        ptx = main_k.inspect_asm()
        (outdir / "rans_kernel.ptx").write_text(list(ptx.values())[0] if isinstance(ptx, dict)
                                                else str(ptx))
    except Exception as exc:  # noqa: BLE001
        print("no PTX:", exc)
    try:
        sass = main_k.inspect_sass()
        (outdir / "rans_kernel.sass").write_text(list(sass.values())[0] if isinstance(sass, dict)
                                                 else str(sass))
    except Exception as exc:  # noqa: BLE001
        print("no SASS:", exc)
    (outdir / "gpu_decode.json").write_text(json.dumps(results, indent=1))

    def f(r, k, fmt="{:.0f}"):
        v = r.get(k)
        return fmt.format(v) if isinstance(v, int | float) else "n/a"

    print("\nresources:", json.dumps({k: v for k, v in results.items() if "resources" in k}))
    print(f"\nGPU: {env['gpu']} ({env['sms']} SMs); nvCOMP {env['nvcomp']}; numba-cuda "
          f"{env['numba_cuda']}; seed {seed}; GB/s = 1e9 B/s; symbols 1 B, fused out 2 B")
    hdr = ("| size MiB | H bits | copy GB/s | nvCOMP bits | nvCOMP out GB/s | nvCOMP in GB/s "
           "| rans bits | rans out GB/s | rans in GB/s | rans kernel GB/s | huff bits "
           "| huff out GB/s | fused f16 out GB/s | CPU rans GB/s | CPU huff GB/s | exact |")
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    for r in rows:
        exact = all(r.get(k, True) for k in ("nvcomp_exact", "rans_exact", "huffman_exact")) and \
            r.get("fused_mismatches", 1) == 0
        print(f"| {r['bytes'] >> 20} | {r['entropy_bits']:.3f} | {f(r, 'copy_GBps')} "
              f"| {f(r, 'nvcomp_bits', '{:.3f}')} | {f(r, 'nvcomp_out_GBps')} "
              f"| {f(r, 'nvcomp_in_GBps')} | {r['rans_bits']:.3f} | {f(r, 'rans_out_GBps')} "
              f"| {f(r, 'rans_in_GBps')} | {f(r, 'rans_kernel_out_GBps')} "
              f"| {r['huffman_bits']:.3f} | {f(r, 'huffman_out_GBps')} "
              f"| {f(r, 'fused_out_GBps')} | {f(r, 'cpu_rans_out_GBps', '{:.2f}')} "
              f"| {f(r, 'cpu_huffman_out_GBps', '{:.2f}')} | {exact} |")
    print("\nrANS kernel GB/s by variant (ring = words staged in a shared-memory ring, direct ="
          " words loaded from global memory in the dependency chain; W = warps per block): "
          + "; ".join(f"{r['bytes'] >> 20} MiB: " + ", ".join(
              f"{k[5:].replace('_kernel_out_GBps', '')} {r[k]:.0f}"
              f"{'' if r.get(k.replace('_kernel_out_GBps', '_exact'), False) else ' (WRONG)'}"
              for k in r if k.startswith(("rans_ring", "rans_direct"))
              and k.endswith("_kernel_out_GBps"))
              for r in rows if "_kernel_out_GBps" in "".join(r)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
