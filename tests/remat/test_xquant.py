"""``xquant``, ``xquant-cl`` and ``xquant-latent`` on the tiny Llama."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from kvinfo.dumps.capture import InputHooks  # noqa: E402
from kvinfo.errors import CodecConfigError, CorruptStreamError, ModelMismatchError  # noqa: E402
from kvinfo.remat import ModelAdapter, get_remat_codec  # noqa: E402

TEXT = "XQuant caches X and rematerializes K and V; the residual stream is shared."


@pytest.fixture(scope="module")
def run(tiny):
    model, tok = tiny
    ids = tok(TEXT).input_ids
    hooks = InputHooks(model)
    try:
        with torch.no_grad():
            out = model(torch.tensor([ids]), use_cache=True)
        x, res = hooks.tensors()
    finally:
        hooks.remove()
    kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
    return model, ids, x, res, kv


def _rel_err(kv, ref):
    num = sum(float(((a - b) ** 2).sum()) for (a, _), (b, _) in zip(kv, ref, strict=True))
    num += sum(float(((a - b) ** 2).sum()) for (_, a), (_, b) in zip(kv, ref, strict=True))
    den = sum(float((a**2).sum() + (b**2).sum()) for a, b in ref)
    return num / den


def test_exact_inputs_rematerialize_the_cache_bit_exactly(run):
    model, ids, x, _, kv = run
    a = ModelAdapter(model)
    for i in range(a.num_layers):
        k, v = a.kv_from_inputs(i, x[i], np.arange(len(ids)))
        assert torch.equal(k, kv[i][0]) and torch.equal(v, kv[i][1])


@pytest.mark.parametrize("cid", ["xquant", "xquant-cl", "xquant-latent"])
def test_error_falls_with_bits_and_rate_is_counted(run, cid):
    model, ids, x, res, kv = run
    errs, sizes = [], []
    for bits in (3, 8):
        codec = get_remat_codec({"id": cid, "bits": bits})
        data = codec.encode(model, ids, inputs=x, residual=res)
        back = codec.rematerialize(data, model)
        assert [k.shape for k, _ in back] == [k.shape for k, _ in kv]
        assert all(k.dtype == kv[0][0].dtype for k, _ in back)
        errs.append(_rel_err(back, kv))
        sizes.append(len(data))
    assert errs[1] < 1e-3 and errs[1] < errs[0] / 20
    assert sizes[0] < sizes[1]


def test_closed_loop_errors_do_not_accumulate(run):
    """Each layer's residual error is that of one quantization, not a sum over layers."""
    model, ids, _, res, _ = run
    codec = get_remat_codec({"id": "xquant-cl", "bits": 4})
    data = codec.encode(model, ids, residual=res)
    s = codec._open(data, model)[2]
    prev = np.zeros(res[0].shape)
    for i, p in enumerate(s):
        prev = prev + codec.x.decode(p, res[0].shape).astype(np.float64)
        r = res[i].numpy().astype(np.float64)
        d = r - (0 if i == 0 else prev - codec.x.decode(p, res[0].shape))
        # the error of r^_i equals the quantization error of d_i alone
        q = codec.x.decode(codec.x.encode(d.astype(np.float32)), d.shape).astype(np.float64)
        np.testing.assert_allclose(prev - r, q - d, atol=1e-5 * np.abs(r).max())


def test_latent_rank(run):
    model, ids, x, _, kv = run
    full = get_remat_codec({"id": "xquant-latent", "bits": 8})
    low = get_remat_codec({"id": "xquant-latent", "bits": 8, "rank": 8})
    e_full = _rel_err(full.rematerialize(full.encode(model, ids, inputs=x), model), kv)
    e_low = _rel_err(low.rematerialize(low.encode(model, ids, inputs=x), model), kv)
    assert e_full < 1e-3 < e_low
    with pytest.raises(CodecConfigError, match="rank"):
        get_remat_codec({"id": "xquant-latent", "rank": 10**4}).encode(model, ids, inputs=x)


def test_damage_mismatch_and_missing_inputs(run, other_tiny):
    model, ids, x, res, _ = run
    codec = get_remat_codec({"id": "xquant", "bits": 4})
    data = codec.encode(model, ids, inputs=x)
    for bad in (data[:-3], data[:20] + bytes([data[20] ^ 0x10]) + data[21:], data + b"\0"):
        with pytest.raises(CorruptStreamError):
            codec.rematerialize(bad, model)
    with pytest.raises(CorruptStreamError, match="made by codec"):
        get_remat_codec({"id": "xquant-cl"}).rematerialize(data, model)
    with pytest.raises(ModelMismatchError):
        codec.rematerialize(data, other_tiny)
    with pytest.raises(CodecConfigError, match="--inputs"):
        codec.encode(model, ids)
    with pytest.raises(CodecConfigError, match="shape"):
        codec.encode(model, ids[:-1], inputs=x)
    for cfg in ({"id": "xquant", "bits": 0}, {"id": "xquant", "bits": 9},
                {"id": "xquant", "group_size": 0}, {"id": "xquant", "coder": "rans"}):
        with pytest.raises(CodecConfigError):
            get_remat_codec(cfg)


def test_flops_accounting_from_shapes(tiny):
    from kvinfo.remat import flops_per_token, model_shapes

    s = model_shapes(tiny[0])
    assert (s.hidden_size, s.num_kv_heads, s.head_dim) == (64, 2, 16)
    h, w, L = 64, 64, 2
    assert flops_per_token({"id": "uniform", "bits": 4}, s, 10) == 0
    assert flops_per_token({"id": "xquant"}, s, 10) == L * (2 * h + 2 * h * w + 3 * 32)
    assert flops_per_token({"id": "xquant-cl"}, s, 10) > flops_per_token({"id": "xquant"}, s, 10)
    assert (flops_per_token({"id": "xquant-latent", "rank": 8}, s, 10)
            < flops_per_token({"id": "xquant-latent"}, s, 10))
    # tokens: a forward with the LM head per token plus a prefill, growing with the context
    t10, t100 = (flops_per_token({"id": "tokens"}, s, n) for n in (10, 100))
    assert t100 > t10 > 2 * 2 * h * s.vocab_size
    with pytest.raises(CodecConfigError):
        flops_per_token({"id": "tokens"}, s, 0)
