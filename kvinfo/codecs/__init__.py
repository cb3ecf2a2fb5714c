"""Lossless entropy coders and lossy KV codecs behind one contract (see :mod:`kvinfo.codecs.abc`).

Importing this package registers every built-in codec.
"""

from ..errors import CodecConfigError, CorruptStreamError, UnknownCodecError
from . import (
    arith,  # noqa: F401  (registers 'arith')
    constriction_peers,  # noqa: F401  (registers 'constriction-ans', 'constriction-range')
    huffman,  # noqa: F401  (registers 'huffman')
    plan,  # noqa: F401  (registers 'plan': a per-slab codec map, docs/allocation.md)
    quant,  # noqa: F401  (registers uniform, ecsq, turbo, lossless)
    rans,  # noqa: F401  (registers 'rans')
)
from ._container import reseal as reseal_stream
from .abc import Codec, RateBreakdown
from .labels import codec_family, codec_label, coder_label
from .registry import codec_registry, get_codec, list_codecs, register_codec

__all__ = [
    "Codec",
    "RateBreakdown",
    "get_codec",
    "list_codecs",
    "register_codec",
    "codec_registry",
    "codec_label",
    "codec_family",
    "coder_label",
    "CorruptStreamError",
    "UnknownCodecError",
    "CodecConfigError",
    "reseal_stream",
]
