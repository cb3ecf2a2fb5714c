"""Constants and low-level helpers of the kvdump HDF5 format (see ``docs/dump-format.md``).

This module is the layer closest to HDF5: dataset names, attribute names, the storage of
each float dtype, the chunk shape and the version check. :mod:`._reader` and :mod:`._writer`
build the friendly API on top of it.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass

import numpy as np

from ..errors import DumpFormatError

FORMAT = "kvinfo.kvdump"
#: the newest format version this kvinfo reads and writes. A writer records the lowest
#: version that describes its file: 1 for keys, values, queries and pre-RoPE keys only (so
#: that older kvinfo still reads such dumps), 2 once the file holds layer inputs
#: (:data:`INPUT_DATASETS`).
FORMAT_VERSION = 2
#: the format version that introduced each optional dataset (absent: version 1)
DATASET_VERSIONS = {"inputs": 2, "residual": 2}

#: datasets of shape (num_layers, heads, num_tokens, head_dim); value: which head count applies
TENSOR_DATASETS = {
    "keys": "num_kv_heads",
    "values": "num_kv_heads",
    "queries": "num_heads",
    "keys_pre_rope": "num_kv_heads",
}
KINDS = tuple(TENSOR_DATASETS)
#: per-layer activation datasets of shape (num_layers, num_tokens, hidden_size), format 2:
#: ``inputs`` is what enters the attention projections (the normed hidden state X),
#: ``residual`` the residual stream entering the layer (before its input norm)
INPUT_DATASETS = ("inputs", "residual")

#: logical dtype name -> (numpy storage dtype, how it is stored)
DTYPES = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),  # bit patterns; read back as ml_dtypes.bfloat16
}

#: storage bits of each logical dtype -> unsigned view dtype for bit-pattern access
BITS_VIEW = {"float32": np.dtype("<u4"), "float16": np.dtype("<u2"), "bfloat16": np.dtype("<u2")}

#: tokens per HDF5 chunk along the token axis; one chunk never mixes layers or heads
TOKENS_PER_CHUNK = 1024

#: sane ranges of the geometry attributes (inclusive)
MAX_LAYERS = 4096
MAX_HEADS = 4096
MAX_HEAD_DIM = 65536
MAX_HIDDEN = 1 << 20
MAX_TOKENS = 1 << 40

REQUIRED_ATTRS = (
    "format",
    "format_version",
    "model",
    "dtype",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
)


def logical_numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype in which values of logical dtype ``name`` are returned."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    try:
        return np.dtype(DTYPES[name].newbyteorder("="))
    except KeyError:
        raise DumpFormatError(
            f"unknown dtype {name!r}; expected one of {', '.join(DTYPES)}"
        ) from None


def dtype_name(dtype) -> str:
    """The logical dtype name of a numpy or torch dtype (``"bfloat16"``, ``"float16"``...)."""
    s = str(dtype).replace("torch.", "")
    if s in DTYPES:
        return s
    raise DumpFormatError(f"unsupported KV dtype {s!r}; expected one of {', '.join(DTYPES)}")


def to_storage(array: np.ndarray, name: str) -> np.ndarray:
    """Bit-exact storage representation of ``array`` (logical dtype ``name``)."""
    return np.ascontiguousarray(array).view(DTYPES[name]) if name == "bfloat16" else array


def from_storage(array: np.ndarray, name: str) -> np.ndarray:
    """Inverse of :func:`to_storage`: the logical values, no copy where possible."""
    return array.view(logical_numpy_dtype(name))


def check_version(attrs, where: str) -> None:
    """Refuse files that are not kvdumps or whose format version is unknown."""
    fmt = attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != FORMAT:
        raise DumpFormatError(
            f"{where}: not a kvinfo KV dump (expected attribute format={FORMAT!r}, found {fmt!r})"
        )
    ver = attrs.get("format_version")
    if not _is_int(ver):
        raise DumpFormatError(
            f"{where}: root attribute 'format_version' must be an integer; found "
            + ("nothing" if ver is None else f"{_short(ver)} ({type(ver).__name__})")
        )
    ver = int(ver)
    if ver > FORMAT_VERSION:
        raise DumpFormatError(
            f"{where}: format version {ver} is newer than this kvinfo reads ({FORMAT_VERSION}); "
            "upgrade kvinfo"
        )
    if ver < 1:
        raise DumpFormatError(f"{where}: invalid format version {ver}")


# -- validation -----------------------------------------------------------------------------
@dataclass(frozen=True)
class AttrSpec:
    """What a root attribute must hold.

    ``kind`` is ``"str"``, ``"int"``, ``"bool"`` or ``"json"`` (JSON text of an object);
    ``lo``/``hi`` bound an int (inclusive); ``choices`` lists the allowed strings.
    """

    kind: str
    required: bool = False
    lo: int | None = None
    hi: int | None = None
    choices: tuple = ()


#: every root attribute kvinfo knows, with its type and range (docs/dump-format.md)
ATTRIBUTES: dict[str, AttrSpec] = {
    "format": AttrSpec("str", True, choices=(FORMAT,)),
    "format_version": AttrSpec("int", True, 1, FORMAT_VERSION),
    "model": AttrSpec("str", True),
    "model_type": AttrSpec("str"),
    "weights_checksum": AttrSpec("str"),
    "dtype": AttrSpec("str", True, choices=tuple(DTYPES)),
    "num_layers": AttrSpec("int", True, 1, MAX_LAYERS),
    "num_heads": AttrSpec("int", True, 1, MAX_HEADS),
    "num_kv_heads": AttrSpec("int", True, 1, MAX_HEADS),
    "head_dim": AttrSpec("int", True, 1, MAX_HEAD_DIM),
    "hidden_size": AttrSpec("int", False, 1, MAX_HIDDEN),
    "num_tokens": AttrSpec("int", False, 1, MAX_TOKENS),
    "num_sequences": AttrSpec("int", False, 1, MAX_TOKENS),
    "rope": AttrSpec("json"),
    "capture": AttrSpec("json"),
    "kvinfo_version": AttrSpec("str"),
    "created": AttrSpec("str"),
    "complete": AttrSpec("bool"),
}


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset must be: an HDF5 dataset (not a group) of this shape and dtype.

    ``shape`` lists, per axis, a dimension name: a root attribute (``num_layers``,
    ``num_kv_heads``...) or ``num_tokens`` (the length of ``token_ids``) or
    ``num_sequences+1``. ``dtype`` is ``"tensor"`` (exactly the storage dtype of the dump's
    ``dtype``, see :data:`DTYPES`) or ``"int64"`` (exactly ``<i8``).
    """

    shape: tuple
    dtype: str
    required: bool = False
    axes: str = "layer,head,token,channel"


_TENSOR_SHAPE = ("num_layers", "num_kv_heads", "num_tokens", "head_dim")
_INPUT_SHAPE = ("num_layers", "num_tokens", "hidden_size")

#: every dataset kvinfo knows. A dataset another feature adds is declared here and is then
#: validated by the same rules, before any of it is read.
DATASETS: dict[str, DatasetSpec] = {
    "keys": DatasetSpec(_TENSOR_SHAPE, "tensor", True),
    "values": DatasetSpec(_TENSOR_SHAPE, "tensor", True),
    "queries": DatasetSpec(("num_layers", "num_heads", "num_tokens", "head_dim"), "tensor"),
    "keys_pre_rope": DatasetSpec(_TENSOR_SHAPE, "tensor"),
    "token_ids": DatasetSpec(("num_tokens",), "int64", True),
    "sequence_offsets": DatasetSpec(("num_sequences+1",), "int64", True),
    "inputs": DatasetSpec(_INPUT_SHAPE, "tensor", axes="layer,token,channel"),
    "residual": DatasetSpec(_INPUT_SHAPE, "tensor", axes="layer,token,channel"),
}


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _is_int(v) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def check_attribute(name: str, value, where: str):
    """Check one root attribute against :data:`ATTRIBUTES`; return its decoded value.

    Strings come back as ``str``, ints as ``int``, JSON attributes as the decoded object;
    an attribute kvinfo does not know comes back decoded as far as it can be.

    Raises
    ------
    DumpFormatError
        Naming the attribute and what was expected.
    """
    spec = ATTRIBUTES.get(name)
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise DumpFormatError(
                f"{where}: root attribute {name!r} must be UTF-8 text; found undecodable bytes"
            ) from None
    if spec is None:
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, str) and value[:1] in "{[":
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                return value
        return value

    def bad(expected: str):
        return DumpFormatError(
            f"{where}: root attribute {name!r} must be {expected}; found {_short(value)} "
            f"({type(value).__name__})"
        )

    if spec.kind == "int":
        rng = f" in {spec.lo}..{spec.hi}" if spec.lo is not None else ""
        if not _is_int(value):
            raise bad(f"an integer{rng}")
        value = int(value)
        if (spec.lo is not None and value < spec.lo) or (spec.hi is not None and value > spec.hi):
            raise bad(f"an integer{rng}")
        return value
    if spec.kind == "bool":
        if not isinstance(value, bool | np.bool_):
            raise bad("a boolean")
        return bool(value)
    if not isinstance(value, str):
        raise bad("JSON text of an object" if spec.kind == "json" else "a string")
    if spec.kind == "json":
        try:
            obj = json.loads(value)
        except json.JSONDecodeError as exc:
            raise bad(f"valid JSON text of an object (JSON error: {exc.msg})") from None
        if not isinstance(obj, dict):
            raise bad("JSON text of an object")
        return obj
    if spec.choices and value not in spec.choices:
        raise bad("one of " + ", ".join(repr(c) for c in spec.choices))
    if name == "created":
        try:
            _dt.datetime.fromisoformat(value)
        except ValueError:
            raise bad("an ISO-8601 time") from None
    return value


def check_attributes(raw: dict, where: str) -> dict:
    """Check every root attribute (:func:`check_attribute`) and the relations between them.

    Returns the decoded attributes. The ``format`` and ``format_version`` checks come first
    (:func:`check_version`), so that a file that is not a kvdump, or is of a newer version,
    says so rather than naming some other attribute.
    """
    check_version(raw, where)
    missing = [a for a, spec in ATTRIBUTES.items() if spec.required and a not in raw]
    if missing:
        raise DumpFormatError(f"{where}: missing root attributes {missing}")
    attrs = {k: check_attribute(k, v, where) for k, v in raw.items()}
    if attrs["num_kv_heads"] > attrs["num_heads"] or attrs["num_heads"] % attrs["num_kv_heads"]:
        raise DumpFormatError(
            f"{where}: root attributes num_heads={attrs['num_heads']} and "
            f"num_kv_heads={attrs['num_kv_heads']}: expected num_heads to be a multiple of "
            "num_kv_heads"
        )
    return attrs


def check_dataset(obj, name: str, spec: DatasetSpec, dims: dict, dtype: str, where: str):
    """Check that ``obj`` (what the file holds under ``name``) is the dataset ``spec`` says.

    ``dims`` maps the dimension names of :class:`DatasetSpec` to their values; with
    ``dims=None`` only the kind, dtype and number of axes are checked.
    """
    import h5py

    if not isinstance(obj, h5py.Dataset):
        found = "a group" if isinstance(obj, h5py.Group) else type(obj).__name__
        raise DumpFormatError(f"{where}: {name!r} is {found}; expected an HDF5 dataset")
    want_dtype = DTYPES[dtype] if spec.dtype == "tensor" else np.dtype("<i8")
    try:
        found_dtype = obj.dtype
    except (OSError, TypeError, ValueError) as exc:
        raise DumpFormatError(
            f"{where}: dataset {name!r} has an unreadable dtype ({exc})"
        ) from None
    if found_dtype != want_dtype:
        how = (f"the storage of dtype {dtype!r}, {want_dtype.str}" if spec.dtype == "tensor"
               else "<i8")
        raise DumpFormatError(
            f"{where}: dataset {name!r} has dtype {found_dtype}; expected {how}"
        )
    if dims is None:
        if len(obj.shape or ()) != len(spec.shape):
            raise DumpFormatError(
                f"{where}: dataset {name!r} has {len(obj.shape or ())} axes; expected "
                f"{len(spec.shape)} ({', '.join(spec.shape)})"
            )
        return
    want_shape = tuple(dims[d] for d in spec.shape)
    if obj.shape != want_shape:
        named = ", ".join(f"{d}={v}" for d, v in zip(spec.shape, want_shape, strict=True))
        raise DumpFormatError(
            f"{where}: dataset {name!r} has shape {obj.shape}; expected {want_shape} ({named})"
        )
    if obj.compression is not None or obj.compression_opts is not None:
        raise DumpFormatError(
            f"{where}: dataset {name!r} uses the filter {obj.compression!r}; expected none "
            "(kvdumps store the cache's bytes uncompressed)"
        )
    nominal = int(np.prod(want_shape, dtype=np.int64)) * want_dtype.itemsize
    try:
        stored = int(obj.id.get_storage_size())
    except (OSError, TypeError, ValueError):  # pragma: no cover - defensive
        stored = nominal
    if stored < nominal:
        raise DumpFormatError(
            f"{where}: dataset {name!r} stores {stored} bytes but its shape {want_shape} needs "
            f"{nominal}; expected every element written (truncated or not written by kvinfo)"
        )
    if spec.dtype == "tensor":
        for key, want in (("dtype", dtype), ("axes", spec.axes)):
            if key in obj.attrs:
                got = obj.attrs[key]
                got = got.decode("utf-8", "replace") if isinstance(got, bytes) else got
                if got != want:
                    raise DumpFormatError(
                        f"{where}: dataset {name!r} attribute {key!r} is {_short(got)}; "
                        f"expected {want!r}"
                    )
