"""Numba CUDA decode kernels for the ``rans`` and ``huffman`` streams, and their fusion with
the ``uniform`` quantizer's dequantization.

Do not import this module directly: :mod:`kvinfo.kernels.gpu` imports it behind an
availability check and does every validation first. The kernels trust their inputs as
far as memory safety allows: every word read is clamped into its array and every chunk
reports a status (0 = consumed exactly its words and ended in the encoder's initial
state), so a damaged stream that slipped past the host checks gives an error, never a
wild read.

Design (the layouts are those of ``docs/container-format.md``, unchanged):

* **rANS** -- one warp per chunk; lane ``l`` owns the rANS state of interleaved lane
  ``l`` (symbol ``j`` of a chunk belongs to lane ``j % K``, ``K = states.shape[1]``, 32
  for format version 1 and for large version-2 streams; the warp's lanes ``>= K`` idle
  at state ``2**16``). At each step every lane
  decodes one symbol from a slot table, then the lanes whose state fell below ``2**16``
  vote (``ballot_sync``); a lane's word is at the chunk's read pointer plus the
  popcount of the votes of the lanes before it, and the pointer advances by the
  popcount of all votes (the DietGPU design). With one table of precision <= 12 bits the
  table lives in shared memory as one ``uint32`` per slot (``freq - 1``, ``slot - cum``
  and, for alphabets of at most 256 symbols, the symbol); per-channel tables and higher
  precisions read the table from global memory (L1/L2-cached).
* **Huffman** -- one thread per sub-block, starting at the sub-block's stored bit offset,
  with a 64-bit bit buffer and one lookup per symbol in a ``2**table_bits`` table
  (shared memory when ``table_bits <= 12``); each thread checks that it ends exactly
  where the next sub-block starts (or, for a chunk's last, at its last word with zero
  padding).
* **fused dequantization** -- the same decode loops, but instead of the symbol ``q`` they
  write ``zero + q * step`` of its group, computed in float64 exactly as the CPU decoder
  does and rounded once (round to nearest even) to float16, bfloat16 (as uint16 bit
  patterns), float32 or float64.

Hot-loop state is ``uint32`` (Numba widens mixed ``uint64``/``int64`` arithmetic to
float64, so signed and unsigned values never meet there). Launch geometry comes from
:data:`CONFIG`. Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), which has no
warp vote, :func:`_ballot` is emulated with shared memory and block barriers, which is
exact as long as all threads of a block execute the same sequence of ballots (true for
these kernels: a block's warps loop in step, and finished threads leave the barrier).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

if not hasattr(np, "row_stack"):  # numba-cuda 0.30 uses np.row_stack, gone in numpy 2.5
    np.row_stack = np.vstack

import numba  # noqa: E402
from numba import cuda  # noqa: E402

__all__ = [
    "SIMULATOR",
    "CONFIG",
    "LaunchConfig",
    "MODE_SYMBOLS",
    "MODE_F16",
    "MODE_BF16",
    "MODE_F32",
    "MODE_F64",
    "rans_kernel",
    "huffman_kernel",
    "fill_kernel",
    "merge_kernel",
    "f64_to_f16_bits",
    "f64_to_bf16_bits",
]

#: True when Numba's CUDA simulator stands in for a GPU
SIMULATOR = "simulator" in getattr(cuda.jit, "__module__", "")


@dataclass(frozen=True)
class LaunchConfig:
    """Launch geometry of every kernel, in one place.

    ``rans_warps_per_block`` warps (one chunk each) share one shared-memory table;
    ``huffman_threads_per_block`` threads each decode one sub-block;
    ``shared_table_slots`` is the largest table (entries) kept in shared memory.
    """

    rans_warps_per_block: int
    huffman_threads_per_block: int
    fill_threads_per_block: int
    shared_table_slots: int = 4096


#: the launch geometry used by :mod:`kvinfo.kernels.gpu`; the simulator runs one Python
#: thread per CUDA thread, so it gets small blocks
CONFIG = (
    LaunchConfig(rans_warps_per_block=2, huffman_threads_per_block=32, fill_threads_per_block=32)
    if SIMULATOR
    else LaunchConfig(rans_warps_per_block=8, huffman_threads_per_block=128,
                      fill_threads_per_block=256)
)

MODE_SYMBOLS, MODE_F16, MODE_BF16, MODE_F32, MODE_F64 = 0, 1, 2, 3, 4

_U8 = np.uint32(0xFF)
_U12 = np.uint32(0xFFF)
_U16 = np.uint32(0xFFFF)
_ONE = np.uint32(1)
_S8 = np.uint32(8)
_S12 = np.uint32(12)
_S16 = np.uint32(16)
_S24 = np.uint32(24)
_L = np.uint32(1 << 16)
_FULL_MASK = 0xFFFFFFFF
_BF16_OVERFLOW = float(2**128)  # bfloat16 rounds to inf at and above this
_RING_WORDS = 256  # per-warp shared-memory ring of 16-bit stream words (a power of two)


# ---------------------------------------------------------------------------------------
# warp vote (real) or its shared-memory emulation (simulator)
# ---------------------------------------------------------------------------------------
if SIMULATOR:

    def _ballot(pred, scratch):
        """Simulator stand-in for ``ballot_sync``: every thread of the block must call it."""
        tid = cuda.threadIdx.x
        scratch[tid] = 1 if pred else 0
        cuda.syncthreads()
        base = tid - (tid & 31)
        m = 0
        for i in range(32):
            if scratch[base + i]:
                m |= 1 << i
        cuda.syncthreads()
        return np.uint32(m)

    def _syncwarp():
        """Simulator stand-in for ``__syncwarp``: a block barrier (every thread calls it
        at the same points of its warp's sequence, see the module docstring)."""
        cuda.syncthreads()

else:

    @cuda.jit(device=True)
    def _ballot(pred, scratch):
        return cuda.ballot_sync(_FULL_MASK, pred)

    @cuda.jit(device=True)
    def _syncwarp():
        cuda.syncwarp(_FULL_MASK)


# ---------------------------------------------------------------------------------------
# float64 -> float16 / bfloat16 bits, round to nearest even, in one rounding
# ---------------------------------------------------------------------------------------
if SIMULATOR:

    def _ldexp(v, e):
        return math.ldexp(v, int(e))

else:

    @cuda.jit(device=True)
    def _ldexp(v, e):
        return math.ldexp(v, np.int32(e))


@cuda.jit(device=True)
def _small_float_bits(v, mant_bits, min_exp, bias, inf_bits, nan_bits, overflow_at):
    sign = 0
    if v < 0.0 or (v == 0.0 and math.copysign(1.0, v) < 0.0):
        sign = 0x8000
        v = -v
    if v != v:
        return nan_bits
    if v == 0.0:
        return sign
    if v >= overflow_at:
        return sign | inf_bits
    m, e = math.frexp(v)  # v = m * 2**e, 0.5 <= m < 1
    ex = e - 1
    if ex < min_exp:
        ex = min_exp  # subnormal: quantum 2**(min_exp - mant_bits)
    q = _ldexp(v, mant_bits - ex)  # exact: a power-of-two scaling
    f = math.floor(q)
    d = q - f
    k = np.int64(f)
    if d > 0.5 or (d == 0.5 and (k & 1) == 1):
        k += 1
    bits = ((ex + bias) << mant_bits) + k - (1 << mant_bits)
    if bits >= inf_bits:
        bits = inf_bits
    return sign | bits


@cuda.jit(device=True)
def f64_to_f16_bits(v):
    """IEEE binary16 bit pattern of float64 ``v`` (round to nearest even)."""
    return _small_float_bits(v, 10, -14, 15, 0x7C00, 0x7E00, 65536.0)


@cuda.jit(device=True)
def f64_to_bf16_bits(v):
    """bfloat16 bit pattern of float64 ``v`` (round to nearest even)."""
    return _small_float_bits(v, 7, -126, 127, 0x7F80, 0x7FC0, _BF16_OVERFLOW)


@cuda.jit(device=True)
def _imin(a, b):
    return a if a < b else b


# ---------------------------------------------------------------------------------------
# dequantization helpers: flat index -> side-information index, kept incrementally
# ---------------------------------------------------------------------------------------
@cuda.jit(device=True)
def _rowterm(bi, ti, dq):
    # dq = (D, T, G, NG, AXIS); channel axis: (b*NG + t//G)*D ; token axis: b*NG*T + t
    if dq[4] == 0:
        return (bi * dq[3] + ti // dq[2]) * dq[0]
    return bi * dq[3] * dq[1] + ti


@cuda.jit(device=True)
def _deq_value(q, zero, step, sidx):
    return np.float64(zero[sidx]) + np.float64(q) * np.float64(step[sidx])


def _make_store(mode):
    if mode == MODE_F16:

        @cuda.jit(device=True)
        def store(out, j, v):
            out[j] = f64_to_f16_bits(v)

    elif mode == MODE_BF16:

        @cuda.jit(device=True)
        def store(out, j, v):
            out[j] = f64_to_bf16_bits(v)

    elif mode == MODE_F32:

        @cuda.jit(device=True)
        def store(out, j, v):
            out[j] = np.float32(v)

    else:

        @cuda.jit(device=True)
        def store(out, j, v):
            out[j] = v

    return store


# ---------------------------------------------------------------------------------------
# rANS
# ---------------------------------------------------------------------------------------
_KERNELS: dict = {}


def rans_kernel(shared: bool, wide: bool, mode: int, warps_per_block: int | None = None,
                ring: bool = False):
    """The rANS decode kernel for one variant (built and cached on first use).

    Signature: ``(words u16[total+1], word_off i64[c], num_words i64[c], states u32[c,K],
    tab u32[t,m], symtab u16[t,m], precision, chunk_size, n, min_symbol, period,
    num_tables, status i32[c], out, zero f32[], step f32[], colterm i64[D], dq i64[5])``.
    Launch with ``ceil(c / W)`` blocks of ``32 * W`` threads, ``W = warps_per_block``
    (default ``CONFIG.rans_warps_per_block``; benchmarks try others).

    ``ring=True`` stages each warp's stream words in a 256-word shared-memory ring,
    refilled 64 words at a time from loads issued one refill ahead, so that no global
    load sits in the per-step dependency chain. Measured on an H100 it was slower than
    reading the words straight from global memory (L1-cached): 303 vs 383 GB/s at
    1 GiB (``docs/benchmarks.md``), so it is off by default and kept for comparison.
    """
    W = int(warps_per_block or CONFIG.rans_warps_per_block)
    key = ("rans", bool(shared), bool(wide), int(mode), W, bool(ring))
    if key in _KERNELS:
        return _KERNELS[key]
    TAB = CONFIG.shared_table_slots if shared else 1
    SYM = CONFIG.shared_table_slots if (shared and wide) else 1
    SCR = 32 * W if SIMULATOR else 1
    RING = bool(ring)
    RW = _RING_WORDS if ring else 1
    RSZ = W * RW
    DEQ = mode != MODE_SYMBOLS
    SHARED = bool(shared)
    WIDE = bool(wide)
    store = _make_store(mode)

    @cuda.jit
    def kernel(words, word_off, num_words, states, tab, symtab, precision, chunk_size, n,
               min_symbol, period, num_tables, status, out, zero, step, colterm, dq):
        tid = np.int64(cuda.threadIdx.x)
        lane = tid & 31
        warp = tid >> 5
        sh_tab = cuda.shared.array(TAB, numba.uint32)
        sh_sym = cuda.shared.array(SYM, numba.uint16)
        scratch = cuda.shared.array(SCR, numba.uint32)
        ringbuf = cuda.shared.array(RSZ, numba.uint16)
        # Deliberate kernel twin: the shared-memory table load, as in huffman_kernel (each
        # kernel stays self-contained; the sources differ in rank and dtype).
        if SHARED:
            m = 1 << precision
            i = tid
            while i < m:
                sh_tab[i] = tab[0, i]
                if WIDE:
                    sh_sym[i] = symtab[0, i]
                i += np.int64(cuda.blockDim.x)
            cuda.syncthreads()
        k = np.int64(cuda.blockIdx.x) * W + warp
        if k >= states.shape[0]:
            return
        start = k * chunk_size
        ns = _imin(n - start, chunk_size)
        c0 = word_off[k]
        ptr = c0
        end = ptr + num_words[k]
        K = np.int64(states.shape[1])  # interleaved lanes of the stream (1..32)
        x = _L
        if lane < K:
            x = states[k, lane]
        # word ring (per warp, in shared memory): holds words [filled - 256, filled) of the
        # stream; 64 more words wait in two registers per lane, loaded one refill ahead
        rbase = warp * RW
        limit = words.shape[0] - 1
        filled = c0 + RW
        pend0 = np.uint16(0)
        pend1 = np.uint16(0)
        if RING:
            for i in range(RW // 32):
                g = c0 + lane + 32 * i
                ringbuf[rbase + ((g - c0) & (RW - 1))] = words[np.uint64(_imin(g, limit))]
            pend0 = words[np.uint64(_imin(filled + lane, limit))]
            pend1 = words[np.uint64(_imin(filled + 32 + lane, limit))]
            _syncwarp()
        P = np.uint32(precision)
        mask = np.uint32((1 << precision) - 1)
        lt = np.uint32((1 << lane) - 1)
        ch = (start + lane) % period
        inc = K % period
        # dequantization counters of this lane's element (unused for MODE_SYMBOLS)
        di = 0
        row = 0
        ti = 0
        bi = 0
        rowterm = 0
        inc_d = 0
        inc_r = 0
        if DEQ:
            j0 = start + lane
            di = j0 % dq[0]
            row = j0 // dq[0]
            ti = row % dq[1]
            bi = row // dq[1]
            rowterm = _rowterm(bi, ti, dq)
            inc_d = K % dq[0]
            inc_r = K // dq[0]
        nsteps = (ns + K - 1) // K
        for t in range(nsteps):
            r = K * t + lane
            need = False
            if lane < K and r < ns:
                slot = x & mask
                if SHARED:
                    e = sh_tab[slot]
                    f = (e & _U12) + _ONE
                    b = (e >> _S12) & _U12
                    if WIDE:
                        s = np.int64(sh_sym[slot])
                    else:
                        s = np.int64(e >> _S24)
                else:
                    row_t = ch if num_tables > 1 else 0
                    e = tab[row_t, slot]
                    f = (e & _U16) + _ONE
                    b = e >> _S16
                    s = np.int64(symtab[row_t, slot])
                j = np.uint64(start + r)  # unsigned: no negative-index wraparound code
                if DEQ:
                    v = _deq_value(s + min_symbol, zero, step, rowterm + colterm[di])
                    store(out, j, v)
                else:
                    out[j] = s + min_symbol
                x = np.uint32(f * (x >> P) + b)
                need = x < _L
            vote = _ballot(need, scratch)
            if need:
                wi = _imin(ptr + np.int64(cuda.popc(vote & lt)), end)
                if RING:
                    w = ringbuf[rbase + ((wi - c0) & (RW - 1))]
                else:
                    w = words[np.uint64(wi)]
                x = np.uint32((x << _S16) | np.uint32(w))
            ptr += np.int64(cuda.popc(vote))
            if RING:
                if ptr >= filled - (RW - 64):  # the oldest 64 slots are consumed: refill
                    _syncwarp()
                    ringbuf[rbase + ((filled + lane - c0) & (RW - 1))] = pend0
                    ringbuf[rbase + ((filled + 32 + lane - c0) & (RW - 1))] = pend1
                    filled += 64
                    pend0 = words[np.uint64(_imin(filled + lane, limit))]
                    pend1 = words[np.uint64(_imin(filled + 32 + lane, limit))]
                    _syncwarp()
            ch += inc
            if ch >= period:
                ch -= period
            if DEQ:
                di += inc_d
                dr = inc_r
                if di >= dq[0]:
                    di -= dq[0]
                    dr += 1
                if dr > 0:
                    ti += dr
                    while ti >= dq[1]:
                        ti -= dq[1]
                        bi += 1
                    rowterm = _rowterm(bi, ti, dq)
        bad = _ballot(x != _L, scratch)
        if lane == 0:
            st = 0
            if ptr != end:
                st = 1
            if bad != 0:
                st = 2
            status[k] = st

    _KERNELS[key] = kernel
    return kernel


# ---------------------------------------------------------------------------------------
# Huffman
# ---------------------------------------------------------------------------------------
def huffman_kernel(shared: bool, mode: int):
    """The Huffman decode kernel for one variant (built and cached on first use).

    Signature: ``(words u32[total+2], word_off i64[c], num_words i64[c], sub_offsets
    u32[s], table u32[num_tables * 2**table_bits], table_bits, chunk_size, sub_block, n,
    min_symbol, period, num_tables,
    status i32[s], out, zero, step, colterm, dq)``; one thread per sub-block, blocks of
    ``CONFIG.huffman_threads_per_block``.
    """
    key = ("huffman", bool(shared), int(mode))
    if key in _KERNELS:
        return _KERNELS[key]
    TAB = CONFIG.shared_table_slots if shared else 1
    SHARED = bool(shared)
    DEQ = mode != MODE_SYMBOLS
    store = _make_store(mode)

    @cuda.jit
    def kernel(words, word_off, num_words, sub_offsets, table, table_bits, chunk_size,
               sub_block, n, min_symbol, period, num_tables, status, out, zero, step, colterm,
               dq):
        tid = np.int64(cuda.threadIdx.x)
        sh = cuda.shared.array(TAB, numba.uint32)
        # Deliberate kernel twin: the shared-memory table load, as in rans_kernel.
        if SHARED:
            m = 1 << table_bits
            i = tid
            while i < m:
                sh[i] = table[i]
                i += np.int64(cuda.blockDim.x)
            cuda.syncthreads()
        sidx = np.int64(cuda.blockIdx.x) * np.int64(cuda.blockDim.x) + tid
        if sidx >= sub_offsets.shape[0]:
            return
        spc = chunk_size // sub_block
        k = sidx // spc
        b = sidx - k * spc
        cstart = k * chunk_size
        cstop = _imin(n, cstart + chunk_size)
        j0 = cstart + b * sub_block
        j1 = _imin(cstop, j0 + sub_block)
        nsb = (cstop - cstart + sub_block - 1) // sub_block
        w0 = word_off[k]
        nw = num_words[k]
        limit = words.shape[0] - 1
        pos = np.int64(sub_offsets[sidx])
        bad = 0
        if b == 0 and pos != 0:
            bad = 1
        off = pos & 31
        wp = w0 + (pos >> 5)
        acc = np.uint64(words[_imin(wp, limit)]) << np.uint64(32 + off)
        nacc = 32 - off
        wp += 1
        shift = np.uint64(64 - table_bits)
        # per-channel tables (global memory only): row j % period, rows of 2**table_bits
        ch = j0 % period
        di = 0
        ti = 0
        bi = 0
        rowterm = 0
        if DEQ:
            di = j0 % dq[0]
            row = j0 // dq[0]
            ti = row % dq[1]
            bi = row // dq[1]
            rowterm = _rowterm(bi, ti, dq)
        if bad == 0:
            for j in range(j0, j1):
                if nacc < 32:
                    acc |= np.uint64(words[np.uint64(_imin(wp, limit))]) << np.uint64(32 - nacc)
                    nacc += 32
                    wp += 1
                if SHARED:
                    e = sh[acc >> shift]
                elif num_tables > 1:
                    e = table[np.uint64(ch << table_bits) + (acc >> shift)]
                    ch += 1
                    if ch == period:
                        ch = 0
                else:
                    e = table[acc >> shift]
                ln = e & _U8
                if ln == 0:
                    bad = 2
                    break
                s = np.int64(e >> _S8) + min_symbol
                if DEQ:
                    store(out, np.uint64(j), _deq_value(s, zero, step, rowterm + colterm[di]))
                    di += 1
                    if di == dq[0]:
                        di = 0
                        ti += 1
                        if ti == dq[1]:
                            ti = 0
                            bi += 1
                        rowterm = _rowterm(bi, ti, dq)
                else:
                    out[np.uint64(j)] = s
                acc = acc << np.uint64(ln)
                nacc -= np.int64(ln)
                pos += np.int64(ln)
        if bad == 0:
            if pos > nw * 32:
                bad = 3
            elif b + 1 < nsb:
                if pos != np.int64(sub_offsets[sidx + 1]):
                    bad = 1
            elif (pos + 31) // 32 != nw:
                bad = 4
            elif pos & 31:
                rest = np.uint64(words[_imin(w0 + (pos >> 5), limit)]) << np.uint64(32 + (pos & 31))
                if rest != np.uint64(0):
                    bad = 5
        status[sidx] = bad

    _KERNELS[key] = kernel
    return kernel


def fill_kernel(mode: int):
    """``out[j] = value`` for every ``j`` (single-symbol streams); ``value`` is the symbol,
    or for the fused path the symbol dequantized with its group's side information."""
    key = ("fill", int(mode))
    if key in _KERNELS:
        return _KERNELS[key]
    DEQ = mode != MODE_SYMBOLS
    store = _make_store(mode)

    @cuda.jit
    def kernel(value, n, out, zero, step, colterm, dq):
        j = np.int64(cuda.blockIdx.x) * np.int64(cuda.blockDim.x) + np.int64(cuda.threadIdx.x)
        if j >= n:
            return
        if DEQ:
            di = j % dq[0]
            row = j // dq[0]
            sidx = _rowterm(row // dq[1], row % dq[1], dq) + colterm[di]
            store(out, j, _deq_value(value, zero, step, sidx))
        else:
            out[j] = value

    _KERNELS[key] = kernel
    return kernel


def merge_kernel(mode: int):
    """Interleave a decoded array of coded channels with raw-stored channels.

    ``out[j]`` for ``j = row * period + ch`` is ``coded[row * coded_period + colmap[ch]]``
    when ``colmap[ch] >= 0``, else ``stored[row * stored_period + (-colmap[ch] - 1)]``; the
    fused path dequantizes that symbol with its group's side information (as
    :func:`fill_kernel` does).
    """
    key = ("merge", int(mode))
    if key in _KERNELS:
        return _KERNELS[key]
    DEQ = mode != MODE_SYMBOLS
    store = _make_store(mode)

    @cuda.jit
    def kernel(coded, stored, colmap, period, coded_period, stored_period, n, out, zero,
               step, colterm, dq):
        j = np.int64(cuda.blockIdx.x) * np.int64(cuda.blockDim.x) + np.int64(cuda.threadIdx.x)
        if j >= n:
            return
        row = j // period
        m = colmap[j - row * period]
        if m >= 0:
            q = coded[row * coded_period + m]
        else:
            q = stored[row * stored_period - m - 1]
        if DEQ:
            di = j % dq[0]
            r2 = j // dq[0]
            sidx = _rowterm(r2 // dq[1], r2 % dq[1], dq) + colterm[di]
            store(out, j, _deq_value(q, zero, step, sidx))
        else:
            out[j] = q

    _KERNELS[key] = kernel
    return kernel
