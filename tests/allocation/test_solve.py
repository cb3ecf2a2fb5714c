"""The equal-slope solver against closed forms and brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from kvinfo.allocation import lower_hull, solve_allocation
from kvinfo.errors import AllocationError


def test_matches_the_closed_form_equal_slope_solution_on_convex_curves():
    # cost_s(R) = w_s * var_s * 2**(-2R): the optimum at mean rate B is reverse water-filling,
    # R_s = B + 0.5 * log2(w_s var_s / geometric_mean(w var)) when every R_s stays in range
    rng = np.random.default_rng(11)
    n = 24
    w = rng.uniform(0.2, 5.0, n)
    var = rng.uniform(0.5, 4.0, n)
    grid = np.arange(0.0, 8.0 + 1e-9, 0.02)
    rate = np.tile(grid, (n, 1))
    cost = (w * var)[:, None] * 2.0 ** (-2 * rate)
    for budget in (2.0, 3.3):
        sol = solve_allocation(rate, cost, budget)
        wv = w * var
        closed = budget + 0.5 * np.log2(wv / np.exp(np.mean(np.log(wv))))
        assert np.all((closed > 0) & (closed < 8))
        got = rate[np.arange(n), sol.choice]
        assert np.max(np.abs(got - closed)) <= 0.021
        assert budget - 0.02 / n - 1e-9 <= sol.rate <= budget + 1e-9
        # the equal slope: -dcost/dR = 2 ln2 * cost, the same for every slab
        slope = 2 * np.log(2) * cost[np.arange(n), sol.choice] * n
        assert np.ptp(np.log(slope)) < 0.05
        assert sol.slope == pytest.approx(np.median(slope), rel=0.05)


def test_optimal_against_brute_force_on_small_hull_problems():
    rng = np.random.default_rng(3)
    for _ in range(20):
        s, k = 3, 4
        rate = np.sort(rng.uniform(0, 4, (s, k)), axis=1)
        cost = np.sort(rng.uniform(0, 1, (s, k)), axis=1)[:, ::-1] * rng.uniform(1, 5, (s, 1))
        budget = float(rng.uniform(rate[:, 0].mean(), rate[:, -1].mean()))
        sol = solve_allocation(rate, cost, budget)
        assert sol.rate <= budget + 1e-9
        best = min(
            (sum(cost[i, c[i]] for i in range(s)), c)
            for c in itertools.product(range(k), repeat=s)
            if np.mean([rate[i, c[i]] for i in range(s)]) <= budget
        )
        # optimal among the allocations with at most its own rate (a Lagrangian solution)
        own = min(
            sum(cost[i, c[i]] for i in range(s))
            for c in itertools.product(range(k), repeat=s)
            if np.mean([rate[i, c[i]] for i in range(s)]) <= sol.rate + 1e-12
        )
        assert sol.cost <= own + 1e-12 or sol.cost == pytest.approx(own)
        assert sol.cost >= best[0] - 1e-12


def test_budget_outside_the_range_is_refused_with_the_range():
    rate = np.array([[1.0, 2.0], [1.5, 3.0]])
    cost = np.array([[1.0, 0.1], [1.0, 0.2]])
    for b in (1.0, 2.6):
        with pytest.raises(AllocationError, match=r"outside .* 1\.2500 .* 2\.5000"):
            solve_allocation(rate, cost, b)
    with pytest.raises(AllocationError, match="finite"):
        solve_allocation(rate, cost, float("nan"))


def test_allowed_options_and_nan_points_are_never_chosen():
    rate = np.array([[1.0, 2.0, 3.0, np.nan]] * 3)
    cost = np.array([[3.0, 2.0, 1.0, 0.0]] * 3)
    allowed = np.ones_like(rate, bool)
    allowed[:, 2] = False
    sol = solve_allocation(rate, cost, 2.0, allowed=allowed)
    assert set(sol.choice.tolist()) <= {0, 1}
    with pytest.raises(AllocationError, match="no usable option"):
        solve_allocation(rate, cost, 2.0, allowed=np.zeros_like(allowed))


def test_lower_hull_drops_dominated_and_non_convex_points():
    r = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 5.0])
    c = np.array([5.0, 4.5, 3.0, 2.9, 1.0, 1.5])
    assert lower_hull(r, c) == [0, 2, 4]


def test_the_dp_polish_finds_the_brute_force_optimum():
    import itertools

    from kvinfo.allocation import solve_allocation

    rng = np.random.default_rng(4)
    for _ in range(20):
        rate = np.sort(rng.uniform(0.5, 6.0, (5, 4)), axis=1)
        cost = np.sort(rng.lognormal(0, 2, (5, 4)), axis=1)[:, ::-1].copy()  # non-convex
        budget = float(rng.uniform(rate[:, 0].mean() + 0.1, rate[:, -1].mean()))
        best = min((sum(cost[s, k] for s, k in enumerate(ch)), ch)
                   for ch in itertools.product(range(4), repeat=5)
                   if np.mean([rate[s, k] for s, k in enumerate(ch)]) <= budget)
        sol = solve_allocation(rate, cost, budget)
        assert sol.rate <= budget + 1e-9
        # the rates are rounded up to budget / 200,000: at worst a hair of budget unused
        assert sol.cost <= best[0] * (1 + 1e-9), (sol.choice, best)
        lagr = solve_allocation(rate, cost, budget, dp=False)
        assert sol.cost <= lagr.cost
