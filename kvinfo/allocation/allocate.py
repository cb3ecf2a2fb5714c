"""The allocation engine: curves + sensitivity + solver -> a plan file.

:func:`allocate` is the engine of ``kvinfo allocate``: validated options in, a plan document
out (:mod:`kvinfo.codecs.plan` reads it as a codec). The cost model follows the sensitivity
file:

* a **perturbation** sensitivity (:mod:`kvinfo.allocation.perturb`): the cost of a (layer,
  kind) group at a setting is its measured KL with only that group coded; the solver picks
  one setting per group (every head of the group the same), the plan's cost is the sum over
  groups (the additivity assumption, checked by
  :func:`~kvinfo.allocation.measure_assignment_kl`);
* a **Fisher** sensitivity (:mod:`kvinfo.allocation.sensitivity`): the predicted loss of a
  slab at a setting is ``0.5 * sum_c fisher_per_channel[c] * mse_per_channel[c]`` (a
  second-order estimate), one setting per (layer, kind, head) slab.

The rates are the codec's **measured** bits per element on the calibration dump (side
information included) in both cases.
"""

from __future__ import annotations

import datetime as _dt
import json
import os

import numpy as np

from .._paths import (
    atomic_write,
    check_output_file,
)
from .._version import __version__
from ..codecs.plan import PLAN_SCHEMA, PLAN_VERSION, check_plan
from ..codecs.spec import KINDS
from ..errors import AllocationError
from .curves import RDCurves, measure_rd_curves
from .families import Family, get_family
from .perturb import PerturbSensitivity
from .sensitivity import Sensitivity
from .solve import solve_allocation

__all__ = ["allocate", "save_plan", "predicted_costs", "memory_budget"]


def predicted_costs(curves: RDCurves, sensitivity) -> np.ndarray:
    """``(slabs, settings)`` predicted KL (nats per scored token) of each point.

    Fisher: the second-order estimate per slab. Perturbation: each slab's share (one over the
    heads) of its group's measured KL at that setting.
    """
    sensitivity.check_geometry(curves.geometry)
    if isinstance(sensitivity, PerturbSensitivity):
        if curves.family != sensitivity.family or curves.settings != sensitivity.settings:
            raise AllocationError(
                f"the curves are of family {curves.family!r}, the perturbation sensitivity of "
                f"{sensitivity.family!r} (their settings tables must be the same)")
        heads = curves.geometry["num_kv_heads"]
        return np.stack([sensitivity.kl_nats_per_token[lay, KINDS.index(kind)] / heads
                         for lay, kind, _ in curves.slabs])
    w = np.stack([sensitivity.weight(lay, kind, h) for lay, kind, h in curves.slabs])
    return 0.5 * np.einsum("sc,skc->sk", w, curves.mse_per_channel)


def memory_budget(memory_bytes, tokens: int, geometry: dict) -> float:
    """The bits per element that fit a cache of ``tokens`` tokens into ``memory_bytes``."""
    if isinstance(memory_bytes, bool) or not isinstance(memory_bytes, int) or memory_bytes < 1:
        raise AllocationError(f"memory_bytes must be a positive integer; found {memory_bytes!r}")
    n = tokens * geometry["num_layers"] * geometry["num_kv_heads"] * geometry["head_dim"] * 2
    return 8.0 * memory_bytes / n


def _setting_index(value, family: Family, what: str) -> int:
    if value is None:
        return -1
    if isinstance(value, str) and value in family.labels:
        return family.labels.index(value)
    if isinstance(value, int | np.integer) and not isinstance(value, bool) and 0 <= value < len(
        family
    ):
        return int(value)
    raise AllocationError(
        f"{what} must be a setting index 0..{len(family) - 1} or one of the family's labels "
        f"{family.labels}; found {value!r}"
    )


def _num(v, what):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating) or not (
        np.isfinite(v) and v > 0
    ):
        raise AllocationError(f"{what} must be a positive number of bits per element; found {v!r}")
    return float(v)


def allocate(
    dump,
    sensitivity: Sensitivity,
    family: str | Family = "uniform",
    budget: float | None = None,
    *,
    budget_keys: float | None = None,
    budget_values: float | None = None,
    memory_bytes: int | None = None,
    tokens: int | None = None,
    min_setting=None,
    max_setting=None,
    family_base: dict | None = None,
    curves: RDCurves | None = None,
    progress: bool = False,
    command: list[str] | None = None,
) -> dict:
    """Choose a setting of ``family`` per (layer, kind, head) for a budget of bits.

    Parameters
    ----------
    dump : path or Dump
        The calibration dump (its slabs give the rate-distortion curves).
    sensitivity : Sensitivity or PerturbSensitivity
        From :func:`~kvinfo.allocation.measure_sensitivity`,
        :func:`~kvinfo.allocation.measure_perturb_sensitivity` or
        :func:`~kvinfo.allocation.load_sensitivity`, for the dump's geometry (and, for a
        perturbation sensitivity, for this family's settings). It picks the cost model.
    family : str or Family
        ``uniform``, ``ecsq``, ``turbo`` or ``klt`` (:mod:`kvinfo.allocation.families`).
    budget : float, optional
        Mean bits per element over keys and values together (side information included).
    budget_keys, budget_values : float, optional
        Separate budgets for keys and for values (both, instead of ``budget``).
    memory_bytes : int, optional
        The dynamic mode: the budget that fits ``tokens`` tokens (default the dump's) into
        this many bytes (instead of ``budget``).
    tokens : int, optional
        The dynamic mode: plan for a cache of this many tokens (the curves are measured on
        windows of that length, so side information is counted as at that length).
    min_setting, max_setting : int or str, optional
        Index (0 = coarsest) or label of the coarsest and finest setting allowed.
    family_base : dict, optional
        Merged into every setting's config (e.g. a klt ``basis``).
    curves : RDCurves, optional
        Curves measured before (:func:`~kvinfo.allocation.measure_rd_curves`), reused across
        budgets; they must be of this family and window length.
    progress : bool
    command : list of str, optional
        The command line recorded in the plan.

    Returns
    -------
    dict
        The plan document (``docs/allocation.md``); :func:`save_plan` writes it.

    Raises
    ------
    AllocationError
        Contradictory or missing budgets, a budget outside the family's range on this dump,
        settings out of range, curves or a sensitivity of another geometry or family.
    """
    fam = family if isinstance(family, Family) else get_family(family, family_base)
    budgets = {"budget": _num(budget, "budget"), "budget_keys": _num(budget_keys, "budget_keys"),
               "budget_values": _num(budget_values, "budget_values")}
    per_kind = budgets["budget_keys"] is not None or budgets["budget_values"] is not None
    if per_kind and (budgets["budget_keys"] is None or budgets["budget_values"] is None):
        raise AllocationError("give both budget_keys and budget_values, or neither")
    given = [per_kind, budgets["budget"] is not None, memory_bytes is not None]
    if sum(given) != 1:
        raise AllocationError(
            "give exactly one of budget, (budget_keys and budget_values) or memory_bytes"
        )
    if isinstance(sensitivity, PerturbSensitivity):
        sensitivity.check_family(fam)
    elif not isinstance(sensitivity, Sensitivity):
        raise AllocationError(f"sensitivity must be a Sensitivity or PerturbSensitivity; found "
                              f"{type(sensitivity).__name__}")
    lo_i = _setting_index(min_setting, fam, "min_setting")
    hi_i = _setting_index(max_setting, fam, "max_setting")
    lo_i, hi_i = max(lo_i, 0), (len(fam) - 1 if hi_i < 0 else hi_i)
    if lo_i > hi_i:
        raise AllocationError(f"min_setting ({fam.labels[lo_i]}) is finer than max_setting "
                              f"({fam.labels[hi_i]})")
    if curves is None:
        curves = measure_rd_curves(dump, fam, tokens=tokens, progress=progress)
    elif curves.family != fam.name or curves.settings != fam.settings or curves.tokens != tokens:
        raise AllocationError(
            f"the curves are of family {curves.family!r} with tokens={curves.tokens}; this "
            f"allocation is of {fam.name!r} with tokens={tokens} (and its settings must match)"
        )
    cost = predicted_costs(curves, sensitivity)
    rate = curves.bits_per_element
    allowed = np.zeros(rate.shape, bool)
    allowed[:, lo_i : hi_i + 1] = True
    if memory_bytes is not None:
        budgets["budget"] = memory_budget(memory_bytes, tokens or curves.num_tokens,
                                          curves.geometry)
    kinds = np.array([k for _, k, _ in curves.slabs])
    choice = np.zeros(len(curves.slabs), np.int64)
    slopes = {}
    groups = (
        [("keys", kinds == "keys", budgets["budget_keys"]),
         ("values", kinds == "values", budgets["budget_values"])]
        if per_kind else [("joint", np.ones(len(kinds), bool), budgets["budget"])]
    )
    # perturbation: one setting per (layer, kind) group, its rate the mean of its heads'
    # and its cost the group's measured KL; Fisher: one setting per slab
    grouped = isinstance(sensitivity, PerturbSensitivity)
    unit = np.array([(lay, kind) if grouped else (lay, kind, h) for lay, kind, h in curves.slabs],
                    dtype=object)
    keys = list(dict.fromkeys(map(tuple, unit)))
    member = np.array([keys.index(tuple(u)) for u in unit])
    u_rate = np.stack([rate[member == i].mean(axis=0) for i in range(len(keys))])
    u_cost = np.stack([cost[member == i].sum(axis=0) for i in range(len(keys))])
    u_allowed = np.stack([allowed[member == i].all(axis=0) for i in range(len(keys))])
    u_kind = np.array([k[1] for k in keys])
    u_elems = np.array([np.sum(member == i) for i in range(len(keys))], dtype=np.float64)
    for name, _, b in groups:
        mask = np.ones(len(keys), bool) if name == "joint" else u_kind == name
        try:
            sol = solve_allocation(u_rate[mask], u_cost[mask], b, allowed=u_allowed[mask],
                                   elements=u_elems[mask])
        except AllocationError as exc:
            what = "" if name == "joint" else f" ({name})"
            raise AllocationError(f"family {fam.name}{what}: {exc}") from None
        u_choice = np.zeros(len(keys), np.int64)
        u_choice[mask] = sol.choice
        sel = mask[member]
        choice[sel] = u_choice[member[sel]]
        slopes[name] = sol.slope
    return _plan_doc(curves, fam, sensitivity, cost, choice, budgets, per_kind, slopes,
                     (lo_i, hi_i), memory_bytes, tokens, command)


def _plan_doc(curves, fam, sens, cost, choice, budgets, per_kind, slopes, limits, memory_bytes,
              tokens, command) -> dict:
    from ..results import make_record

    g = curves.geometry
    perturb = isinstance(sens, PerturbSensitivity)
    idx = np.arange(len(curves.slabs))
    r = curves.bits_per_element[idx, choice]
    m = curves.mse_per_element[idx, choice]
    c = cost[idx, choice]
    assign = {k: [[0] * g["num_kv_heads"] for _ in range(g["num_layers"])] for k in KINDS}
    records = []
    for s, (lay, kind, h) in enumerate(curves.slabs):
        assign[kind][lay][h] = int(choice[s])
        rec = {"setting": int(choice[s]), "setting_label": fam.labels[choice[s]],
               "bits_per_element": r[s], "mse_per_element": m[s]}
        if perturb:
            rec["group_measured_kl_nats_per_token"] = float(
                sens.kl_nats_per_token[lay, KINDS.index(kind), choice[s]])
        else:
            rec["fisher_weight_per_element"] = float(np.mean(sens.weight(lay, kind, h))
                                                     / curves.num_tokens)
        rec["predicted_kl_nats_per_token"] = c[s]
        records.append(make_record("slab", rec, layer=lay, kind=kind, head=h,
                                   codec=fam.settings[kind][choice[s]]))
    kinds = np.array([k for _, k, _ in curves.slabs])
    pred = {"bits_per_element": float(np.mean(r)),
            "bits_per_element_keys": float(np.mean(r[kinds == "keys"])),
            "bits_per_element_values": float(np.mean(r[kinds == "values"])),
            "kl_nats_per_token_estimate": float(np.sum(c)),
            "rate_is": "measurement on the calibration dump (side information included)",
            "kl_is": ("estimate: the sum over (layer, kind) groups of each group's KL measured "
                      "with only that group coded (additivity assumption; docs/allocation.md)"
                      if perturb else
                      "estimate (second-order, sampled Fisher; docs/allocation.md)"),
            "cost_model": "perturb" if perturb else "fisher"}
    singles = []
    for j, label in enumerate(fam.labels):
        col = curves.bits_per_element[:, j]
        if np.all(np.isfinite(col)):
            singles.append({"setting": j, "label": label, "bits_per_element": float(np.mean(col)),
                            "kl_nats_per_token_estimate": float(np.sum(cost[:, j]))})
    fits = [x for x in singles if x["bits_per_element"] <= pred["bits_per_element"] + 1e-9]
    budget = {"scope": "per-kind" if per_kind else "joint", **budgets,
              "memory_bytes": memory_bytes, "tokens": tokens,
              "min_setting": fam.labels[limits[0]], "max_setting": fam.labels[limits[1]],
              "equal_slope_nats_per_bit": slopes}
    doc = {
        "schema": PLAN_SCHEMA, "plan_version": PLAN_VERSION, "kvinfo_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": [str(x) for x in command] if command is not None else [],
        "source": {**curves.source, "sensitivity": sens.source,
                   "sensitivity_seconds": sens.seconds, "curves_seconds": curves.seconds},
        "geometry": dict(g), "family": fam.name, "labels": list(fam.labels),
        "settings": fam.settings, "assignment": assign, "budget": budget, "predicted": pred,
        "single_settings": singles,
        "best_single_setting_within_rate": fits[-1] if fits else None,
        "records": records,
    }
    return check_plan(json.loads(json.dumps(doc)))


def save_plan(plan: dict, path, *, inputs=()) -> os.PathLike:
    """Write a plan atomically (temporary name, then rename); never onto one of ``inputs``."""
    check_plan(plan)
    p = check_output_file(path, inputs=[i for i in inputs if i is not None])
    with atomic_write(p) as f:
        json.dump(plan, f, indent=1, allow_nan=False)
        f.write("\n")
    return p
