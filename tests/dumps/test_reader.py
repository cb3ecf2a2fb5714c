"""The kvdump format: writer, reader, atomicity and every kind of bad file."""

from __future__ import annotations

import json

import h5py
import ml_dtypes
import numpy as np
import pytest

import kvinfo
from kvinfo.cli import main
from kvinfo.dumps import FORMAT_VERSION, DumpWriter, open_dump, write_synthetic_dump
from kvinfo.errors import DumpFormatError


def _writer(path, dtype="float32", kinds=("keys", "values")):
    return DumpWriter(
        path,
        model="m",
        dtype=dtype,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        kinds=kinds,
        attrs={"rope": {"theta": 1.0}},
    )


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_roundtrip_bit_exact(tmp_path, dtype):
    rng = np.random.default_rng(0)
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype
    seqs = []
    with _writer(tmp_path / "a.h5", dtype, kinds=("keys", "values", "queries")) as w:
        for T in (5, 3):
            t = {
                "keys": rng.standard_normal((2, 2, T, 8)).astype(np_dtype),
                "values": rng.standard_normal((2, 2, T, 8)).astype(np_dtype),
                "queries": rng.standard_normal((2, 4, T, 8)).astype(np_dtype),
            }
            ids = rng.integers(0, 100, T)
            w.append(ids, t)
            seqs.append((ids, t))
    with open_dump(tmp_path / "a.h5") as d:
        assert d.dtype == dtype and d.num_tokens == 8 and d.num_sequences == 2
        assert d.sequences() == [(0, 5), (5, 8)]
        np.testing.assert_array_equal(d.positions(), [0, 1, 2, 3, 4, 0, 1, 2])
        np.testing.assert_array_equal(d.token_ids, np.concatenate([s[0] for s in seqs]))
        for kind in ("keys", "values", "queries"):
            full = np.concatenate([s[1][kind] for s in seqs], axis=2)
            got = d.tensor(kind, 1)
            assert got.dtype == np.dtype(np_dtype)
            # bit-exact, including the bfloat16 bit patterns
            np.testing.assert_array_equal(got.view(np.uint8), full[1].view(np.uint8))
            np.testing.assert_array_equal(
                d.slab(kind, 0, 1).view(np.uint8), full[0, 1].view(np.uint8)
            )
        assert d.raw_bits("keys", 0, 0).dtype == (np.uint32 if dtype == "float32" else np.uint16)
        assert d.meta["rope"] == {"theta": 1.0}
        slabs = list(d.iter_slabs())
        assert [(s[0], s[1], s[2]) for s in slabs][:3] == [
            (0, "keys", 0),
            (0, "keys", 1),
            (0, "values", 0),
        ]
        assert len(slabs) == 2 * 2 * 2


def test_slab_chunking_reads_one_slab(synthetic_dump):
    with h5py.File(synthetic_dump) as f:
        chunks = f["keys"].chunks
    assert chunks[0] == 1 and chunks[1] == 1 and chunks[3] == 16


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "x.h5"
    with pytest.raises(RuntimeError):
        with _writer(target) as w:
            w.append(
                [1, 2],
                {"keys": np.zeros((2, 2, 2, 8), "f4"), "values": np.zeros((2, 2, 2, 8), "f4")},
            )
            raise RuntimeError("crash in the middle")
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_leaves_nothing(tmp_path):
    target = tmp_path / "x.h5"
    with pytest.raises(KeyboardInterrupt):
        with _writer(target):
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bad_shapes_and_empty(tmp_path):
    w = _writer(tmp_path / "x.h5")
    with pytest.raises(DumpFormatError, match="expected shape"):
        w.append(
            [1], {"keys": np.zeros((2, 2, 2, 8), "f4"), "values": np.zeros((2, 2, 2, 8), "f4")}
        )
    with pytest.raises(DumpFormatError, match="empty dump"):
        w.close()
    assert list(tmp_path.iterdir()) == []


def test_info_cli(synthetic_dump, capsys):
    assert main(["info", str(synthetic_dump)]) == 0
    out = capsys.readouterr().out
    assert "2 layers" in out and "256 tokens" not in out and "256 in 2 sequences" in out
    assert main(["info", str(synthetic_dump), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shapes"]["keys"] == [2, 2, 256, 16]
    assert info["tensor_bytes"]["keys"] == 2 * 2 * 256 * 16 * 4
    assert info["num_sequences"] == 2 and info["format_version"] == 1  # no inputs: v1


def _bad_files(tmp_path, good):
    text = tmp_path / "text.h5"
    text.write_text("hello, not hdf5\n")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    newer = tmp_path / "newer.h5"
    newer.write_bytes(good.read_bytes())
    with h5py.File(newer, "a") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    return {
        "missing": (tmp_path / "nope.h5", "no such file"),
        "not-hdf5": (text, "not an HDF5 file"),
        "not-kvdump": (other, "not a kvinfo KV dump"),
        "newer": (newer, "newer than this kvinfo"),
        "truncated": (trunc, "damaged|truncated|not an HDF5"),
    }


@pytest.mark.parametrize("case", ["missing", "not-hdf5", "not-kvdump", "newer", "truncated"])
def test_bad_files(tmp_path, synthetic_dump, capsys, case):
    path, pattern = _bad_files(tmp_path, synthetic_dump)[case]
    with pytest.raises(DumpFormatError, match=pattern):
        with open_dump(path) as d:
            d.slab("keys", 0, 0)
    assert issubclass(DumpFormatError, ValueError)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvinfo info: error:") and err.count("\n") == 1 and "Traceback" not in err


def test_bad_accessors(synthetic_dump):
    with kvinfo.open_dump(synthetic_dump) as d:
        with pytest.raises(DumpFormatError, match="no 'keys_pre_rope'"):
            d.slab("keys_pre_rope", 0, 0)
        with pytest.raises(DumpFormatError, match="layer 7 out of range"):
            d.keys(7)
        with pytest.raises(DumpFormatError, match="head 2 out of range"):
            d.values(0, 2)
        assert d.queries(0).shape == (4, 256, 16)


def test_synthetic_structure(tmp_path):
    p = write_synthetic_dump(tmp_path / "s.h5", num_tokens=200, head_dim=16, num_sequences=2)
    with open_dump(p) as d:
        k = d.slab("keys", 0, 0).astype(np.float64)
    norms = np.linalg.norm(k, axis=1)
    # the first token of each sequence is the sink: far larger norm than the median
    assert norms[0] > 3 * np.median(norms) and norms[100] > 3 * np.median(norms)
