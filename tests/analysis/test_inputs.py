"""Bounds of caching X (kvinfo.analysis.inputs) on a dump with a known linear structure."""

from __future__ import annotations

import numpy as np
import pytest

from kvinfo.analysis import rd_gaussian
from kvinfo.analysis.inputs import analyze_inputs, conditional_covariance, format_inputs_table
from kvinfo.cli import main
from kvinfo.dumps import DumpWriter, open_dump
from kvinfo.errors import AnalysisInputError


@pytest.fixture(scope="module")
def linear_dump(tmp_path_factory):
    """X 16 wide, K_pre and V 2 heads x 2 dims each (8 wide) = W X, residuals that drift."""
    rng = np.random.default_rng(3)
    L, T, H, kv, D = 3, 600, 16, 2, 2
    r = [rng.normal(size=(T, H)) * np.linspace(3, 0.3, H)]
    for _ in range(L - 1):
        r.append(r[-1] + 0.1 * rng.normal(size=(T, H)))
    x = [ri / np.sqrt((ri**2).mean(axis=1, keepdims=True)) for ri in r]
    keys, pre, values = [], [], []
    for layer in range(L):
        w = rng.normal(size=(2 * kv * D, H))
        y = x[layer] @ w.T
        k = y[:, : kv * D].reshape(T, kv, D).transpose(1, 0, 2)
        v = y[:, kv * D:].reshape(T, kv, D).transpose(1, 0, 2)
        pre.append(k)
        keys.append(k)
        values.append(v)
    path = tmp_path_factory.mktemp("inputs") / "lin.h5"
    with DumpWriter(path, model="lin", dtype="float32", num_layers=L, num_heads=kv,
                    num_kv_heads=kv, head_dim=D, kinds=("keys", "values", "keys_pre_rope"),
                    input_kinds=("inputs", "residual"), hidden_size=H) as w:
        f = np.float32
        w.append(np.arange(T), {"keys": np.array(keys, f), "values": np.array(values, f),
                                "keys_pre_rope": np.array(pre, f), "inputs": np.array(x, f),
                                "residual": np.array(r, f)})
    return path, x, r


def test_bounds_follow_the_structure(linear_dump):
    path, x, r = linear_dump
    with open_dump(path) as d:
        recs = analyze_inputs(d)
    assert [rec["layer"] for rec in recs] == [0, 1, 2]
    for rec in recs:
        m = rec["metrics"]
        assert m["x_width"] == 16 and m["kv_width"] == 8 and m["kv_keys_pre_rope"]
        # X is wider than W X: caching it to the same SNR costs more
        assert m["rd_x_bits_per_token_20db"] > m["rd_kv_bits_per_token_20db"]
        assert m["x_over_kv_rate_ratio_20db"] > 1
        assert m["rd_kv_bits_per_token_10db"] < m["rd_kv_bits_per_token_30db"]
    m1 = recs[1]["metrics"]
    # consecutive layers share the residual stream: given the previous layer, X is cheap
    assert m1["rd_x_given_prev_x_bits_per_token_20db"] < 0.6 * m1["rd_x_bits_per_token_20db"]
    assert m1["rd_dresidual_bits_per_token_20db"] < m1["rd_x_bits_per_token_20db"]
    assert "rd_dx_bits_per_token_20db" not in recs[0]["metrics"]
    # the per-token rate is the reference water-filling times the width
    xa = x[0].astype(np.float32).astype(np.float64)
    c = np.cov(xa.T)
    want = rd_gaussian(c, np.trace(c) / 16 / 100) * 16
    assert recs[0]["metrics"]["rd_x_bits_per_token_20db"] == pytest.approx(want, rel=1e-6)
    text = format_inputs_table(recs)
    assert "caching X costs more than caching K and V in 3 of 3 layers" in text


def test_conditional_covariance_of_a_function_is_zero():
    rng = np.random.default_rng(0)
    b = rng.normal(size=(500, 4))
    a = b @ rng.normal(size=(4, 3))
    assert np.abs(conditional_covariance(a, b)).max() < 1e-4


def test_refuses_dumps_without_inputs(synthetic_dump):
    with open_dump(synthetic_dump) as d, pytest.raises(AnalysisInputError, match="--inputs"):
        analyze_inputs(d)


def test_cli_analyze_inputs(linear_dump, tmp_path, capsys):
    path, _, _ = linear_dump
    out = tmp_path / "a.json"
    assert main(["analyze", str(path), "--inputs", "--layers", "1-2", "--knn-samples", "100",
                 "--no-progress", "-o", str(out)]) == 0
    assert "caching X costs more than caching K and V in 2 of 2 layers" in capsys.readouterr().out
    import json

    recs = [r for r in json.loads(out.read_text())["records"] if r["kind"] == "inputs"]
    assert [r["layer"] for r in recs] == [1, 2]
