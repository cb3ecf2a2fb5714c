"""The reader validates every dataset and root attribute (issue 12, finding 3).

Each case edits a good dump the way a hostile or buggy writer could and expects a
:class:`DumpFormatError` naming the field and what was expected, and from ``info``,
``analyze`` and ``bench`` one line on stderr with exit status 2 (no traceback).
"""

from __future__ import annotations

import pathlib
import shutil

import h5py
import numpy as np
import pytest

from kvinfo.cli import main
from kvinfo.dumps import open_dump, write_synthetic_dump
from kvinfo.dumps._format import ATTRIBUTES, DATASETS
from kvinfo.errors import DumpFormatError


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_synthetic_dump(tmp_path_factory.mktemp("valid") / "good.h5", num_layers=1,
                                num_kv_heads=2, num_heads=4, num_tokens=48, head_dim=8)


def _replace(f, name, new):
    del f[name]
    new(f, name)


def _keys_as(dtype):
    def edit(f):
        data = f["keys"][...].view(np.uint32).astype(dtype)
        _replace(f, "keys", lambda g, n: g.create_dataset(n, data=data))
    return edit


def _attr(name, value):
    def edit(f):
        f.attrs[name] = value
    return edit


def _group(name):
    def edit(f):
        _replace(f, name, lambda g, n: g.create_group(n))
    return edit


def _sparse_keys(f):  # a shape claim without the data behind it
    shape = f["keys"].shape
    _replace(f, "keys", lambda g, n: g.create_dataset(n, shape=shape, dtype="<f4",
                                                       chunks=(1, 1, 16, shape[3])))


def _compressed_keys(f):
    data = f["keys"][...]
    _replace(f, "keys", lambda g, n: g.create_dataset(n, data=data, compression="gzip"))


def _float_token_ids(f):
    data = f["token_ids"][...].astype(np.float64)
    _replace(f, "token_ids", lambda g, n: g.create_dataset(n, data=data))


def _short_values(f):
    data = f["values"][:, :, :40, :]
    _replace(f, "values", lambda g, n: g.create_dataset(n, data=data))


def _queries_wrong_heads(f):
    data = f["queries"][:, :2]
    _replace(f, "queries", lambda g, n: g.create_dataset(n, data=data))


def _dataset_dtype_attr(f):
    f["keys"].attrs["dtype"] = "float16"


CASES = {
    "uint32 keys in a float32 dump": (_keys_as(np.uint32), "'keys' has dtype uint32; expected"),
    "int32 keys": (_keys_as(np.int32), "'keys' has dtype int32"),
    "keys stored as a group": (_group("keys"), "'keys' is a group; expected an HDF5 dataset"),
    "queries stored as a group": (_group("queries"), "'queries' is a group"),
    "token_ids as a group": (_group("token_ids"), "'token_ids' is a group"),
    "num_heads 2**40": (_attr("num_heads", 2**40), "'num_heads' must be an integer in 1..4096"),
    "num_layers 0": (_attr("num_layers", 0), "'num_layers' must be an integer in 1.."),
    "head_dim a float": (_attr("head_dim", 8.0), "'head_dim' must be an integer"),
    "format_version a string": (_attr("format_version", "1"),
                                "'format_version' must be an integer"),
    "rope invalid JSON": (_attr("rope", "{not json"), "'rope' must be valid JSON"),
    "capture invalid JSON": (_attr("capture", "{'a': 1}"), "'capture' must be valid JSON"),
    "capture JSON not an object": (_attr("capture", "[1, 2]"), "'capture' must be JSON text"),
    "dtype unknown": (_attr("dtype", "int8"), "'dtype' must be one of"),
    "model an int": (_attr("model", 3), "'model' must be a string"),
    "complete a string": (_attr("complete", "yes"), "'complete' must be a boolean"),
    "created not a time": (_attr("created", "yesterday"), "'created' must be an ISO-8601"),
    "num_tokens disagrees": (_attr("num_tokens", 47), "'num_tokens' is 47; the datasets hold 48"),
    "kv heads do not divide heads": (_attr("num_kv_heads", 3), "multiple of num_kv_heads"),
    "keys shape claim without data": (_sparse_keys, "stores 0 bytes but its shape"),
    "compressed keys": (_compressed_keys, "uses the filter 'gzip'"),
    "float token ids": (_float_token_ids, "'token_ids' has dtype float64; expected <i8"),
    "values shorter than token_ids": (_short_values, "'values' has shape (1, 2, 40, 8)"),
    "queries with kv-head count": (_queries_wrong_heads, "'queries' has shape (1, 2, 48, 8)"),
    "dataset dtype attribute": (_dataset_dtype_attr, "'keys' attribute 'dtype' is 'float16'"),
}


@pytest.fixture(scope="module")
def bad(good, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_dumps")
    out = {}
    for i, (name, (edit, _)) in enumerate(CASES.items()):
        p = folder / f"bad{i}.h5"
        shutil.copy(good, p)
        with h5py.File(p, "a") as f:
            edit(f)
        out[name] = p
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_reader_refuses(bad, case):
    with pytest.raises(DumpFormatError) as info:
        open_dump(bad[case]).close()
    msg = str(info.value)
    assert CASES[case][1] in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize("case", ["uint32 keys in a float32 dump", "keys stored as a group",
                                  "num_heads 2**40", "rope invalid JSON"])
@pytest.mark.parametrize("command", ["info", "analyze", "bench"])
def test_commands_exit_2_in_one_line(bad, case, command, capsys):
    argv = {"info": ["info", str(bad[case])],
            "analyze": ["analyze", str(bad[case]), "--no-progress"],
            "bench": ["bench", str(bad[case]), "--codec", '{"id": "uniform", "bits": 4}',
                      "--no-gpu", "--no-progress"]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"kvinfo {command}: error: ")
    assert CASES[case][1] in err and "Traceback" not in err


def test_good_dump_still_reads(good):
    with open_dump(good) as d:
        assert d.num_heads == 4 and isinstance(d.meta["rope"], dict)
        assert d.describe()["format_version"] == 1


def test_every_declared_name_is_documented():
    text = open(pathlib.Path(__file__).resolve().parents[2] / "docs" / "dump-format.md").read()
    for name in [*DATASETS, *ATTRIBUTES]:
        assert f"`{name}`" in text, name
