"""Golden streams of the quantizer codecs: fixed inputs, their encoded bytes and decodes.

A deliberate change of the quantizer container (``kvinfo/codecs/quant/_base.py``) or of a
codec's stream layout must bump ``CONTAINER_VERSION`` (and ``docs/codecs.md``) and
regenerate the files with ``KVINFO_REGEN_GOLDEN=1 python -m pytest
tests/codecs/quant/test_golden.py``; without that switch the files are never written. The coder
streams are embedded, so a coder format change shows up here too. The golden files of older
versions are kept: every version in ``READ_VERSIONS`` must still decode to its recorded
output.
"""

from __future__ import annotations

import os
import pathlib

import ml_dtypes
import numpy as np
import pytest

from kvinfo.codecs import get_codec
from kvinfo.codecs.quant._base import CONTAINER_VERSION, READ_VERSIONS

GOLDEN = pathlib.Path(__file__).resolve().parents[2] / "golden"
REGEN = os.environ.get("KVINFO_REGEN_GOLDEN") == "1"
CASES = {
    "uniform_bf16": ({"id": "uniform", "bits": 3, "group_size": 8}, "bfloat16"),
    "uniform_token_f16": ({"id": "uniform", "bits": 5, "axis": "token"}, "float16"),
    "ecsq_f32": ({"id": "ecsq", "step": 0.3, "step_mode": "relative"}, "float32"),
    "turbo_bf16": (
        {"id": "turbo", "bits": 2, "num_outliers": 2, "sink_tokens": 1, "seed": 42},
        "bfloat16",
    ),
    "turbo_huffman_f16": ({"id": "turbo", "bits": 3, "coder": {"id": "huffman"}}, "float16"),
    "lossless_bf16": ({"id": "lossless"}, "bfloat16"),
    "lossless_f32_arith": ({"id": "lossless", "coder": {"id": "arith"}}, "float32"),
}
DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}


def _input(dtype: str) -> np.ndarray:
    rng = np.random.default_rng(20250101)
    x = rng.standard_normal((2, 24, 16)) * np.linspace(0.5, 2.0, 16)
    x[..., 3] += 5.0
    return x.astype(np.float32).astype(DTYPES[dtype])


@pytest.mark.parametrize("name", list(CASES))
def test_golden_quant_stream(name):
    config, dtype = CASES[name]
    codec = get_codec(config)
    x = _input(dtype)
    stem = GOLDEN / f"quant_v{CONTAINER_VERSION}_{name}"
    if REGEN:
        GOLDEN.mkdir(exist_ok=True)
        data = codec.encode(x)
        np.save(stem.with_suffix(".in.npy"), x.astype(np.float32))
        np.save(stem.with_suffix(".out.npy"), codec.decode(data).astype(np.float32))
        stem.with_suffix(".kvq").write_bytes(data)
    golden = stem.with_suffix(".kvq").read_bytes()
    assert np.array_equal(np.load(stem.with_suffix(".in.npy")), x.astype(np.float32))
    assert codec.encode(x) == golden, f"bitstream of {name} changed: bump the version"
    out = codec.decode(golden)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert np.array_equal(out.astype(np.float32), np.load(stem.with_suffix(".out.npy")))


OLD_VERSIONS = [v for v in READ_VERSIONS if v != CONTAINER_VERSION]


@pytest.mark.parametrize("version", OLD_VERSIONS)
@pytest.mark.parametrize("name", list(CASES))
def test_older_golden_streams_still_decode(name, version):
    config, dtype = CASES[name]
    stem = GOLDEN / f"quant_v{version}_{name}"
    old = stem.with_suffix(".kvq").read_bytes()
    assert old[3] == version
    out = get_codec(config).decode(old)
    assert out.dtype == np.dtype(DTYPES[dtype]) and out.shape == _input(dtype).shape
    assert np.array_equal(out.astype(np.float32), np.load(stem.with_suffix(".out.npy")))


def test_version_is_bumped_with_old_goldens_kept():
    assert CONTAINER_VERSION == max(READ_VERSIONS) and len(OLD_VERSIONS) >= 1
    for v in READ_VERSIONS:
        assert sorted(GOLDEN.glob(f"quant_v{v}_*.kvq")), v


OLD_CODER = sorted(GOLDEN.glob("quant_v*_kvic*_*.kvq"))


@pytest.mark.parametrize("path", OLD_CODER, ids=[p.stem for p in OLD_CODER])
def test_streams_with_older_coder_versions_decode(path):
    """Quantizer streams whose embedded coder streams are of an older kvinfo container
    version (``quant_v<C>_kvic<V>_<name>``) still decode to their recorded output."""
    name = path.stem.split("_", 3)[3]
    config, dtype = CASES[name]
    out = get_codec(config).decode(path.read_bytes())
    stem = str(path)[: -len(".kvq")]
    assert out.dtype == np.dtype(DTYPES[dtype]) and out.shape == _input(dtype).shape
    assert np.array_equal(out.astype(np.float32), np.load(stem + ".out.npy"))


def test_older_coder_version_goldens_are_kept():
    assert len(OLD_CODER) >= 14  # kvinfo container version 1 inside quant v1 and v2
