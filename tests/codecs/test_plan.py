"""The plan codec: per-slab dispatch, one layer's heads split by head, damaged streams."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kvinfo.codecs import get_codec
from kvinfo.errors import CodecConfigError, CorruptStreamError, PlanFormatError


@pytest.fixture
def plan_path(tmp_path):
    plan = {
        "schema": "kvinfo.plan", "plan_version": 1,
        "geometry": {"num_layers": 2, "num_kv_heads": 2, "head_dim": 8},
        "family": "uniform",
        "settings": {k: [{"id": "uniform", "bits": b, "axis": "token"} for b in (2, 6)]
                     for k in ("keys", "values")},
        "assignment": {"keys": [[0, 1], [1, 1]], "values": [[1, 0], [0, 0]]},
    }
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(plan))
    return p


def test_layer_call_equals_per_head_calls_with_each_heads_setting(plan_path):
    x = np.random.default_rng(0).standard_normal((2, 64, 8)).astype(np.float32)
    plan = get_codec({"id": "plan", "path": str(plan_path)})
    layer = plan.for_slab(0, "keys", None)
    data = layer.encode(x)
    y = layer.decode(data)
    assert y.shape == x.shape and y.dtype == x.dtype
    for h, bits in ((0, 2), (1, 6)):
        ref = get_codec({"id": "uniform", "bits": bits, "axis": "token"})
        np.testing.assert_array_equal(y[h], ref.decode(ref.encode(x[h])))
        one = plan.for_slab(0, "keys", h)
        np.testing.assert_array_equal(one.decode(one.encode(x[h])), y[h])
    r = layer.rate(data)
    assert r["total_bits"] == 8 * len(data) and r["num_elements"] == x.size
    assert 0 < r["symbol_bits"] < r["total_bits"]
    assert plan.get_config() == {"id": "plan", "path": str(plan_path)}


def test_unbound_or_mismatched_use_is_refused(plan_path):
    x = np.zeros((64, 8), np.float32)
    plan = get_codec({"id": "plan", "path": str(plan_path)})
    with pytest.raises(CodecConfigError, match="unbound plan"):
        plan.encode(x)
    with pytest.raises(PlanFormatError, match="head_dim 16"):
        plan.for_slab(0, "values", 1).encode(np.zeros((64, 16), np.float32))
    with pytest.raises(PlanFormatError, match="KV head 2"):
        plan.for_slab(0, "values", 2)
    with pytest.raises(CodecConfigError, match="kind one of"):
        plan.for_slab(0, "queries", 0)
    with pytest.raises(PlanFormatError, match="3 layers"):
        plan.check_geometry(3, 2, 8)
    data = plan.for_slab(1, "keys", 0).encode(x)
    with pytest.raises(CorruptStreamError, match="another slab"):
        plan.for_slab(1, "keys", 1).decode(data)
    damaged = bytearray(data)
    damaged[30] ^= 1
    with pytest.raises(CorruptStreamError, match="checksum"):
        plan.for_slab(1, "keys", 0).decode(bytes(damaged))
    with pytest.raises(CorruptStreamError, match="not a kvinfo quantizer stream"):
        plan.decode(b"xx")


def test_a_stream_of_another_plan_is_refused(plan_path, tmp_path):
    x = np.zeros((64, 8), np.float32)
    data = get_codec({"id": "plan", "path": str(plan_path)}).for_slab(0, "keys", 0).encode(x)
    other = json.loads(plan_path.read_text())
    other["assignment"]["keys"][0][0] = 1
    p2 = tmp_path / "other.json"
    p2.write_text(json.dumps(other))
    with pytest.raises(CorruptStreamError, match="another plan"):
        get_codec({"id": "plan", "path": str(p2)}).for_slab(0, "keys", 0).decode(data)


def test_bad_plan_files_are_refused(tmp_path):
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(PlanFormatError, match="not a kvinfo plan"):
        get_codec({"id": "plan", "path": str(tmp_path / "x.json")})
    (tmp_path / "y.json").write_bytes(b"\xff\xfe")
    with pytest.raises(PlanFormatError, match="not a JSON plan"):
        get_codec({"id": "plan", "path": str(tmp_path / "y.json")})
    with pytest.raises(PlanFormatError, match="is a folder"):
        get_codec({"id": "plan", "path": str(tmp_path)})


def test_mutated_streams_are_refused_or_decode_to_the_stated_shape(plan_path):
    """Random byte edits and truncations: a CorruptStreamError, never another exception."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 16, 8)).astype(np.float32)
    plan = get_codec({"id": "plan", "path": str(plan_path)})
    data = plan.for_slab(1, "values", None).encode(x)
    for i in range(200):
        buf = bytearray(data)
        if i % 4 == 0:
            buf = buf[: int(rng.integers(0, len(buf)))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                buf[int(rng.integers(0, len(buf)))] ^= int(rng.integers(1, 256))
        try:
            y = plan.decode(bytes(buf), max_output_bytes=1 << 20)
        except CorruptStreamError:
            continue
        assert y.shape == x.shape
