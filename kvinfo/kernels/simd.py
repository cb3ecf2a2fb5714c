"""Explicit SIMD steps for the CPU rANS coders, written as LLVM IR through Numba intrinsics.

One call of :func:`decode_step16` or :func:`decode_direct_step16` decodes one symbol in
each of 16 consecutive interleaved lanes, the way the scalar loop of
:mod:`kvinfo.kernels.cpu` does lane after lane: the 16 states are one vector, the table
look-ups are gathers (``llvm.masked.gather``), and the renormalisation reads the lanes'
words with one expanding load (``llvm.masked.expandload``): lane ``i`` that needs a word
takes ``words[ptr + (number of lanes below i that need one)]``, which is the order in
which the scalar loop reads them, so the two decode the same streams to the same symbols,
states and word pointer (tested against each other, damaged streams included).
:func:`encode_step16` is the encoder's step of 16 lanes, and :func:`decode_binary_lanes4`
the whole decode loop of a chunk of 4 lanes coding two symbols.

These are generic LLVM intrinsics, correct on every target; they are fast where the
target has AVX-512 gathers and VBMI2's ``vpexpandw`` (:data:`HOST_HAS_SIMD`).
Elsewhere LLVM scalarises the expanding load, which would be slower than the scalar loop,
so the decoder uses them only where the host has them.

Each step reads 4 bytes at every gathered table index: a table of 1- or 2-byte elements
must be padded with at least 3 (or 1) elements after its last (:data:`GATHER_PAD_BYTES`).
"""

from __future__ import annotations

from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

#: lanes per SIMD step
SIMD_LANES = 16
#: the gathers take 32-bit element indices: the vector steps serve tables of fewer elements
SIMD_MAX_INDEX = 1 << 31
#: bytes that a table read by :func:`decode_step16` must hold after its last element
GATHER_PAD_BYTES = 4


def _host_features() -> set[str]:
    try:
        feats = llvm_binding.get_host_cpu_features()
    except Exception:  # pragma: no cover - a host llvmlite cannot describe
        return set()
    return {name for name, on in feats.items() if on}


#: whether this host runs the vector steps faster than the scalar loops (AVX-512 with
#: VBMI2's ``vpexpandw``/``vpcompressw``)
HOST_HAS_SIMD = {"avx512f", "avx512bw", "avx512vbmi2"} <= _host_features()

_I1, _I8, _I16, _I32, _I64 = (ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32),
                             ir.IntType(64))


def _vec(t):
    return ir.VectorType(t, SIMD_LANES)


def _splat(builder, value, t, lanes=SIMD_LANES):
    vt = ir.VectorType(t, lanes)
    v = builder.insert_element(ir.Constant(vt, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes))


def _function(builder, name, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


class _VectorGEP(ir.Instruction):
    """``getelementptr inbounds elem, ptr base, <16 x i32> index``: 16 element pointers
    from one base and 32-bit indices (llvmlite's builder takes scalar indices only). A
    gather through it compiles to one ``vpgatherdd`` with a base register for 16 lanes,
    where 64-bit addresses take two ``vpgatherqd``."""

    def __init__(self, parent, base, index, elem_type):
        # typed as i8 pointers whatever the element (LLVM's pointers are opaque): one
        # declaration of each gather serves every table
        super().__init__(parent, ir.VectorType(_I8.as_pointer(), SIMD_LANES), "getelementptr",
                         [base, index])
        self.elem_type = elem_type

    def descr(self, buf):
        base, index = self.operands
        buf.append(f"getelementptr inbounds {self.elem_type}, {base.type} "
                   f"{base.get_reference()}, {index.type} {index.get_reference()}\n")


def _gather(builder, base, index, elem):
    """``elem`` values (i32, i64 or double) read at element ``index`` of the array whose
    data pointer is ``base``, for 16 i32 indices (each below 2**31: the callers only take
    the vector path for tables that small): one ``llvm.masked.gather`` (alignment 1 below
    4-byte array elements)."""
    ptrs = _VectorGEP(builder.block, base, index, base.type.pointee)
    builder._insert(ptrs)
    itemsize = base.type.pointee.width // 8 if isinstance(base.type.pointee, ir.IntType) else 8
    name = {_I32: "v16i32", _I64: "v16i64"}.get(elem, "v16f64")
    gather = _function(builder, f"llvm.masked.gather.{name}.v16p0", _vec(elem),
                       [ptrs.type, _I32, _vec(_I1), _vec(elem)])
    zero = 0.0 if isinstance(elem, ir.DoubleType) else 0
    return builder.call(gather, [ptrs, ir.Constant(_I32, 1 if itemsize < 4 else itemsize),
                                 ir.Constant(_vec(_I1), [1] * SIMD_LANES),
                                 ir.Constant(_vec(elem), [zero] * SIMD_LANES)])


def _gather_u32(builder, base, index):
    """``base[index]`` for 16 i32 indices into an array of 1-, 2- or 4-byte unsigned
    elements, as i32: one gather of 4 bytes at each element, masked."""
    got = _gather(builder, base, index, _I32)
    itemsize = base.type.pointee.width // 8
    if itemsize < 4:
        keep = (1 << (8 * itemsize)) - 1
        got = builder.and_(got, ir.Constant(_vec(_I32), [keep] * SIMD_LANES))
    return got


def _lane_offsets(builder, first, step):
    """``first + i * step`` for i in 0..15 from uint64 scalars, as an i32 vector (table
    offsets per lane; the tables of the vector path hold fewer than 2**31 elements)."""
    lanes = ir.Constant(_vec(_I32), list(range(SIMD_LANES)))
    return builder.add(_splat(builder, builder.trunc(first, _I32), _I32),
                       builder.mul(lanes, _splat(builder, builder.trunc(step, _I32), _I32)))


def _element_ptr(builder, context, arytype, ary, index):
    a = context.make_array(arytype)(context, builder, ary)
    return builder.gep(a.data, [index]), a.data


def _take_words(builder, wptr, x, need):
    """The lanes of state vector ``x`` (any lane count and integer width) flagged in
    ``need`` shift in the next 16-bit words at ``wptr`` in lane order (one expanding load);
    returns (states, number of words taken, i64)."""
    lanes = x.type.count
    w16 = ir.VectorType(_I16, lanes)
    expand = _function(builder, f"llvm.masked.expandload.v{lanes}i16", w16,
                       [wptr.type, ir.VectorType(_I1, lanes), w16])
    w = builder.call(expand, [wptr, need, ir.Constant(w16, [0] * lanes)])
    shifted = builder.or_(builder.shl(x, ir.Constant(x.type, [16] * lanes)),
                          builder.zext(w, x.type))
    bits = builder.zext(builder.bitcast(need, ir.IntType(lanes)), _I64)
    popcount = _function(builder, "llvm.ctpop.i64", _I64, [_I64])
    return builder.select(need, shifted, x), builder.call(popcount, [bits])


def _renormalise(builder, context, x, words_t, words, ptr):
    """Lanes below 2**16 take the next words in lane order; returns (states, ptr)."""
    need = builder.icmp_unsigned("<", x, ir.Constant(_vec(_I32), [1 << 16] * SIMD_LANES))
    wptr, _ = _element_ptr(builder, context, words_t, words, ptr)
    x, taken = _take_words(builder, wptr, x, need)
    return x, builder.add(ptr, taken)


def _store_symbols(builder, context, out_t, out, obase, values32):
    optr, _ = _element_ptr(builder, context, out_t, out, obase)
    width = out_t.dtype.bitwidth
    v = values32 if width == 32 else builder.trunc(values32, _vec(ir.IntType(width)))
    vp = builder.bitcast(optr, _vec(ir.IntType(width)).as_pointer())
    builder.store(v, vp, align=1)


def _precision(builder, prec_v):
    """``(P, 2**P - 1)`` as i32 scalars from the uint64 precision argument."""
    prec32 = builder.trunc(prec_v, _I32)
    return prec32, builder.sub(builder.shl(ir.Constant(_I32, 1), prec32), ir.Constant(_I32, 1))


def _frequency(builder, e):
    """``f`` from a packed entry ``(f - 1) | other << 16`` (i32 vector)."""
    return builder.add(builder.and_(e, ir.Constant(_vec(_I32), [0xFFFF] * SIMD_LANES)),
                       ir.Constant(_vec(_I32), [1] * SIMD_LANES))


def _load_states(builder, context, st_t, st, lane0):
    sptr, _ = _element_ptr(builder, context, st_t, st, lane0)
    vp = builder.bitcast(sptr, _vec(_I32).as_pointer())
    return builder.load(vp, align=4), vp


@intrinsic
def decode_step16(typingctx, st, lane0, sidx, so, sstep, ent, io, astep, words, ptr, out,
                  obase, min_symbol, precision):
    """Decode one symbol in each of lanes ``lane0 .. lane0 + 15`` through the flat
    indirect tables; returns the new word pointer.

    Lane ``lane0 + i`` uses the table whose slots start at ``so + i * sstep`` in ``sidx``
    (slot -> symbol index, uint8 or uint16) and whose entries start at ``io + i * astep``
    in ``ent`` (uint32, ``(f - 1) | cum << 16`` per symbol); the symbols go to
    ``out[obase + i]`` as ``min_symbol + index``. Scalars are uint64 (``min_symbol``
    int64); ``st`` is the uint32 lane-state array."""
    sig = types.uint64(st, lane0, sidx, so, sstep, ent, io, astep, words, ptr, out, obase,
                       min_symbol, precision)

    def codegen(context, builder, signature, args):
        (st_v, lane0_v, sidx_v, so_v, sstep_v, ent_v, io_v, astep_v, words_v, ptr_v, out_v,
         obase_v, min_v, prec_v) = args
        ta = signature.args
        x, xp = _load_states(builder, context, ta[0], st_v, lane0_v)
        prec32, mask = _precision(builder, prec_v)
        slot = builder.and_(x, _splat(builder, mask, _I32))
        _, sbase = _element_ptr(builder, context, ta[2], sidx_v, ir.Constant(_I64, 0))
        s = _gather_u32(builder, sbase, builder.add(_lane_offsets(builder, so_v, sstep_v), slot))
        _, ebase = _element_ptr(builder, context, ta[5], ent_v, ir.Constant(_I64, 0))
        e = _gather_u32(builder, ebase, builder.add(_lane_offsets(builder, io_v, astep_v), s))
        f = _frequency(builder, e)
        cum = builder.lshr(e, ir.Constant(_vec(_I32), [16] * SIMD_LANES))
        x = builder.sub(builder.add(builder.mul(f, builder.lshr(x, _splat(builder, prec32,
                                                                             _I32))), slot),
                        cum)
        _store_symbols(builder, context, ta[10], out_v, obase_v,
                       builder.add(s, _splat(builder, builder.trunc(min_v, _I32), _I32)))
        x, ptr_new = _renormalise(builder, context, x, ta[8], words_v, ptr_v)
        builder.store(x, xp, align=4)
        return ptr_new

    return sig, codegen


@intrinsic
def decode_direct_step16(typingctx, st, lane0, entries, values, words, ptr, out, obase,
                         precision):
    """Decode one symbol in each of lanes ``lane0 .. lane0 + 15`` through one direct slot
    table: ``entries[slot]`` = ``(f - 1) | (slot - cum) << 16`` (uint32) and
    ``values[slot]`` the output value (the output dtype, padded by
    :data:`GATHER_PAD_BYTES`); returns the new word pointer."""
    sig = types.uint64(st, lane0, entries, values, words, ptr, out, obase, precision)

    def codegen(context, builder, signature, args):
        st_v, lane0_v, ent_v, val_v, words_v, ptr_v, out_v, obase_v, prec_v = args
        ta = signature.args
        x, xp = _load_states(builder, context, ta[0], st_v, lane0_v)
        prec32, mask = _precision(builder, prec_v)
        slot = builder.and_(x, _splat(builder, mask, _I32))
        _, ebase = _element_ptr(builder, context, ta[2], ent_v, ir.Constant(_I64, 0))
        _, vbase = _element_ptr(builder, context, ta[3], val_v, ir.Constant(_I64, 0))
        e = _gather_u32(builder, ebase, slot)
        v = _gather_u32(builder, vbase, slot)
        f = _frequency(builder, e)
        x = builder.add(builder.mul(f, builder.lshr(x, _splat(builder, prec32, _I32))),
                        builder.lshr(e, ir.Constant(_vec(_I32), [16] * SIMD_LANES)))
        _store_symbols(builder, context, ta[6], out_v, obase_v, v)
        x, ptr_new = _renormalise(builder, context, x, ta[4], words_v, ptr_v)
        builder.store(x, xp, align=4)
        return ptr_new

    return sig, codegen


def _reverse(builder, v):
    rev = ir.Constant(_vec(_I32), list(range(SIMD_LANES - 1, -1, -1)))
    return builder.shuffle_vector(v, v, rev)


def _store_emitted(builder, context, scratch_t, scratch, ptr, w, need):
    """Store the words ``w`` of the lanes in ``need`` at ``scratch[ptr - count .. ptr)`` in
    ascending lane order, with one full 16-word store at ``scratch[ptr - 16]``: the lanes
    are reversed, compressed in a register (``llvm.experimental.vector.compress``) and
    reversed back, so the kept words end at ``ptr`` and the 16 - count words below them
    are scratch the next steps overwrite (the caller leaves 16 words of room below every
    chunk's region). A compressing store to memory (``llvm.masked.compressstore``, one
    ``vpcompressw`` with a memory operand) is microcoded on AMD Zen 4: with it kv4's codec
    encode took 14.9 ms there, against 8.9 ms with this."""
    compress = _function(builder, "llvm.experimental.vector.compress.v16i16", _vec(_I16),
                         [_vec(_I16), _vec(_I1), _vec(_I16)])
    packed = builder.call(compress, [_reverse(builder, w), _reverse(builder, need),
                                     ir.Constant(_vec(_I16), ir.Undefined)])
    wptr, _ = _element_ptr(builder, context, scratch_t, scratch,
                           builder.sub(ptr, ir.Constant(_I64, SIMD_LANES)))
    vp = builder.bitcast(wptr, _vec(_I16).as_pointer())
    builder.store(_reverse(builder, packed), vp, align=2)


#: words of room :func:`encode_step16` needs below the lowest word a chunk can emit
ENCODE_ROOM_WORDS = SIMD_LANES

#: bit of :func:`encode_step16`'s result that flags a symbol it could not code
ENCODE_BAD_BIT = 63


@intrinsic
def encode_step16(typingctx, st, lane0, sym, base, min_symbol, alphabet, loff, ro, ftab, rcp,
                  scratch, ptr, precision):
    """Encode one symbol in each of lanes ``lane0 + 15`` down to ``lane0`` (the encoder
    walks backwards), as the scalar encoder does lane after lane.

    ``st`` is the uint64 lane-state array; the symbols are ``sym[base .. base + 15]``;
    lane ``lane0 + i`` codes with table row ``loff[ro + i] + symbol index`` of ``ftab``
    (uint64, ``f | cum << 32``) and ``rcp`` (float64, ``1 / f``). The lanes whose state
    reaches ``f << (32 - precision)`` first emit their low 16 bits, stored just below
    ``scratch[ptr]`` in ascending lane order (where the scalar loop, walking the lanes
    down, puts them) by :func:`_store_emitted`. Returns the new word pointer, with
    bit :data:`ENCODE_BAD_BIT` set when a symbol lies outside the alphabet or has
    frequency 0 (the states are then meaningless and the chunk is refused)."""
    sig = types.uint64(st, lane0, sym, base, min_symbol, alphabet, loff, ro, ftab, rcp,
                       scratch, ptr, precision)

    def codegen(context, builder, signature, args):
        (st_v, lane0_v, sym_v, base_v, min_v, a_v, loff_v, ro_v, ftab_v, rcp_v, scr_v, ptr_v,
         prec_v) = args
        ta = signature.args
        sptr, _ = _element_ptr(builder, context, ta[0], st_v, lane0_v)
        xp = builder.bitcast(sptr, _vec(_I64).as_pointer())
        x = builder.load(xp, align=8)
        # symbol indices, checked against the alphabet
        width = ta[2].dtype.bitwidth
        yptr, _ = _element_ptr(builder, context, ta[2], sym_v, base_v)
        y = builder.load(builder.bitcast(yptr, _vec(ir.IntType(width)).as_pointer()), align=1)
        signed = getattr(ta[2].dtype, "signed", False)
        y = builder.sext(y, _vec(_I64)) if signed else builder.zext(y, _vec(_I64))
        s = builder.sub(y, _splat(builder, min_v, _I64))
        inside = builder.icmp_unsigned("<", s, _splat(builder, a_v, _I64))
        zero64 = ir.Constant(_vec(_I64), [0] * SIMD_LANES)
        s = builder.select(inside, s, zero64)
        lptr, _ = _element_ptr(builder, context, ta[6], loff_v, ro_v)
        row = builder.add(builder.load(builder.bitcast(lptr, _vec(_I64).as_pointer()), align=8),
                          s)
        _, fbase = _element_ptr(builder, context, ta[8], ftab_v, ir.Constant(_I64, 0))
        _, rbase = _element_ptr(builder, context, ta[9], rcp_v, ir.Constant(_I64, 0))
        row32 = builder.trunc(row, _vec(_I32))
        g = _gather(builder, fbase, row32, _I64)
        r = _gather(builder, rbase, row32, ir.DoubleType())
        f = builder.and_(g, ir.Constant(_vec(_I64), [0xFFFFFFFF] * SIMD_LANES))
        cum = builder.lshr(g, ir.Constant(_vec(_I64), [32] * SIMD_LANES))
        codable = builder.and_(inside, builder.icmp_unsigned("!=", f, zero64))
        all_ok = builder.icmp_unsigned("==", builder.bitcast(codable, _I16),
                                       ir.Constant(_I16, 0xFFFF))
        # renormalisation: emit the low word where x >= f << (32 - P)
        shift = builder.sub(ir.Constant(_I64, 32), prec_v)
        xmax = builder.shl(f, _splat(builder, shift, _I64))
        need = builder.icmp_unsigned(">=", x, xmax)
        count = builder.zext(builder.bitcast(need, _I16), _I64)
        popcount = _function(builder, "llvm.ctpop.i64", _I64, [_I64])
        ptr_new = builder.sub(ptr_v, builder.call(popcount, [count]))
        _store_emitted(builder, context, ta[10], scr_v, ptr_v, builder.trunc(x, _vec(_I16)),
                       need)
        x = builder.select(need, builder.lshr(x, ir.Constant(_vec(_I64), [16] * SIMD_LANES)), x)
        # x -> (x // f) << P | (x % f) + cum, as x + cum + q * (2**P - f) with
        # q = floor((x + 1/2) / f) from the float64 reciprocal (exact: see the scalar step)
        r = builder.select(codable, r, ir.Constant(_vec(ir.DoubleType()), [0.0] * SIMD_LANES))
        xf = builder.fadd(builder.sitofp(x, _vec(ir.DoubleType())),
                          ir.Constant(_vec(ir.DoubleType()), [0.5] * SIMD_LANES))
        q = builder.fptosi(builder.fmul(xf, r), _vec(_I64))
        m = builder.shl(ir.Constant(_I64, 1), prec_v)
        cmpl = builder.sub(_splat(builder, m, _I64), f)
        x = builder.add(builder.add(x, cum), builder.mul(q, cmpl))
        builder.store(x, xp, align=8)
        bad = builder.select(all_ok, ir.Constant(_I64, 0), ir.Constant(_I64, 1 << ENCODE_BAD_BIT))
        return builder.or_(ptr_new, bad)

    return sig, codegen


def _phi(builder, ty, *incoming):
    """A phi node of type ``ty`` with its ``(value, block)`` incoming edges (more may be
    added later, for a loop's back edge)."""
    node = builder.phi(ty)
    for value, block in incoming:
        node.add_incoming(value, block)
    return node


@intrinsic
def decode_binary_lanes4(typingctx, words, ptr, end, st, out, start, nfull, f0, f1, min_symbol,
                         precision, rare):
    """The full steps of one chunk of 4 lanes coding two symbols (frequencies ``f0`` and
    ``f1``, ``f0 + f1 = 2**precision``): the 4 lane states are one vector held in
    registers for the whole loop, the symbol of each lane is whether its slot lies at or
    above ``f0`` (a compare where the scalar loop loads a table entry), the 4 symbols go to
    ``out[start + 4 t ..]`` as one store, and a lane below ``2**16`` takes its word with one
    expanding load in lane order (with ``rare``, only in the steps where some lane needs
    one, a branch the predictor learns at low entropy). Returns ``(ptr, bad)`` as the
    scalar loop does: bad is 1 when a step would start past ``end``; ``st[0:4]`` (uint32)
    holds the states before and after."""
    sig = types.UniTuple(types.uint64, 2)(words, ptr, end, st, out, start, nfull, f0, f1,
                                          min_symbol, precision, rare)

    def codegen(context, builder, signature, args):
        (words_v, ptr_v, end_v, st_v, out_v, start_v, nfull_v, f0_v, f1_v, min_v, prec_v,
         rare_v) = args
        ta = signature.args
        v4 = ir.VectorType(_I64, 4)

        sptr, _ = _element_ptr(builder, context, ta[3], st_v, ir.Constant(_I64, 0))
        sp = builder.bitcast(sptr, ir.VectorType(_I32, 4).as_pointer())
        x_init = builder.zext(builder.load(sp, align=4), v4)
        _, wbase = _element_ptr(builder, context, ta[0], words_v, ir.Constant(_I64, 0))
        _, obase = _element_ptr(builder, context, ta[4], out_v, ir.Constant(_I64, 0))
        width = ta[4].dtype.bitwidth
        low32 = ir.Constant(v4, [0xFFFFFFFF] * 4)
        f0s, f1s, prec, mins = (_splat(builder, v, _I64, 4) for v in (f0_v, f1_v, prec_v, min_v))
        mask = builder.sub(builder.shl(ir.Constant(v4, [1] * 4), prec), ir.Constant(v4, [1] * 4))
        lower = ir.Constant(v4, [1 << 16] * 4)

        pre = builder.block
        fn = builder.function
        header = fn.append_basic_block("bin.header")
        check = fn.append_basic_block("bin.check")
        body = fn.append_basic_block("bin.body")
        renorm = fn.append_basic_block("bin.renorm")
        latch = fn.append_basic_block("bin.latch")
        exit_ = fn.append_basic_block("bin.exit")
        builder.branch(header)

        builder.position_at_end(header)
        t = _phi(builder, _I64, (ir.Constant(_I64, 0), pre))
        x = _phi(builder, v4, (x_init, pre))
        p = _phi(builder, _I64, (ptr_v, pre))
        builder.cbranch(builder.icmp_unsigned(">=", t, nfull_v), exit_, check)

        builder.position_at_end(check)
        builder.cbranch(builder.icmp_unsigned(">", p, end_v), exit_, body)

        builder.position_at_end(body)
        slot = builder.and_(x, mask)
        one = builder.icmp_unsigned(">=", slot, f0s)
        # both successor states, then a select: the multiplies run beside the compare,
        # off the chain (1.3x faster than selecting f and cum before one multiply: bern0.05
        # decoded in 2.8 ms against 3.6)
        q = builder.and_(builder.lshr(x, prec), low32)
        x0 = builder.add(builder.mul(builder.and_(f0s, low32), q), slot)
        x1 = builder.add(builder.mul(builder.and_(f1s, low32), q), builder.sub(slot, f0s))
        xn = builder.select(one, x1, x0)
        sym = builder.trunc(builder.add(builder.zext(one, v4), mins),
                            ir.VectorType(ir.IntType(width), 4))
        o = builder.add(start_v, builder.shl(t, ir.Constant(_I64, 2)))
        optr = builder.bitcast(builder.gep(obase, [o]),
                               ir.VectorType(ir.IntType(width), 4).as_pointer())
        builder.store(sym, optr, align=1)
        need = builder.icmp_unsigned("<", xn, lower)
        bits = builder.zext(builder.bitcast(need, ir.IntType(4)), _I64)
        go = builder.or_(builder.not_(rare_v), builder.icmp_unsigned("!=", bits,
                                                                     ir.Constant(_I64, 0)))
        builder.cbranch(go, renorm, latch)

        builder.position_at_end(renorm)
        xr, taken = _take_words(builder, builder.gep(wbase, [p]), xn, need)
        pr = builder.add(p, taken)
        builder.branch(latch)

        builder.position_at_end(latch)
        xl = _phi(builder, v4, (xn, body), (xr, renorm))
        pl = _phi(builder, _I64, (p, body), (pr, renorm))
        t1 = builder.add(t, ir.Constant(_I64, 1))
        t.add_incoming(t1, latch)
        x.add_incoming(xl, latch)
        p.add_incoming(pl, latch)
        builder.branch(header)

        builder.position_at_end(exit_)
        xe = _phi(builder, v4, (x, header), (x, check))
        pe = _phi(builder, _I64, (p, header), (p, check))
        bad = _phi(builder, _I64, (ir.Constant(_I64, 0), header), (ir.Constant(_I64, 1), check))
        builder.store(builder.trunc(xe, ir.VectorType(_I32, 4)), sp, align=4)
        return context.make_tuple(builder, signature.return_type, [pe, bad])

    return sig, codegen
