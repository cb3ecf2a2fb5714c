"""Reading a kvdump stored as a zarr v3 store (what ``kvinfo convert`` writes).

The store holds the same root attributes and datasets as the HDF5 format
(``docs/dump-format.md``): ``keys``, ``values`` (and ``queries``, ``keys_pre_rope`` when
captured) of shape ``(num_layers, heads, num_tokens, head_dim)`` in the dump's storage dtype
(bfloat16 as uint16 bit patterns), ``token_ids`` and ``sequence_offsets``, one chunk per
(layer, head) slab, compressed with a kvinfo codec (``docs/storage.md``). A store is
complete when its root attribute ``complete`` is true; ``kvinfo convert`` writes it under a
partial name and renames it at the end, so an interrupted conversion never looks complete.

The kvinfo codecs reach zarr through the ``zarr.codecs`` entry point of an installed kvinfo
(or by importing :mod:`kvinfo.storage`); a store whose codec zarr does not know is refused
naming the codec.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DumpFormatError
from ._format import DATASETS, DTYPES, KINDS, check_attributes
from ._reader import Dump

__all__ = ["ZarrDump", "is_zarr_store", "STORE_ATTRIBUTE"]

#: root attribute describing how the store was written (codec, source), a JSON object
STORE_ATTRIBUTE = "zarr_store"


def is_zarr_store(path: str | os.PathLike) -> bool:
    """True for a folder holding a zarr v3 store (its ``zarr.json``)."""
    p = Path(path)
    return p.is_dir() and (p / "zarr.json").is_file()


class ZarrDump(Dump):
    """A kvdump in a zarr v3 store, read like an HDF5 :class:`~kvinfo.dumps.Dump`.

    Every accessor of :class:`~kvinfo.dumps.Dump` works the same (slabs in the stored
    dtype, bit-exact for lossless codecs; a lossy codec's reconstruction otherwise).
    ``store`` describes the codec and the source dump.
    """

    def __init__(self, path: str | os.PathLike):
        import zarr

        self.path = Path(path)
        where = str(self.path)
        if not is_zarr_store(self.path):
            raise DumpFormatError(f"{where}: not a zarr store (no zarr.json)")
        try:
            self._f = zarr.open_group(str(self.path), mode="r")
        except Exception as exc:  # zarr raises many types for a damaged store
            raise DumpFormatError(f"{where}: damaged zarr store ({exc})") from None
        self._load_meta(where)

    def _load_meta(self, where: str) -> None:
        g = self._f
        try:
            raw = dict(g.attrs)
        except Exception as exc:
            raise DumpFormatError(f"{where}: cannot read the store's attributes ({exc})") from None
        store = raw.pop(STORE_ATTRIBUTE, None)
        attrs = check_attributes(raw, where)
        if not attrs.get("complete", False):
            raise DumpFormatError(f"{where}: incomplete store (the conversion did not finish)")
        self._set_geometry(attrs)
        self.store = store if isinstance(store, dict) else {}
        try:
            names = set(g.array_keys())
        except Exception as exc:
            raise DumpFormatError(f"{where}: damaged zarr store ({exc})") from None
        for name, spec in DATASETS.items():
            if spec.required and name not in names:
                raise DumpFormatError(f"{where}: missing array {name!r}")
        arrays = {}
        for name in DATASETS:
            if name in names:
                try:
                    arrays[name] = g[name]
                except KeyError as exc:
                    raise DumpFormatError(
                        f"{where}: array {name!r} uses a codec zarr does not know ({exc}); "
                        "install kvinfo (pip install -e .) so that its zarr.codecs entry points "
                        "exist, or import kvinfo.storage first"
                    ) from None
                except Exception as exc:
                    raise DumpFormatError(f"{where}: array {name!r} cannot be opened ({exc})"
                                          ) from None
        self._offsets = np.asarray(self._read(arrays["sequence_offsets"], ...), dtype=np.int64)
        T = int(arrays["token_ids"].shape[0])
        dims = self._dims(T, int(self._offsets.size))
        for name, arr in arrays.items():
            spec = DATASETS[name]
            want_dtype = DTYPES[self.dtype] if spec.dtype == "tensor" else np.dtype("<i8")
            if np.dtype(arr.dtype) != want_dtype.newbyteorder("="):
                raise DumpFormatError(
                    f"{where}: array {name!r} has dtype {arr.dtype}; expected {want_dtype}"
                )
            want = tuple(dims[d] for d in spec.shape)
            if tuple(arr.shape) != want:
                raise DumpFormatError(
                    f"{where}: array {name!r} has shape {tuple(arr.shape)}; expected {want}"
                )
        o = self._offsets
        if o.size < 2 or o[0] != 0 or o[-1] != T or np.any(np.diff(o) <= 0):
            raise DumpFormatError(
                f"{where}: array 'sequence_offsets' is inconsistent with {T} tokens"
            )
        self.kinds = tuple(k for k in KINDS if k in arrays)
        self.input_kinds = ()  # a converted store holds the KV tensors only
        self.hidden_size = None
        self.num_tokens = T
        self.num_sequences = o.size - 1

    def _read(self, ds, sel):
        try:
            return np.asarray(ds[sel])
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise DumpFormatError(
                f"{self.path}: damaged data in array {ds.name!r} ({type(exc).__name__}: {exc})"
            ) from None

    def describe(self) -> dict:
        out = super().describe()
        out["file_bytes"] = store_bytes(self.path)
        out["zarr_store"] = self.store
        return out

    def close(self) -> None:
        self._f = None

    def __repr__(self) -> str:
        return "<kvinfo ZarrDump" + super().__repr__()[len("<kvinfo Dump"):]


def store_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk of every file in a store folder."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total
