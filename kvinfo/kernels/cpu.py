"""Numba CPU kernels of the lossless coders, each behind a thin validating wrapper.

Kernels come in threes (the stumpy design): a private ``@njit`` kernel that only does
arithmetic and trusts its inputs, a public wrapper here that validates dtypes, shapes,
table sums and every offset the kernel will follow, and a slow obvious reference in
``tests/codecs/reference_coders.py`` that the tests compare against. Numba does not check
bounds, so no kernel is entered before its wrapper has proven that every index it can
form lies inside its arrays; decode kernels additionally clamp word reads to their
chunk and report overruns in a per-chunk status array instead of reading past it.

All kernels are ``cache=True`` and parallel over chunks (``prange``); use
``numba.set_num_threads`` to control the thread count and :func:`warmup` to compile
everything before measuring.

Bit-stream layouts are specified in ``docs/container-format.md``:

* rANS: 32-bit states in ``[2**16, 2**32)``, 16-bit words, 32 interleaved lanes per
  chunk (symbol ``j`` of a chunk belongs to lane ``j % 32``), one word stream per
  chunk read forward; at decode step ``t`` the lanes that need a word read
  consecutive words in lane order.
* Huffman: canonical MSB-first codes packed into 32-bit words (first code bit is the
  most significant bit of the word), each chunk starting on a word boundary, with bit
  offsets of every sub-block.
* arith: an LZMA-style byte-oriented binary range coder (32-bit range, carry
  propagation through a cache byte) over adaptive binary-tree contexts.
"""

from __future__ import annotations

import contextlib
import math

import numba
import numpy as np
from numba import njit, prange

from ..errors import CodecConfigError
from .simd import (
    ENCODE_BAD_BIT,
    ENCODE_ROOM_WORDS,
    GATHER_PAD_BYTES,
    HOST_HAS_SIMD,
    SIMD_LANES,
    SIMD_MAX_INDEX,
    decode_binary_lanes4,
    decode_direct_step16,
    decode_step16,
    encode_step16,
)

__all__ = [
    "RANS_LANES",
    "RANS_STATE_LOWER",
    "histogram",
    "split_channels",
    "merge_channels",
    "rans_encode",
    "rans_decode",
    "rans_decode_table",
    "rans_slot_symbols",
    "RANS_DIRECT_TABLE_BYTES",
    "huffman_encode",
    "huffman_decode",
    "arith_encode",
    "arith_decode",
    "unpack_frequency_tables",
    "quantize_rows",
    "pack_frequency_tables",
    "warmup",
]

#: sha256 of simd.py. Numba's cache keys these kernels on this file's text alone, so a change
#: to the vector steps they inline must change this file too, or a stale kernel would load
#: (tests/kernels/test_cpu.py checks that it matches)
SIMD_SOURCE_SHA256 = "db776025ef2cb83494ca91a512ced3c58e313202dcfeba09319a15b8ae759979"

RANS_LANES = 32
RANS_STATE_LOWER = 1 << 16
#: lane counts the coders' rare-renormalisation loops serve (lane states in registers)
RANS_SPARSE_LANES = (1, 2, 4)
#: whether :func:`rans_decode` takes the 16-lane vector steps of :mod:`kvinfo.kernels.simd`
#: by default (hosts with AVX-512 and VBMI2; the scalar loops elsewhere)
RANS_SIMD_DECODE = HOST_HAS_SIMD
#: the same for :func:`rans_encode` (gathers, the emitted words compressed in a register)
RANS_SIMD_ENCODE = HOST_HAS_SIMD
_EMPTY_U64 = np.zeros(1, np.uint64)
_U32 = np.uint64(0xFFFFFFFF)
_ZERO = np.uint64(0)
_S16 = np.uint64(16)
_S32 = np.uint64(32)

_SYMBOL_DTYPES = (np.uint8, np.uint16, np.int32)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise CodecConfigError(msg)


def _check_array(a, name: str, dtypes, ndim: int) -> None:
    if not isinstance(a, np.ndarray):
        raise CodecConfigError(f"{name}: expected a numpy array, found {type(a).__name__}")
    if a.dtype.type not in tuple(np.dtype(d).type for d in dtypes) or not a.dtype.isnative:
        raise CodecConfigError(
            f"{name}: expected dtype in {[np.dtype(d).name for d in dtypes]}, found {a.dtype}"
        )
    if a.ndim != ndim:
        raise CodecConfigError(f"{name}: expected {ndim}-D, found {a.ndim}-D")
    if not a.flags.c_contiguous or not a.flags.aligned:
        raise CodecConfigError(f"{name}: expected a C-contiguous aligned array")


def _num_chunks(n: int, chunk_size: int) -> int:
    return (n + chunk_size - 1) // chunk_size


@contextlib.contextmanager
def _threads_for(num_tasks: int):
    """Run a parallel kernel single-threaded when it has only one task: waking the thread
    pool for one chunk costs more than the chunk itself (milliseconds on a busy machine)."""
    if num_tasks > 1:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


# ---------------------------------------------------------------------------------------
# histogram
# ---------------------------------------------------------------------------------------
#: interleaved sub-histograms of a single-table count (consecutive equal symbols would
#: otherwise wait on each other's increments: store-to-load forwarding)
_HIST_WAYS = 4
#: per-channel counts up to twice this many bytes as int32 are taken in uint16 sub-counters
#: (half the footprint, so that they stay in a 48 KB L1 data cache)
_HIST_L1_BYTES = 32 << 10


@njit(cache=True, parallel=True, nogil=True)
def _histogram_kernel(sym, min_symbol, period, alphabet, counts):  # pragma: no cover
    # counts: (nparts, ways, num_tables * alphabet), flat per part. Every symbol must lie
    # in [min_symbol, min_symbol + alphabet): the wrapper checks (numpy's min and max)
    # before the call, since any test in this loop (a branch, a clamp, a mask) measured
    # 1.7x to 2.4x slower
    n = sym.shape[0]
    nparts = counts.shape[0]
    ways = counts.shape[1]
    A = np.uint64(alphabet)
    cells = np.uint64(counts.shape[2])
    for p in prange(nparts):
        a = p * n // nparts
        b = (p + 1) * n // nparts
        c = counts[p]
        if cells == A:
            m = a + (b - a) // ways * ways
            for j in range(a, m, ways):
                for w in range(ways):
                    c[w, np.uint64(np.int64(sym[j + w]) - min_symbol)] += 1
            for j in range(m, b):
                c[0, np.uint64(np.int64(sym[j]) - min_symbol)] += 1
        elif n % period == 0:
            # whole rows per part: the channel is the position in the row, no counter
            c0 = c[0]
            up = np.uint64(period)
            r0 = np.uint64(p * (n // period) // nparts)
            r1 = np.uint64((p + 1) * (n // period) // nparts)
            for r in range(r0, r1):
                base = r * up
                for ch in range(up):
                    c0[ch * A + np.uint64(np.int64(sym[base + ch]) - min_symbol)] += 1
        else:
            off = np.uint64(a % period) * A
            c0 = c[0]
            for j in range(a, b):
                c0[off + np.uint64(np.int64(sym[j]) - min_symbol)] += 1
                off += A
                if off == cells:
                    off = np.uint64(0)


@njit(cache=True, parallel=True, nogil=True)
def _histogram_rows16_kernel(sym, min_symbol, period, alphabet, totals):  # pragma: no cover
    # Per-channel counts of whole rows in uint16 sub-counters (half the cache footprint of
    # int32: 64 channels of 256 symbols fit L1 in 32 KB), added into the int64 totals
    # (nparts, period * alphabet) every 65535 rows, before any can overflow. The wrapper
    # checks the symbols' range first, as for _histogram_kernel.
    rows = sym.shape[0] // period
    nparts = totals.shape[0]
    cells = totals.shape[1]
    A = np.uint64(alphabet)
    up = np.uint64(period)
    for p in prange(nparts):
        r0 = p * rows // nparts
        r1 = (p + 1) * rows // nparts
        sub = np.zeros(cells, np.uint16)
        tot = totals[p]
        for b0 in range(r0, r1, 65535):
            for r in range(np.uint64(b0), np.uint64(min(r1, b0 + 65535))):
                base = r * up
                for ch in range(up):
                    sub[ch * A + np.uint64(np.int64(sym[base + ch]) - min_symbol)] += 1
            for c in range(cells):
                tot[c] += sub[c]
                sub[c] = 0


@njit(cache=True, parallel=True, nogil=True)
def _histogram_u8_kernel(words, counts):  # pragma: no cover - numba
    # Byte symbols read eight at a time (one uint64 load): counts is (nparts, 8, 256)
    # int32, table b counting byte b of every word (eight interleaved tables, so equal
    # neighbours do not wait on each other's increments)
    n = words.shape[0]
    nparts = counts.shape[0]
    for p in prange(nparts):
        c = counts[p]
        for k in range(p * n // nparts, (p + 1) * n // nparts):
            v = words[k]
            c[0, v & np.uint64(255)] += 1
            c[1, (v >> np.uint64(8)) & np.uint64(255)] += 1
            c[2, (v >> np.uint64(16)) & np.uint64(255)] += 1
            c[3, (v >> np.uint64(24)) & np.uint64(255)] += 1
            c[4, (v >> np.uint64(32)) & np.uint64(255)] += 1
            c[5, (v >> np.uint64(40)) & np.uint64(255)] += 1
            c[6, (v >> np.uint64(48)) & np.uint64(255)] += 1
            c[7, v >> np.uint64(56)] += 1


def _histogram_u8(symbols: np.ndarray, period: int, per_channel: bool):
    """Counts of every byte value, ``(num_tables, 256)`` int64, for uint8 ``symbols`` with
    one table or a period that divides 8 (None otherwise, and for short inputs): byte
    ``b`` of every aligned word then always belongs to the same channel. (Periods that 8
    divides stay with the row-wise kernel: 256-wide tables per channel would leave L1.)"""
    n = symbols.shape[0]
    if n < 1 << 12 or (per_channel and 8 % period):
        return None
    head = (-symbols.ctypes.data) % 8
    nwords = (n - head) // 8
    body = symbols[head : head + 8 * nwords].view(np.uint64)
    nparts = int(max(1, min(numba.get_num_threads() * 2, nwords // (1 << 13) + 1)))
    nparts = max(nparts, -(-nwords // (1 << 27)))  # int32 counts: < 2**31 per table
    counts = np.zeros((nparts, 8, 256), dtype=np.int32)
    with _threads_for(nparts):
        _histogram_u8_kernel(body, counts)
    per = counts.sum(axis=0, dtype=np.int64)
    out = np.zeros((period if per_channel else 1, 256), np.int64)
    # byte b of the body is element head + 8 k + b: channel (head + b) % period
    np.add.at(out, (np.arange(8) + head) % period if per_channel else np.zeros(8, int), per)
    for j in (*range(head), *range(head + 8 * nwords, n)):  # the unaligned ends
        out[j % period if per_channel else 0, symbols[j]] += 1
    return out


def histogram(symbols: np.ndarray, min_symbol: int, alphabet_size: int, period: int = 1,
              per_channel: bool = False, *, range_checked: bool = False) -> np.ndarray:
    """Counts of each symbol, shape ``(num_tables, alphabet_size)``.

    With ``per_channel`` the table of element ``j`` of the flat array is ``j % period``
    (``period`` = size of the last axis), else everything goes to table 0.
    ``symbols`` must lie in ``[min_symbol, min_symbol + alphabet_size)``: checked (byte
    symbols in the counting pass, wider ones with numpy's min and max first) unless
    ``range_checked`` says that the caller has just taken this array's min and max (the
    coders' front end, which derives the range from them).
    """
    _check_array(symbols, "symbols", _SYMBOL_DTYPES, 1)
    _check(1 <= alphabet_size <= 1 << 16, f"alphabet_size must be in [1, 65536], found "
           f"{alphabet_size}")
    _check(period >= 1, f"period must be >= 1, found {period}")
    num_tables = period if per_channel else 1

    def refuse(lo, hi):
        raise CodecConfigError(f"symbols must lie in [{min_symbol}, "
                               f"{min_symbol + alphabet_size}), found [{lo}, {hi}]")

    if symbols.dtype == np.uint8:
        full = _histogram_u8(symbols, period, per_channel)
        if full is not None:
            lo, hi = max(0, min_symbol), min(256, min_symbol + alphabet_size)
            inside = int(full[:, lo:hi].sum()) if hi > lo else 0
            if inside != symbols.size:
                nz = np.flatnonzero(full.sum(axis=0))
                refuse(int(nz[0]), int(nz[-1]))
            out = np.zeros((num_tables, alphabet_size), np.int64)
            if hi > lo:
                out[:, lo - min_symbol : hi - min_symbol] = full[:, lo:hi]
            return out
    if symbols.size and not range_checked:
        lo, hi = int(symbols.min()), int(symbols.max())
        if lo < min_symbol or hi >= min_symbol + alphabet_size:
            refuse(lo, hi)
    cells = num_tables * alphabet_size
    if per_channel and period > 1 and symbols.size % period == 0 and (
            _HIST_L1_BYTES < 4 * cells <= 2 * _HIST_L1_BYTES):
        # int32 counts would leave L1, uint16 ones fit
        nparts = int(max(1, min(numba.get_num_threads() * 2,
                                symbols.size // max(1 << 16, 4 * cells) + 1)))
        totals = np.zeros((nparts, cells), np.int64)
        with _threads_for(nparts):
            _histogram_rows16_kernel(symbols, np.int64(min_symbol), np.int64(period),
                                     np.int64(alphabet_size), totals)
        return totals.sum(axis=0).reshape(num_tables, alphabet_size)
    ways = _HIST_WAYS if num_tables == 1 and alphabet_size <= 1 << 12 else 1
    nparts = int(max(1, min(numba.get_num_threads() * 2, (1 << 24) // (ways * cells),
                            symbols.size // (1 << 16) + 1)))
    # int32 counts (half the cache footprint) while no part can count 2**31 symbols
    small = -(-symbols.size // nparts) < 1 << 31
    counts = np.zeros((nparts, ways, cells), dtype=np.int32 if small else np.int64)
    if symbols.size:
        with _threads_for(nparts):
            _histogram_kernel(symbols, np.int64(min_symbol), np.int64(period),
                              np.int64(alphabet_size), counts)
    return counts.sum(axis=(0, 1), dtype=np.int64).reshape(num_tables, alphabet_size)


# ---------------------------------------------------------------------------------------
# rANS
# ---------------------------------------------------------------------------------------
# Both kernels keep the lane states as uint32 values in [2**16, 2**32) and index every
# array with unsigned integers (Numba adds a negative-index wrap-around to each signed
# index); the renormalisation is branch-free (a select and a pointer increment), since
# whether a lane needs a word is a coin toss the branch predictor cannot learn.


@njit(cache=True, inline="always", error_model="numpy")
def _rans_put_sparse(x, k, tab, rcp):  # pragma: no cover - numba
    # the encoder step without renormalisation (the caller has renormalised x)
    q = np.uint64(np.int64((np.float64(np.int64(x)) + 0.5) * rcp[k]))
    return x + tab[k, 1] + q * tab[k, 2]


@njit(cache=True, inline="always", error_model="numpy")
def _rans_emit(x, xm, scratch, ptr):  # pragma: no cover - numba
    # branch-free renormalisation of the encoder: emit the low word when x >= xm
    scratch[ptr - np.uint64(1)] = np.uint16(x & np.uint64(0xFFFF))
    m = np.uint64(x >= xm)
    return x >> (m << np.uint64(4)), ptr - m


@njit(cache=True, inline="always", error_model="numpy")
def _rans_put(x, k, tab, rcp, scratch, ptr):  # pragma: no cover - numba
    # one encoder step of lane state x for row k = table * alphabet + symbol index of the
    # flat tables; returns the new state, the new word pointer and whether the symbol was
    # codable (f > 0)
    xm = tab[k, 0]
    x, ptr = _rans_emit(x, xm, scratch, ptr)
    return _rans_put_sparse(x, k, tab, rcp), ptr, xm != 0


@njit(cache=True, nogil=True, error_model="numpy")
def _rans_encode_sparse(sym, min_symbol, A, tab, rcp, start, nfull, K, rare, st, scratch,
                        ptr):  # pragma: no cover - numba
    # The full steps of one chunk of 1, 2 or 4 lanes with one table, walking backwards,
    # for low-entropy streams: the decoder's rare-renormalisation twin. The lane states
    # live in registers, and one test per step of K symbols sends it to the branch-free
    # renormalisation only when some lane must emit a word (lanes in descending order,
    # as the general loop emits them). With ``rare`` False (higher entropy, where the
    # test would be a coin toss) every step renormalises branch-free, the states still in
    # registers (4 lanes in an array measured 1.6x slower: each lane's state goes through
    # memory). Returns (ptr, ok); st is updated.
    x0 = st[0]
    x1 = st[1]
    x2 = st[2]
    x3 = st[3]
    zero = np.uint64(0)
    uA = np.uint64(A)
    ok = True
    for step in range(nfull - 1, -1, -1):
        b = np.uint64(start + K * step)
        s0 = np.uint64(np.int64(sym[b]) - min_symbol)
        ok = ok and s0 < uA
        s0 = s0 if s0 < uA else zero
        m0 = tab[s0, 0]
        ok = ok and m0 != 0
        need = x0 >= m0
        s1 = s2 = s3 = zero
        m1 = m2 = m3 = zero
        if K > 1:
            s1 = np.uint64(np.int64(sym[b + np.uint64(1)]) - min_symbol)
            ok = ok and s1 < uA
            s1 = s1 if s1 < uA else zero
            m1 = tab[s1, 0]
            ok = ok and m1 != 0
            need = need or x1 >= m1
        if K > 2:
            s2 = np.uint64(np.int64(sym[b + np.uint64(2)]) - min_symbol)
            s3 = np.uint64(np.int64(sym[b + np.uint64(3)]) - min_symbol)
            ok = ok and s2 < uA and s3 < uA
            s2 = s2 if s2 < uA else zero
            s3 = s3 if s3 < uA else zero
            m2 = tab[s2, 0]
            m3 = tab[s3, 0]
            ok = ok and m2 != 0 and m3 != 0
            need = need or x2 >= m2 or x3 >= m3
        if not ok:
            break
        if need or not rare:  # descending lanes, as the decoder reads them back
            if K > 2:
                x3, ptr = _rans_emit(x3, m3, scratch, ptr)
                x2, ptr = _rans_emit(x2, m2, scratch, ptr)
            if K > 1:
                x1, ptr = _rans_emit(x1, m1, scratch, ptr)
            x0, ptr = _rans_emit(x0, m0, scratch, ptr)
        x0 = _rans_put_sparse(x0, s0, tab, rcp)
        if K > 1:
            x1 = _rans_put_sparse(x1, s1, tab, rcp)
        if K > 2:
            x2 = _rans_put_sparse(x2, s2, tab, rcp)
            x3 = _rans_put_sparse(x3, s3, tab, rcp)
    st[0] = x0
    st[1] = x1
    st[2] = x2
    st[3] = x3
    return ptr, ok


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def _rans_encode_kernel(sym, min_symbol, period, alphabet, tab, rcp, loff, chunk_size,
                        num_lanes, sparse, rare, scratch, word_start, num_words, states,
                        status, simd, ftab, voff, vrows, precision):  # pragma: no cover
    # Flat tables, row k = table * alphabet + symbol index s (one index computation and
    # one cache line per step; four (table, symbol) arrays measured 1.3x to 1.9x slower
    # with 64 tables): tab[k] = (xmax, cum, cmpl) with xmax = f << (32 - P) (the
    # renormalisation bound), cum the cumulative frequency, cmpl = 2**P - f; rcp[k] = 1 / f
    # as float64. The step x -> (x // f) << P | (x % f) + cum is written
    # x + cum + q * cmpl with q = floor((x + 1/2) * rcp): x < 2**32 and f <= 2**16, so
    # (x + 1/2) / f lies at least 2**-17 from an integer while the float64 error stays
    # below 2**-20, and q is exact.
    # A symbol outside the alphabet or with frequency 0 sets status[k] and stops the chunk.
    # Deliberate twins: the step (_rans_put) runs in four loops (the partial last step;
    # one table with 32 lanes; one table or a period that is a multiple or a divisor of
    # the lane count; any period, with a channel counter), as in the decoder.
    n = sym.shape[0]
    nchunks = states.shape[0]
    A = np.uint64(alphabet)
    num_tables = tab.shape[0] // alphabet
    K = num_lanes
    up = np.uint64(period)
    zero = np.uint64(0)
    for k in prange(nchunks):
        start = k * chunk_size
        stop = min(n, start + chunk_size)
        # each symbol emits at most one word; ENCODE_ROOM_WORDS below every region for the
        # full-width stores of the vector steps
        region_end = np.uint64(stop + (k + 1) * (1 + ENCODE_ROOM_WORDS))
        ptr = region_end
        st = np.empty(32, np.uint64)
        for l in range(32):
            st[l] = RANS_STATE_LOWER
        nfull = (stop - start) // K
        ok = True
        ch = np.uint64((stop - 1) % period)
        tb = zero
        # the partial last step first (the encoder walks backwards)
        for j in range(stop - 1, start + K * nfull - 1, -1):
            l = np.uint64(j - start - K * nfull)
            if num_tables > 1:
                tb = ch * A
            ch = ch - np.uint64(1) if ch > 0 else up - np.uint64(1)
            s = np.uint64(np.int64(sym[np.uint64(j)]) - min_symbol)
            ok = ok and s < A
            st[l], ptr, good = _rans_put(st[l], tb + (s if s < A else zero), tab, rcp,
                                         scratch, ptr)
            ok = ok and good
        if sparse and ok:
            ptr, ok = _rans_encode_sparse(sym, min_symbol, alphabet, tab, rcp, start, nfull,
                                          K, rare, st, scratch, ptr)
        elif simd:
            # 16 lanes per vector step (kvinfo.kernels.simd), upper lanes first; the row
            # offset of lane l in a step whose first channel is c is voff[c * K + l]
            uP = np.uint64(precision)
            for step in range(nfull - 1, -1, -1):
                if not ok:
                    break
                base = np.uint64(start + K * step)
                ro = np.uint64((start + K * step) % vrows) * np.uint64(K)
                for h in range(K - 16, -1, -16):
                    uh = np.uint64(h)
                    r = encode_step16(st, uh, sym, base + uh, min_symbol, A, voff, ro + uh,
                                      ftab, rcp, scratch, ptr, uP)
                    if r >> np.uint64(ENCODE_BAD_BIT):
                        ok = False
                        break
                    ptr = r
        elif num_tables == 1 and K == 32:
            for step in range(nfull - 1, -1, -1):
                if not ok:
                    break
                base = np.uint64(start + 32 * step)
                for l in range(31, -1, -1):
                    ul = np.uint64(l)
                    s = np.uint64(np.int64(sym[base + ul]) - min_symbol)
                    ok = ok and s < A
                    st[ul], ptr, good = _rans_put(st[ul], s if s < A else zero, tab, rcp,
                                                  scratch, ptr)
                    ok = ok and good
        elif num_tables == 1 or period % K == 0 or K % period == 0:
            # the table row offset of lane l is cb + ltab[l]: (cb + l) * A when the
            # period is a multiple of K (cb = the step's first channel), (l % period) * A
            # when K is a multiple of it
            ltab = np.empty(32, np.uint64)
            for l in range(32):
                ltab[l] = (np.uint64(l) if period % K == 0 else np.uint64(l % period)) * A
            for step in range(nfull - 1, -1, -1):
                if not ok:
                    break
                base = np.uint64(start + K * step)
                cb = (np.uint64((start + K * step) % period) * A
                      if num_tables > 1 and period % K == 0 else zero)
                for l in range(K - 1, -1, -1):
                    ul = np.uint64(l)
                    s = np.uint64(np.int64(sym[base + ul]) - min_symbol)
                    ok = ok and s < A
                    tb = cb + ltab[ul] if num_tables > 1 else zero
                    st[ul], ptr, good = _rans_put(st[ul], tb + (s if s < A else zero), tab,
                                                  rcp, scratch, ptr)
                    ok = ok and good
        elif loff.shape[0] == period:
            # any period up to 256: the row offset of lane l in a step whose first
            # channel is c is loff[c, l] (no channel counter, no multiply per symbol)
            for step in range(nfull - 1, -1, -1):
                if not ok:
                    break
                base = np.uint64(start + K * step)
                row = loff[(start + K * step) % period]
                for l in range(K - 1, -1, -1):
                    ul = np.uint64(l)
                    s = np.uint64(np.int64(sym[base + ul]) - min_symbol)
                    ok = ok and s < A
                    st[ul], ptr, good = _rans_put(st[ul], row[ul] + (s if s < A else zero),
                                                  tab, rcp, scratch, ptr)
                    ok = ok and good
        else:
            for step in range(nfull - 1, -1, -1):
                if not ok:
                    break
                base = np.uint64(start + K * step)
                for l in range(K - 1, -1, -1):
                    ul = np.uint64(l)
                    tb = ch * A
                    ch = ch - np.uint64(1) if ch > 0 else up - np.uint64(1)
                    s = np.uint64(np.int64(sym[base + ul]) - min_symbol)
                    ok = ok and s < A
                    st[ul], ptr, good = _rans_put(st[ul], tb + (s if s < A else zero), tab,
                                                  rcp, scratch, ptr)
                    ok = ok and good
        status[k] = 0 if ok else 1
        word_start[k] = ptr
        num_words[k] = region_end - ptr
        for l in range(K):
            states[k, l] = np.uint32(st[l])


def _table_bits(freq: np.ndarray, precision_bits: int) -> float:
    """Entropy in bits per symbol of one quantized table (what a source that follows it
    costs)."""
    f = freq[freq > 0].astype(np.float64)
    return float(precision_bits - (f * np.log2(f)).sum() / float(1 << precision_bits))


def _rans_tables(frequencies: np.ndarray, precision_bits: int) -> None:
    f = frequencies
    _check_array(f, "frequencies", (np.int64,), 2)
    _check(1 <= precision_bits <= 16, f"precision_bits must be in [1, 16], found {precision_bits}")
    _check(f.shape[0] >= 1 and 1 <= f.shape[1] <= 1 << 16,
           f"frequencies must have shape (num_tables >= 1, 1..65536), found {f.shape}")
    _check(bool(np.all(f >= 0)) and bool(np.all(f.sum(axis=1) == (1 << precision_bits))),
           f"every frequency row must be non-negative and sum to 2**{precision_bits}")


def _lane_offset_rows(period: int, num_lanes: int, alphabet: int) -> np.ndarray:
    """Flat table row offset of lane ``l`` in a step whose first channel is ``c``:
    ``((c + l) % period) * alphabet``, shape ``(period, num_lanes)``, uint64."""
    ch = (np.arange(period)[:, None] + np.arange(num_lanes)[None, :]) % period
    return (ch * alphabet).astype(np.uint64)


def rans_encode(symbols: np.ndarray, min_symbol: int, frequencies: np.ndarray,
                precision_bits: int, chunk_size: int, period: int = 1, counts=None,
                num_lanes: int = RANS_LANES, simd: bool | None = None):
    """Encode flat ``symbols`` with static interleaved rANS.

    Parameters
    ----------
    symbols : 1-D uint8/uint16/int32 array
    min_symbol : int
        Symbol value of column 0 of ``frequencies``.
    frequencies : int64 array (num_tables, alphabet_size)
        Rows sum to ``2**precision_bits``; every symbol that occurs in the rows it is
        coded with must have a non-zero frequency (checked).
    precision_bits, chunk_size : int
        ``chunk_size`` is a positive multiple of ``num_lanes``.
    period : int
        With ``num_tables > 1`` element ``j`` uses row ``j % period``; ``num_tables``
        must equal ``period``.
    counts : optional
        Accepted for compatibility and ignored: the kernel checks every symbol against
        its table as it codes it (a symbol outside the table's range or of frequency 0
        raises :class:`CodecConfigError`).
    num_lanes : int
        Interleaved lanes per chunk, 1..32 (element ``i`` of a chunk belongs to lane
        ``i % num_lanes``); ``chunk_size`` must be a multiple of it.
    simd : bool or None
        The 16-lane vector steps of :mod:`kvinfo.kernels.simd` for 16 or 32 lanes with one
        table or a period up to 256 (``None``: :data:`RANS_SIMD_ENCODE`, true on hosts with
        AVX-512 and VBMI2); both paths write the same words and states.

    Returns
    -------
    words : uint16 array, the concatenated word streams of all chunks
    num_words : uint32 array (num_chunks,)
    states : uint32 array (num_chunks, num_lanes), the final encoder states
    """
    del counts
    _check_array(symbols, "symbols", _SYMBOL_DTYPES, 1)
    _rans_tables(frequencies, precision_bits)
    _check(1 <= num_lanes <= RANS_LANES, f"num_lanes must be in [1, 32], found {num_lanes}")
    _check(chunk_size >= num_lanes and chunk_size % num_lanes == 0 and chunk_size <= 1 << 30,
           f"chunk_size must be a positive multiple of num_lanes={num_lanes}, found {chunk_size}")
    num_tables, a = frequencies.shape
    _check(num_tables == 1 or num_tables == period,
           f"num_tables must be 1 or period={period}, found {num_tables}")
    n = symbols.shape[0]
    nchunks = _num_chunks(n, chunk_size)
    scratch = np.empty(n + nchunks * (1 + ENCODE_ROOM_WORDS), dtype=np.uint16)
    word_start = np.empty(nchunks, dtype=np.uint64)
    num_words = np.empty(nchunks, dtype=np.uint64)
    states = np.empty((nchunks, num_lanes), dtype=np.uint32)
    status = np.zeros(nchunks, dtype=np.int64)
    f = frequencies.astype(np.uint64).reshape(-1)
    tab = np.empty((f.size, 3), np.uint64)  # flat rows: table * alphabet + symbol index
    tab[:, 0] = f << np.uint64(32 - precision_bits)
    cum = np.zeros_like(frequencies, dtype=np.uint64)
    np.cumsum(frequencies[:, :-1], axis=1, out=cum[:, 1:])
    tab[:, 1] = cum.reshape(-1)
    tab[:, 2] = np.uint64(1 << precision_bits) - f
    with np.errstate(divide="ignore"):
        rcp = 1.0 / frequencies.reshape(-1)
    # one table of 1, 2 or 4 lanes: the lane states in registers, and rare
    # renormalisation (as the decoder) when its entropy puts at most one word per
    # 4 * num_lanes symbols
    sparse = bool(num_tables == 1 and num_lanes in RANS_SPARSE_LANES)
    rare = sparse and _table_bits(frequencies[0], precision_bits) * num_lanes <= 4.0
    if num_tables > 1 and period % num_lanes and num_lanes % period and period <= 256:
        # lane offsets per first channel of a step, for periods that neither divide nor
        # are divided by the lane count (the three coded byte channels of a float32 dump)
        loff = _lane_offset_rows(period, num_lanes, a)
    else:
        loff = np.zeros((0, 0), np.uint64)
    if simd is None:
        simd = RANS_SIMD_ENCODE
    # vector steps of 16 lanes: 16 or 32 lanes, one table or a period up to 256 (a
    # lane-offset row per first channel of a step)
    simd = (bool(simd) and not sparse and num_lanes % SIMD_LANES == 0
            and (num_tables == 1 or period <= 256) and f.size < SIMD_MAX_INDEX)
    ftab, voff, vrows = _EMPTY_U64, _EMPTY_U64, 1
    if simd:
        ftab = f | (tab[:, 1] << np.uint64(32))
        if num_tables > 1:
            vrows = period
            voff = (loff if loff.size else _lane_offset_rows(period, num_lanes, a)).reshape(-1)
        else:
            voff = np.zeros(num_lanes, np.uint64)
    if nchunks:
        with _threads_for(nchunks):
            _rans_encode_kernel(symbols, np.int64(min_symbol), np.int64(period), np.int64(a),
                                tab, rcp, loff, np.int64(chunk_size), np.int64(num_lanes),
                                sparse, rare, scratch, word_start, num_words, states, status,
                                simd, ftab, voff, np.int64(vrows), np.int64(precision_bits))
    if status.any():
        lo, hi = int(symbols.min()), int(symbols.max())
        _check(lo >= min_symbol and hi < min_symbol + a,
               f"symbols must lie in [{min_symbol}, {min_symbol + a}), found [{lo}, {hi}]")
        raise CodecConfigError("a symbol that occurs has frequency 0 in its table")
    if nchunks == 1:
        words = scratch[int(word_start[0]) : int(word_start[0] + num_words[0])].copy()
    else:
        words = np.concatenate([scratch[int(s) : int(s + w)]
                                for s, w in zip(word_start, num_words, strict=True)])
    return words, num_words.astype(np.uint32), states


#: decode tables up to this many bytes use the direct slot table (entry and symbol value per
#: slot); larger ones, which would leave the L1 cache, map a slot to a symbol index (one or
#: two bytes per slot) and look the frequency up per symbol
RANS_DIRECT_TABLE_BYTES = 24 << 10


def rans_decode_table(frequencies: np.ndarray, precision_bits: int, min_symbol: int = 0,
                      dtype=np.int32) -> tuple[np.ndarray, np.ndarray]:
    """The decoder's direct slot tables, two arrays of shape ``(num_tables, 2**precision_bits)``.

    ``entries`` (uint32) packs ``(freq - 1) | (slot - cum) << 16`` of the symbol that owns
    each slot; ``symbols`` (of ``dtype``) holds that symbol's value, ``min_symbol`` plus
    its index (so the decoder stores it as it is).
    """
    _rans_tables(frequencies, precision_bits)
    num_tables, a = frequencies.shape
    m = 1 << precision_bits
    values = np.arange(a, dtype=np.int64) + int(min_symbol)
    info = np.iinfo(dtype)
    _check(info.min <= values[0] and values[-1] <= info.max,
           f"symbols {values[0]}..{values[-1]} do not fit {np.dtype(dtype).name}")
    sym = rans_slot_symbols(frequencies, precision_bits).astype(np.int64)
    f = frequencies
    cum = np.cumsum(f, axis=1) - f
    rows = np.arange(num_tables)[:, None]
    slots = np.arange(m, dtype=np.int64)[None, :]
    entries = ((f[rows, sym] - 1) | ((slots - cum[rows, sym]) << 16)).astype(np.uint32)
    return entries, values[sym].astype(dtype)


def rans_slot_symbols(frequencies: np.ndarray, precision_bits: int) -> np.ndarray:
    """Symbol index of every slot, ``(num_tables, 2**precision_bits)`` uint8 (alphabets up to
    256) or uint16."""
    _rans_tables(frequencies, precision_bits)
    num_tables, a = frequencies.shape
    dt = np.uint8 if a <= 256 else np.uint16
    reps = frequencies.reshape(-1)
    idx = np.tile(np.arange(a, dtype=dt), num_tables)
    return np.repeat(idx, reps).reshape(num_tables, 1 << precision_bits)


@njit(cache=True, inline="always", error_model="numpy")
def _rans_renorm64(x, words, ptr):  # pragma: no cover - numba
    # the decoder's renormalisation with the state kept as uint64 (the register-resident
    # lanes); _rans_renorm is this with the uint32 state of the lane arrays
    m = np.uint64(x < np.uint64(RANS_STATE_LOWER))
    w = np.uint64(words[ptr]) & (np.uint64(0) - m)
    return (x << (m << np.uint64(4))) | w, ptr + m


@njit(cache=True, inline="always", error_model="numpy")
def _rans_renorm(x, words, ptr):  # pragma: no cover - numba
    # branch-free: whether a lane needs a word is a coin toss the predictor cannot learn
    # (arithmetic, not a select: LLVM turns a select around the word load into a branch)
    x, ptr = _rans_renorm64(np.uint64(x), words, ptr)
    return np.uint32(x), ptr


@njit(cache=True, inline="always", error_model="numpy")
def _rans_step_direct(x, packed, min_symbol, out, o, mask, P):  # pragma: no cover - numba
    # one decoder step of lane state x with the packed direct table of the register
    # lanes, packed[slot] = f | (slot - cum) << 32 | symbol index << 48 (one load per
    # symbol where two tables took two: 1.1x faster at 0.14 bit per symbol), the symbol to
    # out[o]; the state before renormalisation
    e = packed[x & mask]
    out[o] = np.int64(e >> np.uint64(48)) + min_symbol
    return (e & np.uint64(0xFFFFFFFF)) * (x >> P) + ((e >> np.uint64(32)) & np.uint64(0xFFFF))


@njit(cache=True, inline="always", error_model="numpy")
def _rans_step_indirect(x, so, io, sidx, info, mask, P):  # pragma: no cover - numba
    # flat tables: the slot's symbol index at sidx[so + slot] (so = table << P), its
    # entry at info[io + s] (io = table * alphabet)
    slot = x & mask
    s = sidx[so + slot]
    e = info[io + np.uint64(s)]
    return (e & np.uint64(0xFFFFFFFF)) * (x >> P) + slot - (e >> np.uint64(32)), s


@njit(cache=True, nogil=True, error_model="numpy")
def _rans_decode_sparse(words, ptr, end, st, K, rare, ent, min_symbol, out, start, nfull, mask,
                        P):  # pragma: no cover - numba
    # The full steps of one chunk of 1, 2 or 4 lanes with one direct table, for
    # low-entropy streams (rare renormalisation): the lane states live in registers,
    # every lane steps, and a single test per step of K symbols sends it to the
    # branch-free renormalisation only when some lane fell below 2**16. Measured 2.2x
    # faster than renormalising every lane at 0.05 bit per symbol (at high entropy every
    # step would take the branch; 16 lanes in registers measured no faster than the
    # array: too few registers). With ``rare`` False (higher entropy) every step
    # renormalises branch-free, the states still in registers. A function of its own:
    # inside the chunk loop of the parallel kernel the same loop measured 1.5x slower.
    # Returns (ptr, bad); st is updated.
    lower = np.uint64(RANS_STATE_LOWER)
    one = np.uint64(1)
    x0 = np.uint64(st[0])
    x1 = np.uint64(st[1]) if K > 1 else lower
    x2 = np.uint64(st[2]) if K > 2 else lower
    x3 = np.uint64(st[3]) if K > 2 else lower
    bad = 0
    uK = np.uint64(K)
    b = np.uint64(start)
    if K == 4:  # the common case without the lane-count tests
        for _ in range(nfull):
            if ptr > end:
                bad = 1
                break
            x0 = _rans_step_direct(x0, ent, min_symbol, out, b, mask, P)
            x1 = _rans_step_direct(x1, ent, min_symbol, out, b + one, mask, P)
            x2 = _rans_step_direct(x2, ent, min_symbol, out, b + np.uint64(2), mask, P)
            x3 = _rans_step_direct(x3, ent, min_symbol, out, b + np.uint64(3), mask, P)
            b += uK
            if not rare or min(min(x0, x1), min(x2, x3)) < lower:
                x0, ptr = _rans_renorm64(x0, words, ptr)
                x1, ptr = _rans_renorm64(x1, words, ptr)
                x2, ptr = _rans_renorm64(x2, words, ptr)
                x3, ptr = _rans_renorm64(x3, words, ptr)
        nfull = 0
    for _ in range(nfull):
        if ptr > end:
            bad = 1
            break
        x0 = _rans_step_direct(x0, ent, min_symbol, out, b, mask, P)
        mn = x0
        if K > 1:
            x1 = _rans_step_direct(x1, ent, min_symbol, out, b + one, mask, P)
            mn = min(mn, x1)
        if K > 2:
            x2 = _rans_step_direct(x2, ent, min_symbol, out, b + np.uint64(2), mask, P)
            x3 = _rans_step_direct(x3, ent, min_symbol, out, b + np.uint64(3), mask, P)
            mn = min(mn, min(x2, x3))
        b += uK
        if not rare or mn < lower:  # lane order, as the encoder wrote the words
            x0, ptr = _rans_renorm64(x0, words, ptr)
            if K > 1:
                x1, ptr = _rans_renorm64(x1, words, ptr)
            if K > 2:
                x2, ptr = _rans_renorm64(x2, words, ptr)
                x3, ptr = _rans_renorm64(x3, words, ptr)
    st[0] = np.uint32(x0)
    if K > 1:
        st[1] = np.uint32(x1)
    if K > 2:
        st[2] = np.uint32(x2)
        st[3] = np.uint32(x3)
    return ptr, bad


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def _rans_decode_kernel(words, word_off, num_words, states, direct, sparse, rare, binary, simd,
                        entries, values, packed, sidx, info, ent32, num_tables, precision,
                        chunk_size, min_symbol, period, out, status):  # pragma: no cover - numba
    # ``words`` is padded with at least 32 words after the last chunk, and the pointer is
    # checked once per step of K symbols (a step reads at most K words), so no read leaves
    # the array however damaged the stream is. Tables: ``direct`` (one table that fits
    # L1): entries[0, slot] = (f - 1) | (slot - cum) << 16 and values[0, slot] the output
    # value; else the flat tables sidx[(t << P) + slot] = symbol index and
    # info[t * alphabet + s] = f | cum << 32, uint64 (one offset per table instead of a
    # two-dimensional index per load: 1.3x faster with 64 tables, measured).
    # Deliberate kernel twins: the step is written out in six loops (rare
    # renormalisation; one direct table with 32 lanes, unrolled; one direct table with
    # fewer lanes; a period that is a multiple of the lane count; one table or a period
    # that divides the lane count, a step of K lanes at a time; any period and the
    # partial last step, symbol by symbol) so that the hot loops carry no
    # channel counter; a change to the step goes into all.
    n = out.shape[0]
    nchunks = states.shape[0]
    K = states.shape[1]
    A = np.uint64(info.shape[0] // num_tables)
    M = np.uint64(1 << precision)
    P = np.uint64(precision)
    mask = np.uint64((1 << precision) - 1)
    lower = np.uint64(RANS_STATE_LOWER)
    up = np.uint64(period)
    zero = np.uint64(0)
    for k in prange(nchunks):
        start = k * chunk_size
        stop = min(n, start + chunk_size)
        ptr = np.uint64(word_off[k])
        end = ptr + np.uint64(num_words[k])
        st = np.empty(32, np.uint32)
        for l in range(K):
            st[l] = states[k, l]
        nfull = (stop - start) // K
        bad = 0
        done = start
        if binary:  # (implies direct and sparse)
            # 4 lanes, two symbols: the states in one vector (packed = f0, f1)
            ptr, bad = decode_binary_lanes4(words, ptr, end, st, out, np.uint64(start),
                                            np.uint64(nfull), packed[0], packed[1],
                                            min_symbol, P, rare)
            done = start + K * nfull
        elif direct and sparse:
            ptr, bad = _rans_decode_sparse(words, ptr, end, st, K, rare, packed, min_symbol,
                                           out, start, nfull, mask, P)
            done = start + K * nfull
        elif simd:
            # 16 lanes per vector step (kvinfo.kernels.simd; the caller sets simd only for
            # 16 or 32 lanes and one table or a period that is a multiple of the lanes)
            multi = np.uint64(1 if num_tables > 1 else 0)
            cb = np.uint64(start % period) * multi
            sstep = M * multi
            astep = A * multi
            ent0 = entries[0]
            val0 = values[0]
            for t in range(nfull):
                if ptr > end:
                    bad = 1
                    break
                base = np.uint64(start + K * t)
                for h in range(0, K, 16):
                    uh = np.uint64(h)
                    if direct:
                        ptr = decode_direct_step16(st, uh, ent0, val0, words, ptr, out,
                                                   base + uh, P)
                    else:
                        tb = (cb + uh) * multi
                        ptr = decode_step16(st, uh, sidx, tb << P, sstep, ent32, tb * A,
                                            astep, words, ptr, out, base + uh, min_symbol, P)
                cb += np.uint64(K) * multi
                if cb == up:
                    cb = zero
            done = start + K * nfull
        elif K == 32 and direct:
            for t in range(nfull):
                if ptr > end:
                    bad = 1
                    break
                base = np.uint64(start + 32 * t)
                for l in range(32):
                    ul = np.uint64(l)
                    x = st[ul]
                    slot = x & mask
                    e = entries[0, slot]
                    out[base + ul] = values[0, slot]
                    x = ((e & np.uint32(0xFFFF)) + np.uint64(1)) * (x >> P) + (e >> np.uint32(16))
                    st[ul], ptr = _rans_renorm(x, words, ptr)
            done = start + 32 * nfull
        elif direct:
            # one direct table, fewer lanes (low-entropy streams): the slot's entry and
            # value are two independent loads, where the indirect table chains two
            for t in range(nfull):
                if ptr > end:
                    bad = 1
                    break
                base = np.uint64(start + K * t)
                for l in range(K):
                    ul = np.uint64(l)
                    x = np.uint64(st[ul])
                    slot = x & mask
                    e = entries[0, slot]
                    out[base + ul] = values[0, slot]
                    x = ((e & np.uint32(0xFFFF)) + np.uint64(1)) * (x >> P) + (e >> np.uint32(16))
                    st[ul], ptr = _rans_renorm(x, words, ptr)
            done = start + K * nfull
        elif num_tables > 1 and period % K == 0 and K == 32:
            # the table of lane l is cb + l (see the encoder): offsets that step with l;
            # 32 lanes written out as a constant trip count (the compiler unrolls it:
            # kv4 measured 1.2x faster than the same loop over K lanes)
            cb = np.uint64(start % period)
            for t in range(nfull):
                if ptr > end:
                    bad = 1
                    break
                base = np.uint64(start + 32 * t)
                so = cb << P
                io = cb * A
                for l in range(32):
                    ul = np.uint64(l)
                    x, s = _rans_step_indirect(np.uint64(st[ul]), so, io, sidx, info, mask, P)
                    out[base + ul] = np.int64(s) + min_symbol
                    st[ul], ptr = _rans_renorm(x, words, ptr)
                    so += M
                    io += A
                cb += np.uint64(32)
                if cb == up:
                    cb = zero
            done = start + 32 * nfull
        elif num_tables > 1 and period % K == 0:
            # the table of lane l is cb + l (see the encoder): offsets that step with l
            cb = np.uint64(start % period)
            for t in range(nfull):
                if ptr > end:
                    bad = 1
                    break
                base = np.uint64(start + K * t)
                so = cb << P
                io = cb * A
                for l in range(K):
                    ul = np.uint64(l)
                    x, s = _rans_step_indirect(np.uint64(st[ul]), so, io, sidx, info, mask, P)
                    out[base + ul] = np.int64(s) + min_symbol
                    st[ul], ptr = _rans_renorm(x, words, ptr)
                    so += M
                    io += A
                cb += np.uint64(K)
                if cb == up:
                    cb = zero
            done = start + K * nfull
        elif num_tables == 1 or K % period == 0:
            # one table, or the table of lane l is l % period: fixed offsets per lane
            lso = np.zeros(32, np.uint64)
            lio = np.zeros(32, np.uint64)
            if num_tables > 1:
                for l in range(32):
                    lso[l] = np.uint64(l % period) << P
                    lio[l] = np.uint64(l % period) * A
            for t in range(nfull):
                if ptr > end:
                    bad = 1
                    break
                base = np.uint64(start + K * t)
                for l in range(K):
                    ul = np.uint64(l)
                    x, s = _rans_step_indirect(np.uint64(st[ul]), lso[ul], lio[ul], sidx, info,
                                               mask, P)
                    out[base + ul] = np.int64(s) + min_symbol
                    st[ul], ptr = _rans_renorm(x, words, ptr)
            done = start + K * nfull
        if bad == 0:
            ch = np.uint64(done % period)
            tb = zero
            lane = np.uint64((done - start) % K)
            uk = np.uint64(K)
            for j in range(done, stop):
                if lane == 0 and ptr > end:
                    bad = 1
                    break
                if num_tables > 1:
                    tb = ch
                    ch += np.uint64(1)
                    if ch == up:
                        ch = zero
                x, s = _rans_step_indirect(np.uint64(st[lane]), tb << P, tb * A, sidx, info,
                                           mask, P)
                out[np.uint64(j)] = np.int64(s) + min_symbol
                st[lane], ptr = _rans_renorm(x, words, ptr)
                lane += np.uint64(1)
                if lane == uk:
                    lane = zero
        if bad == 0 and ptr != end:
            bad = 1
        if bad == 0:
            for l in range(K):
                if st[l] != lower:
                    bad = 2
        status[k] = bad


def rans_decode(words: np.ndarray, num_words: np.ndarray, states: np.ndarray,
                frequencies: np.ndarray, precision_bits: int, chunk_size: int,
                min_symbol: int, period: int, out: np.ndarray, table=None,
                simd: bool | None = None) -> np.ndarray:
    """Decode into ``out`` (1-D, the symbol dtype); returns the per-chunk status array.

    Status 0 means the chunk consumed exactly its words and every lane ended in the
    encoder's initial state ``2**16``; 1 means a word-count mismatch; 2 a state
    mismatch. ``states`` has one column per lane (1..32); element ``i`` of a chunk
    belongs to lane ``i % num_lanes``. ``words`` must hold ``num_words.sum()`` words (a
    padded copy is made). ``table`` is accepted for compatibility and ignored (the
    tables are built here, in the form that suits their size). ``simd`` chooses the
    16-lane vector steps of :mod:`kvinfo.kernels.simd` for streams of 16 or 32 lanes with
    one table or one per channel (``None``: :data:`RANS_SIMD_DECODE`, true on hosts with
    AVX-512 and VBMI2); both paths give the same symbols and status on every stream.
    """
    del table
    # words may be an unaligned view of the stream: they are copied into a padded buffer
    _check(isinstance(words, np.ndarray) and words.ndim == 1 and words.dtype == np.uint16,
           "words: expected a 1-D uint16 array")
    _check_array(num_words, "num_words", (np.uint32,), 1)
    _check_array(states, "states", (np.uint32,), 2)
    _check_array(out, "out", _SYMBOL_DTYPES, 1)
    _rans_tables(frequencies, precision_bits)
    n = out.shape[0]
    nchunks = _num_chunks(n, chunk_size)
    K = states.shape[1]
    _check(1 <= K <= RANS_LANES, f"states must have 1..32 lanes per chunk, found {K}")
    _check(chunk_size >= K and chunk_size % K == 0,
           f"chunk_size must be a multiple of the {K} lanes")
    _check(num_words.shape[0] == nchunks and states.shape[0] == nchunks,
           f"expected {nchunks} chunks, found {num_words.shape[0]} and {states.shape}")
    total = int(num_words.sum(dtype=np.int64))
    _check(total == words.shape[0], f"expected {total} words, found {words.shape[0]}")
    _check(bool(np.all(states >= RANS_STATE_LOWER)), "final states must be >= 2**16")
    num_tables, a = frequencies.shape
    _check(num_tables == 1 or num_tables == period, "num_tables must be 1 or period")
    info_t = np.iinfo(out.dtype)
    _check(info_t.min <= min_symbol and min_symbol + a - 1 <= info_t.max,
           f"symbols {min_symbol}..{min_symbol + a - 1} do not fit {out.dtype}")
    m = 1 << precision_bits
    # the indirect tables serve every loop (the direct one the full steps of one table)
    direct = num_tables == 1 and m * (4 + out.dtype.itemsize) <= RANS_DIRECT_TABLE_BYTES
    sidx = rans_slot_symbols(frequencies, precision_bits)
    cum = np.cumsum(frequencies, axis=1) - frequencies
    info = (frequencies | (cum << 32)).astype(np.uint64)  # f and cum per (table, symbol)
    if direct:
        entries, values = rans_decode_table(frequencies, precision_bits, min_symbol, out.dtype)
    else:
        entries, values = np.zeros((1, 1), np.uint32), np.zeros((1, 1), out.dtype)
    # 1, 2 or 4 lanes: states in registers; rare renormalisation when at most a quarter
    # of the steps of K symbols read a word
    sparse = direct and K in RANS_SPARSE_LANES
    rare = sparse and 4 * K * total <= n
    packed = _EMPTY_U64
    if simd is None:
        simd = RANS_SIMD_DECODE
    # 4 lanes coding two symbols: the vector loop of kvinfo.kernels.simd
    binary = bool(simd) and sparse and K == 4 and a == 2
    if binary:  # the two frequencies
        packed = frequencies[0].astype(np.uint64)
    elif sparse:  # f | (slot - cum) << 32 | symbol index << 48 per slot
        s0 = sidx[0].astype(np.intp)
        bias = (np.arange(m) - cum[0, s0]).astype(np.uint64)  # slot - cum, in [0, f)
        packed = (frequencies[0, s0].astype(np.uint64) | (bias << np.uint64(32))
                  | (s0.astype(np.uint64) << np.uint64(48)))
    # vector steps of 16 lanes: 16 or 32 lanes, one table or one per lane's channel
    simd = (bool(simd) and K % SIMD_LANES == 0 and (num_tables == 1 or period % K == 0)
            and sidx.size + GATHER_PAD_BYTES < SIMD_MAX_INDEX)
    sidx = sidx.reshape(-1)
    if simd:
        # the gathers read 4 bytes at an element: room after the last one
        pad = GATHER_PAD_BYTES
        sidx = np.concatenate([sidx, np.zeros(pad, sidx.dtype)])
        values = np.concatenate([values, np.zeros((values.shape[0], pad), values.dtype)], 1)
        ent32 = ((frequencies - 1) | (cum << 16)).astype(np.uint32).reshape(-1)
    else:
        ent32 = np.zeros(1, np.uint32)
    padded = np.empty(total + 2 * RANS_LANES, dtype=np.uint16)
    padded[:total] = words
    padded[total:] = 0
    offsets = np.zeros(nchunks, dtype=np.uint64)
    if nchunks > 1:
        np.cumsum(num_words[:-1], out=offsets[1:])
    status = np.zeros(nchunks, dtype=np.int64)
    if nchunks:
        with _threads_for(nchunks):
            _rans_decode_kernel(padded, offsets, num_words, states, direct, sparse, rare,
                                binary, simd, entries, values, packed, sidx, info.reshape(-1),
                                ent32,
                                np.int64(num_tables), np.int64(precision_bits),
                                np.int64(chunk_size), np.int64(min_symbol), np.int64(period),
                                out, status)
    return status


# ---------------------------------------------------------------------------------------
# raw-stored channels (rans store_below): split and merge in one pass over the rows
# ---------------------------------------------------------------------------------------
# Deliberate twins: split and merge are one loop with the copy direction reversed, but the
# merge must accept read-only sources (the stored section is a view of the stream), and a
# Numba kernel that writes to an argument on either branch refuses read-only arrays (tried:
# typing error). The strided paths below stay per-channel copies too: numpy's gather
# ``grid[:, idx]`` measured 3.1 ms against 0.7 for four float byte channels.
@njit(cache=True, parallel=True, nogil=True)
def _split_channels_kernel(grid, stored_idx, coded_idx, raw, coded):  # pragma: no cover
    rows = grid.shape[0]
    k = stored_idx.shape[0]
    m = coded_idx.shape[0]
    nparts = min(rows, 64)
    for p in prange(nparts):
        for r in range(p * rows // nparts, (p + 1) * rows // nparts):
            for j in range(k):
                raw[r, j] = grid[r, stored_idx[j]]
            for j in range(m):
                coded[r, j] = grid[r, coded_idx[j]]


@njit(cache=True, parallel=True, nogil=True)
def _merge_channels_kernel(coded, raw, stored_idx, coded_idx, grid):  # pragma: no cover
    rows = grid.shape[0]
    k = stored_idx.shape[0]
    m = coded_idx.shape[0]
    nparts = min(rows, 64)
    for p in prange(nparts):
        for r in range(p * rows // nparts, (p + 1) * rows // nparts):
            for j in range(k):
                grid[r, stored_idx[j]] = raw[r, j]
            for j in range(m):
                grid[r, coded_idx[j]] = coded[r, j]


#: up to this many channels a strided copy per channel is faster than the row kernel
#: (the bytes of a float: 4 channels, measured 0.7 against 2.3 ms per 850 KB slab)
_STRIDED_CHANNELS = 8


def _channel_split_args(grid, mask, other, other_name):
    _check(isinstance(grid, np.ndarray) and grid.ndim == 2 and grid.dtype.type in
           _SYMBOL_DTYPES and grid.flags.c_contiguous,
           "grid: expected a C-contiguous 2-D uint8, uint16 or int32 array")
    mask = np.asarray(mask)
    _check(mask.dtype == np.bool_ and mask.shape == (grid.shape[1],),
           f"mask: expected {grid.shape[1]} booleans, found {mask.dtype} {mask.shape}")
    k = int(mask.sum())
    _check(isinstance(other, np.ndarray) and other.dtype == grid.dtype
           and other.shape == (grid.shape[0], k) and other.flags.c_contiguous,
           f"{other_name}: expected a C-contiguous {grid.dtype} array of shape "
           f"{(grid.shape[0], k)}")
    return np.flatnonzero(mask).astype(np.int64), np.flatnonzero(~mask).astype(np.int64)


def split_channels(grid: np.ndarray, mask: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Channels (columns) of ``grid`` where ``mask`` is set go to ``raw`` (rows, k); the
    others come back as a new ``(rows, channels - k)`` array. One pass over the rows (a
    copy per channel would walk the whole array once per channel)."""
    si, ci = _channel_split_args(grid, mask, raw, "raw")
    coded = np.empty((grid.shape[0], ci.shape[0]), grid.dtype)
    if grid.shape[1] <= _STRIDED_CHANNELS:  # a few strided copies beat the row loop
        for j, ch in enumerate(si):
            raw[:, j] = grid[:, ch]
        for j, ch in enumerate(ci):
            coded[:, j] = grid[:, ch]
    elif grid.size:
        with _threads_for(max(1, grid.nbytes >> 18)):
            _split_channels_kernel(grid, si, ci, raw, coded)
    return coded


def merge_channels(coded: np.ndarray, raw: np.ndarray, mask: np.ndarray,
                   grid: np.ndarray) -> None:
    """The inverse of :func:`split_channels`, written into ``grid`` (rows, channels)."""
    si, ci = _channel_split_args(grid, mask, raw, "raw")
    _check(isinstance(coded, np.ndarray) and coded.dtype == grid.dtype
           and coded.shape == (grid.shape[0], ci.shape[0]) and coded.flags.c_contiguous,
           f"coded: expected a C-contiguous {grid.dtype} array of shape "
           f"{(grid.shape[0], ci.shape[0])}")
    if grid.shape[1] <= _STRIDED_CHANNELS:
        for j, ch in enumerate(si):
            grid[:, ch] = raw[:, j]
        for j, ch in enumerate(ci):
            grid[:, ch] = coded[:, j]
    elif grid.size:
        with _threads_for(max(1, grid.nbytes >> 18)):
            _merge_channels_kernel(coded, raw, si, ci, grid)


# ---------------------------------------------------------------------------------------
# Huffman
# ---------------------------------------------------------------------------------------
@njit(cache=True, parallel=True, nogil=True)
def _huffman_encode_kernel(idx, codes, lengths, period, chunk_size, sub_block, region_words,
                           scratch, num_words, sub_offsets):  # pragma: no cover - numba
    # codes/lengths: (num_tables, alphabet); element j uses row j % period if num_tables > 1
    n = idx.shape[0]
    nchunks = num_words.shape[0]
    spc = chunk_size // sub_block
    num_tables = codes.shape[0]
    for k in prange(nchunks):
        start = k * chunk_size
        stop = min(n, start + chunk_size)
        base = k * region_words
        wp = base
        acc = _ZERO
        nb = 0
        nsb = (stop - start + sub_block - 1) // sub_block
        for b in range(nsb):
            sub_offsets[k * spc + b] = (wp - base) * 32 + nb
            a = start + b * sub_block
            z = min(stop, a + sub_block)
            ch = a % period if num_tables > 1 else 0  # j % period, as a counter
            for j in range(a, z):
                s = idx[j]
                t = ch
                if num_tables > 1:
                    ch += 1
                    if ch == period:
                        ch = 0
                ln = lengths[t, s]
                acc = (acc << np.uint64(ln)) | np.uint64(codes[t, s])
                nb += ln
                if nb >= 32:
                    nb -= 32
                    scratch[wp] = np.uint32((acc >> np.uint64(nb)) & _U32)
                    wp += 1
        if nb > 0:
            scratch[wp] = np.uint32((acc << np.uint64(32 - nb)) & _U32)
            wp += 1
        num_words[k] = wp - base


@njit(cache=True, nogil=True)
def _gather_u32(scratch, region_words, num_words, out):  # pragma: no cover - numba
    pos = 0
    for k in range(num_words.shape[0]):
        a = k * region_words
        for i in range(num_words[k]):
            out[pos + i] = scratch[a + i]
        pos += num_words[k]


def huffman_encode(idx: np.ndarray, codes: np.ndarray, lengths: np.ndarray, chunk_size: int,
                   sub_block: int, period: int = 1):
    """Encode symbol indices ``idx`` (int32, each < len(codes)) with a prefix code.

    ``codes[s]`` holds the ``lengths[s]``-bit codeword of index ``s`` (MSB first). With
    2-D ``codes``/``lengths`` of ``period`` rows (per-channel codes), element ``j`` uses
    row ``j % period``.
    Returns ``(words uint32, num_words uint32 per chunk, sub_offsets uint32)`` where
    ``sub_offsets`` has one bit offset per sub-block (relative to its chunk's start).
    """
    _check_array(idx, "idx", (np.int32,), 1)
    if codes.ndim == 1:
        codes, lengths = codes[None, :], lengths[None, :]
    _check_array(codes, "codes", (np.uint32,), 2)
    _check_array(lengths, "lengths", (np.int64,), 2)
    _check(codes.shape == lengths.shape, "codes and lengths differ in shape")
    _check(codes.shape[0] in (1, period), "codes must have 1 or period rows")
    _check(bool(np.all((lengths >= 0) & (lengths <= 16))), "code lengths must be in [0, 16]")
    _check(sub_block >= 1 and chunk_size % sub_block == 0,
           f"chunk_size {chunk_size} must be a multiple of sub_block {sub_block}")
    n = idx.shape[0]
    if n:
        lo, hi = int(idx.min()), int(idx.max())
        _check(lo >= 0 and hi < codes.shape[1], "symbol index outside the code table")
        if codes.shape[0] == 1:
            _check(bool(np.all(lengths[0, np.unique(idx)] > 0)), "a symbol that occurs has no code")
        else:
            _check(n % period == 0, "per-row codes need whole rows of period elements")
            _check(bool(np.all(np.take_along_axis(
                lengths.T, idx.reshape(-1, period), axis=0) > 0)),
                "a symbol that occurs has no code in its row")
    nchunks = _num_chunks(n, chunk_size)
    max_len = int(lengths.max()) if lengths.size else 0
    region_words = (chunk_size * max_len + 31) // 32 + 1
    scratch = np.empty(max(nchunks * region_words, 1), dtype=np.uint32)
    num_words = np.zeros(nchunks, dtype=np.int64)
    nsub = sum((min(n, (k + 1) * chunk_size) - k * chunk_size + sub_block - 1) // sub_block
               for k in range(nchunks)) if nchunks else 0
    sub_offsets = np.zeros(max(nsub, 0), dtype=np.int64)
    if nchunks:
        with _threads_for(nchunks):
            _huffman_encode_kernel(idx, codes, lengths, np.int64(period), np.int64(chunk_size),
                                   np.int64(sub_block), np.int64(region_words), scratch,
                                   num_words, sub_offsets)
    words = np.empty(int(num_words.sum()), dtype=np.uint32)
    if nchunks:
        _gather_u32(scratch, np.int64(region_words), num_words, words)
    return words, num_words.astype(np.uint32), sub_offsets.astype(np.uint32)


@njit(cache=True, parallel=True, nogil=True)
def _huffman_decode_kernel(words, word_off, num_words, sub_offsets, table, table_bits,
                           first, first_bits, chunk_size, sub_block, period, out,
                           status):  # pragma: no cover
    # table: (num_tables, 2**table_bits); element j uses row j % period if num_tables > 1.
    # first: (num_tables, 2**first_bits), the same entries for codes of at most first_bits
    # bits and _HUFFMAN_LONG where the full table must decide (long or invalid codes):
    # 64 per-channel tables of 2**16 entries would be 16 MB, a cache miss per symbol,
    # while a code longer than first_bits has a probability below 2**-first_bits
    num_tables = table.shape[0]
    n = out.shape[0]
    nchunks = num_words.shape[0]
    spc = chunk_size // sub_block
    tb = np.uint64(64 - table_bits)
    fb = np.uint64(64 - first_bits)
    for k in prange(nchunks):
        start = k * chunk_size
        stop = min(n, start + chunk_size)
        w0 = word_off[k]
        last = w0 + num_words[k]
        nbits = num_words[k] * 32
        bitpos = 0
        bad = 0
        nsb = (stop - start + sub_block - 1) // sub_block
        for b in range(nsb):
            if sub_offsets[k * spc + b] != bitpos:
                bad = 1
                break
            a = start + b * sub_block
            z = min(stop, a + sub_block)
            # the channel of element j (j % period) as a counter: a 64-bit modulo per
            # symbol cost more than the rest of the step
            ch = a % period if num_tables > 1 else 0
            for j in range(a, z):
                w = min(w0 + (bitpos >> 5), last)
                win = (np.uint64(words[w]) << _S32) | np.uint64(words[w + 1])
                win = win << np.uint64(bitpos & 31)
                e = first[ch, win >> fb]
                if e == _HUFFMAN_LONG:
                    e = table[ch, win >> tb]
                if num_tables > 1:
                    ch += 1
                    if ch == period:
                        ch = 0
                ln = e & 0xFF
                if ln == 0:
                    bad = 2
                    break
                out[j] = e >> 8
                bitpos += ln
            if bad:
                break
            if bitpos > nbits:
                bad = 3
                break
        if bad == 0:
            if (bitpos + 31) // 32 != num_words[k]:
                bad = 4
            elif bitpos & 31:
                w = w0 + (bitpos >> 5)
                if (np.uint64(words[w]) << np.uint64(bitpos & 31)) & _U32:
                    bad = 5
        status[k] = bad


#: bits of the first-level Huffman decode table (4 KiB per table)
_HUFFMAN_FIRST_BITS = 10
#: its entry for "look in the full table" (no code has length 255)
_HUFFMAN_LONG = np.uint32(0xFF)


def huffman_decode(words: np.ndarray, num_words: np.ndarray, sub_offsets: np.ndarray,
                   lengths: np.ndarray, table_bits: int, chunk_size: int, sub_block: int,
                   n: int, period: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``n`` symbol indices; returns ``(idx int32, status per chunk)``.

    ``lengths`` are canonical code lengths (index order); the decode table has
    ``2**table_bits`` entries, ``table_bits >= max(lengths)``. Status 0 is success.
    """
    _check_array(words, "words", (np.uint32,), 1)
    _check_array(num_words, "num_words", (np.uint32,), 1)
    _check_array(sub_offsets, "sub_offsets", (np.uint32,), 1)
    _check(sub_block >= 1 and chunk_size % sub_block == 0, "chunk_size % sub_block != 0")
    nchunks = _num_chunks(n, chunk_size)
    _check(num_words.shape[0] == nchunks, f"expected {nchunks} chunks, found "
           f"{num_words.shape[0]}")
    spc = chunk_size // sub_block
    nsub = ((nchunks - 1) * spc + (n - (nchunks - 1) * chunk_size + sub_block - 1) // sub_block
            if nchunks else 0)
    _check(sub_offsets.shape[0] == nsub, f"expected {nsub} sub-block offsets, found "
           f"{sub_offsets.shape[0]}")
    total = int(num_words.astype(np.int64).sum())
    _check(total == words.shape[0], f"expected {total} words, found {words.shape[0]}")
    rows = np.atleast_2d(lengths)
    _check(rows.shape[0] in (1, period), "lengths must have 1 or period rows")
    table = np.stack([huffman_decode_table(r, table_bits) for r in rows])
    first_bits = min(table_bits, _HUFFMAN_FIRST_BITS)
    # a block of 2**(table_bits - first_bits) entries shares one entry when its first
    # entry is a code of at most first_bits bits; else the full table decides
    first = np.ascontiguousarray(table[:, :: 1 << (table_bits - first_bits)])
    first[((first & 0xFF) == 0) | ((first & 0xFF) > first_bits)] = _HUFFMAN_LONG
    padded = np.zeros(total + 2, dtype=np.uint32)
    padded[:total] = words
    offsets = np.zeros(nchunks, dtype=np.int64)
    if nchunks > 1:
        np.cumsum(num_words[:-1], out=offsets[1:])
    out = np.empty(n, dtype=np.int32)
    status = np.zeros(nchunks, dtype=np.int64)
    if nchunks:
        with _threads_for(nchunks):
            _huffman_decode_kernel(padded, offsets, num_words.astype(np.int64),
                                   sub_offsets.astype(np.int64), table, np.int64(table_bits),
                                   first, np.int64(first_bits), np.int64(chunk_size),
                                   np.int64(sub_block), np.int64(period), out, status)
    return out, status


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codewords (uint32) for code ``lengths`` (0 = unused), shortest first and
    by symbol index within a length (the DEFLATE convention)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.shape[0], dtype=np.uint32)
    order = np.lexsort((np.arange(lengths.shape[0]), lengths))
    code = 0
    prev = 0
    for s in order:
        ln = int(lengths[s])
        if ln == 0:
            continue
        code <<= ln - prev
        prev = ln
        codes[s] = code
        code += 1
    return codes


def huffman_decode_table(lengths: np.ndarray, table_bits: int) -> np.ndarray:
    """Table of ``2**table_bits`` uint32 entries ``index << 8 | length`` (length 0 = invalid).

    Raises :class:`CodecConfigError` if the lengths violate the Kraft inequality or exceed
    ``table_bits``.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    _check(1 <= table_bits <= 16, f"table_bits must be in [1, 16], found {table_bits}")
    _check(bool(np.all((lengths >= 0) & (lengths <= table_bits))),
           f"code lengths must be in [0, {table_bits}]")
    used = lengths > 0
    kraft = int((np.left_shift(1, table_bits - lengths[used])).sum())
    _check(kraft <= 1 << table_bits, "code lengths violate the Kraft inequality")
    codes = canonical_codes(lengths)
    table = np.zeros(1 << table_bits, dtype=np.uint32)
    for s in np.flatnonzero(used):
        ln = int(lengths[s])
        lo = int(codes[s]) << (table_bits - ln)
        table[lo : lo + (1 << (table_bits - ln))] = (int(s) << 8) | ln
    return table


# ---------------------------------------------------------------------------------------
# adaptive binary range coder (arith)
# ---------------------------------------------------------------------------------------
_TOP = np.uint64(1 << 24)
_PMIN = 32
_PMAX = 65536 - 32


@njit(cache=True, inline="always")
def _shift_low(low, cache, cache_size, buf, pos, end):  # pragma: no cover - numba
    if low < np.uint64(0xFF000000) or low >= np.uint64(1 << 32):
        carry = np.uint8(low >> _S32)
        temp = cache
        while True:
            if pos < end:
                buf[pos] = np.uint8(temp + carry)
            pos += 1
            temp = np.uint8(0xFF)
            cache_size -= 1
            if cache_size == 0:
                break
        cache = np.uint8((low >> np.uint64(24)) & np.uint64(0xFF))
    cache_size += 1
    low = (low & np.uint64(0x00FFFFFF)) << np.uint64(8)
    return low, cache, cache_size, pos


@njit(cache=True, parallel=True, nogil=True)
def _arith_encode_kernel(idx, chunk_size, region_bytes, period, symbol_bits, nch, prev_bits,
                         rate, extra, scratch, num_bytes):  # pragma: no cover - numba
    n = idx.shape[0]
    nchunks = num_bytes.shape[0]
    nodes = (nch << prev_bits) << symbol_bits
    limit = rate.shape[0] - 1
    pshift = symbol_bits - prev_bits
    for k in prange(nchunks):
        start = k * chunk_size
        stop = min(n, start + chunk_size)
        prob = np.full(nodes, np.int64(32768) << extra, np.int64)
        cnt = np.zeros(nodes, np.int64)
        pos = k * region_bytes
        end = pos + region_bytes
        low = _ZERO
        rng = _U32
        cache = np.uint8(0)
        cache_size = 1
        ch = start % period
        for j in range(start, stop):
            s = np.int64(idx[j])
            c = ch if nch > 1 else 0
            pb = 0
            if prev_bits > 0 and j - period >= start:
                pb = np.int64(idx[j - period]) >> pshift
            base = ((c << prev_bits) | pb) << symbol_bits
            ch += 1
            if ch == period:
                ch = 0
            node = 1
            for i in range(symbol_bits - 1, -1, -1):
                bit = (s >> i) & 1
                q = base + node
                p = prob[q]
                r = rate[cnt[q]]
                bound = (rng >> _S16) * np.uint64(p >> extra)
                if bit == 0:
                    rng = bound
                    p += (((np.int64(65536) << extra) - p) * r) >> 16
                else:
                    low += bound
                    rng -= bound
                    p -= (p * r) >> 16
                prob[q] = min(max(p, np.int64(_PMIN) << extra), np.int64(_PMAX) << extra)
                if cnt[q] < limit:
                    cnt[q] += 1
                while rng < _TOP:
                    rng = rng << np.uint64(8)
                    low, cache, cache_size, pos = _shift_low(low, cache, cache_size, scratch,
                                                             pos, end)
                node = 2 * node + bit
        for _ in range(5):
            low, cache, cache_size, pos = _shift_low(low, cache, cache_size, scratch, pos, end)
        num_bytes[k] = pos - k * region_bytes


def _arith_rate(adapt_limit: int) -> np.ndarray:
    return (65536 // (np.arange(adapt_limit + 1, dtype=np.int64) + 2)).astype(np.int64)


def arith_encode(idx: np.ndarray, chunk_size: int, period: int, symbol_bits: int,
                 num_channel_contexts: int, prev_bits: int, adapt_limit: int,
                 prob_bits: int = 16):
    """Encode indices ``idx`` (int32 in ``[0, 2**symbol_bits)``) with the adaptive
    binary-tree model; returns ``(payload uint8, num_bytes uint32 per chunk)``.

    ``prob_bits`` (16..30) is the precision the adaptive probabilities are kept at; the
    coder uses their top 16 bits. Format version 1 keeps 16 bits, whose truncated
    updates bias skewed probabilities (p = 0.02 settles near 0.03); version 2 keeps 28."""
    _check_array(idx, "idx", (np.int32,), 1)
    _check(1 <= symbol_bits <= 16, f"symbol_bits must be in [1, 16], found {symbol_bits}")
    _check(0 <= prev_bits <= symbol_bits, "prev_bits must be in [0, symbol_bits]")
    _check(num_channel_contexts in (1, period), "num_channel_contexts must be 1 or period")
    _check((num_channel_contexts << (prev_bits + symbol_bits)) <= 1 << 22,
           "too many adaptive contexts")
    _check(1 <= adapt_limit <= 65534, "adapt_limit must be in [1, 65534]")
    _check(chunk_size >= 1, "chunk_size must be >= 1")
    _check(16 <= prob_bits <= 30, f"prob_bits must be in [16, 30], found {prob_bits}")
    n = idx.shape[0]
    if n:
        _check(int(idx.min()) >= 0 and int(idx.max()) < 1 << symbol_bits,
               "symbol index outside [0, 2**symbol_bits)")
    nchunks = _num_chunks(n, chunk_size)
    region = (min(chunk_size, max(n, 1)) * symbol_bits * 12) // 8 + 16
    scratch = np.empty(max(nchunks * region, 1), dtype=np.uint8)
    num_bytes = np.zeros(nchunks, dtype=np.int64)
    if nchunks:
        with _threads_for(nchunks):
            _arith_encode_kernel(idx, np.int64(chunk_size), np.int64(region), np.int64(period),
                                 np.int64(symbol_bits), np.int64(num_channel_contexts),
                                 np.int64(prev_bits), _arith_rate(adapt_limit),
                                 np.int64(prob_bits - 16), scratch, num_bytes)
    if np.any(num_bytes > region):  # pragma: no cover - the bound is proven in the docs
        raise CodecConfigError("arith: output exceeded its proven bound")
    parts = [scratch[k * region : k * region + int(num_bytes[k])] for k in range(nchunks)]
    payload = np.concatenate(parts) if parts else np.empty(0, np.uint8)
    return payload, num_bytes.astype(np.uint32)


@njit(cache=True, parallel=True, nogil=True)
def _arith_decode_kernel(buf, byte_off, num_bytes, chunk_size, period, symbol_bits, nch,
                         prev_bits, rate, extra, out, status):  # pragma: no cover - numba
    n = out.shape[0]
    nchunks = num_bytes.shape[0]
    nodes = (nch << prev_bits) << symbol_bits
    limit = rate.shape[0] - 1
    pshift = symbol_bits - prev_bits
    for k in prange(nchunks):
        start = k * chunk_size
        stop = min(n, start + chunk_size)
        prob = np.full(nodes, np.int64(32768) << extra, np.int64)
        cnt = np.zeros(nodes, np.int64)
        pos = byte_off[k]
        end = pos + num_bytes[k]
        rng = _U32
        code = _ZERO
        for _ in range(5):
            b = np.uint64(buf[pos]) if pos < end else _ZERO
            pos += 1
            code = ((code << np.uint64(8)) | b) & _U32
        ch = start % period
        for j in range(start, stop):
            c = ch if nch > 1 else 0
            pb = 0
            if prev_bits > 0 and j - period >= start:
                pb = np.int64(out[j - period]) >> pshift
            base = ((c << prev_bits) | pb) << symbol_bits
            ch += 1
            if ch == period:
                ch = 0
            node = 1
            for _i in range(symbol_bits):
                q = base + node
                p = prob[q]
                r = rate[cnt[q]]
                bound = (rng >> _S16) * np.uint64(p >> extra)
                if code < bound:
                    rng = bound
                    p += (((np.int64(65536) << extra) - p) * r) >> 16
                    bit = 0
                else:
                    code -= bound
                    rng -= bound
                    p -= (p * r) >> 16
                    bit = 1
                prob[q] = min(max(p, np.int64(_PMIN) << extra), np.int64(_PMAX) << extra)
                if cnt[q] < limit:
                    cnt[q] += 1
                while rng < _TOP:
                    rng = rng << np.uint64(8)
                    b = np.uint64(buf[pos]) if pos < end else _ZERO
                    pos += 1
                    code = ((code << np.uint64(8)) | b) & _U32
                node = 2 * node + bit
            out[j] = node - (1 << symbol_bits)
        status[k] = 0 if pos == end else 1


def arith_decode(payload: np.ndarray, num_bytes: np.ndarray, n: int, chunk_size: int,
                 period: int, symbol_bits: int, num_channel_contexts: int, prev_bits: int,
                 adapt_limit: int, prob_bits: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``n`` indices; returns ``(idx int32, status per chunk)`` (0 = consumed
    exactly its bytes)."""
    _check_array(payload, "payload", (np.uint8,), 1)
    _check_array(num_bytes, "num_bytes", (np.uint32,), 1)
    _check(1 <= symbol_bits <= 16, "symbol_bits must be in [1, 16]")
    _check(0 <= prev_bits <= symbol_bits, "prev_bits must be in [0, symbol_bits]")
    _check(num_channel_contexts in (1, period), "num_channel_contexts must be 1 or period")
    _check((num_channel_contexts << (prev_bits + symbol_bits)) <= 1 << 22,
           "too many adaptive contexts")
    _check(1 <= adapt_limit <= 65534, "adapt_limit must be in [1, 65534]")
    _check(chunk_size >= 1 and period >= 1, "chunk_size and period must be >= 1")
    _check(16 <= prob_bits <= 30, f"prob_bits must be in [16, 30], found {prob_bits}")
    nchunks = _num_chunks(n, chunk_size)
    _check(num_bytes.shape[0] == nchunks, f"expected {nchunks} chunks, found "
           f"{num_bytes.shape[0]}")
    total = int(num_bytes.astype(np.int64).sum())
    _check(total == payload.shape[0], f"expected {total} bytes, found {payload.shape[0]}")
    offsets = np.zeros(nchunks, dtype=np.int64)
    if nchunks > 1:
        np.cumsum(num_bytes[:-1], out=offsets[1:])
    out = np.empty(n, dtype=np.int32)
    status = np.zeros(nchunks, dtype=np.int64)
    if nchunks:
        with _threads_for(nchunks):
            _arith_decode_kernel(payload, offsets, num_bytes.astype(np.int64), np.int64(chunk_size),
                                 np.int64(period), np.int64(symbol_bits),
                                 np.int64(num_channel_contexts), np.int64(prev_bits),
                                 _arith_rate(adapt_limit), np.int64(prob_bits - 16), out, status)
    return out, status


# ---------------------------------------------------------------------------------------
# frequency-table quantization
# ---------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _heap_less(key, idx, a, b):  # pragma: no cover - numba
    # the order of Python tuples (key, index): ties in the key go to the smaller index
    return key[a] < key[b] or (key[a] == key[b] and idx[a] < idx[b])


@njit(cache=True, nogil=True)
def _heap_sift_down(key, idx, size, pos):  # pragma: no cover - numba
    while True:
        c = 2 * pos + 1
        if c >= size:
            return
        if c + 1 < size and _heap_less(key, idx, c + 1, c):
            c += 1
        if not _heap_less(key, idx, c, pos):
            return
        key[pos], key[c] = key[c], key[pos]
        idx[pos], idx[c] = idx[c], idx[pos]
        pos = c


@njit(cache=True, nogil=True)
def _quantize_rows_kernel(counts, m, out, key, idx):  # pragma: no cover - numba
    # Greedy unit placement of models.quantize_counts, row by row, with a binary min-heap
    # of (key, symbol) pairs: (key, symbol) pairs are distinct, so any heap pops them in
    # the same order as Python's heapq and the frequencies are identical. Keys are the
    # same float64 expressions: -c * log2((f + 1) / f) for a unit added, c * log2(f /
    # (f - 1)) for a unit removed. Rows with no count get all the mass on symbol 0.
    T, A = counts.shape
    for t in range(T):
        row = counts[t]
        f = out[t]
        total = np.int64(0)
        for s in range(A):
            total += row[s]
        if total == 0:
            f[0] = m
            continue
        fsum = np.int64(0)
        for s in range(A):
            c = row[s]
            if c > 0:
                v = (c * m) // total
                f[s] = v if v > 1 else 1
                fsum += f[s]
        diff = m - fsum
        size = 0
        if diff > 0:
            for s in range(A):
                c = row[s]
                if c > 0:
                    key[size] = -c * math.log2(np.float64(f[s] + 1) / np.float64(f[s]))
                    idx[size] = s
                    size += 1
            for p in range(size // 2 - 1, -1, -1):
                _heap_sift_down(key, idx, size, p)
            for _ in range(diff):
                s = idx[0]
                f[s] += 1
                key[0] = -row[s] * math.log2(np.float64(f[s] + 1) / np.float64(f[s]))
                _heap_sift_down(key, idx, size, 0)
        elif diff < 0:
            for s in range(A):
                c = row[s]
                if c > 0 and f[s] > 1:
                    key[size] = c * math.log2(np.float64(f[s]) / np.float64(f[s] - 1))
                    idx[size] = s
                    size += 1
            for p in range(size // 2 - 1, -1, -1):
                _heap_sift_down(key, idx, size, p)
            for _ in range(-diff):
                s = idx[0]
                f[s] -= 1
                if f[s] > 1:
                    key[0] = row[s] * math.log2(np.float64(f[s]) / np.float64(f[s] - 1))
                else:  # pop: the last leaf replaces the root
                    size -= 1
                    key[0] = key[size]
                    idx[0] = idx[size]
                _heap_sift_down(key, idx, size, 0)


def quantize_rows(counts: np.ndarray, precision_bits: int) -> np.ndarray:
    """Quantized frequencies of every row of ``counts`` (int64, ``(num_tables,
    alphabet_size)``), each row summing to ``2**precision_bits``.

    The greedy of :func:`kvinfo.codecs.models.quantize_counts` (start from the rounded-down
    scaling with every used symbol at least 1, then add or remove single units where they
    change the cross-entropy most or least), compiled; the result is identical to it. A
    row of zeros gets all its mass on symbol 0. Raises :class:`CodecConfigError` on a
    negative count or a row with more used symbols than ``2**precision_bits`` slots.
    """
    _check_array(counts, "counts", (np.int64,), 2)
    _check(1 <= precision_bits <= 30, f"precision_bits must be in [1, 30], found "
           f"{precision_bits}")
    _check(counts.shape[0] >= 1 and counts.shape[1] >= 1, "counts must be non-empty")
    _check(not bool((counts < 0).any()), "counts must be non-negative")
    m = 1 << precision_bits
    used = int((counts > 0).sum(axis=1).max())
    _check(used <= m, f"{used} distinct symbols do not fit a table of precision "
           f"{precision_bits} bits (at most {m})")
    # (c * m) must not overflow int64
    _check(int(counts.max()) < (1 << 62) >> precision_bits, "counts too large")
    out = np.zeros(counts.shape, np.int64)
    a = counts.shape[1]
    _quantize_rows_kernel(counts, np.int64(m), out, np.empty(a, np.float64),
                          np.empty(a, np.int64))
    return out


# ---------------------------------------------------------------------------------------
# exp-Golomb packed frequency tables (format version 2)
# ---------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _eg_read(buf, nbits, pos, k):  # pragma: no cover - numba
    z = 0
    while True:
        if pos >= nbits or z > 40:
            return -1, pos
        b = (buf[pos >> 3] >> (7 - (pos & 7))) & 1
        pos += 1
        if b:
            break
        z += 1
    width = z + k
    if pos + width > nbits:
        return -1, pos
    u = np.int64(1)
    for _ in range(width):
        u = (u << 1) | ((buf[pos >> 3] >> (7 - (pos & 7))) & 1)
        pos += 1
    return u - (np.int64(1) << k), pos


@njit(cache=True, nogil=True)
def _eg_tables_kernel(buf, out, max_value):  # pragma: no cover - numba
    nbits = buf.shape[0] * 8
    pos = 0
    T, A = out.shape
    for t in range(T):
        if pos + 4 > nbits:
            return 1, pos
        k = 0
        for _ in range(4):
            k = (k << 1) | ((buf[pos >> 3] >> (7 - (pos & 7))) & 1)
            pos += 1
        m, pos = _eg_read(buf, nbits, pos, 0)
        if m < 0 or m + 1 > A:
            return 2, pos
        i = -1
        for _ in range(m + 1):
            g, pos = _eg_read(buf, nbits, pos, 0)
            if g < 0:
                return 3, pos
            i += g + 1
            if i >= A:
                return 4, pos
            v, pos = _eg_read(buf, nbits, pos, k)
            if v < 0 or v + 1 > max_value:
                return 5, pos
            out[t, i] = v + 1
    return 0, pos


@njit(cache=True, inline="always")
def _bit_floor_log2(u):  # pragma: no cover - numba
    nb = 0
    while (u >> (nb + 1)) > 0:
        nb += 1
    return nb


@njit(cache=True, inline="always")
def _eg_write(out, pos, v, k):  # pragma: no cover - numba
    # EGk(v): u = v + 2**k of b + 1 bits; b - k zero bits, then u MSB first
    u = v + (np.int64(1) << k)
    b = _bit_floor_log2(u)
    pos += b - k
    for j in range(b, -1, -1):
        if (u >> j) & 1:
            out[pos >> 3] |= np.uint8(1 << (7 - (pos & 7)))
        pos += 1
    return pos


@njit(cache=True, nogil=True)
def _eg_pack_kernel(F, out):  # pragma: no cover - numba
    T, A = F.shape
    pos = 0
    for t in range(T):
        best_k = 0
        best = np.int64(1) << 62
        for k in range(16):
            c = np.int64(0)
            for s in range(A):
                f = F[t, s]
                if f > 0:
                    c += 2 * _bit_floor_log2(f - 1 + (np.int64(1) << k)) - k + 1
            if c < best:  # the first minimum, as numpy's argmin
                best = c
                best_k = k
        for j in range(3, -1, -1):
            if (best_k >> j) & 1:
                out[pos >> 3] |= np.uint8(1 << (7 - (pos & 7)))
            pos += 1
        m = 0
        for s in range(A):
            if F[t, s] > 0:
                m += 1
        pos = _eg_write(out, pos, np.int64(m - 1), 0)
        prev = -1
        for s in range(A):
            f = F[t, s]
            if f > 0:
                pos = _eg_write(out, pos, np.int64(s - prev - 1), 0)
                pos = _eg_write(out, pos, f - 1, best_k)
                prev = s
    return pos


def pack_frequency_tables(frequencies: np.ndarray) -> bytes:
    """Exp-Golomb bit packing of frequency rows (format version 2, the layout of
    :func:`kvinfo.codecs.models.pack_frequency_tables`), compiled. ``frequencies`` is an
    int64 ``(num_tables, alphabet_size)`` array of non-negative values below 2**40, every
    row with a used symbol."""
    _check_array(frequencies, "frequencies", (np.int64,), 2)
    F = frequencies
    _check(F.shape[0] >= 1 and F.shape[1] >= 1, "frequencies must be non-empty")
    _check(not bool((F < 0).any()) and int(F.max()) < 1 << 40,
           "frequencies must lie in [0, 2**40)")
    _check(bool(F.any(axis=1).all()), "every table row needs a used symbol")
    nnz = int(np.count_nonzero(F))
    # per row: 4 + at most 35 bits of count; per used symbol at most 35 + 83 bits
    out = np.zeros((F.shape[0] * 40 + nnz * 120) // 8 + 1, np.uint8)
    bits = _eg_pack_kernel(F, out)
    return out[: (bits + 7) // 8].tobytes()


def unpack_frequency_tables(buf: np.ndarray, num_tables: int, alphabet_size: int,
                            max_value: int) -> tuple[np.ndarray, int]:
    """Decode exp-Golomb packed tables (``docs/container-format.md``, version 2).

    Returns ``(frequencies int64 (num_tables, alphabet_size), bits_used)``; raises
    :class:`CodecConfigError` on a truncated or out-of-range table (the caller turns it
    into a stream error). Every read is bounds-checked against ``buf``.
    """
    _check_array(buf, "buf", (np.uint8,), 1)
    _check(num_tables >= 1 and 1 <= alphabet_size <= 1 << 16, "bad table shape")
    out = np.zeros((num_tables, alphabet_size), np.int64)
    status, pos = _eg_tables_kernel(buf, out, np.int64(max_value))
    if status:
        raise CodecConfigError(f"packed frequency table damaged (code {status} at bit {pos})")
    return out, int(pos)


# ---------------------------------------------------------------------------------------
def warmup() -> None:
    """Compile (or load from cache) every kernel for every supported dtype on tiny input."""
    for dt in _SYMBOL_DTYPES:
        sym = (np.arange(70) % 5).astype(dt)
        freq = np.array([[1024, 1024, 1024, 512, 512]], dtype=np.int64)
        histogram(sym, 0, 5)
        words, nw, st = rans_encode(sym, 0, freq, 12, 64)
        rans_decode(words, nw, st, freq, 12, 64, 0, 1, np.empty(70, dt))
        freq2 = np.tile(freq, (7, 1))
        words, nw, st = rans_encode(sym, 0, freq2, 12, 64, period=7)
        rans_decode(words, nw, st, freq2, 12, 64, 0, 7, np.empty(70, dt))
    idx = (np.arange(70) % 5).astype(np.int32)
    lengths = np.array([2, 2, 2, 3, 3], dtype=np.int64)
    w, nw, so = huffman_encode(idx, canonical_codes(lengths), lengths, 64, 16)
    huffman_decode(w, nw, so, lengths, 3, 64, 16, 70)
    p, nb = arith_encode(idx, 64, 7, 3, 7, 3, 1022)
    arith_decode(p, nb, 70, 64, 7, 3, 7, 3, 1022)
    for dt in _SYMBOL_DTYPES:
        g = np.zeros((3, 4), dt)
        mk = np.array([True, False, True, False])
        raw = np.empty((3, 2), dt)
        merge_channels(split_channels(g, mk, raw), raw, mk, g)
    quantize_rows(np.array([[5, 0, 1, 2]], np.int64), 4)
    pack_frequency_tables(np.array([[5, 0, 1, 2]], np.int64))
