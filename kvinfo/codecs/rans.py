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
    to pay for 32 lane states, one chunk with fewer lanes (1, 2, 4, 8 or 16), so the
    per-chunk cost (about 3 bytes per lane plus a varint) scales with the compressed
    size, not the symbol count. An int (a multiple of 32) fixes the chunk size and uses
    32 lanes, as a GPU decoder that wants many chunks prefers.
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

import numpy as np

from ..errors import CodecConfigError, CorruptStreamError
from ..kernels import cpu
from . import _container as C
from . import _device
from ._deprecated import deprecated_aliases
from .models import PerChannelTables, entropy_bits, min_precision_bits
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
C.register_layout("rans", tuple(_PARAM_SPEC), ("tables", "index", "payload"))

#: compressed bytes per chunk that the automatic layout aims at (32 lanes: ~0.02 % cost)
AUTO_CHUNK_BYTES = 1 << 19
#: compressed bytes per lane below which the automatic layout halves the lane count
AUTO_LANE_BYTES = 4096
#: the same for inputs of fewer than :data:`AUTO_SMALL_SYMBOLS` symbols, where the fixed
#: costs (header, table, lane states) weigh most against the 64-byte allowance and speed
#: matters least: at 64 K symbols of a 256-level heavy tail, 8 lanes instead of 2 cost 18
#: of the 64 bytes
AUTO_SMALL_LANE_BYTES = 16384
AUTO_SMALL_SYMBOLS = 1 << 20
#: relative gain per-channel tables must bring for ``per_channel="auto"`` to pick them
AUTO_PER_CHANNEL_MIN_GAIN = 5e-3


def auto_layout(num_symbols: int, estimated_bytes: float) -> tuple[int, int]:
    """``(chunk_size, num_lanes)`` for ``num_symbols`` symbols that code to about
    ``estimated_bytes``: chunks of about :data:`AUTO_CHUNK_BYTES` compressed bytes (at
    most 2**30 symbols; an even number of them when there are several, so that two
    threads share the work evenly), 32 lanes, fewer (a power of two) while a lane would
    carry less than :data:`AUTO_LANE_BYTES` (:data:`AUTO_SMALL_LANE_BYTES` below
    :data:`AUTO_SMALL_SYMBOLS` symbols).

    >>> auto_layout(1 << 20, 6250.0)  # 0.05 bit/symbol: one chunk of one lane
    (1048576, 1)
    >>> auto_layout(4 << 20, 1.5 * (1 << 20))  # 3 bits/symbol: 4 chunks of 32 lanes
    (1048576, 32)
    >>> auto_layout(1 << 16, 37000.0)  # 64 K symbols of a heavy tail: 2 lanes
    (65536, 2)
    """
    nchunks = max(1, int(estimated_bytes // AUTO_CHUNK_BYTES), -(-num_symbols // (1 << 30)))
    if nchunks > 1:
        nchunks += nchunks % 2
    per_chunk = estimated_bytes / nchunks
    lane_bytes = AUTO_LANE_BYTES if num_symbols >= AUTO_SMALL_SYMBOLS else AUTO_SMALL_LANE_BYTES
    lanes = cpu.RANS_LANES
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


def encode_tables(codec_id: str, array, precision_bits: int, per_channel: bool):
    """Shared front end of the static coders: flat symbols, offset, tables and counts."""
    a = C.as_symbol_array(array, codec_id)
    flat = a.reshape(-1)
    period = C.channel_period(a.shape)
    if flat.size == 0:
        return a, flat, period, 0, 0, None, None
    lo, span = C.symbol_range(flat, codec_id)
    if per_channel == "auto":
        if period > 1 and period <= 1 << 16 and period * span <= 1 << 22:
            per = cpu.histogram(flat, lo, span, period, per_channel=True)
            pooled = per.sum(axis=0, keepdims=True)
            # cheap screen first: the empirical gain of per-channel tables must beat a
            # generous table cost (12 bits per used entry) before both are quantized
            gain = entropy_bits(pooled) - sum(entropy_bits(row) for row in per)
            if gain < AUTO_PER_CHANNEL_MIN_GAIN * entropy_bits(pooled) + 12 * int(
                    (per > 0).sum()):
                return a, flat, period, lo, span, _tables(pooled, precision_bits, lo), pooled
            t1, t2 = (_tables(c, precision_bits, lo) for c in (pooled, per))
            s1, s2 = (t.cross_entropy_bits(c) + 8 * len(t.to_bytes(packed=True))
                      for t, c in ((t1, pooled), (t2, per)))
            if s2 < (1 - AUTO_PER_CHANNEL_MIN_GAIN) * s1:
                return a, flat, period, lo, span, t2, per
            return a, flat, period, lo, span, t1, pooled
        per_channel = False
    per = per_channel and period > 1
    counts = cpu.histogram(flat, lo, span, period, per_channel=per)
    return a, flat, period, lo, span, _tables(counts, precision_bits, lo), counts


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
                 per_channel: bool | str = "auto"):
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
        self.precision_bits = precision_bits
        self.chunk_size = chunk_size
        self.per_channel = per_channel

    def get_config(self) -> dict:
        return {
            "id": self.codec_id,
            "precision_bits": self.precision_bits,
            "chunk_size": self.chunk_size,
            "per_channel": self.per_channel,
        }

    # -- encode ------------------------------------------------------------------------
    def encode(self, array: np.ndarray) -> bytes:
        a, flat, period, lo, span, tables, counts = encode_tables(
            self.codec_id, array, self.precision_bits, self.per_channel
        )
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
                flat, lo, tables.frequencies, prec, chunk, period, counts=counts,
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
        }
        return C.pack(
            self.codec_id,
            a.shape,
            a.dtype.name,
            params,
            [("tables", tbytes), ("index", index), ("payload", words)],
            C.symbols_crc32(a),
        )

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
        p = C.require_params(c.params, _PARAM_SPEC)
        self._check_claim(c, p, max_output_bytes)
        n = c.num_symbols
        k_lanes = p["num_lanes"]
        C.check_chunks(p, n)
        if p["chunk_size"] % k_lanes:
            raise CorruptStreamError(
                "corrupt kvinfo stream: rans chunk_size not a multiple of num_lanes"
            )
        self._check_period(c, p)
        idx_dtype = _index_dtype(k_lanes)
        if n == 0:
            if p["num_tables"] or p["alphabet_size"] or any(len(v) for v in c.sections.values()):
                raise CorruptStreamError("corrupt kvinfo stream: empty array with non-empty data")
            return c, None, np.zeros(0, idx_dtype), np.empty(0, np.uint16)
        tables = self._tables(c, p)
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
        if set(c.sections) != {"tables", "index", "payload"}:
            raise CorruptStreamError(f"corrupt kvinfo stream: rans sections {sorted(c.sections)}")

    @staticmethod
    def _tables(c, p):
        if p["alphabet_size"] < 1 or p["num_tables"] not in (1, p["period"]):
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
        return gpu.prepare_rans(
            words, index["num_words"], index["states"],
            None if tables is None else tables.frequencies, precision_bits=p["precision_bits"],
            chunk_size=p["chunk_size"], min_symbol=p["min_symbol"], period=p["period"],
            shape=c.shape, dtype=c.dtype, dequant=dequant,
            verify=_device.crc_check(c) if dequant is None else None,
        )

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
        if c.num_symbols:
            status = cpu.rans_decode(
                words if words.dtype.isnative else words.astype(np.uint16),
                np.ascontiguousarray(index["num_words"], dtype=np.uint32),
                np.ascontiguousarray(index["states"], dtype=np.uint32), tables.frequencies,
                p["precision_bits"], p["chunk_size"], p["min_symbol"], p["period"], out,
            )
            C.raise_status(status, "rans")
        out = out.reshape(c.shape)
        C.check_symbols(c, out)
        return out


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
