"""KV codec specs: one lossy KV codec for keys and values, or one per kind.

A spec is what ``kvinfo bench --codec`` and ``kvinfo eval --codec`` take: either a codec
config (``{"id": "turbo", "bits": 3}``), used for every kind, or
``{"keys": config, "values": config}`` (KIVI quantizes keys per channel and values per
token). Every config must name a KV codec (a quantizer or ``lossless``); a bare entropy
coder codes integer symbols, not floats, and is refused with a hint.
"""

from __future__ import annotations

from ..errors import CodecConfigError
from .quant._base import QuantCodec
from .registry import get_codec

__all__ = ["KVCodecSpec", "KINDS"]

KINDS = ("keys", "values")


class KVCodecSpec:
    """A validated KV codec spec.

    Parameters
    ----------
    spec : dict
        A codec config with an ``"id"``, or a mapping from ``"keys"``/``"values"`` to configs
        (optionally with ``"id": "per-kind"``, as :attr:`config` writes it).
    require : tuple of str
        Kinds that must have a codec (eval needs both; bench can run keys only).

    Attributes
    ----------
    spec : dict
        The spec as given.
    codecs : dict
        Kind -> codec, for the kinds the spec covers.
    config : dict
        The normalised config for results files: the codec's full config (every default
        filled in), or ``{"id": "per-kind", "keys": ..., "values": ...}``. Equivalent specs
        have equal configs: defaults omitted or spelled out, and a per-kind spec with the same
        codec for keys and values, normalise to the same dict.

    Examples
    --------
    >>> s = KVCodecSpec({"keys": {"id": "uniform", "bits": 2, "axis": "channel"},
    ...                  "values": {"id": "uniform", "bits": 2, "axis": "token"}})
    >>> s.config["id"], s.codecs["values"].axis
    ('per-kind', 'token')
    """

    def __init__(self, spec: dict, require: tuple[str, ...] = ()):
        if not isinstance(spec, dict):
            raise CodecConfigError(f"a codec spec must be a JSON object; found {spec!r}")
        if spec.get("id") == "per-kind":  # the normalised form (results files) reads back
            spec = {k: v for k, v in spec.items() if k != "id"}
        if "id" in spec:
            configs = {kind: spec for kind in KINDS}
        elif spec and set(spec) <= set(KINDS):
            configs = dict(spec)
        else:
            raise CodecConfigError(
                "a codec spec is a codec config with an 'id', or {'keys': config, "
                f"'values': config}}; found keys {sorted(spec)}"
            )
        missing = [k for k in require if k not in configs]
        if missing:
            raise CodecConfigError(
                f"this codec spec has no codec for {' and '.join(missing)}; give "
                "{'keys': config, 'values': config} or one config with an 'id'"
            )
        self.spec = spec
        self.codecs = {}
        for kind, cfg in configs.items():
            codec = get_codec(cfg)
            if not isinstance(codec, QuantCodec):
                raise CodecConfigError(
                    f"codec {codec.codec_id!r} is an entropy coder of integer symbols, not a KV "
                    "codec; use it as the coder of a quantizer, e.g. "
                    f'{{"id": "uniform", "bits": 4, "coder": {{"id": "{codec.codec_id}"}}}}, '
                    'or losslessly as {"id": "lossless", "coder": ...}'
                )
            self.codecs[kind] = codec
        full = {k: c.get_config() for k, c in self.codecs.items()}
        if "id" in spec or (set(full) == set(KINDS) and full["keys"] == full["values"]):
            # one codec for every kind, however it was spelled
            self.config = full["keys"]
        else:
            self.config = {"id": "per-kind", **full}

    def for_kind(self, kind: str):
        """The codec of ``kind`` (a one-config spec covers every kind), or None."""
        if "id" in self.spec:
            return self.codecs["keys"]
        return self.codecs.get(kind)
