"""Static interleaved rANS: 32 lanes of 32-bit states, 16-bit words, chunked for parallelism.

Parameters
----------
precision_bits : int, default 12
    Minimum probability precision of the quantized frequency table (frequencies sum to
    ``2**precision_bits``). At most 12 keeps the decode table within a GPU's shared
    memory; up to 16 is allowed (the GPU then reads the table from global memory). The
    stream records the precision it uses, which can be higher: if more distinct symbols
    occur than the table has slots, the smallest precision that fits them, so every
    alphabet up to 65536 symbols codes; and, for a single table over at least 2**16
    symbols, up to 15 bits when that shrinks the stream by more than 0.1 % (wide,
    heavy-tailed alphabets, where a 12-bit table alone costs about 0.75 %).
chunk_size : int or None, default None
    Symbols per independently decodable chunk. ``None`` (the default) chooses the chunk
    size and the number of interleaved lanes from the data: chunks of about
    :data:`AUTO_CHUNK_BYTES` compressed bytes with 32 lanes, and for streams too small
    to pay for 32 lane states, fewer lanes (1, 2, 4, 8 or 16; at low entropy two chunks
    from :data:`AUTO_SPLIT_BYTES`, so that two threads share the work), so the
    per-chunk cost (about 3 bytes per lane plus a varint) scales with the compressed
    size, not the symbol count; at most 4 lanes at :data:`AUTO_SPARSE_BITS` bits per
    symbol or less (the CPU coders then keep the lanes in registers). An int (a multiple
    of 32) fixes the chunk size and uses 32 lanes, as a GPU decoder that wants many
    chunks prefers.
per_channel : bool or "auto", default "auto"
    Give every channel (the last axis, for arrays of 2 or more dimensions) its own
    frequency table. ``"auto"`` measures both (ideal code length under the quantized
    tables plus the tables' bytes) and keeps per-channel tables when they shrink the
    estimate by more than 0.5 %; the stream records the choice (``num_tables``) and
    the rate split counts the tables as side information.

Notes
-----
Overhead (format version 2): a stream costs the ideal code length of its symbols under
the quantized table plus about 45 bytes of header and checksums, the table (a few bytes
for small alphabets, about one byte per used symbol of a 256-symbol alphabet) and about
3 bytes per lane per chunk. From 0.05 to 8 bits per symbol that stays within 0.1 % plus
64 bytes of the empirical order-0 entropy at 1 M symbols and more (tests hold it on fresh
random sources).

Symbols may be uint8, uint16 or int32 of any shape; int32 symbols may be negative, the
model is offset by the minimum symbol, and ``max - min + 1`` must not exceed 65536
(else :class:`~kvinfo.errors.CodecConfigError`). The coder is the byte-exact layout of
``docs/container-format.md`` (section "rans"): symbol ``j`` of a chunk is coded by lane
``j % num_lanes``; the encoder walks the chunk backwards and the decoder, at each step of 32
symbols, lets the lanes that need a renormalisation read consecutive 16-bit words in
lane order (the warp-ballot design of DietGPU), so a CUDA warp decodes one chunk.

Examples
--------
>>> import numpy as np
>>> from kvinfo.codecs import get_codec
>>> codec = get_codec({"id": "rans"})
>>> x = np.random.default_rng(0).integers(0, 16, size=(64, 128), dtype=np.uint8)
>>> data = codec.encode(x)
>>> bool(np.array_equal(codec.decode(data), x))
True
>>> r = codec.rate(data)
>>> 3.9 < r["symbol_bits_per_element"] < 4.05
True
>>> codec.decode(data, max_output_bytes=1024)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
kvinfo.errors.CorruptStreamError: the stream claims an output of 8192 bytes, above ...

References
----------
J. Duda, "Asymmetric numeral systems", arXiv:1311.2540, 2013.
F. Giesen, "Interleaved entropy coders", arXiv:1402.3392, 2014.
J. Johnson, "DietGPU: GPU-based lossless compression", github.com/facebookresearch/dietgpu.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from ..errors import CodecConfigError, CorruptStreamError
from ..kernels import cpu
from . import _container as C
from . import _device
from ._deprecated import deprecated_aliases
from .models import PerChannelTables, entropy_bits, min_precision_bits, row_entropy_bits
from .registry import register_codec

__all__ = ["RansCodec", "RANS_INDEX_DTYPE"]

#: one chunk-index record of format version 1 (little-endian, 144 bytes)
RANS_INDEX_DTYPE = np.dtype(
    [
        ("byte_offset", "<u8"),
        ("num_symbols", "<u4"),
        ("num_words", "<u4"),
        ("states", "<u4", (cpu.RANS_LANES,)),
    ]
)

_PARAM_SPEC_V1 = {
    "precision_bits": (1, 16),
    "chunk_size": (32, 1 << 30),
    "num_lanes": (cpu.RANS_LANES, cpu.RANS_LANES),
    "num_tables": (0, 1 << 24),
    "period": (1, 1 << 40),
    "min_symbol": (-(1 << 31), (1 << 32) - 1),
    "alphabet_size": (0, C.MAX_ALPHABET),
    "num_chunks": (0, 1 << 40),
}
#: format version 2 parameters, in stream order
_PARAM_SPEC = {
    "precision_bits": (1, 16),
    "num_lanes": (1, cpu.RANS_LANES),
    "chunk_size": (1, 1 << 30),
    "num_tables": (0, 1 << 24),
    "period": (1, 1 << 40),
    "min_symbol": (-(1 << 31), (1 << 32) - 1),
    "alphabet_size": (0, C.MAX_ALPHABET),
    "num_chunks": (0, 1 << 40),
}
C.register_layout("rans", tuple(_PARAM_SPEC), ("tables", "index", "payload"), versions=(2,))
#: format version 3 parameters: version 2's plus the number of raw-stored channels
_PARAM_SPEC_V3 = {**_PARAM_SPEC, "stored_channels": (0, 1 << 16)}
C.register_layout("rans", tuple(_PARAM_SPEC_V3), ("tables", "index", "payload"), versions=(3,),
                  optional=("stored",))

#: default of ``store_below``: a channel is stored raw when coding it would save less than
#: this fraction of its raw size (0.1 %, the coder's rate allowance)
STORE_BELOW = 1e-3

#: compressed bytes per chunk that the automatic layout aims at (32 lanes: ~0.02 % cost)
AUTO_CHUNK_BYTES = 1 << 19
#: estimated compressed bytes from which the automatic layout makes at least two chunks
#: of a low-entropy stream (:data:`AUTO_SPARSE_BITS`), which would otherwise be one chunk
#: of at most 4 lanes: two threads then share the work, and the second chunk's 4 lane
#: states and word count cost at most ~0.03 % from here (a second chunk of 32 lanes at
#: 0.6 MB, 100 bytes, measured too much for the 0.1 % budget on a 256-level Zipf source)
AUTO_SPLIT_BYTES = 1 << 16
#: compressed bytes per lane below which the automatic layout halves the lane count
AUTO_LANE_BYTES = 4096
#: the same for inputs of fewer than :data:`AUTO_SMALL_SYMBOLS` symbols, where the fixed
#: costs (header, table, lane states) weigh most against the 64-byte allowance and speed
#: matters least: at 64 K symbols of a 256-level heavy tail, 8 lanes instead of 2 cost 18
#: of the 64 bytes
AUTO_SMALL_LANE_BYTES = 16384
AUTO_SMALL_SYMBOLS = 1 << 20
#: at most this many bits per symbol, the automatic layout uses at most 4 lanes (the CPU
#: decoder's rare-renormalisation loop: 0.14 bit per symbol decoded 1.7x faster with 4
#: lanes than with 16, measured)
AUTO_SPARSE_BITS = 0.5
#: relative gain per-channel tables must bring for ``per_channel="auto"`` to pick them
AUTO_PER_CHANNEL_MIN_GAIN = 5e-3


def auto_layout(num_symbols: int, estimated_bytes: float) -> tuple[int, int]:
    """``(chunk_size, num_lanes)`` for ``num_symbols`` symbols that code to about
    ``estimated_bytes``: chunks of about :data:`AUTO_CHUNK_BYTES` compressed bytes (at
    most 2**30 symbols; an even number of them when there are several, and at least two
    of a low-entropy stream from :data:`AUTO_SPLIT_BYTES`, so that two threads share the
    work evenly), 32 lanes, fewer (a power of two) while a lane would
    carry less than :data:`AUTO_LANE_BYTES` (:data:`AUTO_SMALL_LANE_BYTES` below
    :data:`AUTO_SMALL_SYMBOLS` symbols), and at most 4 at :data:`AUTO_SPARSE_BITS` bits per
    symbol or less (the CPU decoder keeps up to 4 lanes in registers).

    >>> auto_layout(1 << 20, 6250.0)  # 0.05 bit/symbol: one chunk of one lane
    (1048576, 1)
    >>> auto_layout(4 << 20, 1.5 * (1 << 20))  # 3 bits/symbol: 4 chunks of 32 lanes
    (1048576, 32)
    >>> auto_layout(4 << 20, 74000.0)  # 0.14 bit/symbol: two chunks of 4 lanes
    (2097152, 4)
    >>> auto_layout(4 << 20, 26000.0)  # 0.05 bit/symbol: one chunk of 4 lanes
    (4194304, 4)
    >>> auto_layout(1 << 16, 37000.0)  # 64 K symbols of a heavy tail: 2 lanes
    (65536, 2)
    """
    sparse = 8 * estimated_bytes <= AUTO_SPARSE_BITS * num_symbols
    nchunks = max(1, int(estimated_bytes // AUTO_CHUNK_BYTES), -(-num_symbols // (1 << 30)),
                  2 if sparse and estimated_bytes >= AUTO_SPLIT_BYTES else 1)
    if nchunks > 1:
        nchunks += nchunks % 2
    per_chunk = estimated_bytes / nchunks
    lane_bytes = AUTO_LANE_BYTES if num_symbols >= AUTO_SMALL_SYMBOLS else AUTO_SMALL_LANE_BYTES
    lanes = cpu.RANS_LANES
    if sparse:
        # low entropy: the CPU decoder's rare-renormalisation loop (lanes in registers)
        # serves up to 4 lanes, and fewer lane states cost less
        lanes = max(cpu.RANS_SPARSE_LANES)
    while lanes > 1 and lanes * lane_bytes > per_chunk:
        lanes //= 2
    chunk = -(-num_symbols // nchunks)
    chunk = min(1 << 30, max(32, -(-chunk // 32) * 32))
    return chunk, lanes


def _validate_int(name, value, lo, hi, codec_id):
    if type(value) is not int or not lo <= value <= hi:
        raise CodecConfigError(
            f"{codec_id}: {name} must be an int in [{lo}, {hi}], found {value!r}"
        )


def per_channel_counts_fit(period: int, span: int) -> bool:
    """Whether a per-channel histogram of ``period`` channels of ``span`` symbols is small
    enough to take (at most 2**16 channels and 2**22 cells)."""
    return period <= 1 << 16 and period * span <= 1 << 22


def encode_tables(codec_id: str, array, precision_bits: int, per_channel: bool,
                  histogram=None):
    """Shared front end of the static coders: flat symbols, offset, tables and counts.

    ``histogram`` is an optional ``(per-channel counts, min_symbol, alphabet_size)`` of
    ``array`` already taken (so the symbols are not counted twice).
    """
    a = C.as_symbol_array(array, codec_id)
    flat = a.reshape(-1)
    period = C.channel_period(a.shape)
    if flat.size == 0:
        return a, flat, period, 0, 0, None, None
    if histogram is None:
        lo, span = C.symbol_range(flat, codec_id)
        known = None
    else:
        known, lo, span = histogram
    if per_channel == "auto":
        if period > 1 and per_channel_counts_fit(period, span):
            per = known if known is not None else cpu.histogram(
                flat, lo, span, period, per_channel=True, range_checked=True)
            pooled = per.sum(axis=0, keepdims=True)
            # cheap screen first: the empirical gain of per-channel tables must beat a
            # generous table cost (12 bits per used entry) before both are quantized
            gain = entropy_bits(pooled) - float(row_entropy_bits(per).sum())
            if gain < AUTO_PER_CHANNEL_MIN_GAIN * entropy_bits(pooled) + 12 * int(
                    (per > 0).sum()):
                return a, flat, period, lo, span, _tables(pooled, precision_bits, lo), pooled
            t2 = _tables(per, precision_bits, lo)
            s2 = t2.cross_entropy_bits(per) + 8 * len(t2.to_bytes(packed=True))
            # the pooled stream costs at least the pooled entropy (no table codes below
            # it): when the per-channel stream beats even that, the pooled table need not
            # be built (the same choice as comparing the two sizes)
            if s2 < (1 - AUTO_PER_CHANNEL_MIN_GAIN) * entropy_bits(pooled):
                return a, flat, period, lo, span, t2, per
            t1 = _tables(pooled, precision_bits, lo)
            s1 = t1.cross_entropy_bits(pooled) + 8 * len(t1.to_bytes(packed=True))
            if s2 < (1 - AUTO_PER_CHANNEL_MIN_GAIN) * s1:
                return a, flat, period, lo, span, t2, per
            return a, flat, period, lo, span, t1, pooled
        per_channel = False
    per = per_channel and period > 1
    if known is not None:
        counts = known if per else known.sum(axis=0, keepdims=True)
    else:
        # the range was taken from this array's min and max just above
        counts = cpu.histogram(flat, lo, span, period, per_channel=per, range_checked=True)
    return a, flat, period, lo, span, _tables(counts, precision_bits, lo), counts


def store_mask(counts: np.ndarray, symbol_bits: int, store_below: float,
               precision_bits: int = 12, per_channel: bool | str = "auto") -> np.ndarray:
    """Which channels to store raw: those whose coded size would be at least
    ``(1 - store_below)`` of their raw size (``symbol_bits`` per symbol).

    ``counts`` is the per-channel histogram ``(channels, alphabet)``. The coded size of a
    channel is the cheaper of what the coder could do with it (``per_channel``: ``True``
    its own table, ``False`` the pooled table, ``"auto"`` either): its ideal code length
    under its own quantized table (``precision_bits``, as the coder would build it) plus
    the table's bytes, or under the table pooled over every channel plus a share of that
    table's bytes in proportion to the channel's used symbols. A channel whose empirical
    entropy plus a generous table cost (16 bits per used symbol) stays below the threshold
    is not examined further, and one whose entropy alone reaches it is stored without
    building tables (no table codes below the entropy). A stored channel then costs at
    most ``store_below`` of its raw size more than coding it would, and no time is spent
    coding it; a channel whose table costs more than coding saves (small inputs of wide
    alphabets) is stored too.

    >>> c = np.array([[1000, 1000], [1990, 10]])  # a fair coin and a skewed one
    >>> store_mask(c, 1, 1e-3).tolist()
    [True, False]
    """
    counts = np.asarray(counts)
    mask = np.zeros(counts.shape[0], bool)
    if store_below <= 0:
        return mask
    rows = counts.sum(axis=1)
    # every channel's empirical entropy at once: no table can code a channel below it
    # (Gibbs), so a channel whose entropy alone reaches the limit is stored without
    # building its tables (the incompressible mantissa bytes of floats)
    ent = row_entropy_bits(counts)
    used_all = (counts > 0).sum(axis=1)
    pooled = None
    for ch in range(counts.shape[0]):
        raw = symbol_bits * int(rows[ch])
        if not raw:
            continue
        row = counts[ch : ch + 1]
        used = int(used_all[ch])
        limit = (1.0 - store_below) * raw
        if per_channel is not False and ent[ch] + 16 * used < limit:
            continue
        if ent[ch] >= limit:
            mask[ch] = True
            continue
        coded = math.inf
        if per_channel is not False:
            t = _tables(row, precision_bits, 0)
            coded = t.cross_entropy_bits(row) + 8 * len(t.to_bytes(packed=True))
        if per_channel is not True and coded >= limit:
            if pooled is None:
                total = counts.sum(axis=0, keepdims=True)
                pooled = _tables(total, precision_bits, 0)
                share = 8 * len(pooled.to_bytes(packed=True)) / max(1, int((counts > 0).sum()))
            # the pooled table's bytes, shared among the channels by their used symbols
            coded = min(coded, pooled.cross_entropy_bits(row) + share * used)
        mask[ch] = coded >= limit
    return mask


def _split_channels(flat: np.ndarray, mask: np.ndarray, stored_out: np.ndarray) -> np.ndarray:
    """Rows of ``flat`` (``len(mask)`` channels each): the stored channels (``mask``) go to
    ``stored_out`` (flat, row by row), the others come back as a flat array (one pass
    over the rows, :func:`kvinfo.kernels.cpu.split_channels`)."""
    period = mask.shape[0]
    grid = np.ascontiguousarray(flat).reshape(-1, period)
    raw = stored_out.reshape(grid.shape[0], int(mask.sum()))
    return cpu.split_channels(grid, mask, raw).reshape(-1)


def _merge_channels(coded: np.ndarray, stored: np.ndarray, mask: np.ndarray,
                    out: np.ndarray) -> None:
    """The inverse of :func:`_split_channels`, into the flat array ``out``."""
    period = mask.shape[0]
    grid = out.reshape(-1, period)
    rows, k = grid.shape[0], int(mask.sum())
    # the stored symbols are a little-endian view at any byte offset of the stream: a
    # native, aligned copy only where they are not already
    raw = np.require(stored, out.dtype, ["C", "A"]).reshape(rows, k)
    cpu.merge_channels(np.ascontiguousarray(coded).reshape(rows, period - k), raw, mask, grid)


def _bitmap(mask: np.ndarray) -> bytes:
    """Little-endian bit order: channel ``c`` is bit ``c % 8`` of byte ``c // 8``."""
    return np.packbits(mask.astype(np.uint8), bitorder="little").tobytes()


def _tables(counts, precision_bits: int, lo: int) -> PerChannelTables:
    used = int((counts > 0).sum(axis=1).max())
    prec = max(precision_bits, min_precision_bits(used))
    return PerChannelTables.from_counts(counts, prec, lo)


#: inputs from this many symbols on may get a finer table than ``precision_bits``
AUTO_PRECISION_MIN_SYMBOLS = 1 << 16
#: the finest table the encoder picks by itself
AUTO_PRECISION_MAX_BITS = 15
#: relative size reduction a finer table must bring to be picked
AUTO_PRECISION_MIN_GAIN = 1e-3


def refine_precision(tables: PerChannelTables, counts) -> PerChannelTables:
    """The coarsest table of precision ``tables.precision_bits .. 15`` that codes ``counts``
    within 0.05 % of the best of them, if that beats ``tables`` by more than 0.1 %.

    Size = ideal code length under the quantized table + the table's own bytes. The
    coder's real size tracks the ideal one closely (rANS loses ~1e-5 bit per symbol), so
    this picks the precision that minimises the stream. On 16-level sources a 12-bit table
    already loses under 0.1 % and is kept; on a 256-level heavy-tailed source it picks 15.
    """

    def size(t: PerChannelTables) -> float:
        return t.cross_entropy_bits(counts) + 8 * len(t.to_bytes(packed=True))

    base = size(tables)
    options = [(tables.precision_bits, tables, base)]
    for p in range(tables.precision_bits + 1, AUTO_PRECISION_MAX_BITS + 1):
        t = PerChannelTables.from_counts(counts, p, tables.min_symbol)
        options.append((p, t, size(t)))
    best = min(s for _, _, s in options)
    if base - best <= AUTO_PRECISION_MIN_GAIN * base:
        return tables
    return next(t for _, t, s in options if s <= best + 5e-4 * base)


@register_codec
class RansCodec(C.ContainerCoder):
    """Static interleaved rANS codec; the module docstring lists parameters and notes."""

    codec_id = "rans"

    def __init__(self, precision_bits: int = 12, chunk_size: int | None = None,
                 per_channel: bool | str = "auto", store_below: float = STORE_BELOW):
        _validate_int("precision_bits", precision_bits, 1, 16, self.codec_id)
        if chunk_size is not None:
            _validate_int("chunk_size", chunk_size, 32, 1 << 30, self.codec_id)
            if chunk_size % 32:
                raise CodecConfigError(
                    f"rans: chunk_size must be a multiple of 32, found {chunk_size}"
                )
        if not isinstance(per_channel, bool) and per_channel != "auto":
            raise CodecConfigError(
                f"rans: per_channel must be true, false or 'auto', found {per_channel!r}"
            )
        if (isinstance(store_below, bool) or not isinstance(store_below, int | float)
                or not 0.0 <= store_below < 1.0):
            raise CodecConfigError(
                f"rans: store_below must be a number in [0, 1), found {store_below!r}"
            )
        self.precision_bits = precision_bits
        self.chunk_size = chunk_size
        self.per_channel = per_channel
        self.store_below = float(store_below)

    def get_config(self) -> dict:
        return {
            "id": self.codec_id,
            "precision_bits": self.precision_bits,
            "chunk_size": self.chunk_size,
            "per_channel": self.per_channel,
            "store_below": self.store_below,
        }

    # -- encode ------------------------------------------------------------------------
    def encode(self, array: np.ndarray) -> bytes:
        whole = C.as_symbol_array(array, self.codec_id)
        target, mask, raw, hist = self._split_stored(whole)
        a, flat, coded_period, lo, span, tables, counts = encode_tables(
            self.codec_id, target, self.precision_bits, self.per_channel, histogram=hist
        )
        period = C.channel_period(whole.shape)
        n = flat.size
        if tables is not None and tables.num_tables == 1 and n >= AUTO_PRECISION_MIN_SYMBOLS:
            tables = refine_precision(tables, counts)
        if n == 0:
            prec, num_tables, tbytes = self.precision_bits, 0, b""
            chunk, lanes, nchunks = self.chunk_size or 32, cpu.RANS_LANES, 0
            words = np.empty(0, np.uint16)
            index = b""
        else:
            prec, num_tables = tables.precision_bits, tables.num_tables
            if self.chunk_size is None:
                chunk, lanes = auto_layout(n, tables.cross_entropy_bits(counts) / 8)
            else:
                chunk, lanes = self.chunk_size, cpu.RANS_LANES
            nchunks = -(-n // chunk)
            words, num_words, states = cpu.rans_encode(
                flat, lo, tables.frequencies, prec, chunk, coded_period, counts=counts,
                num_lanes=lanes,
            )
            index = states.astype("<u4").tobytes() + _varints(num_words)
            tbytes = tables.to_bytes(packed=True)
        params = {
            "precision_bits": prec,
            "num_lanes": lanes,
            "chunk_size": chunk,
            "num_tables": num_tables,
            "period": period,
            "min_symbol": lo,
            "alphabet_size": span,
            "num_chunks": nchunks,
            "stored_channels": 0 if mask is None else int(mask.sum()),
        }
        stored = b"" if mask is None else raw  # the section, built by _split_stored
        return C.pack(
            self.codec_id,
            whole.shape,
            whole.dtype.name,
            params,
            [("tables", tbytes), ("index", index), ("payload", words), ("stored", stored)],
            C.symbols_crc32(whole),
        )

    def _split_stored(self, a: np.ndarray):
        """``(array to code, stored mask or None, stored section, histogram or None)``.

        The stored section holds the channel bitmap, then the stored symbols (the
        little-endian).

        The per-channel histogram taken for the choice is handed on to the table builder
        (restricted to the coded channels and their symbol range), so the symbols are
        counted once.
        """
        flat = a.reshape(-1)
        period = C.channel_period(a.shape)
        if not flat.size:
            return a, None, None, None
        lo, span = C.symbol_range(flat, self.codec_id)
        if not per_channel_counts_fit(period, span) or (
                self.store_below <= 0 and (self.per_channel != "auto" or period == 1)):
            return a, None, None, None
        per = cpu.histogram(flat, lo, span, period, per_channel=True, range_checked=True)
        mask = store_mask(per, 8 * a.dtype.itemsize, self.store_below, self.precision_bits,
                          self.per_channel)
        if not mask.any():
            return a, None, None, (per, lo, span)
        rows = flat.size // period
        k = int(mask.sum())
        # the stored section (bitmap, then the stored symbols) is written in place
        nmap = -(-period // 8)
        section = np.empty(nmap + rows * k * a.dtype.itemsize, np.uint8)
        section[:nmap] = np.frombuffer(_bitmap(mask), np.uint8)
        raw = section[nmap:].view(a.dtype)
        coded = _split_channels(flat, mask, raw)
        if sys.byteorder == "big":  # the stream is little-endian
            raw.byteswap(inplace=True)
        coded = coded.reshape(rows, period - k)
        if not coded.size:
            return coded, mask, section, None
        cper = per[~mask]
        used = np.flatnonzero(cper.sum(axis=0))
        first, last = int(used[0]), int(used[-1])
        return coded, mask, section, (cper[:, first:last + 1], lo + first, last - first + 1)

    @staticmethod
    def _symbol_bytes(c) -> int:
        """The payload and the raw-stored symbols (not their channel bitmap)."""
        n = len(c.sections["payload"]) if "payload" in c.sections else 0
        if "stored" in c.sections:
            n += max(0, len(c.sections["stored"]) - (-(-int(c.params.get("period", 1)) // 8)))
        return n

    # -- decode ------------------------------------------------------------------------
    def parse(self, data, max_output_bytes: int | None = None):
        """Validate a stream completely; return ``(container, tables, index, words)``.

        ``index`` is a structured array with fields ``num_words`` (u4) and ``states``
        (u4, one per lane) per chunk. Everything a decode kernel will follow is checked
        here: parameters against the shape and dtype, table sums, chunk word counts
        against the payload and against what the table allows, lane states. The claimed
        output and the tables' working memory are checked against ``max_output_bytes``
        (:mod:`kvinfo.codecs.limits`) before anything is allocated.
        """
        c = C.unpack(data, self.codec_id)
        if c.version == 1:
            return self._parse_v1(c, max_output_bytes)
        p = C.require_params(c.params, _PARAM_SPEC if c.version == 2 else _PARAM_SPEC_V3)
        self._check_claim(c, p, max_output_bytes)
        self._check_period(c, p)
        c.stored = self._stored(c, p)
        # the coded part: every channel but the stored ones
        coded_period = p["period"] - (0 if c.stored is None else c.stored.num_channels)
        n = c.num_symbols // p["period"] * coded_period
        k_lanes = p["num_lanes"]
        C.check_chunks(p, n)
        if p["chunk_size"] % k_lanes:
            raise CorruptStreamError(
                "corrupt kvinfo stream: rans chunk_size not a multiple of num_lanes"
            )
        idx_dtype = _index_dtype(k_lanes)
        if n == 0:
            if p["num_tables"] or p["alphabet_size"] or any(
                    len(c.sections[k]) for k in ("tables", "index", "payload")):
                raise CorruptStreamError("corrupt kvinfo stream: empty array with non-empty data")
            return c, None, np.zeros(0, idx_dtype), np.empty(0, np.uint16)
        tables = self._tables(c, p, coded_period)
        nchunks = p["num_chunks"]
        raw = bytes(c.sections["index"])
        nstate = 4 * k_lanes * nchunks
        if len(raw) <= nstate:
            raise CorruptStreamError(
                f"corrupt kvinfo stream: rans index holds {len(raw)} bytes, expected more than "
                f"{nstate} for {nchunks} chunks of {k_lanes} lanes"
            )
        index = np.zeros(nchunks, idx_dtype)
        index["states"] = np.frombuffer(raw, "<u4", nchunks * k_lanes).reshape(nchunks, k_lanes)
        nw = _read_varints(raw, nstate, nchunks)
        index["num_words"] = nw
        if len(c.sections["payload"]) % 2:
            raise CorruptStreamError("corrupt kvinfo stream: rans payload has an odd length")
        words = np.frombuffer(c.sections["payload"], "<u2")  # a view; kernels copy it
        expect_syms = np.minimum(
            p["chunk_size"], n - np.arange(nchunks, dtype=np.int64) * p["chunk_size"]
        )
        self._check_counts(nw, expect_syms, words, index["states"], tables, n, c)
        return c, tables, index, words

    @staticmethod
    def _stored(c, p):
        """The raw-stored channels of a version-3 stream (None when there are none)."""
        k = p.get("stored_channels", 0)
        if not k:
            if "stored" in c.sections:
                raise CorruptStreamError(
                    "corrupt kvinfo stream: rans stored section without stored channels")
            return None
        period, n = p["period"], c.num_symbols
        if k > period or n == 0 or "stored" not in c.sections:
            raise CorruptStreamError(
                f"corrupt kvinfo stream: {k} stored channels of {period} for {n} symbols"
            )
        raw = c.sections["stored"]
        nmap = -(-period // 8)
        rows = n // period
        itemsize = np.dtype(c.dtype).itemsize
        if len(raw) != nmap + rows * k * itemsize:
            raise CorruptStreamError(
                f"corrupt kvinfo stream: rans stored section holds {len(raw)} bytes, expected "
                f"{nmap + rows * k * itemsize} ({k} channels of {rows} {c.dtype} symbols)"
            )
        bits = np.unpackbits(np.frombuffer(raw, np.uint8, nmap), bitorder="little")
        if bits[period:].any() or int(bits[:period].sum()) != k:
            raise CorruptStreamError(
                f"corrupt kvinfo stream: rans stored-channel map does not mark {k} of "
                f"{period} channels"
            )
        symbols = np.frombuffer(raw, np.dtype(c.dtype).newbyteorder("<"), rows * k, nmap)
        return StoredChannels(bits[:period].astype(bool), symbols.reshape(rows, k))

    @staticmethod
    def _check_claim(c, p, max_output_bytes):
        C.check_output_bytes(c.num_symbols * np.dtype(c.dtype).itemsize, max_output_bytes)
        # the tables' working memory: bounded by the stream's own size, not the limit
        if p["num_tables"] * p["alphabet_size"] > max(1 << 20, 1024 * c.total_len):
            raise CorruptStreamError(
                f"corrupt kvinfo stream: {p['num_tables']} tables of {p['alphabet_size']} "
                f"symbols cannot be described by {c.total_len} bytes"
            )

    @staticmethod
    def _check_period(c, p):
        if p["period"] != C.channel_period(c.shape):
            raise CorruptStreamError(
                f"corrupt kvinfo stream: period {p['period']} does not match shape {c.shape}"
            )
        if not {"tables", "index", "payload"} <= set(c.sections) <= {
                "tables", "index", "payload", "stored"}:
            raise CorruptStreamError(f"corrupt kvinfo stream: rans sections {sorted(c.sections)}")

    @staticmethod
    def _tables(c, p, coded_period=None):
        coded_period = p["period"] if coded_period is None else coded_period
        if p["alphabet_size"] < 1 or p["num_tables"] not in (1, coded_period):
            raise CorruptStreamError(
                f"corrupt kvinfo stream: alphabet_size {p['alphabet_size']} / num_tables "
                f"{p['num_tables']} inconsistent with period {p['period']}"
            )
        C.check_dtype_range(p, c.dtype)
        if p["num_tables"] > 8 * len(c.sections["tables"]) // 7:  # a row takes >= 7 bits
            raise CorruptStreamError(
                f"corrupt kvinfo stream: {p['num_tables']} tables cannot fit "
                f"{len(c.sections['tables'])} bytes"
            )
        return PerChannelTables.from_bytes(
            c.sections["tables"], p["num_tables"], p["alphabet_size"], p["precision_bits"],
            p["min_symbol"], packed=c.version >= 2,
        )

    @staticmethod
    def _check_counts(nw, expect_syms, words, states, tables, n, c):
        if int(nw.sum()) != words.shape[0] or np.any(nw > expect_syms):
            raise CorruptStreamError(
                f"corrupt kvinfo stream: chunk word counts sum to {int(nw.sum())}, payload "
                f"holds {words.shape[0]} words"
            )
        if np.any(states < cpu.RANS_STATE_LOWER):
            raise CorruptStreamError("corrupt kvinfo stream: a final rans state is below 2**16")
        # a symbol costs at least log2(M / f_max) bits; words and lane states (16 bits of
        # information each above the initial 2**16) carry everything
        f_max = int(tables.frequencies.max())
        min_bits = tables.precision_bits - float(np.log2(f_max))
        C.check_min_bits(c, n, min_bits, 16.0 * (words.shape[0] + states.size), "rans")

    def _parse_v1(self, c, max_output_bytes=None):
        p = C.require_params(c.params, _PARAM_SPEC_V1)
        self._check_claim(c, p, max_output_bytes)
        n = c.num_symbols
        C.check_chunks(p, n)
        if p["chunk_size"] % 32:
            raise CorruptStreamError("corrupt kvinfo stream: rans chunk_size not a multiple of 32")
        self._check_period(c, p)
        if n == 0:
            if p["num_tables"] or p["alphabet_size"] or any(len(v) for v in c.sections.values()):
                raise CorruptStreamError("corrupt kvinfo stream: empty array with non-empty data")
            return c, None, np.zeros(0, _index_dtype(cpu.RANS_LANES)), np.empty(0, np.uint16)
        tables = self._tables(c, p)
        rec = C.section_array(c, "index", RANS_INDEX_DTYPE, p["num_chunks"])
        words = C.section_array(c, "payload", "<u2")
        nw = rec["num_words"].astype(np.int64)
        offs = np.zeros_like(nw)
        np.cumsum(2 * nw[:-1], out=offs[1:])
        expect_syms = np.minimum(
            p["chunk_size"], n - np.arange(p["num_chunks"], dtype=np.int64) * p["chunk_size"]
        )
        if not np.array_equal(rec["byte_offset"].astype(np.int64), offs):
            raise CorruptStreamError("corrupt kvinfo stream: rans chunk byte offsets inconsistent")
        if not np.array_equal(rec["num_symbols"].astype(np.int64), expect_syms):
            raise CorruptStreamError("corrupt kvinfo stream: rans chunk symbol counts inconsistent")
        self._check_counts(nw, expect_syms, words, rec["states"], tables, n, c)
        index = np.zeros(p["num_chunks"], _index_dtype(cpu.RANS_LANES))
        index["num_words"] = rec["num_words"]
        index["states"] = rec["states"]
        return c, tables, index, words

    def prepare_cuda(self, data, *, dequant=None, shape=None, max_symbol=None):
        """Validate ``data`` with :meth:`parse` and upload it for the CUDA kernels; returns a
        :class:`kvinfo.kernels.gpu.PreparedStream`. ``dequant`` (a
        :class:`kvinfo.kernels.gpu.Dequant`), ``shape`` and ``max_symbol`` are for a
        quantizer whose symbols this stream codes (fused decode and dequantize)."""
        gpu = _device.front_end()
        c, tables, index, words = self.parse(data)
        _device.check_coded(c, shape, max_symbol)
        p = c.params
        verify = _device.crc_check(c) if dequant is None else None
        st = getattr(c, "stored", None)
        if st is None:
            return gpu.prepare_rans(
                words, index["num_words"], index["states"],
                None if tables is None else tables.frequencies,
                precision_bits=p["precision_bits"], chunk_size=p["chunk_size"],
                min_symbol=p["min_symbol"], period=p["period"], shape=c.shape, dtype=c.dtype,
                dequant=dequant, verify=verify,
            )
        # the coded channels decode as their own (rows, coded channels) array, then one
        # kernel interleaves them with the stored channels (and dequantizes)
        rows, cp = st.symbols.shape[0], p["period"] - st.num_channels
        coded = None if tables is None else gpu.prepare_rans(
            words, index["num_words"], index["states"], tables.frequencies,
            precision_bits=p["precision_bits"], chunk_size=p["chunk_size"],
            min_symbol=p["min_symbol"], period=cp, shape=(rows, cp), dtype=c.dtype,
        )
        return gpu.prepare_stored(coded, st.mask, st.symbols, shape=c.shape, dtype=c.dtype,
                                  dequant=dequant, verify=verify)

    def decode(self, data, device: str = "cpu", max_output_bytes: int | None = None
               ) -> np.ndarray:
        if device == "cuda":  # device memory, via kvinfo.kernels.gpu (CudaUnavailableError without)
            return self.prepare_cuda(data).decode()
        if device != "cpu":
            raise CodecConfigError(f"rans: device must be 'cpu' or 'cuda', found {device!r}")
        c, tables, index, words = self.parse(data, max_output_bytes)
        p = c.params
        work = 0 if tables is None else 8 * tables.num_tables * (
            2 * tables.alphabet_size + (1 << tables.precision_bits))
        out = C.allocate_output(c, max_output_bytes, work)
        st = getattr(c, "stored", None)
        coded, period = out, p["period"]
        if st is not None:
            period -= st.num_channels
            coded = np.empty(st.symbols.shape[0] * period, out.dtype)
        if coded.size:
            status = cpu.rans_decode(
                words if words.dtype.isnative else words.astype(np.uint16),
                np.ascontiguousarray(index["num_words"], dtype=np.uint32),
                np.ascontiguousarray(index["states"], dtype=np.uint32), tables.frequencies,
                p["precision_bits"], p["chunk_size"], p["min_symbol"], period, coded,
            )
            C.raise_status(status, "rans")
        if st is not None:
            _merge_channels(coded, st.symbols, st.mask, out)
        out = out.reshape(c.shape)
        C.check_symbols(c, out)
        return out


class StoredChannels:
    """The raw-stored channels of a version-3 ``rans`` stream: ``mask`` (bool, one per
    channel) and ``symbols`` (``(rows, stored channels)``, a read-only view of the
    stream)."""

    def __init__(self, mask: np.ndarray, symbols: np.ndarray):
        self.mask = mask
        self.symbols = symbols

    @property
    def num_channels(self) -> int:
        return int(self.symbols.shape[1])

    @property
    def map_bytes(self) -> int:
        """Bytes of the channel bitmap at the start of the section."""
        return -(-self.mask.shape[0] // 8)


def _varints(values) -> bytes:
    """Unsigned LEB128 varints, one per value."""
    out = bytearray()
    for v in np.asarray(values, dtype=np.int64).tolist():
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


def _read_varints(buf: bytes, pos: int, count: int) -> np.ndarray:
    """Exactly ``count`` varints filling ``buf[pos:]`` (each below 2**31)."""
    out = np.zeros(count, np.int64)
    end = len(buf)
    for i in range(count):
        v = shift = 0
        while True:
            if pos >= end or shift > 28:
                raise CorruptStreamError("corrupt kvinfo stream: rans index varint truncated")
            b = buf[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        out[i] = v
    if pos != end:
        raise CorruptStreamError("corrupt kvinfo stream: trailing bytes in the rans index")
    return out


def _index_dtype(num_lanes: int) -> np.dtype:
    """The parsed chunk index: words and final lane states of every chunk."""
    return np.dtype([("num_words", "<u4"), ("states", "<u4", (num_lanes,))])


#: old class name, deprecated (one release)
__getattr__ = deprecated_aliases(__name__, {"Rans": "RansCodec"})
