"""Adaptive bit allocation: spend a budget of bits where the model needs them.

Three measurements and a solver (``docs/allocation.md``):

* :func:`measure_sensitivity` -- per (layer, kind, head, channel), the diagonal Fisher
  information of the cached keys and values (what an error there costs in next-token KL, to
  second order), saved with :meth:`Sensitivity.save` and reusable across budgets and
  families;
* :func:`measure_perturb_sensitivity` -- per (layer, kind) group and family setting, the
  measured next-token KL with only that group coded by the real codec (the cost model that
  holds at coarse settings; :func:`measure_assignment_kl` checks its additivity);
* :func:`measure_rd_curves` -- each family setting's measured bits per element (side
  information included) and MSE on every slab of a calibration dump;
* :func:`solve_allocation` -- equal-slope (Lagrangian) choice of one setting per slab under a
  mean-rate budget;
* :func:`allocate` -- all three into a plan document, written by :func:`save_plan` and read
  back as a codec, ``{"id": "plan", "path": "plan.json"}`` (:mod:`kvinfo.codecs.plan`).
"""

from ..codecs.plan import load_plan
from .allocate import allocate, memory_budget, predicted_costs, save_plan
from .curves import RDCurves, load_rd_curves, measure_rd_curves
from .families import FAMILIES, Family, get_family
from .perturb import PerturbSensitivity, measure_assignment_kl, measure_perturb_sensitivity
from .sensitivity import Sensitivity, load_sensitivity, measure_sensitivity
from .solve import Solution, lower_hull, solve_allocation

__all__ = [
    "allocate",
    "save_plan",
    "load_plan",
    "predicted_costs",
    "memory_budget",
    "RDCurves",
    "measure_rd_curves",
    "load_rd_curves",
    "FAMILIES",
    "Family",
    "get_family",
    "Sensitivity",
    "measure_sensitivity",
    "load_sensitivity",
    "PerturbSensitivity",
    "measure_perturb_sensitivity",
    "measure_assignment_kl",
    "Solution",
    "solve_allocation",
    "lower_hull",
]
