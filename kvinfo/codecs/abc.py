"""The codec contract shared by lossless coders and lossy KV codecs.

A codec is a JSON-able *config* plus two functions (the numcodecs design):

* ``codec_id`` -- a class attribute, the id under which the class is registered;
* ``encode(array) -> bytes`` -- compress one array into a self-describing stream;
* ``decode(data) -> numpy.ndarray`` -- the array back, same shape and dtype (lossless
  coders return exactly the input; lossy codecs return its reconstruction);
* ``get_config() -> dict`` -- JSON-able, always contains ``"id"``; every constructor
  argument appears in it, so ``get_codec(codec.get_config())`` builds an equal codec
  that decodes the same bytes;
* ``from_config(config)`` -- the inverse of ``get_config``.

Equality, hashing and ``repr`` derive from the config. Construction validates every
parameter and raises :class:`~kvinfo.errors.CodecConfigError` (a ``ValueError``) for a
bad one. Decoding damaged data raises :class:`~kvinfo.errors.CorruptStreamError`.

Codecs that quantize also report their rate honestly through :meth:`Codec.rate`, which
splits the bits of one encoded stream into symbol bits and side information.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

__all__ = ["Codec", "RateBreakdown"]


class RateBreakdown(dict):
    """Bits of one encoded stream, split by what they pay for.

    Keys (all floats): ``total_bits`` (= 8 * len(stream)), ``num_elements``,
    ``bits_per_element`` (total over elements), ``symbol_bits_per_element`` (entropy-coded
    payload), ``side_bits_per_element`` (everything else: headers, model tables, scales,
    norms, outliers, full-precision tokens, checksums). ``symbol + side == total`` exactly.
    """

    @classmethod
    def from_bits(cls, total_bits: int, symbol_bits: int, num_elements: int) -> RateBreakdown:
        n = max(int(num_elements), 1)
        side = int(total_bits) - int(symbol_bits)
        return cls(
            total_bits=int(total_bits),
            symbol_bits=int(symbol_bits),
            side_bits=side,
            num_elements=int(num_elements),
            bits_per_element=total_bits / n,
            symbol_bits_per_element=symbol_bits / n,
            side_bits_per_element=side / n,
        )


class Codec(ABC):
    """Abstract base of every kvinfo codec; see the module docstring for the contract."""

    codec_id: ClassVar[str] = ""
    #: True for codecs whose decode returns a reconstruction, not the input itself
    #: (:func:`kvinfo.testing.check_lossy_codec` holds them to the lossy contract)
    lossy: ClassVar[bool] = False

    @abstractmethod
    def encode(self, array: np.ndarray) -> bytes:
        """Encode ``array`` into a self-describing byte string."""

    @abstractmethod
    def decode(self, data: bytes | bytearray | memoryview, device: str = "cpu") -> Any:
        """Decode a byte string produced by :meth:`encode` (with an equal config)."""

    @abstractmethod
    def get_config(self) -> dict:
        """A JSON-able dict with ``"id"`` and every constructor argument."""

    @classmethod
    def from_config(cls, config: dict) -> Codec:
        """Build a codec from the output of :meth:`get_config`."""
        config = dict(config)
        config.pop("id", None)
        return cls(**config)

    def prepare_cuda(self, data, **fused):
        """Validate ``data`` on the host and upload it for decoding on a CUDA GPU.

        Returns a :class:`kvinfo.kernels.gpu.PreparedStream`, whose ``decode()`` gives a
        device array; ``codec.decode(data, device="cuda")`` is ``prepare_cuda(data).decode()``.
        Codecs with a CUDA decoder (``rans``, ``huffman``, ``uniform``) override this; the
        default raises :class:`~kvinfo.errors.CodecConfigError`.
        """
        from ..errors import CodecConfigError

        raise CodecConfigError(
            f"no CUDA decoder for codec {self.codec_id!r}; expected one of 'huffman', 'rans', "
            f"'uniform', or decode with device='cpu'"
        )

    def rate(self, data: bytes) -> RateBreakdown:
        """Split the bits of an encoded stream into symbols and side information.

        The default counts the whole stream as side information; codecs override it.
        """
        return RateBreakdown.from_bits(8 * len(data), 0, 0)

    # -- config-derived identity -------------------------------------------------------
    def _config_key(self) -> str:
        return json.dumps(self.get_config(), sort_keys=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Codec):
            return NotImplemented
        return self._config_key() == other._config_key()

    def __hash__(self) -> int:
        return hash(self._config_key())

    def __repr__(self) -> str:
        cfg = self.get_config()
        args = ", ".join(f"{k}={v!r}" for k, v in cfg.items() if k != "id")
        return f"{type(self).__name__}({args})"
