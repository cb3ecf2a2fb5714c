"""arith: the coder spends what its model predicts; contexts beat order-0 on structured data."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

from kvinfo.codecs import CodecConfigError, get_codec
from kvinfo.codecs.models import AdaptiveContextModel
from kvinfo.kernels import cpu

_spec = importlib.util.spec_from_file_location(
    "kvinfo_ref_coders_arith", pathlib.Path(__file__).with_name("reference_coders.py")
)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


@pytest.mark.parametrize("nch,prev_bits", [(1, 0), (5, 0), (5, 2)])
def test_kernel_spends_what_the_reference_model_predicts(nch, prev_bits):
    rng = np.random.default_rng(0)
    idx = rng.choice(8, size=2000, p=[0.4, 0.2, 0.1, 0.1, 0.1, 0.05, 0.03, 0.02]).astype(np.int32)
    payload, nb = cpu.arith_encode(idx, 700, 5, 3, nch, prev_bits, 1022)
    ideal = ref.arith_ideal_bits(idx, 5, 3, nch, prev_bits, 1022, 700)
    nchunks = nb.shape[0]
    # range coding costs at most a few bytes per chunk over the ideal code length
    assert ideal / 8 <= payload.size <= ideal / 8 + 6 * nchunks
    out, status = cpu.arith_decode(payload, nb, 2000, 700, 5, 3, nch, prev_bits, 1022)
    assert status.tolist() == [0] * nchunks and np.array_equal(out, idx)


def test_previous_symbol_context_goes_below_order0_entropy():
    rng = np.random.default_rng(1)
    steps = rng.choice([-1, 0, 1], size=(20_000, 4), p=[0.2, 0.6, 0.2])
    x = (np.cumsum(steps, axis=0) % 16).astype(np.uint8)
    p = np.bincount(x.ravel()) / x.size
    h0 = float(-(p[p > 0] * np.log2(p[p > 0])).sum())
    rates = {}
    for ctx in ("none", "channel", "channel+prev", "auto"):
        codec = get_codec({"id": "arith", "context": ctx})
        data = codec.encode(x)
        assert np.array_equal(codec.decode(data), x)
        rates[ctx] = codec.rate(data)["bits_per_element"]
    # the adaptive order-0 model follows the walk's local statistics a little
    assert 0.98 * h0 <= rates["none"] < 1.01 * h0
    assert rates["channel+prev"] < 0.5 * h0
    assert rates["auto"] == rates["channel+prev"]  # the measured choice finds the context
    r = get_codec({"id": "arith"}).rate(get_codec({"id": "arith"}).encode(x))
    assert r["num_tables"] > 4 and r["model_bits"] == 0  # recorded in the rate split


def test_layout_caps_adaptive_probabilities():
    m = AdaptiveContextModel.for_data(65536, 1000, "channel+prev")
    assert m.num_nodes <= AdaptiveContextModel.MAX_NODES
    assert m.num_channel_contexts == 1 and m.prev_bits == 6
    m = AdaptiveContextModel.for_data(16, 128, "channel+prev")
    assert (m.symbol_bits, m.num_channel_contexts, m.prev_bits) == (4, 128, 4)
    assert AdaptiveContextModel.for_data(16, 128, "none").num_contexts == 1


@pytest.mark.parametrize("bad", [{"context": "prev"}, {"adapt_limit": 0}, {"chunk_size": 0},
                                 {"adapt_limit": "fast"}, {"adapt_limit": 1022.0}])
def test_bad_config_raises(bad):
    with pytest.raises(CodecConfigError):
        get_codec({"id": "arith", **bad})


def _limit(data) -> int:
    from kvinfo.codecs import _container as C

    return C.unpack(data).params["adapt_limit"]


@pytest.mark.parametrize("seed", [3, 4])
def test_auto_adapt_limit_is_the_smaller_of_the_fixed_encodings(seed):
    """``adapt_limit="auto"`` measures both limits on the (only) chunk: the stream is
    byte-identical to the smaller fixed-limit stream, on a stationary skewed source (slow
    forgetting wins) and on a drifting one (fast forgetting wins)."""
    rng = np.random.default_rng(seed)
    stationary = (rng.random(200_000) < 0.01).astype(np.uint8)
    p = np.repeat(rng.choice([0.002, 0.2], 100), 2000)  # the rate jumps every 2,000 symbols
    drifting = (rng.random(p.size) < p).astype(np.uint8)
    for x, want in ((stationary, 65534), (drifting, 1022)):
        fixed = {a: get_codec({"id": "arith", "adapt_limit": a}).encode(x) for a in (1022, 65534)}
        auto = get_codec({"id": "arith"}).encode(x)
        assert _limit(auto) == want, (seed, {a: len(d) for a, d in fixed.items()})
        assert auto == fixed[want] and len(auto) <= min(map(len, fixed.values()))
        assert np.array_equal(get_codec({"id": "arith"}).decode(auto), x)


def test_auto_adapt_limit_uses_the_first_chunk_for_long_streams():
    """Above one chunk the choice is made on the first chunk and the whole stream is coded
    with it (still decodable, limit recorded)."""
    rng = np.random.default_rng(9)
    x = (rng.random(5000) < 0.01).astype(np.uint8)
    codec = get_codec({"id": "arith", "chunk_size": 1500})
    data = codec.encode(x)
    first = {a: len(get_codec({"id": "arith", "adapt_limit": a, "chunk_size": 1500}).encode(
        x[:1500])) for a in (1022, 65534)}
    assert _limit(data) == min(first, key=lambda a: (first[a], a != 1022))
    assert data == get_codec({"id": "arith", "adapt_limit": _limit(data),
                              "chunk_size": 1500}).encode(x)
    assert np.array_equal(codec.decode(data), x)
