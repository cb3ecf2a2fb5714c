"""How ``kvinfo eval`` runs a rematerializing codec on a model's cache.

:class:`RematCacheCodec` has the interface of :class:`kvinfo.evaluate.CacheCodec`
(``apply(cache)``, ``total_bits``, ``bits_per_element``, ``bits_per_token``) plus
:meth:`RematCacheCodec.watch`, a context manager around the prefill that records what the
codec needs of it (the token ids, and X or the residual stream through
:class:`kvinfo.dumps.capture.InputHooks`). :meth:`~RematCacheCodec.apply` then encodes,
rematerializes K and V from the stream with the model, and puts them in the cache, timing
both (``encode_seconds``, ``remat_seconds``: measurements, CPU wall time).
"""

from __future__ import annotations

import contextlib
import time

from ..errors import CodecConfigError, EvalInputError

__all__ = ["RematCacheCodec"]


class RematCacheCodec:
    """A rematerializing codec applied to the prefilled cache of ``kvinfo eval``.

    Parameters
    ----------
    spec : dict
        A rematerializing codec config (:func:`kvinfo.remat.get_remat_codec`).
    block : int
        ``evaluate``'s ``block``; only 0 is supported (the prefilled cache is compressed).
    """

    def __init__(self, spec: dict, block: int = 0):
        from . import get_remat_codec

        self.codec = get_remat_codec(spec)
        self.spec = spec
        if block:
            raise EvalInputError.about(
                "{block} must be 0 for the rematerializing codec {c!r}: it compresses the "
                "prefilled cache only; got {got}", c=self.codec.codec_id, got=block
            )
        self.total_bits = 0
        self.num_elements = 0
        self.num_tokens = 0
        # bits are not split by kind (one stream rematerializes both)
        self.bits_by_kind = {"keys": 0, "values": 0}
        self.elements_by_kind = {"keys": 0, "values": 0}
        self.encode_seconds = 0.0
        self.remat_seconds = 0.0
        self._model = self._ids = self._inputs = self._residual = self._hooks = None

    @contextlib.contextmanager
    def watch(self, model, ids):
        """Record the prefill of ``ids`` (a ``(1, T)`` tensor) by ``model``."""
        from ..dumps.capture import InputHooks

        self._model, self._ids = model, ids[0].cpu().numpy()
        self._hooks = InputHooks(model) if self.codec.needs else None
        try:
            yield self
        finally:
            if self._hooks is not None:
                self._hooks.remove()
                self._hooks = None

    def _take_inputs(self) -> None:
        """The activations the hooks saw in the prefill (the first forward watched)."""
        if self._hooks is not None:
            self._inputs, self._residual = self._hooks.tensors()
            self._hooks.remove()
            self._hooks = None

    def apply(self, cache, start: int = 0) -> None:
        """Replace every layer's K and V by their rematerialization from the stream."""
        if start:
            raise EvalInputError("rematerializing codecs compress the prefilled cache only")
        if self._model is None:
            raise EvalInputError("RematCacheCodec.apply needs watch() around the prefill")
        self._take_inputs()
        layers = cache.layers
        n = int(layers[0].keys.shape[2])
        t0 = time.perf_counter()
        data = self.codec.encode(self._model, self._ids[:n], self._inputs, self._residual)
        t1 = time.perf_counter()
        kv = self.codec.rematerialize(data, self._model)
        t2 = time.perf_counter()
        if len(kv) != len(layers):
            raise CodecConfigError(f"{self.codec.codec_id}: {len(kv)} layers back for "
                                   f"{len(layers)}")
        for layer, (k, v) in zip(layers, kv, strict=True):
            if k.shape != layer.keys.shape or v.shape != layer.values.shape:
                raise CodecConfigError(
                    f"{self.codec.codec_id}: rematerialized {tuple(k.shape)} for "
                    f"{tuple(layer.keys.shape)}"
                )
            layer.keys = k.to(layer.keys.dtype)
            layer.values = v.to(layer.values.dtype)
            self.num_elements += k.numel() + v.numel()
        self.total_bits += 8 * len(data)
        self.num_tokens += n
        self.encode_seconds += t1 - t0
        self.remat_seconds += t2 - t1
        self._inputs = self._residual = None

    @property
    def bits_per_element(self) -> float:
        """Stored bits per K/V element of the cache it replaced (side information included)."""
        return self.total_bits / self.num_elements if self.num_elements else float("nan")

    @property
    def bits_per_token(self) -> float:
        """Stored bits per cached token, all layers."""
        return self.total_bits / self.num_tokens if self.num_tokens else float("nan")

    def extra(self) -> dict:
        """Further metrics for the record: FLOPs estimate and measured times."""
        from .flops import flops_per_token, model_shapes

        n = max(self.num_tokens, 1)
        return {
            "remat_flops_per_token": flops_per_token(self.codec.get_config(),
                                                     model_shapes(self._model), n),
            "remat_seconds": self.remat_seconds,
            "encode_seconds": self.encode_seconds,
        }
