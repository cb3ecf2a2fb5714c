"""Which slabs of a dump to read: one :class:`Selection` type for every engine.

A :class:`Selection` names layers, kinds, heads and sequences, each as a list of integers
(or kind names), as text (``'0,3,5-7'``, ``'keys,values'``) or None (all). It is checked
once, against one dump, by :meth:`Selection.resolve`, which returns a
:class:`ResolvedSelection`: plain tuples, the token rows of the selected sequences and
their sequence ranges, token ids and positions. Every error is a
:class:`~kvinfo.errors.SelectionError` naming the parameter (``layers``, ``kinds``,
``heads``, ``sequences``); the command line reports it as the matching ``--`` option.

Examples
--------
>>> import tempfile, os
>>> from kvinfo.dumps import open_dump, write_synthetic_dump
>>> path = write_synthetic_dump(os.path.join(tempfile.mkdtemp(), "t.h5"), num_layers=3,
...                             num_tokens=64, num_sequences=2, head_dim=8)
>>> with open_dump(path) as d:
...     sel = Selection(layers="0,2", kinds=["keys"], sequences=[1]).resolve(d)
...     shapes = [(lay, kind, head, s.shape) for lay, kind, head, s in d.iter_slabs(selection=sel)]
>>> sel.layers, sel.kinds, sel.heads, sel.sequence_ranges
((0, 2), ('keys',), {'keys': (0, 1)}, ((0, 32),))
>>> shapes[0]
(0, 'keys', 0, (32, 8))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import SelectionError
from ._format import TENSOR_DATASETS

__all__ = ["Selection", "ResolvedSelection", "parse_index_list", "check_index_list"]


def _ranges(spec: str, what: str) -> list[tuple[int, int]]:
    """``'0,3,5-7'`` -> ``[(0, 0), (3, 3), (5, 7)]``; checks the syntax only."""
    out = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
            else:
                lo = hi = int(part)
        except ValueError:
            raise SelectionError(
                f"expected integers or ranges like '0,3,5-7'; got {spec!r}", what
            ) from None
        out.append((lo, hi))
    if not out:
        raise SelectionError(f"{spec!r} selects nothing", what)
    return out


def check_index_list(spec: str, what: str) -> None:
    """Check the syntax of a selection before its upper bound is known.

    >>> check_index_list("0,2-4", "layers")
    """
    _ranges(spec, what)


def parse_index_list(spec, upper: int, what: str) -> list[int]:
    """``'0,3,5-7'`` (or a sequence of ints) -> ``[0, 3, 5, 6, 7]``, each in ``[0, upper)``;
    None -> all. Duplicates are dropped, the first occurrence keeps its place.

    Raises :class:`~kvinfo.errors.SelectionError` (an
    :class:`~kvinfo.errors.AnalysisInputError`) naming ``what`` for text that is not a list
    of integers and ranges, values out of range, or an empty selection.

    >>> parse_index_list("0,2-4,2", 5, "layers")
    [0, 2, 3, 4]
    >>> parse_index_list([1, 0], 2, "heads")
    [1, 0]
    """
    if spec is None:
        return list(range(upper))
    if isinstance(spec, str):
        ranges = _ranges(spec, what)
    else:
        ranges = []
        for v in spec:
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise SelectionError(f"expected integers; got {v!r}", what)
            ranges.append((int(v), int(v)))
        if not ranges:
            raise SelectionError("an empty list selects nothing", what)
    out: list[int] = []
    seen: set[int] = set()
    for lo, hi in ranges:
        for v in (lo, hi):  # before expanding, so that '0-10**12' fails at once
            if not 0 <= v < upper:
                raise SelectionError(f"{v} is out of range [0, {upper})", what)
        for v in range(lo, hi + 1):
            if v not in seen:
                seen.add(v)
                out.append(v)
    return out


def _kinds(spec, available: Sequence[str]) -> tuple[str, ...]:
    if spec is None:
        kinds = [k for k in ("keys", "values") if k in available]
    else:
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        kinds = []
        for k in items:
            if not isinstance(k, str):
                raise SelectionError(f"expected kind names; got {k!r}", "kinds")
            k = k.strip()
            if k and k not in kinds:
                kinds.append(k)
        bad = [k for k in kinds if k not in available]
        if bad:
            raise SelectionError(f"{bad} not in this dump; it has {list(available)}", "kinds")
    if not kinds:
        raise SelectionError("empty selection: no kinds selected", "kinds")
    return tuple(kinds)


@dataclass(frozen=True)
class Selection:
    """Which slabs to read: layers, kinds, heads and sequences (None: all).

    Parameters
    ----------
    layers : str, sequence of int, or None
        Layer indices (``'0,3,10-12'`` or ``[0, 3]``); default all.
    kinds : str, sequence of str, or None
        Among ``keys``, ``values``, ``queries``, ``keys_pre_rope`` (``'keys,values'`` or a
        list); default the keys and values.
    heads : str, sequence of int, or None
        Head indices, checked against each kind's head count (query heads for
        ``queries``, KV heads otherwise); default all heads of each kind.
    sequences : str, sequence of int, or None
        Sequence (prompt) indices; the slabs then hold only those sequences' tokens, in
        this order. Default all sequences.
    """

    layers: str | Sequence[int] | None = None
    kinds: str | Sequence[str] | None = None
    heads: str | Sequence[int] | None = None
    sequences: str | Sequence[int] | None = None

    def resolve(self, dump) -> ResolvedSelection:
        """Check the selection against an open :class:`~kvinfo.dumps.Dump`.

        Raises
        ------
        SelectionError
            A layer, head or sequence out of range, a kind the dump lacks, text that is not
            a list of integers and ranges, or an empty selection.
        """
        kinds = _kinds(self.kinds, tuple(dump.kinds))
        layers = tuple(parse_index_list(self.layers, dump.num_layers, "layers"))
        heads = {
            k: tuple(parse_index_list(self.heads, getattr(dump, TENSOR_DATASETS[k]), "heads"))
            for k in kinds
        }
        offsets = np.asarray(dump.sequence_offsets, dtype=np.int64)
        seqs = tuple(parse_index_list(self.sequences, offsets.size - 1, "sequences"))
        all_seqs = seqs == tuple(range(offsets.size - 1))
        ranges = []
        start = 0
        for s in seqs:
            n = int(offsets[s + 1] - offsets[s])
            ranges.append((start, start + n))
            start += n
        rows = None
        if not all_seqs:
            rows = np.concatenate(
                [np.arange(offsets[s], offsets[s + 1], dtype=np.int64) for s in seqs]
            )
        token_ids = np.asarray(dump.token_ids)
        seq_index = np.repeat(np.arange(len(seqs)), [b - a for a, b in ranges])
        positions = np.concatenate([np.arange(b - a) for a, b in ranges])
        return ResolvedSelection(
            layers=layers,
            kinds=kinds,
            heads=heads,
            sequences=seqs,
            rows=rows,
            sequence_ranges=tuple(ranges),
            token_ids=token_ids if rows is None else token_ids[rows],
            sequence_index=seq_index,
            positions=positions,
        )


@dataclass(frozen=True)
class ResolvedSelection:
    """A :class:`Selection` checked against one dump (from :meth:`Selection.resolve`).

    Attributes
    ----------
    layers, kinds : tuple
    heads : dict of kind -> tuple of int
    sequences : tuple of int
        The selected sequences, as indices into the dump's sequences.
    rows : numpy.ndarray or None
        The dump's token rows of the selected sequences (None: every token, in order).
    sequence_ranges : tuple of (start, stop)
        The selected sequences' token ranges in the selected rows.
    token_ids, sequence_index, positions : numpy.ndarray
        Per selected token: its id, the index of its sequence in ``sequences``, and its
        position in that sequence.
    """

    layers: tuple[int, ...]
    kinds: tuple[str, ...]
    heads: dict
    sequences: tuple[int, ...]
    rows: np.ndarray | None = field(repr=False)
    sequence_ranges: tuple[tuple[int, int], ...] = field(repr=False)
    token_ids: np.ndarray = field(repr=False)
    sequence_index: np.ndarray = field(repr=False)
    positions: np.ndarray = field(repr=False)

    @property
    def num_tokens(self) -> int:
        """Tokens per selected slab."""
        return int(self.token_ids.shape[0])

    def slabs(self) -> list[tuple[int, str, int]]:
        """``(layer, kind, head)`` of every selected slab, layer by layer, kind by kind."""
        return [(lay, k, h) for lay in self.layers for k in self.kinds for h in self.heads[k]]

    def take(self, a: np.ndarray, axis: int = 0) -> np.ndarray:
        """The selected token rows of an array whose ``axis`` runs over the dump's tokens."""
        return a if self.rows is None else np.take(a, self.rows, axis=axis)

    def settings(self) -> dict:
        """The selection as JSON-able settings (``layers``, ``kinds``, ``heads``,
        ``sequences``)."""
        return {
            "layers": list(self.layers),
            "kinds": list(self.kinds),
            "heads": {k: list(v) for k, v in self.heads.items()},
            "sequences": list(self.sequences),
        }
