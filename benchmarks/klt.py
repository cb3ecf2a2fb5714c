"""klt against the Gaussian R(D) on a real dump, next to uniform, ecsq and turbo.

Usage::

    kvinfo capture --dtype bfloat16 --queries --pre-rope -o cal.h5           # calibration
    kvinfo capture --dtype bfloat16 --pre-rope --prompts essays.jsonl --max-tokens 1100 \
        -o test.h5                                                            # other text
    kvinfo calibrate cal.h5 -o basis.npz
    python benchmarks/klt.py --dump test.h5 --basis basis.npz [--layers 0,10,20,29]
        [--json out.json]

For every slab (layer, kind, head) of the selection and every codec setting, the codec
encodes the slab (one call, bound to the slab with ``for_slab`` as ``kvinfo bench`` does),
the rate is ``8 * len(stream)`` over the elements (all side information included), and the
gap is ``bits - R_G(D)``: R_G is the Gaussian rate-distortion function of the slab's own
covariance (post-RoPE for keys, as ``kvinfo bench`` computes it) at the MSE the codec
achieved (a measurement minus a bound). For keys, the gap against the Gaussian R(D) of the
pre-RoPE keys' covariance (``gap_pre``) is printed too: that is the fair reference for a
codec that works in the pre-RoPE frame. Reported: mean (min, max) over slabs per kind and
over all slabs. Throughput: encode and decode MB/s of bf16 input on one slab, best of 5, for
klt, turbo and uniform in the same run. The calibration file's size is reported in bytes and
in bits per element of the test dump.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from kvinfo.analysis import rd_gaussian_eigenvalues  # noqa: E402
from kvinfo.codecs import get_codec  # noqa: E402
from kvinfo.codecs.quant.klt import load_klt_bases, rope_rotate  # noqa: E402
from kvinfo.dumps import open_dump, parse_index_list  # noqa: E402

SNRS = (10, 20, 30)
ARITH = {"id": "arith", "context": "channel"}


def settings(basis: str, theta: float) -> list[tuple[str, dict]]:
    out = []
    for s in SNRS:
        out.append((f"klt cal pre-RoPE {s} dB", {"id": "klt", "snr_db": s, "basis": basis,
                                                 "rope_theta": theta, "coder": ARITH}))
    for s in SNRS:
        out.append((f"klt cal pre-RoPE coder-only {s} dB", {
            "id": "klt", "snr_db": s, "basis": basis, "rope_theta": theta,
            "symbol_model": "coder", "coder": ARITH}))
    for s in SNRS:
        out.append((f"klt cal pre-RoPE rot0 {s} dB", {"id": "klt", "snr_db": s, "basis": basis,
                                                      "rope_theta": theta, "rotations": 0,
                                                      "coder": ARITH}))
    for s in SNRS:
        out.append((f"klt in-stream {s} dB", {"id": "klt", "snr_db": s, "rope_theta": theta,
                                              "coder": ARITH}))
    for s in SNRS:
        step = float(np.sqrt(12 * 10 ** (-s / 10)))
        out.append((f"ecsq rel {step:.3f}", {"id": "ecsq", "step": step, "step_mode": "relative"}))
    for b in (2, 3, 5):
        out.append((f"uniform/ch {b}", {"id": "uniform", "bits": b, "axis": "channel",
                                        "group_size": 128}))
    for b in (2, 3, 4):
        out.append((f"turbo {b}", {"id": "turbo", "bits": b}))
    return out


def gaussian_eigenvalues(cov) -> np.ndarray:
    """Eigenvalues of a covariance, ascending, round-off negatives set to 0."""
    return np.maximum(np.linalg.eigvalsh(0.5 * (cov + cov.T)), 0.0)


def _summ(v):
    v = np.asarray(v, dtype=np.float64)
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()), "n": v.size}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dump", required=True)
    ap.add_argument("--basis", required=True)
    ap.add_argument("--layers", default="0,10,20,29")
    ap.add_argument("--heads", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", default=None,
                    help="run only the settings whose label matches this regular expression")
    args = ap.parse_args(argv)
    bases = load_klt_bases(args.basis)
    with open_dump(args.dump) as d:
        layers = parse_index_list(args.layers, d.num_layers, "layers")
        heads = parse_index_list(args.heads, d.num_kv_heads, "heads")
        rope = d.meta.get("rope") or {}
        rope = json.loads(rope) if isinstance(rope, str) else rope
        theta = float(rope["rope_theta"])
        pos, tok, seqs = d.positions(), np.asarray(d.token_ids), d.sequences()
        slabs = []
        for lay in layers:
            for kind in ("keys", "values"):
                for h in heads:
                    x = d.slab(kind, lay, h)
                    x64 = x.astype(np.float64)
                    lam = gaussian_eigenvalues(np.cov(x64, rowvar=False, bias=True))
                    lam_pre = None
                    if kind == "keys":
                        pre = rope_rotate(x64, pos, theta, True, "bfloat16")
                        lam_pre = gaussian_eigenvalues(np.cov(pre, rowvar=False, bias=True))
                    slabs.append((lay, kind, h, x, x64, lam, lam_pre))
        n_elem_dump = 2 * d.num_layers * d.num_kv_heads * d.num_tokens * d.head_dim
        info = d.describe()
    rows = []
    for label, cfg in settings(args.basis, theta):
        if args.only and not re.search(args.only, label):
            continue
        codec = get_codec(cfg)
        gaps = {"keys": [], "values": []}
        gaps_pre, snrs, bits_all, side = [], [], [], []
        for lay, kind, h, x, x64, lam, lam_pre in slabs:
            c = codec.for_slab(lay, kind, h, positions=pos, token_ids=tok, sequences=seqs) \
                if hasattr(codec, "for_slab") else codec
            data = c.encode(x)
            y = np.asarray(c.decode(data)).astype(np.float64)
            mse = float(np.mean((x64 - y) ** 2))
            r = c.rate(data)
            g = r["bits_per_element"] - float(rd_gaussian_eigenvalues(lam, mse))
            gaps[kind].append(g)
            if lam_pre is not None:
                gaps_pre.append(r["bits_per_element"] - float(rd_gaussian_eigenvalues(lam_pre,
                                                                                      mse)))
            snrs.append(10 * np.log10(np.mean(np.var(x64, axis=0)) / mse))
            bits_all.append(r["bits_per_element"])
            side.append(r["side_bits_per_element"])
        row = {
            "label": label, "config": codec.get_config(),
            "gap_keys": _summ(gaps["keys"]), "gap_values": _summ(gaps["values"]),
            "gap_all": _summ(gaps["keys"] + gaps["values"]), "gap_pre_keys": _summ(gaps_pre),
            "snr_db": _summ(snrs), "bits_per_element": _summ(bits_all),
            "side_bits_per_element": _summ(side),
        }
        rows.append(row)
        mean = {k: row[k]["mean"] for k in ("snr_db", "bits_per_element", "gap_all", "gap_keys",
                                            "gap_pre_keys", "gap_values")}
        print(f"{label:<28} snr {mean['snr_db']:5.1f}  bits {mean['bits_per_element']:5.2f}"
              f"  gap all {mean['gap_all']:+.3f}  keys {mean['gap_keys']:+.3f}"
              f" (pre {mean['gap_pre_keys']:+.3f})  values {mean['gap_values']:+.3f}"
              f"  [{row['gap_all']['min']:+.2f}, {row['gap_all']['max']:+.2f}]"
              f"  side {row['side_bits_per_element']['mean']:.3f}", flush=True)
    # throughput on one slab (bf16 input), best of 5, same run
    lay, kind, h, x = slabs[0][:4]
    speed = []
    table = dict(settings(args.basis, theta))
    for label, cfg in [("klt cal pre-RoPE 20 dB", table["klt cal pre-RoPE 20 dB"]),
                       ("klt cal pre-RoPE coder-only 20 dB",
                        table["klt cal pre-RoPE coder-only 20 dB"]),
                       ("klt cal pre-RoPE rot0 20 dB", table["klt cal pre-RoPE rot0 20 dB"]),
                       ("klt in-stream 20 dB", table["klt in-stream 20 dB"]),
                       ("turbo 3", {"id": "turbo", "bits": 3}),
                       ("uniform/ch 3", {"id": "uniform", "bits": 3, "axis": "channel",
                                         "group_size": 128})]:
        c = get_codec(cfg)
        c = c.for_slab(lay, kind, h, positions=pos) if hasattr(c, "for_slab") else c
        c.decode(c.encode(x))
        te, td = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            data = c.encode(x)
            t1 = time.perf_counter()
            c.decode(data)
            td.append(time.perf_counter() - t1)
            te.append(t1 - t0)
        mb = x.nbytes / 1e6
        speed.append({"label": label, "encode_mb_per_s": mb / min(te),
                      "decode_mb_per_s": mb / min(td)})
        print(f"{label:<28} encode {mb / min(te):7.1f} MB/s  decode {mb / min(td):7.1f} MB/s")
    cal_bytes = os.path.getsize(args.basis)
    print(f"calibration file {cal_bytes} bytes = {8 * cal_bytes / n_elem_dump:.3f} bit per element"
          f" of the test dump ({n_elem_dump} elements); arrays {bases.nbytes} bytes")
    doc = {"dump": info, "basis": args.basis, "basis_bytes": cal_bytes,
           "basis_bits_per_element_of_dump": 8 * cal_bytes / n_elem_dump, "rows": rows,
           "throughput": speed, "machine": platform.processor() or platform.machine(),
           "slabs": len(slabs)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
