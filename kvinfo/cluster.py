"""Run independent tasks in this process, on a Dask ``LocalCluster`` or on a Dask cluster.

The multi-dump engines (:func:`kvinfo.analysis.analyze_dumps`, :func:`kvinfo.bench.bench_dumps`)
cut their work into tasks that are pure functions of picklable arguments (paths, a selection,
options: never an open file, since h5py files do not pickle), hand them to a
:class:`TaskRunner`, and assemble the results **in task order**, so the result does not
depend on where or in which order the tasks ran.

* ``workers=None, scheduler=None``: the tasks run here, one after the other.
* ``workers=N``: a ``distributed.LocalCluster`` of ``N`` worker *processes* with one thread
  each (HDF5 serialises calls inside one process, so threads would not scale), with
  ``NUMBA_NUM_THREADS``, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and
  ``OPENBLAS_NUM_THREADS`` set to 1 in every worker, so that N workers use N cores.
* ``scheduler=ADDRESS``: an existing cluster (``tcp://host:8786``); its workers must have
  kvinfo installed and see the dump paths. Pin their threads the same way when you start
  them (``docs/scale-out.md``).

Dask (``pip install "kvinfo[dask]"``) is imported only when a cluster is asked for.
A task that raises is reported with its label (:class:`TaskError`, or the task's own
kvinfo error); a worker process that dies is reported naming the task it was running.

Examples
--------
>>> with TaskRunner() as run:
...     [r for _, r in run.map(abs, [-2, 3], labels=["a", "b"])]
[2, 3]
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence

from .errors import KvinfoError

__all__ = ["TaskRunner", "TaskError", "PINNED_THREADS_ENV", "pinned_environment",
           "check_workers"]

#: environment of every worker process: one thread for Numba, OpenMP, MKL and OpenBLAS
PINNED_THREADS_ENV = {
    "NUMBA_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}


class TaskError(KvinfoError):
    """A task failed (or its worker died); ``label`` names it, ``cause`` is the error."""

    def __init__(self, message: str, label: str | None = None, cause=None):
        super().__init__(message)
        self.label = label
        self.cause = cause


def pinned_environment(_arg=None) -> dict:
    """What a worker sees of :data:`PINNED_THREADS_ENV` and Numba's thread count (a task
    that checks the pinning; also used by the tests)."""
    out = {k: os.environ.get(k) for k in PINNED_THREADS_ENV}
    try:
        import numba

        out["numba_threads"] = int(numba.get_num_threads())
    except ImportError:  # pragma: no cover
        out["numba_threads"] = None
    return out


def check_workers(workers, scheduler) -> None:
    """Refuse a bad ``workers`` / ``scheduler`` pair (:class:`ValueError` subclass)."""
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise TaskError(f"workers must be a positive integer; got {workers!r}")
        if workers > 1024:
            raise TaskError(f"workers is {workers}; at most 1024 local worker processes")
    if scheduler is not None and workers is not None:
        raise TaskError("give workers (a local cluster) or scheduler (an existing one), not both")
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
        raise TaskError(f"scheduler must be an address such as tcp://host:8786; got {scheduler!r}")


class TaskRunner:
    """Where tasks run: here, a LocalCluster of ``workers`` processes, or ``scheduler``.

    Use as a context manager; :meth:`map` yields ``(index, result)`` as tasks finish.

    Parameters
    ----------
    workers : int, optional
        Start a ``LocalCluster`` of this many single-threaded worker processes.
    scheduler : str, optional
        Connect to an existing Dask scheduler at this address.
    progress : bool
        A progress bar over tasks on stderr.
    desc : str
        The progress bar's label.
    """

    def __init__(self, workers: int | None = None, scheduler: str | None = None, *,
                 progress: bool = False, desc: str = "tasks"):
        check_workers(workers, scheduler)
        self.workers, self.scheduler = workers, scheduler
        self.progress, self.desc = progress, desc
        self.client = None
        self._cluster = None

    @property
    def distributed(self) -> bool:
        return self.workers is not None or self.scheduler is not None

    def __enter__(self) -> TaskRunner:
        if not self.distributed:
            return self
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise TaskError(
                "workers/scheduler need Dask: pip install \"kvinfo[dask]\""
            ) from None
        import dask

        if self.scheduler is not None:
            try:
                self.client = Client(self.scheduler, timeout="20s")
            except (OSError, TimeoutError) as exc:
                raise TaskError(f"cannot reach the Dask scheduler {self.scheduler} ({exc})"
                                ) from None
            return self
        with dask.config.set({"distributed.worker.daemon": False,
                              "distributed.admin.tick.limit": "10s",
                              "logging.distributed": "error"}):
            try:
                self._cluster = LocalCluster(
                    n_workers=self.workers, threads_per_worker=1, processes=True,
                    dashboard_address=":0", env=dict(PINNED_THREADS_ENV), silence_logs=50,
                )
                self.client = Client(self._cluster)
            except (OSError, RuntimeError, TimeoutError) as exc:
                self.close()
                raise TaskError(f"cannot start a local Dask cluster of {self.workers} "
                                f"workers ({exc})") from None
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def map(self, func: Callable, args: Sequence, labels: Sequence[str] | None = None
            ) -> Iterator[tuple[int, object]]:
        """Run ``func(arg)`` for every arg; yield ``(index, result)`` as each finishes.

        An exception of a task is raised here: a :class:`~kvinfo.errors.KvinfoError` as it
        is (its message names what failed), anything else as :class:`TaskError` naming the
        task's label; a worker that died as :class:`TaskError` naming the task.
        """
        from tqdm import tqdm

        labels = list(labels) if labels is not None else [str(i) for i in range(len(args))]
        bar = tqdm(total=len(args), desc=self.desc, unit="task", file=sys.stderr,
                   disable=not self.progress, dynamic_ncols=True)
        try:
            if not self.distributed:
                for i, a in enumerate(args):
                    try:
                        r = func(a)
                    except KvinfoError:
                        raise
                    except Exception as exc:
                        raise TaskError(f"{labels[i]}: {type(exc).__name__}: {exc}",
                                        labels[i], exc) from exc
                    bar.update()
                    yield i, r
                return
            yield from self._map_dask(func, args, labels, bar)
        finally:
            bar.close()

    def _map_dask(self, func, args, labels, bar):
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        run = uuid.uuid4().hex[:12]
        futures = [self.client.submit(func, a, key=f"kvinfo-{self.desc}-{run}-{i}",
                                      pure=False, retries=0)
                   for i, a in enumerate(args)]
        index = {f.key: i for i, f in enumerate(futures)}
        try:
            for fut in as_completed(futures):
                i = index[fut.key]
                if fut.status == "error":
                    exc = fut.exception()
                    if isinstance(exc, KilledWorker):
                        raise TaskError(
                            f"{labels[i]}: the worker running it died (out of memory, or "
                            "killed); rerun with fewer workers or more memory per worker",
                            labels[i], exc) from None
                    if isinstance(exc, KvinfoError):
                        raise exc
                    raise TaskError(f"{labels[i]}: {type(exc).__name__}: {exc}", labels[i],
                                    exc) from None
                bar.update()
                yield i, fut.result()
        finally:
            for f in futures:
                f.cancel()
