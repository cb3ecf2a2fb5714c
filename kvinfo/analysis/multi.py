"""Analyse many dumps as one, in this process or on a Dask cluster: :func:`analyze_dumps`.

The dumps (paths or glob patterns) are combined per (layer, kind, head): a slab of the set
is that slab of every dump, one dump after the other (:class:`~kvinfo.dumps.DumpSet`), and
its streaming statistics (bit-pattern counts, moments, covariance, lag-1 pairs within each
sequence) are accumulated over all of them, which is the exact merge of each dump's
statistics (Chan-Golub-LeVeque / Pebay updates, :mod:`kvinfo.analysis._stats`; counts are
integers and merge exactly, moments to floating-point rounding). Every bound of the slab is
then computed from the merged statistics, and the kNN and bound subsamples are drawn from
the union, so the result is the analysis of the concatenated dumps. Dumps of different
models or geometries are refused naming the first mismatch.

Where the work runs: one task per selected slab. Without ``workers`` or ``scheduler`` the
tasks run here; with ``workers=N`` on a ``LocalCluster`` of N single-threaded processes;
with ``scheduler=ADDRESS`` on an existing cluster (:class:`kvinfo.cluster.TaskRunner`).
Each task opens the dumps itself (HDF5 handles do not travel; a worker keeps the last set
it opened), reads its slab from each and analyses it; the client assembles the document in
selection order. The same function analyses each slab wherever it runs, so the document
does not depend on the number of workers (tested: 2 local workers against in-process).

Failures: a dump that cannot be opened or read is named (:class:`~kvinfo.errors.DumpSetError`);
with ``skip_failed=True`` it is dropped with an :class:`~kvinfo.analysis.AnalysisWarning`
and the run completes on the others (a dump that fails mid-run makes the run start again
without it); otherwise the run stops and nothing is returned or written.

Examples
--------
>>> import os, tempfile
>>> from kvinfo.dumps import Selection, write_synthetic_dump
>>> tmp = tempfile.mkdtemp()
>>> for i in range(2):
...     _ = write_synthetic_dump(os.path.join(tmp, f"d{i}.h5"), num_layers=1, num_tokens=96,
...                              head_dim=8, seed=i)
>>> doc = analyze_dumps([os.path.join(tmp, "d*.h5")], Selection(kinds="keys"),
...                     snr_db=[20.0], knn_samples=100)
>>> doc["source"]["num_tokens"], len(doc["source"]["dumps"])
(192, 2)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

from ..errors import DumpSetError
from ._slab import DEFAULT_SNR_DB, AnalysisWarning
from .engine import _options, _prepare, analyze_one_slab, assemble_analysis

__all__ = ["analyze_dumps", "open_dump_set", "release_dump_set", "skip_unreadable"]

#: the dump set a worker process opened last: (key, DumpSet)
_WORKER_SET: dict = {}


def _key(paths) -> tuple:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((os.path.abspath(p), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((os.path.abspath(p), None, None))
    return tuple(out)


def open_dump_set(paths):
    """The dumps ``paths`` opened as one (a :class:`~kvinfo.dumps.DumpSet`, or the dump
    itself for one path), reused while the files are unchanged (one set per process)."""
    from ..dumps import DumpSet, open_dump

    key = _key(paths)
    hit = _WORKER_SET.get("set")
    if hit is not None and hit[0] == key:
        return hit[1]
    if hit is not None:
        hit[1].close()
        _WORKER_SET.clear()
    d = DumpSet(paths) if len(paths) > 1 else open_dump(paths[0])
    _WORKER_SET["set"] = (key, d)
    return d


def _analysis_task(args):
    """One slab of the set (runs on a worker): open, resolve, read, analyse."""
    paths, selection, where, options = args
    from ._stats import warmup

    d = open_dump_set(paths)
    sel = selection.resolve(d)
    warmup()
    lay, kind, head = where
    slab = sel.take(d.slab(kind, lay, head))
    return analyze_one_slab(slab, sel, options, where)


def skip_unreadable(paths, what: str = "analyze") -> list:
    """The paths whose dumps open, each one that does not dropped with an
    :class:`~kvinfo.analysis.AnalysisWarning` naming it (``skip_failed``)."""
    from ..dumps import open_dump
    from ..errors import DumpFormatError

    keep = []
    for p in paths:
        try:
            open_dump(p).close()
        except DumpFormatError as exc:
            warnings.warn(AnalysisWarning(f"{what}: skipped dump {p}: {exc}"), stacklevel=3)
            continue
        keep.append(p)
    if not keep:
        raise DumpSetError("no dump could be read (every one was skipped)")
    return keep


def analyze_dumps(
    dumps,
    selection=None,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    skip_failed: bool = False,
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
    """Analyse several dumps as one; return an analyze results document.

    Parameters
    ----------
    dumps : sequence of path-like or str
        Dump paths (HDF5 or converted zarr stores) and glob patterns (``"dumps/*.h5"``).
    selection : kvinfo.dumps.Selection, optional
        As for :func:`~kvinfo.analysis.analyze_dump`, resolved against the set (its
        ``sequences`` index the set's sequences, every dump's in order).
    workers : int, optional
        Run the slabs on a Dask ``LocalCluster`` of this many worker processes.
    scheduler : str, optional
        Run them on the Dask cluster at this address.
    skip_failed : bool
        Drop a dump that cannot be read (with a warning) instead of stopping.
    snr_db, pervector_snr_db, knn_samples, knn_k, seed, top_tokens, outlier_rms_ratio :
        As for :func:`~kvinfo.analysis.analyze_dump`.
    progress : bool
        A progress bar over the slab tasks on stderr.
    command : list of str, optional
        The command line recorded in the document.

    Returns
    -------
    dict
        The analyze document of the concatenated dumps; ``source.dumps`` lists them.

    Raises
    ------
    DumpSetError
        A glob matching nothing, an unreadable dump (without ``skip_failed``), or dumps of
        different models or geometries (the first mismatch named).
    SelectionError, AnalysisInputError
        As for :func:`~kvinfo.analysis.analyze_dump`.
    """
    from ..cluster import check_workers
    from ..dumps import Selection, expand_dump_paths

    check_workers(workers, scheduler)
    options = _options(snr_db, pervector_snr_db, knn_samples, knn_k, seed, top_tokens,
                       outlier_rms_ratio)
    selection = Selection() if selection is None else selection
    paths = [str(p) for p in expand_dump_paths(dumps)]
    if skip_failed:
        paths = skip_unreadable(paths)
    try:
        return _run(paths, selection, options, workers, scheduler, skip_failed, progress,
                    command)
    finally:
        release_dump_set()


def release_dump_set() -> None:
    """Close the set :func:`open_dump_set` keeps open in this process."""
    hit = _WORKER_SET.pop("set", None)
    if hit is not None:
        hit[1].close()


def _run(paths, selection, options, workers, scheduler, skip_failed, progress, command):
    from ..cluster import TaskRunner

    while True:
        d = open_dump_set(paths)
        sel, source, settings = _prepare(d, selection, options)
        source["dumps"] = list(paths)
        where = sel.slabs()
        tasks = [(paths, selection, w, options) for w in where]
        labels = ["layer {} {} head {}".format(*w) for w in where]
        per_slab = {}
        try:
            with TaskRunner(workers, scheduler, progress=progress, desc="analyze") as run:
                for i, r in run.map(_analysis_task, tasks, labels):
                    per_slab[where[i]] = r
        except DumpSetError as exc:
            bad = getattr(exc, "dump", None)
            if not skip_failed or bad is None or bad not in paths:
                raise
            warnings.warn(AnalysisWarning(f"analyze: skipped dump {bad}: {exc}"), stacklevel=2)
            paths = [p for p in paths if p != bad]
            if not paths:
                raise DumpSetError("no dump could be read (every one was skipped)") from None
            continue
        return assemble_analysis(sel, per_slab, source, settings, options, command)
