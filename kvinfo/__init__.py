"""kvinfo: how many bits does a KV cache really need, and how close does a codec get?

The package is layered; data flows one way::

    dumps  ->  analysis / codecs (+ kernels)  ->  bench / eval  ->  report

A lower layer never imports a higher one. The public entry points are re-exported here.
"""

from ._version import __version__
from .dumps import open_dump
from .errors import (
    AnalysisInputError,
    CaptureInputError,
    CodecConfigError,
    CorruptStreamError,
    DumpFormatError,
    KvinfoError,
    ModelNotFoundError,
    UnknownCodecError,
)

__all__ = [
    "__version__",
    "open_dump",
    "KvinfoError",
    "DumpFormatError",
    "ModelNotFoundError",
    "CaptureInputError",
    "UnknownCodecError",
    "CodecConfigError",
    "CorruptStreamError",
    "AnalysisInputError",
]
