"""Per-slab measurement: one codec on one slab, every bench metric.

:func:`measure_codec` encodes and decodes the slab, and measures the rate (split into
symbols and side information), the distortion, the order-0 entropy of the codec's own
symbols, the bounds at the achieved distortion (:class:`~kvinfo.bench._reference.SlabReference`)
and the gaps to them, CPU (and GPU) throughput and, when given queries, the attention
errors. Metric names: ``docs/results-schema.md`` (section "bench").
"""

from __future__ import annotations

import math

import numpy as np

from ._reference import BOUND_METRICS, SlabReference
from ._timing import GpuTimer, best_time

__all__ = [
    "symbol_entropy", "measure_codec", "gaps", "gap_decomposition", "throughputs", "pct",
    "GAP_TERMS",
]

#: the named terms of ``bits - R_G(D)`` (``docs/analysis.md``, "Gap decomposition"), in the
#: order they are stacked; they add up to ``gap_to_rd_gaussian_bits_per_element``
GAP_TERMS = (
    "gap_side_information_bits_per_element",
    "gap_coder_overhead_bits_per_element",
    "gap_modelling_bits_per_element",
    "gap_decorrelation_bits_per_element",
    "gap_allocation_bits_per_element",
    "gap_scalar_quantizer_bits_per_element",
    "gap_residual_bits_per_element",
)


def symbol_entropy(symbols: np.ndarray) -> tuple[float, float]:
    """Order-0 entropies of a symbol array, bits per symbol: ``(pooled, per_channel)``.

    *Pooled* is the plug-in entropy of all symbols together; *per channel* is the mean over
    channels (the last axis) of each channel's own plug-in entropy, i.e. the empirical
    conditional entropy given the channel. No order-0 code of these symbols (static or
    adaptive, with one table or one per channel, respectively) is shorter.

    Examples
    --------
    >>> import numpy as np
    >>> symbol_entropy(np.array([[0, 1], [0, 1], [0, 1], [0, 1]]))
    (1.0, 0.0)
    """
    from ..analysis import entropy_from_counts

    s = np.asarray(symbols)
    if s.size == 0:
        return 0.0, 0.0
    flat = s.reshape(-1).astype(np.int64)
    lo = int(flat.min())
    flat = flat - lo
    span = int(flat.max()) + 1
    pooled = float(entropy_from_counts(np.bincount(flat, minlength=span)))
    if s.ndim < 2 or s.shape[-1] <= 1:
        return pooled, pooled
    c = s.shape[-1]
    chan = np.tile(np.arange(c, dtype=np.int64), flat.size // c)
    counts = np.bincount(chan * span + flat, minlength=c * span).reshape(c, span)
    per = float(np.mean(entropy_from_counts(counts, axis=1)))
    return pooled, per


def _entropy_model(coder_config: dict) -> tuple[str, bool]:
    """Which order-0 entropy matches the coder's model, and whether it bounds the coder."""
    cid = coder_config.get("id")
    if cid == "arith":
        ctx = coder_config.get("context", "auto")
        # adaptive with a floor on the adaptation rate: can track drift, so no strict bound
        return ("pooled" if ctx == "none" else "per_channel"), False
    # rans and huffman default to per_channel="auto" (per-channel tables when they pay):
    # the per-channel entropy, the smaller of the two, bounds either choice
    default = "auto" if cid in ("rans", "huffman") else False
    if coder_config.get("per_channel", default):
        return "per_channel", True
    return "pooled", True


def pct(gap, bound):
    if gap is None or bound is None or not math.isfinite(bound) or bound <= 0:
        return None
    return 100.0 * gap / bound


def _sub(a, b):
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return None
    return a - b


def measure_codec(
    codec,
    slab: np.ndarray,
    reference: SlabReference,
    *,
    x64: np.ndarray | None = None,
    attention: dict | None = None,
    repeat: int = 1,
    gpu: GpuTimer | None = None,
) -> dict:
    """Every bench metric of one codec on one slab (see the module docstring).

    ``attention``, when given, holds ``kind`` ("keys" or "values"), ``queries`` (the query
    heads that read this KV head), ``keys`` (the original keys of this head), ``sequences``
    and ``max_queries``.
    """
    from ..analysis import attention_output_error, attention_score_errors
    from ..analysis.gap import allocation_loss, gaussian_multi_information
    from ..codecs.abc import Codec
    from ..codecs.quant import CODED, parse_stream

    if x64 is None:
        x64 = slab.astype(np.float64)
    data, t_enc = best_time(lambda: codec.encode(slab), repeat)
    y, t_dec = best_time(lambda: codec.decode(data), repeat)
    rate = codec.rate(data)
    n = int(slab.size)
    y64 = np.asarray(y).astype(np.float64)
    mse = float(np.mean(np.square(x64 - y64)))
    var = reference.variance_per_element
    m: dict = {
        "num_elements": n,
        "total_bits": int(rate["total_bits"]),
        "bits_per_element": float(rate["bits_per_element"]),
        "symbol_bits_per_element": float(rate["symbol_bits_per_element"]),
        "side_bits_per_element": float(rate["side_bits_per_element"]),
        "variance_per_element": var,
        "mse_per_element": mse,
        "snr_db": (10.0 * math.log10(var / mse)) if var and mse > 0 and var > 0 else None,
        "max_abs_error": float(np.max(np.abs(x64 - y64))),
    }
    if mse == 0.0:
        m["notes"] = ["exact reconstruction: the lossy bounds are infinite at zero distortion"]
    # ---- the codec's own symbols: entropy and coder-only speed -----------------------
    coder = codec.coder
    coder_cfg = coder.get_config()
    model, is_bound = _entropy_model(coder_cfg)
    parsed = parse_stream(data)
    coder_rate = type(coder).rate is not Codec.rate
    n_sym = 0
    h_bits = 0.0
    h_pooled_bits = 0.0
    h_chan_bits = 0.0
    coded_payload_bits = 0
    coded_blob_bits = 0
    t_cdec = 0.0
    t_cenc = 0.0
    gpu_coder_t = 0.0
    gpu_coder_ok = gpu is not None and gpu.available
    mi_bits = 0.0  # Gaussian multi-information of the symbols, bits (decorrelation loss)
    mi_missing = False
    # the model the coder actually used (per_channel="auto" picks pooled or per-channel
    # tables per stream: it picked pooled iff its stream is the pooled coder's stream)
    h_used_bits = 0.0
    used_models: set = set()
    pooled_twin = None
    if coder_cfg.get("per_channel") == "auto":
        from ..codecs import get_codec

        pooled_twin = get_codec({**coder_cfg, "per_channel": False})
    for sec in parsed.sections:
        if sec.kind != CODED:
            continue
        sym, t = best_time(lambda s=sec: coder.decode(s.data), repeat)
        t_cdec += t
        t_cenc += best_time(lambda s=sym: coder.encode(s), repeat)[1]
        hp, hc = symbol_entropy(sym)
        n_sym += sym.size
        h_pooled_bits += hp * sym.size
        h_chan_bits += hc * sym.size
        h_bits += (hc if model == "per_channel" else hp) * sym.size
        used = model
        if pooled_twin is not None:
            used = "pooled" if pooled_twin.encode(sym) == bytes(sec.data) else "per_channel"
        used_models.add(used)
        h_used_bits += (hc if used == "per_channel" else hp) * sym.size
        mi = gaussian_multi_information(sym) if sym.size else 0.0
        if mi is None:
            mi_missing = True
        else:
            mi_bits += mi * sym.size
        coded_payload_bits += (
            int(coder.rate(sec.data)["symbol_bits"]) if coder_rate else 8 * len(sec.data)
        )
        coded_blob_bits += 8 * len(sec.data)
        if gpu_coder_ok:
            tg = gpu.time_decode(coder, sec.data, repeat)
            if tg is None:
                gpu_coder_ok = False
            else:
                gpu_coder_t += tg
    # literal payload bits (the mantissas of ``lossless``): symbol bits outside coded blobs
    raw_bits = int(rate["symbol_bits"]) - coded_payload_bits
    own = (h_bits + raw_bits) / n
    m.update(
        {
            "num_symbols": n_sym,
            "own_symbols_entropy_model": model,
            "own_symbols_entropy_is_bound": is_bound,
            "own_symbols_entropy_bits_per_element": own,
            "own_symbols_h0_pooled_bits_per_symbol": h_pooled_bits / n_sym if n_sym else None,
            "own_symbols_h0_per_channel_bits_per_symbol": h_chan_bits / n_sym if n_sym else None,
            "coded_blob_bits_per_element": coded_blob_bits / n,
            "coder_overhead_bits_per_element": (coded_blob_bits - h_bits) / n,
            "coder_overhead_pct": pct((coded_blob_bits - h_bits) / n, h_bits / n),
        }
    )
    # ---- bounds at the achieved distortion and the gaps -------------------------------
    b = reference.bounds(mse) if mse > 0 else dict.fromkeys(BOUND_METRICS)
    m.update(b)
    gaps(m)
    m["gap_coder_model"] = (
        next(iter(used_models)) if len(used_models) == 1 else ("mixed" if used_models else None)
    )
    m.update(gap_decomposition(
        m, coder_model_entropy_bits_per_element=(h_used_bits + raw_bits) / n,
        per_channel_entropy_bits_per_element=(h_chan_bits + raw_bits) / n,
        decorrelation_bits_per_element=None if mi_missing else mi_bits / n,
        eigenvalues=reference.eigenvalues,
        allocation_bits_per_element=None if reference.eigenvalues is None or mse <= 0
        else allocation_loss(reference.eigenvalues, reference.eigenvectors, x64 - y64),
    ))
    if mse > 0 and reference.eigenvalues is not None and mi_missing:
        m.setdefault("notes", []).append(
            "gap decomposition: the decorrelation loss of these symbols could not be estimated "
            "(too few rows or too many channels); it is counted in the residual"
        )
    if mse > 0 and reference.reason is not None:
        reasons = {k: reference.reason for k in BOUND_METRICS}
        for name in ("rd_gaussian", "slb_estimate"):
            for unit in ("bits_per_element", "pct"):
                reasons[f"gap_to_{name}_{unit}"] = reference.reason
        for name in GAP_TERMS:
            reasons[name] = reference.reason
        m["null_reasons"] = reasons
        m.setdefault("notes", []).append(f"bounds null: {reference.reason}")
    # ---- throughput ------------------------------------------------------------------
    nbytes = int(slab.nbytes)
    m.update(
        {
            "input_bytes": nbytes,
            "encode_seconds": t_enc,
            "decode_seconds": t_dec,
            "coder_encode_seconds": t_cenc,
            "coder_decode_seconds": t_cdec,
        }
    )
    if gpu is not None and gpu.available:
        m["gpu_decode_seconds"] = gpu.time_decode(codec, data, repeat)
        m["gpu_coder_decode_seconds"] = gpu_coder_t if gpu_coder_ok and n_sym else None
    throughputs(m)
    # ---- attention -------------------------------------------------------------------
    if attention is not None:
        q = attention["queries"]
        seqs = attention["sequences"]
        mq = attention["max_queries"]
        if attention["kind"] == "keys":
            r = attention_score_errors(q, x64, y64, sequences=seqs, max_queries=mq)
            m["attention_logit_mse"] = r["logit_mse"]
            m["attention_kl_nats"] = r["kl_nats"]
            m["attention_top1_agreement"] = r["top1_agreement"]
            m["attention_num_queries"] = r["num_queries"]
            m.update(_attention_bound(q, x64, y64, reference.covariance))
            m["gap_to_rd_gaussian_attention_bits_per_element"] = _sub(
                m["bits_per_element"], m["rd_gaussian_attention_bits_per_element"]
            )
        else:
            r = attention_output_error(
                q, attention["keys"], x64, y64, sequences=seqs, max_queries=mq
            )
            m["attention_output_relative_error"] = r["relative_error"]
            m["attention_num_queries"] = r["num_queries"]
    return m


def _attention_bound(q: np.ndarray, x64: np.ndarray, y64: np.ndarray, cov) -> dict:
    """The keys' pooled logit error and the Gaussian R(D) of keys in the attention metric."""
    from ..analysis import query_second_moment, rd_gaussian_attention

    d = x64.shape[-1]
    mq = query_second_moment(q)
    e = (x64 - y64).reshape(-1, d)
    scale = 1.0 / math.sqrt(d)
    pooled = float(scale * scale * np.mean(np.einsum("ti,ij,tj->t", e, mq, e)))
    out = {"attention_logit_mse_pooled": pooled, "rd_gaussian_attention_bits_per_element": None}
    if cov is not None and pooled > 0:
        bound = float(rd_gaussian_attention(cov, mq, pooled, scale=scale))
        out["rd_gaussian_attention_bits_per_element"] = bound
    return out


def gap_decomposition(
    m: dict, *, coder_model_entropy_bits_per_element: float | None = None,
    per_channel_entropy_bits_per_element: float,
    decorrelation_bits_per_element: float | None, eigenvalues,
    allocation_bits_per_element: float | None = None,
) -> dict:
    """The named terms of ``bits - R_G(D)`` for one record (formulas: ``docs/analysis.md``).

    ``m`` holds the record's rates (``bits_per_element``, ``side_bits_per_element``,
    ``symbol_bits_per_element``), ``own_symbols_entropy_bits_per_element``,
    ``mse_per_element`` and ``gap_to_rd_gaussian_bits_per_element``;
    ``coder_model_entropy_bits_per_element`` is the ideal code length of the symbols under
    the model the coder used (pooled or per-channel tables, as it chose; literal bits
    included; default ``own_symbols_entropy_bits_per_element``),
    ``per_channel_entropy_bits_per_element`` is the same ideal code length with one order-0
    table per channel, ``decorrelation_bits_per_element`` the symbols' Gaussian
    multi-information (None: not estimable, counted in the residual), ``eigenvalues`` the
    slab's covariance eigenvalues, ``allocation_bits_per_element`` the distortion-allocation
    loss of the codec's error (:func:`kvinfo.analysis.gap.allocation_loss`; None: 0). All
    terms are None when the gap is. The residual is the total minus the named terms, so the
    terms add up to the total exactly.

    Examples
    --------
    >>> m = {"bits_per_element": 3.0, "side_bits_per_element": 0.25,
    ...      "symbol_bits_per_element": 2.75, "own_symbols_entropy_bits_per_element": 2.7,
    ...      "mse_per_element": 1e-3, "gap_to_rd_gaussian_bits_per_element": 0.6}
    >>> t = gap_decomposition(m, per_channel_entropy_bits_per_element=2.6,
    ...                       decorrelation_bits_per_element=0.05, eigenvalues=[1.0])
    >>> [round(t[k], 3) for k in GAP_TERMS]
    [0.25, 0.05, 0.1, 0.05, 0.0, 0.255, -0.105]
    >>> abs(sum(t[k] for k in GAP_TERMS) - 0.6) < 1e-12
    True
    """
    from ..analysis.gap import scalar_quantizer_loss

    total = m.get("gap_to_rd_gaussian_bits_per_element")
    if total is None or eigenvalues is None or not math.isfinite(total):
        return dict.fromkeys(GAP_TERMS)
    own = coder_model_entropy_bits_per_element
    if own is None:
        own = m["own_symbols_entropy_bits_per_element"]
    terms = {
        "gap_side_information_bits_per_element": float(m["side_bits_per_element"]),
        "gap_coder_overhead_bits_per_element": float(m["symbol_bits_per_element"] - own),
        "gap_modelling_bits_per_element": float(own - per_channel_entropy_bits_per_element),
        "gap_decorrelation_bits_per_element": float(decorrelation_bits_per_element or 0.0),
        "gap_allocation_bits_per_element": float(allocation_bits_per_element or 0.0),
        "gap_scalar_quantizer_bits_per_element": float(
            scalar_quantizer_loss(eigenvalues, m["mse_per_element"])
        ),
    }
    terms["gap_residual_bits_per_element"] = float(total) - sum(terms.values())
    return terms


def gaps(m: dict) -> None:
    """Fill the gap metrics from the rates and bounds of ``m`` (in place)."""
    bpe = m["bits_per_element"]
    for bound, name in (
        ("rd_gaussian_bits_per_element", "rd_gaussian"),
        ("slb_estimate_bits_per_element", "slb_estimate"),
        ("own_symbols_entropy_bits_per_element", "own_symbols_entropy"),
    ):
        g = _sub(bpe, m.get(bound))
        m[f"gap_to_{name}_bits_per_element"] = g
        m[f"gap_to_{name}_pct"] = pct(g, m.get(bound))


def _rate(num: float, seconds) -> float | None:
    if not num or seconds is None or not seconds or seconds <= 0:
        return None
    return num / seconds


def throughputs(m: dict) -> None:
    nb = m.get("input_bytes") or 0
    ns = m.get("num_symbols") or 0
    m["encode_mbytes_per_s"] = _rate(nb / 1e6, m.get("encode_seconds"))
    m["decode_mbytes_per_s"] = _rate(nb / 1e6, m.get("decode_seconds"))
    m["coder_encode_msymbols_per_s"] = _rate(ns / 1e6, m.get("coder_encode_seconds"))
    m["coder_decode_msymbols_per_s"] = _rate(ns / 1e6, m.get("coder_decode_seconds"))
    if "gpu_decode_seconds" in m:
        m["gpu_decode_mbytes_per_s"] = _rate(nb / 1e6, m.get("gpu_decode_seconds"))
        m["gpu_coder_decode_msymbols_per_s"] = _rate(ns / 1e6, m.get("gpu_coder_decode_seconds"))
