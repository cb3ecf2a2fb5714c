"""Measure what an error in each part of the KV cache costs the model.

The model is run over the dump's own token sequences. --method perturb (default): each
sequence's last --scored tokens are scored teacher-forced on top of the cached prefix; for
every (layer, kind) group and every setting of --family, that group's prefix cache goes
through the real codec (all heads, every other group exact) and the mean next-token KL from
the unperturbed model is measured (only the layers from the group's on are replayed). The
file serves `kvinfo allocate` for that family, any budget. --method fisher: each sequence's
first half is prefilled, the second half scored, and the diagonal Fisher information of the
cache is estimated from --samples backward passes (a second-order estimate, family-free;
it under-predicts coarse settings). See docs/allocation.md. Written to a temporary name and
renamed on success.
"""

from __future__ import annotations

__all__ = ["add_arguments", "run"]


def add_arguments(p) -> None:
    p.add_argument("dump", help="the calibration kvdump (.h5): its sequences are scored")
    p.add_argument("-o", "--output", required=True, metavar="SENSITIVITY.json",
                   help="sensitivity file to write (JSON)")
    from ..allocation import FAMILIES

    p.add_argument("--method", choices=("perturb", "fisher"), default="perturb",
                   help="perturb: measured KL per (layer, kind) group and setting of --family "
                   "(default); fisher: second-order estimate per channel")
    p.add_argument("--family", choices=sorted(FAMILIES), default="uniform",
                   help="perturb: the codec family whose settings are measured (default uniform)")
    p.add_argument("--family-config", metavar="JSON",
                   help="perturb: merged into every setting (as for kvinfo allocate)")
    p.add_argument("--scored", type=int, default=128, metavar="S",
                   help="perturb: scored tokens at the end of each sequence, the rest is the "
                   "coded prefix (default 128)")
    p.add_argument("--max-sequences", type=int, default=6, metavar="N",
                   help="perturb: use the first N sequences with at least 2*S tokens "
                   "(default 6)")
    p.add_argument("--model", default=None,
                   help="as for kvinfo capture (default: the dump's default model)")
    p.add_argument("--samples", type=int, default=4, metavar="R",
                   help="fisher: target draws per sequence, one backward pass each (default 4)")
    p.add_argument("--max-tokens", type=int, default=1024, metavar="N",
                   help="cut each sequence to N tokens (default 1024)")
    p.add_argument("--seed", type=int, default=0,
                   help="fisher: seed of the target draws (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args) -> int:

    from .._paths import check_output_file
    from ..allocation import measure_perturb_sensitivity, measure_sensitivity
    from ..dumps import open_dump
    from ..dumps.capture import load_model
    from ..errors import AllocationError
    from ._common import family_from_args

    out = check_output_file(args.output, "-o", inputs=[args.dump])
    if args.max_tokens < 4:
        raise AllocationError(f"--max-tokens must be at least 4; got {args.max_tokens}")
    if not 1 <= args.samples <= 1000:
        raise AllocationError(f"--samples must be in 1..1000; got {args.samples}")
    if args.scored < 1:
        raise AllocationError(f"--scored must be at least 1; got {args.scored}")
    if args.max_sequences < 1:
        raise AllocationError(f"--max-sequences must be at least 1; got {args.max_sequences}")
    fam = None
    if args.method == "perturb":
        fam = family_from_args(args)
    with open_dump(args.dump) as d:
        ids = d.token_ids
        seqs = [ids[a:b][: args.max_tokens] for a, b in d.sequences()]
        geometry = {"num_layers": d.num_layers, "num_kv_heads": d.num_kv_heads,
                    "head_dim": d.head_dim}
        path = str(d.path)
    if fam is not None:
        seqs = [s for s in seqs if s.size >= 2 * args.scored][: args.max_sequences]
        if not seqs:
            raise AllocationError(f"no sequence of the dump (cut to --max-tokens "
                                  f"{args.max_tokens}) has 2 x --scored = {2 * args.scored} "
                                  "tokens")
    model, _, name = load_model(args.model, dtype="float32")
    source = {"dump": path, "model": name, "num_sequences": len(seqs),
              "max_tokens": args.max_tokens}
    if fam is not None:
        sens = measure_perturb_sensitivity(model, seqs, fam, scored=args.scored, source=source,
                                           progress=not args.no_progress)
    else:
        sens = measure_sensitivity(model, seqs, samples=args.samples, seed=args.seed,
                                   progress=not args.no_progress, source=source)
    sens.check_geometry(geometry, f"the dump {path}")
    sens.save(out)
    g = geometry
    if fam is not None:
        print(f"wrote {out}: measured KL of {g['num_layers']} layers x 2 kinds x "
              f"{len(fam)} settings of family {fam.name} from {sens.num_scored_tokens} scored "
              f"tokens on {sens.num_cached_tokens} coded prefix tokens ({sens.num_sequences} "
              f"sequences); replay deviation {sens.replay_max_abs_logit_deviation:.3g} in the "
              f"logits (measurement: {sens.seconds:.1f} s)")
    else:
        print(f"wrote {out}: Fisher diagonal of {g['num_layers']} layers x 2 kinds x "
              f"{g['num_kv_heads']} KV heads x {g['head_dim']} channels from "
              f"{sens.num_scored_tokens} scored tokens x {sens.samples} samples "
              f"(measurement: {sens.seconds:.1f} s)")
    return 0
