"""Canonical length-limited Huffman coding with table-driven decoding.

Parameters
----------
max_code_length : int, default 12
    Longest codeword in bits (1..16), so a ``2**max_code_length``-entry table decodes
    any codeword with one lookup (4096 entries by default, small enough for GPU shared
    memory). If more than ``2**max_code_length`` distinct symbols occur, the stream uses
    the smallest limit that fits them (recorded in the stream as ``table_bits``).
chunk_size : int, default 65536
    Symbols per independently decodable chunk; a multiple of ``sub_block_size``.
sub_block_size : int, default 4096
    The index stores the bit offset of every sub-block of this many symbols, so
    decoders (a GPU thread per sub-block) can start anywhere. Costs 32 bits each.
per_channel : bool or "auto", default "auto"
    One code per channel (the last axis, for arrays of 2 or more dimensions). ``"auto"``
    measures both (code bits plus the code-length tables) and keeps per-channel codes
    when they shrink that by more than 0.5 %; the stream records the choice
    (``num_tables``). A channel with a single symbol gets a 1-bit code.

Notes
-----
A prefix code never spends less than one bit per symbol: for sparse or low-rate symbols
(below about 1.5 bits of entropy per symbol) use ``rans`` (``docs/codecs.md``). Code
lengths are the optimal ones under the length limit (package-merge; without a
binding limit these are Huffman's lengths). Codes are canonical (shorter first, then
by symbol) and written MSB first into little-endian 32-bit words; each chunk starts on
a word boundary. A single distinct symbol codes with zero payload bits. Symbols are
uint8, uint16 or int32 (negative allowed; ``max - min + 1 <= 65536``). The rate of a
Huffman code exceeds the order-0 entropy by less than ``p_max + 0.086`` bits per
symbol (Gallager, 1978), plus what the length limit costs.

Examples
--------
>>> import numpy as np
>>> from kvinfo.codecs import get_codec
>>> codec = get_codec({"id": "huffman"})
>>> x = np.random.default_rng(0).integers(0, 16, size=(64, 128), dtype=np.uint8)
>>> bool(np.array_equal(codec.decode(codec.encode(x)), x))
True

References
----------
D. A. Huffman, "A method for the construction of minimum-redundancy codes", 1952.
L. L. Larmore and D. S. Hirschberg, "A fast algorithm for optimal length-limited
Huffman codes", J. ACM 37(3), 1990.
R. G. Gallager, "Variations on a theme by Huffman", IEEE Trans. IT 24(6), 1978.
"""

from __future__ import annotations

import numpy as np

from ..errors import CodecConfigError, CorruptStreamError
from ..kernels import cpu
from . import _container as C
from . import _device
from ._deprecated import deprecated_aliases
from .models import decode_uints, encode_uints
from .registry import register_codec

__all__ = ["HuffmanCodec", "HUFFMAN_INDEX_DTYPE", "huffman_code_lengths"]

#: one chunk-index record (little-endian, 16 bytes)
HUFFMAN_INDEX_DTYPE = np.dtype([("byte_offset", "<u8"), ("num_symbols", "<u4"),
                                ("num_words", "<u4")])

_PARAM_SPEC = {
    "table_bits": (0, 16),
    "num_tables": (0, 1 << 16),
    "chunk_size": (1, 1 << 30),
    "sub_block_size": (1, 1 << 30),
    "min_symbol": (-(1 << 31), (1 << 32) - 1),
    "alphabet_size": (0, C.MAX_ALPHABET),
    "num_chunks": (0, 1 << 40),
}
C.register_layout("huffman", tuple(_PARAM_SPEC), ("lengths", "index", "subblocks", "payload"))
_PARAM_SPEC_V1 = {
    "table_bits": (0, 16),
    "chunk_size": (1, 1 << 30),
    "sub_block_size": (1, 1 << 30),
    "min_symbol": (-(1 << 31), (1 << 32) - 1),
    "alphabet_size": (0, C.MAX_ALPHABET),
    "num_chunks": (0, 1 << 40),
}


def _package_merge(weights: np.ndarray, limit: int) -> np.ndarray:
    """Optimal code lengths of ascending ``weights`` with no length above ``limit``.

    The package-merge algorithm (Larmore and Hirschberg, 1990), using the fact that the
    items chosen at every level form a prefix of that level's sorted list, so only the
    number of leaves in each prefix needs tracking.
    """
    n = weights.shape[0]
    levels = []
    prev = np.empty(0, np.int64)
    for _ in range(limit):
        packages = prev[: prev.shape[0] // 2 * 2].reshape(-1, 2).sum(axis=1)
        merged = np.concatenate([weights, packages])
        order = np.argsort(merged, kind="stable")
        levels.append(order < n)
        prev = merged[order]
    lengths = np.zeros(n, np.int64)
    m = 2 * n - 2
    for is_leaf in reversed(levels):
        c = int(is_leaf[:m].sum())
        lengths[:c] += 1
        m = 2 * (m - c)
    return lengths


def huffman_code_lengths(counts, max_code_length: int) -> np.ndarray:
    """Optimal length-limited code lengths (0 for unused symbols) for ``counts``.

    A single used symbol gets length 0 (it needs no bits). Raises
    :class:`CodecConfigError` if more than ``2**max_code_length`` symbols are used.

    Examples
    --------
    >>> huffman_code_lengths([8, 4, 2, 1, 1], 16).tolist()
    [1, 2, 3, 4, 4]
    >>> huffman_code_lengths([8, 4, 2, 1, 1], 3).tolist()
    [1, 3, 3, 3, 3]
    """
    counts = np.asarray(counts, dtype=np.int64)
    used = np.flatnonzero(counts)
    if used.size > (1 << max_code_length):
        raise CodecConfigError(
            f"huffman: {used.size} symbols do not fit codes of at most {max_code_length} bits"
        )
    lengths = np.zeros(counts.shape[0], np.int64)
    if used.size <= 1:
        return lengths
    order = used[np.argsort(counts[used], kind="stable")]
    lengths[order] = _package_merge(counts[order], min(max_code_length, used.size - 1))
    return lengths


def _int(name, v, lo, hi):
    if type(v) is not int or not lo <= v <= hi:
        raise CodecConfigError(f"huffman: {name} must be an int in [{lo}, {hi}], found {v!r}")


@register_codec
class HuffmanCodec(C.ContainerCoder):
    """Canonical length-limited Huffman codec; the module docstring lists parameters."""

    codec_id = "huffman"

    def __init__(self, max_code_length: int = 12, chunk_size: int = 1 << 16,
                 sub_block_size: int = 4096, per_channel: bool | str = "auto"):
        _int("max_code_length", max_code_length, 1, 16)
        _int("chunk_size", chunk_size, 1, 1 << 30)
        _int("sub_block_size", sub_block_size, 1, 1 << 30)
        if chunk_size % sub_block_size:
            raise CodecConfigError(
                f"huffman: chunk_size {chunk_size} must be a multiple of sub_block_size "
                f"{sub_block_size}"
            )
        if not isinstance(per_channel, bool) and per_channel != "auto":
            raise CodecConfigError(
                f"huffman: per_channel must be true, false or 'auto', found {per_channel!r}"
            )
        self.max_code_length = max_code_length
        self.chunk_size = chunk_size
        self.sub_block_size = sub_block_size
        self.per_channel = per_channel

    def get_config(self) -> dict:
        return {
            "id": self.codec_id,
            "max_code_length": self.max_code_length,
            "chunk_size": self.chunk_size,
            "sub_block_size": self.sub_block_size,
            "per_channel": self.per_channel,
        }

    def _code_lengths(self, flat, lo, span, period):
        """``(lengths (num_tables, span), num_tables)``: one pooled code, or per-channel
        codes when asked for or (``"auto"``) when they pay for their tables."""
        pooled = cpu.histogram(flat, lo, span, range_checked=True)[0]

        def limit(counts):
            used = int((counts > 0).sum(axis=-1).max())
            return max(self.max_code_length, int(np.ceil(np.log2(max(used, 1)))))

        one = huffman_code_lengths(pooled, limit(pooled))[None, :]
        want = self.per_channel
        if not want or period < 2 or period > 1 << 16 or period * span > 1 << 22 or (
                flat.size % period):
            return one
        per = cpu.histogram(flat, lo, span, period, per_channel=True, range_checked=True)
        lim = limit(per)
        rows = np.stack([huffman_code_lengths(c, lim) for c in per])
        single = (per > 0).sum(axis=1) == 1  # a lone symbol still needs a 1-bit code
        rows[single] = (per[single] > 0).astype(np.int64)
        if want == "auto":
            def bits(lengths, counts):
                return float((lengths * counts).sum()) + 8 * sum(
                    len(encode_uints(r)) for r in lengths)
            if bits(rows, per) >= (1 - 5e-3) * bits(one, pooled[None, :]):
                return one
        return rows

    def encode(self, array: np.ndarray) -> bytes:
        a = C.as_symbol_array(array, self.codec_id)
        flat = a.reshape(-1)
        n = flat.size
        nchunks = -(-n // self.chunk_size)
        lo, span, table_bits = 0, 0, 0
        lengths = np.zeros((0, 0), np.int64)
        words = np.empty(0, np.uint32)
        num_words = np.zeros(nchunks, np.uint32)
        nsub = sum(-(-min(self.chunk_size, n - k * self.chunk_size) // self.sub_block_size)
                   for k in range(nchunks))
        sub = np.zeros(nsub, np.uint32)
        if n:
            lo, span = C.symbol_range(flat, self.codec_id)
            period = C.channel_period(a.shape)
            lengths = self._code_lengths(flat, lo, span, period)
            table_bits = int(lengths.max())
            if table_bits:
                idx = np.subtract(flat, lo, dtype=np.int32) if lo else flat.astype(np.int32)
                codes = np.stack([cpu.canonical_codes(r) for r in lengths])
                words, num_words, sub = cpu.huffman_encode(
                    idx, codes, lengths, self.chunk_size, self.sub_block_size, period,
                )
        params = {
            "table_bits": table_bits,
            "num_tables": int(lengths.shape[0]),
            "chunk_size": self.chunk_size,
            "sub_block_size": self.sub_block_size,
            "min_symbol": lo,
            "alphabet_size": span,
            "num_chunks": nchunks,
        }
        return C.pack(
            self.codec_id, a.shape, a.dtype.name, params,
            [
                ("lengths", b"".join(encode_uints(r) for r in lengths)),
                ("index", np.asarray(num_words, "<u4").tobytes()),
                ("subblocks", sub.astype("<u4").tobytes()),
                ("payload", words.astype("<u4").tobytes()),
            ],
            C.symbols_crc32(a),
        )

    def parse(self, data):
        """Validate a stream completely; return ``(container, lengths, index, sub, words)``
        (``lengths``: one row of code lengths per table, ``(num_tables, alphabet_size)``)."""
        c = C.unpack(data, self.codec_id)
        p = C.require_params(c.params, _PARAM_SPEC if c.version >= 2 else _PARAM_SPEC_V1)
        n = c.num_symbols
        C.check_chunks(p, n)
        cs, sb = p["chunk_size"], p["sub_block_size"]
        if cs % sb:
            raise CorruptStreamError("corrupt kvinfo stream: chunk_size % sub_block_size != 0")
        if set(c.sections) != {"lengths", "index", "subblocks", "payload"}:
            raise CorruptStreamError(
                f"corrupt kvinfo stream: huffman sections {sorted(c.sections)}"
            )
        nchunks = p["num_chunks"]
        nsub = ((nchunks - 1) * (cs // sb) + -(-(n - (nchunks - 1) * cs) // sb)) if n else 0
        if c.version >= 2:
            nw_v2 = C.section_array(c, "index", "<u4", nchunks)  # length checked first
            index = np.zeros(nchunks, HUFFMAN_INDEX_DTYPE)
            index["num_words"] = nw_v2
            if nchunks > 1:
                index["byte_offset"][1:] = 4 * np.cumsum(index["num_words"][:-1],
                                                         dtype=np.uint64)
            index["num_symbols"] = np.minimum(cs, n - np.arange(nchunks, dtype=np.int64) * cs)
        else:
            index = C.section_array(c, "index", HUFFMAN_INDEX_DTYPE, nchunks)
        sub = C.section_array(c, "subblocks", "<u4", nsub)
        words = C.section_array(c, "payload", "<u4")
        if n == 0:
            if (p["alphabet_size"] or p["table_bits"] or p.get("num_tables", 0)
                    or len(c.sections["lengths"]) or len(words)):
                raise CorruptStreamError("corrupt kvinfo stream: empty array with non-empty data")
            return c, None, index, sub, words
        if p["alphabet_size"] < 1:
            raise CorruptStreamError("corrupt kvinfo stream: alphabet_size must be >= 1")
        nt = p.get("num_tables", 1)
        period = C.channel_period(c.shape)
        if nt not in (1, period) or nt * p["alphabet_size"] > 1 << 22:
            raise CorruptStreamError(
                f"corrupt kvinfo stream: num_tables {nt} must be 1 or the {period} channels"
            )
        C.check_dtype_range(p, c.dtype)
        buf = bytes(c.sections["lengths"])
        if nt > len(buf):  # every row takes at least one byte
            raise CorruptStreamError("corrupt kvinfo stream: too many code tables for their bytes")
        lengths = np.zeros((nt, p["alphabet_size"]), np.int64)
        pos = 0
        for row in lengths:
            pos = decode_uints(buf, pos, len(buf), row, 16)
        if pos != len(buf):
            raise CorruptStreamError("corrupt kvinfo stream: trailing bytes after code lengths")
        tb = p["table_bits"]
        if int(lengths.max()) != tb:
            raise CorruptStreamError(
                f"corrupt kvinfo stream: longest code {int(lengths.max())} != table_bits {tb}"
            )
        if tb == 0:
            if p["alphabet_size"] != 1 or nt != 1:
                raise CorruptStreamError("corrupt kvinfo stream: no codes for several symbols")
        elif np.any(np.where(lengths > 0, 1 << np.maximum(tb - lengths, 0), 0).sum(axis=1)
                    > (1 << tb)):
            raise CorruptStreamError("corrupt kvinfo stream: code lengths violate Kraft")
        nw = index["num_words"].astype(np.int64)
        offs = np.zeros_like(nw)
        np.cumsum(4 * nw[:-1], out=offs[1:])
        expect = np.minimum(cs, n - np.arange(nchunks, dtype=np.int64) * cs)
        if not np.array_equal(index["byte_offset"].astype(np.int64), offs) or not np.array_equal(
            index["num_symbols"].astype(np.int64), expect
        ):
            raise CorruptStreamError("corrupt kvinfo stream: huffman chunk index inconsistent")
        if int(nw.sum()) != words.shape[0] or np.any(nw * 32 > expect * max(tb, 1) + 31):
            raise CorruptStreamError("corrupt kvinfo stream: huffman word counts inconsistent")
        if tb and np.any(expect > 32 * nw):  # every code is at least one bit long
            raise CorruptStreamError(
                f"corrupt kvinfo stream: huffman chunks claim more symbols than their "
                f"{int(nw.sum())} words can hold"
            )
        if tb == 0 and (words.shape[0] or np.any(sub)):
            raise CorruptStreamError("corrupt kvinfo stream: payload for a single-symbol stream")
        if nsub and np.any(sub.astype(np.int64) > np.repeat(nw * 32, -(-expect // sb))):
            raise CorruptStreamError("corrupt kvinfo stream: sub-block offset past its chunk")
        return c, lengths, index, sub, words

    def prepare_cuda(self, data, *, dequant=None, shape=None, max_symbol=None):
        """Validate ``data`` with :meth:`parse` and upload it for the CUDA kernels; returns a
        :class:`kvinfo.kernels.gpu.PreparedStream` (``dequant``, ``shape``, ``max_symbol``:
        as for :meth:`RansCodec.prepare_cuda`)."""
        gpu = _device.front_end()
        c, lengths, index, sub, words = self.parse(data)
        _device.check_coded(c, shape, max_symbol)
        p = c.params
        return gpu.prepare_huffman(
            words, index["num_words"], sub, lengths, table_bits=p["table_bits"],
            chunk_size=p["chunk_size"], sub_block_size=p["sub_block_size"],
            min_symbol=p["min_symbol"], shape=c.shape, dtype=c.dtype, dequant=dequant,
            verify=_device.crc_check(c) if dequant is None else None,
            period=C.channel_period(c.shape),
        )

    def decode(self, data, device: str = "cpu", max_output_bytes: int | None = None
               ) -> np.ndarray:
        if device == "cuda":  # device memory, via kvinfo.kernels.gpu (CudaUnavailableError without)
            return self.prepare_cuda(data).decode()
        if device != "cpu":
            raise CodecConfigError(f"huffman: device must be 'cpu' or 'cuda', found {device!r}")
        c, lengths, index, sub, words = self.parse(data)
        p = c.params
        n = c.num_symbols
        # the decode kernel writes int32 indices before the cast: count them too
        out = C.allocate_output(c, max_output_bytes,
                                4 * n + (4 << p["table_bits"]) if p["table_bits"] else 0)
        if n == 0:
            pass
        elif p["table_bits"] == 0:
            out.fill(p["min_symbol"])
        else:
            idx, status = cpu.huffman_decode(
                words, np.ascontiguousarray(index["num_words"], np.uint32), sub, lengths,
                p["table_bits"], p["chunk_size"], p["sub_block_size"], n,
                C.channel_period(c.shape),
            )
            C.raise_status(status, "huffman")
            if p["min_symbol"]:
                idx += p["min_symbol"]
            out[:] = idx
        out = out.reshape(c.shape)
        C.check_symbols(c, out)
        return out


#: old class name, deprecated (one release)
__getattr__ = deprecated_aliases(__name__, {"Huffman": "HuffmanCodec"})
