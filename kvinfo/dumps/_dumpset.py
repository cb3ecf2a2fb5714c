"""Many dumps read as one: :class:`DumpSet` and :func:`open_dumps`.

A study is many dumps of one model (one per prompt file, per run, per machine). A
:class:`DumpSet` presents them as one :class:`~kvinfo.dumps.Dump` whose tokens are the
dumps' tokens one dump after the other and whose sequences are every dump's sequences (a
sequence never spans two dumps, so lag-1 pairs never cross a dump boundary). Every engine
that takes a dump (``analyze_dump``, ``bench_dump``) takes a set: a slab of the set is the
concatenation of that slab of each dump, so the streaming statistics of the set are the
exact merge of the dumps' statistics.

The dumps must agree on everything that makes slabs comparable: the model, its weights
checksum, the stored dtype, the geometry (layers, query and KV heads, head_dim) and the RoPE
settings. The first disagreement is refused with a :class:`~kvinfo.errors.DumpSetError`
naming the dump, the attribute and both values. The tensor kinds of the set are those every
dump has.

Examples
--------
>>> import os, tempfile
>>> from kvinfo.dumps import write_synthetic_dump
>>> tmp = tempfile.mkdtemp()
>>> a = write_synthetic_dump(os.path.join(tmp, "a.h5"), num_tokens=32, head_dim=8, seed=1)
>>> b = write_synthetic_dump(os.path.join(tmp, "b.h5"), num_tokens=48, head_dim=8, seed=2)
>>> with open_dumps([a, b]) as s:
...     print(s.num_tokens, s.num_sequences, s.slab("keys", 0, 0).shape)
80 4 (80, 8)
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DumpFormatError, DumpSetError
from ._reader import Dump, open_dump

__all__ = ["DumpSet", "open_dumps", "expand_dump_paths", "COMPATIBLE_ATTRIBUTES",
           "check_compatible"]

#: what every dump of a set must share (attribute of :meth:`Dump.describe`), in check order
COMPATIBLE_ATTRIBUTES = ("model", "weights_checksum", "dtype", "num_layers", "num_heads",
                         "num_kv_heads", "head_dim", "rope")


def expand_dump_paths(patterns: Sequence[str | os.PathLike]) -> list[Path]:
    """Paths and glob patterns -> the dump paths, in the order given (each glob sorted),
    duplicates dropped. A glob that matches nothing, or no paths at all, is refused."""
    if isinstance(patterns, str | os.PathLike):
        patterns = [patterns]
    out: list[Path] = []
    seen: set[str] = set()
    for pat in patterns:
        s = str(pat)
        if any(ch in s for ch in "*?[") and not Path(s).exists():
            hits = sorted(glob.glob(s))
            if not hits:
                raise DumpSetError(f"{s}: the pattern matches no dump")
        else:
            hits = [s]
        for h in hits:
            key = os.path.abspath(h)
            if key not in seen:
                seen.add(key)
                out.append(Path(h))
    if not out:
        raise DumpSetError("no dumps given")
    return out


def _describe_key(d: Dump) -> dict:
    m = d.meta
    return {
        "model": m.get("model"),
        "weights_checksum": m.get("weights_checksum"),
        "dtype": d.dtype,
        "num_layers": d.num_layers,
        "num_heads": d.num_heads,
        "num_kv_heads": d.num_kv_heads,
        "head_dim": d.head_dim,
        "rope": m.get("rope"),
    }


def check_compatible(first: Dump, other: Dump) -> None:
    """Refuse ``other`` unless it agrees with ``first`` on :data:`COMPATIBLE_ATTRIBUTES`."""
    a, b = _describe_key(first), _describe_key(other)
    for name in COMPATIBLE_ATTRIBUTES:
        if a[name] != b[name]:
            raise DumpSetError(
                f"{other.path}: {name} is {b[name]!r}, but the first dump {first.path} has "
                f"{a[name]!r}; dumps of different models or geometries cannot be combined"
            )


class DumpSet(Dump):
    """Several dumps read as one :class:`~kvinfo.dumps.Dump` (see the module docstring).

    Attributes
    ----------
    dumps : list of Dump
        The open member dumps, in order.
    paths : list of pathlib.Path
    token_starts : numpy.ndarray
        ``token_starts[i]`` is the first token of dump ``i`` in the set (length
        ``len(dumps) + 1``).
    """

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise DumpSetError("no dumps given")
        self.dumps: list[Dump] = []
        try:
            for p in self.paths:
                try:
                    d = open_dump(p)
                except DumpFormatError as exc:
                    err = DumpSetError(f"dump {p} cannot be read: {exc}")
                    err.dump = str(p)
                    raise err from None
                self.dumps.append(d)
                if len(self.dumps) > 1:
                    check_compatible(self.dumps[0], d)
        except BaseException:
            self.close()
            raise
        first = self.dumps[0]
        self.path = first.path
        self.dtype = first.dtype
        self.num_layers = first.num_layers
        self.num_heads = first.num_heads
        self.num_kv_heads = first.num_kv_heads
        self.head_dim = first.head_dim
        self.kinds = tuple(k for k in first.kinds if all(k in d.kinds for d in self.dumps))
        self.input_kinds = ()  # the model inputs of the members are not combined
        self.hidden_size = None
        counts = [d.num_tokens for d in self.dumps]
        self.token_starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.num_tokens = int(self.token_starts[-1])
        offs = [np.asarray(d.sequence_offsets[:-1]) + s
                for d, s in zip(self.dumps, self.token_starts[:-1], strict=True)]
        self._offsets = np.concatenate([*offs, [self.num_tokens]]).astype(np.int64)
        self.num_sequences = int(self._offsets.size - 1)
        self.meta = {**first.meta, "num_tokens": self.num_tokens,
                     "num_sequences": self.num_sequences}

    # -- tensor access: each dump's slab, concatenated along the tokens -------------------
    def _each(self, what: str, *args) -> list[np.ndarray]:
        out = []
        for d in self.dumps:
            try:
                out.append(getattr(d, what)(*args))
            except DumpFormatError as exc:
                err = DumpSetError(f"dump {d.path} failed to read: {exc}")
                err.dump = str(d.path)
                raise err from None
        return out

    @property
    def token_ids(self) -> np.ndarray:
        return np.concatenate([np.asarray(d.token_ids) for d in self.dumps])

    def nbytes(self, kind: str | None = None) -> int:
        return sum(d.nbytes(kind) for d in self.dumps)

    def raw_bits(self, kind: str, layer: int, head: int) -> np.ndarray:
        self._check(kind, layer, head)
        return np.concatenate(self._each("raw_bits", kind, layer, head))

    def slab(self, kind: str, layer: int, head: int) -> np.ndarray:
        self._check(kind, layer, head)
        return np.concatenate(self._each("slab", kind, layer, head))

    def tensor(self, kind: str, layer: int, head: int | None = None) -> np.ndarray:
        if head is not None:
            return self.slab(kind, layer, head)
        self._check(kind, layer, None)
        return np.concatenate(self._each("tensor", kind, layer), axis=1)

    def dump_of_token(self, token: int) -> Path:
        """The member dump holding token ``token`` of the set."""
        i = int(np.searchsorted(self.token_starts, token, side="right")) - 1
        return self.paths[min(max(i, 0), len(self.paths) - 1)]

    def describe(self) -> dict:
        info = self.dumps[0].describe()
        info.update(
            path=str(self.path),
            num_tokens=self.num_tokens,
            num_sequences=self.num_sequences,
            kinds=list(self.kinds),
            shapes={k: [*info["shapes"][k][:2], self.num_tokens, info["shapes"][k][3]]
                    for k in self.kinds},
            tensor_bytes={k: self.nbytes(k) for k in self.kinds},
            file_bytes=sum(int(d.describe()["file_bytes"]) for d in self.dumps),
            dumps=[{"path": str(d.path), "num_tokens": d.num_tokens,
                    "num_sequences": d.num_sequences, "created": d.meta.get("created")}
                   for d in self.dumps],
        )
        return info

    def close(self) -> None:
        for d in getattr(self, "dumps", []):
            d.close()

    def __repr__(self) -> str:
        return (f"<kvinfo DumpSet of {len(self.dumps)} dumps: {self.meta.get('model')}, "
                f"{self.dtype}, {self.num_layers} layers x {self.num_kv_heads} kv heads x "
                f"{self.num_tokens} tokens x {self.head_dim}>")


def open_dumps(paths) -> Dump:
    """Open dumps (paths or glob patterns) as one: a plain :class:`~kvinfo.dumps.Dump` for
    one path, a :class:`DumpSet` for several.

    Raises
    ------
    DumpSetError
        A pattern that matches nothing, a dump that cannot be read (named), or dumps of
        different models or geometries (the first mismatch named).
    """
    found = expand_dump_paths(paths)
    if len(found) == 1:
        return open_dump(found[0])
    return DumpSet(found)
