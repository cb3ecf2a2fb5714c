"""kvinfo eval: quality of a model whose KV cache goes through a codec."""

from __future__ import annotations

import json
import re

import pytest

torch = pytest.importorskip("torch")

from kvinfo.cli import main  # noqa: E402
from kvinfo.codecs.spec import KVCodecSpec  # noqa: E402
from kvinfo.dumps.capture import load_model  # noqa: E402
from kvinfo.errors import CodecConfigError, UnknownCodecError  # noqa: E402
from kvinfo.evaluate import (  # noqa: E402
    CacheCodec,
    EvalInputError,
    EvalResult,
    QualityResult,
    _score,
    evaluate,
)
from kvinfo.results import load_results, normalize_codec  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog. " * 4

U = {"id": "uniform", "coder": {"id": "rans"}}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def test_lossless_gives_baseline_logits_tiny(tiny):
    model, tok, _ = tiny
    ids = tok(TEXT, return_tensors="pt").input_ids
    base = _score(model, ids, 40, 0, None)
    cc = CacheCodec({"id": "lossless"})
    got = _score(model, ids, 40, 0, cc)
    assert torch.equal(base, got)
    # every element of the prefix cache went through the codec:
    # 2 layers x 2 kinds x 2 heads x 40 tokens x 16 channels
    assert cc.num_elements == 2 * 2 * 2 * 40 * 16 and cc.bits_per_element > 0
    # serving case: blocks of the scored tokens are compressed as they arrive
    cc_block = CacheCodec({"id": "lossless"})
    assert torch.equal(_score(model, ids, 40, 16, None), _score(model, ids, 40, 16, cc_block))
    assert cc_block.num_elements == 2 * 2 * 2 * (ids.shape[1] - 1) * 16


def test_evaluate_orders_results_and_degrades_with_fewer_bits(tiny):
    model, tok, _ = tiny
    codecs = [{**U, "bits": 8}, {"id": "lossless"}, {**U, "bits": 1}]
    res = evaluate(model, tok, codecs, TEXT, prefix=60, max_tokens=180)
    assert [r.codec for r in res.results] == codecs
    r8, rl, r1 = res.results
    assert rl.kl_nats_per_token == 0.0 and rl.top1_agreement == 1.0
    assert rl.perplexity == res.baseline.perplexity
    assert r1.kl_nats_per_token > r8.kl_nats_per_token >= 0
    assert r8.bits_per_element < rl.bits_per_element
    assert res.num_scored_tokens == 180 - 60


def test_per_kind_codecs(tiny):
    model, tok, _ = tiny
    spec = {
        "keys": {**U, "bits": 4, "axis": "channel"},
        "values": {**U, "bits": 2, "axis": "token"},
    }
    res = evaluate(model, tok, [spec], TEXT, prefix=60, max_tokens=120)
    r = res.results[0]
    assert r.bits_per_element_keys > r.bits_per_element_values


def test_bad_codec_specs():
    with pytest.raises(UnknownCodecError):
        CacheCodec({"id": "nope"})
    with pytest.raises(CodecConfigError, match="keys"):
        CacheCodec({"keys": {"id": "lossless"}})


def test_text_shorter_than_prefix(tiny, tiny_model_dir, tmp_path, capsys):
    model, tok, _ = tiny
    with pytest.raises(EvalInputError, match="not more than the prefix"):
        evaluate(model, tok, [{"id": "lossless"}], "short", prefix=512)
    short = tmp_path / "short.txt"
    short.write_text("too short")
    rc = main(
        [
            "eval",
            "--model",
            str(tiny_model_dir),
            "--codec",
            '{"id":"lossless"}',
            "--text",
            str(short),
            "--prefix",
            "64",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "not more than the prefix" in err and "Traceback" not in err
    rc = main(["eval", "--model", str(tiny_model_dir), "--codec", "{bad json"])
    assert rc == 2 and "not valid JSON" in capsys.readouterr().err


def test_eval_cli_json_and_results(tiny_model_dir, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    out = tmp_path / "eval.json"
    argv = [
        "eval",
        "--model",
        str(tiny_model_dir),
        "--codec",
        '{"id":"lossless"}',
        "--codec",
        json.dumps({**U, "bits": 2}),
        "--text",
        str(text),
        "--prefix",
        "50",
        "--max-tokens",
        "170",
        "--block",
        "32",
        "--json",
        "-o",
        str(out),
    ]
    rc = main(argv)
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["baseline"]) >= {"perplexity"}
    assert [r["codec"]["id"] for r in res["results"]] == ["lossless", "uniform"]
    for r in res["results"]:
        assert {"bits_per_element", "perplexity", "kl_nats_per_token", "top1_agreement"} <= set(r)
        assert "kl" not in r
    doc = load_results(out, upgrade=False)  # as written
    assert doc["tool"] == "eval" and len(doc["records"]) == 3
    assert doc["schema_version"] == 2
    base, lossless, u2 = doc["records"]
    assert base["codec"] is None and base["metrics"]["quality_baseline"] is True
    assert lossless["codec"] == normalize_codec({"id": "lossless"})  # defaults filled in
    assert u2["metrics"]["baseline_perplexity"] == base["metrics"]["perplexity"]
    assert doc["settings"]["codecs"] == [lossless["codec"], u2["codec"]]
    # the recorded command reproduces every option of the run
    from kvinfo.cli import build_parser

    def opts(ns):
        return {k: v for k, v in vars(ns).items() if not k.startswith("_")}

    assert doc["command"][:2] == ["kvinfo", "eval"]
    assert opts(build_parser().parse_args(doc["command"][1:])) == opts(
        build_parser().parse_args(argv)
    )


def test_evaluate_takes_validated_specs_and_builds_the_results_document(tiny):
    model, tok, _ = tiny
    spec = KVCodecSpec({**U, "bits": 4}, require=("keys", "values"))
    res = evaluate(model, tok, [spec], TEXT, prefix=60, max_tokens=100)
    assert isinstance(res, EvalResult) and res.results[0].codec == {**U, "bits": 4}
    res.model = "tiny"
    doc = res.to_results(command=["kvinfo", "eval"])
    assert doc["source"]["model"] == "tiny" and doc["settings"]["max_tokens"] == 100
    assert [r["codec"] for r in doc["records"]] == [None, spec.config]
    bench_doc = {"records": [], "settings": {}}
    res.add_to(bench_doc)
    assert bench_doc["records"] == doc["records"]
    assert bench_doc["settings"]["eval"] == {"num_tokens": 100, "prefix": 60,
                                             "num_scored_tokens": 40, "block": 0,
                                             "model": "tiny"}


def test_evaluate_errors_name_its_parameters():
    for kwargs, msg in (({"prefix": 0}, "prefix must be at least 1, got 0"),
                        ({"max_tokens": 4}, "max_tokens must be larger than prefix (512)"),
                        ({"block": -1}, "block must be 0 (off)"),
                        ({"prefix": 2.5}, "prefix must be an integer, got 2.5")):
        with pytest.raises(EvalInputError, match=re.escape(msg)):
            evaluate(None, None, [{"id": "lossless"}], "text", **kwargs)
    with pytest.raises(CodecConfigError, match="no codec for values"):
        evaluate(None, None, [{"keys": {"id": "lossless"}}], "text")
    with pytest.raises(CodecConfigError, match="sequence of codec specs"):
        evaluate(None, None, {"id": "lossless"}, "text")
    err = EvalInputError.about("{prefix} must be at least 1, got {got}", got=0)
    renamed = err.renamed({"prefix": "--eval-prefix"})
    assert str(renamed) == "--eval-prefix must be at least 1, got 0"


def test_kl_stays_readable_as_a_deprecated_alias():
    q = QualityResult(codec={"id": "lossless"}, perplexity=2.0, nll_nats_per_token=0.69,
                      kl_nats_per_token=0.125, bits_per_element=3.0)
    with pytest.warns(DeprecationWarning, match="kl_nats_per_token"):
        assert q.kl == 0.125
    d = q.as_dict()
    assert "kl" not in d and json.loads(json.dumps(d))["kl_nats_per_token"] == 0.125
    with pytest.warns(DeprecationWarning, match="kl_nats_per_token"):
        assert d["kl"] == 0.125
    with pytest.warns(DeprecationWarning, match="kl_nats_per_token"):
        assert d.get("kl") == 0.125
    with pytest.raises(KeyError):
        d["no-such-metric"]
    base = QualityResult(codec=None, perplexity=2.0, nll_nats_per_token=0.69)
    res = EvalResult(baseline=base, results=[q], num_tokens=10, prefix=4, max_tokens=10,
                     num_scored_tokens=6)
    with pytest.warns(DeprecationWarning, match="EvalResult"):
        old = res["results"]  # the dict evaluate() returned before
    with pytest.warns(DeprecationWarning, match="kl_nats_per_token"):
        assert old[0]["kl"] == 0.125
    with pytest.warns(DeprecationWarning, match="EvalResult"):
        assert res.get("prefix") == 4 and res.get("nope", 7) == 7
    with pytest.warns(DeprecationWarning):
        res["model"] = "m"
    assert res.model == "m" and res.as_dict()["model"] == "m"


# -- long context (evaluate_context) and the cache argument ---------------------------------
def test_evaluate_context_segments_cis_and_lossless(tiny):
    import warnings

    from kvinfo.evaluate import bootstrap_ci, evaluate_context

    model, tok, _ = tiny
    text = TEXT * 6  # 1080 characters: 8 segments of 128 tokens
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated cache argument (FutureWarning) either
        res = evaluate_context(model, tok, [{"id": "lossless"}, {**U, "bits": 1}], text,
                               context=128, min_scored_tokens=100, chunk=32)
    assert res.num_segments == 2 and res.prefix == 64  # ceil(100 / 64) segments
    assert res.num_scored_tokens == 2 * 64
    lossless, one_bit = res.results
    assert lossless.perplexity == res.baseline.perplexity and lossless.kl_nats_per_token == 0
    assert lossless.perplexity_increase_ci == (0.0, 0.0)
    lo, hi = one_bit.kl_ci
    assert 0 < lo <= one_bit.kl_nats_per_token <= hi
    lo, hi = res.baseline.perplexity_ci
    assert lo <= res.baseline.perplexity <= hi
    # the chunked lockstep scoring equals one segment scored by the prefix engine
    one = evaluate(model, tok, [{**U, "bits": 1}], text, prefix=64, max_tokens=128)
    seg0 = one_bit.segments
    assert seg0.nll_sum[0] / 64 == pytest.approx(one.results[0].nll_nats_per_token, rel=1e-9)
    doc = res.to_results()
    assert {r["metrics"]["context"] for r in doc["records"]} == {128}
    assert len(doc["settings"]["segments"]["codecs"]) == 2
    # the wall time split into model forwards, codecs and scoring (measured, all spent)
    assert set(res.timing) == {"model_s", "codec_s", "scoring_s"}
    assert all(v > 0 for v in res.timing.values()) and doc["settings"]["timing"] == res.timing
    assert sum(res.timing.values()) <= res.seconds
    assert bootstrap_ci(lambda i: 1.0, 1) != bootstrap_ci(lambda i: 1.0, 1)  # nan: one segment


def test_context_longer_than_the_model_is_refused(tiny, tiny_model_dir, capsys):
    from kvinfo.evaluate import evaluate_context

    model, tok, _ = tiny
    with pytest.raises(EvalInputError, match="longer than the model's maximum of 512"):
        evaluate_context(model, tok, [{"id": "lossless"}], TEXT, context=1024)
    with pytest.raises(CodecConfigError, match="rematerializes"):  # model-aware: not here
        evaluate_context(model, tok, [{"id": "xquant", "bits": 4}], TEXT, context=128)
    with pytest.raises(EvalInputError, match="fewer than one segment"):
        evaluate_context(model, tok, [{"id": "lossless"}], "short", context=256)
    rc = main(["eval", "--model", str(tiny_model_dir), "--codec", '{"id":"lossless"}',
               "--context", "4096"])
    err = capsys.readouterr().err
    assert rc == 2 and "--context of 4096 tokens is longer than the model's maximum" in err


def test_eval_cli_context_and_needle(tiny_model_dir, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(TEXT * 4)
    out = tmp_path / "ctx.json"
    rc = main(["eval", "--model", str(tiny_model_dir), "--codec", '{"id":"lossless"}',
               "--text", str(text), "--context", "128", "--min-scored-tokens", "100",
               "-o", str(out)])
    shown = capsys.readouterr().out
    assert rc == 0 and "95 % bootstrap CIs" in shown and "context 128" in shown
    doc = load_results(out)
    assert doc["settings"]["task"] == "perplexity" and doc["settings"]["num_segments"] == 2
    rc = main(["eval", "--task", "needle", "--model", str(tiny_model_dir), "--codec",
               '{"id":"lossless"}', "--text", str(text), "--context", "150", "--depths",
               "0.5", "--trials", "1", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["task"] == "needle" and res["lengths"] == [150]
    assert res["results"][0]["by_length"]["150"]["answer_logprob_change_nats"] == 0.0
    rc = main(["eval", "--task", "needle", "--model", str(tiny_model_dir), "--codec",
               '{"id":"lossless"}', "--depths", "2"])
    assert rc == 2 and "--depths must be fractions" in capsys.readouterr().err
