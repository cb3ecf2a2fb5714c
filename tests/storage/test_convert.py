"""kvinfo convert / kvinfo.storage.convert_dump, and open_dump on the zarr store it writes."""

from __future__ import annotations

import numpy as np
import pytest

from kvinfo.cli import main
from kvinfo.dumps import ZarrDump, open_dump
from kvinfo.errors import CodecConfigError, DumpFormatError, OutputPathError
from kvinfo.storage import convert_dump


@pytest.mark.parametrize("codec", [{"id": "rans"}, {"id": "lossless"}])
def test_convert_reads_back_bit_exactly(synthetic_dump, tmp_path, codec):
    out = tmp_path / "a.zarr"
    info = convert_dump(synthetic_dump, out, codec)
    assert info["lossy"] is False and info["store_bytes"] > 0 and info["seconds"] > 0
    with open_dump(synthetic_dump) as a, open_dump(out) as b:
        assert isinstance(b, ZarrDump) and b.kinds == a.kinds
        assert (b.num_layers, b.num_kv_heads, b.num_tokens) == (a.num_layers, a.num_kv_heads,
                                                                 a.num_tokens)
        assert np.array_equal(b.token_ids, a.token_ids)
        assert b.sequences() == a.sequences()
        for kind in a.kinds:
            assert a.tensor(kind, 1).tobytes() == b.tensor(kind, 1).tobytes()
        assert b.describe()["zarr_store"]["codec"]["id"] == codec["id"]


def test_convert_bfloat16_and_lossy_uniform(synthetic_dump_bf16, tmp_path):
    from kvinfo.codecs import get_codec

    out = tmp_path / "u.zarr"
    cfg = {"id": "uniform", "bits": 4, "axis": "channel"}
    info = convert_dump(synthetic_dump_bf16, out, cfg, kinds=["keys", "values"])
    assert info["lossy"] is True
    with open_dump(synthetic_dump_bf16) as a, open_dump(out) as b:
        assert b.dtype == "bfloat16" and b.kinds == ("keys", "values")
        x, y = a.slab("keys", 0, 1), b.slab("keys", 0, 1)
        assert y.dtype == x.dtype
        bound = get_codec(cfg).max_abs_error(x[None])[0]
        assert np.all(np.abs(x.astype(np.float64) - y.astype(np.float64)) <= bound)


def test_convert_cli_prints_size_and_time(synthetic_dump, tmp_path, capsys):
    out = tmp_path / "c.zarr"
    assert main(["convert", str(synthetic_dump), str(out), "--no-progress"]) == 0
    line = capsys.readouterr().out
    assert "MB on disk" in line and "MB/s of KV" in line and "measurement" in line
    assert main(["info", str(out)]) == 0  # every command reads the store as a dump
    # a second conversion replaces the kvinfo store
    assert main(["convert", str(synthetic_dump), str(out), "--codec", '{"id": "huffman"}',
                 "--no-progress"]) == 0
    with open_dump(out) as b:
        assert b.store["codec"]["id"] == "huffman"


def test_convert_refusals(synthetic_dump, tmp_path, capsys):
    with pytest.raises(CodecConfigError, match="storage codec"):
        convert_dump(synthetic_dump, tmp_path / "x.zarr", {"id": "xquant"})
    with pytest.raises(OutputPathError, match="input"):
        convert_dump(synthetic_dump, synthetic_dump, {"id": "rans"})
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(OutputPathError, match="not a kvinfo zarr store"):
        convert_dump(synthetic_dump, other, {"id": "rans"})
    assert (other / "keep.txt").read_text() == "mine"
    assert main(["convert", str(synthetic_dump), str(tmp_path / "y.zarr"), "--codec",
                 '{"id": "nope"}']) == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "y.zarr").exists()


def test_failed_conversion_leaves_nothing_complete(synthetic_dump, tmp_path, monkeypatch):
    import kvinfo.storage.zarr_codecs as zc

    calls = {"n": 0}
    real = zc.KvinfoBytesBytesCodec._encode_sync

    def failing(self, chunk_bytes, chunk_spec):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("disk on fire")
        return real(self, chunk_bytes, chunk_spec)

    monkeypatch.setattr(zc.KvinfoBytesBytesCodec, "_encode_sync", failing)
    out = tmp_path / "f.zarr"
    with pytest.raises(RuntimeError, match="disk on fire"):
        convert_dump(synthetic_dump, out, {"id": "rans"})
    assert list(tmp_path.iterdir()) == []  # no store, no partial left behind


def test_failed_read_ahead_leaves_nothing_and_stops_the_reader(synthetic_dump, tmp_path,
                                                                monkeypatch):
    """A layer that fails to read on the read-ahead thread fails the conversion with its
    own error, no store or partial is left, and no reader thread outlives the call."""
    import threading

    from kvinfo.dumps import Dump

    real = Dump.tensor

    def failing(self, kind, layer, *args, **kwargs):
        if kind == "values" and layer == 1:
            raise OSError("bad sector in layer 1")
        return real(self, kind, layer, *args, **kwargs)

    monkeypatch.setattr(Dump, "tensor", failing)
    with pytest.raises(OSError, match="bad sector"):
        convert_dump(synthetic_dump, tmp_path / "f.zarr", {"id": "rans"})
    assert list(tmp_path.iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("kvinfo-convert-read")]


def test_incomplete_store_is_refused(synthetic_dump, tmp_path):
    import zarr

    out = tmp_path / "i.zarr"
    convert_dump(synthetic_dump, out, {"id": "rans"})
    g = zarr.open_group(str(out), mode="r+")
    g.attrs["complete"] = False
    with pytest.raises(DumpFormatError, match="incomplete"):
        open_dump(out)


def test_store_with_layer_inputs_but_no_hidden_size_is_refused(synthetic_dump, tmp_path):
    """The axis sizes come from the same place as the HDF5 reader's: an ``inputs`` array
    without the ``hidden_size`` attribute is a format error, not a KeyError."""
    import zarr

    out = tmp_path / "x.zarr"
    convert_dump(synthetic_dump, out, {"id": "rans"})
    g = zarr.open_group(str(out), mode="r+")
    g.create_array("inputs", shape=(2, 4, 8), dtype="float32")
    with pytest.raises(DumpFormatError, match="'inputs'"):
        open_dump(out)
