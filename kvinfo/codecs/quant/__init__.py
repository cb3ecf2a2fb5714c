"""Lossy KV codecs (quantizer + entropy coder) and the exact float codec.

Importing this package registers ``"uniform"``, ``"ecsq"``, ``"turbo"``, ``"klt"`` and
``"lossless"``.
Each owns a lossless coder for its symbols (``"coder"`` in its config) and writes the stream
container of :mod:`kvinfo.codecs.quant._base`; ``Codec.rate`` splits its bits into symbol
payload and side information. See ``docs/codecs.md``.
"""

from ._base import CODED, parse_stream
from .ecsq import EcsqCodec
from .klt import KltCodec
from .lloyd_max import Codebook, lloyd_max_gaussian, lloyd_max_sphere
from .lossless import LosslessCodec
from .rotation import rotation_matrix
from .turbo import TurboCodec
from .uniform import UniformCodec

__all__ = [
    "UniformCodec",
    "EcsqCodec",
    "TurboCodec",
    "KltCodec",
    "LosslessCodec",
    "Codebook",
    "lloyd_max_gaussian",
    "lloyd_max_sphere",
    "rotation_matrix",
    "parse_stream",
    "CODED",
]
