"""kvinfo bench: the engine (kvinfo.bench) and the command, on small synthetic dumps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kvinfo.bench import (
    PRESETS,
    CodecSpec,
    aggregate_codec_metrics,
    bench_dump,
    codec_family,
    codec_label,
    preset_codecs,
    symbol_entropy,
)
from kvinfo.cli import main
from kvinfo.errors import AnalysisInputError, CodecConfigError, UnknownCodecError
from kvinfo.results import load_results, validate_results

U4 = {"id": "uniform", "bits": 4, "axis": "channel", "coder": {"id": "rans"}}
STATIC_CODERS = [
    {"id": "rans"},
    {"id": "rans", "per_channel": True},
    {"id": "huffman"},
    {"id": "constriction-ans"},
    {"id": "constriction-range"},
]
CODECS = [
    U4,
    {"id": "uniform", "bits": 2, "axis": "token", "coder": {"id": "huffman"}},
    {"id": "ecsq", "step": 0.3, "step_mode": "relative", "coder": {"id": "rans"}},
    {"id": "turbo", "bits": 3, "coder": {"id": "rans"}},
    {"id": "lossless", "coder": {"id": "rans"}},
    {"keys": U4, "values": {"id": "uniform", "bits": 4, "axis": "token"}},
] + [{"id": "ecsq", "step": 0.5, "step_mode": "relative", "coder": c} for c in STATIC_CODERS[1:]]


@pytest.fixture(scope="module")
def doc(synthetic_dump):
    return bench_dump(synthetic_dump, CODECS, knn_samples=200, max_queries=32, use_gpu=False)


def _codec_records(doc, scope):
    return [r for r in doc["records"] if r["scope"] == scope and r["codec"] is not None]


def naive_entropy(symbols) -> float:
    """Slow reference: plug-in entropy in bits per symbol, by counting with a dict."""
    counts: dict = {}
    for s in np.asarray(symbols).ravel().tolist():
        counts[s] = counts.get(s, 0) + 1
    n = sum(counts.values())
    return -sum(c / n * math.log2(c / n) for c in counts.values())


# -- the document ---------------------------------------------------------------------------


def test_results_validate_and_are_strict_json(doc):
    validate_results(doc)
    text = json.dumps(doc, allow_nan=False)
    validate_results(json.loads(text))
    assert doc["tool"] == "bench"
    assert doc["settings"]["gpu"]["available"] is False
    assert doc["settings"]["gpu"]["reason"]


BENCH_RECORD_SCHEMA = {
    "type": "object",
    "required": ["scope", "layer", "kind", "head", "codec", "metrics"],
    "properties": {
        "codec": {"type": "object", "required": ["id"]},
        "metrics": {
            "type": "object",
            "required": [
                "bits_per_element", "symbol_bits_per_element", "side_bits_per_element",
                "mse_per_element", "snr_db", "rd_gaussian_bits_per_element",
                "slb_estimate_bits_per_element", "own_symbols_entropy_bits_per_element",
                "gap_to_rd_gaussian_bits_per_element", "gap_to_rd_gaussian_pct",
                "gap_to_slb_estimate_bits_per_element", "gap_to_slb_estimate_pct",
                "gap_to_own_symbols_entropy_bits_per_element", "encode_mbytes_per_s",
                "decode_mbytes_per_s", "coder_decode_msymbols_per_s",
            ],
            "properties": {
                "bits_per_element": {"type": "number", "minimum": 0},
                "side_bits_per_element": {"type": "number", "minimum": 0},
                "mse_per_element": {"type": "number", "minimum": 0},
                "encode_mbytes_per_s": {"type": ["number", "null"], "exclusiveMinimum": 0},
                "decode_mbytes_per_s": {"type": ["number", "null"], "exclusiveMinimum": 0},
            },
        },
    },
}


def test_codec_records_follow_the_documented_metric_names(doc):
    jsonschema = pytest.importorskip("jsonschema")
    recs = _codec_records(doc, "slab") + _codec_records(doc, "overall")
    assert recs
    for r in recs:
        jsonschema.validate(r, BENCH_RECORD_SCHEMA)


def test_every_scope_for_every_codec(doc):
    n_codecs = len(CODECS)
    # synthetic dump: 2 layers x 2 kv heads x (keys, values)
    assert len(_codec_records(doc, "slab")) == n_codecs * 8
    assert len(_codec_records(doc, "layer")) == n_codecs * 4
    assert len(_codec_records(doc, "kind")) == n_codecs * 2
    assert len(_codec_records(doc, "overall")) == n_codecs
    ref = [r for r in doc["records"] if r["codec"] is None]
    assert {r["scope"] for r in ref} == {"slab", "kind"}
    hist = [r for r in ref if r["scope"] == "kind"]
    for r in hist:
        m = r["metrics"]
        counts = m["pervector_histogram_counts"]
        assert sum(counts) == 256
        assert len(m["pervector_histogram_bin_edges_bits_per_element"]) == len(counts) + 1
        assert m["pervector_top_tokens"]


def test_rates_add_up_and_aggregate_by_elements(doc):
    for r in _codec_records(doc, "slab") + _codec_records(doc, "overall"):
        m = r["metrics"]
        assert m["symbol_bits_per_element"] + m["side_bits_per_element"] == pytest.approx(
            m["bits_per_element"]
        )
        assert m["bits_per_element"] == pytest.approx(m["total_bits"] / m["num_elements"])
    slabs = [r for r in _codec_records(doc, "slab") if r["codec"]["id"] == "turbo"]
    overall = next(r for r in _codec_records(doc, "overall") if r["codec"]["id"] == "turbo")
    assert overall["metrics"]["total_bits"] == sum(r["metrics"]["total_bits"] for r in slabs)
    mean_mse = np.mean([r["metrics"]["mse_per_element"] for r in slabs])
    assert overall["metrics"]["mse_per_element"] == pytest.approx(mean_mse)


def test_bounds_are_the_analysis_functions_at_the_achieved_distortion(doc, synthetic_dump):
    from kvinfo.analysis import rd_gaussian
    from kvinfo.dumps import open_dump

    r = next(
        r for r in _codec_records(doc, "slab")
        if r["codec"]["id"] == "ecsq" and r["layer"] == 1 and r["kind"] == "values"
        and r["head"] == 0
    )
    m = r["metrics"]
    with open_dump(synthetic_dump) as d:
        x = d.slab("values", 1, 0).astype(np.float64)
    # the covariance of the analysis (ddof 1), computed once and shared with the bench
    cov = np.cov(x, rowvar=False, ddof=1)
    assert m["rd_gaussian_bits_per_element"] == pytest.approx(
        rd_gaussian(cov, m["mse_per_element"]), rel=1e-9
    )
    snr = 10 * math.log10(x.var(axis=0, ddof=1).mean() / m["mse_per_element"])
    assert m["snr_db"] == pytest.approx(snr)
    for rec in _codec_records(doc, "slab"):
        mm = rec["metrics"]
        if mm["slb_estimate_bits_per_element"] is not None:
            assert mm["slb_estimate_bits_per_element"] <= mm["rd_gaussian_bits_per_element"] + 1e-9
            assert mm["gap_to_slb_estimate_bits_per_element"] == pytest.approx(
                mm["bits_per_element"] - mm["slb_estimate_bits_per_element"]
            )


def test_lossless_codec_is_exact_with_no_lossy_bounds(doc):
    for r in _codec_records(doc, "slab"):
        if r["codec"]["id"] != "lossless":
            continue
        m = r["metrics"]
        assert m["mse_per_element"] == 0.0
        assert m["max_abs_error"] == 0.0
        assert m["rd_gaussian_bits_per_element"] is None
        assert m["snr_db"] is None
        assert m["gap_to_own_symbols_entropy_bits_per_element"] >= 0


@pytest.mark.parametrize("scope", ["slab", "layer", "kind", "overall"])
def test_order0_coders_never_beat_the_entropy_of_their_own_symbols(doc, scope):
    checked = 0
    for r in _codec_records(doc, scope):
        if r["codec"]["id"] == "per-kind":
            continue
        coder = {k: v for k, v in r["codec"]["coder"].items()}
        if not any(all(coder.get(k) == v for k, v in c.items()) for c in STATIC_CODERS):
            continue
        m = r["metrics"]
        assert m["own_symbols_entropy_is_bound"] is True
        assert m["coder_overhead_bits_per_element"] >= 0, r["codec"]
        assert m["gap_to_own_symbols_entropy_bits_per_element"] >= 0, r["codec"]
        assert m["gap_to_own_symbols_entropy_bits_per_element"] >= (
            m["coder_overhead_bits_per_element"] - 1e-12
        )
        checked += 1
    assert checked >= len(STATIC_CODERS)


def test_attention_errors_for_keys_and_values(doc):
    for r in _codec_records(doc, "slab"):
        m = r["metrics"]
        if r["kind"] == "keys":
            assert 0 <= m["attention_kl_nats"]
            assert 0 <= m["attention_top1_agreement"] <= 1
            assert "attention_output_relative_error" not in m
        else:
            assert m["attention_output_relative_error"] >= 0
        if r["codec"]["id"] == "lossless":
            assert m.get("attention_kl_nats", 0.0) == 0.0
            assert m.get("attention_output_relative_error", 0.0) == 0.0
    overall = _codec_records(doc, "overall")[0]["metrics"]
    assert overall["attention_kl_nats"] is not None
    assert overall["attention_output_relative_error"] is not None


def test_more_bits_less_distortion(doc):
    k = {
        json.dumps(r["codec"], sort_keys=True): r["metrics"] for r in _codec_records(doc, "overall")
    }
    u4 = k[json.dumps(CodecSpec(U4).config, sort_keys=True)]
    u2 = next(m for c, m in k.items() if '"bits": 2' in c and '"uniform"' in c)
    assert u4["mse_per_element"] < u2["mse_per_element"]
    # the coded symbols (u2 groups per token, so its side information differs in kind;
    # on this small dump its per-token scales can outweigh the payload difference)
    assert u4["symbol_bits_per_element"] > u2["symbol_bits_per_element"]


# -- pieces -----------------------------------------------------------------------------------


def test_symbol_entropy_matches_the_naive_reference():
    rng = np.random.default_rng(3)
    for shape, hi in (((300, 8), 5), ((50, 3, 16), 200), ((1000,), 2)):
        s = rng.integers(0, hi, size=shape).astype(np.uint16)
        s[..., 0] = 0  # a constant channel
        pooled, per = symbol_entropy(s)
        assert pooled == pytest.approx(naive_entropy(s), abs=1e-12)
        if s.ndim >= 2:
            cols = s.reshape(-1, s.shape[-1])
            ref = np.mean([naive_entropy(cols[:, j]) for j in range(cols.shape[1])])
            assert per == pytest.approx(ref, abs=1e-12)
            assert per <= pooled + 1e-12


def test_aggregate_uses_only_slabs_that_have_a_metric():
    a = {"num_elements": 10, "total_bits": 40, "bits_per_element": 4.0,
         "attention_kl_nats": 0.2, "mse_per_element": 1.0}
    b = {"num_elements": 30, "total_bits": 60, "bits_per_element": 2.0,
         "attention_output_relative_error": 0.1, "mse_per_element": 3.0}
    out = aggregate_codec_metrics([a, b])
    assert out["bits_per_element"] == pytest.approx(100 / 40)
    assert out["mse_per_element"] == pytest.approx((10 * 1 + 30 * 3) / 40)
    assert out["attention_kl_nats"] == 0.2
    assert out["attention_output_relative_error"] == 0.1


def test_presets_build_valid_codecs():
    assert set(PRESETS) == {"standard", "coders"}
    std = preset_codecs("standard")
    assert len(std) == 15
    ids = {c["id"] for c in std}
    assert ids == {"uniform", "ecsq", "turbo"}
    assert all(c["coder"]["id"] == "rans" for c in std)
    coders = preset_codecs("coders")
    assert {c["coder"]["id"] for c in coders} >= {
        "huffman", "rans", "arith", "constriction-ans", "constriction-range"
    }
    for c in std + coders:
        spec = CodecSpec(c)
        assert codec_label(spec.config)
        assert codec_family(spec.config)
    with pytest.raises(CodecConfigError, match="unknown preset 'nope'"):
        preset_codecs("nope")


def test_bad_codec_specs_are_refused():
    with pytest.raises(UnknownCodecError):
        CodecSpec({"id": "no-such-codec"})
    with pytest.raises(CodecConfigError, match="entropy coder of integer symbols"):
        CodecSpec({"id": "rans"})
    with pytest.raises(CodecConfigError, match="bits must be an integer"):
        CodecSpec({"id": "uniform", "bits": 99})
    with pytest.raises(CodecConfigError, match="codec config with an 'id'"):
        CodecSpec({"keys": U4, "queries": U4})


def test_attention_required_without_queries_is_a_clear_error(tmp_path):
    from kvinfo.dumps import write_synthetic_dump

    p = write_synthetic_dump(tmp_path / "noq.h5", num_layers=1, num_tokens=64, queries=False)
    with pytest.raises(AnalysisInputError, match="need the queries.*has none"):
        bench_dump(p, [U4], attention=True, knn_samples=50, use_gpu=False)
    doc = bench_dump(p, [U4], knn_samples=50, use_gpu=False)  # auto: skipped quietly
    assert doc["settings"]["attention"] is False
    m = _codec_records(doc, "slab")[0]["metrics"]
    assert "attention_kl_nats" not in m


# -- the command ----------------------------------------------------------------------------


def test_command_writes_results_and_prints_a_table(synthetic_dump, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main([
        "bench", str(synthetic_dump), "--codec", json.dumps(U4), "--layers", "1",
        "--kinds", "keys", "--knn-samples", "100", "--no-progress", "--no-gpu", "-o", str(out),
    ])
    assert rc == 0
    doc = load_results(out)
    assert doc["command"][:2] == ["kvinfo", "bench"]
    assert {r["layer"] for r in doc["records"] if r["scope"] == "slab"} == {1}
    assert {r["kind"] for r in doc["records"] if r["kind"]} == {"keys"}
    text = capsys.readouterr().out
    assert "uniform 4b/channel +rans" in text
    assert "CPU only" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--codec", "{not json"], "not valid JSON"),
        (["--codec", '{"id": "rans"}'], "entropy coder of integer symbols"),
        (["--codec", '{"id": "uniform", "bits": 0}'], "bits must be an integer in 1..8"),
        (["--preset", "standard", "--layers", "7"], "out of range"),
        (["--codec", json.dumps(U4), "--kinds", "keys_pre_rope"], "not in this dump"),
    ],
)
def test_command_errors_are_one_clear_line(synthetic_dump, argv, message, capsys):
    rc = main(["bench", str(synthetic_dump), "--no-progress", *argv])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kvinfo bench: error:")
    assert message in err
    assert "\n" not in err


def test_command_attention_flag_without_queries(tmp_path, capsys):
    from kvinfo.dumps import write_synthetic_dump

    p = write_synthetic_dump(tmp_path / "noq.h5", num_layers=1, num_tokens=64, queries=False)
    rc = main(["bench", str(p), "--codec", json.dumps(U4), "--attention", "--no-progress"])
    assert rc == 2
    assert "capture with --queries" in capsys.readouterr().err


def test_command_eval_adds_quality_records(synthetic_dump, tiny_model_dir, tmp_path):
    out = tmp_path / "bq.json"
    u8 = {"id": "uniform", "bits": 8, "axis": "token"}
    rc = main([
        "bench", str(synthetic_dump), "--codec", json.dumps(U4), "--codec", json.dumps(u8),
        "--layers", "0", "--knn-samples", "100", "--no-progress", "--no-gpu",
        "--eval", "--model", str(tiny_model_dir), "--eval-prefix", "40",
        "--eval-max-tokens", "80", "-o", str(out),
    ])
    assert rc == 0
    doc = load_results(out)
    runs = [r for r in doc["records"] if r["scope"] == "run"]
    assert len(runs) == 3
    base = next(r for r in runs if r["codec"] is None)["metrics"]
    q = [r for r in runs if r["codec"] is not None]
    assert [r["codec"]["id"] for r in q] == ["uniform", "uniform"]
    for r in q:
        m = r["metrics"]
        assert m["baseline_perplexity"] == pytest.approx(base["perplexity"])
        assert {"perplexity", "perplexity_increase_pct", "kl_nats_per_token", "top1_agreement",
                "bits_per_element"} <= set(m)
    assert doc["settings"]["eval"]["prefix"] == 40


# -- one reference, small data, the rule for nulls ------------------------------------------


def test_slb_never_exceeds_the_gaussian_rd(synthetic_dump, monkeypatch):
    """The SLB's entropy is clipped at the Gaussian entropy of the same covariance (ddof 1)
    that the R(D) uses: with a kNN estimate above it, SLB <= R_G must still hold. (It did not
    when bench took ddof 0 for the R(D) and ddof 1 for the clip.)"""
    import kvinfo.analysis._slab as slab_mod

    real = slab_mod.entropy_knn_corrected

    def too_high(*args, **kwargs):
        est = real(*args, **kwargs)
        return {**est, "estimate": est["estimate"] + 50.0}

    monkeypatch.setattr(slab_mod, "entropy_knn_corrected", too_high)
    u8 = {"id": "uniform", "bits": 8, "axis": "token", "coder": {"id": "rans"}}
    doc = bench_dump(synthetic_dump, [u8, U4], layers=[0], knn_samples=100, use_gpu=False,
                     attention=False)
    checked = 0
    for r in _codec_records(doc, "slab") + _codec_records(doc, "overall"):
        m = r["metrics"]
        assert m["slb_estimate_bits_per_element"] <= m["rd_gaussian_bits_per_element"] + 1e-12
        checked += 1
    assert checked == 2 * 4 + 2


def test_bench_on_a_short_dump_gives_rates_and_null_bounds(tmp_path, capsys):
    """Issue 12 item 7: 10 tokens of head_dim 16: rates, distortions, own-symbol entropies and
    attention errors are measured; the bounds are null with the reason."""
    from kvinfo.dumps import write_synthetic_dump

    p = write_synthetic_dump(tmp_path / "short.h5", num_layers=1, num_tokens=10, head_dim=16,
                             num_sequences=1)
    out = tmp_path / "short.json"
    rc = main(["bench", str(p), "--codec", json.dumps(U4), "--no-progress", "--no-gpu",
               "--knn-samples", "50", "-o", str(out)])
    assert rc == 0
    assert "n<=d" in capsys.readouterr().out
    doc = load_results(out)
    for r in _codec_records(doc, "slab") + _codec_records(doc, "overall"):
        m = r["metrics"]
        assert m["bits_per_element"] > 0 and m["mse_per_element"] > 0
        assert m["snr_db"] is not None
        assert m["own_symbols_entropy_bits_per_element"] > 0
        assert m["rd_gaussian_bits_per_element"] is None
        assert m["gap_to_slb_estimate_bits_per_element"] is None
        assert "more vectors than dimensions" in m["null_reasons"]["rd_gaussian_bits_per_element"]
        if r["kind"] == "keys":
            assert m["attention_kl_nats"] >= 0
    overall = _codec_records(doc, "overall")[0]["metrics"]
    assert overall["counts"]["rd_gaussian_bits_per_element"] == [0, 4]
    assert overall["counts"]["bits_per_element"] == [4, 4]


def test_aggregate_uses_the_slabs_where_a_value_is_defined():
    """The rule for nulls: a bound null in one slab does not null the aggregate; counts say
    how many of how many; the gap is the aggregated rate minus bound over the same slabs."""
    a = {"num_elements": 10, "bits_per_element": 4.0, "rd_gaussian_bits_per_element": 3.0,
         "gap_to_rd_gaussian_bits_per_element": 1.0, "encode_seconds": 1.0,
         "input_bytes": 2e6}
    b = {"num_elements": 30, "bits_per_element": 2.0, "rd_gaussian_bits_per_element": None,
         "gap_to_rd_gaussian_bits_per_element": None, "encode_seconds": None,
         "input_bytes": 6e6}
    out = aggregate_codec_metrics([a, b])
    assert out["bits_per_element"] == pytest.approx(100 / 40)
    assert out["rd_gaussian_bits_per_element"] == 3.0
    assert out["gap_to_rd_gaussian_bits_per_element"] == 1.0
    assert out["gap_to_rd_gaussian_pct"] == pytest.approx(100 / 3)
    assert out["counts"]["rd_gaussian_bits_per_element"] == [1, 2]
    assert out["counts"]["bits_per_element"] == [2, 2]
    assert out["encode_mbytes_per_s"] == pytest.approx(2.0)  # the timed slab only
    none = aggregate_codec_metrics([b])
    assert none["rd_gaussian_bits_per_element"] is None
    assert none["counts"]["rd_gaussian_bits_per_element"] == [0, 1]


def test_bench_selection_errors_name_the_parameter(synthetic_dump):
    from kvinfo.dumps import Selection
    from kvinfo.errors import SelectionError

    for kwargs, param in (({"layers": [7]}, "layers"), ({"kinds": ["nope"]}, "kinds"),
                          ({"heads": [5]}, "heads"), ({"sequences": [50]}, "sequences"),
                          ({"selection": Selection(kinds="keys_pre_rope")}, "kinds")):
        with pytest.raises(SelectionError, match=f"^{param}: ") as info:
            bench_dump(synthetic_dump, [U4], use_gpu=False, **kwargs)
        assert info.value.parameter == param


def test_report_draws_labels_without_loading_bench():
    import subprocess
    import sys

    code = "import sys, kvinfo.report; print('kvinfo.bench' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_the_reference_shares_the_analysis_covariance(synthetic_dump):
    """One covariance and eigendecomposition per slab: the bench reference holds the very
    arrays that slab_analysis computed (ddof 1), and its SNR reference is analyze's."""
    from kvinfo.analysis import slab_analysis
    from kvinfo.bench import SlabReference
    from kvinfo.dumps import open_dump

    with open_dump(synthetic_dump) as d:
        res = slab_analysis(d.slab("keys", 0, 1), snr_db=[20.0], knn_samples=100)
    ref = SlabReference(res)
    assert ref.eigenvalues is res.gaussian.eigenvalues
    assert ref.variance_per_element == res.metrics["variance_per_element"]
    x = res.x64
    np.testing.assert_allclose(res.gaussian.covariance, np.cov(x, rowvar=False, ddof=1))
    assert ref.h_slb <= res.gaussian.h_gaussian_bits_per_element


def test_command_sequences_select_the_tokens_of_some_prompts(synthetic_dump, tmp_path):
    from kvinfo.dumps import open_dump

    with open_dump(synthetic_dump) as d:
        n1 = int(d.sequence_offsets[2] - d.sequence_offsets[1])
        dim = d.head_dim
    out = tmp_path / "seq.json"
    assert main(["bench", str(synthetic_dump), "--codec", json.dumps(U4), "--layers", "0",
                 "--kinds", "values", "--sequences", "1", "--knn-samples", "50",
                 "--no-progress", "--no-gpu", "-o", str(out)]) == 0
    doc = load_results(out)
    assert doc["settings"]["sequences"] == [1] and doc["settings"]["num_tokens"] == n1
    for r in _codec_records(doc, "slab"):
        assert r["metrics"]["num_elements"] == n1 * dim
        assert r["metrics"]["attention_output_relative_error"] >= 0
