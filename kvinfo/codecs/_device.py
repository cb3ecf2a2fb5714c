"""GPU decoding glue shared by the GPU-capable codecs (``rans``, ``huffman``, ``uniform``).

Each of those codecs parses and validates its own stream with the parser its CPU decoder
uses, then hands :mod:`kvinfo.kernels.gpu` plain arrays. This module holds the few checks
the coders share on that path: the GPU front end itself (available, or
:class:`~kvinfo.errors.CudaUnavailableError` before any parsing), the extra checks a
quantizer's coded section must pass before its symbols are dequantized on the device,
and the symbol-CRC hook for ``decode(verify_crc=True)``.
"""

from __future__ import annotations

from ..errors import CorruptStreamError
from . import _container as C

__all__ = ["front_end", "check_coded", "crc_check", "has_cuda_decoder"]


def front_end():
    """:mod:`kvinfo.kernels.gpu`, after checking a GPU (or the simulator) is usable."""
    from ..kernels import gpu

    gpu.require_cuda()
    return gpu


def has_cuda_decoder(codec) -> bool:
    """True if ``codec``'s class overrides :meth:`Codec.prepare_cuda`."""
    from .abc import Codec

    return type(codec).prepare_cuda is not Codec.prepare_cuda


def check_coded(container: C.Container, shape, max_symbol) -> None:
    """For a coder stream inside a quantizer stream: its shape is the quantizer's and its
    coded symbols span no more than ``[0, max_symbol]`` (None: no check)."""
    if shape is not None and tuple(container.shape) != tuple(shape):
        raise CorruptStreamError(
            f"decoded symbols have shape {tuple(container.shape)}; the stream header says "
            f"{tuple(shape)}"
        )
    p = container.params
    st = getattr(container, "stored", None)
    if max_symbol is not None and st is not None and st.symbols.size:
        lo, hi = int(st.symbols.min()), int(st.symbols.max())
        if lo < 0 or hi > max_symbol:
            raise CorruptStreamError(
                f"corrupt kvinfo stream: stored symbols span [{lo}, {hi}], expected within "
                f"[0, {max_symbol}]"
            )
    if max_symbol is not None and container.num_symbols and p["alphabet_size"]:
        lo, hi = p["min_symbol"], p["min_symbol"] + p["alphabet_size"] - 1
        if lo < 0 or hi > max_symbol:
            raise CorruptStreamError(
                f"corrupt kvinfo stream: coded symbols span [{lo}, {hi}], expected within "
                f"[0, {max_symbol}]"
            )


def crc_check(container: C.Container):
    """``verify(host_symbols)``: the stored symbol CRC-32 check of the CPU decoder."""
    return lambda host: C.check_symbols(container, host.reshape(container.shape))
