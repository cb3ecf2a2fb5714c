"""Measure what an error in each (layer, kind, head) slab of the KV cache costs the model.

The model is run over the dump's own token sequences (or a --text): each sequence's first
half is prefilled and cached, the second half scored teacher-forced, and the diagonal
Fisher information of the cached keys and values is estimated from --samples backward
passes with targets drawn from the model (docs/allocation.md). The file is reusable by
`kvinfo allocate` across budgets and codec families. Written to a temporary name and
renamed on success.
"""

from __future__ import annotations

__all__ = ["add_arguments", "run"]


def add_arguments(p) -> None:
    p.add_argument("dump", help="the calibration kvdump (.h5): its sequences are scored")
    p.add_argument("-o", "--output", required=True, metavar="SENSITIVITY.json",
                   help="sensitivity file to write (JSON)")
    p.add_argument("--model", default=None,
                   help="as for kvinfo capture (default: the dump's default model)")
    p.add_argument("--samples", type=int, default=4, metavar="R",
                   help="target draws per sequence, one backward pass each (default 4)")
    p.add_argument("--max-tokens", type=int, default=1024, metavar="N",
                   help="cut each sequence to N tokens (default 1024)")
    p.add_argument("--seed", type=int, default=0, help="seed of the target draws (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args) -> int:
    from .._paths import check_output_file
    from ..allocation import measure_sensitivity
    from ..dumps import open_dump
    from ..dumps.capture import load_model
    from ..errors import AllocationError

    out = check_output_file(args.output, "-o", inputs=[args.dump])
    if args.max_tokens < 4:
        raise AllocationError(f"--max-tokens must be at least 4; got {args.max_tokens}")
    if not 1 <= args.samples <= 1000:
        raise AllocationError(f"--samples must be in 1..1000; got {args.samples}")
    with open_dump(args.dump) as d:
        ids = d.token_ids
        seqs = [ids[a:b][: args.max_tokens] for a, b in d.sequences()]
        geometry = {"num_layers": d.num_layers, "num_kv_heads": d.num_kv_heads,
                    "head_dim": d.head_dim}
        path = str(d.path)
    model, _, name = load_model(args.model, dtype="float32")
    sens = measure_sensitivity(
        model, seqs, samples=args.samples, seed=args.seed, progress=not args.no_progress,
        source={"dump": path, "model": name, "num_sequences": len(seqs),
                "max_tokens": args.max_tokens},
    )
    sens.check_geometry(geometry, f"the dump {path}")
    sens.save(out)
    print(f"wrote {out}: Fisher diagonal of {geometry['num_layers']} layers x 2 kinds x "
          f"{geometry['num_kv_heads']} KV heads x {geometry['head_dim']} channels from "
          f"{sens.num_scored_tokens} scored tokens x {sens.samples} samples "
          f"(measurement: {sens.seconds:.1f} s)")
    return 0
