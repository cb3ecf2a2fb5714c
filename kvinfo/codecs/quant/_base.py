"""The stream container and base class shared by the lossy KV codecs (and ``lossless``).

Stream layout (all integers little-endian), version 2::

    offset  size      field
    0       3         magic b"KVQ"
    3       1         container version (2)
    4       1         codec tag: 1 uniform, 2 ecsq, 3 turbo, 4 lossless, 5 klt, 6 plan
    5       1         dtype code: 1 float16, 2 bfloat16, 3 float32, 4 float64
    6       1         ndim
    7       8*ndim    shape, uint64 each
    .       2         P = length of the codec's parameter block, uint16
    .       P         parameter block (codec-specific, fixed struct; see each codec)
    .       1         number of sections S, uint8
    .       4         header checksum of every byte from the magic to S
    then S times:
            1         section kind: 0 side information, 1 entropy-coded blob, 2 raw payload bits
            4         section length L, uint32
            4         section checksum of its kind byte, its length field and its L bytes
            L         section bytes
    end-4   4         CRC-32 (zlib) of every byte before it

The header and section checksums are BLAKE2b with a 4-byte digest (``hashlib.blake2b(...,
digest_size=4)``, little-endian), not CRC-32: see :func:`_crc`. Version 1 (still decoded) is
the same without them: a damaged side or raw section behind a recomputed outer CRC went
unnoticed there. In version 2 every byte but the outer CRC is covered by two independent
checksums, and all of them are verified before any symbol is decoded.

An entropy-coded blob (kind 1) is the verbatim output of the codec's coder
(``get_codec(coder).encode(symbols)``), itself a self-describing stream with its own
checksums. Which sections a codec writes, in which order, is listed in its docstring and in
``docs/codecs.md``.

Rate accounting (:meth:`QuantCodec.rate`): *symbol bits* are the bits that the coder itself
reports as payload for each coded blob (its ``rate()["symbol_bits"]``; a coder that does not
split its rate counts whole), plus the bits of raw payload sections (kind 2: literal mantissa
bits of ``lossless``) without their padding. Everything else -- the header, parameter block,
section headers, coder headers and model tables, scales, zero points, norms, outlier channels,
full-precision tokens, padding and the CRC -- is *side information*. The two add up to
``8 * len(stream)`` exactly.
"""

from __future__ import annotations

import functools
import hashlib
import math
import struct
import zlib
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from ...errors import CodecConfigError, CorruptStreamError, UnknownCodecError
from ..abc import Codec, RateBreakdown
from ..limits import check_output_bytes

__all__ = [
    "QuantCodec",
    "Section",
    "ParsedStream",
    "SIDE",
    "CODED",
    "RAW",
    "DTYPE_CODES",
    "check_float_array",
    "as_slabs",
    "CONTAINER_VERSION",
    "READ_VERSIONS",
    "guard_memory",
]

MAGIC = b"KVQ"
MAX_ELEMENTS = 1 << 40  # a stream with more elements than this is damaged
CONTAINER_VERSION = 2
#: container versions this kvinfo decodes
READ_VERSIONS = (1, 2)
SIDE, CODED, RAW = 0, 1, 2
TAGS = {"uniform": 1, "ecsq": 2, "turbo": 3, "lossless": 4, "klt": 5,
        "plan": 6}  # plan: kvinfo.codecs.plan (alloc, issue 16)
TAG_NAMES = {v: k for k, v in TAGS.items()}

DTYPE_CODES: dict[str, int] = {"float16": 1, "bfloat16": 2, "float32": 3, "float64": 4}
CODE_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.float16),
    2: np.dtype(ml_dtypes.bfloat16),
    3: np.dtype(np.float32),
    4: np.dtype(np.float64),
}
SIDE_DTYPES = {"float16": np.dtype(np.float16), "float32": np.dtype(np.float32)}


def dtype_name(dtype: np.dtype) -> str | None:
    """The kvinfo name of a supported float dtype, or None."""
    dtype = np.dtype(dtype)
    for name, code in DTYPE_CODES.items():
        if CODE_DTYPES[code] == dtype:
            return name
    return None


@dataclass
class Section:
    kind: int
    data: bytes
    raw_bits: int = 0  # for RAW sections: how many of the bits are payload (rest is padding)


@dataclass
class ParsedStream:
    tag: int
    dtype: np.dtype
    shape: tuple[int, ...]
    params: bytes
    sections: list[Section]


def check_float_array(
    array, codec_id: str, *, min_ndim: int = 2, finite: bool = True, allow_empty: bool = False
):
    """Validate the input of a codec: a float16/bfloat16/float32/float64 array, non-empty,
    at least ``min_ndim`` dimensions, and (for lossy codecs) finite. Returns it as ndarray."""
    if not isinstance(array, np.ndarray):
        array = np.asarray(array)
    if dtype_name(array.dtype) is None:
        raise CodecConfigError(
            f"{codec_id}: expected a float16, bfloat16, float32 or float64 array; "
            f"found dtype {array.dtype}"
        )
    if array.ndim < min_ndim:
        what = "(..., tokens, head_dim)" if min_ndim >= 2 else "with at least one axis"
        raise CodecConfigError(
            f"{codec_id}: expected an array of shape {what} with ndim >= {min_ndim}; "
            f"found shape {array.shape}"
        )
    if array.ndim > 255:
        raise CodecConfigError(f"{codec_id}: at most 255 dimensions; found {array.ndim}")
    if array.size == 0 and not allow_empty:
        raise CodecConfigError(f"{codec_id}: expected a non-empty array; found shape {array.shape}")
    if finite:
        bad = int(array.size - np.count_nonzero(np.isfinite(array.astype(np.float64, copy=False))))
        if bad:
            raise CodecConfigError(
                f"{codec_id}: expected finite values; found {bad} NaN or Inf of {array.size}"
            )
    return array


def as_slabs(array: np.ndarray) -> np.ndarray:
    """View ``(..., tokens, head_dim)`` as float64 ``(slabs, tokens, head_dim)``."""
    t, d = array.shape[-2:]
    return array.astype(np.float64).reshape(-1, t, d)


def pack_header(tag: int, dtype: np.dtype, shape: tuple[int, ...], params: bytes) -> bytes:
    code = DTYPE_CODES[dtype_name(dtype)]
    if len(params) > 0xFFFF:
        raise CodecConfigError("parameter block too long")
    return b"".join(
        [
            MAGIC,
            bytes([CONTAINER_VERSION, tag, code, len(shape)]),
            struct.pack(f"<{len(shape)}Q", *shape),
            struct.pack("<H", len(params)),
            params,
        ]
    )


def _crc(*parts: bytes) -> int:
    """The 32-bit checksum of the header and of each section (version 2): BLAKE2b with a
    4-byte digest, little-endian. Not CRC-32 on purpose: an entropy-coded section ends with
    its coder's own CRC-32 of everything before it, and a CRC-32 over such a blob is the same
    for every content of a given length (a CRC appended to its message leaves a constant
    residue), so it would add nothing to the coder's check. Unkeyed: a checksum, not a MAC."""
    h = hashlib.blake2b(digest_size=4)
    for part in parts:
        h.update(part)
    return int.from_bytes(h.digest(), "little")


def build_stream(
    tag: int, dtype: np.dtype, shape: tuple[int, ...], params: bytes, sections: list[Section]
) -> bytes:
    if len(sections) > 255:
        raise CodecConfigError("too many sections")
    head = pack_header(tag, dtype, shape, params) + bytes([len(sections)])
    parts = [head, struct.pack("<I", _crc(head))]
    for sec in sections:
        if len(sec.data) > 0xFFFFFFFF:
            raise CodecConfigError(
                f"a section of {len(sec.data)} bytes exceeds the 4 GiB limit; encode smaller stacks"
            )
        data = bytes(sec.data)
        sh = struct.pack("<BI", sec.kind, len(data))
        parts += [sh, struct.pack("<I", _crc(sh, data)), data]
    body = b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


_KIND_NAMES = {SIDE: "side information", CODED: "entropy-coded", RAW: "raw payload"}


def parse_stream(data, expected_tag: int | None = None) -> ParsedStream:
    """Parse and check a stream; raises :class:`CorruptStreamError` for any damage."""
    try:
        buf = bytes(data)
    except TypeError:
        raise CorruptStreamError(
            f"expected bytes, bytearray or memoryview; found {type(data).__name__}"
        ) from None
    if len(buf) < 16 or buf[:3] != MAGIC:
        raise CorruptStreamError("not a kvinfo quantizer stream (bad magic or too short)")
    (crc,) = struct.unpack_from("<I", buf, len(buf) - 4)
    if zlib.crc32(buf[:-4]) & 0xFFFFFFFF != crc:
        raise CorruptStreamError("stream checksum mismatch: the stream is damaged or truncated")
    version, tag, code, ndim = buf[3], buf[4], buf[5], buf[6]
    if version not in READ_VERSIONS:
        raise CorruptStreamError(
            f"unknown quantizer stream version {version}; this kvinfo reads versions "
            f"{', '.join(map(str, READ_VERSIONS))}"
        )
    if tag not in TAG_NAMES:
        raise CorruptStreamError(f"unknown codec tag {tag} in stream")
    if expected_tag is not None and tag != expected_tag:
        raise CorruptStreamError(
            f"stream was written by codec {TAG_NAMES[tag]!r}, "
            f"not {TAG_NAMES.get(expected_tag, expected_tag)!r}"
        )
    if code not in CODE_DTYPES:
        raise CorruptStreamError(f"unknown dtype code {code} in stream")
    end = len(buf) - 4
    try:
        pos = 7
        shape = struct.unpack_from(f"<{ndim}Q", buf, pos)
        pos += 8 * ndim
        (plen,) = struct.unpack_from("<H", buf, pos)
        pos += 2
        if pos + plen > end:
            raise CorruptStreamError("stream truncated in the parameter block")
        params = buf[pos : pos + plen]
        pos += plen
        nsec = buf[pos]
        pos += 1
        if version >= 2:
            (hcrc,) = struct.unpack_from("<I", buf, pos)
            if _crc(buf[:pos]) != hcrc:
                raise CorruptStreamError("header checksum mismatch: the stream header is damaged")
            pos += 4
        sections = []
        for i in range(nsec):
            kind, length = struct.unpack_from("<BI", buf, pos)
            sh = buf[pos : pos + 5]
            pos += 5
            if version >= 2:
                (scrc,) = struct.unpack_from("<I", buf, pos)
                pos += 4
            if kind not in (SIDE, CODED, RAW) or pos + length > end:
                raise CorruptStreamError("bad section header in stream")
            data_i = buf[pos : pos + length]
            if version >= 2 and _crc(sh, data_i) != scrc:
                raise CorruptStreamError(
                    f"checksum mismatch in section {i} ({_KIND_NAMES[kind]}): the stream is "
                    "damaged"
                )
            sections.append(Section(kind, data_i))
            pos += length
    except (struct.error, IndexError):
        raise CorruptStreamError("stream truncated in its header") from None
    if pos != end:
        raise CorruptStreamError(f"{end - pos} unexpected trailing bytes in stream")
    if any(s > MAX_ELEMENTS for s in shape) or math.prod(shape) > MAX_ELEMENTS:
        raise CorruptStreamError(f"implausible shape {tuple(shape)} in stream")
    if tag != TAGS["lossless"] and (len(shape) < 2 or math.prod(shape) == 0):
        raise CorruptStreamError(f"bad shape {tuple(shape)} for a lossy codec stream")
    return ParsedStream(tag, CODE_DTYPES[code], tuple(int(s) for s in shape), params, sections)


def unpack_params(fmt: str, params: bytes) -> tuple:
    if struct.calcsize(fmt) != len(params):
        raise CorruptStreamError(
            f"bad parameter block: expected {struct.calcsize(fmt)} bytes, found {len(params)}"
        )
    return struct.unpack(fmt, params)


def side_array(section: Section, dtype, count: int) -> np.ndarray:
    """Read ``count`` elements of ``dtype`` from a side section, checking its length."""
    dtype = np.dtype(dtype)
    if section.kind != SIDE or len(section.data) != count * dtype.itemsize:
        raise CorruptStreamError(
            f"bad side section: expected {count * dtype.itemsize} bytes, found {len(section.data)}"
        )
    return np.frombuffer(section.data, dtype=dtype.newbyteorder("<")).astype(dtype)


def finite_side(values: np.ndarray, what: str, nonnegative: bool = False) -> np.ndarray:
    """Refuse decoded side information that no encoder writes (NaN, Inf, negative)."""
    v = values.astype(np.float64)
    if not np.all(np.isfinite(v)) or (nonnegative and np.any(v < 0)):
        raise CorruptStreamError(f"stream holds invalid {what} (non-finite or negative)")
    return v


def to_output(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round a float64 reconstruction to the output dtype, clipped to its finite range (the
    input was finite; rounding of side information may step just past the largest float)."""
    fmax = float(ml_dtypes.finfo(dtype).max)
    return np.clip(x, -fmax, fmax).astype(dtype)


def to_le_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes()


def round_side(values: np.ndarray, side_dtype: np.dtype, what: str, codec_id: str) -> np.ndarray:
    """Round side information to its storage dtype; refuse values it cannot hold."""
    with np.errstate(over="ignore"):
        stored = values.astype(side_dtype)
    if not np.all(np.isfinite(stored)):
        raise CodecConfigError(
            f"{codec_id}: {what} up to {float(np.max(np.abs(values))):.4g} overflow "
            f"side_dtype {side_dtype.name}; use side_dtype 'float32'"
        )
    return stored


def coded_shape(blob: bytes) -> tuple[int, ...] | None:
    """The shape that an embedded coder stream claims, read from its validated header
    (``docs/container-format.md``), or None for a stream that is not a kvinfo container
    (its coder then checks it). Raises :class:`CorruptStreamError` for a damaged one."""
    from .._container import MAGIC as CODER_MAGIC
    from .._container import unpack

    if bytes(blob[: len(CODER_MAGIC)]) != CODER_MAGIC:
        return None
    return tuple(int(s) for s in unpack(blob).shape)


@functools.cache
def _accepts_limit(cls) -> bool:
    import inspect

    try:
        return "max_output_bytes" in inspect.signature(cls.decode).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def guard_memory(decode):
    """Decorate a ``decode`` so that running out of memory is a :class:`CorruptStreamError`
    (one line at the command line), never a :class:`MemoryError` escaping the decoder."""

    @functools.wraps(decode)
    def wrapper(self, data, *args, **kwargs):
        try:
            return decode(self, data, *args, **kwargs)
        except MemoryError:
            try:
                size = f"{memoryview(data).nbytes} bytes"
            except TypeError:
                size = type(data).__name__
            raise CorruptStreamError(
                f"{self.codec_id}: not enough memory to decode this stream ({size}); lower "
                "max_output_bytes / KVINFO_MAX_OUTPUT_BYTES to refuse such streams early"
            ) from None

    return wrapper


class QuantCodec(Codec):
    """Base class: owns the entropy coder for the symbols and the stream container."""

    codec_id = ""
    _tag = 0
    lossy = True

    def __init__(self, coder: dict | str | None = None):
        from ..registry import get_codec

        if coder is None:
            coder = {"id": "rans"}
        if isinstance(coder, str):
            coder = {"id": coder}
        if not isinstance(coder, dict) or "id" not in coder:
            raise CodecConfigError(
                f"{self.codec_id}: coder must be a codec config dict with an 'id'; found {coder!r}"
            )
        try:
            self._coder = get_codec(coder)
        except UnknownCodecError as exc:
            raise UnknownCodecError(f"{self.codec_id}: coder: {exc}") from None
        if isinstance(self._coder, QuantCodec):
            raise CodecConfigError(
                f"{self.codec_id}: coder must be a lossless symbol coder; found {coder['id']!r}"
            )
        self.coder_config = self._coder.get_config()

    @property
    def coder(self) -> Codec:
        """The lossless coder of the quantization symbols."""
        return self._coder

    # -- helpers for subclasses --------------------------------------------------------
    def _coded(self, symbols: np.ndarray) -> Section:
        return Section(CODED, bytes(self._coder.encode(np.ascontiguousarray(symbols))))

    def _decode_symbols(self, section: Section, shape: tuple[int, ...], max_symbol: int):
        """Decode one coded section, refusing before any allocation a blob whose own header
        claims another shape than the stream says."""
        if section.kind != CODED:
            raise CorruptStreamError("expected an entropy-coded section")
        claimed = coded_shape(section.data)
        if claimed is not None and tuple(claimed) != tuple(shape):
            raise CorruptStreamError(
                f"the entropy-coded section claims shape {tuple(claimed)}; the stream header "
                f"says {tuple(shape)}"
            )
        n = math.prod(shape)
        if _accepts_limit(type(self._coder)):  # at most int32 symbols of the known shape
            sym = self._coder.decode(section.data, max_output_bytes=max(4 * n, 1))
        else:
            sym = self._coder.decode(section.data)
        sym = np.asarray(sym)
        if sym.shape != tuple(shape):
            raise CorruptStreamError(
                f"decoded symbols have shape {sym.shape}; the stream header says {tuple(shape)}"
            )
        if sym.size and (int(sym.min()) < 0 or int(sym.max()) > max_symbol):
            raise CorruptStreamError(f"decoded symbols outside 0..{max_symbol}")
        return sym

    def _parse(self, data, max_output_bytes: int | None = None) -> ParsedStream:
        """Parse and check a stream of this codec, and refuse an output above the decode
        limit (:mod:`kvinfo.codecs.limits`) before anything is allocated."""
        p = parse_stream(data, self._tag)
        check_output_bytes(math.prod(p.shape) * p.dtype.itemsize, max_output_bytes)
        return p

    def coded_sections(self, data) -> list[bytes]:
        """The entropy-coded blobs of a stream (each a stream of :attr:`coder`), in order.

        Raises :class:`~kvinfo.errors.CorruptStreamError` for a damaged stream.
        """
        return [bytes(s.data) for s in self._parse(data).sections if s.kind == CODED]

    def _check_device(self, device: str) -> None:
        if device != "cpu":
            raise CodecConfigError(
                f"{self.codec_id}: decode runs on the CPU only; expected device 'cpu', "
                f"found {device!r}"
            )

    def _raw_payload_bits(self, parsed: ParsedStream) -> int:
        """Payload bits in RAW sections (without padding); subclasses with RAW sections override."""
        return 0

    def rate(self, data) -> RateBreakdown:
        """Split an encoded stream's bits into symbol payload and side information.

        See the module docstring for what counts as which; ``symbol_bits + side_bits`` is
        ``8 * len(data)`` exactly.
        """
        parsed = self._parse(data)
        symbol_bits = self._raw_payload_bits(parsed)
        coder_rate_overridden = type(self._coder).rate is not Codec.rate
        for sec in parsed.sections:
            if sec.kind == CODED:
                if coder_rate_overridden:
                    symbol_bits += int(self._coder.rate(sec.data)["symbol_bits"])
                else:
                    symbol_bits += 8 * len(sec.data)
        n = int(np.prod(parsed.shape, dtype=np.int64))
        return RateBreakdown.from_bits(8 * len(bytes(data)), symbol_bits, n)
