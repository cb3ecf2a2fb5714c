"""Rematerializing codecs through ``kvinfo eval`` (the evaluate hook)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from kvinfo.cli import main  # noqa: E402
from kvinfo.errors import EvalInputError, UnknownCodecError  # noqa: E402
from kvinfo.evaluate import eval_codec_specs, evaluate  # noqa: E402
from kvinfo.results import normalize_codec  # noqa: E402

TEXT = "The cache is a function of the tokens. " * 3


def test_tokens_kl_is_exactly_zero_and_bits_per_token_reported(tiny):
    model, tok = tiny
    res = evaluate(model, tok, [{"id": "tokens"}, {"id": "xquant", "bits": 8},
                                {"id": "uniform", "bits": 8}], TEXT, prefix=24, max_tokens=48)
    tokens, xq, kv = res.results
    assert tokens.kl_nats_per_token == 0.0 and tokens.top1_agreement == 1.0
    assert tokens.perplexity == res.baseline.perplexity
    assert 0 < tokens.bits_per_token < 8 * 24  # a few bits per token, not K/V's thousands
    assert tokens.bits_per_element_keys is None
    assert xq.kl_nats_per_token < 1e-3 and xq.extra["remat_flops_per_token"] > 0
    assert kv.bits_per_token == pytest.approx(kv.bits_per_element * 2 * 2 * 2 * 16)
    for rec in res.to_results()["records"][1:]:
        assert rec["metrics"]["bits_per_token"] > 0
    assert res.to_results()["settings"]["codecs"][0] == {"id": "tokens", "precision_bits": 24}


def test_bad_remat_specs_and_block_refused(tiny):
    model, tok = tiny
    with pytest.raises(EvalInputError, match="block"):
        evaluate(model, tok, [{"id": "xquant"}], TEXT, prefix=24, max_tokens=48, block=4)
    with pytest.raises(Exception, match="bits"):
        eval_codec_specs([{"id": "xquant", "bits": 99}])
    with pytest.raises(UnknownCodecError):
        normalize_codec({"id": "xquant-nope"})


def test_cli_eval_tokens(tiny_model_dir, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    out = tmp_path / "r.json"
    assert main(["eval", "--model", str(tiny_model_dir), "--codec", '{"id": "tokens"}',
                 "--codec", '{"id": "xquant-cl", "bits": 4}', "--text", str(text),
                 "--prefix", "20", "--max-tokens", "40", "-o", str(out), "--json"]) == 0
    doc = json.loads(out.read_text())
    m = doc["records"][1]["metrics"]
    assert m["kl_nats_per_token"] == 0 and m["bits_per_token"] > 0
    assert doc["records"][2]["codec"]["id"] == "xquant-cl"
    assert main(["eval", "--model", str(tiny_model_dir), "--codec", '{"id": "xquant", '
                 '"bits": 0}', "--text", str(text)]) == 2
    assert "bits must be" in capsys.readouterr().err
