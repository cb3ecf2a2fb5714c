"""Entropy models, kept apart from the coders that use them (the constriction design).

* :class:`FrequencyTable` -- a quantized order-0 model: integer frequencies that sum
  to exactly ``2**precision_bits`` over the symbols ``min_symbol ..
  min_symbol + alphabet_size - 1``. Every symbol that occurs gets a frequency of at
  least 1. rANS and the constriction peers code with it; Huffman derives its code
  lengths from the raw counts.
* :class:`PerChannelTables` -- one :class:`FrequencyTable` per channel (the last axis),
  stored as a ``(num_tables, alphabet_size)`` array sharing precision and offset.
* :class:`AdaptiveContextModel` -- the description of the adaptive binary-tree context
  model that the ``arith`` coder uses (contexts per channel and, optionally, per
  previous symbol of the same channel).

Tables serialise compactly (:meth:`PerChannelTables.to_bytes`). Container version 2
packs them bit by bit with exp-Golomb codes (:func:`pack_frequency_tables`: per row a
parameter ``k``, the count of used symbols, then each used symbol's gap and frequency);
version 1 wrote each frequency as an unsigned LEB128 varint, a run of ``r`` zero
frequencies as the byte ``0x00`` followed by ``varint(r - 1)``. The bytes count as side
information in every rate.

Examples
--------
>>> import numpy as np
>>> from kvinfo.codecs.models import FrequencyTable
>>> t = FrequencyTable.from_counts(np.array([6, 1, 1]), precision_bits=4)
>>> t.frequencies.tolist(), int(t.frequencies.sum())
([12, 2, 2], 16)

References
----------
J. Duda, "Asymmetric numeral systems: entropy coding combining speed of Huffman
coding with compression rate of arithmetic coding", arXiv:1311.2540, 2013.
R. Bamler, "Understanding entropy coding with asymmetric numeral systems (ANS): a
statistician's perspective", arXiv:2201.01741, 2022.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import CodecConfigError, CorruptStreamError

__all__ = [
    "FrequencyTable",
    "PerChannelTables",
    "AdaptiveContextModel",
    "quantize_counts",
    "entropy_bits",
    "min_precision_bits",
    "encode_uints",
    "decode_uints",
    "pack_frequency_tables",
]

MAX_PRECISION_BITS = 16


def entropy_bits(counts: np.ndarray) -> float:
    """Total empirical order-0 information ``sum(-c * log2(c / N))`` of ``counts`` in bits."""
    c = np.asarray(counts, dtype=np.float64).ravel()
    c = c[c > 0]
    if c.size == 0:
        return 0.0
    total = c.sum()
    return float(-(c * np.log2(c / total)).sum())


def row_entropy_bits(counts: np.ndarray) -> np.ndarray:
    """:func:`entropy_bits` of every row of a ``(rows, alphabet)`` count array at once."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(c > 0, np.log2(c / np.maximum(total, 1)), 0.0)
    return -(c * logs).sum(axis=1)


def min_precision_bits(num_used_symbols: int) -> int:
    """Smallest precision at which ``num_used_symbols`` symbols can each get frequency >= 1."""
    return max(1, math.ceil(math.log2(max(num_used_symbols, 1))))


def quantize_counts(counts: np.ndarray, precision_bits: int) -> np.ndarray:
    """Integer frequencies summing to ``2**precision_bits``, close to ``counts`` in KL.

    Every symbol with a non-zero count gets a frequency of at least 1; symbols with
    zero count get 0. Starting from the rounded-down scaling, units are added (or
    removed) greedily where they change the cross-entropy ``-sum c log2 f`` most
    (least), which is optimal for a fixed unit budget because the per-symbol cost is
    convex in the frequency.

    Raises
    ------
    CodecConfigError
        If more symbols occur than ``2**precision_bits`` slots exist, or all counts are 0.
    """
    c = np.asarray(counts, dtype=np.int64).ravel()
    _check_counts(c[None, :], precision_bits)
    from ..kernels import cpu

    return cpu.quantize_rows(c[None, :], precision_bits)[0]


def _check_counts(c: np.ndarray, precision_bits: int) -> None:
    """The errors of :func:`quantize_counts` for every row of a 2-D count array."""
    if np.any(c < 0):
        raise CodecConfigError("counts must be non-negative")
    m = 1 << precision_bits
    used = (c > 0).sum(axis=1)
    if np.any(used == 0):
        raise CodecConfigError("cannot build a frequency table from all-zero counts")
    nu = int(used.max())
    if nu > m:
        raise CodecConfigError(
            f"{nu} distinct symbols do not fit a table of precision {precision_bits} bits "
            f"(at most {m})"
        )


def _write_varint(out: bytearray, v: int) -> None:
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    v = 0
    shift = 0
    while True:
        if pos >= end:
            raise CorruptStreamError("corrupt kvinfo stream: model table ends inside a varint")
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        if not b & 0x80:
            return v, pos
        shift += 7
        if shift > 28:
            raise CorruptStreamError("corrupt kvinfo stream: model table varint too long")


def encode_uints(values) -> bytes:
    """Non-negative ints as LEB128 varints; a run of ``r`` zeros is ``0x00, varint(r - 1)``."""
    out = bytearray()
    row = np.asarray(values, dtype=np.int64)
    pos = 0
    for i in np.flatnonzero(row):
        i = int(i)
        if i > pos:
            out.append(0)
            _write_varint(out, i - pos - 1)
        _write_varint(out, int(row[i]))
        pos = i + 1
    if pos < row.shape[0]:
        out.append(0)
        _write_varint(out, row.shape[0] - pos - 1)
    return bytes(out)


def decode_uints(buf: bytes, pos: int, end: int, out: np.ndarray, max_value: int) -> int:
    """Fill ``out`` from ``buf[pos:end]`` (see :func:`encode_uints`); returns the new position.

    Raises :class:`CorruptStreamError` on a truncated varint, a value above ``max_value``
    or a zero run past the end of ``out``.
    """
    n = out.shape[0]
    i = 0
    while i < n:
        v, pos = _read_varint(buf, pos, end)
        if v == 0:
            r, pos = _read_varint(buf, pos, end)
            i += r + 1
            if i > n:
                raise CorruptStreamError("corrupt kvinfo stream: zero run past the end of a table")
        else:
            if v > max_value:
                raise CorruptStreamError(
                    f"corrupt kvinfo stream: table value {v} exceeds {max_value}"
                )
            out[i] = v
            i += 1
    return pos


def pack_frequency_tables(frequencies: np.ndarray) -> bytes:
    """Exp-Golomb bit packing of frequency rows (format version 2 tables).

    Per row, MSB first: ``k`` (4 bits, chosen per row to minimise the row), then
    ``EG0(m - 1)`` for the ``m`` used symbols, then for each used symbol ``EG0(gap)``
    (unused symbols skipped since the previous used one) and ``EGk(f - 1)``. The whole
    table is zero-padded to a byte. ``EGk(v)``: with ``u = v + 2**k`` of ``b + 1`` bits,
    ``b - k`` zero bits then ``u``. (All rows at once; every row has a used symbol.)
    """
    from ..kernels import cpu

    F = np.ascontiguousarray(np.atleast_2d(np.asarray(frequencies, dtype=np.int64)))
    return cpu.pack_frequency_tables(F)


@dataclass(frozen=True, eq=False)
class PerChannelTables:
    """Quantized frequency tables, one row per table, sharing precision and symbol offset.

    Parameters
    ----------
    frequencies : ndarray of int, shape (num_tables, alphabet_size)
        Each row sums to ``2**precision_bits``.
    precision_bits : int
        Probability precision: symbol ``s`` of table ``t`` has probability
        ``frequencies[t, s - min_symbol] / 2**precision_bits``.
    min_symbol : int
        The symbol value of column 0 (an int32 input may have negative symbols).
    """

    frequencies: np.ndarray
    precision_bits: int
    min_symbol: int = 0

    def __post_init__(self):
        f = np.asarray(self.frequencies, dtype=np.int64)
        if f.ndim != 2 or f.shape[0] < 1 or f.shape[1] < 1:
            raise CodecConfigError(f"frequencies must be 2-D and non-empty, found {f.shape}")
        if not 1 <= self.precision_bits <= MAX_PRECISION_BITS:
            raise CodecConfigError(
                f"precision_bits must be in [1, {MAX_PRECISION_BITS}], found {self.precision_bits}"
            )
        if np.any(f < 0) or np.any(f.sum(axis=1) != (1 << self.precision_bits)):
            raise CodecConfigError(
                f"every table row must be non-negative and sum to 2**{self.precision_bits}"
            )
        object.__setattr__(self, "frequencies", f)

    @property
    def num_tables(self) -> int:
        return self.frequencies.shape[0]

    @property
    def alphabet_size(self) -> int:
        return self.frequencies.shape[1]

    @property
    def cumulative(self) -> np.ndarray:
        """Exclusive prefix sums, shape ``(num_tables, alphabet_size)``."""
        c = np.zeros_like(self.frequencies)
        np.cumsum(self.frequencies[:, :-1], axis=1, out=c[:, 1:])
        return c

    @property
    def probabilities(self) -> np.ndarray:
        return self.frequencies / float(1 << self.precision_bits)

    def table(self, index: int) -> FrequencyTable:
        """Row ``index`` as a :class:`FrequencyTable`."""
        return FrequencyTable(self.frequencies[index], self.precision_bits, self.min_symbol)

    def cross_entropy_bits(self, counts: np.ndarray) -> float:
        """Ideal code length in bits of data with these ``counts`` (same shape) under the model."""
        c = np.asarray(counts, dtype=np.float64).reshape(self.frequencies.shape)
        used = c > 0
        if np.any(self.frequencies[used] == 0):
            return math.inf
        return float(
            -(c[used] * (np.log2(self.frequencies[used]) - self.precision_bits)).sum()
        )

    @classmethod
    def from_counts(cls, counts, precision_bits: int, min_symbol: int = 0) -> PerChannelTables:
        """Quantize a ``(num_tables, alphabet_size)`` count array row by row."""
        from ..kernels import cpu

        c = np.ascontiguousarray(np.atleast_2d(np.asarray(counts, dtype=np.int64)))
        if c.ndim != 2:
            raise CodecConfigError(f"counts must be 1-D or 2-D, found {c.ndim}-D")
        if not 1 <= precision_bits <= MAX_PRECISION_BITS:
            raise CodecConfigError(
                f"precision_bits must be in [1, {MAX_PRECISION_BITS}], found {precision_bits}"
            )
        live = c.any(axis=1)  # an unused table puts all its mass on the first symbol
        if live.any():
            _check_counts(c[live] if not live.all() else c, precision_bits)
        return cls(cpu.quantize_rows(c, precision_bits), precision_bits, min_symbol)

    def to_bytes(self, packed: bool = False) -> bytes:
        """Compact serialisation, row after row: varints with zero runs (format version 1),
        or with ``packed`` the exp-Golomb bit packing of format version 2
        (:func:`pack_frequency_tables`), about half the size for 256-symbol tables."""
        if packed:
            cached = self.__dict__.get("_packed")
            if cached is None:
                cached = pack_frequency_tables(self.frequencies)
                object.__setattr__(self, "_packed", cached)
            return cached
        return b"".join(encode_uints(row) for row in self.frequencies)

    @classmethod
    def from_bytes(
        cls, buf, num_tables: int, alphabet_size: int, precision_bits: int, min_symbol: int,
        packed: bool = False,
    ) -> PerChannelTables:
        """Inverse of :meth:`to_bytes`; raises :class:`CorruptStreamError` on any mismatch."""
        buf = bytes(buf)
        end = len(buf)
        if num_tables * alphabet_size > 1 << 26:
            raise CorruptStreamError("corrupt kvinfo stream: model tables are implausibly large")
        m = 1 << precision_bits
        if packed:
            from ..kernels import cpu

            try:
                f, bits = cpu.unpack_frequency_tables(
                    np.frombuffer(buf, np.uint8).copy(), num_tables, alphabet_size, m)
            except CodecConfigError as exc:
                raise CorruptStreamError(f"corrupt kvinfo stream: {exc}") from None
            if (bits + 7) // 8 != end or (bits & 7 and buf[-1] & ((1 << (8 - (bits & 7))) - 1)):
                raise CorruptStreamError(
                    f"corrupt kvinfo stream: packed tables use {bits} bits of {end} bytes"
                )
            pos = end
        else:
            f = np.zeros((num_tables, alphabet_size), dtype=np.int64)
            pos = 0
            for t in range(num_tables):
                pos = decode_uints(buf, pos, end, f[t], m)
        sums = f.sum(axis=1)
        if np.any(sums != m):
            t = int(np.flatnonzero(sums != m)[0])
            raise CorruptStreamError(
                f"corrupt kvinfo stream: table {t} sums to {int(sums[t])}, expected {m}"
            )
        if pos != end:
            raise CorruptStreamError(
                f"corrupt kvinfo stream: model tables use {pos} of {end} bytes"
            )
        return cls(f, precision_bits, min_symbol)


@dataclass(frozen=True, eq=False)
class FrequencyTable:
    """A single quantized order-0 table.

    Parameters
    ----------
    frequencies : 1-D array of int summing to ``2**precision_bits``
    precision_bits : int
        Probability precision; symbol ``s`` has probability
        ``frequencies[s - min_symbol] / 2**precision_bits``.
    min_symbol : int
        The symbol value of entry 0.
    """

    frequencies: np.ndarray
    precision_bits: int
    min_symbol: int = 0

    def __post_init__(self):
        f = np.asarray(self.frequencies, dtype=np.int64)
        if f.ndim != 1:
            raise CodecConfigError(f"a FrequencyTable needs 1-D frequencies, found {f.shape}")
        tables = PerChannelTables(f[None, :], self.precision_bits, self.min_symbol)
        object.__setattr__(self, "frequencies", tables.frequencies[0])

    def as_tables(self) -> PerChannelTables:
        """This table as a one-row :class:`PerChannelTables`."""
        return PerChannelTables(self.frequencies[None, :], self.precision_bits, self.min_symbol)

    @property
    def cumulative(self) -> np.ndarray:
        return self.as_tables().cumulative[0]

    @property
    def probabilities(self) -> np.ndarray:
        return self.frequencies / float(1 << self.precision_bits)

    @classmethod
    def from_counts(cls, counts, precision_bits: int, min_symbol: int = 0) -> FrequencyTable:
        """Quantize 1-D ``counts`` to ``precision_bits`` (see :func:`quantize_counts`)."""
        return cls(quantize_counts(counts, precision_bits), precision_bits, min_symbol)


@dataclass(frozen=True)
class AdaptiveContextModel:
    """Layout of the adaptive binary-tree context model of the ``arith`` coder.

    A symbol index ``s`` (symbol minus ``min_symbol``) of ``symbol_bits`` bits is coded
    most-significant bit first; each binary decision has its own adaptive probability,
    selected by the tree node (the bits seen so far), the channel context and the
    previous-symbol context. The probability of a 0 bit starts at 1/2 and after ``n``
    observations moves toward the observed bit by ``1/(n + 2)`` (a Krichevsky-Trofimov
    estimate) until ``n`` reaches ``adapt_limit``, after which the rate stays
    ``1/(adapt_limit + 2)`` so the model can follow slow drift.

    Parameters
    ----------
    symbol_bits : int
        Bits per symbol index, ``ceil(log2(alphabet_size))`` (at least 1).
    num_channel_contexts : int
        1, or the number of channels (last axis) when each channel has its own context.
    prev_bits : int
        How many high bits of the previous symbol of the same channel select a context
        (0 disables the previous-symbol context).
    adapt_limit : int
        Observation count after which the adaptation rate stops falling.
    """

    symbol_bits: int
    num_channel_contexts: int
    prev_bits: int
    adapt_limit: int = 1022

    #: cap on the number of adaptive probabilities (each costs 4 bytes)
    MAX_NODES = 1 << 22

    @property
    def num_contexts(self) -> int:
        return self.num_channel_contexts << self.prev_bits

    @property
    def num_nodes(self) -> int:
        return self.num_contexts << self.symbol_bits

    @classmethod
    def for_data(
        cls, alphabet_size: int, num_channels: int, context: str, adapt_limit: int = 1022
    ) -> AdaptiveContextModel:
        """Choose the layout for a context mode (``"none"``, ``"channel"``,
        ``"channel+prev"``) within :attr:`MAX_NODES` adaptive probabilities.

        Channel contexts are dropped if ``num_channels << symbol_bits`` exceeds the cap;
        the previous-symbol context keeps as many high bits as fit.
        """
        b = max(1, math.ceil(math.log2(max(alphabet_size, 1))))
        nch = num_channels if context in ("channel", "channel+prev") else 1
        if (nch << b) > cls.MAX_NODES:
            nch = 1
        prev = 0
        if context == "channel+prev":
            prev = b
            while prev > 0 and (nch << (prev + b)) > cls.MAX_NODES:
                prev -= 1
        return cls(b, nch, prev, adapt_limit)
