"""`kvinfo analyze` end to end, in-process, on synthetic dumps."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from kvinfo.analysis import aggregate_slab_metrics as aggregate_metrics
from kvinfo.cli import main
from kvinfo.commands.analyze import parse_snr_grid
from kvinfo.dumps import parse_index_list, write_synthetic_dump
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
        (["--sequences", "9"], "--sequences: 9 is out of range"),
        (["--heads", "x"], "--heads: expected integers"),
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


def test_analyze_too_few_tokens_gives_partial_results(tmp_path, capsys):
    """Issue 12 item 7: a dump with fewer vectors than dimensions still gets its entropies."""
    p = write_synthetic_dump(tmp_path / "short.h5", num_tokens=10, head_dim=16,
                             num_sequences=1, queries=False)
    out = tmp_path / "short.json"
    assert main(["analyze", str(p), "-o", str(out), "--snr-db", "10,20", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "more vectors than dimensions" in captured.err
    assert captured.err.count("\n") == 1  # one line for the note shared by the 8 slabs
    assert "n<=d" in captured.out
    recs = load_results(out)["records"]
    for r in recs:
        m = r["metrics"]
        assert m["h0_pooled_bits_per_element"] > 0  # entropies of the stored values
        assert m["h0_per_channel_bits_per_element"] > 0
        assert m["rd_gaussian_bits_per_element"] == [None, None]
        assert m["slb_estimate_bits_per_element"] == [None, None]
        assert m["h_knn_estimate_bits_per_element"] is None
        assert "more vectors than dimensions" in m["null_reasons"]["rd_gaussian_bits_per_element"]
        assert "more vectors than dimensions" in m["null_reasons"]["pervector_p50_bits_per_element"]
        if r["scope"] == "slab":
            assert m["variance_per_element"] > 0  # per-channel statistics are defined
            assert len(m["channel_variance"]) == 16
        else:
            assert m["counts"]["rd_gaussian_bits_per_element"][0] == [0, 0]
            assert m["counts"]["h0_pooled_bits_per_element"][0] == m["num_slabs"]


def test_analyze_aggregates_over_the_slabs_that_define_a_value(tmp_path):
    """One head too small for a covariance (NaN rows) never nulls its layer's bounds."""
    p = write_synthetic_dump(tmp_path / "mixed.h5", num_layers=1, num_tokens=24, head_dim=16,
                             num_sequences=1, queries=False)
    with h5py.File(p, "r+") as f:
        f["keys"][0, 1, :12, 0] = np.nan  # 12 finite vectors in 16 dims for head 1
    out = tmp_path / "mixed.json"
    assert main(["analyze", str(p), "-o", str(out), "--kinds", "keys", "--snr-db", "20",
                 "--knn-samples", "20", "--no-progress"]) == 0
    recs = load_results(out)["records"]
    slabs = {r["head"]: r["metrics"] for r in recs if r["scope"] == "slab"}
    assert slabs[1]["rd_gaussian_bits_per_element"] == [None]
    assert slabs[0]["rd_gaussian_bits_per_element"][0] > 0
    layer = next(r["metrics"] for r in recs if r["scope"] == "layer")
    assert layer["rd_gaussian_bits_per_element"][0] == pytest.approx(
        slabs[0]["rd_gaussian_bits_per_element"][0]
    )
    assert layer["counts"]["rd_gaussian_bits_per_element"] == [[1], 2]
    assert layer["h0_pooled_bits_per_element"] == pytest.approx(
        (slabs[0]["h0_pooled_bits_per_element"] + slabs[1]["h0_pooled_bits_per_element"]) / 2
    )
    assert layer["counts"]["h0_pooled_bits_per_element"] == [2, 2]


def test_analyze_dump_api_and_sequence_selection(synthetic_dump):
    from kvinfo.analysis import analyze_dump
    from kvinfo.dumps import Selection, open_dump
    from kvinfo.errors import SelectionError

    with open_dump(synthetic_dump) as d:
        n0 = int(d.sequence_offsets[1])
        doc = analyze_dump(d, Selection(layers=[0], kinds="keys", heads="1", sequences=[0]),
                           snr_db=[20.0], knn_samples=100, command=["x"])
    assert doc["command"] == ["x"]
    assert doc["settings"]["sequences"] == [0]
    slab = next(r for r in doc["records"] if r["scope"] == "slab")
    assert (slab["layer"], slab["kind"], slab["head"]) == (0, "keys", 1)
    assert slab["metrics"]["num_vectors"] == n0
    for sel, param in ((Selection(layers=[5]), "layers"), (Selection(kinds="nope"), "kinds"),
                       (Selection(heads="9"), "heads"), (Selection(sequences=[99]), "sequences")):
        with pytest.raises(SelectionError, match=f"^{param}: ") as info:
            analyze_dump(synthetic_dump, sel, snr_db=[20.0])
        assert info.value.parameter == param
    with pytest.raises(AnalysisInputError, match="^knn_k must be"):
        analyze_dump(synthetic_dump, knn_k=0)


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
