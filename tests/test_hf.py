"""kvinfo.hf.CompressedCache: a transformers cache storing K/V through kvinfo codecs."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from kvinfo.codecs.spec import KVCodecSpec  # noqa: E402
from kvinfo.dumps.capture import load_model  # noqa: E402
from kvinfo.errors import CacheInputError, CodecConfigError  # noqa: E402
from kvinfo.hf import CompressedCache, cache_kwargs  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog. " * 3
U2 = {"id": "uniform", "bits": 2, "coder": {"id": "rans"}}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tok, _ = load_model(str(tiny_model_dir))
    return model, tok


def _gen(model, ids, cache=None, n=24, **kw):
    extra = cache_kwargs(model, cache) if cache is not None else {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated cache argument, on any version
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                              do_sample=False, pad_token_id=0, **extra, **kw)


@pytest.mark.parametrize("prefill", ["compress", "keep"])
def test_lossless_generation_is_token_identical(tiny, prefill):
    model, tok = tiny
    ids = tok(TEXT, return_tensors="pt").input_ids
    cache = CompressedCache({"id": "lossless"}, window=8, block=16, prefill=prefill)
    assert torch.equal(_gen(model, ids, cache, n=40), _gen(model, ids, n=40))
    n = ids.shape[1] + 40 - 1  # the last token is generated, never cached
    assert cache.get_seq_length() == n
    layer = cache.layers[0]
    assert 8 <= layer.keys.shape[-2] < 8 + 16  # the window between flushes
    if prefill == "compress":
        assert cache.compressed_tokens == n - layer.keys.shape[-2]
    else:  # the prefill stays plain; the generated tokens are compressed in blocks of 16
        assert cache.compressed_tokens % 16 == 0 and cache.compressed_tokens > 0


def test_lossy_cache_bytes_shapes_and_dtype(tiny):
    model, tok = tiny
    ids = tok(TEXT, return_tensors="pt").input_ids
    cache = CompressedCache(U2, window=8, block=16, config=model.config)
    assert len(cache) == 2  # layers created from the config
    with torch.no_grad():
        model(ids, use_cache=True, **cache_kwargs(model, cache))
        k, v = cache.layers[1].update(torch.zeros(1, 2, 1, 16), torch.zeros(1, 2, 1, 16), 1)
    assert k.shape == v.shape == (1, 2, ids.shape[1] + 1, 16) and k.dtype == torch.float32
    streams = sum(len(s) for layer in cache.layers for b in layer._blocks
                  for rows in b.streams.values() for s in rows)
    window = sum(2 * layer.keys.numel() * 4 for layer in cache.layers)
    assert cache.stream_bytes == streams and cache.bytes_held == streams + window
    rep = cache.memory_report("bfloat16")
    # layer 1 got one more token than layer 0; 2 kinds x 2 heads x 16 channels x 2 bytes
    assert rep["plain_bytes"] == 2 * 2 * 16 * 2 * (2 * ids.shape[1] + 1)
    assert rep["ratio"] < 0.5 and rep["peak_bytes"] > rep["bytes_held"]
    assert cache.plain_bytes("float32") == 2 * cache.plain_bytes("bfloat16")


def test_beam_search_and_batch_of_two(tiny):
    model, tok = tiny
    ids = tok(TEXT, return_tensors="pt").input_ids[:, :40]
    cache = CompressedCache({"id": "lossless"}, window=4, block=8)
    assert torch.equal(_gen(model, ids, cache, n=10, num_beams=2),
                       _gen(model, ids, n=10, num_beams=2))
    two = torch.cat([ids, ids.flip(1)])
    cache = CompressedCache({"id": "lossless"}, window=4, block=8)
    assert torch.equal(_gen(model, two, cache, n=10), _gen(model, two, n=10))
    assert len(cache.layers[0]._blocks[0].streams["keys"]) == 2  # one stream per row


def test_refusals():
    spec = KVCodecSpec({"id": "lossless"})
    spec.codecs["values"].needs_model = True  # what a rematerializing codec declares
    with pytest.raises(CodecConfigError, match="rematerializes"):
        CompressedCache(spec)
    for remat in ({"id": "xquant", "bits": 4}, {"keys": {"id": "tokens"},
                                                 "values": {"id": "lossless"}}):
        with pytest.raises(CodecConfigError, match="rematerializes"):
            CompressedCache(remat)
    with pytest.raises(CodecConfigError):
        CompressedCache({"keys": {"id": "lossless"}})
    with pytest.raises(CacheInputError, match="window"):
        CompressedCache({"id": "lossless"}, window=-1)
    with pytest.raises(CacheInputError, match="prefill"):
        CompressedCache({"id": "lossless"}, prefill="later")
    from transformers import LlamaConfig

    cfg = LlamaConfig(num_hidden_layers=2, layer_types=["full_attention", "sliding_attention"])
    with pytest.raises(CacheInputError, match="sliding_attention"):
        CompressedCache({"id": "lossless"}, config=cfg)


@pytest.mark.parametrize("prefill", ["compress", "keep"])
def test_keep_decoded_gives_the_same_tensors_and_counts_the_copies(tiny, prefill):
    model, tok = tiny
    ids = tok(TEXT, return_tensors="pt").input_ids
    outs, caches = [], []
    for keep in (False, True):
        cache = CompressedCache(U2, window=8, block=16, prefill=prefill, keep_decoded=keep)
        outs.append(_gen(model, ids, cache, n=30))
        caches.append(cache)
    assert torch.equal(outs[0], outs[1])
    a, b = caches
    k0, v0 = a.layers[1].update(torch.ones(1, 2, 1, 16), torch.ones(1, 2, 1, 16), 1)
    k1, v1 = b.layers[1].update(torch.ones(1, 2, 1, 16), torch.ones(1, 2, 1, 16), 1)
    assert torch.equal(k0, k1) and torch.equal(v0, v1)
    assert a.decoded_bytes == 0 and b.stream_bytes == a.stream_bytes
    # the kept copies: 2 kinds x 2 heads x 16 channels x 4 bytes per compressed token
    assert b.decoded_bytes == sum(2 * 2 * 16 * 4 * layer.compressed_length
                                  for layer in b.layers) > 0
    assert b.bytes_held == a.bytes_held + b.decoded_bytes
    assert b.memory_report()["decoded_bytes"] == b.decoded_bytes
    with pytest.raises(CacheInputError):
        CompressedCache(U2, keep_decoded=1)


def test_keep_decoded_beam_search_is_lossless(tiny):
    model, tok = tiny
    ids = tok(TEXT, return_tensors="pt").input_ids[:, :40]
    cache = CompressedCache({"id": "lossless"}, window=4, block=8, keep_decoded=True)
    assert torch.equal(_gen(model, ids, cache, n=10, num_beams=2),
                       _gen(model, ids, n=10, num_beams=2))


def test_codec_calls_leave_torch_threads_alone():
    import numpy as np

    from kvinfo.codecs import get_codec
    from kvinfo.hf import keep_torch_threads

    n = torch.get_num_threads()
    codec = get_codec(U2)
    x = np.random.default_rng(0).standard_normal((2, 64, 16)).astype(np.float32)
    try:
        with keep_torch_threads():
            torch.set_num_threads(n + 1)  # what numba's OpenMP layer does to torch
            codec.decode(codec.encode(x))
        assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(n)
