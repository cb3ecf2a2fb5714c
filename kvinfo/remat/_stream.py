"""The container of every rematerializing stream (see docs/remat.md, "Stream format").

::

    magic        2 bytes  b"KR"
    version      u8       1
    codec        u8       1 tokens, 2 xquant, 3 xquant-cl, 4 xquant-latent
    fingerprint  4 bytes  first bytes of the SHA-256 of the model's weights
    num_tokens   varint   tokens of the cache the stream rematerializes
    params       varint length, then bytes (codec-specific)
    payload      the rest, up to the trailer
    crc32        u32 LE   CRC-32 of every byte before it

The header is small on purpose: the ``tokens`` stream is a few bits per token, and its
side information counts in its rate. Any damage (truncation, altered bytes) fails the
CRC and raises :class:`~kvinfo.errors.CorruptStreamError`; a model with other weights
raises :class:`~kvinfo.errors.ModelMismatchError`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from ..errors import CorruptStreamError
from ._model import FINGERPRINT_BYTES

__all__ = ["MAGIC", "CODEC_CODES", "pack_stream", "unpack_stream", "RematStream",
           "write_varint", "read_varint"]

MAGIC = b"KR"
VERSION = 1
CODEC_CODES = {"tokens": 1, "xquant": 2, "xquant-cl": 3, "xquant-latent": 4}
_CODES_TO_ID = {v: k for k, v in CODEC_CODES.items()}
#: the largest token count a stream may claim (refused above: no huge allocation)
MAX_TOKENS = 1 << 32


def write_varint(out: bytearray, v: int) -> None:
    v = int(v)
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return


def read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise CorruptStreamError("remat stream: truncated or invalid varint in the header")
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, pos


@dataclass(frozen=True)
class RematStream:
    """A parsed stream: its codec id, model fingerprint, token count, params and payload."""

    codec_id: str
    fingerprint: bytes
    num_tokens: int
    params: bytes
    payload: bytes


def pack_stream(codec_id: str, fingerprint: bytes, num_tokens: int, params: bytes,
                payload: bytes) -> bytes:
    out = bytearray(MAGIC)
    out += bytes([VERSION, CODEC_CODES[codec_id]])
    out += fingerprint[:FINGERPRINT_BYTES]
    write_varint(out, num_tokens)
    write_varint(out, len(params))
    out += params
    out += payload
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


def unpack_stream(data, codec_id: str) -> RematStream:
    """Parse and check a stream made by ``codec_id``; :class:`CorruptStreamError` if not."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CorruptStreamError(f"{codec_id}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    head = 2 + 2 + FINGERPRINT_BYTES
    if len(data) < head + 2 + 4:
        raise CorruptStreamError(
            f"{codec_id}: stream of {len(data)} bytes is too short to be a remat stream"
        )
    if data[:2] != MAGIC:
        raise CorruptStreamError(f"{codec_id}: not a kvinfo remat stream (bad magic)")
    (crc,) = struct.unpack("<I", data[-4:])
    if zlib.crc32(data[:-4]) != crc:
        raise CorruptStreamError(f"{codec_id}: stream damaged (CRC-32 mismatch)")
    if data[2] != VERSION:
        raise CorruptStreamError(
            f"{codec_id}: remat stream version {data[2]}; this kvinfo reads {VERSION}"
        )
    found = _CODES_TO_ID.get(data[3])
    if found != codec_id:
        raise CorruptStreamError(
            f"{codec_id}: the stream was made by codec {found or data[3]!r}, not {codec_id!r}"
        )
    fp = data[4:head]
    end = len(data) - 4
    num_tokens, pos = read_varint(data, head, end)
    if not 1 <= num_tokens <= MAX_TOKENS:
        raise CorruptStreamError(f"{codec_id}: invalid token count {num_tokens}")
    plen, pos = read_varint(data, pos, end)
    if pos + plen > end:
        raise CorruptStreamError(f"{codec_id}: parameter block runs past the stream's end")
    return RematStream(found, fp, num_tokens, data[pos:pos + plen], data[pos + plen:end])
