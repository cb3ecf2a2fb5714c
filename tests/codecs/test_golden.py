"""Golden streams: fixed inputs with their encoded bytes make any bitstream change visible.

A deliberate format change must bump ``kvinfo.codecs._container.FORMAT_VERSION`` (and the
docs) and regenerate the files with ``KVINFO_REGEN_GOLDEN=1 python -m pytest
tests/codecs/test_golden.py``; without that switch the files are never written. Files of
older versions stay: the decoders must keep reading them (``test_old_version_decodes``).
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

from kvinfo.codecs import get_codec
from kvinfo.codecs._container import FORMAT_VERSION

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "golden"
REGEN = os.environ.get("KVINFO_REGEN_GOLDEN") == "1"


def _inputs():
    rng = np.random.default_rng(20240601)
    gauss = np.clip(np.round(rng.normal(7.5, 2.5, (96, 16))), 0, 15).astype(np.uint8)
    heavy = (rng.zipf(1.6, 700).clip(1, 300) - 20).astype(np.int32).reshape(70, 10)
    walk = (np.cumsum(rng.integers(-1, 2, (80, 8)), axis=0) % 16 + 1000).astype(np.uint16)
    # two near-uniform byte channels beside two low-entropy ones: version 3's stored
    # channels (with store_below=0.05 at this size)
    mixed = np.stack([rng.integers(0, 256, 1500), rng.integers(0, 3, 1500),
                      rng.integers(0, 256, 1500), rng.integers(40, 44, 1500)], 1).astype(np.uint8)
    return {"gauss": gauss, "heavy": heavy, "walk": walk, "empty": np.zeros((0, 3), np.uint8),
            "single": np.full((5, 4), 9, np.int32), "mixed": mixed}


CASES = [
    ("rans", {"id": "rans", "chunk_size": 512}),
    ("rans_pc", {"id": "rans", "per_channel": True, "chunk_size": 256, "precision_bits": 11}),
    ("rans_store", {"id": "rans", "store_below": 0.05, "chunk_size": 512}),
    ("huffman", {"id": "huffman", "chunk_size": 512, "sub_block_size": 128}),
    ("arith", {"id": "arith", "chunk_size": 600, "adapt_limit": 1022}),
]
PARAMS = [(name, cfg, key) for name, cfg in CASES for key in _inputs()]


@pytest.mark.parametrize("name,config,key", PARAMS, ids=[f"{n}-{k}" for n, _, k in PARAMS])
def test_golden_stream(name, config, key):
    x = _inputs()[key]
    codec = get_codec(config)
    stem = GOLDEN / f"v{FORMAT_VERSION}_{name}_{key}"
    if REGEN:
        GOLDEN.mkdir(exist_ok=True)
        np.save(stem.with_suffix(".npy"), x)
        stem.with_suffix(".kvic").write_bytes(codec.encode(x))
    expected_input = np.load(stem.with_suffix(".npy"))
    golden = stem.with_suffix(".kvic").read_bytes()
    assert np.array_equal(expected_input, x) and expected_input.dtype == x.dtype
    assert codec.encode(x) == golden, f"bitstream of {name}/{key} changed: bump the version"
    out = codec.decode(golden)
    assert out.dtype == x.dtype and np.array_equal(out, x)


OLD = sorted(p for p in GOLDEN.glob("v*_*.kvic") if not p.name.startswith(f"v{FORMAT_VERSION}_"))


def test_old_versions_are_kept():
    assert {p.name.split("_")[0] for p in OLD} >= {f"v{v}" for v in range(1, FORMAT_VERSION)}


@pytest.mark.parametrize("path", OLD, ids=[p.stem for p in OLD])
def test_old_version_decodes(path):
    """A stream written by an older format version decodes to its input, bit-exactly."""
    name = path.stem.split("_", 1)[1].rsplit("_", 1)[0]
    codec = get_codec(dict(CASES)[name])
    x = np.load(path.with_suffix(".npy"))
    out = codec.decode(path.read_bytes())
    assert out.dtype == x.dtype and out.shape == x.shape and np.array_equal(out, x)
    assert codec.rate(path.read_bytes())["total_bits"] == 8 * path.stat().st_size


@pytest.mark.parametrize("version", range(1, FORMAT_VERSION))
@pytest.mark.parametrize("name", ["rans", "rans_pc", "huffman", "arith"])
def test_old_version_damage_is_always_caught(name, version):
    """The exhaustive damaged-stream check on every older version's stream: every
    single-byte change and every truncation raises CorruptStreamError (the decoders still
    validate the old layouts)."""
    from kvinfo.codecs import CorruptStreamError

    path = GOLDEN / f"v{version}_{name}_walk.kvic"
    data = path.read_bytes()
    codec = get_codec(dict(CASES)[name])
    for i in range(len(data)):
        for flip in (0x01, 0x80):
            damaged = bytearray(data)
            damaged[i] ^= flip
            with pytest.raises(CorruptStreamError):
                codec.decode(bytes(damaged))
    for n in range(0, len(data), 7):
        with pytest.raises(CorruptStreamError):
            codec.decode(data[:n])


@pytest.mark.parametrize("seed", range(3))
def test_container_crc32_is_zlibs(seed):
    # the container's CRC-32 (ISA-L when installed) must give zlib's values on any buffer,
    # at any length and start value, or the golden streams above would stop decoding
    import zlib

    from kvinfo.codecs._container import crc32

    rng = np.random.default_rng(seed)
    for n in (0, 1, 7, 64, 4097, int(rng.integers(1, 1 << 20))):
        b = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        start = int(rng.integers(0, 1 << 32))
        assert crc32(b) == zlib.crc32(b)
        assert crc32(memoryview(b)[1:], start) == zlib.crc32(b[1:], start)
