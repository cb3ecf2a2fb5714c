"""kvinfo demo: the whole pipeline, on a tiny local model with small sizes."""

from __future__ import annotations

import pytest

from kvinfo.cli import main
from kvinfo.commands.demo import default_layers
from kvinfo.results import load_results


def test_default_layers():
    assert default_layers(30) == [0, 10, 19, 29]
    assert default_layers(4) == [0, 1, 2, 3]
    assert default_layers(1) == [0]


def test_demo_runs_every_step_and_writes_the_report(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main([
        "demo", "-o", str(out), "--model", str(tiny_model_dir), "--max-tokens", "40",
        "--eval-prefix", "48", "--eval-max-tokens", "96", "--knn-samples", "200",
        "--no-progress",
    ])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert str(out / "report" / "report.html") in stdout
    for step in ("1/4 capture", "2/4 analyze", "3/4 bench", "4/4 report"):
        assert step in stdout
    analyze = load_results(out / "analyze.json")
    bench = load_results(out / "bench.json")
    assert analyze["tool"] == "analyze" and bench["tool"] == "bench"
    assert bench["settings"]["preset"] == "standard"
    assert bench["settings"]["attention"] is True  # the demo captures queries
    runs = [r for r in bench["records"] if r["scope"] == "run" and r["codec"] is not None]
    assert len(runs) == 15  # eval of every codec of the standard preset
    report = out / "report"
    for name in ("rate_distortion", "heatmaps_analysis", "heatmaps_gap",
                 "pervector_histograms", "throughput", "quality"):
        assert (report / f"{name}.png").stat().st_size > 0
    assert (report / "report.html").stat().st_size > 0


def test_demo_rejects_tiny_token_counts(tmp_path, capsys):
    rc = main(["demo", "-o", str(tmp_path / "x"), "--max-tokens", "2"])
    assert rc == 2
    assert "--max-tokens must be at least 8" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--no-eval"])
def test_demo_without_eval(tiny_model_dir, tmp_path, capsys, flag):
    out = tmp_path / "demo"
    rc = main([
        "demo", "-o", str(out), "--model", str(tiny_model_dir), "--max-tokens", "24",
        "--layers", "1", "--knn-samples", "100", "--no-progress", flag,
    ])
    assert rc == 0
    bench = load_results(out / "bench.json")
    assert not [r for r in bench["records"] if r["scope"] == "run"]
    md = (out / "report" / "report.md").read_text()
    assert "Not drawn: no eval results" in md
    # each step records a command that reproduces it, with the demo's options
    from kvinfo.cli import build_parser

    for name in ("analyze", "bench"):
        cmd = load_results(out / f"{name}.json")["command"]
        args = build_parser().parse_args(cmd[1:])
        assert cmd[:2] == ["kvinfo", name] and args.dump == [str(out / "dump.h5")]
        assert (args.layers, args.knn_samples, args.output) == ("1", 100, str(out / f"{name}.json"))
