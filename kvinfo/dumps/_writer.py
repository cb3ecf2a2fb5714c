"""Streaming, atomic writer of kvdump files.

:class:`DumpWriter` appends one sequence at a time, so memory stays bounded by one
sequence's cache however many prompts there are. It writes into a partial file beside
the target, ``<name>.kvinfo-partial-<pid>``, and renames it only when
:meth:`DumpWriter.close` succeeds; on any failure (including ``KeyboardInterrupt``) the
partial file is removed, so a file at the target path always is a complete dump.

One writer at a time: the writer holds the target's exclusive lock
(:class:`kvinfo._paths.OutputLock`) from creation to close or abort, and refuses to start
while another process holds it. A writer killed outright (SIGKILL) cannot clean up; its
partial file is recognised by its name and removed by the next writer of the same target.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

import h5py
import numpy as np

from .._paths import (
    OutputLock,
    check_output_file,
    commit_partial,
    create_partial,
    discard_partial,
    make_dirs,
    output_error,
    remove_stale_partials,
)
from .._version import __version__
from ..errors import DumpFormatError
from ._format import (
    DTYPES,
    FORMAT,
    FORMAT_VERSION,
    INPUT_DATASETS,
    TENSOR_DATASETS,
    TOKENS_PER_CHUNK,
    to_storage,
)

__all__ = ["DumpWriter", "capture_writer"]


class DumpWriter:
    """Write a kvdump sequence by sequence.

    Parameters
    ----------
    path : path-like
        Target file. It appears only once :meth:`close` succeeds.
    model : str
        Model name or path, stored as the ``model`` attribute.
    dtype : {"float32", "float16", "bfloat16"}
        Logical dtype of every tensor dataset.
    num_layers, num_heads, num_kv_heads, head_dim : int
        Model geometry.
    kinds : sequence of str
        Tensor datasets to write: ``"keys"`` and ``"values"`` always, optionally
        ``"queries"`` and ``"keys_pre_rope"``.
    attrs : dict, optional
        Further root attributes (``weights_checksum``, ``rope``...). Dicts and lists are
        stored as JSON text.
    input_kinds : sequence of str
        Layer-input datasets to write too, from ``("inputs", "residual")``, each of shape
        ``(num_layers, T, hidden_size)`` per sequence. With any, the file is format
        version 2 (else version 1, which older kvinfo reads).
    hidden_size : int, optional
        Width of the layer inputs; required with ``input_kinds``.
    """

    def __init__(
        self,
        path,
        *,
        model: str,
        dtype: str,
        num_layers: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        kinds=("keys", "values"),
        attrs: dict | None = None,
        input_kinds=(),
        hidden_size: int | None = None,
    ):
        if dtype not in DTYPES:
            raise DumpFormatError(
                f"unsupported dtype {dtype!r}; expected one of {', '.join(DTYPES)}"
            )
        unknown = set(kinds) - set(TENSOR_DATASETS)
        if unknown or not {"keys", "values"} <= set(kinds):
            raise DumpFormatError(
                f"kinds must include keys and values, from {list(TENSOR_DATASETS)}"
            )
        self.path = Path(path)
        self.dtype = dtype
        self.geometry = dict(
            num_layers=int(num_layers),
            num_heads=int(num_heads),
            num_kv_heads=int(num_kv_heads),
            head_dim=int(head_dim),
        )
        self.kinds = tuple(k for k in TENSOR_DATASETS if k in kinds)
        if set(input_kinds) - set(INPUT_DATASETS):
            raise DumpFormatError(
                f"input_kinds must be from {list(INPUT_DATASETS)}, got {list(input_kinds)}"
            )
        self.input_kinds = tuple(k for k in INPUT_DATASETS if k in input_kinds)
        if self.input_kinds and (isinstance(hidden_size, bool) or not isinstance(hidden_size, int)
                                 or hidden_size < 1):
            raise DumpFormatError(
                f"input_kinds need a positive integer hidden_size, got {hidden_size!r}"
            )
        self.hidden_size = int(hidden_size) if self.input_kinds else None
        check_output_file(self.path, kind="kvdump")
        make_dirs(self.path.parent)
        self._closed = False
        self._tmp = None
        self._lock = OutputLock(self.path).acquire()
        try:
            remove_stale_partials(self.path, locked=True)
            fd, self._tmp = create_partial(self.path)
            try:
                os.close(fd)
            except OSError as exc:  # pragma: no cover
                raise output_error(self.path, exc) from None
        except BaseException:
            self.abort()
            raise
        self._offsets = [0]
        try:
            self._f = h5py.File(self._tmp, "w", libver=("earliest", "v110"))
            self._create(model, attrs or {})
        except BaseException:
            self.abort()
            raise

    def _create(self, model: str, attrs: dict) -> None:
        f = self._f
        g = self.geometry
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION if self.input_kinds else 1
        f.attrs["model"] = str(model)
        f.attrs["dtype"] = self.dtype
        for k, v in g.items():
            f.attrs[k] = v
        if self.input_kinds:
            f.attrs["hidden_size"] = self.hidden_size
        f.attrs["kvinfo_version"] = __version__
        f.attrs["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        for k, v in attrs.items():
            f.attrs[k] = json.dumps(v) if isinstance(v, dict | list | tuple) else v
        f.create_dataset("token_ids", shape=(0,), maxshape=(None,), dtype="<i8", chunks=(4096,))

    def _create_tensors(self, first_len: int) -> None:
        """Create the tensor datasets, sizing the token chunk from the first sequence.

        A chunk holds one (layer, head) and ``TOKENS_PER_CHUNK`` tokens at most, fewer for
        short dumps (the next power of two of the first sequence's length, at least 64),
        so that reading one slab never reads another and small dumps stay small.
        """
        g = self.geometry
        L, D = g["num_layers"], g["head_dim"]
        chunk_tokens = int(min(TOKENS_PER_CHUNK, max(64, 1 << (int(first_len) - 1).bit_length())))
        for kind in self.kinds:
            heads = g[TENSOR_DATASETS[kind]]
            ds = self._f.create_dataset(
                kind,
                shape=(L, heads, 0, D),
                maxshape=(L, heads, None, D),
                dtype=DTYPES[self.dtype],
                chunks=(1, 1, chunk_tokens, D),
            )
            ds.attrs["dtype"] = self.dtype
            ds.attrs["axes"] = "layer,head,token,channel"
        for kind in self.input_kinds:
            H = self.hidden_size
            ds = self._f.create_dataset(
                kind, shape=(L, 0, H), maxshape=(L, None, H), dtype=DTYPES[self.dtype],
                chunks=(1, chunk_tokens, H),
            )
            ds.attrs["dtype"] = self.dtype
            ds.attrs["axes"] = "layer,token,channel"

    @property
    def num_tokens(self) -> int:
        return self._offsets[-1]

    def append(self, token_ids, tensors: dict) -> None:
        """Append one sequence.

        ``token_ids`` has shape ``(T,)``; ``tensors[kind]`` has shape
        ``(num_layers, heads, T, head_dim)`` in the writer's dtype (bfloat16 arrays may be
        given as ``ml_dtypes.bfloat16`` or as their ``uint16`` bit patterns);
        ``tensors["inputs"]`` and ``tensors["residual"]`` (when the writer has them) have
        shape ``(num_layers, T, hidden_size)``.
        """
        if self._closed:
            raise DumpFormatError("this DumpWriter is already closed")
        token_ids = np.asarray(token_ids).reshape(-1)
        T = token_ids.shape[0]
        if T == 0:
            raise DumpFormatError("cannot append an empty sequence")
        if set(tensors) != set(self.kinds + self.input_kinds):
            raise DumpFormatError(
                f"expected tensors {list(self.kinds + self.input_kinds)}, got {sorted(tensors)}"
            )
        g = self.geometry
        start = self.num_tokens
        if start == 0:
            self._create_tensors(T)
        for kind in self.kinds:
            arr = np.asarray(tensors[kind])
            want = (g["num_layers"], g[TENSOR_DATASETS[kind]], T, g["head_dim"])
            if arr.shape != want:
                raise DumpFormatError(f"{kind}: expected shape {want}, got {arr.shape}")
            stored = to_storage(arr, self.dtype)
            if stored.dtype.itemsize != DTYPES[self.dtype].itemsize:
                raise DumpFormatError(f"{kind}: expected {self.dtype} data, got {arr.dtype}")
            ds = self._f[kind]
            ds.resize(start + T, axis=2)
            ds[:, :, start : start + T, :] = stored.view(DTYPES[self.dtype])
        for kind in self.input_kinds:
            arr = np.asarray(tensors[kind])
            want = (g["num_layers"], T, self.hidden_size)
            if arr.shape != want:
                raise DumpFormatError(f"{kind}: expected shape {want}, got {arr.shape}")
            stored = to_storage(arr, self.dtype)
            if stored.dtype.itemsize != DTYPES[self.dtype].itemsize:
                raise DumpFormatError(f"{kind}: expected {self.dtype} data, got {arr.dtype}")
            ds = self._f[kind]
            ds.resize(start + T, axis=1)
            ds[:, start : start + T, :] = stored.view(DTYPES[self.dtype])
        tid = self._f["token_ids"]
        tid.resize(start + T, axis=0)
        tid[start:] = token_ids.astype("<i8")
        self._offsets.append(start + T)

    def close(self, extra_attrs: dict | None = None) -> Path:
        """Finish the file and move it into place; returns the final path."""
        if self._closed:
            return self.path
        try:
            if self.num_tokens == 0:
                raise DumpFormatError("no sequence was written; refusing to create an empty dump")
            f = self._f
            f.create_dataset("sequence_offsets", data=np.asarray(self._offsets, dtype="<i8"))
            f.attrs["num_tokens"] = self.num_tokens
            f.attrs["num_sequences"] = len(self._offsets) - 1
            for k, v in (extra_attrs or {}).items():
                f.attrs[k] = json.dumps(v) if isinstance(v, dict | list | tuple) else v
            f.attrs["complete"] = True
            f.close()
            try:
                commit_partial(self._tmp, self.path)
            except OSError as exc:
                raise output_error(self.path, exc) from None
            self._tmp = None  # renamed: nothing of ours to remove any more
            self._closed = True
            self._lock.release()
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Discard everything written; the target path is left untouched."""
        self._closed = True
        try:
            if getattr(self, "_f", None) is not None and self._f.id.valid:
                self._f.close()
        finally:
            try:
                if self._tmp is not None:
                    discard_partial(self._tmp)
            finally:
                self._lock.release()

    def __enter__(self) -> DumpWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def capture_writer(
    path,
    *,
    queries: bool,
    pre_rope: bool,
    weights_checksum: str,
    rope: dict,
    capture: dict,
    model_type: str | None = None,
    inputs: bool = False,
    hidden_size: int | None = None,
    **writer_args,
) -> DumpWriter:
    """The one set-up of a :class:`DumpWriter` for a cache capture (real or synthetic).

    The tensor kinds follow from ``queries`` and ``pre_rope`` (keys and values always);
    the root attributes are those every capture records: ``weights_checksum``, ``rope``
    (made JSON-safe), ``capture`` (the settings) and, for a real model, ``model_type``.
    ``writer_args`` are :class:`DumpWriter`'s ``model``, ``dtype`` and geometry. Use it as
    a context manager: the file appears at ``path`` when the block ends without an error
    and is discarded otherwise. ``inputs`` adds the layer inputs and the residual stream
    (``hidden_size`` wide; format version 2).
    """
    kinds = (
        ["keys", "values"]
        + (["queries"] if queries else [])
        + (["keys_pre_rope"] if pre_rope else [])
    )
    attrs = {
        "weights_checksum": weights_checksum,
        "rope": json.loads(json.dumps(rope, default=str)),
        "capture": capture,
    }
    if model_type is not None:
        attrs["model_type"] = model_type
    return DumpWriter(path, kinds=kinds, attrs=attrs,
                      input_kinds=INPUT_DATASETS if inputs else (),
                      hidden_size=hidden_size, **writer_args)
