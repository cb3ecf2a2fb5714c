"""kvinfo.storage: numcodecs and zarr v3 codecs; entry-point discovery in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import ml_dtypes
import numcodecs
import numpy as np
import pytest
import zarr

import kvinfo.storage as storage
from kvinfo.codecs import get_codec
from kvinfo.errors import CodecConfigError, StorageError
from kvinfo.testing import kv_like

ROOT = Path(__file__).resolve().parents[2]
LOSSY = {  # config, and the tolerance the codec states (None: its own max_abs_error)
    "uniform": ({"id": "uniform", "bits": 4, "axis": "channel"}, None),
    "ecsq": ({"id": "ecsq", "step": 0.05}, None),
    "turbo": ({"id": "turbo", "bits": 4}, 0.02),  # relative MSE of 4-bit TurboQuant
}


def _symbols(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.geometric(0.3, size=(400, 8)) % 40).astype(np.uint8)


def _within(codec_cfg, rel_mse, x, y):
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    if rel_mse is None:
        bound = get_codec(codec_cfg).max_abs_error(x)
        assert np.all(np.abs(x64 - y64) <= bound)
    else:
        assert np.mean((x64 - y64) ** 2) / np.mean(x64 ** 2) <= rel_mse


@pytest.mark.parametrize("cid", storage.CODER_IDS)
def test_numcodecs_coders_are_exact_on_symbols_and_on_float_bytes(cid):
    codec = numcodecs.get_codec({"id": f"kvinfo.{cid}"})
    s = _symbols()
    assert np.array_equal(codec.decode(codec.encode(s)), s)
    x = kv_like((2, 50, 16))
    out = np.empty_like(x)
    codec.decode(codec.encode(x), out=out)
    assert out.tobytes() == x.tobytes()
    again = numcodecs.get_codec(json.loads(json.dumps(codec.get_config())))
    assert again.get_config() == codec.get_config() and again.codec_id == f"kvinfo.{cid}"


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_numcodecs_lossless_is_bit_exact(dtype):
    codec = numcodecs.get_codec({"id": "kvinfo.lossless"})
    x = kv_like((3, 40, 16), dtype)
    y = codec.decode(codec.encode(x))
    assert y.dtype == x.dtype and y.tobytes() == x.tobytes()
    # bfloat16 as HDF5/zarr store it: uint16 bit patterns, read as bfloat16
    bits = np.ascontiguousarray(kv_like((2, 40, 16), ml_dtypes.bfloat16)).view(np.uint16)
    c16 = numcodecs.get_codec({"id": "kvinfo.lossless", "dtype": "bfloat16"})
    assert np.array_equal(c16.decode(c16.encode(bits)), bits)


@pytest.mark.parametrize("name", sorted(LOSSY))
def test_numcodecs_lossy_within_the_stated_distortion(name):
    cfg, rel = LOSSY[name]
    codec = numcodecs.get_codec({**cfg, "id": f"kvinfo.{name}"})
    x = kv_like((2, 64, 16))
    y = codec.decode(codec.encode(x))
    assert y.shape == x.shape and y.dtype == x.dtype
    _within(cfg, rel, x, y)


def test_numcodecs_refusals_are_value_errors():
    with pytest.raises(CodecConfigError, match="float array"):
        numcodecs.get_codec({"id": "kvinfo.uniform"}).encode(np.arange(64, dtype=np.int32))
    with pytest.raises(CodecConfigError, match="dtype"):
        numcodecs.get_codec({"id": "kvinfo.rans", "dtype": "bfloat16"})
    with pytest.raises(CodecConfigError):
        numcodecs.get_codec({"id": "kvinfo.uniform", "bits": 99})
    with pytest.raises(CodecConfigError, match="no zarr codec"):
        storage.zarr_codec({"id": "xquant"})


def _zarr_roundtrip(x, cfg, dtype=None):
    cid = cfg["id"]
    zc = storage.zarr_codec(cfg, dtype=dtype)
    kw = ({"serializer": zc, "compressors": None} if cid in storage.ARRAY_CODEC_IDS
          else {"compressors": [zc]})
    store = {}
    z = zarr.create_array(store=store, shape=x.shape, chunks=(1, *x.shape[1:]), dtype=x.dtype,
                          **kw)
    z[:] = x
    meta = json.loads(store["zarr.json"].to_bytes())
    names = [c["name"] for c in meta["codecs"]]
    assert f"kvinfo.{cid}" in names
    return zarr.open_array(store, mode="r")[:]


@pytest.mark.parametrize("cid", storage.CODER_IDS + ("lossless",))
def test_zarr_lossless_roundtrip_is_bit_exact(cid):
    x = kv_like((3, 48, 16))
    y = _zarr_roundtrip(x, {"id": cid})
    assert y.dtype == x.dtype and y.tobytes() == x.tobytes()


def test_zarr_bfloat16_patterns_roundtrip():
    bits = np.ascontiguousarray(kv_like((2, 48, 16), ml_dtypes.bfloat16)).view(np.uint16)
    assert np.array_equal(_zarr_roundtrip(bits, {"id": "lossless"}, dtype="bfloat16"), bits)
    y = _zarr_roundtrip(bits, {"id": "uniform", "bits": 4}, dtype="bfloat16")
    _within({"id": "uniform", "bits": 4}, None, bits.view(ml_dtypes.bfloat16),
            y.view(ml_dtypes.bfloat16))


@pytest.mark.parametrize("name", sorted(LOSSY))
def test_zarr_lossy_roundtrip_within_the_stated_distortion(name):
    cfg, rel = LOSSY[name]
    x = kv_like((2, 64, 16))
    _within(cfg, rel, x, _zarr_roundtrip(x, cfg))


def test_zarr_array_codec_refuses_integer_arrays():
    with pytest.raises(StorageError, match="float"):
        zarr.create_array(store={}, shape=(2, 8, 8), dtype="int32",
                          serializer=storage.zarr_codec({"id": "uniform"}), compressors=None)


def test_every_self_contained_codec_has_both_entry_points():
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    want = {f"kvinfo.{c}" for c in storage.SELF_CONTAINED_IDS}
    assert set(eps["numcodecs.codecs"]) == want and set(eps["zarr.codecs"]) == want
    assert set(storage.numcodec_classes()) == want
    assert set(storage.zarr_codec_classes()) == want


def test_entry_points_discovered_in_a_fresh_interpreter(tmp_path):
    """The pyproject entry points, as an install writes them, load without importing kvinfo
    first: numcodecs.get_codec and a zarr array written with a kvinfo codec."""
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    dist = tmp_path / "kvinfo_entry_points-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kvinfo-entry-points\n"
                                   "Version: 0\n")
    lines = []
    for group in ("numcodecs.codecs", "zarr.codecs"):
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in eps[group].items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    x = kv_like((2, 40, 16))
    np.save(tmp_path / "x.npy", x)
    script = f"""
import sys, numpy as np, numcodecs, zarr
x = np.load({str(tmp_path / 'x.npy')!r})
assert "kvinfo" not in sys.modules
store = {str(tmp_path / 'a.zarr')!r}
z = zarr.create_array(store=store, shape=x.shape, chunks=(1, 40, 16), dtype="float32",
                      compressors=[{{"name": "kvinfo.rans", "configuration": {{}}}}])
assert "kvinfo" in sys.modules  # loaded by zarr's entry point
z[:] = x
y = zarr.open_array(store, mode="r")[:]  # the codec rebuilt from the array's metadata
assert y.tobytes() == x.tobytes()
c = numcodecs.get_codec({{"id": "kvinfo.rans", "precision_bits": 12}})
out = np.empty_like(x); c.decode(c.encode(x), out=out); assert out.tobytes() == x.tobytes()
from numcodecs.registry import entries
assert entries["kvinfo.rans"].load() is type(c)  # found through numcodecs' entry point
print("OK", type(c).__name__)
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "OK RansNumcodec" in r.stdout
