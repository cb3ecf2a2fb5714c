"""The Fisher sensitivity on the tiny in-process Llama, checked against perturbation runs."""

from __future__ import annotations

import numpy as np
import pytest

from kvinfo.allocation import measure_sensitivity
from kvinfo.errors import AllocationError


def _kl_with_noise(model, ids, p_len, sigma_per_layer_kind, seed):
    """Measured mean KL of the scored tokens when the cache gets Gaussian noise."""
    import torch

    from kvinfo.dumps.capture import output_cache

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        base = output_cache(model(ids[:, :p_len], use_cache=True))
        lp0 = torch.log_softmax(model(ids[:, p_len:-1], use_cache=True, past_key_values=base)
                                .logits[0].double(), -1)
        cache = output_cache(model(ids[:, :p_len], use_cache=True))
        for i, layer in enumerate(cache.layers):
            for k, attr in enumerate(("keys", "values")):
                t = getattr(layer, attr)
                noise = torch.randn(t.shape, generator=g) * sigma_per_layer_kind[i][k]
                setattr(layer, attr, t + noise)
        lp1 = torch.log_softmax(model(ids[:, p_len:-1], use_cache=True, past_key_values=cache)
                                .logits[0].double(), -1)
    return float((lp0.exp() * (lp0 - lp1)).sum(-1).mean())


def test_second_order_prediction_matches_perturbation_runs():
    import torch

    from tests.conftest import make_tiny_llama

    torch.manual_seed(0)
    model = make_tiny_llama(64, seed=3)
    ids = np.random.default_rng(0).integers(0, 64, 96)
    sens = measure_sensitivity(model, [ids], samples=8, seed=1)
    f = sens.fisher_per_channel
    assert f.shape == (2, 2, 2, 16) and np.all(f >= 0) and f.sum() > 0
    assert sens.num_scored_tokens == 47 and sens.num_cached_tokens == 48
    # noise on layer 0's values only, then on everything, at two levels
    t = torch.from_numpy(ids)[None]
    for sig in ([[0.0, 0.05], [0.0, 0.0]], [[0.02, 0.02], [0.02, 0.02]]):
        pred = sum(0.5 * sig[i][k] ** 2 * f[i, k].sum() for i in range(2) for k in range(2))
        meas = np.mean([_kl_with_noise(model, t, 48, sig, s) for s in range(4)])
        assert 0.5 < meas / pred < 2.0, (meas, pred)


def test_bad_options_are_refused():
    with pytest.raises(AllocationError, match="samples"):
        measure_sensitivity(None, [np.arange(10)], samples=0)
    with pytest.raises(AllocationError, match="prefix_fraction"):
        measure_sensitivity(None, [np.arange(10)], prefix_fraction=1.0)
    with pytest.raises(AllocationError, match="4 or more tokens"):
        measure_sensitivity(None, [np.arange(3)])
