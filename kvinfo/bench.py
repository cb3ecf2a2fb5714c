"""The bench engine: run KV codecs on a dump and compare what they achieve with the bounds.

For every selected (layer, kind, head) slab and every codec, :func:`bench_dump` encodes the
slab, decodes it, and measures:

* the rate: ``bits_per_element`` of the whole stream, split into ``symbol_bits_per_element``
  (entropy-coded payload) and ``side_bits_per_element`` (scales, norms, headers, tables...),
  as the codec's own :meth:`~kvinfo.codecs.abc.Codec.rate` reports it;
* the distortion: ``mse_per_element`` and ``snr_db`` (relative to the slab's variance per
  element, the reference of ``kvinfo analyze``'s grid), and, when the dump has queries, what
  attention sees: for keys the logit MSE, the KL divergence of the attention distribution and
  the top-1 agreement; for values the relative error of the attention output;
* the bounds at the distortion the codec achieved, computed with :mod:`kvinfo.analysis`:
  the Gaussian R(D) (``rd_gaussian``; an upper bound on R(D) of any source with this
  covariance, so a codec *can* beat it), the Shannon lower bound estimate (a lower bound on
  R(D) when the differential entropy is exact; here ``h`` is a kNN estimate, so it is an
  estimate), and the order-0 entropy of the codec's own symbols (what an ideal order-0 coder
  of exactly those symbols would spend; a true bound for static or adaptive order-0 coders,
  not for context-modelling ones such as ``arith``);
* the gap to each bound, in bits per element and in percent of the bound;
* encode and decode throughput on the CPU (MB/s of uncompressed KV, and M symbols/s for the
  entropy coder alone), and on the GPU when :mod:`kvinfo.kernels.gpu` finds one.

Slab results are aggregated per (layer, kind), per kind and overall, per codec. The result is
a results document (``tool: "bench"``) of :mod:`kvinfo.results`; the metric names are listed
in ``docs/results-schema.md`` (section "bench").

Examples
--------
>>> from kvinfo.bench import preset_codecs, codec_label
>>> len(preset_codecs("standard"))
15
>>> codec_label({"id": "uniform", "bits": 4, "axis": "channel", "group_size": 128,
...              "coder": {"id": "rans"}})
'uniform 4b/channel g128 +rans'
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from .codecs.spec import KVCodecSpec
from .errors import AnalysisInputError, CodecConfigError, DumpFormatError

__all__ = [
    "PRESETS",
    "preset_codecs",
    "CodecSpec",
    "codec_label",
    "codec_family",
    "symbol_entropy",
    "measure_codec",
    "aggregate_codec_metrics",
    "bench_dump",
    "format_table",
]

# --------------------------------------------------------------------------------------
# presets
# --------------------------------------------------------------------------------------

_RANS = {"id": "rans"}


def _standard() -> list[dict]:
    out: list[dict] = []
    for bits in (2, 3, 4, 8):
        out.append(
            {"id": "uniform", "bits": bits, "axis": "channel", "group_size": 128, "coder": _RANS}
        )
        out.append({"id": "uniform", "bits": bits, "axis": "token", "coder": _RANS})
    for step in (0.1, 0.25, 0.5, 1.0):
        out.append({"id": "ecsq", "step": step, "step_mode": "relative", "coder": _RANS})
    for bits in (2, 3, 4):
        out.append({"id": "turbo", "bits": bits, "coder": _RANS})
    return out


def _coders() -> list[dict]:
    quant = {"id": "uniform", "bits": 4, "axis": "channel", "group_size": 128}
    coders = [
        {"id": "huffman"},
        {"id": "rans"},
        {"id": "rans", "per_channel": True},
        {"id": "arith", "context": "none"},
        {"id": "arith"},
        {"id": "constriction-ans"},
        {"id": "constriction-range"},
    ]
    return [{**quant, "coder": c} for c in coders]


#: preset name -> (description, function returning the codec configs)
PRESETS: dict[str, tuple[str, Callable[[], list[dict]]]] = {
    "standard": (
        "uniform 2/3/4/8 bits per channel (groups of 128 tokens) and per token, ecsq at "
        "relative steps 0.1/0.25/0.5/1.0, turbo at 2/3/4 bits; all with rans",
        _standard,
    ),
    "coders": (
        "one quantizer (uniform 4 bits per channel) with huffman, rans, rans per channel, "
        "arith order-0 and with context, constriction ANS and range: the same symbols",
        _coders,
    ),
}


def preset_codecs(name: str) -> list[dict]:
    """The codec configs of a preset (see :data:`PRESETS`)."""
    try:
        return PRESETS[name][1]()
    except KeyError:
        raise CodecConfigError(
            f"unknown preset {name!r}; expected one of {sorted(PRESETS)}"
        ) from None


# --------------------------------------------------------------------------------------
# codec specs and labels
# --------------------------------------------------------------------------------------


class CodecSpec(KVCodecSpec):
    """A :class:`~kvinfo.codecs.spec.KVCodecSpec` with the short label used in tables and
    legends. Bench accepts specs that cover one kind only (``{"keys": ...}``)."""

    def __init__(self, spec: dict):
        super().__init__(spec)
        self.label = codec_label(self.config)


def _coder_label(coder: dict | None) -> str:
    if not coder:
        return "rans"
    cid = coder.get("id", "?")
    if cid == "rans" and coder.get("per_channel"):
        return "rans/ch"
    if cid == "arith":
        return f"arith({coder.get('context', 'channel+prev')})"
    return cid


def codec_label(config: dict) -> str:
    """A short human label of a codec config (used in tables, legends and file names)."""
    cid = config.get("id")
    if cid == "per-kind":
        parts = [
            f"{k[0].upper()}: {codec_label(config[k])}" for k in ("keys", "values") if k in config
        ]
        return " | ".join(parts)
    coder = _coder_label(config.get("coder"))
    if cid == "uniform":
        g = config.get("group_size")
        gs = f" g{g}" if g else ""
        return f"uniform {config.get('bits')}b/{config.get('axis', 'channel')}{gs} +{coder}"
    if cid == "ecsq":
        unit = "·rms" if config.get("step_mode") == "relative" else ""
        return f"ecsq Δ={config.get('step'):g}{unit} +{coder}"
    if cid == "turbo":
        extra = ""
        if config.get("num_outliers"):
            extra += f" o{config['num_outliers']}"
        if config.get("sink_tokens"):
            extra += f" s{config['sink_tokens']}"
        return f"turbo {config.get('bits')}b{extra} +{coder}"
    if cid == "lossless":
        return f"lossless +{coder}"
    rest = {k: v for k, v in config.items() if k not in ("id", "coder")}
    return f"{cid} {json.dumps(rest, separators=(',', ':'))} +{coder}"


def codec_family(config: dict) -> str:
    """The curve a codec belongs to: its label without the parameter that sets the rate."""
    cid = config.get("id")
    coder = _coder_label(config.get("coder"))
    if cid == "uniform":
        g = config.get("group_size")
        return f"uniform/{config.get('axis', 'channel')}{f' g{g}' if g else ''} +{coder}"
    if cid == "ecsq":
        return f"ecsq ({config.get('step_mode', 'absolute')} step) +{coder}"
    if cid == "turbo":
        return f"turbo +{coder}"
    if cid == "per-kind":
        return codec_label(config)
    return f"{cid} +{coder}"


# --------------------------------------------------------------------------------------
# per-slab measurement
# --------------------------------------------------------------------------------------


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
    from .analysis import entropy_from_counts

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
        ctx = coder_config.get("context", "channel+prev")
        # adaptive with a floor on the adaptation rate: can track drift, so no strict bound
        return ("pooled" if ctx == "none" else "per_channel"), False
    if coder_config.get("per_channel"):
        return "per_channel", True
    return "pooled", True


def _pct(gap, bound):
    if gap is None or bound is None or not math.isfinite(bound) or bound <= 0:
        return None
    return 100.0 * gap / bound


def _sub(a, b):
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return None
    return a - b


class _SlabReference:
    """What the bounds need of one slab: its covariance eigenvalues and entropy estimates."""

    def __init__(self, x64: np.ndarray, analysis: dict):
        from .analysis import gaussian_eigenvalues

        self.variance = np.var(x64, axis=0)
        self.variance_per_element = float(np.mean(self.variance))
        cov = np.cov(x64, rowvar=False, bias=True)
        self.eigenvalues = gaussian_eigenvalues(np.atleast_2d(cov))
        h_knn = analysis.get("h_knn_estimate_bits_per_element")
        h_g = analysis.get("h_gaussian_bits_per_element")
        # h <= h_gauss is a theorem: clip the estimate, as kvinfo analyze does
        self.h_slb = None if h_knn is None or h_g is None else min(h_knn, h_g)

    def bounds(self, mse: float) -> dict:
        from .analysis import rd_gaussian_eigenvalues, rd_shannon_lower_bound

        rg = float(rd_gaussian_eigenvalues(self.eigenvalues, mse))
        ri = float(rd_gaussian_eigenvalues(np.sort(self.variance), mse))
        slb = None if self.h_slb is None else float(rd_shannon_lower_bound(self.h_slb, mse))
        return {
            "rd_gaussian_bits_per_element": rg,
            "rd_gaussian_independent_bits_per_element": ri,
            "slb_estimate_bits_per_element": slb,
        }


def _best_time(fn, repeat: int):
    best = math.inf
    out = None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


class _Gpu:
    """GPU decode timing through :mod:`kvinfo.kernels.gpu`, when a real GPU is present."""

    def __init__(self, enabled: bool):
        self.available = False
        self.reason = "disabled (--no-gpu)"
        self.name = None
        if not enabled:
            return
        import os

        if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
            self.reason = "Numba CUDA simulator enabled: GPU timings would be meaningless"
            return
        try:
            from .kernels import gpu
        except ImportError:  # pragma: no cover - the GPU front end is part of kvinfo
            self.reason = "kvinfo.kernels.gpu is not installed"
            return
        if not gpu.cuda_available():
            self.reason = "no CUDA GPU found"
            return
        self.gpu = gpu
        from numba import cuda

        self.cuda = cuda
        self.available = True
        self.reason = None
        try:
            self.name = cuda.get_current_device().name
            if isinstance(self.name, bytes):
                self.name = self.name.decode()
        except Exception:  # noqa: BLE001 - the name is cosmetic
            self.name = "CUDA GPU"
        try:
            gpu.warmup()
        except Exception as exc:  # noqa: BLE001 - reported, and the CPU bench goes on
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            self.available = False
            self.reason = f"the GPU kernels failed to compile on {self.name}: " + (
                f"{type(exc).__name__}: {first}"
            )
            print(f"kvinfo bench: warning: {self.reason}; timing the CPU only", file=sys.stderr)

    def time_decode(self, codec, data: bytes, repeat: int) -> float | None:
        """Best-of-``repeat`` seconds of a device decode (after one untimed run), or None when
        the GPU front end does not support this codec."""
        from .errors import KvinfoError

        try:
            prepared = codec.prepare_cuda(data)
        except KvinfoError:
            return None
        out = prepared.decode()
        self.cuda.synchronize()

        def run():
            prepared.decode(out=out)
            self.cuda.synchronize()

        return _best_time(run, max(repeat, 3))[1]


def measure_codec(
    codec,
    slab: np.ndarray,
    reference: _SlabReference,
    *,
    x64: np.ndarray | None = None,
    attention: dict | None = None,
    repeat: int = 1,
    gpu: _Gpu | None = None,
) -> dict:
    """Every bench metric of one codec on one slab (see the module docstring).

    ``attention``, when given, holds ``kind`` ("keys" or "values"), ``queries`` (the query
    heads that read this KV head), ``keys`` (the original keys of this head), ``sequences``
    and ``max_queries``.
    """
    from .analysis.distortion import attention_output_error, attention_score_errors
    from .codecs.abc import Codec
    from .codecs.quant._base import CODED, parse_stream

    if x64 is None:
        x64 = slab.astype(np.float64)
    data, t_enc = _best_time(lambda: codec.encode(slab), repeat)
    y, t_dec = _best_time(lambda: codec.decode(data), repeat)
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
        "snr_db": (10.0 * math.log10(var / mse)) if mse > 0 and var > 0 else None,
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
    for sec in parsed.sections:
        if sec.kind != CODED:
            continue
        sym, t = _best_time(lambda s=sec: coder.decode(s.data), repeat)
        t_cdec += t
        t_cenc += _best_time(lambda s=sym: coder.encode(s), repeat)[1]
        hp, hc = symbol_entropy(sym)
        n_sym += sym.size
        h_pooled_bits += hp * sym.size
        h_chan_bits += hc * sym.size
        h_bits += (hc if model == "per_channel" else hp) * sym.size
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
            "coder_overhead_pct": _pct((coded_blob_bits - h_bits) / n, h_bits / n),
        }
    )
    # ---- bounds at the achieved distortion and the gaps -------------------------------
    if mse > 0:
        b = reference.bounds(mse)
    else:
        b = {
            "rd_gaussian_bits_per_element": None,
            "rd_gaussian_independent_bits_per_element": None,
            "slb_estimate_bits_per_element": None,
        }
    m.update(b)
    _gaps(m)
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
    _throughputs(m)
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
        else:
            r = attention_output_error(
                q, attention["keys"], x64, y64, sequences=seqs, max_queries=mq
            )
            m["attention_output_relative_error"] = r["relative_error"]
            m["attention_num_queries"] = r["num_queries"]
    return m


def _gaps(m: dict) -> None:
    """Fill the gap metrics from the rates and bounds of ``m`` (in place)."""
    bpe = m["bits_per_element"]
    for bound, name in (
        ("rd_gaussian_bits_per_element", "rd_gaussian"),
        ("slb_estimate_bits_per_element", "slb_estimate"),
        ("own_symbols_entropy_bits_per_element", "own_symbols_entropy"),
    ):
        g = _sub(bpe, m.get(bound))
        m[f"gap_to_{name}_bits_per_element"] = g
        m[f"gap_to_{name}_pct"] = _pct(g, m.get(bound))


def _rate(num: float, seconds) -> float | None:
    if not num or seconds is None or not seconds or seconds <= 0:
        return None
    return num / seconds


def _throughputs(m: dict) -> None:
    nb = m.get("input_bytes") or 0
    ns = m.get("num_symbols") or 0
    m["encode_mbytes_per_s"] = _rate(nb / 1e6, m.get("encode_seconds"))
    m["decode_mbytes_per_s"] = _rate(nb / 1e6, m.get("decode_seconds"))
    m["coder_encode_msymbols_per_s"] = _rate(ns / 1e6, m.get("coder_encode_seconds"))
    m["coder_decode_msymbols_per_s"] = _rate(ns / 1e6, m.get("coder_decode_seconds"))
    if "gpu_decode_seconds" in m:
        m["gpu_decode_mbytes_per_s"] = _rate(nb / 1e6, m.get("gpu_decode_seconds"))
        m["gpu_coder_decode_msymbols_per_s"] = _rate(ns / 1e6, m.get("gpu_coder_decode_seconds"))


# --------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------

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
)


def aggregate_codec_metrics(slabs: Sequence[dict]) -> dict:
    """Aggregate the metrics of one codec over slabs.

    Rates, distortions, bounds and attention errors are means weighted by the number of
    elements (so ``bits_per_element`` is total bits over total elements, and the bounds are
    those of coding each slab independently at its own distortion); ``snr_db`` is the mean
    of the slabs' SNRs (as ``kvinfo analyze`` averages its grid at a fixed per-slab SNR); the
    gaps are recomputed from the aggregated rate and bounds; throughputs are total bytes
    (or symbols) over total seconds. A metric null in any slab is null in the aggregate.
    """
    out: dict = {"num_slabs": len(slabs)}
    w = np.array([float(s["num_elements"]) for s in slabs])
    for key in _SUMMED:
        vals = [s[key] for s in slabs if key in s]
        if not vals:
            continue
        out[key] = None if any(v is None for v in vals) else sum(vals)
    for key in _WEIGHTED:
        # attention metrics exist for keys (scores) or values (outputs) only: average over
        # the slabs that have the metric
        has = [i for i, s in enumerate(slabs) if key in s]
        if not has:
            continue
        vals = [slabs[i][key] for i in has]
        if any(v is None for v in vals):
            out[key] = None
        else:
            wi = w[has]
            out[key] = float(np.sum(wi * np.asarray(vals, float)) / np.sum(wi))
    first = slabs[0]
    out["own_symbols_entropy_model"] = first.get("own_symbols_entropy_model")
    out["own_symbols_entropy_is_bound"] = all(
        bool(s.get("own_symbols_entropy_is_bound")) for s in slabs
    )
    out["max_abs_error"] = max(s.get("max_abs_error", 0.0) for s in slabs)
    if out.get("coder_overhead_bits_per_element") is not None:
        h = out["coded_blob_bits_per_element"] - out["coder_overhead_bits_per_element"]
        out["coder_overhead_pct"] = _pct(out["coder_overhead_bits_per_element"], h)
    _gaps(out)
    _throughputs(out)
    return out


# --------------------------------------------------------------------------------------
# the run over a dump
# --------------------------------------------------------------------------------------

_ANALYSIS_KEYS = (
    "variance_per_element",
    "h_gaussian_bits_per_element",
    "h_knn_estimate_bits_per_element",
    "h0_pooled_bits_per_element",
    "h0_per_channel_bits_per_element",
    "storage_bits_per_element",
    "pervector_snr_db",
    "pervector_rd_gaussian_bits_per_element",
    "pervector_mean_bits_per_element",
    "pervector_p50_bits_per_element",
    "pervector_p99_bits_per_element",
    "pervector_max_bits_per_element",
)


def _check_finite(slab: np.ndarray, label: str) -> None:
    bad = int(slab.size - np.count_nonzero(np.isfinite(np.asarray(slab, dtype=np.float64))))
    if bad:
        raise AnalysisInputError(
            f"{label}: the slab holds {bad} NaN or Inf values of {slab.size}; the codecs and "
            "bounds need finite values (kvinfo analyze reports such slabs, excluding those "
            "vectors)"
        )


def bench_dump(
    dump_path,
    specs: Sequence[dict],
    *,
    layers: Sequence[int] | None = None,
    kinds: Sequence[str] | None = None,
    heads: Sequence[int] | None = None,
    attention: bool | None = None,
    max_queries: int | None = 64,
    knn_samples: int = 2000,
    knn_k: int = 4,
    seed: int = 0,
    pervector_snr_db: float = 20.0,
    histogram_bins: int = 60,
    top_tokens: int = 5,
    repeat: int = 1,
    use_gpu: bool = True,
    progress: bool = False,
    command: list[str] | None = None,
    preset: str | None = None,
) -> dict:
    """Bench codecs on the slabs of a dump; return a results document (``tool: "bench"``).

    Parameters
    ----------
    dump_path : path-like
        A kvdump.
    specs : sequence of dict
        Codec configs (a KV codec: uniform, ecsq, turbo, lossless...) or per-kind specs
        ``{"keys": config, "values": config}``.
    layers, kinds, heads : sequences, optional
        The selection; default all layers, ``keys`` and ``values`` (the kinds present), all
        KV heads. ``queries`` may also be benched (heads are then query heads).
    attention : bool or None
        Attention errors: None computes them when the dump has queries; True requires
        queries (:class:`~kvinfo.errors.AnalysisInputError` without); False skips them.
    max_queries : int or None
        Evenly spaced query positions per slab for the attention errors (None: all).
    knn_samples, knn_k, seed, pervector_snr_db :
        As for ``kvinfo analyze`` (the SLB estimate and the per-vector code lengths of each
        slab come from :func:`kvinfo.analysis.analyze_slab` with these settings).
    repeat : int
        Timings are the best of ``repeat`` runs.
    use_gpu : bool
        Time GPU decoding too when a CUDA GPU is present.

    Returns
    -------
    dict
        A results document; see ``docs/results-schema.md``.
    """
    from tqdm import tqdm

    from . import results
    from .analysis import AnalysisWarning, analyze_slab
    from .analysis._slab import TokenCost, check_knn_options
    from .dumps import open_dump, parse_index_list
    from .kernels import warmup

    if not specs:
        raise CodecConfigError("no codecs to bench: give --codec or --preset")
    codecs = [CodecSpec(s) for s in specs]
    if max_queries is not None and max_queries < 1:
        raise AnalysisInputError(f"max_queries must be >= 1 or None; found {max_queries}")
    if repeat < 1:
        raise AnalysisInputError(f"repeat must be >= 1; found {repeat}")
    if histogram_bins < 1:
        raise AnalysisInputError(f"histogram_bins must be >= 1; found {histogram_bins}")
    check_knn_options(knn_samples, knn_k, pervector_snr_db)
    warmup()
    gpu = _Gpu(use_gpu)

    with open_dump(dump_path) as d:
        available = tuple(d.kinds)
        if kinds is None:
            kinds = [k for k in ("keys", "values") if k in available]
        kinds = list(kinds)
        bad = [k for k in kinds if k not in available]
        if bad:
            raise DumpFormatError(f"kinds {bad} are not in this dump; it has {list(available)}")
        if not kinds:
            raise AnalysisInputError("empty selection: no kinds selected")
        if attention and not d.has_queries:
            raise AnalysisInputError(
                f"attention errors need the queries, and {d.path} has none (its kinds: "
                f"{list(available)}); capture with --queries, or bench without --attention"
            )
        use_attention = d.has_queries if attention is None else bool(attention)
        layers = list(range(d.num_layers)) if layers is None else list(layers)
        for lay in layers:
            if not 0 <= lay < d.num_layers:
                raise AnalysisInputError(f"layer {lay} is out of range [0, {d.num_layers})")
        heads_of = {k: (d.num_heads if k == "queries" else d.num_kv_heads) for k in kinds}
        heads_sel = {}
        for k in kinds:
            if heads is None:
                heads_sel[k] = list(range(heads_of[k]))
            else:
                heads_sel[k] = parse_index_list(
                    ",".join(str(h) for h in heads), heads_of[k], "heads"
                )
        for c in codecs:
            if not any(c.for_kind(k) is not None for k in kinds):
                raise CodecConfigError(
                    f"codec {c.label!r} names none of the selected kinds {kinds}"
                )
        jobs = [(lay, k, h) for lay in layers for k in kinds for h in heads_sel[k]]
        sequences = d.sequences()
        token_ids = np.asarray(d.token_ids)
        seq_idx = d.sequence_index()
        pos = d.positions()
        group = d.num_heads // d.num_kv_heads
        source = d.describe()
        source["dump"] = str(d.path)

        # untimed warm-up of every codec on a small piece of the first slab (numba compile,
        # codebook tables), so that compilation never lands inside a measurement
        first = d.slab(jobs[0][1], jobs[0][0], jobs[0][2])
        _check_finite(first, "layer {} {} head {}".format(*jobs[0]))
        piece = first[: min(first.shape[0], 256)]
        for c in codecs:
            for k in kinds:
                codec = c.for_kind(k)
                if codec is not None:
                    try:
                        if hasattr(codec, "for_slab"):  # the slab identity hook (klt)
                            codec = codec.for_slab(jobs[0][0], k, jobs[0][2])
                        codec.decode(codec.encode(piece))
                    except CodecConfigError as exc:
                        raise CodecConfigError(f"codec {c.label!r}: {exc}") from None

        per_codec: dict[int, dict] = {i: {} for i in range(len(codecs))}
        slab_records: list = []
        ref_records: list = []
        cost_kind: dict[str, TokenCost] = {}
        bar = tqdm(
            jobs, desc="bench", unit="slab", file=sys.stderr, disable=not progress,
            dynamic_ncols=True,
        )
        q_cache: dict = {}
        for lay, kind, head in bar:
            bar.set_postfix_str(f"layer {lay} {kind} head {head}")
            label = f"layer {lay} {kind} head {head}"
            slab = d.slab(kind, lay, head)
            x64 = slab.astype(np.float64)
            _check_finite(x64, label)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AnalysisWarning)
                try:
                    am, bits = analyze_slab(
                        slab, snr_db=[pervector_snr_db], sequences=sequences,
                        token_ids=token_ids, knn_samples=knn_samples, knn_k=knn_k, seed=seed,
                        pervector_snr_db=pervector_snr_db, top_tokens=top_tokens,
                        return_token_bits=True,
                    )
                except AnalysisInputError as exc:
                    raise AnalysisInputError(f"{label}: {exc}") from None
            ref = _SlabReference(x64, am)
            ref_metrics = {k: am.get(k) for k in _ANALYSIS_KEYS}
            ref_metrics["slb_entropy_bits_per_element"] = ref.h_slb
            ref_records.append(
                results.make_record("slab", ref_metrics, layer=lay, kind=kind, head=head)
            )
            cost_kind.setdefault(kind, TokenCost(d.num_tokens)).add(bits)
            att = None
            if use_attention and kind in ("keys", "values"):
                if lay not in q_cache:
                    q_cache.clear()
                    q_cache[lay] = d.queries(lay).astype(np.float64)
                q = q_cache[lay][head * group : (head + 1) * group]
                keys = x64 if kind == "keys" else d.slab("keys", lay, head).astype(np.float64)
                att = {
                    "kind": kind, "queries": q, "keys": keys, "sequences": sequences,
                    "max_queries": max_queries,
                }
            for i, c in enumerate(codecs):
                codec = c.for_kind(kind)
                if codec is None:
                    continue
                if hasattr(codec, "for_slab"):  # the slab identity hook (klt; docs/codecs.md)
                    try:
                        codec = codec.for_slab(lay, kind, head, positions=pos,
                                               token_ids=token_ids, sequences=sequences)
                    except CodecConfigError as exc:
                        raise CodecConfigError(f"{label}: codec {c.label!r}: {exc}") from None
                try:
                    m = measure_codec(
                        codec, slab, ref, x64=x64, attention=att, repeat=repeat, gpu=gpu
                    )
                except CodecConfigError as exc:
                    raise CodecConfigError(f"{label}: codec {c.label!r}: {exc}") from None
                per_codec[i][(lay, kind, head)] = m
                slab_records.append(
                    results.make_record("slab", m, layer=lay, kind=kind, head=head,
                                        codec=c.config)
                )
        bar.close()
        n_tok = d.num_tokens

    agg_records = []
    for i, c in enumerate(codecs):
        ms = per_codec[i]
        for lay in layers:
            for kind in kinds:
                group_ms = [ms[(lay, kind, h)] for h in heads_sel[kind] if (lay, kind, h) in ms]
                if group_ms:
                    agg_records.append(
                        results.make_record("layer", aggregate_codec_metrics(group_ms),
                                            layer=lay, kind=kind, codec=c.config)
                    )
        for kind in kinds:
            group_ms = [m for (lay, k, h), m in ms.items() if k == kind]
            if group_ms:
                agg_records.append(
                    results.make_record("kind", aggregate_codec_metrics(group_ms), kind=kind,
                                        codec=c.config)
                )
        agg_records.append(
            results.make_record("overall", aggregate_codec_metrics(list(ms.values())),
                                codec=c.config)
        )
    for kind in kinds:
        km = {"pervector_snr_db": pervector_snr_db}
        km.update(cost_kind[kind].metrics(seq_idx, pos, token_ids, top_tokens, histogram_bins))
        ref_records.append(results.make_record("kind", km, kind=kind))

    settings = {
        "preset": preset,
        "codecs": [c.config for c in codecs],
        "layers": layers,
        "kinds": kinds,
        "heads": heads_sel,
        "attention": use_attention,
        "max_queries": max_queries,
        "knn_samples": knn_samples,
        "knn_k": knn_k,
        "seed": seed,
        "pervector_snr_db": pervector_snr_db,
        "histogram_bins": histogram_bins,
        "repeat": repeat,
        "snr_reference": "variance_per_element",
        "num_tokens": n_tok,
        "gpu": {"available": gpu.available, "device": gpu.name, "reason": gpu.reason},
        "cpu_threads": _cpu_threads(),
    }
    doc = results.new_results("bench", source, settings, command=command)
    doc["records"] = ref_records + slab_records + agg_records
    return doc


def _cpu_threads() -> int | None:
    try:
        import numba

        return int(numba.get_num_threads())
    except Exception:  # noqa: BLE001 - informational only
        return None


def add_quality(doc: dict, quality: dict, specs: Sequence[dict]) -> dict:
    """Add the records of :func:`kvinfo.evaluate.evaluate`'s output to a bench document.

    One ``scope: "run"`` record per codec (its normalised config, in the order of ``specs``)
    with ``perplexity``, ``perplexity_increase_pct``, ``kl``, ``top1_agreement``,
    ``bits_per_element`` (of the cache the model actually used) and ``baseline_perplexity``;
    and one record with ``codec: null`` for the uncompressed baseline.
    """
    from . import results

    base = dict(quality["baseline"])
    doc["records"].append(results.make_record("run", {**base, "quality_baseline": True}))
    for spec, r in zip(specs, quality["results"], strict=True):
        metrics = {k: v for k, v in r.items() if k != "codec"}
        metrics["baseline_perplexity"] = base["perplexity"]
        doc["records"].append(
            results.make_record("run", metrics, codec=CodecSpec(spec).config)
        )
    doc["settings"]["eval"] = {
        k: quality.get(k) for k in ("num_tokens", "prefix", "num_scored_tokens", "block", "model")
    }
    return doc


# --------------------------------------------------------------------------------------
# table
# --------------------------------------------------------------------------------------


def _f(v, width=6, prec=2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return f"{'-':>{width}}"
    return f"{v:>{width}.{prec}f}"


def format_table(doc: dict, scopes=("kind", "overall")) -> str:
    """A fixed-width table of a bench document's aggregate records (and quality columns)."""
    quality = {
        json.dumps(r["codec"], sort_keys=True): r["metrics"]
        for r in doc["records"]
        if r["scope"] == "run" and r["codec"] is not None
    }
    rows = [r for r in doc["records"] if r["scope"] in scopes and r["codec"] is not None]
    width = max([len(codec_label(r["codec"])) for r in rows] + [10])
    width = min(width, 44)
    head = (
        f"{'codec':<{width}} {'kind':<6} {'bits':>6} {'side':>5} {'SNR dB':>6} {'R_G':>6} "
        f"{'SLB~':>6} {'H0own':>6} {'gapSLB':>6} {'gap%':>6} {'enc':>7} {'dec':>7}"
    )
    has_att = any("attention_kl_nats" in r["metrics"] for r in rows)
    if has_att:
        head += f" {'attKL':>7} {'top1':>5}"
    if quality:
        head += f" {'ppl+%':>7}"
    lines = [
        "bits per element; R_G = Gaussian R(D) (upper bound on R(D)), SLB~ = Shannon lower bound "
        "estimate, H0own = order-0 entropy of the codec's symbols (+ literal bits), all at the "
        "achieved MSE; gap = bits - SLB~; enc/dec in MB/s of KV on the CPU",
        head,
        "-" * len(head),
    ]
    for r in rows:
        m = r["metrics"]
        label = codec_label(r["codec"])
        if len(label) > width:
            label = label[: width - 1] + "…"
        row = (
            f"{label:<{width}} {(r['kind'] or 'all'):<6} {_f(m.get('bits_per_element'), 6, 3)} "
            f"{_f(m.get('side_bits_per_element'), 5, 2)} {_f(m.get('snr_db'), 6, 1)} "
            f"{_f(m.get('rd_gaussian_bits_per_element'), 6, 3)} "
            f"{_f(m.get('slb_estimate_bits_per_element'), 6, 3)} "
            f"{_f(m.get('own_symbols_entropy_bits_per_element'), 6, 3)} "
            f"{_f(m.get('gap_to_slb_estimate_bits_per_element'), 6, 3)} "
            f"{_f(m.get('gap_to_slb_estimate_pct'), 6, 0)} "
            f"{_f(m.get('encode_mbytes_per_s'), 7, 1)} {_f(m.get('decode_mbytes_per_s'), 7, 1)}"
        )
        if has_att:
            row += (
                f" {_f(m.get('attention_kl_nats'), 7, 4)} "
                f"{_f(m.get('attention_top1_agreement'), 5, 3)}"
            )
        if quality:
            qm = quality.get(json.dumps(r["codec"], sort_keys=True), {})
            row += f" {_f(qm.get('perplexity_increase_pct'), 7, 2)}"
        lines.append(row)
    gpu = doc["settings"].get("gpu", {})
    if gpu.get("available"):
        lines.append(f"GPU decode timed on {gpu.get('device')} (see gpu_* metrics in the JSON)")
    else:
        lines.append(f"throughput: CPU only ({gpu.get('reason') or 'no GPU'})")
    return "\n".join(lines)
