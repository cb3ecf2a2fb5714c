"""`kvinfo analyze` end to end, in-process, on synthetic dumps."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from kvinfo.cli import main
from kvinfo.commands.analyze import aggregate_metrics, parse_index_list, parse_snr_grid
from kvinfo.dumps import write_synthetic_dump
from kvinfo.errors import AnalysisInputError
from kvinfo.results import load_results

GRID_METRICS = (
    "rd_gaussian_bits_per_element",
    "rd_gaussian_independent_bits_per_element",
    "transform_coding_gain_bits_per_element",
    "slb_estimate_bits_per_element",
    "rd_temporal_innovation_bits_per_element",
    "temporal_prediction_gain_bits_per_element",
    "mse_per_element",
)


def test_analyze_writes_documented_results(synthetic_dump_bf16, tmp_path, capsys):
    out = tmp_path / "analysis.json"
    rc = main(["analyze", str(synthetic_dump_bf16), "-o", str(out), "--snr-db", "0:30:10"])
    assert rc == 0
    doc = load_results(out)
    assert doc["tool"] == "analyze"
    assert doc["settings"]["snr_db"] == [0.0, 10.0, 20.0, 30.0]
    assert doc["source"]["dtype"] == "bfloat16"
    scopes = [r["scope"] for r in doc["records"]]
    # 2 layers x 2 kinds x 2 kv heads; 4 (layer, kind); 2 kinds; 1 overall
    assert [scopes.count(s) for s in ("slab", "layer", "kind", "overall")] == [8, 4, 2, 1]
    slab = next(r for r in doc["records"] if r["scope"] == "slab")
    assert (slab["layer"], slab["kind"], slab["head"]) == (0, "keys", 0)
    m = slab["metrics"]
    for key in GRID_METRICS:
        assert len(m[key]) == 4, key
    for key in ("h0_pooled_bits_per_element", "h0_exponent_bits_per_element",
                "h_knn_estimate_bits_per_element", "pervector_p99_bits_per_element",
                "channel_excess_kurtosis", "pca_energy_fraction", "outlier_channels"):
        assert key in m, key
    kind = next(r for r in doc["records"] if r["scope"] == "kind" and r["kind"] == "keys")
    assert kind["layer"] is None and kind["head"] is None
    assert kind["metrics"]["num_slabs"] == 4
    # the synthetic dump has a sink first token in each sequence: it must top the keys list
    assert kind["metrics"]["pervector_top_tokens"][0]["position"] == 0
    text = capsys.readouterr().out
    assert "attention sink stands out" in text
    assert "overall" in text and "wrote" in text


def test_analyze_selection_options(synthetic_dump, tmp_path):
    out = tmp_path / "a.json"
    rc = main(["analyze", str(synthetic_dump), "-o", str(out), "--layers", "1",
               "--kinds", "values,queries", "--heads", "0", "--snr-db", "10,20",
               "--knn-samples", "100", "--seed", "3"])
    assert rc == 0
    doc = json.loads(out.read_text())
    slabs = [r for r in doc["records"] if r["scope"] == "slab"]
    assert {(r["layer"], r["kind"], r["head"]) for r in slabs} == {(1, "values", 0),
                                                                   (1, "queries", 0)}
    assert slabs[0]["metrics"]["knn_samples"] == 100


def test_analyze_is_deterministic_for_a_seed(synthetic_dump, tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"r{i}.json"
        assert main(["analyze", str(synthetic_dump), "-o", str(out), "--layers", "0",
                     "--snr-db", "20", "--knn-samples", "150"]) == 0
        outs.append([r["metrics"] for r in load_results(out)["records"]])
    assert outs[0] == outs[1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--layers", "7"], "out of range"),
        (["--layers", "a-b"], "expected integers"),
        (["--kinds", "keys_pre_rope"], "not in this dump"),
        (["--kinds", ","], "empty selection"),
        (["--snr-db", "40:0:2"], "START:STOP:STEP"),
        (["--snr-db", "x"], "START:STOP:STEP"),
        (["--knn-samples", "1"], "knn-samples"),
    ],
)
def test_analyze_bad_options(synthetic_dump, tmp_path, capsys, argv, message):
    rc = main(["analyze", str(synthetic_dump), "-o", str(tmp_path / "x.json"), *argv])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x.json").exists()


def test_analyze_too_few_tokens(tmp_path, capsys):
    p = write_synthetic_dump(tmp_path / "short.h5", num_tokens=10, head_dim=16,
                             num_sequences=1, queries=False)
    assert main(["analyze", str(p)]) == 2
    assert "more vectors than dimensions" in capsys.readouterr().err


def test_analyze_counts_nan_and_warns(tmp_path, capsys):
    p = write_synthetic_dump(tmp_path / "nan.h5", num_layers=1, num_kv_heads=1, num_heads=1,
                             queries=False)
    with h5py.File(p, "r+") as f:
        f["keys"][0, 0, 5, 3] = np.nan
    out = tmp_path / "nan.json"
    assert main(["analyze", str(p), "-o", str(out), "--snr-db", "20"]) == 0
    err = capsys.readouterr().err
    assert "layer 0 keys head 0" in err and "1 NaN/Inf values in 1 of 256 vectors" in err
    rec = next(r for r in load_results(out)["records"] if r["scope"] == "slab")
    assert rec["metrics"]["excluded_vectors"] == 1


def test_option_parsers():
    assert parse_index_list("0,2-4,2", 5, "layers") == [0, 2, 3, 4]
    assert parse_index_list(None, 3, "layers") == [0, 1, 2]
    assert parse_snr_grid("0:10:5") == [0.0, 5.0, 10.0]
    assert parse_snr_grid("0:1:0.5") == [0.0, 0.5, 1.0]
    with pytest.raises(AnalysisInputError):
        parse_index_list("3-1", 5, "layers")


def test_aggregate_metrics_means_and_nulls():
    a = {"x_bits_per_element": 1.0, "g": [1.0, None], "notes": ["n"], "nonfinite_elements": 2}
    b = {"x_bits_per_element": 3.0, "g": [3.0, None], "notes": [], "nonfinite_elements": 1}
    c = {"x_bits_per_element": None, "g": [None, None], "nonfinite_elements": 0}
    agg = aggregate_metrics([a, b, c])
    assert agg["num_slabs"] == 3
    assert agg["x_bits_per_element"] == 2.0
    assert agg["g"][0] == 2.0 and np.isnan(agg["g"][1])
    assert agg["nonfinite_elements"] == 3 and "notes" not in agg
