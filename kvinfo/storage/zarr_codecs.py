"""kvinfo codecs as zarr v3 codecs (names ``kvinfo.<id>``).

zarr v3 splits a chunk's codec pipeline into array-to-array, one array-to-bytes and
bytes-to-bytes codecs. kvinfo's codecs map onto it by what they need:

* the entropy coders (``kvinfo.rans``, ``kvinfo.huffman``, ``kvinfo.arith``,
  ``kvinfo.constriction-ans``, ``kvinfo.constriction-range``) are **bytes-to-bytes**: they
  code the chunk's bytes as uint8 symbols after zarr's ``bytes`` codec, exactly, with one
  symbol lane per byte position of an element (``(elements, itemsize)``), so that a coder's
  per-channel tables model a float's exponent byte apart from its mantissa bytes;
* the float codecs (``kvinfo.lossless``, exact; ``kvinfo.uniform``, ``kvinfo.ecsq``,
  ``kvinfo.turbo``, ``kvinfo.klt``, lossy) are **array-to-bytes**: they need the chunk's
  dtype and shape (tokens and head_dim), so they replace zarr's ``bytes`` codec
  (``serializer=`` in :func:`zarr.create_array`).

zarr has no bfloat16 data type: a bfloat16 array is stored as uint16 bit patterns, and the
float codecs take ``dtype="bfloat16"`` to read those patterns as bfloat16 (what ``kvinfo
convert`` writes). Every class is registered with zarr through the ``zarr.codecs`` entry
point (pyproject.toml) and by :func:`register_zarr_codecs` (run when :mod:`kvinfo.storage`
is imported), so an array written with them opens in a fresh interpreter.

Examples
--------
>>> import numpy as np, zarr
>>> from kvinfo.storage import zarr_codec
>>> x = np.random.default_rng(0).standard_normal((2, 64, 16)).astype(np.float32)
>>> z = zarr.create_array(store={}, shape=x.shape, chunks=(1, 64, 16), dtype="float32",
...                       serializer=zarr_codec({"id": "lossless"}), compressors=None)
>>> z[:] = x
>>> bool(np.array_equal(z[:], x))
True
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from zarr.abc.codec import ArrayBytesCodec, BytesBytesCodec
from zarr.core.common import parse_named_configuration

from ..errors import CodecConfigError, StorageError
from .numcodecs_codecs import (
    ARRAY_CODEC_IDS,
    BFLOAT16,
    CODER_IDS,
    NAMESPACE,
    SELF_CONTAINED_IDS,
    kvinfo_codec_of,
)

__all__ = [
    "KvinfoBytesBytesCodec",
    "KvinfoArrayBytesCodec",
    "zarr_codec",
    "zarr_codec_classes",
    "register_zarr_codecs",
]


@contextlib.contextmanager
def _one_kernel_thread():
    """Run the codec's Numba kernels on the calling thread only: zarr already codes the
    chunks of a write concurrently on its worker threads, and a parallel kernel inside
    each would start one thread team per worker (oversubscribed cores, and OpenMP teams
    that spin after every region). Numba's thread count is per calling thread."""
    import numba

    before = numba.get_num_threads()
    if before == 1:
        yield
        return
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


class _KvinfoZarrMixin:
    """Config handling shared by both kinds: the kvinfo config stored as canonical JSON
    (so the frozen dataclass hashes), the codec built once."""

    kvinfo_id: str = ""
    configuration_json: str

    def _init(self, configuration: dict | None) -> None:
        cfg = dict(configuration or {})
        cfg.pop("id", None)
        codec, view = kvinfo_codec_of(self.kvinfo_id, cfg)  # validates now
        full = codec.get_config()
        full.pop("id")
        if view is not None:
            full["dtype"] = view
        object.__setattr__(self, "configuration_json", json.dumps(full, sort_keys=True))

    @property
    def configuration(self) -> dict:
        return json.loads(self.configuration_json)

    @cached_property
    def _pair(self):
        return kvinfo_codec_of(self.kvinfo_id, self.configuration)

    @classmethod
    def from_dict(cls, data: dict):
        _, cfg = parse_named_configuration(data, NAMESPACE + cls.kvinfo_id,
                                           require_configuration=False)
        return cls(**(cfg or {}))

    def to_dict(self) -> dict:
        return {"name": NAMESPACE + self.kvinfo_id, "configuration": self.configuration}

    def compute_encoded_size(self, _input_byte_length: int, _chunk_spec) -> int:
        raise NotImplementedError  # variable-size output


@dataclass(frozen=True)
class KvinfoBytesBytesCodec(_KvinfoZarrMixin, BytesBytesCodec):
    """A kvinfo entropy coder as a zarr bytes-to-bytes codec (chunk bytes as uint8 symbols)."""

    is_fixed_size = False
    configuration_json: str = "{}"

    def __init__(self, **configuration) -> None:
        self._init(configuration)

    def _encode_sync(self, chunk_bytes, chunk_spec):
        a = np.asarray(chunk_bytes.as_numpy_array()).reshape(-1).view(np.uint8)
        itemsize = chunk_spec.dtype.to_native_dtype().itemsize
        if itemsize > 1 and a.size % itemsize == 0:
            # one symbol lane per byte of an element: the coder's per-channel tables then
            # model the exponent byte apart from the mantissa bytes
            a = a.reshape(-1, itemsize)
        with _one_kernel_thread():
            data = self._pair[0].encode(a)
        return chunk_spec.prototype.buffer.from_bytes(data)

    def _decode_sync(self, chunk_bytes, chunk_spec):
        with _one_kernel_thread():
            out = self._pair[0].decode(chunk_bytes.to_bytes())
        return chunk_spec.prototype.buffer.from_array_like(
            np.ascontiguousarray(out).reshape(-1).view(np.uint8)
        )

    async def _encode_single(self, chunk_bytes, chunk_spec):
        return await asyncio.to_thread(self._encode_sync, chunk_bytes, chunk_spec)

    async def _decode_single(self, chunk_bytes, chunk_spec):
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)


@dataclass(frozen=True)
class KvinfoArrayBytesCodec(_KvinfoZarrMixin, ArrayBytesCodec):
    """A kvinfo float codec as a zarr array-to-bytes codec (it sees the chunk's dtype and
    shape)."""

    is_fixed_size = False
    configuration_json: str = "{}"

    def __init__(self, **configuration) -> None:
        self._init(configuration)

    def validate(self, *, shape, dtype, chunk_grid) -> None:
        native = dtype.to_native_dtype()
        view = self.configuration.get("dtype")
        if view == BFLOAT16:
            if native != np.dtype(np.uint16):
                raise StorageError(
                    f"{NAMESPACE}{self.kvinfo_id} with dtype='bfloat16' stores uint16 bit "
                    f"patterns; the array's dtype is {native}"
                )
        elif native.kind != "f":
            raise StorageError(
                f"{NAMESPACE}{self.kvinfo_id}: expected a float array (or uint16 with "
                f"dtype='bfloat16'); the array's dtype is {native}"
            )

    def _to_codec(self, a: np.ndarray) -> np.ndarray:
        if self._pair[1] == BFLOAT16:
            import ml_dtypes

            return np.ascontiguousarray(a).view(ml_dtypes.bfloat16)
        return np.ascontiguousarray(a)

    def _encode_sync(self, chunk_array, chunk_spec):
        a = self._to_codec(np.asarray(chunk_array.as_numpy_array()))
        with _one_kernel_thread():
            data = self._pair[0].encode(a)
        return chunk_spec.prototype.buffer.from_bytes(data)

    def _decode_sync(self, chunk_bytes, chunk_spec):
        with _one_kernel_thread():
            out = np.asarray(self._pair[0].decode(chunk_bytes.to_bytes()))
        native = chunk_spec.dtype.to_native_dtype()
        if out.dtype.itemsize != native.itemsize or out.size != int(np.prod(chunk_spec.shape)):
            raise StorageError(
                f"{NAMESPACE}{self.kvinfo_id}: a chunk decoded to {out.dtype} {out.shape}; the "
                f"array expects {native} {tuple(chunk_spec.shape)}"
            )
        out = np.ascontiguousarray(out).view(native).reshape(chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(out)

    async def _encode_single(self, chunk_array, chunk_spec):
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    async def _decode_single(self, chunk_bytes, chunk_spec):
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)


def _class_name(kvinfo_id: str) -> str:
    return "".join(p.capitalize() for p in kvinfo_id.split("-")) + "ZarrCodec"


def _make(kvinfo_id: str) -> type:
    base = KvinfoBytesBytesCodec if kvinfo_id in CODER_IDS else KvinfoArrayBytesCodec
    cls = type(
        _class_name(kvinfo_id),
        (base,),
        {
            "kvinfo_id": kvinfo_id,
            "__module__": __name__,
            "__doc__": f"kvinfo's ``{kvinfo_id}`` as the zarr v3 codec ``{NAMESPACE}{kvinfo_id}``"
            f" ({'bytes-to-bytes' if base is KvinfoBytesBytesCodec else 'array-to-bytes'}).",
        },
    )
    return dataclass(frozen=True, init=False)(cls)


_CLASSES = {cid: _make(cid) for cid in SELF_CONTAINED_IDS}
RansZarrCodec = _CLASSES["rans"]
HuffmanZarrCodec = _CLASSES["huffman"]
ArithZarrCodec = _CLASSES["arith"]
ConstrictionAnsZarrCodec = _CLASSES["constriction-ans"]
ConstrictionRangeZarrCodec = _CLASSES["constriction-range"]
LosslessZarrCodec = _CLASSES["lossless"]
UniformZarrCodec = _CLASSES["uniform"]
EcsqZarrCodec = _CLASSES["ecsq"]
TurboZarrCodec = _CLASSES["turbo"]
KltZarrCodec = _CLASSES["klt"]
__all__ += [_class_name(c) for c in SELF_CONTAINED_IDS]


def zarr_codec_classes() -> dict[str, type]:
    """zarr codec name (``kvinfo.<id>``) -> class, for every self-contained kvinfo codec."""
    return {NAMESPACE + cid: cls for cid, cls in _CLASSES.items()}


def zarr_codec(config: dict, *, dtype: str | None = None):
    """The zarr codec of a kvinfo codec config (``{"id": "rans", ...}``).

    ``dtype="bfloat16"`` makes a float codec read uint16 chunks as bfloat16 bit patterns.
    Raises :class:`~kvinfo.errors.CodecConfigError` for an id with no zarr codec (the
    model-aware codecs, or an unknown id).
    """
    if not isinstance(config, dict) or "id" not in config:
        raise CodecConfigError(f"a codec config must be a JSON object with an 'id'; got {config!r}")
    cid = str(config["id"])
    if cid.startswith(NAMESPACE):
        cid = cid[len(NAMESPACE):]
    if cid not in _CLASSES:
        raise CodecConfigError(
            f"codec {cid!r} has no zarr codec; expected one of {', '.join(SELF_CONTAINED_IDS)} "
            "(codecs that need the model cannot be storage codecs)"
        )
    cfg = {k: v for k, v in config.items() if k != "id"}
    if dtype is not None and cid in ARRAY_CODEC_IDS:
        cfg["dtype"] = dtype
    return _CLASSES[cid](**cfg)


def register_zarr_codecs() -> None:
    """Register every class with zarr's codec registry (what the entry point does lazily)."""
    from zarr.registry import register_codec

    for name, cls in zarr_codec_classes().items():
        register_codec(name, cls)
