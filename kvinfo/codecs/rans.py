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
chunk_size : int, default 65536
    Symbols per independently decodable chunk (a multiple of 32). Each chunk costs 144
    bytes of index (offset, counts and 32 final lane states).
per_channel : bool, default False
    Give every channel (the last axis, for arrays of 2 or more dimensions) its own
    frequency table.

Notes
-----
Symbols may be uint8, uint16 or int32 of any shape; int32 symbols may be negative, the
model is offset by the minimum symbol, and ``max - min + 1`` must not exceed 65536
(else :class:`~kvinfo.errors.CodecConfigError`). The coder is the byte-exact layout of
``docs/container-format.md`` (section "rans"): symbol ``j`` of a chunk is coded by lane
``j % 32``; the encoder walks the chunk backwards and the decoder, at each step of 32
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
from .models import PerChannelTables, min_precision_bits
from .registry import register_codec

__all__ = ["RansCodec", "RANS_INDEX_DTYPE"]

#: one chunk-index record (little-endian, 144 bytes)
RANS_INDEX_DTYPE = np.dtype(
    [
        ("byte_offset", "<u8"),
        ("num_symbols", "<u4"),
        ("num_words", "<u4"),
        ("states", "<u4", (cpu.RANS_LANES,)),
    ]
)

_PARAM_SPEC = {
    "precision_bits": (1, 16),
    "chunk_size": (32, 1 << 30),
    "num_lanes": (cpu.RANS_LANES, cpu.RANS_LANES),
    "num_tables": (0, 1 << 24),
    "period": (1, 1 << 40),
    "min_symbol": (-(1 << 31), (1 << 32) - 1),
    "alphabet_size": (0, C.MAX_ALPHABET),
    "num_chunks": (0, 1 << 40),
}


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
    per = per_channel and period > 1
    counts = cpu.histogram(flat, lo, span, period, per_channel=per)
    used = int((counts > 0).sum(axis=1).max())
    prec = max(precision_bits, min_precision_bits(used))
    tables = PerChannelTables.from_counts(counts, prec, lo)
    return a, flat, period, lo, span, tables, counts


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
        return t.cross_entropy_bits(counts) + 8 * len(t.to_bytes())

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

    def __init__(self, precision_bits: int = 12, chunk_size: int = 1 << 16,
                 per_channel: bool = False):
        _validate_int("precision_bits", precision_bits, 1, 16, self.codec_id)
        _validate_int("chunk_size", chunk_size, 32, 1 << 30, self.codec_id)
        if chunk_size % 32:
            raise CodecConfigError(
                f"rans: chunk_size must be a multiple of 32, found {chunk_size}"
            )
        if not isinstance(per_channel, bool):
            raise CodecConfigError(f"rans: per_channel must be a bool, found {per_channel!r}")
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
        nchunks = -(-n // self.chunk_size)
        if n == 0:
            prec, num_tables, tbytes = self.precision_bits, 0, b""
            words = np.empty(0, np.uint16)
            index = np.zeros(0, RANS_INDEX_DTYPE)
        else:
            prec, num_tables = tables.precision_bits, tables.num_tables
            words, num_words, states = cpu.rans_encode(
                flat, lo, tables.frequencies, prec, self.chunk_size, period, counts=counts
            )
            index = np.zeros(nchunks, RANS_INDEX_DTYPE)
            index["num_words"] = num_words
            index["byte_offset"][1:] = 2 * np.cumsum(num_words[:-1], dtype=np.uint64)
            index["num_symbols"] = np.minimum(
                self.chunk_size, n - np.arange(nchunks, dtype=np.int64) * self.chunk_size
            )
            index["states"] = states
            tbytes = tables.to_bytes()
        params = {
            "precision_bits": prec,
            "chunk_size": self.chunk_size,
            "num_lanes": cpu.RANS_LANES,
            "num_tables": num_tables,
            "period": period,
            "min_symbol": lo,
            "alphabet_size": span,
            "num_chunks": nchunks,
        }
        return C.pack(
            self.get_config(),
            a.shape,
            a.dtype.name,
            params,
            [
                ("tables", tbytes),
                ("index", index.tobytes()),
                ("payload", words.astype("<u2").tobytes()),
            ],
            C.symbols_crc32(a),
        )

    # -- decode ------------------------------------------------------------------------
    def parse(self, data):
        """Validate a stream completely; return ``(container, tables, index, words)``.

        Everything a decode kernel will follow is checked here: parameters against the
        shape and dtype, table sums, chunk offsets and counts, lane states.
        """
        c = C.unpack(data, self.codec_id)
        p = C.require_params(c.params, _PARAM_SPEC)
        n = c.num_symbols
        C.check_chunks(p, n)
        if p["chunk_size"] % 32:
            raise CorruptStreamError("corrupt kvinfo stream: rans chunk_size not a multiple of 32")
        if p["period"] != C.channel_period(c.shape):
            raise CorruptStreamError(
                f"corrupt kvinfo stream: period {p['period']} does not match shape {c.shape}"
            )
        if set(c.sections) != {"tables", "index", "payload"}:
            raise CorruptStreamError(f"corrupt kvinfo stream: rans sections {sorted(c.sections)}")
        if n == 0:
            if p["num_tables"] or p["alphabet_size"] or any(len(v) for v in c.sections.values()):
                raise CorruptStreamError("corrupt kvinfo stream: empty array with non-empty data")
            return c, None, np.zeros(0, RANS_INDEX_DTYPE), np.empty(0, np.uint16)
        if p["alphabet_size"] < 1 or p["num_tables"] not in (1, p["period"]):
            raise CorruptStreamError(
                f"corrupt kvinfo stream: alphabet_size {p['alphabet_size']} / num_tables "
                f"{p['num_tables']} inconsistent with period {p['period']}"
            )
        C.check_dtype_range(p, c.dtype)
        tables = PerChannelTables.from_bytes(
            c.sections["tables"], p["num_tables"], p["alphabet_size"], p["precision_bits"],
            p["min_symbol"],
        )
        index = C.section_array(c, "index", RANS_INDEX_DTYPE, p["num_chunks"])
        words = C.section_array(c, "payload", "<u2")
        nw = index["num_words"].astype(np.int64)
        offs = np.zeros_like(nw)
        np.cumsum(2 * nw[:-1], out=offs[1:])
        expect_syms = np.minimum(
            p["chunk_size"], n - np.arange(p["num_chunks"], dtype=np.int64) * p["chunk_size"]
        )
        if not np.array_equal(index["byte_offset"].astype(np.int64), offs):
            raise CorruptStreamError("corrupt kvinfo stream: rans chunk byte offsets inconsistent")
        if not np.array_equal(index["num_symbols"].astype(np.int64), expect_syms):
            raise CorruptStreamError("corrupt kvinfo stream: rans chunk symbol counts inconsistent")
        if int(nw.sum()) != words.shape[0] or np.any(nw > expect_syms):
            raise CorruptStreamError(
                f"corrupt kvinfo stream: chunk word counts sum to {int(nw.sum())}, payload "
                f"holds {words.shape[0]} words"
            )
        if np.any(index["states"] < cpu.RANS_STATE_LOWER):
            raise CorruptStreamError("corrupt kvinfo stream: a final rans state is below 2**16")
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

    def decode(self, data, device: str = "cpu") -> np.ndarray:
        if device == "cuda":  # device memory, via kvinfo.kernels.gpu (CudaUnavailableError without)
            return self.prepare_cuda(data).decode()
        if device != "cpu":
            raise CodecConfigError(f"rans: device must be 'cpu' or 'cuda', found {device!r}")
        c, tables, index, words = self.parse(data)
        out = np.empty(c.num_symbols, dtype=c.dtype)
        if c.num_symbols:
            p = c.params
            status = cpu.rans_decode(
                words, np.ascontiguousarray(index["num_words"], dtype=np.uint32),
                np.ascontiguousarray(index["states"], dtype=np.uint32), tables.frequencies,
                p["precision_bits"], p["chunk_size"], p["min_symbol"], p["period"], out,
            )
            C.raise_status(status, "rans")
        out = out.reshape(c.shape)
        C.check_symbols(c, out)
        return out


#: old class name, deprecated (one release)
__getattr__ = deprecated_aliases(__name__, {"Rans": "RansCodec"})
