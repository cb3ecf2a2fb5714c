"""Reusable contract checks for kvinfo codecs (zarr-style ``testing`` module).

Every check takes a codec instance (anything following :mod:`kvinfo.codecs.abc`) and
raises ``AssertionError`` with a message naming the failing case. Run them from your
own test suite to hold your codec to the same contract as kvinfo's codecs::

    from kvinfo.testing import check_lossless_codec, check_lossy_codec
    check_lossless_codec(MyCoder())
    check_lossy_codec(MyQuantizer(), max_relative_mse=0.01)

**Lossless coders.** Round trips over the symbol dtypes and shapes
(:func:`check_dtypes_and_shapes`), alphabets from 1 to 65536 symbols
(:func:`check_alphabets`), degenerate inputs (:func:`check_degenerate_inputs`), the config
through JSON (:func:`check_config_json`), the rate split (:func:`check_rate`), and damage:
every single-byte change and every truncation of a small stream raises
:class:`~kvinfo.errors.CorruptStreamError` within a time limit (:func:`check_corruption`),
also when the stream-level CRC is recomputed so that only the codec's own checks stand
guard (:func:`check_damage_past_crc`).

**Lossy codecs** (``codec.lossy`` is True). The round trip keeps shape and dtype, gives
finite values and stays within a stated distortion (:func:`check_lossy_roundtrip`): the
codec's own bound when it states one (a method ``max_abs_error(array)`` returning a
per-element bound on ``|x - decode(encode(x))|``, as ``uniform`` and ``ecsq`` do), else
the tolerance the test gives (``max_abs_error`` and/or ``max_relative_mse``, the MSE over
the mean square of the input); the config through JSON rebuilds an equal codec that decodes the
stream to the same bits (:func:`check_lossy_config_json`); the rate accounting equals the
stream length (:func:`check_rate`: ``total_bits == 8 * len(stream)``, ``symbol_bits +
side_bits == total_bits``). :func:`check_lossy_codec` runs them on KV-like data
(:func:`kv_like`) over float16, bfloat16, float32 and several shapes.

Examples
--------
>>> from kvinfo.codecs import get_codec
>>> from kvinfo.testing import check_lossy_codec, check_roundtrip
>>> import numpy as np
>>> stream = check_roundtrip(get_codec({"id": "rans"}), np.arange(10, dtype=np.uint8))
>>> stream[:4]
b'KVIC'
>>> check_lossy_codec(get_codec({"id": "ecsq", "step": 0.05}))  # its own stated bound
>>> check_lossy_codec(get_codec({"id": "turbo", "bits": 4}), max_relative_mse=0.02)
"""

from __future__ import annotations

import json
import struct
import time
import zlib

import ml_dtypes
import numpy as np

from .codecs.registry import get_codec
from .errors import CorruptStreamError

__all__ = [
    "SYMBOL_DTYPES",
    "SHAPES",
    "ALPHABET_SIZES",
    "check_roundtrip",
    "check_dtypes_and_shapes",
    "check_alphabets",
    "check_degenerate_inputs",
    "check_config_json",
    "check_rate",
    "check_corruption",
    "check_damage_past_crc",
    "check_decodes_like",
    "check_lossless_codec",
    "LOSSY_DTYPES",
    "LOSSY_SHAPES",
    "kv_like",
    "check_lossy_roundtrip",
    "check_lossy_config_json",
    "check_lossy_codec",
]

SYMBOL_DTYPES = (np.uint8, np.uint16, np.int32)
SHAPES = ((), (0,), (1,), (33,), (3, 5), (2, 3, 4), (0, 5), (5, 0), (200, 16), (1, 1, 70))
ALPHABET_SIZES = (1, 2, 3, 16, 255, 256, 257, 4096, 4097, 65536)
LOSSY_DTYPES = (np.float16, ml_dtypes.bfloat16, np.float32)
LOSSY_SHAPES = ((40, 16), (2, 33, 8), (2, 1, 64, 32))


def _expect(cond: bool, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


def check_roundtrip(codec, array: np.ndarray) -> bytes:
    """Encode then decode ``array``; check bytes out, then same dtype, shape and values."""
    data = codec.encode(array)
    _expect(isinstance(data, bytes), f"{codec!r}: encode must return bytes, got {type(data)}")
    out = codec.decode(data)
    _expect(isinstance(out, np.ndarray), f"{codec!r}: decode must return an ndarray")
    _expect(out.dtype == array.dtype, f"{codec!r}: dtype {array.dtype} came back as {out.dtype}")
    _expect(out.shape == array.shape, f"{codec!r}: shape {array.shape} came back as {out.shape}")
    _expect(bool(np.array_equal(out, array)),
            f"{codec!r}: decoded values differ for dtype {array.dtype} shape {array.shape}")
    return data


def _values(rng, dtype, size, alphabet=16):
    info = np.iinfo(dtype)
    lo = max(info.min, -7) if info.min < 0 else 0
    return rng.integers(lo, min(info.max, lo + alphabet - 1) + 1, size=size).astype(dtype)


def check_dtypes_and_shapes(codec, dtypes=SYMBOL_DTYPES, shapes=SHAPES, seed: int = 0) -> None:
    """Round trips of random symbols for every dtype and shape (including empty and 0-d)."""
    rng = np.random.default_rng(seed)
    for dt in dtypes:
        for shape in shapes:
            check_roundtrip(codec, _values(rng, dt, shape))
        # a non-contiguous view codes like its contiguous copy
        x = _values(rng, dt, (40, 30))[::2, ::3]
        check_roundtrip(codec, x)


def check_alphabets(codec, sizes=ALPHABET_SIZES, seed: int = 0) -> None:
    """Every symbol of alphabets from 1 to 65536 symbols, in uint16 and offset int32."""
    rng = np.random.default_rng(seed)
    for a in sizes:
        sym = np.concatenate([np.arange(a), rng.integers(0, a, size=min(4 * a, 20_000))])
        rng.shuffle(sym)
        check_roundtrip(codec, sym.astype(np.uint16))
        check_roundtrip(codec, (sym - a // 2 - 100).astype(np.int32).reshape(-1, 1))


def check_degenerate_inputs(codec) -> None:
    """Empty arrays, a single repeated symbol, a symbol that appears once, dtype extremes."""
    for dt in SYMBOL_DTYPES:
        check_roundtrip(codec, np.zeros(0, dt))
        check_roundtrip(codec, np.zeros((0, 4, 0), dt))
        check_roundtrip(codec, np.full(5000, 3, dt))
        check_roundtrip(codec, np.full((100, 8), 1, dt))
        once = np.zeros(3000, dt)
        once[1234] = 9
        check_roundtrip(codec, once)
        info = np.iinfo(dt)
        check_roundtrip(codec, np.array([info.max, info.max - 1, info.max] * 50, dt))
        if info.min < 0:
            check_roundtrip(codec, np.array([info.min, info.min + 5] * 40, dt))


def check_config_json(codec) -> None:
    """``get_config`` survives JSON; the rebuilt codec is equal and decodes the same bytes."""
    cfg = codec.get_config()
    _expect(isinstance(cfg, dict) and "id" in cfg, f"{codec!r}: config lacks 'id'")
    again = get_codec(json.loads(json.dumps(cfg)))
    _expect(again == codec and hash(again) == hash(codec), f"{codec!r}: JSON round trip differs")
    _expect(type(again).__name__ in repr(again), f"{codec!r}: repr does not name the class")
    x = np.arange(300, dtype=np.uint16) % 7
    _expect(bool(np.array_equal(again.decode(codec.encode(x)), x)),
            f"{codec!r}: a codec rebuilt from its config cannot decode its stream")


def check_rate(codec, array: np.ndarray) -> dict:
    """``rate`` splits exactly ``8 * len(stream)`` bits into symbol and side bits."""
    data = codec.encode(array)
    r = codec.rate(data)
    _expect(r["total_bits"] == 8 * len(data), f"{codec!r}: total_bits != 8 * len(stream)")
    _expect(r["symbol_bits"] + r["side_bits"] == r["total_bits"],
            f"{codec!r}: symbol + side bits != total bits")
    _expect(0 <= r["symbol_bits"] <= r["total_bits"], f"{codec!r}: symbol bits out of range")
    _expect(r["num_elements"] == array.size, f"{codec!r}: num_elements != array.size")
    return r


def _expect_corrupt(codec, data: bytes, what: str, max_seconds: float) -> None:
    t0 = time.perf_counter()
    try:
        codec.decode(data)
    except CorruptStreamError:
        pass
    else:
        raise AssertionError(f"{codec!r}: {what} decoded without CorruptStreamError")
    dt = time.perf_counter() - t0
    _expect(dt < max_seconds, f"{codec!r}: {what} took {dt:.2f} s to be refused")


def check_corruption(codec, array: np.ndarray | None = None, changes=(0x01, 0x80, 0xFF),
                     max_seconds: float = 1.0) -> int:
    """Every single-byte change (``byte ^ c`` for each ``c`` in ``changes``) and every
    truncation of the stream of ``array`` raises :class:`CorruptStreamError` within
    ``max_seconds``; returns the number of damaged streams tried."""
    if array is None:
        array = (np.arange(120, dtype=np.uint8) * 7 % 11).reshape(12, 10)
    data = codec.encode(array)
    tried = 0
    for i in range(len(data)):
        for c in changes:
            damaged = bytearray(data)
            damaged[i] ^= c
            _expect_corrupt(codec, bytes(damaged), f"byte {i} ^ {c:#x}", max_seconds)
            tried += 1
    for n in range(len(data)):
        _expect_corrupt(codec, data[:n], f"truncation to {n} bytes", max_seconds)
        tried += 1
    _expect_corrupt(codec, data + b"\0", "one appended byte", max_seconds)
    return tried + 1


def check_damage_past_crc(codec, array: np.ndarray | None = None, step: int = 1,
                          max_seconds: float = 1.0) -> int:
    """Damage bytes of a kvinfo-container stream and recompute the trailing CRC-32, so
    only the codec's own validation and the decoded-symbol checksum stand guard: decode
    must raise :class:`CorruptStreamError` or return exactly the original array (never
    other data, never crash or hang). Returns the number of streams tried."""
    if array is None:
        array = (np.arange(600, dtype=np.uint16) * 7 % 13).reshape(60, 10)
    data = codec.encode(array)
    tried = 0
    for i in range(24, len(data) - 4, step):
        for c in (0x01, 0x40, 0xFF):
            damaged = bytearray(data)
            damaged[i] ^= c
            struct.pack_into("<I", damaged, len(damaged) - 4,
                             zlib.crc32(damaged[:-4]) & 0xFFFFFFFF)
            t0 = time.perf_counter()
            try:
                out = codec.decode(bytes(damaged))
            except CorruptStreamError:
                pass
            else:
                _expect(out.dtype == array.dtype and out.shape == array.shape
                        and bool(np.array_equal(out, array)),
                        f"{codec!r}: byte {i} ^ {c:#x} decoded to different data")
            dt = time.perf_counter() - t0
            _expect(dt < max_seconds, f"{codec!r}: byte {i} ^ {c:#x} took {dt:.2f} s")
            tried += 1
    return tried


def check_decodes_like(codec, peer, arrays) -> None:
    """``codec`` and ``peer`` decode every array to the same symbols (and to the input)."""
    for x in arrays:
        a = codec.decode(codec.encode(x))
        b = peer.decode(peer.encode(x))
        _expect(bool(np.array_equal(a, b)) and bool(np.array_equal(a, x)),
                f"{codec!r} and {peer!r} disagree on an array of shape {x.shape}")


def check_lossless_codec(codec, corruption: bool = True) -> None:
    """Run every check above on ``codec``."""
    check_dtypes_and_shapes(codec)
    check_alphabets(codec)
    check_degenerate_inputs(codec)
    check_config_json(codec)
    check_rate(codec, (np.arange(1000) % 13).astype(np.uint8))
    if corruption:
        check_corruption(codec)


# ---------------------------------------------------------------------------------------
# the lossy contract
# ---------------------------------------------------------------------------------------
def kv_like(shape=(2, 40, 16), dtype=np.float32, seed: int = 0) -> np.ndarray:
    """Gaussian data shaped ``(..., tokens, head_dim)`` with per-channel scales from 0.2 to
    3 and one channel offset by 4 (as keys have)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * rng.uniform(0.2, 3.0, size=shape[-1])
    x[..., 1 % shape[-1]] += 4.0
    return x.astype(dtype)


def check_lossy_roundtrip(codec, array: np.ndarray, *, max_abs_error=None,
                          max_relative_mse: float | None = None):
    """Encode then decode ``array``; the reconstruction has its shape and dtype, is finite,
    and is within the stated distortion. Returns ``(stream, reconstruction)``.

    ``max_abs_error`` (a number, or an array broadcastable to ``array``) and
    ``max_relative_mse`` (MSE / mean square of ``array``) are the test's tolerance; when
    neither is given, the codec must state its bound (``codec.max_abs_error(array)``).
    """
    if max_abs_error is None and max_relative_mse is None:
        bound = getattr(codec, "max_abs_error", None)
        _expect(callable(bound), f"{codec!r}: states no distortion bound (max_abs_error) and "
                                 f"the test gave no tolerance")
        max_abs_error = bound(array)
    data = codec.encode(array)
    _expect(isinstance(data, bytes), f"{codec!r}: encode must return bytes, got {type(data)}")
    out = codec.decode(data)
    what = f"{codec!r} on {np.dtype(array.dtype)} {array.shape}"
    _expect(isinstance(out, np.ndarray), f"{what}: decode must return an ndarray")
    _expect(out.dtype == array.dtype, f"{what}: came back as dtype {out.dtype}")
    _expect(out.shape == array.shape, f"{what}: came back as shape {out.shape}")
    x = array.astype(np.float64)
    y = out.astype(np.float64)
    _expect(bool(np.all(np.isfinite(y))), f"{what}: the reconstruction is not finite")
    err = np.abs(x - y)
    if max_abs_error is not None:
        limit = np.broadcast_to(np.asarray(max_abs_error, np.float64), err.shape)
        over = err > limit
        if over.any():
            worst = int(np.argmax(np.where(over, err - limit, -np.inf)))
            raise AssertionError(
                f"{what}: {int(over.sum())} elements exceed the stated max_abs_error (worst "
                f"{float(err.flat[worst]):.4g} > {float(limit.flat[worst]):.4g})"
            )
    if max_relative_mse is not None:
        power = float(np.mean(x * x))
        rel = float(np.mean(err * err)) / power if power > 0 else float(np.mean(err * err))
        _expect(rel <= max_relative_mse,
                f"{what}: relative MSE {rel:.4g} > the tolerance {max_relative_mse:.4g}")
    return data, out


def check_lossy_config_json(codec, array: np.ndarray | None = None) -> None:
    """``get_config`` survives JSON; the rebuilt codec is equal (hash, repr too) and decodes
    the original codec's stream to the same bits."""
    if array is None:
        array = kv_like()
    cfg = codec.get_config()
    _expect(isinstance(cfg, dict) and "id" in cfg, f"{codec!r}: config lacks 'id'")
    again = get_codec(json.loads(json.dumps(cfg)))
    _expect(again == codec and hash(again) == hash(codec), f"{codec!r}: JSON round trip differs")
    _expect(again.get_config() == cfg, f"{codec!r}: the rebuilt codec's config differs")
    _expect(type(again).__name__ in repr(again), f"{codec!r}: repr does not name the class")
    data = codec.encode(array)
    a, b = codec.decode(data), again.decode(data)
    _expect(a.dtype == b.dtype and bool(np.array_equal(a.view(np.uint8), b.view(np.uint8))),
            f"{codec!r}: a codec rebuilt from its config decodes its stream differently")
    _expect(again.encode(array) == data, f"{codec!r}: the rebuilt codec encodes differently")


def check_lossy_codec(codec, *, max_abs_error=None, max_relative_mse: float | None = None,
                      dtypes=LOSSY_DTYPES, shapes=LOSSY_SHAPES, seed: int = 0) -> None:
    """The lossy contract on KV-like data of every dtype and shape: round trip within the
    stated distortion (the codec's own bound, or the tolerance given here), config through
    JSON, and rate accounting equal to the stream length."""
    _expect(getattr(codec, "lossy", True), f"{codec!r}: not a lossy codec (codec.lossy)")
    for i, dt in enumerate(dtypes):
        for j, shape in enumerate(shapes):
            x = kv_like(shape, dt, seed + 100 * i + j)
            check_lossy_roundtrip(codec, x, max_abs_error=max_abs_error,
                                  max_relative_mse=max_relative_mse)
            check_rate(codec, x)
    check_lossy_config_json(codec, kv_like(shapes[0], dtypes[0], seed))
