"""Compiled kernels. :mod:`kvinfo.kernels.cpu` holds the Numba CPU kernels of the lossless
coders (each behind a validating wrapper) and :func:`warmup`, which compiles them all."""

from .cpu import warmup

__all__ = ["warmup"]
