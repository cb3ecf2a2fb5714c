"""Outputs: never an input, overwrite only the same kind, one writer at a time, partial files
named and cleaned up after a killed writer, permissions from the umask (issue 12, findings
1, 4, 5 and 6)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kvinfo._paths import (
    LOCK_SUFFIX,
    PARTIAL_TAG,
    OutputLock,
    check_output_file,
    remove_stale_partials,
)
from kvinfo.cli import main
from kvinfo.dumps import DumpWriter, open_dump, write_synthetic_dump
from kvinfo.errors import OutputPathError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def dump(tmp_path):
    return write_synthetic_dump(tmp_path / "in.h5", num_layers=1, num_kv_heads=1,
                                num_tokens=64, head_dim=8, queries=False)


def _unchanged(path, before: bytes) -> bool:
    return path.read_bytes() == before


# -- finding 1: -o equal to the input ------------------------------------------------------
@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink", "hardlink"])
def test_analyze_refuses_to_overwrite_its_input(dump, tmp_path, capsys, spelling):
    before = dump.read_bytes()
    if spelling == "same":
        out = dump
    elif spelling == "dotted":
        out = tmp_path / "." / ".." / tmp_path.name / "in.h5"
    elif spelling == "symlink":
        out = tmp_path / "link.json"
        os.symlink(dump, out)
    else:
        out = tmp_path / "hard.json"
        os.link(dump, out)
    code = main(["analyze", str(dump), "-o", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "refusing to overwrite an input" in err
    assert _unchanged(dump, before)
    with open_dump(dump) as d:
        assert d.num_tokens == 64


def test_bench_refuses_to_overwrite_its_input(dump, capsys):
    before = dump.read_bytes()
    code = main(["bench", str(dump), "--codec", '{"id": "uniform", "bits": 4}', "-o",
                 str(dump), "--no-gpu", "--no-progress"])
    assert code == 2 and "refusing to overwrite an input" in capsys.readouterr().err
    assert _unchanged(dump, before)


def test_eval_and_capture_refuse_their_text_inputs_before_loading_a_model(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("some text to score\n")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a prompt\n")
    nomodel = str(tmp_path / "no_such_model")
    assert main(["eval", "--model", nomodel, "--codec", '{"id": "uniform", "bits": 4}',
                 "--text", str(text), "-o", str(text)]) == 2
    assert "refusing to overwrite an input" in capsys.readouterr().err
    assert main(["capture", "--model", nomodel, "--prompts", str(prompts), "-o",
                 str(prompts)]) == 2
    assert "refusing to overwrite an input" in capsys.readouterr().err
    assert text.read_text() == "some text to score\n" and prompts.read_text() == "a prompt\n"


def test_report_refuses_a_folder_where_it_would_replace_an_input(tmp_path, capsys):
    from kvinfo.results import new_results, write_results

    folder = tmp_path / "rep"
    folder.mkdir()
    res = write_results(new_results("analyze", {}, {}), folder / "throughput.png")
    before = res.read_bytes()
    assert main(["report", str(res), "-o", str(folder), "--no-svg"]) == 2
    assert "refusing to overwrite an input" in capsys.readouterr().err
    assert res.read_bytes() == before


def test_overwriting_an_output_of_the_same_kind_is_allowed(dump, tmp_path, capsys):
    out = tmp_path / "a.json"
    out.write_text('{"an": "older results file"}\n')
    assert main(["analyze", str(dump), "-o", str(out), "--no-progress",
                 "--knn-samples", "20"]) == 0
    assert json.loads(out.read_text())["tool"] == "analyze"
    # but another kind of file is not destroyed: a dump, or any other text
    other = write_synthetic_dump(tmp_path / "other.h5", num_layers=1, num_tokens=32)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    for target in (other, notes):
        before = target.read_bytes()
        assert main(["analyze", str(dump), "-o", str(target), "--no-progress"]) == 2
        assert "refusing to overwrite it" in capsys.readouterr().err
        assert target.read_bytes() == before
    with pytest.raises(OutputPathError, match="not an HDF5 kvdump"):
        DumpWriter(out, model="m", dtype="float32", num_layers=1, num_heads=1,
                   num_kv_heads=1, head_dim=4)


def test_help_says_what_is_overwritten(capsys):
    for cmd in ("analyze", "bench", "eval", "capture", "report"):
        assert main([cmd, "--help"]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "never" in out and "input" in out and ("replac" in out), cmd


# -- findings 4 and 5: one writer at a time, killed writers -------------------------------
_WRITER = textwrap.dedent(
    """
    import sys, time, numpy as np
    from kvinfo.dumps import DumpWriter
    w = DumpWriter(sys.argv[1], model="m", dtype="float32", num_layers=1, num_heads=1,
                   num_kv_heads=1, head_dim=8)
    rng = np.random.default_rng(0)
    w.append(np.arange(16), {k: rng.standard_normal((1, 1, 16, 8)).astype(np.float32)
                              for k in ("keys", "values")})
    print("ready", flush=True)
    time.sleep(120)
    """
)


def _start_writer(path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if line.strip() != "ready":  # pragma: no cover - diagnostics
        proc.kill()
        raise AssertionError(proc.stderr.read())
    return proc


def _write_small(path, seed=1):
    rng = np.random.default_rng(seed)
    with DumpWriter(path, model="m2", dtype="float32", num_layers=1, num_heads=1,
                    num_kv_heads=1, head_dim=8) as w:
        w.append(np.arange(8), {k: rng.standard_normal((1, 1, 8, 8)).astype(np.float32)
                                for k in ("keys", "values")})
    return path


def test_second_writer_is_refused_and_killed_writer_is_cleaned_up(tmp_path, capsys):
    out = tmp_path / "out.h5"
    proc = _start_writer(out)
    try:
        partials = [p.name for p in tmp_path.iterdir() if PARTIAL_TAG in p.name]
        assert partials == [f"out.h5{PARTIAL_TAG}{proc.pid}"]
        with pytest.raises(OutputPathError, match=f"another kvinfo process \\(pid {proc.pid}\\)"):
            _write_small(out)
        # the command refuses before it would load a model
        code = main(["capture", "--model", str(tmp_path / "no_model"), "-o", str(out)])
        assert code == 2 and "is writing it" in capsys.readouterr().err
        assert not out.exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    # the killed writer left its partial file (it never looks complete)...
    left = tmp_path / f"out.h5{PARTIAL_TAG}{proc.pid}"
    assert left.exists() and not out.exists()
    # ... and the next writer recognises it, removes it and writes the dump
    _write_small(out)
    with open_dump(out) as d:
        assert d.meta["model"] == "m2"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["out.h5"], names


def test_stale_partials_without_lock_only_of_dead_processes(tmp_path):
    out = tmp_path / "r.json"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"r.json{PARTIAL_TAG}{dead.pid}").write_text("{")
    alive = tmp_path / f"r.json{PARTIAL_TAG}1"  # pid 1 always runs
    alive.write_text("{")
    unrelated = tmp_path / "r.json.backup"
    unrelated.write_text("{}")
    removed = remove_stale_partials(out)
    assert [p.name for p in removed] == [f"r.json{PARTIAL_TAG}{dead.pid}"]
    assert alive.exists() and unrelated.exists()


def test_lock_is_reentrant_in_process_and_removed_on_release(tmp_path):
    out = tmp_path / "x.h5"
    with OutputLock(out):
        assert (tmp_path / ("x.h5" + LOCK_SUFFIX)).exists()
        with OutputLock(out):
            check_output_file(out)  # our own lock does not refuse us
        assert (tmp_path / ("x.h5" + LOCK_SUFFIX)).exists()
    assert not (tmp_path / ("x.h5" + LOCK_SUFFIX)).exists()


# -- finding 6: the umask applies -----------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_follow_the_umask(tmp_path, umask):
    from kvinfo.report import build_report
    from kvinfo.results import new_results, write_results

    old = os.umask(umask)
    try:
        d = _write_small(tmp_path / "d.h5")
        r = write_results(new_results("analyze", {}, {}), tmp_path / "r.json")
        rep = build_report([r], tmp_path / "rep", formats=("png",))
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    for p in (d, r, rep["markdown"], rep["html"]):
        assert stat.S_IMODE(os.stat(p).st_mode) == want, (p, oct(os.stat(p).st_mode))


def test_partial_file_name_says_what_it_is(tmp_path, monkeypatch):
    import kvinfo.results as R

    seen = []

    def spy(obj, f, **kwargs):
        seen.extend(p.name for p in tmp_path.iterdir())
        f.write("{}")

    monkeypatch.setattr(R.json, "dump", spy)
    R.write_results(R.new_results("bench", {}, {}), tmp_path / "b.json")
    assert seen == [f"b.json{PARTIAL_TAG}{os.getpid()}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]


def test_writer_removes_legacy_temporary_files_of_its_output_only(tmp_path):
    legacy = tmp_path / "out.h5.k3j4l5m6.tmp"  # what a killed writer of kvinfo <= 0.x left
    legacy.write_bytes(b"\x89HDF partial")
    other = tmp_path / "other.h5.k3j4l5m6.tmp"
    other.write_bytes(b"not ours")
    _write_small(tmp_path / "out.h5")
    assert not legacy.exists() and other.exists()
