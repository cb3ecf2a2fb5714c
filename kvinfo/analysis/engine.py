"""The analyze engine: every information limit of the selected slabs of a dump.

:func:`analyze_dump` is what ``kvinfo analyze`` runs: a dump, a
:class:`~kvinfo.dumps.Selection` and options in, a results document (``tool:
"analyze"``, ``docs/results-schema.md``) out. It reads the selected slabs one at a time
with :meth:`kvinfo.dumps.Dump.iter_slabs`, analyses each with
:func:`~kvinfo.analysis.analyze_slab`'s engine, and aggregates them per (layer, kind), per
kind and overall with :func:`~kvinfo.analysis.aggregate.aggregate_metrics` (the rule for
nulls: an aggregate uses the slabs where the value is defined and records how many of how
many). Slabs with no more vectors than dimensions are analysed in part (``allow_partial``
of :func:`~kvinfo.analysis.analyze_slab`): their covariance-based metrics are null with the
reason in ``null_reasons``.

Examples
--------
>>> import tempfile, os
>>> from kvinfo.dumps import Selection, write_synthetic_dump
>>> path = write_synthetic_dump(os.path.join(tempfile.mkdtemp(), "a.h5"), num_layers=2,
...                             num_tokens=128, head_dim=8)
>>> doc = analyze_dump(path, Selection(layers=[1], kinds="keys"), snr_db=[20.0],
...                    knn_samples=100)
>>> [r["scope"] for r in doc["records"]]
['slab', 'slab', 'layer', 'kind', 'overall']
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Sequence

import numpy as np

from ..errors import AnalysisInputError
from ._slab import (
    DEFAULT_SNR_DB,
    AnalysisWarning,
    TokenCost,
    check_knn_options,
    slab_analysis,
)
from .aggregate import aggregate_metrics, null_reasons

__all__ = [
    "analyze_dump",
    "NOT_AGGREGATED",
    "aggregate_slab_metrics",
    "check_analysis_options",
    "slab_warning",
]

#: metrics that are per-channel or per-slab details, never averaged into aggregates
NOT_AGGREGATED = frozenset(
    {
        "dtype",
        "channel_mean",
        "channel_variance",
        "channel_excess_kurtosis",
        "outlier_channels",
        "outlier_channel_rms_ratio",
        "zero_variance_channels",
        "pervector_top_tokens",
        "notes",
        "null_reasons",
        "nonfinite_elements",
        "excluded_vectors",
        "pervector_p50_bits_per_element",
        "pervector_p90_bits_per_element",
        "pervector_p99_bits_per_element",
        "pervector_max_bits_per_element",
        "pervector_first_token_bits_per_element",
        "pervector_first_token_to_median_ratio",
        "pervector_first_token_percentile",
    }
)


def slab_warning(label: str, note: str) -> AnalysisWarning:
    """An :class:`~kvinfo.analysis.AnalysisWarning` ``"{label}: {note}"`` that also carries
    ``slab`` (the label) and ``note``, so that a caller can group one note over many slabs."""
    w = AnalysisWarning(f"{label}: {note}")
    w.slab, w.note = label, note
    return w


def aggregate_slab_metrics(slabs: list[dict]) -> dict:
    """Aggregate analyze's slab metrics: means over the slabs that define each value (see
    :mod:`kvinfo.analysis.aggregate`), sums of ``nonfinite_elements`` and
    ``excluded_vectors``, and ``null_reasons`` for the metrics no slab defines."""
    out = aggregate_metrics(slabs, skip=NOT_AGGREGATED)
    reasons = null_reasons(slabs, out)
    if reasons:
        out["null_reasons"] = reasons
    out["nonfinite_elements"] = int(sum(m.get("nonfinite_elements", 0) for m in slabs))
    out["excluded_vectors"] = int(sum(m.get("excluded_vectors", 0) for m in slabs))
    return out


def check_analysis_options(
    snr_db, knn_samples, knn_k, pervector_snr_db, top_tokens, outlier_rms_ratio
) -> list[float]:
    """Refuse options of :func:`analyze_dump` that cannot work; return the grid as a list.

    Raises :class:`~kvinfo.errors.AnalysisInputError` naming the parameter.
    """
    try:
        grid = [float(v) for v in np.asarray(snr_db, dtype=np.float64).ravel()]
    except (TypeError, ValueError):
        raise AnalysisInputError(f"snr_db must be a list of numbers; got {snr_db!r}") from None
    if not grid or not all(math.isfinite(v) for v in grid):
        raise AnalysisInputError("snr_db must be a non-empty list of finite numbers")
    if len(grid) > 1000:
        raise AnalysisInputError(f"snr_db has {len(grid)} points; at most 1000")
    check_knn_options(knn_samples, knn_k, pervector_snr_db)
    if isinstance(top_tokens, bool) or not isinstance(top_tokens, int) or top_tokens < 0:
        raise AnalysisInputError(f"top_tokens must be an integer >= 0; got {top_tokens!r}")
    if not (math.isfinite(outlier_rms_ratio) and outlier_rms_ratio > 0):
        raise AnalysisInputError(
            f"outlier_rms_ratio must be a finite number > 0; got {outlier_rms_ratio}"
        )
    return grid


def analyze_dump(
    dump,
    selection=None,
    *,
    snr_db: Sequence[float] = DEFAULT_SNR_DB,
    pervector_snr_db: float = 20.0,
    knn_samples: int = 2000,
    knn_k: int = 4,
    seed: int = 0,
    top_tokens: int = 5,
    outlier_rms_ratio: float = 4.0,
    progress: bool = False,
    command: list[str] | None = None,
) -> dict:
    """Analyse the selected slabs of a dump; return a results document (``tool: "analyze"``).

    Parameters
    ----------
    dump : path-like or kvinfo.dumps.Dump
        A kvdump (a path is opened and closed here; an open dump stays open).
    selection : kvinfo.dumps.Selection, optional
        Layers, kinds, heads and sequences (default: every layer and head of the keys and
        values).
    snr_db : sequence of float
        The distortion grid, SNR in dB relative to each slab's variance per element.
    pervector_snr_db, knn_samples, knn_k, seed, top_tokens, outlier_rms_ratio :
        As for :func:`~kvinfo.analysis.analyze_slab`.
    progress : bool
        A progress bar on stderr.
    command : list of str, optional
        The command line recorded in the document (default: ``sys.argv``).

    Returns
    -------
    dict
        Records: one per slab, then per (layer, kind), per kind and overall. A note of a
        slab (excluded NaN rows, a null metric and why) is also issued as an
        :class:`~kvinfo.analysis.AnalysisWarning` naming the slab.

    Raises
    ------
    SelectionError
        The selection does not fit the dump.
    AnalysisInputError
        A bad option (the message names the parameter) or a slab that cannot be analysed.
    """
    from tqdm import tqdm

    from ..dumps import Dump, Selection, open_dump
    from ._stats import warmup

    options = _options(snr_db, pervector_snr_db, knn_samples, knn_k, seed, top_tokens,
                       outlier_rms_ratio)
    selection = Selection() if selection is None else selection
    own = not isinstance(dump, Dump)
    d = open_dump(dump) if own else dump
    try:
        sel, source, settings = _prepare(d, selection, options)
        warmup()
        per_slab = {}
        bar = tqdm(
            d.iter_slabs(selection=sel), total=len(sel.slabs()), desc="analyze", unit="slab",
            file=sys.stderr, disable=not progress, dynamic_ncols=True,
        )
        for lay, kind, head, slab in bar:
            bar.set_postfix_str(f"layer {lay} {kind} head {head}")
            per_slab[(lay, kind, head)] = analyze_one_slab(slab, sel, options, (lay, kind, head))
        bar.close()
    finally:
        if own:
            d.close()
    return assemble_analysis(sel, per_slab, source, settings, options, command)


def _options(snr_db, pervector_snr_db, knn_samples, knn_k, seed, top_tokens,
             outlier_rms_ratio) -> dict:
    grid = check_analysis_options(
        snr_db, knn_samples, knn_k, pervector_snr_db, top_tokens, outlier_rms_ratio
    )
    return {"snr_db": grid, "pervector_snr_db": pervector_snr_db, "knn_samples": knn_samples,
            "knn_k": knn_k, "seed": seed, "top_tokens": top_tokens,
            "outlier_rms_ratio": outlier_rms_ratio}


def _prepare(d, selection, options: dict):
    """Resolve the selection against an open dump; the document's source and settings."""
    sel = selection.resolve(d)
    source = d.describe()
    source["dump"] = str(d.path)
    settings = {
        **sel.settings(),
        "snr_db": options["snr_db"],
        "pervector_snr_db": options["pervector_snr_db"],
        "knn_samples": options["knn_samples"],
        "knn_k": options["knn_k"],
        "seed": options["seed"],
        "top_tokens": options["top_tokens"],
        "outlier_rms_ratio": options["outlier_rms_ratio"],
        "grid_reference": "variance_per_element",
    }
    return sel, source, settings


def analyze_one_slab(slab, sel, options: dict, where: tuple) -> dict:
    """Analyse one slab of a resolved selection: ``{"metrics", "token_bits"}`` (what a task of
    :func:`analyze_dumps` returns; picklable). ``where`` is ``(layer, kind, head)``."""
    label = "layer {} {} head {}".format(*where)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnalysisWarning)
        try:
            res = slab_analysis(
                slab, snr_db=options["snr_db"], sequences=list(sel.sequence_ranges),
                token_ids=sel.token_ids, knn_samples=options["knn_samples"],
                knn_k=options["knn_k"], seed=options["seed"],
                pervector_snr_db=options["pervector_snr_db"], top_tokens=options["top_tokens"],
                outlier_rms_ratio=options["outlier_rms_ratio"], allow_partial=True,
            )
        except AnalysisInputError as exc:
            raise AnalysisInputError(f"{label}: {exc}") from None
    return {"metrics": res.metrics, "token_bits": res.token_bits}


def assemble_analysis(sel, per_slab: dict, source: dict, settings: dict, options: dict,
                      command=None) -> dict:
    """The analyze document from every slab's :func:`analyze_one_slab` result, in selection
    order (so it does not depend on where or in which order the slabs were analysed). Each
    slab's notes are issued here as :class:`~kvinfo.analysis.AnalysisWarning`."""
    from .. import results

    top_tokens = options["top_tokens"]
    n_tok = sel.num_tokens
    seq, pos, token_ids = sel.sequence_index, sel.positions, sel.token_ids
    slab_records = []
    slab_metrics: dict = {}
    cost_layer: dict = {}
    cost_kind: dict = {}
    cost_all = TokenCost(n_tok)
    for lay, kind, head in sel.slabs():
        r = per_slab[(lay, kind, head)]
        m, bits = r["metrics"], r["token_bits"]
        label = f"layer {lay} {kind} head {head}"
        for note in m.get("notes", []):
            warnings.warn(slab_warning(label, note), stacklevel=3)
        slab_metrics[(lay, kind, head)] = m
        slab_records.append(results.make_record("slab", m, layer=lay, kind=kind, head=head))
        cost_layer.setdefault((lay, kind), TokenCost(n_tok)).add(bits)
        cost_kind.setdefault(kind, TokenCost(n_tok)).add(bits)
        cost_all.add(bits)

    def group(ms: list[dict], cost: TokenCost) -> dict:
        agg = aggregate_slab_metrics(ms)
        per_token = cost.metrics(seq, pos, token_ids, top_tokens)
        agg.update(per_token)
        # the per-token figures are recomputed from the slabs' code lengths: null when no
        # slab defines them, for the slabs' reason
        for key, v in per_token.items():
            reason = next((m["null_reasons"][key] for m in ms
                           if key in (m.get("null_reasons") or {})), None)
            if v is None and reason:
                agg.setdefault("null_reasons", {})[key] = reason
        return agg

    layer_records = []
    for lay in sel.layers:
        for kind in sel.kinds:
            ms = [slab_metrics[(lay, kind, h)] for h in sel.heads[kind]]
            agg = group(ms, cost_layer[(lay, kind)])
            layer_records.append(results.make_record("layer", agg, layer=lay, kind=kind))
    kind_records = []
    for kind in sel.kinds:
        ms = [m for (lay, k, h), m in slab_metrics.items() if k == kind]
        kind_records.append(results.make_record("kind", group(ms, cost_kind[kind]), kind=kind))
    overall = results.make_record("overall", group(list(slab_metrics.values()), cost_all))

    doc = results.new_results("analyze", source, settings, command=command)
    doc["records"] = slab_records + layer_records + kind_records + [overall]
    return doc
