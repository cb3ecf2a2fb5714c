"""The bench engine: :func:`bench_dump`, a dump, a selection and codecs in, a results
document out."""

from __future__ import annotations

import itertools
import sys
import warnings
from collections.abc import Sequence

import numpy as np

from ..errors import AnalysisInputError, CodecConfigError
from ._aggregate import aggregate_codec_metrics
from ._measure import measure_codec
from ._reference import SlabReference
from ._spec import CodecSpec
from ._timing import GpuTimer, cpu_threads

__all__ = ["bench_dump", "ANALYSIS_KEYS"]

#: the analysis metrics a bench reference record carries
ANALYSIS_KEYS = (
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


def _selection(selection, layers, kinds, heads, sequences):
    from ..dumps import Selection

    if selection is None:
        return Selection(layers=layers, kinds=kinds, heads=heads, sequences=sequences)
    if any(v is not None for v in (layers, kinds, heads, sequences)):
        raise TypeError("give either selection or layers/kinds/heads/sequences, not both")
    return selection


def bench_dump(
    dump,
    specs: Sequence[dict],
    *,
    selection=None,
    layers: Sequence[int] | None = None,
    kinds: Sequence[str] | None = None,
    heads: Sequence[int] | None = None,
    sequences: Sequence[int] | None = None,
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
    token_bits: dict | None = None,
) -> dict:
    """Bench codecs on the slabs of a dump; return a results document (``tool: "bench"``).

    Parameters
    ----------
    dump : path-like or kvinfo.dumps.Dump
        A kvdump (a path is opened once and closed here; an open dump stays open).
    specs : sequence of dict
        Codec configs (a KV codec: uniform, ecsq, turbo, lossless...) or per-kind specs
        ``{"keys": config, "values": config}``.
    selection : kvinfo.dumps.Selection, optional
        Layers, kinds, heads and sequences; default all layers, ``keys`` and ``values``
        (the kinds present), all heads, all sequences. ``queries`` may also be benched
        (heads are then query heads). ``layers``, ``kinds``, ``heads`` and ``sequences``
        are a shorthand for ``selection=Selection(layers=..., ...)``.
    attention : bool or None
        Attention errors: None computes them when the dump has queries; True requires
        queries (:class:`~kvinfo.errors.AnalysisInputError` without); False skips them.
    max_queries : int or None
        Evenly spaced query positions per slab for the attention errors (None: all).
    knn_samples, knn_k, seed, pervector_snr_db :
        As for ``kvinfo analyze`` (the SLB estimate and the per-vector code lengths of each
        slab come from :func:`kvinfo.analysis.slab_analysis` with these settings, which
        also computes the slab's covariance and eigendecomposition, once, for the bounds).
    repeat : int
        Timings are the best of ``repeat`` runs.
    use_gpu : bool
        Time GPU decoding too when a CUDA GPU is present.
    command : list of str, optional
        The command line recorded in the document (default: ``sys.argv``).
    token_bits : dict, optional
        If given, each slab's per-vector code lengths are stored in it under
        ``(layer, kind, head)`` (what :func:`kvinfo.bench.bench_dumps` merges).

    Returns
    -------
    dict
        A results document; see ``docs/results-schema.md``. Slabs with no more vectors than
        dimensions are benched too: their rates, distortions and own-symbol entropies are
        measured, their bounds are null with the reason in ``null_reasons``.
    """
    from tqdm import tqdm

    from .. import results
    from ..analysis import AnalysisWarning, TokenCost, check_knn_options, slab_analysis
    from ..dumps import Dump, open_dump
    from ..kernels import warmup

    if not specs:
        raise CodecConfigError("no codecs to bench: give --codec or --preset")
    codecs = [CodecSpec(s) for s in specs]
    if max_queries is not None and max_queries < 1:
        raise AnalysisInputError(f"max_queries must be >= 1 or None; got {max_queries}")
    if repeat < 1:
        raise AnalysisInputError(f"repeat must be at least 1; got {repeat}")
    if histogram_bins < 1:
        raise AnalysisInputError(f"histogram_bins must be at least 1; got {histogram_bins}")
    check_knn_options(knn_samples, knn_k, pervector_snr_db)
    selection = _selection(selection, layers, kinds, heads, sequences)

    own = not isinstance(dump, Dump)
    d = open_dump(dump) if own else dump
    try:
        sel = selection.resolve(d)
        kinds = list(sel.kinds)
        if attention and not d.has_queries:
            raise AnalysisInputError(
                f"attention errors need the queries, and {d.path} has none (its kinds: "
                f"{list(d.kinds)}); capture with --queries, or bench without --attention"
            )
        for c in codecs:
            if not any(c.for_kind(k) is not None for k in kinds):
                raise CodecConfigError(
                    f"codec {c.label!r} names none of the selected kinds {kinds}"
                )
        # -- alloc (issue 16): codecs made for one geometry (plans) refuse another ------
        for c in codecs:
            for k in kinds:
                cc = c.for_kind(k)
                if cc is not None and hasattr(cc, "check_geometry"):
                    cc.check_geometry(d.num_layers, d.num_kv_heads, d.head_dim)
        # -- end alloc ---------------------------------------------------------------------
        use_attention = d.has_queries if attention is None else bool(attention)
        warmup()
        gpu = GpuTimer(use_gpu)
        group = d.num_heads // d.num_kv_heads
        ranges = list(sel.sequence_ranges)
        token_ids, seq_idx, pos = sel.token_ids, sel.sequence_index, sel.positions
        n_tok = sel.num_tokens
        source = d.describe()
        source["dump"] = str(d.path)

        per_codec: dict[int, dict] = {i: {} for i in range(len(codecs))}
        slab_records: list = []
        ref_records: list = []
        cost_kind: dict[str, TokenCost] = {}
        q_cache: dict = {}
        warmed = False
        slabs = d.iter_slabs(selection=sel)
        # the first slab is checked before the progress bar starts, so that a damaged dump
        # gives its one-line error alone
        first = next(slabs)
        if not np.all(np.isfinite(np.asarray(first[3], dtype=np.float32))):
            _nonfinite(first[3], "layer {} {} head {}".format(*first[:3]))
        bar = tqdm(
            itertools.chain([first], slabs), total=len(sel.slabs()), desc="bench",
            unit="slab", file=sys.stderr, disable=not progress, dynamic_ncols=True,
        )
        for lay, kind, head, slab in bar:
            label = f"layer {lay} {kind} head {head}"
            bar.set_postfix_str(label)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AnalysisWarning)
                try:
                    res = slab_analysis(
                        slab, snr_db=[pervector_snr_db], sequences=ranges,
                        token_ids=token_ids, knn_samples=knn_samples, knn_k=knn_k, seed=seed,
                        pervector_snr_db=pervector_snr_db, top_tokens=top_tokens,
                        allow_partial=True,
                    )
                except AnalysisInputError as exc:
                    raise AnalysisInputError(f"{label}: {exc}") from None
            am = res.metrics
            if am["nonfinite_elements"]:
                _nonfinite(slab, label)
            x64 = res.x64 if res.x64 is not None else np.asarray(slab, dtype=np.float64)
            if not warmed:
                # untimed warm-up of every codec on a small piece of the first slab (numba
                # compile, codebook tables), so that compilation never lands in a measurement
                _warm_codecs(codecs, kinds, slab[: min(slab.shape[0], 256)], lay, head)
                warmed = True
            ref = SlabReference(res)
            ref_metrics = {k: am.get(k) for k in ANALYSIS_KEYS}
            ref_metrics["slb_entropy_bits_per_element"] = ref.h_slb
            if am.get("null_reasons"):
                ref_metrics["null_reasons"] = {
                    k: v for k, v in am["null_reasons"].items() if k in ANALYSIS_KEYS
                }
                ref_metrics["null_reasons"]["slb_entropy_bits_per_element"] = ref.reason
            ref_records.append(
                results.make_record("slab", ref_metrics, layer=lay, kind=kind, head=head)
            )
            cost_kind.setdefault(kind, TokenCost(n_tok)).add(res.token_bits)
            if token_bits is not None:  # for kvinfo.bench.bench_dumps (issue 19)
                token_bits[(lay, kind, head)] = res.token_bits
            att = None
            if use_attention and kind in ("keys", "values"):
                if lay not in q_cache:
                    q_cache.clear()
                    q_cache[lay] = sel.take(d.queries(lay), axis=1).astype(np.float64)
                q = q_cache[lay][head * group : (head + 1) * group]
                keys = x64 if kind == "keys" else sel.take(d.slab("keys", lay, head)).astype(
                    np.float64
                )
                att = {
                    "kind": kind, "queries": q, "keys": keys, "sequences": ranges,
                    "max_queries": max_queries,
                }
            for i, c in enumerate(codecs):
                codec = c.for_kind(kind)
                if codec is None:
                    continue
                if hasattr(codec, "for_slab"):  # the slab identity hook (klt; docs/codecs.md)
                    try:
                        codec = codec.for_slab(lay, kind, head, positions=pos,
                                               token_ids=token_ids, sequences=ranges)
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
    finally:
        if own:
            d.close()

    agg_records = []
    for i, c in enumerate(codecs):
        ms = per_codec[i]
        for lay in sel.layers:
            for kind in kinds:
                group_ms = [ms[(lay, kind, h)] for h in sel.heads[kind] if (lay, kind, h) in ms]
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
        **sel.settings(),
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
        "cpu_threads": cpu_threads(),
    }
    doc = results.new_results("bench", source, settings, command=command)
    doc["records"] = ref_records + slab_records + agg_records
    return doc


def _nonfinite(slab, label: str) -> None:
    a = np.asarray(slab, dtype=np.float32)
    bad = int(a.size - np.count_nonzero(np.isfinite(a)))
    raise AnalysisInputError(
        f"{label}: the slab holds {bad} NaN or Inf values of {slab.size}; the codecs and "
        "bounds need finite values (kvinfo analyze reports such slabs, excluding those vectors)"
    )


def _warm_codecs(codecs, kinds, piece, layer: int = 0, head: int = 0) -> None:
    for c in codecs:
        for k in kinds:
            codec = c.for_kind(k)
            if codec is not None:
                try:
                    if hasattr(codec, "for_slab"):  # the slab identity hook (klt)
                        codec = codec.for_slab(layer, k, head)
                    codec.decode(codec.encode(piece))
                except CodecConfigError as exc:
                    raise CodecConfigError(f"codec {c.label!r}: {exc}") from None
