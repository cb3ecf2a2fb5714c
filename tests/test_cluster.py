"""kvinfo.cluster: the same results on 2 Dask worker processes as in-process.

One LocalCluster (2 single-threaded worker processes, started by the TaskRunner that
``--workers`` uses) serves every test of this module: starting one costs seconds.
"""

from __future__ import annotations

import json
import warnings

import pytest

from kvinfo.analysis import AnalysisWarning, analyze_dumps
from kvinfo.cluster import TaskError, TaskRunner, check_workers, pinned_environment
from kvinfo.dumps import Selection, write_synthetic_dump
from kvinfo.errors import DumpFormatError, DumpSetError

OPTS = {"snr_db": [10.0, 20.0], "knn_samples": 150}
SEL = Selection(layers=[1], kinds="keys,values")


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    return [str(write_synthetic_dump(root / f"d{i}.h5", num_layers=2, num_tokens=80 + 24 * i,
                                     head_dim=8, num_sequences=1 + i, seed=10 + i))
            for i in range(3)]


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("distributed")
    with TaskRunner(workers=2) as run:
        yield run


def _records(doc):
    return json.loads(json.dumps(doc["records"]))


def test_workers_are_pinned_to_one_thread(cluster):
    env = [r for _, r in cluster.map(pinned_environment, [0, 1])]
    for e in env:
        assert e["numba_threads"] == 1
        assert e["OMP_NUM_THREADS"] == e["MKL_NUM_THREADS"] == e["OPENBLAS_NUM_THREADS"] == "1"


def test_analyze_on_two_workers_equals_in_process(dumps, cluster):
    address = cluster.client.scheduler.address
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnalysisWarning)
        here = analyze_dumps(dumps, SEL, **OPTS)
        there = analyze_dumps(dumps, SEL, scheduler=address, **OPTS)
    assert _records(here) == _records(there)  # bit for bit: the same function per slab


_TIMING = ("seconds", "_per_s")  # measurements of whichever process ran the slab


def _untimed(records):
    out = []
    for r in _records({"records": records}):
        r["metrics"] = {k: v for k, v in r["metrics"].items()
                        if not any(t in k for t in _TIMING) and "counts" not in k}
        out.append(r)
    return out


def test_bench_on_two_workers_equals_in_process(dumps, cluster):
    from kvinfo.bench import bench_dumps

    specs = [{"id": "uniform", "bits": 4}, {"id": "turbo", "bits": 3}]
    kw = {"selection": SEL, "knn_samples": 150, "use_gpu": False, "attention": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnalysisWarning)
        here = bench_dumps(dumps, specs, **kw)
        there = bench_dumps(dumps, specs, scheduler=cluster.client.scheduler.address, **kw)
    assert len(here["records"]) == len(there["records"]) > 10
    assert _untimed(here["records"]) == _untimed(there["records"])
    overall = [r for r in here["records"] if r["scope"] == "overall"]
    assert len(overall) == 2 and all(r["metrics"]["bits_per_element"] > 0 for r in overall)


def test_a_dump_failing_on_a_worker_is_named(dumps, cluster, tmp_path):
    from kvinfo.analysis.multi import _analysis_task

    gone = str(tmp_path / "gone.h5")
    task = ([dumps[0], gone], SEL, (1, "keys", 0), {})
    with pytest.raises(DumpSetError, match="gone.h5") as info:
        list(cluster.map(_analysis_task, [task], labels=["layer 1 keys head 0"]))
    assert info.value.dump == gone  # the client knows which dump to drop (skip_failed)
    with pytest.raises(DumpFormatError, match="gone.h5"):
        list(cluster.map(_analysis_task, [([gone], SEL, (1, "keys", 0), {})]))
    with pytest.raises(TaskError, match="layer 9: ValueError"):
        list(cluster.map(int, ["not a number"], labels=["layer 9"]))


def test_bad_worker_options_are_refused():
    for bad in (0, -1, True, 2.5):
        with pytest.raises(TaskError, match="workers"):
            check_workers(bad, None)
    with pytest.raises(TaskError, match="not both"):
        check_workers(2, "tcp://x:1")
    assert issubclass(TaskError, ValueError)
