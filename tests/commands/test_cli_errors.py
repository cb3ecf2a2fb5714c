"""Bad input to every subcommand: one line ``kvinfo <cmd>: error: ...`` on stderr, status 2.

The table below runs ``kvinfo.cli.main`` in-process; a few rows also run ``python -m kvinfo``
in a subprocess. Rows marked "before work" use a model that does not exist, so that they
prove the bad option is refused before the model would load. The last tests interrupt
analyze, bench and report half-way and check that nothing that looks complete is left.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import h5py
import numpy as np
import pytest

from kvinfo.cli import main

U4 = '\'{{"id": "uniform", "bits": 4}}\''


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny_model_dir):
    """Good and bad inputs, by name."""
    from kvinfo.dumps import DumpWriter, write_synthetic_dump
    from kvinfo.results import new_results

    t = tmp_path_factory.mktemp("cli_errors")
    p = {"tmp": t, "tiny": tiny_model_dir, "nomodel": t / "no_such_model"}
    p["good"] = write_synthetic_dump(t / "good.h5", num_layers=2, num_tokens=128)
    p["noq"] = write_synthetic_dump(t / "noq.h5", num_layers=1, num_tokens=64, queries=False)
    data = p["good"].read_bytes()
    (t / "trunc.h5").write_bytes(data[: len(data) // 2])
    p["trunc"] = t / "trunc.h5"
    p["newer"] = t / "newer.h5"
    p["newer"].write_bytes(data)
    with h5py.File(p["newer"], "a") as f:
        f.attrs["format_version"] = 99
    p["other"] = t / "other.h5"
    with h5py.File(p["other"], "w") as f:
        f["x"] = np.arange(3)
    p["notes"] = t / "notes.txt"
    p["notes"].write_text("hello\n")
    p["dir"] = t / "a_folder"
    p["dir"].mkdir()
    p["noprompts"] = t / "noprompts.txt"
    p["noprompts"].write_text("\n   \n\n")
    p["short"] = t / "short.txt"
    p["short"].write_text("short text here.")
    for name, bad in (("nan", np.nan), ("inf", -np.inf)):
        rng = np.random.default_rng(0)
        keys = rng.standard_normal((1, 2, 64, 8)).astype(np.float32)
        keys[0, 0, 5, 3] = bad
        with DumpWriter(t / f"{name}.h5", model="m", dtype="float32", num_layers=1,
                        num_heads=2, num_kv_heads=2, head_dim=8) as w:
            w.append(np.arange(64), {"keys": keys, "values": rng.standard_normal(keys.shape)
                                     .astype(np.float32)})
        p[name] = t / f"{name}.h5"
    p["badjson"] = t / "bad.json"
    p["badjson"].write_text("{not json")
    p["wrongjson"] = t / "wrong.json"
    p["wrongjson"].write_text(json.dumps({"a": 1}))
    doc = new_results("bench", {}, {})
    p["okjson"] = t / "ok.json"
    p["okjson"].write_text(json.dumps(doc))
    doc["schema_version"] = 99
    p["newerjson"] = t / "newer.json"
    p["newerjson"].write_text(json.dumps(doc))
    return p


def _argv(template: str, paths) -> list[str]:
    return shlex.split(template.format(**{k: shlex.quote(str(v)) for k, v in paths.items()}))


def _one_error_line(err: str, cmd: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(f"kvinfo {cmd}: error: "), lines[0]
    return lines[0]


CASES = [
    # info: files that are not dumps
    ("info {tmp}/missing.h5", "no such file"),
    ("info {dir}", "is a directory, not a KV dump"),
    ("info {notes}", "not an HDF5 file"),
    ("info {other}", "not a kvinfo KV dump"),
    ("info {trunc}", "damaged or truncated HDF5 file"),
    ("info {newer}", "format version 99 is newer than this kvinfo reads"),
    # analyze: dumps, selections, options, outputs
    ("analyze {trunc} --no-progress", "damaged or truncated"),
    ("analyze {newer} --no-progress", "upgrade kvinfo"),
    ("analyze {good} --layers 5 --no-progress", "--layers: 5 is out of range [0, 2)"),
    ("analyze {good} --layers x --no-progress", "--layers: expected integers or ranges"),
    ("analyze {good} --layers=-1 --no-progress", "--layers: expected integers or ranges"),
    ("analyze {good} --layers , --no-progress", "selects nothing"),
    ("analyze {good} --layers 0-999999999999 --no-progress", "999999999999 is out of range"),
    ("analyze {good} --heads 9 --no-progress", "--heads: 9 is out of range"),
    ("analyze {good} --kinds foo --no-progress", "--kinds: ['foo'] not in this dump"),
    ("analyze {noq} --kinds queries --no-progress", "--kinds: ['queries'] not in this dump"),
    ("analyze {good} --snr-db 1:0:1 --no-progress", "--snr-db: expected START:STOP:STEP"),
    ("analyze {good} --knn-k 0 --no-progress", "--knn-k must be a positive integer"),
    ("analyze {good} --table-snr-db nan --no-progress", "--table-snr-db must be finite"),
    ("analyze {good} --outlier-rms-ratio=-1 --no-progress", "--outlier-rms-ratio must be a"),
    ("analyze {good} --outlier-rms-ratio nan --no-progress", "--outlier-rms-ratio must be a"),
    ("analyze {good} -o {dir} --no-progress", "-o {dir}: is a folder; expected a file name"),
    ("analyze {good} -o {notes}/x.json --no-progress", "is a file, not a folder"),
    ("analyze {good} --knn-k x", "argument --knn-k: invalid int value: 'x'"),
    # bench: codecs, selections, queries, NaN, outputs, --eval
    ("bench {good} --codec '{{bad' --no-progress", "is not valid JSON"),
    ("bench {good} --codec '[1, 2]' --no-progress", "--codec must be a JSON object"),
    ("bench {good} --codec '{{\"id\": \"nope\"}}' --no-progress", "unknown codec id 'nope'"),
    ("bench {good} --codec '{{\"id\": \"uniform\", \"bits\": 0}}'", "bits must be an integer"),
    ("bench {good} --codec '{{\"id\": \"uniform\", \"bits\": 99}}'", "found 99"),
    ("bench {good} --codec '{{\"id\": \"ecsq\", \"step\": -1}}'", "step must be a finite number"),
    ("bench {good} --codec '{{\"id\": \"rans\"}}'", "not a KV codec"),
    ("bench {good} --codec " + U4 + " --layers 7", "--layers: 7 is out of range"),
    ("bench {good} --codec " + U4 + " --heads 3", "--heads: 3 is out of range [0, 2)"),
    ("bench {good} --codec " + U4 + " --kinds foo", "--kinds: ['foo'] not in this dump"),
    ("bench {noq} --codec " + U4 + " --attention", "attention errors need the queries"),
    ("bench {good} --codec " + U4 + " --knn-k 0", "--knn-k must be a positive integer"),
    ("bench {good} --codec " + U4 + " --pervector-snr-db nan", "--pervector-snr-db must be"),
    ("bench {good} --codec " + U4 + " --repeat 0", "--repeat must be at least 1"),
    ("bench {good} --codec " + U4 + " -o {dir}", "is a folder; expected a file name"),
    ("bench {good} --codec " + U4 + " -o {notes}/x.json", "is a file, not a folder"),
    ("bench {nan} --codec " + U4 + " --no-gpu --no-progress",
     "layer 0 keys head 0: the slab holds 1 NaN or Inf values of 512"),
    ("bench {inf} --codec " + U4 + " --no-gpu --no-progress", "the slab holds 1 NaN or Inf"),
    ("bench {good} --codec " + U4 + " --eval --eval-text {good} --model {nomodel}",
     "not UTF-8 text"),
    ("bench {good} --codec '{{\"keys\": {{\"id\": \"uniform\", \"bits\": 4}}}}' --eval "
     "--model {nomodel}", "this codec spec has no codec for values"),
    ("bench {good} --codec " + U4 + " --eval --eval-prefix 5000 --model {nomodel}",
     "--eval-max-tokens must be larger than --eval-prefix (5000)"),
    ("bench {good} --codec " + U4 + " --eval --model {nomodel}", "no such model folder"),
    ("bench {good} --preset nope", "argument --preset: invalid choice"),
    # capture: prompts, model, options, output (before the model loads)
    ("capture --model {tiny} --prompt '' -o {tmp}/c.h5", "--prompt number 1 is empty"),
    ("capture --model {tiny} --prompts {noprompts} -o {tmp}/c.h5", "no prompts in file"),
    ("capture --model {tiny} --prompts {tmp}/missing.txt -o {tmp}/c.h5", "no such prompts file"),
    ("capture --model {tiny} --prompts {dir} -o {tmp}/c.h5", "(it is a folder)"),
    ("capture --model {tiny} --prompts {good} -o {tmp}/c.h5", "not UTF-8 text"),
    ("capture --model {nomodel} --prompt hi -o {tmp}/c.h5", "no such model folder or file"),
    ("capture --model {dir} --prompt hi -o {tmp}/c.h5", "not a Hugging Face model folder"),
    ("capture --model {tiny} --prompt hi --max-tokens 0 -o {tmp}/c.h5", "--max-tokens must be"),
    ("capture --model {tiny} --prompt hi --threads=-1 -o {tmp}/c.h5", "--threads must be at"),
    ("capture --model {nomodel} --prompt hi -o {dir}", "is a folder; expected a file name"),
    ("capture --model {nomodel} --prompt hi -o {notes}/c.h5", "is a file, not a folder"),
    # eval: codecs, text, sizes, output
    ("eval --model {nomodel} --codec '{{bad'", "is not valid JSON"),
    ("eval --model {nomodel} --codec '{{\"id\": \"rans\"}}'",
     "'rans' is an entropy coder of integer symbols, not a KV codec"),
    ("eval --model {nomodel} --codec '{{\"id\": \"uniform\", \"bits\": 0}}'", "found 0"),
    ("eval --model {nomodel} --codec '{{\"id\": \"ecsq\", \"step\": -1}}'", "step must be"),
    ("eval --model {nomodel} --codec " + U4 + " --text {tmp}/missing.txt", "no such text file"),
    ("eval --model {nomodel} --codec " + U4 + " --text {dir}", "(it is a folder)"),
    ("eval --model {nomodel} --codec " + U4 + " --text {good}", "not UTF-8 text"),
    ("eval --model {nomodel} --codec " + U4 + " --prefix 0", "--prefix must be at least 1"),
    ("eval --model {nomodel} --codec " + U4 + " --prefix 4 --max-tokens=-1",
     "--max-tokens must be larger than --prefix (4)"),
    ("eval --model {nomodel} --codec " + U4 + " --prefix 4 --block=-1", "--block must be 0"),
    ("eval --model {nomodel} --codec " + U4 + " --prefix 4 -o {dir}", "is a folder; expected"),
    ("eval --model {tiny} --codec " + U4 + " --text {short} --prefix 100",
     "the text has 16 tokens (after --max-tokens 1024), not more than the prefix of 100"),
    ("eval --codec " + U4 + " --dtype float8", "argument --dtype: invalid choice"),
    # report: inputs and output
    ("report -o {tmp}/r", "the following arguments are required: RESULTS.json"),
    ("report {tmp}/missing.json -o {tmp}/r", "no such file"),
    ("report {dir} -o {tmp}/r", "is a folder, not a results JSON file"),
    ("report {badjson} -o {tmp}/r", "not valid JSON"),
    ("report {good} -o {tmp}/r", "not a text file"),
    ("report {wrongjson} -o {tmp}/r", "expected schema 'kvinfo.results', found None"),
    ("report {newerjson} -o {tmp}/r", "schema_version 99 is newer than this kvinfo"),
    ("report {okjson} -o {notes}", "-o {notes}: exists and is a file; expected a folder"),
    ("report {okjson} -o {notes}/r", "is a file, not a folder"),
    ("report {okjson} -o {tmp}/r --dpi 5", "--dpi must be between 30 and 600"),
    # demo: everything that can be checked before the capture is checked before it
    ("demo -o {notes} --model {nomodel}", "exists and is a file; expected a folder"),
    ("demo -o {tmp}/d --model {nomodel} --layers x", "--layers: expected integers"),
    ("demo -o {tmp}/d --model {nomodel} --eval-prefix 0", "--eval-prefix must be at least 1"),
    ("demo -o {tmp}/d --model {nomodel} --eval-prefix 600 --eval-max-tokens 500",
     "--eval-max-tokens must be larger than --eval-prefix (600)"),
    ("demo -o {tmp}/d --model {nomodel} --knn-samples 1", "--knn-samples must be at least 2"),
    ("demo -o {tmp}/d --model {nomodel} --max-tokens 2", "--max-tokens must be at least 8"),
    ("demo -o {tmp}/d --model {nomodel}", "no such model folder or file"),
]


@pytest.mark.parametrize("template, fragment", CASES, ids=[c[0][:60] for c in CASES])
def test_bad_input_is_one_line_and_status_2(template, fragment, paths, capsys):
    argv = _argv(template, paths)
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    line = _one_error_line(err, argv[0])
    assert fragment.format(**{k: str(v) for k, v in paths.items()}) in line


SUBPROCESS_CASES = [
    ("info {trunc}", "damaged or truncated HDF5 file"),
    ("analyze {good} -o {dir}", "is a folder; expected a file name"),
    ("bench {nan} --codec " + U4 + " --no-gpu", "the slab holds 1 NaN or Inf"),
    ("capture --model {tiny} --prompt hi --threads=-1 -o {tmp}/c.h5", "--threads must be"),
    ("report {newerjson} -o {tmp}/r", "schema_version 99 is newer"),
    ("report", "the following arguments are required"),
]


@pytest.mark.parametrize("template, fragment", SUBPROCESS_CASES,
                         ids=[c[0][:40] for c in SUBPROCESS_CASES])
def test_python_m_kvinfo_bad_input(template, fragment, paths):
    argv = _argv(template, paths)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    out = subprocess.run([sys.executable, "-m", "kvinfo", *argv], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert fragment in _one_error_line(out.stderr, argv[0])


# --------------------------------------------------------------------------------------
# the API raises the specific errors the command line reports
# --------------------------------------------------------------------------------------


def test_api_errors(paths):
    from kvinfo.analysis import analyze_slab
    from kvinfo.bench import bench_dump
    from kvinfo.dumps import parse_index_list
    from kvinfo.errors import AnalysisInputError, CodecConfigError, OutputPathError
    from kvinfo.evaluate import CacheCodec, EvalInputError, evaluate
    from kvinfo.results import new_results, write_results

    x = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    with pytest.raises(AnalysisInputError, match="knn_k must be a positive integer"):
        analyze_slab(x, snr_db=[10.0], knn_k=0)
    with pytest.raises(AnalysisInputError, match="outlier_rms_ratio must be"):
        analyze_slab(x, snr_db=[10.0], outlier_rms_ratio=-1.0)
    with pytest.raises(AnalysisInputError, match="pervector_snr_db must be finite"):
        analyze_slab(x, snr_db=[10.0], pervector_snr_db=float("inf"))
    with pytest.raises(AnalysisInputError, match="knn_k must be a positive integer"):
        bench_dump(paths["good"], [{"id": "uniform", "bits": 4}], knn_k=0, use_gpu=False)
    with pytest.raises(AnalysisInputError, match="out of range"):
        parse_index_list("0-999999999999", 3, "layers")
    assert parse_index_list("2,0-1,1", 3, "layers") == [2, 0, 1]
    with pytest.raises(CodecConfigError, match="not a KV codec"):
        CacheCodec({"id": "huffman"})
    for kwargs, msg in (({"max_tokens": 4}, "^max_tokens must be larger than prefix"),
                        ({"block": -2}, "^block must be 0")):
        with pytest.raises(EvalInputError, match=msg):
            evaluate(None, None, [{"id": "uniform", "bits": 4}], "text", prefix=4, **kwargs)
    with pytest.raises(OutputPathError, match="is a folder"):
        write_results(new_results("bench", {}, {}), paths["dir"])


# --------------------------------------------------------------------------------------
# a failed or interrupted run leaves no output that looks complete
# --------------------------------------------------------------------------------------


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()
                  if p.name.endswith(".tmp") or ".kvinfo-partial-" in p.name)


def test_interrupted_analyze_writes_nothing(paths, tmp_path, monkeypatch, capsys):
    import kvinfo.analysis.engine

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(kvinfo.analysis.engine, "slab_analysis", interrupt)
    out = tmp_path / "analyze.json"
    assert main(["analyze", str(paths["good"]), "-o", str(out), "--no-progress"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_interrupted_bench_keeps_the_previous_results(paths, tmp_path, monkeypatch, capsys):
    import kvinfo.bench

    out = tmp_path / "bench.json"
    out.write_text('{"previous": "complete results"}\n')
    calls = []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = kvinfo.bench._engine.measure_codec
    monkeypatch.setattr(kvinfo.bench._engine, "measure_codec", interrupt_second)
    argv = ["bench", str(paths["good"]), "--codec", '{"id": "uniform", "bits": 4}', "-o",
            str(out), "--no-gpu", "--no-progress", "--knn-samples", "100"]
    assert main(argv) == 130
    capsys.readouterr()
    assert out.read_text() == '{"previous": "complete results"}\n'
    assert _leftovers(tmp_path) == []


def test_write_results_interrupted_mid_write_leaves_old_file(tmp_path, monkeypatch):
    import kvinfo.results as R

    out = tmp_path / "r.json"
    out.write_text('{"old": 1}\n')

    def half_then_fail(obj, f, **kwargs):
        f.write('{"schema": "kvinfo.res')
        raise KeyboardInterrupt

    monkeypatch.setattr(R.json, "dump", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        R.write_results(R.new_results("bench", {}, {}), out)
    assert out.read_text() == '{"old": 1}\n' and _leftovers(tmp_path) == []


def test_interrupted_report_leaves_no_page(paths, tmp_path, monkeypatch, capsys):
    import kvinfo.report._figures as F
    from kvinfo.bench import bench_dump
    from kvinfo.results import write_results

    doc = bench_dump(paths["good"], [{"id": "uniform", "bits": 4}], layers=[0],
                     knn_samples=100, use_gpu=False)
    res = write_results(doc, tmp_path / "bench.json")
    out = tmp_path / "report"
    assert main(["report", str(res), "-o", str(out), "--no-svg"]) == 0
    assert (out / "report.html").exists() and (out / "report.md").exists()

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(F, "fig_throughput", interrupt)
    assert main(["report", str(res), "-o", str(out), "--no-svg"]) == 130
    capsys.readouterr()
    names = {p.name for p in out.iterdir()}
    assert "report.html" not in names and "report.md" not in names
    assert not [n for n in names if n.endswith(".tmp")]
    assert "rate_distortion.png" in names  # drawn before the interruption, whole
