"""The lazy kvdump reader returned by :func:`kvinfo.open_dump`."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from ..errors import DumpFormatError
from ._format import (
    BITS_VIEW,
    DATASET_VERSIONS,
    DATASETS,
    DTYPES,
    INPUT_DATASETS,
    KINDS,
    TENSOR_DATASETS,
    check_attributes,
    check_dataset,
    from_storage,
)

__all__ = ["Dump", "open_dump"]


class Dump:
    """A kvdump opened for reading; nothing but metadata is read until asked for.

    Use :func:`open_dump` to create one. It is a context manager; slabs are read one
    (layer, head) at a time, so memory stays bounded by one slab.

    Attributes
    ----------
    path : pathlib.Path
    meta : dict
        Every root attribute (JSON-valued ones decoded).
    num_layers, num_heads, num_kv_heads, head_dim, num_tokens, num_sequences : int
    dtype : str
        ``"float32"``, ``"float16"`` or ``"bfloat16"``.
    kinds : tuple of str
        The tensor datasets present, in the order keys, values, queries, keys_pre_rope.
    input_kinds : tuple of str
        The layer-input datasets present (format version 2, ``kvinfo capture --inputs``):
        ``"inputs"`` (X, what enters the attention projections) and ``"residual"``.
    hidden_size : int or None
        The width of the layer inputs (None when the dump has none).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        where = str(self.path)
        if not self.path.exists():
            raise DumpFormatError(f"{where}: no such file")
        if self.path.is_dir():
            raise DumpFormatError(f"{where}: is a directory, not a KV dump")
        try:
            is_h5 = h5py.is_hdf5(self.path)
        except OSError as exc:
            raise DumpFormatError(f"{where}: cannot read ({exc})") from None
        if not is_h5:
            raise DumpFormatError(f"{where}: not an HDF5 file")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as exc:
            raise DumpFormatError(f"{where}: damaged or truncated HDF5 file ({exc})") from None
        try:
            self._load_meta(where)
        except BaseException:
            self._f.close()
            raise

    def _set_geometry(self, attrs: dict) -> None:
        """Adopt the checked root attributes (shared with the zarr reader)."""
        self.meta = attrs
        self.dtype = attrs["dtype"]
        self.num_layers = attrs["num_layers"]
        self.num_heads = attrs["num_heads"]
        self.num_kv_heads = attrs["num_kv_heads"]
        self.head_dim = attrs["head_dim"]

    def _dims(self, num_tokens: int, num_offsets: int) -> dict:
        """The size of every named axis of :data:`DATASETS` (``hidden_size`` is None in a
        dump without layer inputs)."""
        return {"num_layers": self.num_layers, "num_heads": self.num_heads,
                "num_kv_heads": self.num_kv_heads, "head_dim": self.head_dim,
                "hidden_size": self.meta.get("hidden_size"),
                "num_tokens": num_tokens, "num_sequences+1": num_offsets}

    def _load_meta(self, where: str) -> None:
        """Validate the whole layout (docs/dump-format.md, "Validation") before any data."""
        f = self._f
        try:
            raw = dict(f.attrs.items())
        except (OSError, TypeError, ValueError) as exc:
            raise DumpFormatError(
                f"{where}: damaged file, cannot read attributes ({exc})"
            ) from None
        attrs = check_attributes(raw, where)
        if not attrs.get("complete", False):
            raise DumpFormatError(f"{where}: incomplete dump (the writer did not finish)")
        self._set_geometry(attrs)
        try:
            names = set(f.keys())
            for name, spec in DATASETS.items():
                if spec.required and name not in names:
                    raise DumpFormatError(f"{where}: missing dataset {name!r}")
            present = {}
            for name, spec in DATASETS.items():  # kind, dtype and rank first
                if name in names:
                    try:
                        present[name] = f[name]
                    except (KeyError, OSError) as exc:
                        raise DumpFormatError(
                            f"{where}: {name!r} cannot be opened ({exc}); expected an HDF5 "
                            "dataset"
                        ) from None
                    check_dataset(present[name], name, spec, None, self.dtype, where)
            version = int(attrs["format_version"])
            for name, since in DATASET_VERSIONS.items():
                if name in present and version < since:
                    raise DumpFormatError(
                        f"{where}: dataset {name!r} needs format version {since}; the file "
                        f"says {version}"
                    )
            if any(n in present for n in INPUT_DATASETS) and "hidden_size" not in attrs:
                raise DumpFormatError(
                    f"{where}: datasets {[n for n in INPUT_DATASETS if n in present]} need "
                    "the root attribute 'hidden_size'; it is missing"
                )
            tid, offs = present["token_ids"], present["sequence_offsets"]
            T = int(tid.shape[0])
            dims = self._dims(T, int(offs.shape[0]))
            for name, obj in present.items():  # then shapes against the attributes
                check_dataset(obj, name, DATASETS[name], dims, self.dtype, where)
            self.kinds = tuple(k for k in KINDS if k in names)
            self.input_kinds = tuple(k for k in INPUT_DATASETS if k in names)
            self.hidden_size = attrs.get("hidden_size") if self.input_kinds else None
            self._offsets = np.asarray(offs[...], dtype=np.int64)
        except OSError as exc:
            raise DumpFormatError(f"{where}: damaged file ({exc})") from None
        o = self._offsets
        if o.size < 2 or o[0] != 0 or o[-1] != T or np.any(np.diff(o) <= 0):
            raise DumpFormatError(
                f"{where}: dataset 'sequence_offsets' is inconsistent with {T} tokens; expected "
                "0 first, num_tokens last, strictly increasing"
            )
        for name, value in (("num_tokens", T), ("num_sequences", o.size - 1)):
            if name in attrs and attrs[name] != value:
                raise DumpFormatError(
                    f"{where}: root attribute {name!r} is {attrs[name]}; the datasets hold {value}"
                )
        self.num_tokens = T
        self.num_sequences = o.size - 1

    # -- metadata -----------------------------------------------------------------------
    @property
    def has_queries(self) -> bool:
        return "queries" in self.kinds

    @property
    def has_pre_rope(self) -> bool:
        return "keys_pre_rope" in self.kinds

    @property
    def has_inputs(self) -> bool:
        """Whether the dump holds the layer inputs X (``kvinfo capture --inputs``)."""
        return "inputs" in self.input_kinds

    @property
    def token_ids(self) -> np.ndarray:
        return self._read(self._f["token_ids"], ...)

    @property
    def sequence_offsets(self) -> np.ndarray:
        return self._offsets.copy()

    def sequences(self) -> list[tuple[int, int]]:
        """``(start, stop)`` token ranges of the sequences."""
        o = self._offsets
        return [(int(o[i]), int(o[i + 1])) for i in range(o.size - 1)]

    def sequence_index(self) -> np.ndarray:
        """For each token, the index of its sequence."""
        return np.repeat(np.arange(self.num_sequences), np.diff(self._offsets))

    def positions(self) -> np.ndarray:
        """For each token, its position inside its sequence (0 for the first token)."""
        return np.arange(self.num_tokens) - np.repeat(self._offsets[:-1], np.diff(self._offsets))

    def nbytes(self, kind: str | None = None) -> int:
        """Bytes of the stored tensors (one kind, or all)."""
        kinds = [kind] if kind else (*self.kinds, *self.input_kinds)
        return sum(int(np.prod(self._f[k].shape)) * DTYPES[self.dtype].itemsize for k in kinds)

    # -- tensor access ------------------------------------------------------------------
    def _check(self, kind: str, layer: int, head: int | None) -> None:
        if kind not in self.kinds:
            hint = " (capture with --queries)" if kind == "queries" else ""
            hint = " (capture with --pre-rope)" if kind == "keys_pre_rope" else hint
            raise DumpFormatError(
                f"{self.path}: this dump has no {kind!r}{hint}; has {list(self.kinds)}"
            )
        if not 0 <= int(layer) < self.num_layers:
            raise DumpFormatError(f"layer {layer} out of range [0, {self.num_layers})")
        if head is not None:
            nh = getattr(self, TENSOR_DATASETS[kind])
            if not 0 <= int(head) < nh:
                raise DumpFormatError(f"{kind} head {head} out of range [0, {nh})")

    def _read(self, ds, sel):
        try:
            return ds[sel]
        except OSError as exc:
            raise DumpFormatError(f"{self.path}: damaged data in {ds.name!r} ({exc})") from None

    def raw_bits(self, kind: str, layer: int, head: int) -> np.ndarray:
        """Bit patterns of one slab, shape ``(num_tokens, head_dim)``, as uint16 or uint32."""
        self._check(kind, layer, head)
        return self._read(self._f[kind], (int(layer), int(head))).view(BITS_VIEW[self.dtype])

    def slab(self, kind: str, layer: int, head: int) -> np.ndarray:
        """One (layer, head) slab, shape ``(num_tokens, head_dim)``, in the stored dtype."""
        self._check(kind, layer, head)
        return from_storage(self._read(self._f[kind], (int(layer), int(head))), self.dtype)

    def tensor(self, kind: str, layer: int, head: int | None = None) -> np.ndarray:
        """All heads ``(heads, num_tokens, head_dim)`` of one layer, or one head's slab."""
        if head is not None:
            return self.slab(kind, layer, head)
        self._check(kind, layer, None)
        return from_storage(self._read(self._f[kind], int(layer)), self.dtype)

    def keys(self, layer: int, head: int | None = None) -> np.ndarray:
        return self.tensor("keys", layer, head)

    def values(self, layer: int, head: int | None = None) -> np.ndarray:
        return self.tensor("values", layer, head)

    def queries(self, layer: int, head: int | None = None) -> np.ndarray:
        return self.tensor("queries", layer, head)

    def keys_pre_rope(self, layer: int, head: int | None = None) -> np.ndarray:
        return self.tensor("keys_pre_rope", layer, head)

    def layer_input(self, kind: str, layer: int) -> np.ndarray:
        """One layer's ``inputs`` or ``residual``, shape ``(num_tokens, hidden_size)``."""
        if kind not in INPUT_DATASETS:
            raise DumpFormatError(f"unknown layer-input kind {kind!r}; expected one of "
                                  f"{list(INPUT_DATASETS)}")
        if kind not in self.input_kinds:
            raise DumpFormatError(
                f"{self.path}: this dump has no {kind!r} (capture with --inputs); has "
                f"{list(self.kinds + self.input_kinds)}"
            )
        if not 0 <= int(layer) < self.num_layers:
            raise DumpFormatError(f"layer {layer} out of range [0, {self.num_layers})")
        return from_storage(self._read(self._f[kind], int(layer)), self.dtype)

    def inputs(self, layer: int) -> np.ndarray:
        """X of one layer (the normed hidden state entering its attention projections),
        shape ``(num_tokens, hidden_size)``."""
        return self.layer_input("inputs", layer)

    def residual(self, layer: int) -> np.ndarray:
        """The residual stream entering one layer (before its input norm),
        shape ``(num_tokens, hidden_size)``."""
        return self.layer_input("residual", layer)

    def iter_slabs(
        self,
        kinds: Sequence[str] | None = None,
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        *,
        selection=None,
    ) -> Iterator[tuple[int, str, int, np.ndarray]]:
        """Yield ``(layer, kind, head, slab)`` one slab at a time (bounded memory).

        ``selection`` (a :class:`~kvinfo.dumps.Selection`, resolved or not) replaces
        ``kinds``, ``layers`` and ``heads``; its slabs hold only the selected sequences'
        tokens. Without it, ``kinds``, ``layers`` and ``heads`` are checked as a
        :class:`~kvinfo.dumps.Selection` is (:class:`~kvinfo.errors.SelectionError`).
        """
        from ._select import ResolvedSelection, Selection

        if selection is None:
            selection = Selection(layers=layers, kinds=kinds, heads=heads)
        elif kinds is not None or layers is not None or heads is not None:
            raise TypeError("give either selection or kinds/layers/heads, not both")
        if not isinstance(selection, ResolvedSelection):
            selection = selection.resolve(self)
        for layer, kind, head in selection.slabs():
            yield layer, kind, head, selection.take(self.slab(kind, layer, head))

    def describe(self) -> dict:
        """A JSON-able summary (what ``kvinfo info --json`` prints)."""
        m = self.meta
        return {
            "path": str(self.path),
            "format_version": int(m["format_version"]),
            "model": m.get("model"),
            "weights_checksum": m.get("weights_checksum"),
            "dtype": self.dtype,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "num_tokens": self.num_tokens,
            "num_sequences": self.num_sequences,
            "kinds": list(self.kinds),
            "input_kinds": list(self.input_kinds),
            "hidden_size": self.hidden_size,
            "shapes": {k: list(self._f[k].shape) for k in (*self.kinds, *self.input_kinds)},
            "tensor_bytes": {k: self.nbytes(k) for k in (*self.kinds, *self.input_kinds)},
            "file_bytes": self.path.stat().st_size,
            "rope": m.get("rope"),
            "kvinfo_version": m.get("kvinfo_version"),
            "created": m.get("created"),
            "capture": m.get("capture"),
        }

    # -- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        if getattr(self, "_f", None) is not None:
            self._f.close()

    def __enter__(self) -> Dump:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<kvinfo Dump {str(self.path)!r}: {self.meta.get('model')}, {self.dtype}, "
            f"{self.num_layers} layers x {self.num_kv_heads} kv heads x {self.num_tokens} tokens "
            f"x {self.head_dim}>"
        )


def open_dump(path: str | os.PathLike) -> Dump:
    """Open a kvdump for lazy reading.

    Raises
    ------
    DumpFormatError
        If the file is missing, not HDF5, not a kvdump, damaged, truncated or of a newer
        format version.

    Examples
    --------
    >>> import tempfile, os, kvinfo
    >>> from kvinfo.dumps import write_synthetic_dump
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.h5")
    >>> _ = write_synthetic_dump(path, num_layers=2, num_kv_heads=2, num_tokens=32, head_dim=8)
    >>> with kvinfo.open_dump(path) as d:
    ...     print(d.num_layers, d.num_kv_heads, d.num_tokens, d.slab("keys", 1, 0).shape)
    2 2 32 (32, 8)

    A folder holding a zarr v3 store written by ``kvinfo convert`` opens as a
    :class:`~kvinfo.dumps.ZarrDump` with the same accessors.
    """
    from ._zarr import ZarrDump, is_zarr_store  # zarr store dispatch (kvinfo convert)

    if is_zarr_store(path):
        return ZarrDump(path)
    return Dump(path)
