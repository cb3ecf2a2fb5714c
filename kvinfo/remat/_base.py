"""The contract of a rematerializing codec (a config plus encode and rematerialize).

A rematerializing codec stores something smaller than K and V (the tokens, or the layer
inputs X, or a latent of X) and gets K and V back by running part of the model. So, unlike a
:class:`kvinfo.codecs.abc.Codec`, both of its functions take the model:

* ``encode(model, token_ids, inputs=None, residual=None) -> bytes``: ``token_ids`` of the
  cached tokens (positions ``0..T-1``); ``inputs`` and ``residual``, per layer, X and the
  residual stream of shape ``(T, hidden_size)`` (what ``kvinfo capture --inputs`` stores;
  only the codecs whose :attr:`needs` names them use them);
* ``rematerialize(data, model) -> [(K, V), ...]``: per layer, torch tensors of shape
  ``(1, kv_heads, T, head_dim)`` in the model's dtype (post-RoPE keys, as in the model's
  cache).

The stream records the model's weights fingerprint; a model with other weights is
refused (:class:`~kvinfo.errors.ModelMismatchError`), a damaged stream raises
:class:`~kvinfo.errors.CorruptStreamError`.
"""

from __future__ import annotations

import json

from ..errors import CodecConfigError

__all__ = ["RematCodec", "check_int"]


def check_int(codec_id: str, name: str, value, lo: int, hi: int) -> int:
    """``value`` as an int in ``lo..hi``, or :class:`CodecConfigError` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise CodecConfigError(
            f"{codec_id}: {name} must be an integer in {lo}..{hi}; found {value!r}"
        )
    return int(value)


class RematCodec:
    """Base class: config handling shared by every rematerializing codec."""

    codec_id: str = ""
    #: which layer activations :meth:`encode` needs besides the token ids
    needs: frozenset = frozenset()

    def get_config(self) -> dict:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict):
        cfg = dict(config)
        cfg.pop("id", None)
        try:
            return cls(**cfg)
        except TypeError as exc:
            raise CodecConfigError(f"{cls.codec_id}: bad parameters ({exc})") from None

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(json.dumps(self.get_config(), sort_keys=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.get_config(), sort_keys=True)})"

    def encode(self, model, token_ids, inputs=None, residual=None) -> bytes:
        raise NotImplementedError  # pragma: no cover

    def rematerialize(self, data, model) -> list:
        raise NotImplementedError  # pragma: no cover

    def _check_activations(self, inputs, residual, num_layers: int, num_tokens: int,
                           hidden: int) -> None:
        for name, arrs in (("inputs", inputs), ("residual", residual)):
            if name not in self.needs:
                continue
            if arrs is None or len(arrs) != num_layers:
                raise CodecConfigError(
                    f"{self.codec_id}: needs {name} of all {num_layers} layers (capture with "
                    f"--inputs); got {'none' if arrs is None else len(arrs)}"
                )
            for i, a in enumerate(arrs):
                if tuple(a.shape) != (num_tokens, hidden):
                    raise CodecConfigError(
                        f"{self.codec_id}: {name}[{i}] has shape {tuple(a.shape)}; expected "
                        f"{(num_tokens, hidden)}"
                    )
