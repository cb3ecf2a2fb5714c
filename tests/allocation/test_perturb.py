"""The measured-perturbation sensitivity: replay, KL, files and plans from it."""

from __future__ import annotations

import numpy as np
import pytest

from kvinfo.allocation import (
    Family,
    PerturbSensitivity,
    allocate,
    get_family,
    load_sensitivity,
    measure_assignment_kl,
    measure_perturb_sensitivity,
    measure_rd_curves,
)
from kvinfo.codecs.spec import KINDS
from kvinfo.errors import AllocationError


def _family(n=6):
    f = get_family("uniform")
    return Family("uniform", {k: v[:n] for k, v in f.settings.items()}, f.labels[:n])


def _full_forward_kl(model, ids, prefix, coded):
    """KL by brute force: prefill, replace the cache of the groups in ``coded``, full forward."""
    import torch

    from kvinfo.codecs import get_codec
    from kvinfo.dumps.capture import output_cache

    t = torch.from_numpy(ids)[None]
    with torch.no_grad():
        cache = output_cache(model(t[:, :prefix], use_cache=True))
        lp0 = torch.log_softmax(model(t[:, prefix:], use_cache=True, past_key_values=cache)
                                .logits[0].double(), -1)
        cache = output_cache(model(t[:, :prefix], use_cache=True))
        for (layer, kind), cfg in coded.items():
            lay = cache.layers[layer]
            x = getattr(lay, kind)[0].numpy()
            c = get_codec(cfg)
            y = c.decode(c.encode(np.ascontiguousarray(x)))
            setattr(lay, kind, torch.from_numpy(np.ascontiguousarray(y))[None])
        lp1 = torch.log_softmax(model(t[:, prefix:], use_cache=True, past_key_values=cache)
                                .logits[0].double(), -1)
    return float((lp0.exp() * (lp0 - lp1)).sum(-1).mean())


@pytest.fixture(scope="module")
def tiny():
    import torch

    from tests.conftest import make_tiny_llama

    torch.manual_seed(0)
    model = make_tiny_llama(64, seed=3)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 64, 120), rng.integers(0, 64, 90)]
    fam = _family(4)
    sens = measure_perturb_sensitivity(model, seqs, fam, scored=24)
    return model, seqs, fam, sens


def test_replay_equals_the_full_forward_and_the_kl_is_the_brute_force_one(tiny):
    model, seqs, fam, sens = tiny
    assert sens.kl_nats_per_token.shape == (2, 2, 4)
    assert sens.num_scored_tokens == 48 and sens.num_cached_tokens == 96 + 66
    assert sens.replay_max_abs_logit_deviation < 1e-5
    # each group x setting against the brute-force full forward, token-weighted
    for layer in range(2):
        for ki, kind in enumerate(KINDS):
            for j in (0, 3):
                cfg = fam.settings[kind][j]
                ref = np.mean([_full_forward_kl(model, s, s.size - 24, {(layer, kind): cfg})
                               for s in seqs])
                got = sens.kl_nats_per_token[layer, ki, j]
                assert got == pytest.approx(ref, rel=1e-6, abs=1e-12), (layer, kind, j)
    # coarser settings cost more
    assert np.all(sens.kl_nats_per_token[..., 0] > sens.kl_nats_per_token[..., 3])
    assert np.all(np.diff(sens.bits_per_element, axis=-1) > 0)


def test_assignment_kl_and_additivity(tiny):
    model, seqs, fam, sens = tiny
    one = np.full((2, 2), 3)
    one[1, 1] = 0
    # every group but one nearly exact: the whole assignment is close to the sum
    whole = measure_assignment_kl(model, seqs, fam, one, scored=24)
    ref = np.mean([_full_forward_kl(model, s, s.size - 24,
                                    {(lay, k): fam.settings[k][int(one[lay, ki])]
                                     for lay in range(2) for ki, k in enumerate(KINDS)})
                   for s in seqs])
    assert whole == pytest.approx(ref, rel=1e-6)
    summed = sens.kl_nats_per_token[np.arange(2)[:, None], np.arange(2)[None], one].sum()
    assert 0.5 < whole / summed < 2.0
    with pytest.raises(AllocationError, match="shape"):
        measure_assignment_kl(model, seqs, fam, np.zeros((3, 2)), scored=24)


def test_json_round_trip_and_damage(tiny, tmp_path):
    *_, sens = tiny
    sens.save(tmp_path / "p.json")
    back = load_sensitivity(tmp_path / "p.json")
    assert isinstance(back, PerturbSensitivity)
    np.testing.assert_array_equal(back.kl_nats_per_token, sens.kl_nats_per_token)
    np.testing.assert_array_equal(back.bits_per_element, sens.bits_per_element)
    assert back.settings == sens.settings and back.labels == sens.labels
    assert back.geometry == sens.geometry and back.seconds == sens.seconds
    doc = sens.to_json()
    doc["kl_nats_per_token"] = doc["kl_nats_per_token"][:1]
    import json

    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(AllocationError, match="does not match its geometry"):
        load_sensitivity(tmp_path / "bad.json")


def test_bad_input_is_refused(tiny):
    model, seqs, fam, _ = tiny
    with pytest.raises(AllocationError, match="at least 202 tokens"):
        measure_perturb_sensitivity(model, seqs, fam, scored=200)
    with pytest.raises(AllocationError, match="scored must be"):
        measure_perturb_sensitivity(model, seqs, fam, scored=0)
    with pytest.raises(AllocationError, match="Llama-like"):
        measure_perturb_sensitivity(object(), seqs, fam, scored=24)


# -- plans from a perturbation sensitivity (synthetic dump, synthetic measured KL) ---------

@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    from kvinfo.dumps import write_synthetic_dump

    t = tmp_path_factory.mktemp("alloc_p")
    # 30 layers x 2 kinds: 60 groups, as SmolLM2 (a group's step is 1/60 of a bit)
    path = write_synthetic_dump(t / "calib.h5", num_layers=30, num_kv_heads=2, num_heads=4,
                                num_tokens=64, head_dim=16, queries=False, seed=5)
    fam = _family()
    curves = measure_rd_curves(path, fam)
    rng = np.random.default_rng(1)
    # KL / 4 per setting, times a group factor spread over orders of magnitude
    kl = rng.lognormal(0, 1.5, (30, 2, 1)) * 4.0 ** -np.arange(6)[None, None]
    sens = PerturbSensitivity(kl, fam.name, fam.settings, list(fam.labels), curves.geometry,
                              100, 100, 1, 0.0, 0.0, np.full(kl.shape, np.nan))
    return {"dump": path, "family": fam, "curves": curves, "sens": sens}


def test_plan_from_measured_kl_meets_the_budget_with_one_setting_per_group(calib):
    c = calib
    rates = np.mean(c["curves"].bits_per_element, axis=0)
    for budget in (float(rates[1]) + 0.3, float(rates[3]) + 0.1):
        plan = allocate(c["dump"], c["sens"], c["family"], budget, curves=c["curves"])
        p = plan["predicted"]
        assert budget - 0.02 <= p["bits_per_element"] <= budget + 1e-9
        assert p["cost_model"] == "perturb"
        for kind in KINDS:
            assert all(len(set(row)) == 1 for row in plan["assignment"][kind])
        a = plan["assignment"]
        cost = sum(c["sens"].kl_nats_per_token[lay, ki, a[k][lay][0]]
                   for lay in range(30) for ki, k in enumerate(KINDS))
        assert p["kl_nats_per_token_estimate"] == pytest.approx(cost)
        best = plan["best_single_setting_within_rate"]
        assert p["kl_nats_per_token_estimate"] < best["kl_nats_per_token_estimate"]
    # per-kind budgets
    kinds = np.array([k for _, k, _ in c["curves"].slabs])
    bk = float(np.mean(c["curves"].bits_per_element[kinds == "keys", 2]))
    bv = float(np.mean(c["curves"].bits_per_element[kinds == "values", 4]))
    plan = allocate(c["dump"], c["sens"], c["family"], budget_keys=bk + 0.2,
                    budget_values=bv - 0.2, curves=c["curves"])
    assert bk + 0.1 <= plan["predicted"]["bits_per_element_keys"] <= bk + 0.2 + 1e-9


def test_perturb_refusals(calib):
    c = calib
    rates = np.mean(c["curves"].bits_per_element, axis=0)
    with pytest.raises(AllocationError, match="outside what these settings reach"):
        allocate(c["dump"], c["sens"], c["family"], float(rates[-1]) + 1, curves=c["curves"])
    with pytest.raises(AllocationError, match="measured for family 'uniform'"):
        allocate(c["dump"], c["sens"], _family(5), 3.0)
    s = c["sens"]
    other = PerturbSensitivity(s.kl_nats_per_token[:3], s.family, s.settings, s.labels,
                               {**s.geometry, "num_layers": 3}, 1, 1, 1, 0.0, 0.0,
                               s.bits_per_element[:3])
    with pytest.raises(AllocationError, match="sensitivity was measured for 3 layers"):
        allocate(c["dump"], other, c["family"], 3.0, curves=c["curves"])
