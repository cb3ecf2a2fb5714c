"""The ``tokens`` codec: round trip, rate against the model's -log2 p, damage, mismatch."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from kvinfo.errors import CodecConfigError, CorruptStreamError, ModelMismatchError  # noqa: E402
from kvinfo.remat import (  # noqa: E402
    ArithmeticDecoder,
    ArithmeticEncoder,
    TokensCodec,
    get_remat_codec,
    quantize_probabilities,
)


def _model_bits(model, ids) -> float:
    """An independent measure: summed -log2 p of a batched forward (token 0: uniform)."""
    v = model.get_output_embeddings().weight.shape[0]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    nll = -logp[:-1].gather(1, torch.tensor(ids[1:])[:, None]).sum().item()
    return np.log2(v) + nll / np.log(2)


@pytest.mark.parametrize("case", ["one", "two", "random", "repeated", "extremes"])
def test_round_trip_and_rate(tiny, case):
    model, _ = tiny
    v = model.get_output_embeddings().weight.shape[0]
    rng = np.random.default_rng(hash(case) % 1000)
    ids = {"one": [5], "two": [0, v - 1], "random": rng.integers(0, v, 60).tolist(),
           "repeated": [7] * 40, "extremes": [0, v - 1] * 10}[case]
    codec = TokensCodec()
    data, stats = codec.encode_with_stats(model, ids)
    assert codec.decode_tokens(data, model).tolist() == ids
    # the coder's stated overhead: within 2 bits (+ byte padding) of the quantized ideal
    assert stats["ideal_bits"] - 1 <= stats["payload_bits"] <= stats["ideal_bits"] + 2 + 8
    # quantization: at most -log2(1 - V / 2**24) bits per token over the model's -log2 p
    bound = -np.log2(1 - v / 2**24) * len(ids) + 1e-3 * len(ids)
    assert stats["ideal_bits"] - _model_bits(model, ids) <= bound
    assert stats["ideal_bits"] - _model_bits(model, ids) >= -1e-3 * len(ids)
    assert len(data) * 8 - stats["payload_bits"] <= 17 * 8  # header + CRC


def test_rematerialized_cache_is_the_prefill(tiny):
    model, tok = tiny
    ids = tok("remat: the cache from the tokens").input_ids
    codec = get_remat_codec({"id": "tokens"})
    kv = codec.rematerialize(codec.encode(model, ids), model)
    with torch.no_grad():
        ref = model(torch.tensor([ids]), use_cache=True).past_key_values
    for (k, v), layer in zip(kv, ref.layers, strict=True):
        assert torch.equal(k, layer.keys) and torch.equal(v, layer.values)


def test_damaged_stream_and_other_model_are_refused(tiny, other_tiny):
    model, tok = tiny
    codec = TokensCodec()
    data = codec.encode(model, tok("hello there").input_ids)
    for bad in (data[:-1], data[:5], data[:9] + bytes([data[9] ^ 1]) + data[10:], b"",
                b"XX" + data[2:]):
        with pytest.raises(CorruptStreamError):
            codec.decode_tokens(bad, model)
    with pytest.raises(ModelMismatchError, match="model weights"):
        codec.decode_tokens(data, other_tiny)
    with pytest.raises(CorruptStreamError, match="precision_bits"):
        TokensCodec(precision_bits=20).decode_tokens(data, model)


def test_bad_configs_and_inputs(tiny):
    model, _ = tiny
    for cfg in ({"id": "tokens", "precision_bits": 4}, {"id": "tokens", "precision_bits": "x"},
                {"id": "tokens", "nope": 1}):
        with pytest.raises(CodecConfigError):
            get_remat_codec(cfg)
    with pytest.raises(CodecConfigError, match="vocabulary"):
        TokensCodec().encode(model, [10**6])
    with pytest.raises(CodecConfigError):
        TokensCodec().encode(model, [])


def test_coder_on_fresh_random_tables():
    """The arithmetic coder alone: random tables and symbols, exact round trip."""
    rng = np.random.default_rng(7)
    P = 24
    tables = [quantize_probabilities(rng.normal(0, 4, 50), P) for _ in range(300)]
    for f in tables:
        assert f.sum() == 1 << P and f.min() >= 1
    syms = [int(rng.choice(50, p=f / f.sum())) for f in tables]
    enc = ArithmeticEncoder()
    ideal = 0.0
    for f, s in zip(tables, syms, strict=True):
        enc.encode(int(f[:s].sum()), int(f[s]), P)
        ideal += P - np.log2(f[s])
    payload = enc.finish()
    dec = ArithmeticDecoder(payload)
    got = []
    for f in tables:
        cum = np.concatenate([[0], np.cumsum(f)])
        got.append(dec.decode(cum, P))
    assert got == syms
    assert ideal - 1 <= 8 * len(payload) <= ideal + 10
