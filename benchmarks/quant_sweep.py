"""Quantizer sweep on a KV dump: rate (symbols + side), MSE, SNR and attention errors.

Usage::

    python benchmarks/quant_sweep.py --dump dumps/default.h5 [--layers 0,5,10] [--coder rans]
        [--max-queries 256] [--json out.json]
    python benchmarks/quant_sweep.py --synthetic      # on a small synthetic dump

Every codec encodes each layer's keys and values as one stack of slabs
``(kv_heads, tokens, head_dim)``; the rate is ``8 * len(stream)`` over the elements, split
into entropy-coded symbols and side information (scales, zero points, norms, sink tokens,
headers, coder tables). Distortion is measured on the decoded arrays:

* ``mse`` / ``snr_db``: per element, pooled over all layers (SNR against the mean square);
* keys: ``logit_mse`` (mean squared error of ``q.k/sqrt(d)`` over visible pairs) and ``kl``
  (mean KL divergence of the attention distribution, nats per query), with the captured
  queries, GQA mapping and causal attention within each sequence;
* values: ``out_rel`` = ``||A V - A V_hat|| / ||A V||`` over queries (relative error of the
  attention output).

Means of attention errors are over the layers measured. ``max_queries`` evenly spaced query
positions per layer bound the cost.
"""

from __future__ import annotations

import os

# Small matrix products dominate the attention metrics; a multi-threaded BLAS on a busy 2-core
# machine made them 65x slower here. Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kvinfo import open_dump
from kvinfo.analysis.distortion import attention_output_error, attention_score_errors
from kvinfo.codecs import get_codec


def sweep_configs(coder: dict) -> list[tuple[str, dict]]:
    """(label, {kind: codec config}) for the standard sweep."""
    out = [("lossless", {"keys": {"id": "lossless"}, "values": {"id": "lossless"}})]
    for bits in (2, 3, 4, 8):
        out.append(
            (
                f"uniform {bits}b (K/chan, V/tok, g64)",
                {
                    "keys": {"id": "uniform", "bits": bits, "axis": "channel", "group_size": 64},
                    "values": {"id": "uniform", "bits": bits, "axis": "token", "group_size": 64},
                },
            )
        )
    for step in (0.05, 0.1, 0.2, 0.4, 0.8):
        cfg = {"id": "ecsq", "step": step, "step_mode": "relative"}
        out.append((f"ecsq step {step} x rms", {"keys": cfg, "values": cfg}))
    for bits in (2, 3, 4):
        cfg = {"id": "turbo", "bits": bits}
        out.append((f"turbo {bits}b", {"keys": cfg, "values": cfg}))
    cfg = {"id": "turbo", "bits": 3, "num_outliers": 8, "outlier_by": "energy", "sink_tokens": 1}
    out.append(("turbo 3b +8 outl(4b) +sink", {"keys": cfg, "values": cfg}))
    for _, kinds in out:
        for k in kinds:
            kinds[k] = {**kinds[k], "coder": coder}
    return out


class Acc:
    """Running sums for one (codec, kind)."""

    def __init__(self):
        self.bits = self.sym = self.side = self.n = 0
        self.err = self.sig = 0.0
        self.attn: dict[str, list[float]] = {}
        self.enc_s = self.dec_s = 0.0
        self.nbytes_in = 0

    def add_attn(self, name: str, value: float) -> None:
        self.attn.setdefault(name, []).append(value)

    def row(self) -> dict:
        r = {
            "bits_per_element": self.bits / self.n,
            "symbol_bits_per_element": self.sym / self.n,
            "side_bits_per_element": self.side / self.n,
            "mse_per_element": self.err / self.n,
            "snr_db": 10 * math.log10(self.sig / self.err) if self.err > 0 else math.inf,
            "encode_MBps": self.nbytes_in / self.enc_s / 1e6,
            "decode_MBps": self.nbytes_in / self.dec_s / 1e6,
        }
        for k, v in self.attn.items():
            r[k] = float(np.mean(v))
        return r


def run(dump_path: str, layers, coder: dict, max_queries: int) -> list[dict]:
    rows = []
    with open_dump(dump_path) as d:
        layers = list(range(d.num_layers)) if layers is None else layers
        seqs = d.sequences()
        starts = [a for a, _ in seqs]
        configs = sweep_configs(coder)
        accs = {(label, kind): Acc() for label, _ in configs for kind in ("keys", "values")}
        for layer in layers:
            k = d.keys(layer)
            v = d.values(layer)
            q = d.queries(layer) if d.has_queries else None
            for label, kinds in configs:
                recon = {}
                for kind, x in (("keys", k), ("values", v)):
                    codec = get_codec(kinds[kind])
                    kw = {"sequence_starts": starts} if kinds[kind]["id"] == "turbo" else {}
                    t0 = time.perf_counter()
                    data = codec.encode(x, **kw)
                    t1 = time.perf_counter()
                    y = codec.decode(data)
                    t2 = time.perf_counter()
                    rate = codec.rate(data)
                    a = accs[(label, kind)]
                    a.enc_s += t1 - t0
                    a.dec_s += t2 - t1
                    a.nbytes_in += x.nbytes
                    a.bits += rate["total_bits"]
                    a.sym += rate["symbol_bits"]
                    a.side += rate["side_bits"]
                    a.n += x.size
                    x64 = x.astype(np.float64)
                    a.err += float(np.sum((x64 - y.astype(np.float64)) ** 2))
                    a.sig += float(np.sum(x64 * x64))
                    recon[kind] = y
                if q is not None:
                    s = attention_score_errors(
                        q, k, recon["keys"], sequences=seqs, max_queries=max_queries
                    )
                    accs[(label, "keys")].add_attn("logit_mse", s["logit_mse"])
                    accs[(label, "keys")].add_attn("kl_nats", s["kl_nats"])
                    accs[(label, "keys")].add_attn("top1_agreement", s["top1_agreement"])
                    o = attention_output_error(
                        q, k, v, recon["values"], sequences=seqs, max_queries=max_queries
                    )
                    accs[(label, "values")].add_attn("out_rel_error", o["relative_error"])
                    both = attention_output_error(
                        q,
                        k,
                        v,
                        recon["values"],
                        keys_hat=recon["keys"],
                        sequences=seqs,
                        max_queries=max_queries,
                    )
                    accs[(label, "values")].add_attn("out_rel_error_kv", both["relative_error"])
            print(f"layer {layer} done", file=sys.stderr, flush=True)
        for label, kinds in configs:
            for kind in ("keys", "values"):
                rows.append(
                    {"codec": label, "kind": kind, "config": kinds[kind]}
                    | accs[(label, kind)].row()
                )
    return rows


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict]) -> None:
    head = (
        "| codec | kind | bits/elt | symbols | side | MSE | SNR dB | logit MSE | KL nats "
        "| top-1 | out rel err | out rel err (K+V) | enc MB/s | dec MB/s |"
    )
    print(head)
    print("|" + "|".join(["---"] * 14) + "|")
    for r in rows:
        print(
            f"| {r['codec']} | {r['kind']} | {r['bits_per_element']:.3f} "
            f"| {r['symbol_bits_per_element']:.3f} | {r['side_bits_per_element']:.3f} "
            f"| {r['mse_per_element']:.3e} | {r['snr_db']:.2f} "
            f"| {_fmt(r.get('logit_mse'), '.3e')} | {_fmt(r.get('kl_nats'), '.2e')} "
            f"| {_fmt(r.get('top1_agreement'), '.3f')} | {_fmt(r.get('out_rel_error'), '.4f')} "
            f"| {_fmt(r.get('out_rel_error_kv'), '.4f')} "
            f"| {r['encode_MBps']:.0f} | {r['decode_MBps']:.0f} |"
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--dump", help="path of a kvinfo KV dump (HDF5)")
    g.add_argument("--synthetic", action="store_true", help="run on a small synthetic dump")
    p.add_argument("--layers", help="comma-separated layer indices (default: all)")
    p.add_argument(
        "--coder",
        default="rans",
        help="coder of the symbols: an id or a JSON config (default rans), e.g. "
        '\'{"id": "rans", "per_channel": true}\'',
    )
    p.add_argument("--max-queries", type=int, default=256, help="query positions per layer")
    p.add_argument("--json", help="also write the rows as JSON to this path")
    args = p.parse_args(argv)
    layers = [int(s) for s in args.layers.split(",")] if args.layers else None
    path = args.dump
    if args.synthetic:
        from kvinfo.dumps import write_synthetic_dump

        path = str(Path(tempfile.mkdtemp()) / "synthetic.h5")
        write_synthetic_dump(path, num_tokens=512, head_dim=64, dtype="bfloat16")
    t0 = time.perf_counter()
    coder = json.loads(args.coder) if args.coder.lstrip().startswith("{") else {"id": args.coder}
    rows = run(path, layers, coder, args.max_queries)
    print_table(rows)
    print(f"\n{len(rows)} rows in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
