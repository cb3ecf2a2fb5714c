"""The shared contract (kvinfo.testing) on every lossless coder; agreement with constriction."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kvinfo import testing
from kvinfo.codecs import UnknownCodecError, get_codec, list_codecs
from kvinfo.codecs.constriction_peers import categorical_models

CONFIGS = [
    {"id": "rans"},
    {"id": "rans", "per_channel": True, "chunk_size": 64, "precision_bits": 14},
    {"id": "rans", "store_below": 0.3, "chunk_size": 64},
    {"id": "huffman"},
    {"id": "huffman", "chunk_size": 64, "sub_block_size": 16, "max_code_length": 5},
    {"id": "huffman", "chunk_size": 64, "sub_block_size": 16, "per_channel": True},
    {"id": "arith"},
    {"id": "arith", "context": "none", "chunk_size": 100},
    {"id": "constriction-ans"},
    {"id": "constriction-range", "per_channel": True},
]
IDS = [",".join(f"{k}={v}" for k, v in c.items()) for c in CONFIGS]


def test_every_coder_is_registered():
    assert {"rans", "huffman", "arith", "constriction-ans", "constriction-range"} <= set(
        list_codecs())
    with pytest.raises(UnknownCodecError, match="rans"):
        get_codec({"id": "ranz"})


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_dtypes_and_shapes(config):
    testing.check_dtypes_and_shapes(get_codec(config))


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_alphabets_1_to_65536(config):
    testing.check_alphabets(get_codec(config))


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_degenerate_inputs(config):
    testing.check_degenerate_inputs(get_codec(config))


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_config_json_and_rate(config):
    codec = get_codec(config)
    testing.check_config_json(codec)
    r = testing.check_rate(codec, (np.arange(5000) % 13).astype(np.uint8).reshape(500, 10))
    assert r["side_bits"] > 0


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_every_byte_change_and_truncation_raises(config):
    # every byte of a (version-2, compact) stream: 3 flips and one truncation each
    codec = get_codec(config)
    n = len(codec.encode((np.arange(120, dtype=np.uint8) * 7 % 11).reshape(12, 10)))
    assert testing.check_corruption(codec) == 4 * n + 1 > 300


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_damage_past_the_stream_crc_never_returns_wrong_data(config):
    assert testing.check_damage_past_crc(get_codec(config), step=3) > 100


def test_rans_decodes_like_constriction_with_the_same_tables():
    """Models agree: the table stored by rans, given to constriction, decodes the same symbols."""
    import constriction

    from kvinfo.codecs.rans import RansCodec

    rng = np.random.default_rng(5)
    for x in (
        np.clip(np.round(rng.normal(8, 3, 30_000)), 0, 15).astype(np.uint8),
        rng.zipf(1.5, 20_000).clip(1, 3000).astype(np.int32) - 50,
    ):
        codec = RansCodec()
        data = codec.encode(x)
        _, tables, _, _ = codec.parse(data)
        ours = codec.decode(data)
        (model,) = categorical_models(tables)
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse((x.astype(np.int64) - tables.min_symbol).astype(np.int32), model)
        theirs = constriction.stream.stack.AnsCoder(coder.get_compressed()).decode(model, x.size)
        assert np.array_equal(ours, theirs + tables.min_symbol)
        testing.check_decodes_like(codec, get_codec({"id": "constriction-ans"}), [x])
        testing.check_decodes_like(codec, get_codec({"id": "constriction-range"}), [x])


@settings(max_examples=25, deadline=None)
@given(
    x=hnp.arrays(
        dtype=np.int32,
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=30),
        elements=st.integers(-50, 200),
    ),
    dtype=st.sampled_from([np.uint8, np.uint16, np.int32]),
    config=st.sampled_from(CONFIGS),
)
def test_roundtrip_property_all_coders(x, dtype, config):
    if dtype is not np.int32:
        x = np.abs(x).astype(dtype)
    testing.check_roundtrip(get_codec(config), x)
