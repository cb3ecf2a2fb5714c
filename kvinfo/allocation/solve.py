"""The allocation solver: minimise a sum of per-slab costs under an average-rate budget.

Each slab ``s`` has discrete options ``k`` with a rate ``r[s, k]`` (bits per element) and a
cost ``c[s, k]`` (the predicted quality loss). The problem -- choose one option per slab to
minimise ``sum_s c[s, k_s]`` subject to ``mean_s r[s, k_s] <= budget`` -- is a
multiple-choice knapsack. The solver takes the Lagrangian (equal-slope) route of Shoham and
Gersho: only options on each slab's lower convex hull can be optimal for some slope
``lambda``; starting from every slab's cheapest-rate hull point, the hull steps of all slabs
are taken in order of decreasing slope ``-delta c / delta r`` (within a slab they come in
that order by convexity) while the budget holds. The result is optimal for its own rate among
all allocations (it is a Lagrangian solution); the rate left unused is below one hull step of
one slab divided by the number of slabs. The remaining steps that still fit are then
taken in the same order, and last any option of any slab (on its hull or not) that lowers
the cost and still fits, best cost decrease per bit first (a greedy fill, which keeps the
rate at or below the budget and brings it close to it). Last, the problem is solved exactly
by dynamic programming over the slabs on rates rounded up to ``budget / 200,000`` (at most
``slabs * budget / 200,000`` bits per element left unused), and the cheaper of the two
choices is kept: with few slabs (the 60 (layer, kind) groups of a perturbation
sensitivity) the Lagrangian solution can leave a whole step of one group unused.

References
----------
Y. Shoham, A. Gersho, "Efficient bit allocation for an arbitrary set of quantizers", IEEE
Trans. ASSP 36(9), 1988.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import AllocationError

__all__ = ["Solution", "solve_allocation", "lower_hull"]


@dataclass
class Solution:
    """The options chosen per slab and what they add up to.

    Attributes
    ----------
    choice : ndarray of int, shape (slabs,)
    rate : float
        Mean rate of the chosen options (weighted by ``elements``).
    cost : float
        Sum of the chosen options' costs.
    slope : float
        The slope (cost per bit per element) of the last hull step taken: the equal slope.
    """

    choice: np.ndarray
    rate: float
    cost: float
    slope: float


def lower_hull(rate: np.ndarray, cost: np.ndarray) -> list[int]:
    """Indices of the lower convex hull of the points ``(rate, cost)``, by increasing rate.

    NaN points are skipped; of points with equal rate the cheapest counts; points that do not
    lower the cost as the rate grows are dropped.

    >>> lower_hull(np.array([1.0, 2.0, 3.0, 4.0]), np.array([8.0, 3.0, 2.5, 0.5]))
    [0, 1, 3]
    """
    ok = np.nonzero(np.isfinite(rate) & np.isfinite(cost))[0]
    order = sorted(ok, key=lambda i: (rate[i], cost[i]))
    pts: list[int] = []
    for i in order:
        if pts and rate[i] == rate[pts[-1]]:
            continue
        if pts and cost[i] >= cost[pts[-1]]:
            continue  # more bits, no better
        while len(pts) >= 2:
            a, b = pts[-2], pts[-1]
            # b is above the segment a -> i: not on the lower hull
            if (cost[b] - cost[a]) * (rate[i] - rate[a]) >= (cost[i] - cost[a]) * (
                rate[b] - rate[a]
            ):
                pts.pop()
            else:
                break
        pts.append(int(i))
    return pts


def solve_allocation(rate, cost, budget: float, *, allowed=None, elements=None, dp: bool = True,
                     dp_cells: int = 200_000) -> Solution:
    """Choose one option per slab minimising the total cost at a mean rate ``<= budget``.

    Parameters
    ----------
    rate, cost : array, shape (slabs, options)
        Bits per element and predicted cost of each option (NaN: unavailable).
    budget : float
        The mean rate allowed (bits per element, weighted by ``elements``).
    allowed : bool array, shape (slabs, options), optional
        Options that may be chosen (the minimum and maximum settings).
    elements : array, shape (slabs,), optional
        Elements per slab (default equal).
    dp : bool
        After the Lagrangian solution and its greedy fill, also solve the problem exactly by
        dynamic programming on rates rounded up to ``budget / dp_cells`` and keep whichever
        of the two costs less (the Lagrangian solution leaves up to one hull step of one
        slab unused, which matters when the slabs are few, e.g. 60 (layer, kind) groups).
    dp_cells : int
        Resolution of that dynamic programme.

    Raises
    ------
    AllocationError
        A budget below the cheapest allocation or above the richest one (the message gives
        the range), or a slab with no usable option.

    Examples
    --------
    >>> r = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    >>> c = np.array([[4.0, 1.0, 0.25], [1.0, 0.25, 0.06]])
    >>> solve_allocation(r, c, 2.0).choice.tolist()
    [2, 0]
    """
    rate = np.asarray(rate, dtype=np.float64)
    cost = np.asarray(cost, dtype=np.float64)
    if rate.ndim != 2 or rate.shape != cost.shape or rate.size == 0:
        raise AllocationError(f"rate and cost must be equal non-empty 2-d arrays; found "
                              f"{rate.shape} and {cost.shape}")
    s_n = rate.shape[0]
    w = np.ones(s_n) if elements is None else np.asarray(elements, dtype=np.float64)
    w = w / w.sum()
    if allowed is not None:
        rate = np.where(allowed, rate, np.nan)
    hulls = []
    for s in range(s_n):
        h = lower_hull(rate[s], cost[s])
        if not h:
            raise AllocationError(f"slab {s} has no usable option in the allowed settings")
        hulls.append(h)
    lo = float(sum(w[s] * rate[s, h[0]] for s, h in enumerate(hulls)))
    hi = float(sum(w[s] * rate[s, h[-1]] for s, h in enumerate(hulls)))
    if not isinstance(budget, int | float | np.floating | np.integer) or isinstance(
        budget, bool
    ) or not np.isfinite(budget):
        raise AllocationError(f"budget must be a finite number; found {budget!r}")
    tol = 1e-9
    if budget < lo - tol or budget > hi + tol:
        raise AllocationError(
            f"budget {budget:g} bits per element is outside what these settings reach on this "
            f"data: {lo:.4f} (every slab at its coarsest) to {hi:.4f} (every slab at its "
            "finest) bits per element (measurement)"
        )
    moves = []  # (slope, slab, step index)
    for s, h in enumerate(hulls):
        for j in range(len(h) - 1):
            a, b = h[j], h[j + 1]
            slope = (cost[s, a] - cost[s, b]) / (w[s] * (rate[s, b] - rate[s, a]))
            moves.append((slope, s, j))
    moves.sort(key=lambda m: (-m[0], m[1], m[2]))
    pos = [0] * s_n
    total = lo
    last_slope = float("inf")
    stopped = False
    for slope, s, j in moves:
        if pos[s] != j:
            continue  # an earlier step of this slab did not fit
        h = hulls[s]
        dr = w[s] * (rate[s, h[j + 1]] - rate[s, h[j]])
        if total + dr <= budget + tol:
            total += dr
            pos[s] = j + 1
            if not stopped:
                last_slope = slope
        else:
            stopped = True
    choice = np.array([hulls[s][pos[s]] for s in range(s_n)], dtype=np.int64)
    # the fill: any option (hull or not) that lowers the cost and still fits, best cost
    # decrease per bit first, until none fits
    r_ok = np.where(np.isfinite(rate) & np.isfinite(cost), rate, np.inf)
    rows = np.arange(s_n)
    for _ in range(rate.size):
        dr = w[:, None] * (r_ok - r_ok[rows, choice][:, None])
        dc = cost[rows, choice][:, None] - cost
        fits = (dr > 0) & (total + dr <= budget + tol) & (dc > 0)
        if not fits.any():
            break
        gain = np.where(fits, dc / np.where(dr > 0, dr, 1.0), -np.inf)
        s_best, k_best = np.unravel_index(int(np.argmax(gain)), gain.shape)
        total += dr[s_best, k_best]
        choice[s_best] = k_best
    if dp:
        exact = _dp_choice(r_ok, cost, w, budget, cells=dp_cells)
        if exact is not None and np.sum(cost[rows, exact]) < np.sum(cost[rows, choice]):
            choice = exact
    return Solution(
        choice=choice,
        rate=float(np.sum(w * rate[np.arange(s_n), choice])),
        cost=float(np.sum(cost[np.arange(s_n), choice])),
        slope=float(last_slope if np.isfinite(last_slope) else 0.0),
    )


def _dp_choice(rate, cost, w, budget, *, cells: int = 200_000):
    """Exact multiple-choice knapsack on rates rounded up to ``budget / cells``: the choice.

    Dynamic programming over slabs, ``best[c]`` = least cost with at most ``c`` rate units;
    rounding every weighted rate *up* keeps the true rate within the budget, and loses at
    most ``slabs * budget / cells`` bits per element of it. ``None`` if no choice fits.
    """
    s_n, k_n = rate.shape
    if k_n > 127:
        return None
    delta = budget / cells
    ok = np.isfinite(rate) & np.isfinite(cost)
    units = np.where(ok, np.ceil(w[:, None] * np.where(ok, rate, 0.0) / delta - 1e-9), -1)
    units = units.astype(np.int64)
    best = np.zeros(cells + 1)
    arg = np.zeros((s_n, cells + 1), dtype=np.int8)
    for s in range(s_n):
        new = np.full(cells + 1, np.inf)
        for k in range(k_n):
            q = units[s, k]
            if q < 0 or q > cells:
                continue
            cand = np.full(cells + 1, np.inf)
            cand[q:] = best[: cells + 1 - q] + cost[s, k]
            better = cand < new
            new[better] = cand[better]
            arg[s, better] = k
        best = new
    if not np.isfinite(best[cells]):
        return None
    choice = np.zeros(s_n, dtype=np.int64)
    c = cells
    for s in range(s_n - 1, -1, -1):
        k = int(arg[s, c])
        choice[s] = k
        c -= int(units[s, k])
    return choice
