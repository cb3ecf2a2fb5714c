"""kvinfo codecs where users keep arrays: numcodecs and zarr v3, and dump conversion.

* :mod:`kvinfo.storage.numcodecs_codecs`: every self-contained kvinfo codec as a numcodecs
  codec ``kvinfo.<id>`` (entry point ``numcodecs.codecs``);
* :mod:`kvinfo.storage.zarr_codecs`: the same codecs as zarr v3 codecs (entropy coders
  bytes-to-bytes, float codecs array-to-bytes; entry point ``zarr.codecs``);
* :mod:`kvinfo.storage.convert`: :func:`convert_dump`, a kvdump's tensors into a zarr store
  compressed with any kvinfo codec (``kvinfo convert``); :func:`kvinfo.open_dump` reads it
  back.

numcodecs and zarr are the optional extra ``kvinfo[storage]`` (also ``kvinfo[zarr]``).
Importing this package registers the codecs with both (the entry points do it without the
import). See ``docs/storage.md``.
"""

from __future__ import annotations

from .numcodecs_codecs import (
    ARRAY_CODEC_IDS,
    CODER_IDS,
    NAMESPACE,
    SELF_CONTAINED_IDS,
    KvinfoNumcodec,
    numcodec_classes,
    register_numcodecs,
)
from .zarr_codecs import (
    KvinfoArrayBytesCodec,
    KvinfoBytesBytesCodec,
    register_zarr_codecs,
    zarr_codec,
    zarr_codec_classes,
)

__all__ = [
    "NAMESPACE",
    "CODER_IDS",
    "ARRAY_CODEC_IDS",
    "SELF_CONTAINED_IDS",
    "KvinfoNumcodec",
    "numcodec_classes",
    "register_numcodecs",
    "KvinfoBytesBytesCodec",
    "KvinfoArrayBytesCodec",
    "zarr_codec",
    "zarr_codec_classes",
    "register_zarr_codecs",
    "convert_dump",
]

register_numcodecs()
register_zarr_codecs()


def __getattr__(name):
    if name == "convert_dump":
        from .convert import convert_dump

        return convert_dump
    raise AttributeError(name)
