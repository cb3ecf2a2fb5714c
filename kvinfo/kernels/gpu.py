"""GPU decoding front-end: plain arrays in, device arrays out.

This module is a leaf: it imports no other kvinfo subpackage and knows no stream format.
A GPU-capable codec parses and validates its own stream (with the parser its CPU decoder
uses) and hands these functions the arrays the kernels need: words, per-chunk word
counts, lane states, frequency tables or code lengths, shapes, and for the fused path a
:class:`Dequant` of zero points and steps. Codecs expose it as
``codec.decode(data, device="cuda")`` and, to keep compressed KV on the GPU and decode it
later, ``codec.prepare_cuda(data)``, which returns a :class:`PreparedStream`.

This module never imports ``numba.cuda`` at import time; :func:`cuda_available` and the
prepare functions do, on first use. Without a usable GPU (and without Numba's CUDA
simulator, ``NUMBA_ENABLE_CUDASIM=1``) they raise
:class:`~kvinfo.errors.CudaUnavailableError`; the CPU decoders are unaffected.

Decoding is two steps:

* :func:`prepare_rans` / :func:`prepare_huffman` take host arrays that the caller has
  validated completely (every offset a kernel will follow), build the device tables and
  upload what the kernels need; nothing reaches a kernel before these checks pass;
* :meth:`PreparedStream.decode` launches the kernels and returns a device array
  (``__cuda_array_interface__``; torch and CuPy take it without a copy), checking each
  chunk's end-of-chunk status.

Symbols come back in their dtype and shape; with a :class:`Dequant` they are decoded and
dequantized in one pass (float16 and float32 as such, bfloat16 as its uint16 bit
patterns: ``torch.as_tensor(out, device="cuda").view(torch.bfloat16)``).

Examples
--------
>>> import numpy as np
>>> from kvinfo.codecs import get_codec
>>> codec = get_codec({"id": "rans"})
>>> data = codec.encode(np.arange(1000, dtype=np.uint8) % 7)
>>> if cuda_available():  # doctest: +SKIP
...     out = codec.prepare_cuda(data).decode()  # a device array
...     bool((out.copy_to_host() == codec.decode(data)).all())
True

Notes
-----
The symbols CRC-32 that the CPU decoder checks after decoding would cost a pass over
the output on the host; on the device the per-chunk status (every chunk consumed exactly
its words and every lane ended in the encoder's initial state; every Huffman sub-block
ended where the next begins) plays that role. ``decode(..., verify_crc=True)`` copies
the symbols back and runs the ``verify`` callable the codec passed (its CRC check).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import CodecConfigError, CorruptStreamError, CudaUnavailableError

__all__ = [
    "cuda_available",
    "require_cuda",
    "Dequant",
    "prepare_rans",
    "prepare_stored",
    "prepare_huffman",
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
    ``kind`` ("rans", "rans-stored" for a stream with raw-stored channels, "huffman" or
    "fill").
    """

    def __init__(self, kernels, kind, shape, out_dtype, result_dtype, launch, verify=None):
        self._k = kernels
        self.kind = kind
        self.shape = tuple(shape)
        self._kernel_dtype = np.dtype(out_dtype)
        self.result_dtype = result_dtype
        # float16 is written as bit patterns and handed back as float16
        self.dtype = np.dtype(np.float16) if result_dtype == "float16" else self._kernel_dtype
        self.num_elements = int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1
        self._launch = launch  # (kernel, grid, block, args-before-out, args-after-out, status)
        self._verify = verify  # verify(host_symbols): the codec's CRC check
        self.compressed_bytes = 0
        #: a stream decoded first, its device array the kernel's first argument
        self._stage = None

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
            if self._stage is not None:
                pre = (self._stage.decode(check=check).reshape(self._stage.num_elements),
                       *pre)
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
        if verify_crc and self._verify is not None:
            self._verify(flat.copy_to_host().reshape(self.shape))
        return result


def _grid(n_items: int, per_block: int) -> int:
    return max(1, -(-n_items // per_block))


@dataclass(frozen=True)
class Dequant:
    """The fused path's dequantization ``zero + q * step``, as plain arrays and sizes.

    The output has shape ``(slabs, tokens, head_dim)`` (C order); its groups run along
    the tokens (``per_token=False``: a zero point and step per channel and group of
    ``group_size`` tokens) or along the channels (``per_token=True``: per token and group
    of ``group_size`` channels).

    Parameters
    ----------
    zero, step : 1-D float arrays
        Zero points and steps, ``(slabs, num_groups, other axis)`` flattened in C order
        (float16 or float32 values; converted to float32 exactly).
    tokens, head_dim : int
        The last two dimensions of the output.
    group_size : int
        Elements per group along the reduced axis (the whole axis for one group).
    num_groups : int
        Groups along the reduced axis.
    per_token : bool
        Groups along the channels (True) or along the tokens (False).
    out_dtype : {"float16", "bfloat16", "float32", "float64"}
        The reconstruction's dtype (computed in float64, rounded once).
    """

    zero: np.ndarray
    step: np.ndarray
    tokens: int
    head_dim: int
    group_size: int
    num_groups: int
    per_token: bool
    out_dtype: str

    def mode(self) -> int:
        if self.out_dtype not in _DTYPE_MODES:
            raise CodecConfigError(
                f"dequant out_dtype must be one of {sorted(_DTYPE_MODES)}, found "
                f"{self.out_dtype!r}"
            )
        return _DTYPE_MODES[self.out_dtype]

    def kernel_dtype(self) -> np.dtype:
        """float16 and bfloat16 are written as uint16 bit patterns."""
        return np.dtype(np.uint16) if self.mode() in (1, 2) else np.dtype(self.out_dtype)

    def host_arrays(self):
        """``(zero f32, step f32, colterm i64[head_dim], params i64[5])`` for the kernels."""
        t, d = max(self.tokens, 1), max(self.head_dim, 1)
        g = max(self.group_size, 1)
        zero = np.ascontiguousarray(self.zero, np.float32).reshape(-1)
        step = np.ascontiguousarray(self.step, np.float32).reshape(-1)
        if zero.size == 0:
            zero = np.zeros(1, np.float32)
            step = np.zeros(1, np.float32)
        di = np.arange(d, dtype=np.int64)
        colterm = (di // g) * self.tokens if self.per_token else di
        params = np.array([d, t, g, self.num_groups, int(self.per_token)], np.int64)
        return zero, step, colterm, params


def _dq_inputs(cuda, dq: Dequant | None):
    """Device side-information arrays for the fused path (or 1-element dummies)."""
    if dq is None:
        return (cuda.to_device(np.zeros(1, np.float32)), cuda.to_device(np.zeros(1, np.float32)),
                cuda.to_device(np.zeros(1, np.int64)), cuda.to_device(np.ones(5, np.int64)))
    return tuple(cuda.to_device(a) for a in dq.host_arrays())


def _output(shape, dtype, dequant):
    """``(mode, kernel dtype, result dtype name)`` of a decode."""
    if dequant is None:
        dt = np.dtype(dtype)
        return 0, dt, dt.name
    return dequant.mode(), dequant.kernel_dtype(), dequant.out_dtype


def _chunk_offsets(num_words):
    nw = np.asarray(num_words).astype(np.int64)
    off = np.zeros(nw.shape[0], np.int64)
    np.cumsum(nw[:-1], out=off[1:])
    return nw, off


def prepare_rans(words, num_words, states, frequencies, *, precision_bits: int,
                 chunk_size: int, min_symbol: int, period: int, shape, dtype,
                 dequant: Dequant | None = None, verify=None) -> PreparedStream:
    """Upload a validated interleaved-rANS stream for the rANS kernels.

    Parameters
    ----------
    words : uint16 array
        The concatenated word streams of all chunks.
    num_words : array (num_chunks,)
        Words per chunk (their sum is ``len(words)``).
    states : uint32 array (num_chunks, num_lanes)
        The final encoder states of each chunk's lanes (each >= 2**16); ``num_lanes`` is
        1..32 (element ``i`` of a chunk belongs to lane ``i % num_lanes``).
    frequencies : int array (num_tables, alphabet_size) or None
        Quantized frequencies (rows sum to ``2**precision_bits``); None for an empty array.
    precision_bits, chunk_size, min_symbol, period : int
        As in the stream (``num_tables`` is 1 or ``period``).
    shape : tuple of int
        The decoded array's shape.
    dtype : numpy dtype
        The symbols' dtype (plain decode).
    dequant : Dequant, optional
        Decode and dequantize in one pass.
    verify : callable, optional
        ``verify(host_symbols)`` for ``decode(verify_crc=True)`` (the codec's CRC check).

    The caller has checked every array against the others (counts, offsets, states,
    table sums); the kernels stay memory safe regardless and report a bad chunk.
    """
    K = require_cuda()
    cuda = K.cuda
    mode, out_dtype, result_dtype = _output(shape, dtype, dequant)
    prep = PreparedStream(K, "rans", shape, out_dtype, result_dtype, None, verify)
    if prep.num_elements == 0:
        return prep
    freq = np.asarray(frequencies)
    num_tables, alphabet = freq.shape
    shared = num_tables == 1 and (1 << precision_bits) <= K.CONFIG.shared_table_slots
    wide = alphabet > 256 or not shared
    tab, sym = rans_device_tables(freq, precision_bits, shared)
    nw, off = _chunk_offsets(num_words)
    nchunks = nw.shape[0]
    words = np.asarray(words)
    padded = np.zeros(words.shape[0] + 1, np.uint16)
    padded[: words.shape[0]] = words
    status = cuda.device_array(nchunks, np.int32)
    zero, step, colterm, dqp = _dq_inputs(cuda, dequant)
    kernel = K.rans_kernel(shared, wide, mode)
    W = K.CONFIG.rans_warps_per_block
    pre = (cuda.to_device(padded), cuda.to_device(off), cuda.to_device(nw),
           cuda.to_device(np.ascontiguousarray(states, np.uint32)), cuda.to_device(tab),
           cuda.to_device(sym if wide else sym[:, :1].copy()), np.int64(precision_bits),
           np.int64(chunk_size), np.int64(prep.num_elements), np.int64(min_symbol),
           np.int64(period), np.int64(num_tables), status)
    prep._launch = (kernel, _grid(nchunks, W), 32 * W, pre, (zero, step, colterm, dqp), status)
    prep.compressed_bytes = 2 * int(words.shape[0])
    return prep


def prepare_stored(coded: PreparedStream | None, stored_mask, stored, *, shape, dtype,
                   dequant: Dequant | None = None, verify=None) -> PreparedStream:
    """A stream some of whose channels are stored raw (``rans`` format version 3).

    Parameters
    ----------
    coded : PreparedStream or None
        The coded channels as their own ``(rows, coded channels)`` array of symbols (made
        by :func:`prepare_rans` without ``dequant``); None when every channel is stored.
    stored_mask : bool array (period,)
        Which channels (the last axis of ``shape``) are stored.
    stored : array (rows, stored channels)
        The stored symbols, of ``dtype``.
    shape, dtype, dequant, verify
        As for :func:`prepare_rans`; ``dequant`` applies to every channel.

    :meth:`PreparedStream.decode` decodes ``coded`` into a scratch array, then one kernel
    writes every output element from it or from ``stored`` (dequantized on the fused path).
    """
    K = require_cuda()
    cuda = K.cuda
    mode, out_dtype, result_dtype = _output(shape, dtype, dequant)
    prep = PreparedStream(K, "rans-stored", shape, out_dtype, result_dtype, None, verify)
    if prep.num_elements == 0:
        return prep
    mask = np.asarray(stored_mask, bool)
    period = mask.shape[0]
    st = np.ascontiguousarray(stored, dtype=np.dtype(dtype))
    k = int(mask.sum())
    if st.ndim != 2 or st.shape[1] != k or st.shape[0] * period != prep.num_elements or (
            (coded is None) != (k == period)) or (
            coded is not None and coded.num_elements != st.shape[0] * (period - k)):
        raise CodecConfigError(
            f"stored channels: {k} of {period} channels, stored array {st.shape}, coded "
            f"{None if coded is None else coded.num_elements} elements, do not make {shape}"
        )
    colmap = np.where(mask, -np.cumsum(mask), np.cumsum(~mask) - 1).astype(np.int64)
    zero, step, colterm, dqp = _dq_inputs(cuda, dequant)
    tpb = K.CONFIG.fill_threads_per_block
    pre = ((cuda.to_device(st.reshape(-1)), cuda.to_device(colmap), np.int64(period),
            np.int64(period - k), np.int64(max(k, 1)), np.int64(prep.num_elements)))
    if coded is None:
        pre = (cuda.to_device(np.zeros(1, st.dtype)), *pre)
    prep._stage = coded
    prep._launch = (K.merge_kernel(mode), _grid(prep.num_elements, tpb), tpb, pre,
                    (zero, step, colterm, dqp), None)
    prep.compressed_bytes = (0 if coded is None else coded.compressed_bytes) + st.nbytes
    return prep


def prepare_huffman(words, num_words, sub_offsets, lengths, *, table_bits: int,
                    chunk_size: int, sub_block_size: int, min_symbol: int, shape, dtype,
                    dequant: Dequant | None = None, verify=None,
                    period: int = 1) -> PreparedStream:
    """Upload a validated chunked canonical-Huffman stream for the Huffman kernels.

    Parameters
    ----------
    words : uint32 array
        The concatenated payload words of all chunks.
    num_words : array (num_chunks,)
        Words per chunk.
    sub_offsets : uint32 array (num_sub_blocks,)
        Each sub-block's starting bit offset within its chunk.
    lengths : int array (alphabet_size,) or (period, alphabet_size), or None
        Code lengths (0 = unused; each row satisfies Kraft); one row per channel (element
        ``j`` uses row ``j % period``) for per-channel codes; None for an empty array.
    table_bits : int
        The longest code length (0: a single symbol and no payload).
    chunk_size, sub_block_size, min_symbol : int
        As in the stream.
    shape, dtype, dequant, verify
        As for :func:`prepare_rans`.
    """
    from . import cpu

    K = require_cuda()
    cuda = K.cuda
    mode, out_dtype, result_dtype = _output(shape, dtype, dequant)
    n = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    if n == 0:
        return PreparedStream(K, "huffman", shape, out_dtype, result_dtype, None, verify)
    zero, step, colterm, dqp = _dq_inputs(cuda, dequant)
    if table_bits == 0:  # a single symbol: no payload
        tpb = K.CONFIG.fill_threads_per_block
        launch = (K.fill_kernel(mode), _grid(n, tpb), tpb, (np.int64(min_symbol),
                  np.int64(n)), (zero, step, colterm, dqp), None)
        return PreparedStream(K, "fill", shape, out_dtype, result_dtype, launch, verify)
    tb = int(table_bits)
    rows = np.atleast_2d(np.asarray(lengths, np.int64))
    table = np.concatenate([cpu.huffman_decode_table(r, tb) for r in rows])
    shared = rows.shape[0] == 1 and (1 << tb) <= K.CONFIG.shared_table_slots
    nw, off = _chunk_offsets(num_words)
    words = np.asarray(words)
    padded = np.zeros(words.shape[0] + 2, np.uint32)
    padded[: words.shape[0]] = words
    sub = np.ascontiguousarray(sub_offsets, np.uint32)
    nsub = sub.shape[0]
    status = cuda.device_array(nsub, np.int32)
    tpb = K.CONFIG.huffman_threads_per_block
    pre = (cuda.to_device(padded), cuda.to_device(off), cuda.to_device(nw),
           cuda.to_device(sub), cuda.to_device(table),
           np.int64(tb), np.int64(chunk_size), np.int64(sub_block_size),
           np.int64(n), np.int64(min_symbol), np.int64(period), np.int64(rows.shape[0]),
           status)
    launch = (K.huffman_kernel(shared, mode), _grid(nsub, tpb), tpb, pre,
              (zero, step, colterm, dqp), status)
    prep = PreparedStream(K, "huffman", shape, out_dtype, result_dtype, launch, verify)
    prep.compressed_bytes = 4 * int(words.shape[0])
    return prep


def prepare(codec, data) -> PreparedStream:
    """Deprecated (one release): use ``codec.prepare_cuda(data)``; the codec parses its
    stream and calls :func:`prepare_rans` / :func:`prepare_huffman`."""
    warnings.warn("kvinfo.kernels.gpu.prepare(codec, data) is deprecated; use "
                  "codec.prepare_cuda(data)", DeprecationWarning, stacklevel=2)
    return _codec_prepare(codec, data)


def _codec_prepare(codec, data) -> PreparedStream:
    fn = getattr(codec, "prepare_cuda", None)
    if fn is None:
        raise CodecConfigError(f"no CUDA decoder for {type(codec).__name__}; decode with "
                               f"device='cpu'")
    return fn(data)


def decode(codec, data, out=None, verify_crc: bool = False):
    """Deprecated (one release): use ``codec.decode(data, device="cuda")`` or
    ``codec.prepare_cuda(data).decode(out=..., verify_crc=...)``."""
    warnings.warn("kvinfo.kernels.gpu.decode(codec, data) is deprecated; use "
                  "codec.decode(data, device='cuda')", DeprecationWarning, stacklevel=2)
    return _codec_prepare(codec, data).decode(out=out, verify_crc=verify_crc)


def warmup() -> None:
    """Compile the common kernel variants on tiny inputs (so no timing includes a compile):
    rANS and Huffman symbols (uint8, shared-memory tables) and the fused rANS-to-float16
    path. The streams are made with the CPU encoders of :mod:`kvinfo.kernels.cpu`."""
    from . import cpu

    rng = np.random.default_rng(0)
    x = rng.integers(0, 16, size=64 * 64, dtype=np.uint8)
    freq = np.full((1, 16), 256, np.int64)  # 16 equiprobable symbols, 12-bit precision
    words, num_words, states = cpu.rans_encode(x, 0, freq, 12, 1024)
    shape = (2, 64, 32)
    args = dict(precision_bits=12, chunk_size=1024, min_symbol=0, period=1)
    prepare_rans(words, num_words, states, freq, shape=shape, dtype=x.dtype, **args).decode()
    zero = rng.standard_normal(2 * 2 * 32).astype(np.float16)
    step = rng.uniform(0.01, 0.1, 2 * 2 * 32).astype(np.float16)
    dq = Dequant(zero, step, tokens=64, head_dim=32, group_size=32, num_groups=2,
                 per_token=False, out_dtype="float16")
    prepare_rans(words, num_words, states, freq, shape=shape, dtype=x.dtype, dequant=dq,
                 **args).decode()
    lengths = np.full(16, 4, np.int64)
    words, num_words, sub = cpu.huffman_encode(x.astype(np.int32), cpu.canonical_codes(lengths),
                                               lengths, 1024, 256)
    prepare_huffman(words, num_words, sub, lengths, table_bits=4, chunk_size=1024,
                    sub_block_size=256, min_symbol=0, shape=shape, dtype=x.dtype).decode()
