"""Plans from synthetic dumps: the budget is met, bad budgets and geometries are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kvinfo.allocation import (
    Family,
    Sensitivity,
    allocate,
    get_family,
    load_plan,
    load_rd_curves,
    load_sensitivity,
    measure_rd_curves,
    memory_budget,
    save_plan,
)
from kvinfo.errors import AllocationError, PlanFormatError


def _family():
    """The uniform family cut to 6 settings (1 to 6 bits): fewer codec calls in the tests."""
    f = get_family("uniform")
    return Family("uniform", {k: v[:6] for k, v in f.settings.items()}, f.labels[:6])


def _sensitivity(geometry, seed=0):
    rng = np.random.default_rng(seed)
    shape = (geometry["num_layers"], 2, geometry["num_kv_heads"], geometry["head_dim"])
    f = rng.lognormal(0.0, 1.5, shape)  # slabs differ by orders of magnitude
    return Sensitivity(f, dict(geometry), 100, 100, 2, 0.0, {"test": True})


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    from kvinfo.dumps import write_synthetic_dump

    t = tmp_path_factory.mktemp("alloc")
    path = write_synthetic_dump(t / "calib.h5", num_layers=8, num_kv_heads=4, num_heads=8,
                                num_tokens=64, head_dim=16, queries=False, seed=5)
    fam = _family()
    curves = measure_rd_curves(path, fam)
    sens = _sensitivity(curves.geometry)
    return {"dir": t, "dump": path, "family": fam, "curves": curves, "sens": sens}


def _measured_rate(plan_path, dump):
    """Bits per element of a plan over every slab of a dump, coded as bench codes them."""
    from kvinfo.codecs import get_codec
    from kvinfo.dumps import open_dump

    codec = get_codec({"id": "plan", "path": str(plan_path)})
    bits = n = 0
    with open_dump(dump) as d:
        codec.check_geometry(d.num_layers, d.num_kv_heads, d.head_dim)
        for layer, kind, head, x in d.iter_slabs(kinds=("keys", "values")):
            bits += 8 * len(codec.for_slab(layer, kind, head).encode(x))
            n += x.size
    return bits / n


def test_plan_rate_on_the_calibration_dump_is_within_002_bit_of_the_budget(calib):
    c = calib
    lo, hi = np.mean(c["curves"].bits_per_element, axis=0)[[1, -2]]
    for budget in (float(lo) + 0.3, float(hi) - 0.3):
        plan = allocate(c["dump"], c["sens"], c["family"], budget, curves=c["curves"])
        assert budget - 0.02 <= plan["predicted"]["bits_per_element"] <= budget + 1e-9
        path = save_plan(plan, c["dir"] / f"plan{budget:.3f}.json")
        measured = _measured_rate(path, c["dump"])
        assert abs(measured - budget) <= 0.02, (measured, budget)
        # the curves count the plan's framing: the plan's rate is the one budgeted
        assert measured == pytest.approx(plan["predicted"]["bits_per_element"], abs=1e-9)
        # the plan beats the best single setting within its rate (predicted, same weights)
        best = plan["best_single_setting_within_rate"]
        assert plan["predicted"]["kl_nats_per_token_estimate"] <= best[
            "kl_nats_per_token_estimate"]


def test_eval_accepts_a_plan_and_binds_it_per_layer(tmp_path):
    """The tiny Llama's geometry (2 layers x 2 KV heads x 16): a plan through evaluate()."""
    import json as _json

    from kvinfo.evaluate import evaluate
    from tests.conftest import make_char_tokenizer, make_tiny_llama

    tok = make_char_tokenizer()
    model = make_tiny_llama(len(tok))
    fam = get_family("uniform")
    plan = {"schema": "kvinfo.plan", "plan_version": 1,
            "geometry": {"num_layers": 2, "num_kv_heads": 2, "head_dim": 16},
            "family": "uniform", "settings": fam.settings,
            "assignment": {"keys": [[1, 7], [3, 3]], "values": [[2, 2], [7, 0]]}}
    path = tmp_path / "plan.json"
    path.write_text(_json.dumps(plan))
    text = "The quick brown fox jumps over the lazy dog. " * 4
    res = evaluate(model, tok, [{"id": "plan", "path": str(path)}, fam.spec(7)], text,
                   prefix=64, max_tokens=96)
    r_plan, r8 = res.results
    assert r_plan.bits_per_element < r8.bits_per_element
    assert r_plan.kl_nats_per_token > r8.kl_nats_per_token >= 0
    plan["geometry"]["num_layers"] = 3
    plan["assignment"] = {k: v + [[0, 0]] for k, v in plan["assignment"].items()}
    path.write_text(_json.dumps(plan))
    with pytest.raises(PlanFormatError, match="made for 3 layers"):
        evaluate(model, tok, [{"id": "plan", "path": str(path)}], text, prefix=64,
                 max_tokens=96)


def test_budget_outside_the_family_range_is_refused(calib):
    c = calib
    rates = np.mean(c["curves"].bits_per_element, axis=0)
    for b in (rates[0] * 0.5, rates[-1] + 1.0):
        with pytest.raises(AllocationError, match="outside what these settings reach"):
            allocate(c["dump"], c["sens"], c["family"], float(b), curves=c["curves"])
    with pytest.raises(AllocationError, match="outside"):  # min/max settings narrow the range
        allocate(c["dump"], c["sens"], c["family"], float(rates[1]), curves=c["curves"],
                 min_setting="4 bits")
    with pytest.raises(AllocationError, match="exactly one"):
        allocate(c["dump"], c["sens"], c["family"], 5.0, memory_bytes=100, curves=c["curves"])
    with pytest.raises(AllocationError, match="both budget_keys"):
        allocate(c["dump"], c["sens"], c["family"], budget_keys=3.0, curves=c["curves"])
    with pytest.raises(AllocationError, match="min_setting must be"):
        allocate(c["dump"], c["sens"], c["family"], 3.0, min_setting=99, curves=c["curves"])
    with pytest.raises(AllocationError, match="unknown family"):
        get_family("nope")


def test_separate_budgets_min_max_and_memory_mode(calib):
    c = calib
    cv = c["curves"]
    kinds = np.array([k for _, k, _ in cv.slabs])
    bk = float(np.mean(cv.bits_per_element[kinds == "keys", 2:4]))
    bv = float(np.mean(cv.bits_per_element[kinds == "values", 3:5]))
    plan = allocate(c["dump"], c["sens"], c["family"], budget_keys=bk, budget_values=bv,
                    curves=cv, min_setting=1, max_setting="6 bits")
    p = plan["predicted"]
    assert bk - 0.05 <= p["bits_per_element_keys"] <= bk + 1e-9
    assert bv - 0.05 <= p["bits_per_element_values"] <= bv + 1e-9
    chosen = [r["metrics"]["setting"] for r in plan["records"]]
    assert min(chosen) >= 1 and max(chosen) <= 5
    g = c["curves"].geometry
    nbytes = int(5.0 * 64 * 8 * 4 * 16 * 2 / 8)
    assert memory_budget(nbytes, 64, g) == pytest.approx(5.0)
    plan = allocate(c["dump"], c["sens"], c["family"], memory_bytes=nbytes, curves=c["curves"])
    assert plan["budget"]["budget"] == pytest.approx(5.0)
    assert 4.9 <= plan["predicted"]["bits_per_element"] <= 5.0 + 1e-9


def test_dynamic_mode_counts_side_information_at_the_planned_length(calib, tmp_path):
    from kvinfo.dumps import write_synthetic_dump

    c = calib
    small = write_synthetic_dump(tmp_path / "small.h5", num_layers=1, num_kv_heads=2,
                                 num_tokens=64, head_dim=16, queries=False, seed=2)
    whole = measure_rd_curves(small, c["family"])
    short = measure_rd_curves(small, c["family"], tokens=16)
    # per-group scales over 16 tokens cost more per element than over 64
    assert np.all(np.mean(short.bits_per_element, 0) > np.mean(whole.bits_per_element, 0))
    sens = _sensitivity(short.geometry)
    with pytest.raises(AllocationError, match="tokens"):
        allocate(small, sens, c["family"], 3.0, curves=short)  # curves of another T
    mid = float(np.mean(short.bits_per_element[:, 3]))
    plan = allocate(small, sens, c["family"], mid, curves=short, tokens=16)
    assert plan["budget"]["tokens"] == 16
    with pytest.raises(AllocationError, match="tokens must be"):
        measure_rd_curves(small, c["family"], tokens=10**6)


def test_plan_for_another_geometry_is_refused(calib, tmp_path):
    from kvinfo.bench import bench_dump
    from kvinfo.codecs import get_codec
    from kvinfo.dumps import write_synthetic_dump

    c = calib
    plan = allocate(c["dump"], c["sens"], c["family"], 5.0, curves=c["curves"])
    path = save_plan(plan, tmp_path / "plan.json")
    for kw in ({"num_layers": 1}, {"num_kv_heads": 1}, {"head_dim": 8}):
        geo = {"num_layers": 8, "num_kv_heads": 4, "head_dim": 16, **kw}
        other = write_synthetic_dump(tmp_path / f"o{sorted(kw)[0]}.h5", num_tokens=16,
                                     num_heads=2 * geo["num_kv_heads"], queries=False, **geo)
        with pytest.raises(PlanFormatError, match="was made for 8 layers x 4 KV heads"):
            _measured_rate(path, other)
    # bench refuses before it codes a slab (its check_geometry hook)
    with pytest.raises(PlanFormatError, match="was made for 8 layers x 4 KV heads"):
        bench_dump(other, [{"id": "plan", "path": str(path)}], knn_samples=16,
                   use_gpu=False, attention=False)
    codec = get_codec({"id": "plan", "path": str(path)})
    with pytest.raises(PlanFormatError, match="layer 8"):
        codec.for_slab(8, "keys", 0)
    bound = codec.for_slab(0, "keys", None)
    with pytest.raises(PlanFormatError, match="expected \\(num_kv_heads"):
        bound.encode(np.zeros((3, 8, 16), np.float32))
    # the sensitivity of another geometry is refused too
    sens = _sensitivity({"num_layers": 3, "num_kv_heads": 4, "head_dim": 16})
    with pytest.raises(AllocationError, match="sensitivity was measured for 3 layers"):
        allocate(c["dump"], sens, c["family"], 5.0, curves=c["curves"])


def test_files_round_trip_and_damage_is_refused(calib, tmp_path):
    c = calib
    c["sens"].save(tmp_path / "s.json")
    s2 = load_sensitivity(tmp_path / "s.json")
    np.testing.assert_array_equal(s2.fisher_per_channel, c["sens"].fisher_per_channel)
    c["curves"].save(tmp_path / "c.npz")
    c2 = load_rd_curves(tmp_path / "c.npz")
    np.testing.assert_array_equal(c2.bits_per_element, c["curves"].bits_per_element)
    plan = allocate(c["dump"], s2, c["family"], 5.0, curves=c2)
    p = save_plan(plan, tmp_path / "p.json")
    assert load_plan(p)["assignment"] == plan["assignment"]
    bad = json.loads(p.read_text())
    bad["assignment"]["keys"][0][0] = 99
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(PlanFormatError, match=r"assignment.keys\[0\]\[0\]"):
        load_plan(tmp_path / "bad.json")
    bad["plan_version"] = 7
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(PlanFormatError, match="unknown plan_version 7"):
        load_plan(tmp_path / "bad.json")
    (tmp_path / "s_bad.json").write_text("{}")
    with pytest.raises(AllocationError, match="not a kvinfo sensitivity file"):
        load_sensitivity(tmp_path / "s_bad.json")
    with pytest.raises(PlanFormatError, match="no such plan"):
        load_plan(tmp_path / "missing.json")
    from kvinfo.errors import OutputPathError

    with pytest.raises(OutputPathError):
        save_plan(plan, c["dump"], inputs=[c["dump"]])
