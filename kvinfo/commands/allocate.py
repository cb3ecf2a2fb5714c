"""Choose a codec setting per (layer, kind, head) for a budget of bits: write a plan.

For a codec family (uniform, ecsq, turbo, klt) every setting is run on every slab of the
calibration dump (measured bits per element, side information included, and MSE); the
cost of each comes from the sensitivity file (`kvinfo sensitivity`), which picks the model:
perturb, the measured KL of each (layer, kind) group at each setting (one setting per
group); fisher, the slab's Fisher sensitivity times its error (one setting per slab). The
equal-slope solver, then an exact dynamic programme, picks the settings under the budget. The
plan is a codec: `--codec '{"id": "plan", "path": "plan.json"}'` in kvinfo bench and eval.
See docs/allocation.md. Written to a temporary name and renamed on success.
"""

from __future__ import annotations

from ..cli import recorded_command

__all__ = ["add_arguments", "run"]


def add_arguments(p) -> None:
    from ..allocation import FAMILIES

    p.add_argument("dump", help="the calibration kvdump (.h5)")
    p.add_argument("--sensitivity", required=True, metavar="FILE",
                   help="a sensitivity file from kvinfo sensitivity (same model geometry)")
    p.add_argument("--family", choices=sorted(FAMILIES), default="uniform",
                   help="codec family (default uniform)")
    p.add_argument("--budget", type=float, metavar="BITS",
                   help="mean bits per element over keys and values, side information included")
    p.add_argument("--budget-keys", type=float, metavar="BITS", help="separate budget of keys")
    p.add_argument("--budget-values", type=float, metavar="BITS",
                   help="separate budget of values (with --budget-keys)")
    p.add_argument("--memory-bytes", type=int, metavar="BYTES",
                   help="dynamic mode: the budget that fits --tokens tokens (default the dump's) "
                   "into BYTES")
    p.add_argument("--tokens", type=int, metavar="T",
                   help="dynamic mode: plan for a cache of T tokens (curves on T-token windows)")
    p.add_argument("--min-setting", metavar="S",
                   help="coarsest setting allowed: index (0 = coarsest) or label, e.g. '2 bits'")
    p.add_argument("--max-setting", metavar="S", help="finest setting allowed (as --min-setting)")
    p.add_argument("--family-config", metavar="JSON",
                   help='merged into every setting, e.g. \'{"group_size": 64}\'')
    p.add_argument("--curves", metavar="FILE.npz",
                   help="reuse the R-D curves in FILE if it exists, else measure and write them")
    p.add_argument("--heatmap", metavar="FILE.png",
                   help="also draw the allocation over layers x heads (png or svg)")
    p.add_argument("-o", "--output", required=True, metavar="PLAN.json", help="plan to write")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _setting(v):
    if v is None:
        return None
    return int(v) if v.isdigit() else v


def run(args) -> int:
    from pathlib import Path

    from .._paths import check_output_file
    from ..allocation import (
        PerturbSensitivity,
        allocate,
        load_rd_curves,
        load_sensitivity,
        measure_rd_curves,
        save_plan,
    )
    from ..errors import AllocationError
    from ._common import family_from_args

    inputs = [args.dump, args.sensitivity, args.curves]
    out = check_output_file(args.output, "-o", inputs=inputs)
    if args.heatmap:
        check_output_file(args.heatmap, "--heatmap", inputs=inputs + [args.output])
        if Path(args.heatmap).suffix not in (".png", ".svg"):
            raise AllocationError(f"--heatmap {args.heatmap}: expected a .png or .svg name")
    fam = family_from_args(args)
    sens = load_sensitivity(args.sensitivity)
    if isinstance(sens, PerturbSensitivity):
        sens.check_family(fam)
    curves = None
    if args.curves and Path(args.curves).exists():
        curves = load_rd_curves(args.curves)
    elif args.curves:
        check_output_file(args.curves, "--curves", inputs=[args.dump, args.sensitivity])
    try:
        if curves is None:
            curves = measure_rd_curves(args.dump, fam, tokens=args.tokens,
                                       progress=not args.no_progress)
            if args.curves:
                curves.save(args.curves)
        plan = allocate(
            args.dump, sens, fam, args.budget, budget_keys=args.budget_keys,
            budget_values=args.budget_values, memory_bytes=args.memory_bytes,
            tokens=args.tokens, min_setting=_setting(args.min_setting),
            max_setting=_setting(args.max_setting), curves=curves,
            command=recorded_command(args),
        )
    except AllocationError as exc:
        msg = str(exc)
        for param, flag in (("budget_keys", "--budget-keys"), ("budget_values", "--budget-values"),
                            ("memory_bytes", "--memory-bytes"), ("min_setting", "--min-setting"),
                            ("max_setting", "--max-setting"), ("tokens", "--tokens")):
            msg = msg.replace(param, flag)
        raise AllocationError(msg) from None
    save_plan(plan, out, inputs=inputs)
    p, b = plan["predicted"], plan["budget"]
    target = (f"{b['budget']:.4f}" if b["budget"] is not None
              else f"keys {b['budget_keys']:g} / values {b['budget_values']:g}")
    print(f"wrote {out}: family {plan['family']}, budget {target} bits per element")
    print(f"  rate on the calibration dump (measurement): {p['bits_per_element']:.4f} bits per "
          f"element (keys {p['bits_per_element_keys']:.4f}, values "
          f"{p['bits_per_element_values']:.4f})")
    how = ("sum of the groups' measured KLs" if p["cost_model"] == "perturb"
           else "second order")
    print(f"  KL (estimate, {how}): {p['kl_nats_per_token_estimate']:.4g} nats per token")
    best = plan["best_single_setting_within_rate"]
    if best:
        print(f"  best single setting within that rate: {best['label']} at "
              f"{best['bits_per_element']:.4f} bits per element (measurement), KL "
              f"{best['kl_nats_per_token_estimate']:.4g} (estimate)")
    print(f"  R-D curves: {curves.seconds:.1f} s (measurement)")
    if args.heatmap:
        from ..report.allocation import plot_allocation

        plot_allocation(plan, args.heatmap)
        print(f"wrote {args.heatmap}")
    return 0
