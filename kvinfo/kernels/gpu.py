"""GPU decoding front-end: validate on the host, decode on the device.

This module never imports ``numba.cuda`` at import time; :func:`cuda_available` and the
decode functions do, on first use. Without a usable GPU (and without Numba's CUDA
simulator, ``NUMBA_ENABLE_CUDASIM=1``) they raise
:class:`~kvinfo.errors.CudaUnavailableError`; the CPU decoders are unaffected.

Decoding is two steps, so that a serving engine can keep compressed KV on the GPU:

* :func:`prepare` parses and validates a stream completely on the host (container CRC,
  parameters, chunk index, tables, every offset a kernel will follow) and uploads what
  the kernels need; nothing reaches a kernel before these checks pass;
* :meth:`PreparedStream.decode` launches the kernels and returns a device array
  (``__cuda_array_interface__``; torch and CuPy take it without a copy), checking each
  chunk's end-of-chunk status.

:func:`decode` does both. Supported codecs: ``rans`` and ``huffman`` (symbols, in the
stream's dtype and shape) and ``uniform`` with a ``rans`` or ``huffman`` coder, decoded
and dequantized in one pass (float16 and float32 KV as such, bfloat16 as its uint16 bit
patterns: ``torch.as_tensor(out, device="cuda").view(torch.bfloat16)``).

Examples
--------
>>> import numpy as np
>>> from kvinfo.codecs import get_codec
>>> from kvinfo.kernels import gpu
>>> codec = get_codec({"id": "rans"})
>>> data = codec.encode(np.arange(1000, dtype=np.uint8) % 7)
>>> if gpu.cuda_available():  # doctest: +SKIP
...     out = gpu.decode(codec, data)  # a device array
...     bool((out.copy_to_host() == codec.decode(data)).all())
True

Notes
-----
The symbols CRC-32 that the CPU decoder checks after decoding would cost a pass over
the output on the host; on the device the per-chunk status (every chunk consumed exactly
its words and every lane ended in the encoder's initial state; every Huffman sub-block
ended where the next begins) plays that role. ``decode(..., verify_crc=True)`` copies
the symbols back and checks the CRC as well.
"""

from __future__ import annotations

import numpy as np

from ..errors import CodecConfigError, CorruptStreamError, CudaUnavailableError

__all__ = [
    "cuda_available",
    "require_cuda",
    "prepare",
    "decode",
    "PreparedStream",
    "rans_device_tables",
    "warmup",
]

_DTYPE_MODES = {"float16": 1, "bfloat16": 2, "float32": 3, "float64": 4}


def _import_cuda():
    if not hasattr(np, "row_stack"):  # numba-cuda 0.30 with numpy >= 2.5
        np.row_stack = np.vstack
    from numba import cuda

    return cuda


def cuda_available() -> bool:
    """True if Numba can reach a CUDA GPU, or its CUDA simulator is enabled."""
    try:
        cuda = _import_cuda()
        return bool(cuda.is_available())
    except Exception:  # noqa: BLE001 - any failure to load the driver means "no"
        return False


def require_cuda():
    """Import and return :mod:`kvinfo.kernels.cuda`, or raise CudaUnavailableError."""
    if not cuda_available():
        raise CudaUnavailableError(
            "device='cuda' needs a CUDA GPU that numba can use (numba.cuda.is_available() "
            "is False here) or NUMBA_ENABLE_CUDASIM=1; decode with device='cpu' instead"
        )
    from . import cuda as kernels

    return kernels


# ---------------------------------------------------------------------------------------
# host-side tables
# ---------------------------------------------------------------------------------------
def rans_device_tables(frequencies: np.ndarray, precision_bits: int, shared: bool):
    """Slot tables for the rANS kernels: ``(tab uint32, sym uint16)``, both
    ``(num_tables, 2**precision_bits)``.

    Shared layout (precision <= 12): ``(freq - 1) | (slot - cum) << 12 | (sym & 255) << 24``;
    global layout: ``(freq - 1) | (slot - cum) << 16``. ``sym`` holds the symbol index.
    """
    f = np.asarray(frequencies, dtype=np.int64)
    m = 1 << precision_bits
    slots = np.arange(m, dtype=np.int64)
    tab = np.empty((f.shape[0], m), np.uint32)
    sym = np.empty((f.shape[0], m), np.uint16)
    idx = np.arange(f.shape[1], dtype=np.int64)
    for t in range(f.shape[0]):
        s = np.repeat(idx, f[t])
        cum = np.concatenate(([0], np.cumsum(f[t])[:-1]))
        bias = slots - cum[s]
        if shared:
            tab[t] = (f[t][s] - 1) | (bias << 12) | ((s & 0xFF) << 24)
        else:
            tab[t] = (f[t][s] - 1) | (bias << 16)
        sym[t] = s
    return tab, sym


# ---------------------------------------------------------------------------------------
# prepared streams
# ---------------------------------------------------------------------------------------
class PreparedStream:
    """A validated stream whose decode inputs live on the device; see :func:`prepare`.

    Attributes: ``shape``, ``dtype`` (numpy dtype of the returned array; bfloat16 is
    returned as uint16 bit patterns and ``result_dtype`` says "bfloat16"),
    ``num_elements``, ``compressed_bytes`` (the payload bytes the kernels read) and
    ``kind`` ("rans", "huffman" or "fill").
    """

    def __init__(self, kernels, kind, shape, out_dtype, result_dtype, launch, crc=None):
        self._k = kernels
        self.kind = kind
        self.shape = tuple(shape)
        self._kernel_dtype = np.dtype(out_dtype)
        self.result_dtype = result_dtype
        # float16 is written as bit patterns and handed back as float16
        self.dtype = np.dtype(np.float16) if result_dtype == "float16" else self._kernel_dtype
        self.num_elements = int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1
        self._launch = launch  # (kernel, grid, block, args-before-out, args-after-out, status)
        self._crc = crc
        self.compressed_bytes = 0

    def empty(self):
        """A fresh (uninitialised) flat device array of ``num_elements`` of ``dtype``."""
        cuda = self._k.cuda
        return cuda.device_array(self.num_elements, dtype=self.dtype)

    def decode(self, out=None, check: bool = True, verify_crc: bool = False):
        """Launch the decode; returns the device array (shaped like the original).

        ``out`` may be a 1-D or shaped device array of ``num_elements`` elements of
        ``dtype`` (contiguous) to decode into. ``check=False`` skips reading back the
        per-chunk status (for timing loops; the result is then unchecked).
        """
        if out is None:
            flat = self.empty()
        else:
            cuda = self._k.cuda
            if not self._k.SIMULATOR:
                if not cuda.is_cuda_array(out):
                    raise CodecConfigError(
                        f"out: expected a device array (__cuda_array_interface__), found "
                        f"{type(out).__name__}"
                    )
                out = cuda.as_cuda_array(out)
            if np.dtype(out.dtype) != self.dtype or int(out.size) != self.num_elements:
                raise CodecConfigError(
                    f"out: expected {self.num_elements} elements of {self.dtype}, found "
                    f"{int(out.size)} of {np.dtype(out.dtype)}"
                )
            if not out.is_c_contiguous():
                raise CodecConfigError("out: expected a C-contiguous device array")
            flat = out.reshape(self.num_elements) if out.ndim != 1 else out
        if self.num_elements and self._launch is not None:
            kernel, grid, block, pre, post, status = self._launch
            target = flat if flat.dtype == self._kernel_dtype else flat.view(self._kernel_dtype)
            kernel[grid, block](*pre, target, *post)
            if check and status is not None:
                st = status.copy_to_host()
                bad = np.flatnonzero(st)
                if bad.size:
                    unit = "sub-block" if self.kind == "huffman" else "chunk"
                    raise CorruptStreamError(
                        f"corrupt kvinfo stream: {self.kind} {unit} {int(bad[0])} failed its "
                        f"end check on the GPU (code {int(st[bad[0]])})"
                    )
        result = flat.reshape(self.shape) if self.shape != (self.num_elements,) else flat
        if verify_crc and self._crc is not None:
            self._crc(flat.copy_to_host())
        return result


def _grid(n_items: int, per_block: int) -> int:
    return max(1, -(-n_items // per_block))


def _dq_inputs(cuda, dq):
    """Device side-information arrays for the fused path (or 1-element dummies)."""
    if dq is None:
        return (cuda.to_device(np.zeros(1, np.float32)), cuda.to_device(np.zeros(1, np.float32)),
                cuda.to_device(np.zeros(1, np.int64)), cuda.to_device(np.ones(5, np.int64)))
    zero, step, colterm, params = dq
    return (cuda.to_device(zero), cuda.to_device(step), cuda.to_device(colterm),
            cuda.to_device(params))


def _stream_common(c, shape, out_dtype, mode, max_symbol):
    """Checks and settings shared by every coder's preparation: the output shape and dtype,
    the symbol-CRC check (plain decode only), and the symbol range a fused path can use."""
    p = c.params
    shape = _check_shape(c, shape)
    out_dtype = np.dtype(c.dtype) if out_dtype is None else out_dtype
    crc = (lambda host: _check_crc(c, host.reshape(c.shape))) if mode == 0 else None
    if max_symbol is not None and c.num_symbols:
        lo, hi = p["min_symbol"], p["min_symbol"] + p["alphabet_size"] - 1
        if lo < 0 or hi > max_symbol:
            raise CorruptStreamError(
                f"corrupt kvinfo stream: coded symbols span [{lo}, {hi}], expected within "
                f"[0, {max_symbol}]"
            )
    return shape, out_dtype, crc


def _prepare_rans(K, codec, data, dq=None, mode=0, out_dtype=None, result_dtype=None,
                  shape=None, max_symbol=None):
    cuda = K.cuda
    c, tables, index, words = codec.parse(data)
    p = c.params
    n = c.num_symbols
    shape, out_dtype, crc = _stream_common(c, shape, out_dtype, mode, max_symbol)
    prep = PreparedStream(K, "rans", shape, out_dtype, result_dtype or out_dtype.name, None, crc)
    if n == 0:
        return prep
    prec = p["precision_bits"]
    num_tables = p["num_tables"]
    shared = num_tables == 1 and (1 << prec) <= K.CONFIG.shared_table_slots
    wide = p["alphabet_size"] > 256 or not shared
    tab, sym = rans_device_tables(tables.frequencies, prec, shared)
    nchunks = index.shape[0]
    nw = index["num_words"].astype(np.int64)
    off = np.zeros(nchunks, np.int64)
    np.cumsum(nw[:-1], out=off[1:])
    padded = np.zeros(words.shape[0] + 1, np.uint16)
    padded[: words.shape[0]] = words
    status = cuda.device_array(nchunks, np.int32)
    zero, step, colterm, dqp = _dq_inputs(cuda, dq)
    kernel = K.rans_kernel(shared, wide, mode)
    W = K.CONFIG.rans_warps_per_block
    pre = (cuda.to_device(padded), cuda.to_device(off), cuda.to_device(nw),
           cuda.to_device(np.ascontiguousarray(index["states"], np.uint32)), cuda.to_device(tab),
           cuda.to_device(sym if wide else sym[:, :1].copy()), np.int64(prec),
           np.int64(p["chunk_size"]), np.int64(n), np.int64(p["min_symbol"]),
           np.int64(p["period"]), np.int64(num_tables), status)
    prep._launch = (kernel, _grid(nchunks, W), 32 * W, pre, (zero, step, colterm, dqp), status)
    prep.compressed_bytes = 2 * int(words.shape[0])
    return prep


def _prepare_huffman(K, codec, data, dq=None, mode=0, out_dtype=None, result_dtype=None,
                     shape=None, max_symbol=None):
    from . import cpu

    cuda = K.cuda
    c, lengths, index, sub, words = codec.parse(data)
    p = c.params
    n = c.num_symbols
    shape, out_dtype, crc = _stream_common(c, shape, out_dtype, mode, max_symbol)
    result_dtype = result_dtype or out_dtype.name
    zero, step, colterm, dqp = _dq_inputs(cuda, dq)
    if n == 0:
        return PreparedStream(K, "huffman", shape, out_dtype, result_dtype, None, crc)
    if p["table_bits"] == 0:  # a single symbol: no payload
        tpb = K.CONFIG.fill_threads_per_block
        launch = (K.fill_kernel(mode), _grid(n, tpb), tpb, (np.int64(p["min_symbol"]),
                  np.int64(n)), (zero, step, colterm, dqp), None)
        return PreparedStream(K, "fill", shape, out_dtype, result_dtype, launch, crc)
    tb = p["table_bits"]
    table = cpu.huffman_decode_table(lengths, tb)
    shared = (1 << tb) <= K.CONFIG.shared_table_slots
    nchunks = index.shape[0]
    nw = index["num_words"].astype(np.int64)
    off = np.zeros(nchunks, np.int64)
    np.cumsum(nw[:-1], out=off[1:])
    padded = np.zeros(words.shape[0] + 2, np.uint32)
    padded[: words.shape[0]] = words
    nsub = sub.shape[0]
    status = cuda.device_array(nsub, np.int32)
    tpb = K.CONFIG.huffman_threads_per_block
    pre = (cuda.to_device(padded), cuda.to_device(off), cuda.to_device(nw),
           cuda.to_device(np.ascontiguousarray(sub, np.uint32)), cuda.to_device(table),
           np.int64(tb), np.int64(p["chunk_size"]), np.int64(p["sub_block_size"]),
           np.int64(n), np.int64(p["min_symbol"]), status)
    launch = (K.huffman_kernel(shared, mode), _grid(nsub, tpb), tpb, pre,
              (zero, step, colterm, dqp), status)
    prep = PreparedStream(K, "huffman", shape, out_dtype, result_dtype, launch, crc)
    prep.compressed_bytes = 4 * int(words.shape[0])
    return prep


def _check_shape(container, shape):
    if shape is None:
        return tuple(container.shape)
    if tuple(container.shape) != tuple(shape):
        raise CorruptStreamError(
            f"decoded symbols have shape {tuple(container.shape)}; the stream header says "
            f"{tuple(shape)}"
        )
    return tuple(shape)


def _check_crc(container, host_symbols):
    from ..codecs import _container as C

    C.check_symbols(container, host_symbols)


def _prepare_uniform(K, codec, data):
    """Parse a ``uniform`` stream the way :meth:`UniformCodec.decode` does, then prepare
    its coded section for the fused decode-and-dequantize kernels."""
    import struct

    from ..codecs.quant import _base as QB

    p = codec._parse(data)
    try:
        bits, axis_code, sd_code, group_size = struct.unpack("<BBBI", p.params)
    except struct.error:
        raise CorruptStreamError("bad uniform parameter block") from None
    if not 1 <= bits <= 8 or axis_code > 1 or sd_code not in (1, 3):
        raise CorruptStreamError("bad uniform parameter block")
    if len(p.shape) < 2 or len(p.sections) != 3 or p.sections[2].kind != QB.CODED:
        raise CorruptStreamError("bad uniform stream layout")
    dtype_name = QB.dtype_name(p.dtype)
    mode = _DTYPE_MODES[dtype_name]
    sd = QB.SIDE_DTYPES["float16" if sd_code == 1 else "float32"]
    t, d = p.shape[-2:]
    b = int(np.prod(p.shape[:-2], dtype=np.int64))
    length, other = (t, d) if axis_code == 0 else (d, t)
    g = length if not group_size else min(group_size, length)
    ng = -(-length // g) if length else 0
    zero = QB.side_array(p.sections[0], sd, b * ng * other).astype(np.float32)
    step = QB.side_array(p.sections[1], sd, b * ng * other).astype(np.float32)
    if zero.size == 0:
        zero = np.zeros(1, np.float32)
        step = np.zeros(1, np.float32)
    di = np.arange(max(d, 1), dtype=np.int64)
    colterm = di if axis_code == 0 else (di // max(g, 1)) * t
    dq = (zero, step, colterm, np.array([max(d, 1), max(t, 1), max(g, 1), ng, axis_code],
                                         np.int64))
    coder = codec.coder
    out_dtype = np.dtype(np.uint16) if mode in (1, 2) else np.dtype(p.dtype)
    prep_fn = {"rans": _prepare_rans, "huffman": _prepare_huffman}.get(coder.codec_id)
    if prep_fn is None:
        raise CodecConfigError(
            f"uniform: no CUDA decoder for coder {coder.codec_id!r}; expected 'rans' or "
            f"'huffman', or decode with device='cpu'"
        )
    return prep_fn(K, coder, p.sections[2].data, dq=dq, mode=mode, out_dtype=out_dtype,
                   result_dtype=dtype_name, shape=p.shape, max_symbol=(1 << bits) - 1)


_PREPARERS = {"rans": _prepare_rans, "huffman": _prepare_huffman, "uniform": _prepare_uniform}


def prepare(codec, data) -> PreparedStream:
    """Validate ``data`` (a stream of ``codec``) on the host and upload it to the device.

    Raises
    ------
    CudaUnavailableError
        No GPU and no simulator.
    CodecConfigError
        The codec has no CUDA decoder.
    CorruptStreamError
        The stream is damaged (checked before any kernel runs).
    """
    K = require_cuda()
    cid = getattr(codec, "codec_id", None)
    fn = _PREPARERS.get(cid)
    if fn is None:
        raise CodecConfigError(
            f"no CUDA decoder for codec {cid!r}; expected one of {sorted(_PREPARERS)}, or "
            f"decode with device='cpu'"
        )
    return fn(K, codec, data)


def decode(codec, data, out=None, verify_crc: bool = False):
    """Decode ``data`` on the GPU; returns a device array (see the module docstring)."""
    return prepare(codec, data).decode(out=out, verify_crc=verify_crc)


def warmup() -> None:
    """Compile the common kernel variants on tiny inputs (so no timing includes a compile)."""
    from ..codecs import get_codec

    rng = np.random.default_rng(0)
    x = rng.integers(0, 16, size=(64, 40), dtype=np.uint8)
    for cfg in ({"id": "rans", "chunk_size": 1024}, {"id": "huffman", "chunk_size": 1024,
                                                      "sub_block_size": 256}):
        codec = get_codec(cfg)
        decode(codec, codec.encode(x))
    f = rng.standard_normal((2, 64, 32)).astype(np.float16)
    codec = get_codec({"id": "uniform", "bits": 4, "group_size": 32,
                       "coder": {"id": "rans", "chunk_size": 1024}})
    decode(codec, codec.encode(f))
