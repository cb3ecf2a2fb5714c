"""The codec spec of bench: a KV codec spec with its short label."""

from __future__ import annotations

from ..codecs.labels import codec_label
from ..codecs.spec import KVCodecSpec

__all__ = ["CodecSpec"]


class CodecSpec(KVCodecSpec):
    """A :class:`~kvinfo.codecs.spec.KVCodecSpec` with the short label used in tables and
    legends. Bench accepts specs that cover one kind only (``{"keys": ...}``)."""

    def __init__(self, spec: dict):
        super().__init__(spec)
        self.label = codec_label(self.config)
