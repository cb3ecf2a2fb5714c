"""Aggregation of one codec's slab metrics per layer, per kind and overall.

The one aggregator of :mod:`kvinfo.analysis.aggregate`, with its rule for nulls: every
metric is aggregated over the slabs where it is defined, and ``counts`` records how many
of how many (so a few slabs too small for the bounds never null a layer's bound).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..analysis import aggregate_metrics, is_defined
from ..analysis.aggregate import null_reasons
from ._measure import GAP_TERMS, pct

__all__ = ["aggregate_codec_metrics"]

_SUMMED = (
    "num_elements",
    "total_bits",
    "num_symbols",
    "input_bytes",
    "encode_seconds",
    "decode_seconds",
    "coder_encode_seconds",
    "coder_decode_seconds",
    "gpu_decode_seconds",
    "gpu_coder_decode_seconds",
    "attention_num_queries",
)
_WEIGHTED = (
    "bits_per_element",
    "symbol_bits_per_element",
    "side_bits_per_element",
    "coded_blob_bits_per_element",
    "variance_per_element",
    "mse_per_element",
    "own_symbols_entropy_bits_per_element",
    "own_symbols_h0_pooled_bits_per_symbol",
    "own_symbols_h0_per_channel_bits_per_symbol",
    "coder_overhead_bits_per_element",
    "rd_gaussian_bits_per_element",
    "rd_gaussian_independent_bits_per_element",
    "slb_estimate_bits_per_element",
    "snr_db",
    "attention_logit_mse",
    "attention_kl_nats",
    "attention_top1_agreement",
    "attention_output_relative_error",
    "attention_logit_mse_pooled",
    "rd_gaussian_attention_bits_per_element",
)
_GAPS = tuple(
    f"gap_to_{name}_bits_per_element"
    for name in ("rd_gaussian", "slb_estimate", "own_symbols_entropy", "rd_gaussian_attention")
) + GAP_TERMS
#: (numerator metric, scale, seconds metric, throughput metric)
_THROUGHPUTS = (
    ("input_bytes", 1e6, "encode_seconds", "encode_mbytes_per_s"),
    ("input_bytes", 1e6, "decode_seconds", "decode_mbytes_per_s"),
    ("num_symbols", 1e6, "coder_encode_seconds", "coder_encode_msymbols_per_s"),
    ("num_symbols", 1e6, "coder_decode_seconds", "coder_decode_msymbols_per_s"),
    ("input_bytes", 1e6, "gpu_decode_seconds", "gpu_decode_mbytes_per_s"),
    ("num_symbols", 1e6, "gpu_coder_decode_seconds", "gpu_coder_decode_msymbols_per_s"),
)


def aggregate_codec_metrics(slabs: Sequence[dict]) -> dict:
    """Aggregate the metrics of one codec over slabs.

    Rates, distortions, bounds, gaps and attention errors are means weighted by the number
    of elements, over the slabs where each is defined (so ``bits_per_element`` is total bits
    over total elements, the bounds are those of coding each slab independently at its own
    distortion, and a gap is the aggregated rate minus the aggregated bound over the same
    slabs); attention metrics average over the slabs that have them (keys for the score
    errors, values for the output error); counts and seconds are sums; the percentages are
    recomputed from the aggregated gaps and bounds; a throughput is the total bytes (or
    symbols) over the total seconds of the slabs where it was timed. ``counts`` holds
    ``[num_defined, num_total]`` per metric and ``null_reasons`` why a metric no slab
    defines is null (see :mod:`kvinfo.analysis.aggregate`).
    """
    out = aggregate_metrics(
        slabs, keys=_SUMMED + _WEIGHTED + _GAPS, sums=_SUMMED, weight="num_elements",
        weighted=frozenset(_WEIGHTED + _GAPS),
    )
    first = slabs[0]
    out["own_symbols_entropy_model"] = first.get("own_symbols_entropy_model")
    out["own_symbols_entropy_is_bound"] = all(
        bool(s.get("own_symbols_entropy_is_bound")) for s in slabs
    )
    used = {s.get("gap_coder_model") for s in slabs} - {None}
    out["gap_coder_model"] = (next(iter(used)) if len(used) == 1 else "mixed") if used else None
    out["max_abs_error"] = max(s.get("max_abs_error", 0.0) for s in slabs)
    if out.get("coder_overhead_bits_per_element") is not None:
        h = out["coded_blob_bits_per_element"] - out["coder_overhead_bits_per_element"]
        out["coder_overhead_pct"] = pct(out["coder_overhead_bits_per_element"], h)
    for name, bound in (
        ("rd_gaussian", "rd_gaussian_bits_per_element"),
        ("slb_estimate", "slb_estimate_bits_per_element"),
        ("own_symbols_entropy", "own_symbols_entropy_bits_per_element"),
    ):
        gap = out.get(f"gap_to_{name}_bits_per_element")
        if gap is not None or bound in out:
            out[f"gap_to_{name}_pct"] = pct(gap, out.get(bound))
    # the decomposition's terms are defined on the same slabs as the gap to R_G (all or
    # none): the residual is recomputed so that the aggregated terms add up exactly
    total = out.get("gap_to_rd_gaussian_bits_per_element")
    named = [out.get(k) for k in GAP_TERMS[:-1]]
    if total is not None and all(v is not None for v in named):
        out["gap_residual_bits_per_element"] = total - sum(named)
    for num, scale, sec, name in _THROUGHPUTS:
        timed = [s for s in slabs if sec in s]
        if not timed:
            continue
        ok = [s for s in timed if is_defined(s.get(sec)) and s[sec] > 0]
        total = sum(s[sec] for s in ok)
        amount = sum(s.get(num) or 0 for s in ok)
        out[name] = amount / scale / total if ok and amount and total > 0 else None
    reasons = null_reasons(slabs, out)
    for name in ("rd_gaussian", "slb_estimate"):
        gap = f"gap_to_{name}_bits_per_element"
        if gap in reasons and out.get(f"gap_to_{name}_pct") is None:
            reasons[f"gap_to_{name}_pct"] = reasons[gap]
    if reasons:
        out["null_reasons"] = reasons
    return out
