"""Slow, obviously correct reference implementations of the kvinfo coders.

Written from ``docs/container-format.md`` in plain Python (one symbol at a time, Python
ints, ``struct`` and ``json`` for the container) so the Numba kernels can be checked
against them bit for bit. Only for small inputs.
"""

from __future__ import annotations

import json
import math
import struct
import zlib

import numpy as np

LANES = 32
L = 1 << 16


# ------------------------------------------------------------------------------- container
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    v, shift = 0, 0
    while True:
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, pos


#: version 2: codec code -> (codec id, parameter names, section names), from the spec
V2_LAYOUTS = {
    1: ("rans", ["precision_bits", "num_lanes", "chunk_size", "num_tables", "period",
                 "min_symbol", "alphabet_size", "num_chunks"], ["tables", "index", "payload"]),
    2: ("huffman", ["table_bits", "num_tables", "chunk_size", "sub_block_size", "min_symbol",
                    "alphabet_size", "num_chunks"], ["lengths", "index", "subblocks", "payload"]),
    3: ("arith", ["prob_bits", "symbol_bits", "num_channel_contexts", "prev_bits",
                  "adapt_limit", "chunk_size", "period", "min_symbol", "alphabet_size",
                  "num_chunks"], ["index", "payload"]),
    4: ("constriction-ans", ["precision_bits", "num_tables", "period", "min_symbol",
                             "alphabet_size"], ["tables", "payload"]),
    5: ("constriction-range", ["precision_bits", "num_tables", "period", "min_symbol",
                               "alphabet_size"], ["tables", "payload"]),
}


#: version 3: as version 2, but rans has the parameter stored_channels and an optional
#: fourth section "stored" (present iff stored_channels > 0)
V3_LAYOUTS = {**V2_LAYOUTS, 1: ("rans", V2_LAYOUTS[1][1] + ["stored_channels"],
                                 V2_LAYOUTS[1][2] + ["stored"])}
V3_REQUIRED = {1: 3}


def parse_container(data: bytes) -> dict:
    """Parse a stream (version 1, 2 or 3) following the spec only; returns meta plus
    sections."""
    assert data[:4] == b"KVIC"
    if data[4] in (2, 3):
        version = data[4]
        codec_id, pnames, snames = (V2_LAYOUTS if version == 2 else V3_LAYOUTS)[data[5]]
        dtype = {1: "uint8", 2: "uint16", 3: "int32"}[data[6]]
        pos = 8
        shape = []
        for _ in range(data[7]):
            v, pos = _varint(data, pos)
            shape.append(v)
        count, pos = _varint(data, pos)
        assert count == len(pnames)
        params = {}
        for name in pnames:
            z, pos = _varint(data, pos)
            params[name] = z // 2 if z % 2 == 0 else -(z + 1) // 2
        count, pos = _varint(data, pos)
        required = V3_REQUIRED.get(data[5], len(snames)) if version == 3 else len(snames)
        assert required <= count <= len(snames)
        snames = snames[:count]
        lens = []
        for _ in snames:
            ln, pos = _varint(data, pos)
            lens.append((ln, struct.unpack_from("<I", data, pos)[0]))
            pos += 4
        (sym_crc,) = struct.unpack_from("<I", data, pos)
        assert struct.unpack_from("<I", data, pos + 4)[0] == zlib.crc32(data[: pos + 4])
        pos += 8
        sections = {}
        for name, (ln, crc) in zip(snames, lens, strict=True):
            sections[name] = data[pos : pos + ln]
            assert zlib.crc32(sections[name]) == crc
            pos += ln
        assert pos == len(data)
        return {"version": version, "codec": {"id": codec_id}, "shape": shape, "dtype": dtype,
                "params": params, "sections": sections, "symbols_crc32": sym_crc}
    magic, version, flags, meta_len, total_len, sym_crc = struct.unpack_from("<4sHHIQI", data)
    assert magic == b"KVIC" and version == 1 and flags == 0 and total_len == len(data)
    assert struct.unpack_from("<I", data, len(data) - 4)[0] == zlib.crc32(data[:-4])
    meta = json.loads(data[24 : 24 + meta_len])
    sections = {name: data[off : off + ln] for name, off, ln in meta["sections"]}
    return {**meta, "version": 1, "sections": sections, "symbols_crc32": sym_crc}


# ------------------------------------------------------------------------------------ rANS
def rans_encode(symbols, min_symbol, freqs, precision, chunk_size, period, lanes=LANES):
    """Returns (words per chunk as lists, final states per chunk as lists)."""
    freqs = [list(map(int, row)) for row in np.atleast_2d(freqs)]
    cums = [[sum(row[:i]) for i in range(len(row))] for row in freqs]
    syms = [int(s) - min_symbol for s in np.asarray(symbols).ravel()]
    n = len(syms)
    chunks_words, chunks_states = [], []
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        state = [L] * lanes
        emitted = []
        for j in range(stop - 1, start - 1, -1):
            lane = (j - start) % lanes
            t = (j % period) if len(freqs) > 1 else 0
            f, c = freqs[t][syms[j]], cums[t][syms[j]]
            x = state[lane]
            if x >= f << (32 - precision):
                emitted.append(x & 0xFFFF)
                x >>= 16
            state[lane] = (x // f << precision) + x % f + c
        chunks_words.append(emitted[::-1])
        chunks_states.append(state)
    return chunks_words, chunks_states


def rans_decode(chunks_words, chunks_states, n, min_symbol, freqs, precision, chunk_size, period):
    """Decode; the lane count of each chunk is the length of its state list."""
    freqs = [list(map(int, row)) for row in np.atleast_2d(freqs)]
    cums = [[sum(row[:i]) for i in range(len(row))] for row in freqs]
    out = []
    mask = (1 << precision) - 1
    for k, start in enumerate(range(0, n, chunk_size)):
        stop = min(n, start + chunk_size)
        words = list(chunks_words[k])
        state = list(chunks_states[k])
        ptr = 0
        for j in range(start, stop):
            lane = (j - start) % len(state)
            t = (j % period) if len(freqs) > 1 else 0
            x = state[lane]
            slot = x & mask
            s = max(i for i in range(len(freqs[t])) if cums[t][i] <= slot and freqs[t][i] > 0)
            out.append(s + min_symbol)
            x = freqs[t][s] * (x >> precision) + slot - cums[t][s]
            if x < L:
                x = (x << 16) | words[ptr]
                ptr += 1
            state[lane] = x
        assert ptr == len(words) and all(x == L for x in state)
    return out


def decode_rans_stream(data: bytes) -> np.ndarray:
    """Decode a complete ``rans`` stream from its bytes using only the spec."""
    c = parse_container(data)
    p = c["params"]
    n = math.prod(c["shape"])
    if n == 0:
        return np.zeros(c["shape"], dtype=c["dtype"])
    k = p.get("stored_channels", 0)
    if k:  # version 3: channel bitmap, then the stored symbols row by row
        period, raw = p["period"], c["sections"]["stored"]
        nmap = (period + 7) // 8
        stored = [bool(raw[ch // 8] >> (ch % 8) & 1) for ch in range(period)]
        assert sum(stored) == k
        rows = n // period
        item = np.dtype(c["dtype"]).newbyteorder("<")
        vals = np.frombuffer(raw, item, rows * k, nmap).reshape(rows, k)
        coded = (_decode_coded(c, rows * (period - k), period - k) if period > k else [])
        out, ci = [], 0
        for r in range(rows):
            si = 0
            for ch in range(period):
                if stored[ch]:
                    out.append(int(vals[r, si]))
                    si += 1
                else:
                    out.append(coded[ci])
                    ci += 1
        arr = np.array(out, dtype=c["dtype"]).reshape(c["shape"])
    else:
        arr = np.array(_decode_coded(c, n, p["period"]), dtype=c["dtype"]).reshape(c["shape"])
    assert zlib.crc32(arr.astype(np.dtype(c["dtype"]).newbyteorder("<")).tobytes()) == c[
        "symbols_crc32"]
    return arr


def _decode_coded(c: dict, n: int, period: int) -> list:
    """The rANS-coded symbols of a stream: ``n`` of them, with ``period`` channels."""
    p = c["params"]
    if c["version"] >= 2:
        freqs = read_packed_tables(c["sections"]["tables"], p["num_tables"], p["alphabet_size"])
    else:
        freqs = read_tables(c["sections"]["tables"], p["num_tables"], p["alphabet_size"])
    idx = c["sections"]["index"]
    payload = c["sections"]["payload"]
    words, states = [], []
    if c["version"] >= 2:
        k_lanes, pos, off = p["num_lanes"], 4 * p["num_lanes"] * p["num_chunks"], 0
        for k in range(p["num_chunks"]):
            states.append(list(struct.unpack_from(f"<{k_lanes}I", idx, 4 * k_lanes * k)))
            nw, pos = _varint(idx, pos)
            words.append(list(struct.unpack_from(f"<{nw}H", payload, off)))
            off += 2 * nw
        assert pos == len(idx) and off == len(payload)
    else:
        rec = 8 + 4 + 4 + 4 * LANES
        for k in range(p["num_chunks"]):
            off, nsym, nw = struct.unpack_from("<QII", idx, k * rec)
            states.append(list(struct.unpack_from(f"<{LANES}I", idx, k * rec + 16)))
            words.append(list(struct.unpack_from(f"<{nw}H", payload, off)))
    return rans_decode(words, states, n, p["min_symbol"], freqs, p["precision_bits"],
                       p["chunk_size"], period)


def read_packed_tables(buf: bytes, num_tables: int, alphabet_size: int) -> list:
    """Version-2 exp-Golomb packed tables, as in the spec (one bit at a time)."""
    bits = "".join(f"{b:08b}" for b in buf)
    pos = 0

    def take(n):
        nonlocal pos
        v = int(bits[pos : pos + n], 2) if n else 0
        pos += n
        return v

    def eg(k):
        nonlocal pos
        z = 0
        while bits[pos] == "0":
            z += 1
            pos += 1
        return take(z + k + 1) - (1 << k)

    tables = []
    for _ in range(num_tables):
        k = take(4)
        m = eg(0) + 1
        row, i = [0] * alphabet_size, -1
        for _ in range(m):
            i += eg(0) + 1
            row[i] = eg(k) + 1
        tables.append(row)
    assert len(buf) == (pos + 7) // 8 and set(bits[pos:]) <= {"0"}
    return tables


def read_tables(buf: bytes, num_tables: int, alphabet_size: int) -> list:
    """Varint-with-zero-runs tables, as in the spec."""
    pos = 0

    def varint():
        nonlocal pos
        v, shift = 0, 0
        while True:
            b = buf[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return v

    tables = []
    for _ in range(num_tables):
        row = []
        while len(row) < alphabet_size:
            v = varint()
            if v == 0:
                row.extend([0] * (varint() + 1))
            else:
                row.append(v)
        tables.append(row)
    assert pos == len(buf)
    return tables


# --------------------------------------------------------------------------------- Huffman
def huffman_code_lengths(counts) -> list:
    """Unlimited optimal Huffman code lengths (0 for unused symbols)."""
    import heapq

    items = [(int(c), i, [i]) for i, c in enumerate(counts) if c > 0]
    lengths = [0] * len(counts)
    if len(items) == 1:
        lengths[items[0][1]] = 0
        return lengths
    heapq.heapify(items)
    tie = len(counts)
    while len(items) > 1:
        c1, _, s1 = heapq.heappop(items)
        c2, _, s2 = heapq.heappop(items)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(items, (c1 + c2, tie, s1 + s2))
        tie += 1
    return lengths


def canonical_codes(lengths) -> dict:
    """{symbol: (code, length)} in canonical order (length, then symbol)."""
    order = sorted((ln, s) for s, ln in enumerate(lengths) if ln > 0)
    codes, code, prev = {}, 0, 0
    for ln, s in order:
        code <<= ln - prev
        prev = ln
        codes[s] = (code, ln)
        code += 1
    return codes


def huffman_encode_bits(idx, lengths) -> str:
    codes = canonical_codes(lengths)
    return "".join(format(codes[s][0], f"0{codes[s][1]}b") for s in idx)


def huffman_decode_bits(bits: str, lengths, n: int) -> list:
    inv = {format(c, f"0{ln}b"): s for s, (c, ln) in canonical_codes(lengths).items()}
    out, cur = [], ""
    for b in bits:
        cur += b
        if cur in inv:
            out.append(inv[cur])
            cur = ""
            if len(out) == n:
                break
    return out


# ------------------------------------------------------------------- adaptive binary model
def arith_ideal_bits(idx, period, symbol_bits, nch, prev_bits, adapt_limit, chunk_size) -> float:
    """Ideal code length (bits) of the arith model with exact float probabilities of the
    same fixed-point state machine; the real coder must be within a few bytes per chunk."""
    rate = [65536 // (n + 2) for n in range(adapt_limit + 1)]
    total = 0.0
    idx = [int(s) for s in idx]
    for start in range(0, len(idx), chunk_size):
        stop = min(len(idx), start + chunk_size)
        prob, cnt = {}, {}
        for j in range(start, stop):
            s = idx[j]
            c = (j % period) if nch > 1 else 0
            pb = 0
            if prev_bits and j - period >= start:
                pb = idx[j - period] >> (symbol_bits - prev_bits)
            base = ((c << prev_bits) | pb) << symbol_bits
            node = 1
            for i in range(symbol_bits - 1, -1, -1):
                bit = (s >> i) & 1
                q = base + node
                p = prob.get(q, 32768)
                r = rate[cnt.get(q, 0)]
                total += -math.log2(p / 65536 if bit == 0 else 1 - p / 65536)
                p = p + ((65536 - p) * r >> 16) if bit == 0 else p - (p * r >> 16)
                prob[q] = min(max(p, 32), 65536 - 32)
                cnt[q] = min(cnt.get(q, 0) + 1, adapt_limit)
                node = 2 * node + bit
    return total


# ------------------------------------------------------------------------ table quantization
def quantize_counts(counts, precision_bits: int) -> np.ndarray:
    """The greedy frequency quantization with Python's heapq (the original implementation
    of :func:`kvinfo.codecs.models.quantize_counts`, now a compiled kernel)."""
    import heapq

    c = np.asarray(counts, dtype=np.int64).ravel()
    m = 1 << precision_bits
    used = c > 0
    total = int(c.sum())
    f = np.where(used, np.maximum(1, (c * m) // total), 0).astype(np.int64)
    diff = m - int(f.sum())
    idx = np.flatnonzero(used)
    if diff > 0:
        heap = [(-c[i] * math.log2((f[i] + 1) / f[i]), int(i)) for i in idx]
        heapq.heapify(heap)
        for _ in range(diff):
            _, i = heapq.heappop(heap)
            f[i] += 1
            heapq.heappush(heap, (-c[i] * math.log2((f[i] + 1) / f[i]), i))
    elif diff < 0:
        heap = [(c[i] * math.log2(f[i] / (f[i] - 1)), int(i)) for i in idx if f[i] > 1]
        heapq.heapify(heap)
        for _ in range(-diff):
            _, i = heapq.heappop(heap)
            f[i] -= 1
            if f[i] > 1:
                heapq.heappush(heap, (c[i] * math.log2(f[i] / (f[i] - 1)), i))
    return f


def _eg_lengths(v: np.ndarray, k) -> np.ndarray:
    """Bits of the exp-Golomb-``k`` codes of non-negative ints ``v``."""
    u = v.astype(np.int64) + (1 << k)
    nb = np.floor(np.log2(u)).astype(np.int64)
    nb += (u >> (nb + 1)) > 0  # guard float rounding
    nb -= (u >> nb) == 0
    return 2 * nb - k + 1


def pack_frequency_tables(frequencies) -> bytes:
    """Exp-Golomb bit packing of frequency rows (format version 2 tables), in numpy (the
    original implementation of :func:`kvinfo.codecs.models.pack_frequency_tables`).

    Per row, MSB first: ``k`` (4 bits, chosen per row to minimise the row), then
    ``EG0(m - 1)`` for the ``m`` used symbols, then for each used symbol ``EG0(gap)``
    (unused symbols skipped since the previous used one) and ``EGk(f - 1)``. The whole
    table is zero-padded to a byte. ``EGk(v)``: with ``u = v + 2**k`` of ``b + 1`` bits,
    ``b - k`` zero bits then ``u``. (All rows at once; every row has a used symbol.)
    """
    F = np.atleast_2d(np.asarray(frequencies, dtype=np.int64))
    T = F.shape[0]
    r, col = np.nonzero(F)  # row-major: row by row, symbols in order
    f = F[r, col] - 1
    m = np.bincount(r, minlength=T)
    first = np.cumsum(m) - m  # index of each row's first used symbol
    prev = np.empty_like(col)
    prev[1:] = col[:-1]
    prev[first[m > 0]] = -1
    gaps = col - prev - 1
    # bits of EGk(f) for every k at once: 2 * floor(log2(f + 2**k)) - k + 1, summed per row
    ks = np.arange(16)
    e = np.frexp((f[:, None] + (1 << ks)[None, :]).astype(np.float64))[1].astype(np.int64)
    per = 2 * (e - 1) - ks[None, :] + 1
    cost = np.zeros((T, 16), np.int64)
    live = m > 0
    if r.size:
        cost[live] = np.add.reduceat(per, first[live], axis=0)
    best = np.argmin(cost, axis=1)
    code = np.empty(2 * T + 2 * r.size, np.int64)
    ln = np.empty_like(code)
    head = 2 * np.arange(T) + 2 * first
    code[head], ln[head] = best, 4
    code[head + 1], ln[head + 1] = m, _eg_lengths(m - 1, 0)
    pos = head[r] + 2 + 2 * (np.arange(r.size) - first[r])
    code[pos], ln[pos] = gaps + 1, _eg_lengths(gaps, 0)
    kr = best[r]
    code[pos + 1], ln[pos + 1] = f + (1 << kr), _eg_lengths(f, kr)
    total = int(ln.sum())
    # bit j of code i (MSB first within its field): (code >> (ln - 1 - j)) & 1
    rep = np.repeat(np.arange(code.size), ln)
    starts = np.cumsum(ln) - ln
    j = np.arange(total) - starts[rep]
    bits = ((code[rep] >> (ln[rep] - 1 - j)) & 1).astype(np.uint8)
    return np.packbits(bits).tobytes()
