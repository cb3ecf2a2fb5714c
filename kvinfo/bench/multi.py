"""Bench codecs on many dumps as one, in this process or on a Dask cluster: :func:`bench_dumps`.

The dumps (paths or globs) are combined per (layer, kind, head) as for
:func:`kvinfo.analysis.analyze_dumps`: a slab of the set is that slab of every dump
(:class:`~kvinfo.dumps.DumpSet`), so the bounds of each slab come from the merged statistics
of all the dumps and each codec codes the slab of the set. One task per selected slab runs
:func:`~kvinfo.bench.bench_dump` itself (the per-dump engine, unchanged) on that slab of the
set, here, on a ``LocalCluster`` (``workers``) or on an existing cluster (``scheduler``)
through :class:`kvinfo.cluster.TaskRunner`; the client then assembles the document in
selection order: the slabs' reference and codec records as the tasks wrote them, the
aggregates per (layer, kind), per kind and overall with
:func:`~kvinfo.bench.aggregate_codec_metrics`, and the per-kind per-vector summaries from the
slabs' code lengths. Rates, distortions and bounds do not depend on where the tasks ran
(tested); timings are measurements of whichever worker ran the slab.

A dump that cannot be read is named; ``skip_failed`` drops it with a warning (the run starts
again without it) instead of stopping. Nothing is written until the whole run is done.

Examples
--------
>>> import os, tempfile
>>> from kvinfo.dumps import write_synthetic_dump
>>> tmp = tempfile.mkdtemp()
>>> paths = [write_synthetic_dump(os.path.join(tmp, f"d{i}.h5"), num_layers=1,
...                               num_tokens=96, head_dim=8, seed=i) for i in range(2)]
>>> doc = bench_dumps(paths, [{"id": "uniform", "bits": 4}], kinds="keys", knn_samples=100,
...                   use_gpu=False, attention=False)
>>> doc["settings"]["num_tokens"], len(doc["source"]["dumps"])
(192, 2)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from ..errors import DumpSetError
from ._aggregate import aggregate_codec_metrics
from ._engine import _selection, bench_dump
from ._spec import CodecSpec

__all__ = ["bench_dumps"]


def _bench_task(args):
    """One slab of the set, benched by :func:`bench_dump` (runs on a worker)."""
    from ..analysis.multi import open_dump_set
    from ..dumps import Selection

    paths, selection, (lay, kind, head), specs, options = args
    d = open_dump_set(paths)
    one = Selection(layers=[lay], kinds=[kind], heads=[head], sequences=selection.sequences)
    bits: dict = {}
    doc = bench_dump(d, specs, selection=one, token_bits=bits, progress=False, **options)
    recs = [r for r in doc["records"] if r["scope"] == "slab"]
    return {"records": recs, "token_bits": bits[(lay, kind, head)],
            "settings": doc["settings"]}


def bench_dumps(
    dumps,
    specs: Sequence[dict],
    *,
    selection=None,
    layers: Sequence[int] | None = None,
    kinds: Sequence[str] | None = None,
    heads: Sequence[int] | None = None,
    sequences: Sequence[int] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    skip_failed: bool = False,
    histogram_bins: int = 60,
    top_tokens: int = 5,
    progress: bool = False,
    command: list[str] | None = None,
    preset: str | None = None,
    **options,
) -> dict:
    """Bench codecs on several dumps as one; return a bench results document.

    Parameters
    ----------
    dumps : sequence of path-like or str
        Dump paths and glob patterns.
    specs, selection, layers, kinds, heads, sequences, histogram_bins, top_tokens, preset :
        As for :func:`~kvinfo.bench.bench_dump`.
    workers, scheduler, skip_failed :
        As for :func:`~kvinfo.analysis.analyze_dumps`.
    progress : bool
        A progress bar over the slab tasks.
    command : list of str, optional
        The command line recorded in the document.
    **options
        Every other keyword of :func:`~kvinfo.bench.bench_dump` (``attention``,
        ``max_queries``, ``knn_samples``, ``knn_k``, ``seed``, ``pervector_snr_db``,
        ``repeat``, ``use_gpu``), passed to each slab's run.

    Returns
    -------
    dict
        A bench document of the concatenated dumps; ``source.dumps`` lists them.

    Raises
    ------
    DumpSetError
        A glob matching nothing, an unreadable dump (without ``skip_failed``), or dumps of
        different models or geometries.
    """
    from ..analysis import AnalysisWarning
    from ..analysis.multi import open_dump_set, release_dump_set, skip_unreadable
    from ..cluster import check_workers
    from ..dumps import expand_dump_paths

    check_workers(workers, scheduler)
    for s in specs:
        CodecSpec(s)
    selection = _selection(selection, layers, kinds, heads, sequences)
    paths = [str(p) for p in expand_dump_paths(dumps)]
    if skip_failed:
        paths = skip_unreadable(paths, "bench")
    opts = {**options, "histogram_bins": histogram_bins, "top_tokens": top_tokens,
            "preset": preset, "command": command}
    try:
        while True:
            d = open_dump_set(paths)
            sel = selection.resolve(d)
            if options.get("attention") and not d.has_queries:
                bench_dump(d, specs, selection=selection, **opts)  # its error names the dump
            source = d.describe()
            source["dump"] = str(d.path)
            source["dumps"] = list(paths)
            try:
                per_slab = _run(paths, selection, sel, specs, opts, workers, scheduler,
                                progress)
            except DumpSetError as exc:
                bad = getattr(exc, "dump", None)
                if not skip_failed or bad is None or bad not in paths:
                    raise
                warnings.warn(AnalysisWarning(f"bench: skipped dump {bad}: {exc}"),
                              stacklevel=2)
                paths = [p for p in paths if p != bad]
                if not paths:
                    raise DumpSetError("no dump could be read (every one was skipped)") from None
                continue
            return _assemble(sel, per_slab, specs, source, opts, command)
    finally:
        release_dump_set()


def _run(paths, selection, sel, specs, opts, workers, scheduler, progress) -> dict:
    from ..cluster import TaskRunner

    where = sel.slabs()
    tasks = [(paths, selection, w, list(specs), opts) for w in where]
    labels = ["layer {} {} head {}".format(*w) for w in where]
    out = {}
    with TaskRunner(workers, scheduler, progress=progress, desc="bench") as run:
        for i, r in run.map(_bench_task, tasks, labels):
            out[where[i]] = r
    return out


def _assemble(sel, per_slab: dict, specs, source: dict, opts: dict, command) -> dict:
    from .. import results
    from ..analysis import TokenCost

    codecs = [CodecSpec(s) for s in specs]
    configs = [results.normalize_codec(c.config) for c in codecs]
    ref_records, slab_records = [], []
    per_codec: dict[int, dict] = {i: {} for i in range(len(codecs))}
    cost_kind: dict = {}
    for w in sel.slabs():
        r = per_slab[w]
        for rec in r["records"]:
            if rec["codec"] is None:
                ref_records.append(rec)
                continue
            slab_records.append(rec)
            per_codec[configs.index(rec["codec"])][w] = rec["metrics"]
        cost_kind.setdefault(w[1], TokenCost(sel.num_tokens)).add(r["token_bits"])
    agg = []
    for i, c in enumerate(codecs):
        ms = per_codec[i]
        for lay in sel.layers:
            for kind in sel.kinds:
                group = [ms[(lay, kind, h)] for h in sel.heads[kind] if (lay, kind, h) in ms]
                if group:
                    agg.append(results.make_record("layer", aggregate_codec_metrics(group),
                                                   layer=lay, kind=kind, codec=c.config))
        for kind in sel.kinds:
            group = [m for (lay, k, h), m in ms.items() if k == kind]
            if group:
                agg.append(results.make_record("kind", aggregate_codec_metrics(group),
                                               kind=kind, codec=c.config))
        agg.append(results.make_record("overall", aggregate_codec_metrics(list(ms.values())),
                                       codec=c.config))
    pv = opts.get("pervector_snr_db", 20.0)
    for kind in sel.kinds:
        km = {"pervector_snr_db": pv}
        km.update(cost_kind[kind].metrics(sel.sequence_index, sel.positions, sel.token_ids,
                                          opts["top_tokens"], opts["histogram_bins"]))
        ref_records.append(results.make_record("kind", km, kind=kind))
    first = per_slab[sel.slabs()[0]]["settings"]
    settings = {**first, **sel.settings(), "num_tokens": sel.num_tokens}
    doc = results.new_results("bench", source, settings, command=command)
    doc["records"] = ref_records + slab_records + agg
    return doc
