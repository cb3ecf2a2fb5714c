"""Compiled kernels: plain arrays in, arrays out.

:mod:`kvinfo.kernels.cpu` holds the Numba CPU kernels of the lossless coders (each behind
a validating wrapper) and :func:`warmup`, which compiles them all;
:mod:`kvinfo.kernels.gpu` the CUDA decode front-end (``prepare_rans``, ``prepare_huffman``,
``Dequant``) over the kernels of :mod:`kvinfo.kernels.cuda`, imported only behind an
availability check. This package is a leaf: it imports no other kvinfo subpackage (only
:mod:`kvinfo.errors`) and knows no stream format; the codecs parse their streams and hand
it arrays.
"""

from .cpu import warmup

__all__ = ["warmup"]
