"""Registry mapping codec ids to codec classes; :func:`get_codec` is the one way in."""

from __future__ import annotations

import json

from ..errors import CodecConfigError, UnknownCodecError
from .abc import Codec

__all__ = ["register_codec", "get_codec", "list_codecs", "codec_registry"]

codec_registry: dict[str, type[Codec]] = {}


def register_codec(cls: type[Codec], codec_id: str | None = None) -> type[Codec]:
    """Register ``cls`` under ``codec_id`` (default ``cls.codec_id``); usable as a decorator."""
    cid = codec_id or cls.codec_id
    if not cid:
        raise CodecConfigError(f"codec class {cls.__name__} has no codec_id")
    codec_registry[cid] = cls
    return cls


def list_codecs() -> list[str]:
    """The registered codec ids, sorted."""
    return sorted(codec_registry)


def get_codec(config: dict | str) -> Codec:
    """Build a codec from a config dict (or its JSON text) containing ``"id"``.

    Raises
    ------
    UnknownCodecError
        If the id is not registered; the message lists the known ids.
    CodecConfigError
        If the config is not a dict with an ``"id"``, or a parameter is invalid.

    Examples
    --------
    >>> from kvinfo.codecs import get_codec
    >>> get_codec({"id": "no-such-codec"})
    Traceback (most recent call last):
    ...
    kvinfo.errors.UnknownCodecError: unknown codec id 'no-such-codec'; known ids: ...
    """
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError as exc:
            raise CodecConfigError(f"codec config is not valid JSON: {exc.msg}") from None
    if not isinstance(config, dict) or "id" not in config:
        raise CodecConfigError(f"a codec config must be a JSON object with an 'id'; got {config!r}")
    cid = config["id"]
    cls = codec_registry.get(cid)
    if cls is None:
        known = ", ".join(list_codecs()) or "(none)"
        raise UnknownCodecError(f"unknown codec id {cid!r}; known ids: {known}")
    try:
        return cls.from_config(config)
    except TypeError as exc:
        raise CodecConfigError(f"bad config for codec {cid!r}: {exc}") from None
