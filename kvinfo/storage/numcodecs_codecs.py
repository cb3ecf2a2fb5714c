"""kvinfo codecs as numcodecs codecs (ids ``kvinfo.<id>``), for HDF5, zarr v2 and any tool
that takes a numcodecs codec.

Every self-contained kvinfo codec has a numcodecs class here: the entropy coders
(``kvinfo.rans``, ``kvinfo.huffman``, ``kvinfo.arith``, ``kvinfo.constriction-ans``,
``kvinfo.constriction-range``), the exact float codec ``kvinfo.lossless`` and the lossy KV
codecs (``kvinfo.uniform``, ``kvinfo.ecsq``, ``kvinfo.turbo``, and ``kvinfo.klt``, whose
``basis`` names a calibration file by path). Codecs that need the model (``xquant``,
``tokens``) cannot be: a numcodecs codec sees one array and nothing else.

The config is the kvinfo codec's own config with the namespaced id, so
``numcodecs.get_codec({"id": "kvinfo.rans", "precision_bits": 12})`` builds kvinfo's
:class:`~kvinfo.codecs.rans.RansCodec` inside a numcodecs wrapper. The package registers
them through the ``numcodecs.codecs`` entry point (pyproject.toml), so that works in a fresh
interpreter without importing kvinfo first.

What each accepts: the entropy coders code integer symbols (uint8, uint16, int32 arrays, any
shape); any other buffer (float arrays, bytes) is coded as its bytes, uint8 symbols shaped
``(elements, itemsize)`` (one lane per byte position, so per-channel tables model a float's
exponent byte apart from its mantissa bytes), and decodes to that uint8 array (or, with
``out``, into ``out``). ``kvinfo.lossless`` takes float16, bfloat16,
float32 or float64 arrays of any shape and returns them bit for bit. The lossy codecs take
float arrays shaped ``(..., tokens, head_dim)`` and return a reconstruction of the same
shape and dtype, within the codec's stated distortion (``max_abs_error`` of ``uniform`` and
``ecsq``). ``dtype="bfloat16"`` in the config reads uint16 input as bfloat16 bit patterns
(how HDF5 and zarr store bfloat16) and returns uint16.

Examples
--------
>>> import numpy as np, numcodecs
>>> import kvinfo.storage  # registers the codecs (the entry point does it without this)
>>> codec = numcodecs.get_codec({"id": "kvinfo.rans"})
>>> x = np.random.default_rng(0).integers(0, 8, size=1000).astype(np.uint8)
>>> bool(np.array_equal(codec.decode(codec.encode(x)), x))
True
>>> codec.get_config()["id"]
'kvinfo.rans'
"""

from __future__ import annotations

import numpy as np
from numcodecs.abc import Codec as _NumcodecsCodec
from numcodecs.compat import ensure_contiguous_ndarray_like, ndarray_copy

from ..codecs import get_codec as _kvinfo_get_codec
from ..errors import CodecConfigError

__all__ = [
    "CODER_IDS",
    "ARRAY_CODEC_IDS",
    "SELF_CONTAINED_IDS",
    "NAMESPACE",
    "KvinfoNumcodec",
    "numcodec_classes",
    "register_numcodecs",
    "kvinfo_codec_of",
    "BFLOAT16",
]

#: the id prefix of every kvinfo codec outside kvinfo (numcodecs ids, zarr codec names)
NAMESPACE = "kvinfo."
#: entropy coders of integer symbols (zarr: bytes-to-bytes)
CODER_IDS = ("rans", "huffman", "arith", "constriction-ans", "constriction-range")
#: codecs that need the array's dtype and shape (zarr: array-to-bytes)
ARRAY_CODEC_IDS = ("lossless", "uniform", "ecsq", "turbo", "klt")
SELF_CONTAINED_IDS = CODER_IDS + ARRAY_CODEC_IDS
#: the only value of the wrapper-level ``dtype`` option
BFLOAT16 = "bfloat16"

_SYMBOL_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int32))


def kvinfo_codec_of(kvinfo_id: str, config: dict):
    """``(kvinfo codec, wrapper dtype option)`` for a namespaced config without its id.

    The option ``dtype`` (``None`` or ``"bfloat16"``) belongs to the wrapper; everything
    else is the kvinfo codec's config. Raises :class:`~kvinfo.errors.CodecConfigError`.
    """
    config = dict(config)
    config.pop("id", None)
    view = config.pop("dtype", None)
    if view not in (None, BFLOAT16):
        raise CodecConfigError(
            f"{NAMESPACE}{kvinfo_id}: dtype must be 'bfloat16' (uint16 data read as bfloat16 "
            f"bit patterns) or absent; got {view!r}"
        )
    if view is not None and kvinfo_id in CODER_IDS:
        raise CodecConfigError(
            f"{NAMESPACE}{kvinfo_id}: an entropy coder codes integer symbols; dtype applies "
            "to the float codecs only"
        )
    return _kvinfo_get_codec({"id": kvinfo_id, **config}), view


def _as_bfloat16(a: np.ndarray, what: str) -> np.ndarray:
    import ml_dtypes

    if a.dtype.itemsize != 2:
        raise CodecConfigError(f"{what}: dtype 'bfloat16' needs 16-bit input; got {a.dtype}")
    return a.view(ml_dtypes.bfloat16)


class KvinfoNumcodec(_NumcodecsCodec):
    """Base of the numcodecs wrappers; a subclass per kvinfo codec sets ``kvinfo_id``.

    Parameters
    ----------
    **config
        The kvinfo codec's parameters (its ``get_config()`` without ``"id"``), plus, for the
        float codecs, ``dtype="bfloat16"`` to read 16-bit input as bfloat16 bit patterns.
    """

    codec_id: str = ""
    kvinfo_id: str = ""

    def __init__(self, **config):
        codec, view = kvinfo_codec_of(self.kvinfo_id, config)
        self._codec = codec
        self._view = view

    @property
    def kvinfo_codec(self):
        """The wrapped :class:`kvinfo.codecs.Codec`."""
        return self._codec

    def get_config(self) -> dict:
        cfg = self._codec.get_config()
        cfg["id"] = self.codec_id
        if self._view is not None:
            cfg["dtype"] = self._view
        return cfg

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        config.pop("id", None)
        return cls(**config)

    def _input(self, buf) -> np.ndarray:
        if isinstance(buf, np.ndarray):
            a = buf
        else:
            a = np.asarray(ensure_contiguous_ndarray_like(buf))
        if self.kvinfo_id in CODER_IDS:
            if a.dtype not in _SYMBOL_DTYPES:
                size = a.dtype.itemsize
                a = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
                if size > 1:
                    a = a.reshape(-1, size)  # one symbol lane per byte of an element
            return a
        if self._view == BFLOAT16:
            return _as_bfloat16(np.ascontiguousarray(a), self.codec_id)
        if a.dtype.kind != "f" and a.dtype.name != BFLOAT16:
            raise CodecConfigError(
                f"{self.codec_id}: expected a float array (float16, bfloat16, float32 or "
                f"float64; uint16 bfloat16 patterns with dtype='bfloat16'); got {a.dtype} "
                f"with shape {a.shape}"
            )
        return a

    def encode(self, buf) -> bytes:
        """Encode an array (or buffer) into one kvinfo stream."""
        return self._codec.encode(self._input(buf))

    def decode(self, buf, out=None):
        """Decode a stream; with ``out``, fill it (numcodecs' contract) and return it."""
        data = bytes(ensure_contiguous_ndarray_like(buf).view(np.uint8)) if not isinstance(
            buf, bytes | bytearray) else buf
        dec = self._codec.decode(data)
        if self._view == BFLOAT16:
            dec = dec.view(np.uint16)
        if out is not None:
            if self.kvinfo_id in CODER_IDS:
                dec = np.ascontiguousarray(dec).reshape(-1)
            o = np.asarray(out)
            if o.dtype != dec.dtype and o.nbytes == dec.nbytes:
                dec = np.ascontiguousarray(dec).view(o.dtype)
            return ndarray_copy(dec, out)
        return dec

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "id")
        return f"{type(self).__name__}({args})"


def _class_name(kvinfo_id: str) -> str:
    return "".join(p.capitalize() for p in kvinfo_id.split("-")) + "Numcodec"


def _make(kvinfo_id: str) -> type[KvinfoNumcodec]:
    cls = type(
        _class_name(kvinfo_id),
        (KvinfoNumcodec,),
        {
            "codec_id": NAMESPACE + kvinfo_id,
            "kvinfo_id": kvinfo_id,
            "__module__": __name__,
            "__doc__": f"kvinfo's ``{kvinfo_id}`` codec as the numcodecs codec "
            f"``{NAMESPACE}{kvinfo_id}``.",
        },
    )
    return cls


_CLASSES = {cid: _make(cid) for cid in SELF_CONTAINED_IDS}
RansNumcodec = _CLASSES["rans"]
HuffmanNumcodec = _CLASSES["huffman"]
ArithNumcodec = _CLASSES["arith"]
ConstrictionAnsNumcodec = _CLASSES["constriction-ans"]
ConstrictionRangeNumcodec = _CLASSES["constriction-range"]
LosslessNumcodec = _CLASSES["lossless"]
UniformNumcodec = _CLASSES["uniform"]
EcsqNumcodec = _CLASSES["ecsq"]
TurboNumcodec = _CLASSES["turbo"]
KltNumcodec = _CLASSES["klt"]
__all__ += [_class_name(c) for c in SELF_CONTAINED_IDS]


def numcodec_classes() -> dict[str, type[KvinfoNumcodec]]:
    """Namespaced id -> numcodecs class, for every self-contained kvinfo codec."""
    return {cls.codec_id: cls for cls in _CLASSES.values()}


def register_numcodecs() -> None:
    """Register every class with numcodecs (what the entry point does lazily)."""
    import numcodecs

    for cid, cls in numcodec_classes().items():
        numcodecs.register_codec(cls, codec_id=cid)
