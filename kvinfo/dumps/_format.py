"""Constants and low-level helpers of the kvdump HDF5 format (see ``docs/dump-format.md``).

This module is the layer closest to HDF5: dataset names, attribute names, the storage of
each float dtype, the chunk shape and the version check. :mod:`._reader` and :mod:`._writer`
build the friendly API on top of it.
"""

from __future__ import annotations

import numpy as np

from ..errors import DumpFormatError

FORMAT = "kvinfo.kvdump"
FORMAT_VERSION = 1

#: datasets of shape (num_layers, heads, num_tokens, head_dim); value: which head count applies
TENSOR_DATASETS = {
    "keys": "num_kv_heads",
    "values": "num_kv_heads",
    "queries": "num_heads",
    "keys_pre_rope": "num_kv_heads",
}
KINDS = tuple(TENSOR_DATASETS)

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
    try:
        ver = int(attrs.get("format_version"))
    except (TypeError, ValueError):
        raise DumpFormatError(
            f"{where}: format_version attribute missing or not an integer"
        ) from None
    if ver > FORMAT_VERSION:
        raise DumpFormatError(
            f"{where}: format version {ver} is newer than this kvinfo reads ({FORMAT_VERSION}); "
            "upgrade kvinfo"
        )
    if ver < 1:
        raise DumpFormatError(f"{where}: invalid format version {ver}")
