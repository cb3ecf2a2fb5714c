"""How much a decoder may allocate: one limit for every decoder in kvinfo.

A stream of a few hundred bytes must not make a decoder allocate gigabytes. Every decoder
checks, *before* allocating, that the output a stream claims is consistent with the stream
itself (the smallest number of bytes that can encode that many symbols, the declared section
lengths, the dtype and shape product) and raises :class:`~kvinfo.errors.CorruptStreamError`
otherwise. On top of that consistency check, a legitimate-looking but huge claim is refused
when it exceeds a finite limit:

* per call: ``codec.decode(data, max_output_bytes=N)`` where the codec supports it;
* per process: the environment variable ``KVINFO_MAX_OUTPUT_BYTES`` (an integer number of
  bytes, read at each call);
* otherwise :data:`DEFAULT_MAX_OUTPUT_BYTES` (64 GiB).

Examples
--------
>>> from kvinfo.codecs.limits import check_output_bytes
>>> check_output_bytes(1024, max_output_bytes=4096)
1024
>>> check_output_bytes(8192, max_output_bytes=4096)
Traceback (most recent call last):
...
kvinfo.errors.CorruptStreamError: the stream claims an output of 8192 bytes, above the decode ...
"""

from __future__ import annotations

import os

from ..errors import CodecConfigError, CorruptStreamError

__all__ = ["DEFAULT_MAX_OUTPUT_BYTES", "ENV_VAR", "output_limit", "check_output_bytes"]

DEFAULT_MAX_OUTPUT_BYTES = 64 << 30
ENV_VAR = "KVINFO_MAX_OUTPUT_BYTES"


def output_limit(max_output_bytes: int | None = None) -> int:
    """The decode limit in bytes: the argument, else ``$KVINFO_MAX_OUTPUT_BYTES``, else the default.

    Raises :class:`~kvinfo.errors.CodecConfigError` for a limit that is not a positive integer.
    """
    if max_output_bytes is None:
        env = os.environ.get(ENV_VAR)
        if env is None or env.strip() == "":
            return DEFAULT_MAX_OUTPUT_BYTES
        try:
            max_output_bytes = int(env.strip())
        except ValueError:
            raise CodecConfigError(
                f"{ENV_VAR} must be a positive integer number of bytes; found {env!r}"
            ) from None
        where = ENV_VAR
    else:
        where = "max_output_bytes"
    if isinstance(max_output_bytes, bool) or not isinstance(max_output_bytes, int):
        raise CodecConfigError(f"{where} must be a positive integer; found {max_output_bytes!r}")
    if max_output_bytes <= 0:
        raise CodecConfigError(f"{where} must be positive; found {max_output_bytes}")
    return max_output_bytes


def check_output_bytes(nbytes: int, max_output_bytes: int | None = None) -> int:
    """Refuse a claimed output size above the decode limit; return ``nbytes`` otherwise."""
    limit = output_limit(max_output_bytes)
    if nbytes < 0 or nbytes > limit:
        raise CorruptStreamError(
            f"the stream claims an output of {nbytes} bytes, above the decode limit of "
            f"{limit} bytes (max_output_bytes / {ENV_VAR})"
        )
    return int(nbytes)
