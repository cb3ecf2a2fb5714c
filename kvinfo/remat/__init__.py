"""Rematerialization: codecs that store less than K and V and let the model recompute them.

Every K and V in the cache is a deterministic function of the tokens, so a cache can be
stored as the tokens themselves (``tokens``), as the quantized layer inputs X (``xquant``),
as the closed-loop cross-layer differences of the residual stream (``xquant-cl``) or as a
low-rank latent of X (``xquant-latent``), and rematerialized with the model's own weights.
See ``docs/remat.md``.

Public API: :func:`get_remat_codec` (a config in, a codec out; the one way in),
:func:`is_remat_spec`, :data:`REMAT_CODECS`, the codec classes, :class:`RematCacheCodec`
(what ``kvinfo eval`` runs them through), :func:`flops_per_token` and
:func:`model_shapes`, :class:`ModelAdapter` (K and V from X with the model's weights) and
:func:`model_fingerprint`.
"""

from __future__ import annotations

from ..errors import CodecConfigError, UnknownCodecError
from ._base import RematCodec
from ._model import ModelAdapter, model_fingerprint
from .cache import RematCacheCodec
from .flops import flops_per_token, forward_flops_per_token, model_shapes
from .latent import XQuantLatentCodec, kv_basis
from .tokens import (
    ArithmeticDecoder,
    ArithmeticEncoder,
    NextTokenTables,
    TokensCodec,
    quantize_probabilities,
)
from .xquant import XQuantCodec
from .xquant_cl import XQuantCLCodec

__all__ = [
    "REMAT_CODECS",
    "RematCodec",
    "get_remat_codec",
    "is_remat_spec",
    "normalize_remat_spec",
    "TokensCodec",
    "XQuantCodec",
    "XQuantCLCodec",
    "XQuantLatentCodec",
    "RematCacheCodec",
    "ModelAdapter",
    "model_fingerprint",
    "flops_per_token",
    "forward_flops_per_token",
    "model_shapes",
    "kv_basis",
    "NextTokenTables",
    "quantize_probabilities",
    "ArithmeticEncoder",
    "ArithmeticDecoder",
]

#: codec id -> class of every rematerializing codec
REMAT_CODECS: dict[str, type[RematCodec]] = {
    c.codec_id: c for c in (TokensCodec, XQuantCodec, XQuantCLCodec, XQuantLatentCodec)
}


def is_remat_spec(spec) -> bool:
    """Whether ``spec`` is a config (a dict) naming a rematerializing codec."""
    return isinstance(spec, dict) and spec.get("id") in REMAT_CODECS


def get_remat_codec(spec: dict | RematCodec) -> RematCodec:
    """The codec of a config such as ``{"id": "xquant", "bits": 4}`` (validated).

    Raises
    ------
    UnknownCodecError
        For an id that is not a rematerializing codec.
    CodecConfigError
        For bad parameters.

    Examples
    --------
    >>> get_remat_codec({"id": "xquant", "bits": 3}).get_config()["group_size"]
    64
    """
    if isinstance(spec, RematCodec):
        return spec
    if not isinstance(spec, dict):
        raise CodecConfigError(f"a codec config must be a dict, got {type(spec).__name__}")
    cls = REMAT_CODECS.get(spec.get("id"))
    if cls is None:
        raise UnknownCodecError(
            f"unknown rematerializing codec {spec.get('id')!r}; expected one of "
            f"{', '.join(REMAT_CODECS)}"
        )
    return cls.from_config(spec)


def normalize_remat_spec(spec: dict) -> dict:
    """The full config (every default filled in) that results files record."""
    return get_remat_codec(spec).get_config()
