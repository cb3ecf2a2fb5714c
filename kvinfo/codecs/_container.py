"""The versioned kvinfo container: one byte layout shared by every lossless coder.

The format is specified in ``docs/container-format.md``; this module is its reference
implementation. A stream is::

    preamble (24 bytes) | meta JSON | sections (each 8-byte aligned) | crc32 trailer (4 bytes)

Preamble, all little-endian::

    offset  size  field
    0       4     magic  b"KVIC"
    4       2     format_version (u16), currently 1
    6       2     flags (u16), must be 0
    8       4     meta_len (u32), bytes of UTF-8 JSON that follow the preamble
    12      8     total_len (u64), length of the whole stream including the trailer
    20      4     symbols_crc32 (u32), zlib CRC-32 of the decoded symbols (C order,
                  little-endian bytes of the stored dtype)

The meta JSON object holds ``codec`` (the codec config), ``shape``, ``dtype``,
``params`` (codec-specific derived parameters) and ``sections``, a list of
``[name, offset, length]`` with offsets from the start of the stream. Sections follow
the meta in list order, each starting at the next multiple of 8 (padding bytes are 0),
and the trailer follows the last section (again after padding to a multiple of 8). The
trailer is the CRC-32 of every byte before it.

:func:`unpack` validates everything that does not depend on the codec (magic, version,
lengths, CRC, JSON types, section bounds and padding) and raises
:class:`~kvinfo.errors.CorruptStreamError` on the first problem, so a kernel only ever
sees byte ranges that exist.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from ..errors import CodecConfigError, CorruptStreamError
from .abc import Codec, RateBreakdown

__all__ = [
    "ContainerCoder",
    "MAGIC",
    "FORMAT_VERSION",
    "SUPPORTED_DTYPES",
    "Container",
    "pack",
    "unpack",
    "symbols_crc32",
    "check_symbols",
    "as_symbol_array",
]

MAGIC = b"KVIC"
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct("<4sHHIQI")
PREAMBLE_SIZE = _PREAMBLE.size  # 24
TRAILER_SIZE = 4
SUPPORTED_DTYPES = ("uint8", "uint16", "int32")
#: the largest alphabet (max - min + 1) any coder accepts
MAX_ALPHABET = 1 << 16


def _align8(n: int) -> int:
    return (n + 7) & ~7


@dataclass
class Container:
    """A parsed (and container-level validated) stream.

    ``sections`` maps a section name to a read-only ``memoryview`` of its bytes.
    """

    codec: dict
    shape: tuple
    dtype: str
    params: dict
    sections: dict = field(default_factory=dict)
    symbols_crc32: int = 0
    total_len: int = 0

    @property
    def num_symbols(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    def section_bytes(self) -> dict:
        """Length of every section in bytes."""
        return {k: len(v) for k, v in self.sections.items()}


def symbols_crc32(symbols: np.ndarray) -> int:
    """CRC-32 (zlib) of ``symbols`` as C-ordered little-endian bytes of its dtype."""
    a = np.ascontiguousarray(symbols)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return zlib.crc32(a.reshape(-1).view(np.uint8)) & 0xFFFFFFFF


def as_symbol_array(array, codec_id: str) -> np.ndarray:
    """Check that ``array`` is an integer symbol array kvinfo coders accept.

    Accepts numpy arrays of dtype uint8, uint16 or int32 (any shape, any memory
    order, any byte order); returns a C-contiguous native-endian array. Raises
    :class:`CodecConfigError` otherwise.
    """
    if isinstance(array, np.generic):
        array = np.asarray(array)
    if not isinstance(array, np.ndarray):
        raise CodecConfigError(
            f"{codec_id}: expected a numpy array of uint8, uint16 or int32 symbols, "
            f"found {type(array).__name__}"
        )
    if array.dtype.kind not in "ui" or array.dtype.itemsize not in (1, 2, 4) or (
        array.dtype.name not in SUPPORTED_DTYPES
    ):
        raise CodecConfigError(
            f"{codec_id}: expected symbols of dtype uint8, uint16 or int32, found {array.dtype}"
        )
    return np.asarray(array, dtype=array.dtype.newbyteorder("="), order="C")


def pack(
    codec: dict,
    shape: tuple,
    dtype: str,
    params: dict,
    sections: list,
    symbols_crc: int,
) -> bytes:
    """Assemble a stream from its parts; ``sections`` is a list of ``(name, bytes)``."""
    names = [n for n, _ in sections]
    if len(set(names)) != len(names):
        raise CodecConfigError(f"duplicate section names {names}")
    # offsets depend on meta length which depends on offsets: iterate to a fixed point
    lengths = [len(b) for _, b in sections]
    meta_len_guess = 0
    for _ in range(8):
        off = _align8(PREAMBLE_SIZE + meta_len_guess)
        table = []
        for n, ln in zip(names, lengths, strict=True):
            table.append([n, off, ln])
            off = _align8(off + ln)
        meta = {
            "codec": codec,
            "shape": [int(s) for s in shape],
            "dtype": dtype,
            "params": params,
            "sections": table,
        }
        meta_bytes = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()
        if len(meta_bytes) == meta_len_guess:
            break
        meta_len_guess = len(meta_bytes)
    else:  # pragma: no cover - lengths converge after two rounds
        raise CodecConfigError("container meta length did not converge")
    total_len = off + TRAILER_SIZE
    out = bytearray(total_len)
    out[PREAMBLE_SIZE : PREAMBLE_SIZE + len(meta_bytes)] = meta_bytes
    for (_, b), (_, o, ln) in zip(sections, table, strict=True):
        out[o : o + ln] = b
    _PREAMBLE.pack_into(
        out, 0, MAGIC, FORMAT_VERSION, 0, len(meta_bytes), total_len, symbols_crc & 0xFFFFFFFF
    )
    crc = zlib.crc32(memoryview(out)[: total_len - TRAILER_SIZE]) & 0xFFFFFFFF
    struct.pack_into("<I", out, total_len - TRAILER_SIZE, crc)
    return bytes(out)


def _corrupt(msg: str) -> CorruptStreamError:
    return CorruptStreamError(f"corrupt kvinfo stream: {msg}")


def unpack(data, expected_codec_id: str | None = None) -> Container:
    """Parse and validate the codec-independent parts of a stream.

    Raises
    ------
    CorruptStreamError
        On any inconsistency (wrong magic or version, length, CRC, meta, section bounds).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CorruptStreamError(
            f"expected an encoded stream as bytes, found {type(data).__name__}"
        )
    buf = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
    n = len(buf)
    if n < PREAMBLE_SIZE + TRAILER_SIZE:
        raise _corrupt(f"expected at least {PREAMBLE_SIZE + TRAILER_SIZE} bytes, found {n}")
    magic, version, flags, meta_len, total_len, sym_crc = _PREAMBLE.unpack_from(buf, 0)
    if magic != MAGIC:
        raise _corrupt(f"expected magic {MAGIC!r}, found {bytes(magic)!r}")
    if version != FORMAT_VERSION:
        raise _corrupt(f"expected format version {FORMAT_VERSION}, found {version}")
    if flags != 0:
        raise _corrupt(f"expected flags 0, found {flags}")
    if total_len != n:
        raise _corrupt(f"header says {total_len} bytes, found {n} (truncated or extended)")
    (stored_crc,) = struct.unpack_from("<I", buf, n - TRAILER_SIZE)
    crc = zlib.crc32(buf[: n - TRAILER_SIZE]) & 0xFFFFFFFF
    if crc != stored_crc:
        raise _corrupt(f"stream CRC-32 mismatch (stored {stored_crc:#010x}, computed {crc:#010x})")
    if PREAMBLE_SIZE + meta_len > n - TRAILER_SIZE:
        raise _corrupt(f"meta length {meta_len} runs past the end of the stream")
    try:
        meta = json.loads(bytes(buf[PREAMBLE_SIZE : PREAMBLE_SIZE + meta_len]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(f"meta is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(meta, dict) or set(meta) != {"codec", "shape", "dtype", "params", "sections"}:
        raise _corrupt("meta must be an object with keys codec, dtype, params, sections, shape")
    codec, shape, dtype, params, table = (
        meta["codec"],
        meta["shape"],
        meta["dtype"],
        meta["params"],
        meta["sections"],
    )
    if not isinstance(codec, dict) or not isinstance(codec.get("id"), str):
        raise _corrupt("meta 'codec' must be a config object with a string 'id'")
    if expected_codec_id is not None and codec["id"] != expected_codec_id:
        raise _corrupt(f"expected a {expected_codec_id!r} stream, found codec {codec['id']!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > 32
        or not all(type(s) is int and 0 <= s < 2**62 for s in shape)
    ):
        raise _corrupt(f"meta 'shape' must be a list of non-negative ints, found {shape!r}")
    count = 1
    for s in shape:
        count *= s
    if count >= 2**48:
        raise _corrupt(f"shape {shape} has too many elements")
    if dtype not in SUPPORTED_DTYPES:
        raise _corrupt(f"meta 'dtype' must be one of {SUPPORTED_DTYPES}, found {dtype!r}")
    if not isinstance(params, dict):
        raise _corrupt("meta 'params' must be an object")
    if not isinstance(table, list):
        raise _corrupt("meta 'sections' must be a list")
    sections = {}
    pos = _align8(PREAMBLE_SIZE + meta_len)
    _check_zero(buf, PREAMBLE_SIZE + meta_len, pos)
    for entry in table:
        if (
            not isinstance(entry, list)
            or len(entry) != 3
            or not isinstance(entry[0], str)
            or type(entry[1]) is not int
            or type(entry[2]) is not int
        ):
            raise _corrupt(f"section entry must be [name, offset, length], found {entry!r}")
        name, off, ln = entry
        if name in sections:
            raise _corrupt(f"duplicate section {name!r}")
        if off != pos or ln < 0 or off + ln > n - TRAILER_SIZE:
            raise _corrupt(
                f"section {name!r} expected at offset {pos} within {n - TRAILER_SIZE} bytes, "
                f"found offset {off} length {ln}"
            )
        sections[name] = buf[off : off + ln]
        pos = _align8(off + ln)
        _check_zero(buf, off + ln, min(pos, n - TRAILER_SIZE))
    if pos != n - TRAILER_SIZE:
        raise _corrupt(f"sections end at byte {pos}, expected {n - TRAILER_SIZE}")
    return Container(
        codec=codec,
        shape=tuple(shape),
        dtype=dtype,
        params=params,
        sections=sections,
        symbols_crc32=sym_crc,
        total_len=n,
    )


def _check_zero(buf, start: int, stop: int) -> None:
    if stop > start and any(buf[start:stop]):
        raise _corrupt(f"padding bytes {start}..{stop} are not zero")


def check_symbols(container: Container, symbols: np.ndarray) -> None:
    """Raise :class:`CorruptStreamError` unless ``symbols`` match the stored symbol CRC."""
    crc = symbols_crc32(symbols)
    if crc != container.symbols_crc32:
        raise _corrupt(
            f"decoded symbols CRC-32 {crc:#010x} != stored {container.symbols_crc32:#010x}"
        )


def require_params(params: dict, spec: dict) -> dict:
    """Check ``params`` has exactly the keys of ``spec`` (name -> (min, max)) as ints in range."""
    if set(params) != set(spec):
        raise _corrupt(f"params keys {sorted(params)} != expected {sorted(spec)}")
    for k, (lo, hi) in spec.items():
        v = params[k]
        if type(v) is not int or not lo <= v <= hi:
            raise _corrupt(f"param {k!r} must be an int in [{lo}, {hi}], found {v!r}")
    return params


def section_array(container: Container, name: str, dtype, count: int | None = None) -> np.ndarray:
    """A section as a numpy array of little-endian ``dtype``; checks length divisibility/count."""
    if name not in container.sections:
        raise _corrupt(f"missing section {name!r}")
    mv = container.sections[name]
    dt = np.dtype(dtype).newbyteorder("<")
    if len(mv) % dt.itemsize:
        raise _corrupt(f"section {name!r} length {len(mv)} is not a multiple of {dt.itemsize}")
    arr = np.frombuffer(mv, dtype=dt)
    if count is not None and arr.shape[0] != count:
        raise _corrupt(f"section {name!r} expected {count} items, found {arr.shape[0]}")
    return arr.astype(dt.newbyteorder("="), copy=True)


def symbol_range(flat: np.ndarray, codec_id: str) -> tuple[int, int]:
    """``(min_symbol, alphabet_size)`` of a non-empty flat symbol array.

    Raises :class:`CodecConfigError` when ``max - min + 1`` exceeds 65536 (kvinfo coders
    code any int32 symbols, negative included, whose span fits 16 bits).
    """
    lo, hi = int(flat.min()), int(flat.max())
    span = hi - lo + 1
    if span > MAX_ALPHABET:
        raise CodecConfigError(
            f"{codec_id}: expected symbols spanning at most {MAX_ALPHABET} values "
            f"(max - min + 1), found {span} (min {lo}, max {hi})"
        )
    return lo, span


def channel_period(shape: tuple) -> int:
    """Number of channels: the size of the last axis for arrays of 2 or more dims, else 1."""
    return int(shape[-1]) if len(shape) >= 2 and shape[-1] > 0 else 1


def check_dtype_range(params: dict, dtype: str) -> None:
    """Check ``min_symbol .. min_symbol + alphabet_size - 1`` fits ``dtype``."""
    info = np.iinfo(dtype)
    lo = params["min_symbol"]
    hi = lo + max(params["alphabet_size"], 1) - 1
    if lo < info.min or hi > info.max:
        raise _corrupt(f"symbol range [{lo}, {hi}] does not fit dtype {dtype}")


def check_chunks(params: dict, num_symbols: int) -> int:
    """Check ``num_chunks`` matches ``ceil(num_symbols / chunk_size)``; return it."""
    expected = -(-num_symbols // params["chunk_size"])
    if params["num_chunks"] != expected:
        raise _corrupt(
            f"expected {expected} chunks for {num_symbols} symbols, found {params['num_chunks']}"
        )
    return expected


def raise_status(status: np.ndarray, what: str) -> None:
    """Raise :class:`CorruptStreamError` if any chunk status of a decode kernel is non-zero."""
    bad = np.flatnonzero(status)
    if bad.size:
        raise _corrupt(
            f"{what} chunk {int(bad[0])} failed its end-of-chunk check (code {int(status[bad[0]])})"
        )


class ContainerCoder(Codec):
    """Base of the lossless coders whose streams are kvinfo containers (this module).

    Their rate split is the same: the ``payload`` section is symbol bits, everything else
    (header, meta JSON, model tables, chunk index, lane states, checksums) is side
    information.
    """

    def rate(self, data) -> RateBreakdown:
        c = unpack(data, self.codec_id)
        return RateBreakdown.from_bits(
            8 * c.total_len, 8 * len(c.sections.get("payload", b"")), c.num_symbols
        )
