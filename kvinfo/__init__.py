"""kvinfo: how many bits does a KV cache really need, and how close does a codec get?

The package is layered; data flows one way (``docs/architecture.md``)::

    dumps  ->  analysis / codecs (+ kernels)  ->  bench / evaluate  ->  report  ->  commands

A lower layer never imports a higher one. The public entry points are re-exported here,
with every error class of :mod:`kvinfo.errors`.
"""

from . import errors
from ._version import __version__
from .dumps import open_dump
from .errors import *  # noqa: F403 - every error class is public here (errors.__all__)

__all__ = ["__version__", "open_dump", *errors.__all__]
