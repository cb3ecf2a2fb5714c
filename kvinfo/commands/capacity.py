"""Largest batch x context per codec within a memory budget, for the captured model or a
named geometry (an estimate from measured bits per element; see kvinfo.capacity)."""

from __future__ import annotations

import json
import sys


def add_arguments(p) -> None:
    p.add_argument("results", nargs="*", metavar="RESULTS.json",
                   help="bench or eval results whose codecs' bits per element to use")
    p.add_argument("--bits", action="append", default=[], metavar="LABEL=BITS",
                   help="a codec rate by hand, e.g. 'uniform 4-bit=4.3'; repeatable")
    p.add_argument("--geometry", action="append", default=[], metavar="NAME|L,H,D[,GB]",
                   help="smollm2-135m, llama-3-8b, llama-3-70b, mistral-7b, qwen2.5-7b, or "
                   "LAYERS,KV_HEADS,HEAD_DIM[,WEIGHTS_GB]; repeatable (default: the model "
                   "of the first results file's dump if known, else smollm2-135m)")
    p.add_argument("--dump", metavar="DUMP.h5", help="take the geometry of this dump's model")
    p.add_argument("--memory-gb", type=float, default=80.0,
                   help="device memory budget in GB (1e9 bytes; default 80)")
    p.add_argument("--weights-gb", type=float, default=None,
                   help="weights' memory in GB (default: the geometry's bfloat16 weights)")
    p.add_argument("--window", type=int, default=128, metavar="W",
                   help="recent tokens kept uncompressed at 16 bits (default 128)")
    p.add_argument("--contexts", default="1024,2048,4096,8192,16384,32768,65536,131072",
                   metavar="N[,N...]", help="context lengths (tokens)")
    p.add_argument("--no-plain", action="store_true",
                   help="leave out the plain bfloat16 row (16 bits per element)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("-o", "--output", metavar="DIR",
                   help="write capacity.json and capacity-<geometry>.png there")


def _rates(args) -> dict:
    from ..capacity import CapacityInputError, codec_rates_from_results
    from ..results import load_results

    rates = {} if args.no_plain else {"plain bf16": 16.0}
    docs = [load_results(p) for p in args.results]
    rates.update(codec_rates_from_results(docs))
    for item in args.bits:
        label, sep, val = item.rpartition("=")
        try:
            b = float(val)
        except ValueError:
            b = None
        if not sep or not label or b is None:
            raise CapacityInputError(f"--bits takes LABEL=BITS, got {item!r}")
        rates[label] = b
    if len(rates) <= (0 if args.no_plain else 1) and not args.results and not args.bits:
        raise CapacityInputError("give results files or --bits LABEL=BITS for the codecs")
    return rates


def _geometries(args):
    from ..capacity import Geometry

    out = [Geometry.parse(g) for g in args.geometry]
    if args.dump:
        from ..dumps import open_dump

        with open_dump(args.dump) as d:
            info = d.describe()
        out.insert(0, Geometry(str(info["model"]), int(info["num_layers"]),
                               int(info["num_kv_heads"]), int(info["head_dim"])))
    if not out:
        out = [Geometry.parse("smollm2-135m")]
    return out


def run(args) -> int:
    from .._paths import check_output_file
    from ..capacity import CapacityInputError, capacity_table

    try:
        contexts = [int(c) for c in args.contexts.split(",") if c.strip()]
    except ValueError:
        raise CapacityInputError(f"--contexts must be integers, got {args.contexts!r}") \
            from None
    rates = _rates(args)
    geoms = _geometries(args)
    if args.output:
        from pathlib import Path

        check_output_file(Path(args.output) / "capacity.json", "-o", inputs=args.results)
    tables = []
    for g in geoms:
        w = args.weights_gb * 1e9 if args.weights_gb is not None else None
        tables.append(capacity_table(g, rates, budget_bytes=args.memory_gb * 1e9,
                                     weights_bytes=w, contexts=contexts,
                                     window=args.window))
    docs = [t.as_dict() for t in tables]
    if args.output:
        from pathlib import Path

        from ..report.capacity import write_capacity_figure

        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        for t, d in zip(tables, docs, strict=True):
            safe = "".join(c if c.isalnum() or c in "-." else "_" for c in t.geometry.name)
            write_capacity_figure(d, out / f"capacity-{safe}.png")
        tmp = out / "capacity.json.part"
        tmp.write_text(json.dumps({"tool": "capacity", "tables": docs}, indent=1))
        tmp.replace(out / "capacity.json")
    if args.json:
        print(json.dumps({"tool": "capacity", "tables": docs}, indent=1))
        return 0
    for t in tables:
        g = t.geometry
        print(f"{g.name}: {g.num_layers} layers x {g.num_kv_heads} KV heads x {g.head_dim}; "
              f"budget {t.budget_bytes / 1e9:.1f} GB, weights {t.weights_bytes / 1e9:.2f} GB, "
              f"window {t.window} tokens at 16 bits; largest batch per context (estimate)")
        print(f"{'codec':<40} {'b/elem':>7} " + " ".join(f"{c:>7}" for c in t.contexts)
              + f" {'x plain':>8}")
        for row in t.rows:
            print(f"{row['label'][:40]:<40} {row['bits_per_element']:7.2f} "
                  + " ".join(f"{b:>7}" for b in row["max_batch"])
                  + f" {row['gain_vs_plain']:8.2f}")
        print()
    sys.stdout.flush()
    return 0
