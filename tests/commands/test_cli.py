"""kvinfo.cli: the recorded command comes from the parser and parses back to the same options."""

from __future__ import annotations

import argparse
import json

import pytest

from kvinfo.cli import build_parser, command_for, main, recorded_command
from kvinfo.results import load_results

U4 = {"id": "uniform", "bits": 4, "coder": {"id": "rans"}}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options(ns: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(ns).items() if not k.startswith("_")}


def _reparse(cmd: list[str]) -> argparse.Namespace:
    assert cmd[0] == "kvinfo"
    return build_parser().parse_args(cmd[1:])


def _nondefault_argv(parser: argparse.ArgumentParser, pick: int) -> list[str]:
    """An argv giving every option of ``parser`` a value other than its default.

    Of each mutually exclusive group only one member is given (``pick`` chooses which).
    """
    skip = set()
    for group in parser._mutually_exclusive_groups:
        members = list(group._group_actions)
        chosen = members[pick % len(members)]
        skip |= {id(a) for a in members if a is not chosen}
    positionals, options = [], []
    for i, a in enumerate(parser._actions):
        if isinstance(a, argparse._HelpAction) or id(a) in skip:
            continue
        if isinstance(a, argparse._StoreConstAction):  # store_true/false/const flags
            options.append(a.option_strings[-1])
            continue
        if a.choices is not None:
            values = [str(c) for c in sorted(a.choices) if c != a.default][-1:]
        elif a.type is int:
            values = [str((a.default or 0) + 3 + i)]
        elif a.type is float:
            values = [repr((a.default or 0.0) + 1.25 + i)]
        else:
            values = [f"value-{a.dest}-{i}.x"]
        if isinstance(a, argparse._AppendAction) or a.nargs in ("+", "*"):
            values = values + [values[0] + "2"] if a.choices is None else values * 2
        if not a.option_strings:
            positionals += values
        elif isinstance(a, argparse._AppendAction):
            for v in values:
                options += [a.option_strings[0], v]
        else:
            options += [a.option_strings[0], *values]
    return positionals + options


@pytest.mark.parametrize("pick", [0, 1])
@pytest.mark.parametrize("name", sorted(_subparsers()))
def test_every_option_of_every_command_survives_the_recorded_command(name, pick):
    sub = _subparsers()[name]
    argv = [name, *_nondefault_argv(sub, pick)]
    ns = build_parser().parse_args(argv)
    for a in sub._actions:  # the test's argv really sets every option
        if a.dest != "help" and getattr(ns, a.dest) != a.default:
            continue
        assert a.dest == "help" or any(
            a in g._group_actions for g in sub._mutually_exclusive_groups
        ), f"{name}: {a.dest} left at its default"
    cmd = recorded_command(ns)
    assert cmd[:2] == ["kvinfo", name]
    assert _options(_reparse(cmd)) == _options(ns)
    given = {k: v for k, v in _options(ns).items() if k != "command"}
    assert command_for(name, **given) == cmd
    # and with every option at its default (only the required ones given)
    required = [a for a in sub._actions if a.required or not a.option_strings]
    minimal = [name]
    for a in required:
        if a.option_strings:
            minimal += [a.option_strings[0], "x"]
        elif a.nargs == "+":
            minimal += ["p1", "p2"]
        elif a.dest != "help":
            minimal.append("p")
    ns = build_parser().parse_args(minimal)
    assert _options(_reparse(recorded_command(ns))) == _options(ns)
    required_values = {a.dest: getattr(ns, a.dest) for a in required if a.dest != "help"}
    assert command_for(name, **required_values) == recorded_command(ns)


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "--codec", '{"id": "lossless"}', "--prefix=-5", "--max-tokens=-1"],
        ["analyze", "--snr-db=-10,-5", "--seed=-3", "--", "-dump-with-a-dash.h5"],
        ["report", "-o", "out dir", "--", "-a.json", "b c.json"],
        ["capture", "--prompt", "-starts with a dash", "--prompt", "two", "-o", "x.h5"],
        ["bench", "d.h5", "--no-attention", "--preset", "standard", "--preset", "coders"],
    ],
)
def test_awkward_values_survive_the_recorded_command(argv):
    ns = build_parser().parse_args(argv)
    assert _options(_reparse(recorded_command(ns))) == _options(ns)


def test_command_for_builds_the_command_of_library_runs():
    cmd = command_for("analyze", dump="d.h5", output="a.json", layers="0,10", knn_samples=500)
    ns = _reparse(cmd)
    assert (ns.dump, ns.output, ns.layers, ns.knn_samples, ns.knn_k) == ("d.h5", "a.json",
                                                                        "0,10", 500, 4)
    assert "--knn-k" in cmd and "--per-slab" not in cmd
    # --attention and --no-attention share one dest whose default (None) is neither flag
    assert _options(_reparse(command_for("bench", dump="d.h5"))) == _options(
        build_parser().parse_args(["bench", "d.h5"]))
    assert "--no-attention" in command_for("bench", dump="d.h5", attention=False)
    with pytest.raises(ValueError, match="has no options"):
        command_for("analyze", dump="d.h5", no_such_option=1)
    with pytest.raises(ValueError, match="no kvinfo command"):
        command_for("nope")


def test_analyze_records_a_command_that_reproduces_every_option(synthetic_dump, tmp_path,
                                                                capsys):
    out = tmp_path / "a.json"
    argv = ["analyze", str(synthetic_dump), "-o", str(out), "--layers", "1", "--kinds", "keys",
            "--heads", "1", "--snr-db", "10,20", "--pervector-snr-db", "15", "--table-snr-db",
            "10", "--knn-samples", "150", "--knn-k", "3", "--seed", "2", "--top-tokens", "2",
            "--outlier-rms-ratio", "5", "--per-slab", "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    cmd = load_results(out)["command"]
    assert _options(_reparse(cmd)) == _options(build_parser().parse_args(argv))
    for flag in ("--knn-k", "--pervector-snr-db", "--top-tokens", "--per-slab"):
        assert flag in cmd


def test_bench_records_a_command_that_reproduces_every_option(synthetic_dump, tmp_path, capsys):
    out = tmp_path / "b.json"
    argv = ["bench", str(synthetic_dump), "--codec", json.dumps(U4), "-o", str(out),
            "--layers", "0", "--kinds", "keys", "--heads", "0", "--no-attention",
            "--max-queries", "8", "--knn-samples", "100", "--knn-k", "3", "--seed", "1",
            "--pervector-snr-db", "12", "--repeat", "2", "--no-gpu", "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    cmd = load_results(out)["command"]
    assert _options(_reparse(cmd)) == _options(build_parser().parse_args(argv))
    for flag in ("--knn-k", "--pervector-snr-db", "--repeat", "--no-gpu", "--no-attention"):
        assert flag in cmd


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "--codec", "{}"], "--max-tokens must be larger than --prefix (4), got 2"),
        (["bench", "d.h5"], "--eval-max-tokens must be larger than --eval-prefix (4), got 2"),
        (["demo", "-o", "x"], "--eval-max-tokens must be larger than --eval-prefix (4), got 2"),
    ],
)
def test_library_errors_are_reported_with_each_commands_flags(argv, message):
    from kvinfo.cli import _with_flags
    from kvinfo.evaluate import EvalInputError, check_eval_options

    with pytest.raises(EvalInputError) as info:
        check_eval_options(4, 2)
    assert str(info.value) == "max_tokens must be larger than prefix (4) to leave tokens to " \
        "score, got 2"
    args = build_parser().parse_args(argv)
    assert str(_with_flags(info.value, args)) == message.replace(
        ", got 2", " to leave tokens to score, got 2")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["analyze", "{dump}", "--knn-k", "0"], "kvinfo analyze: error: --knn-k "),
        (["analyze", "{dump}", "--layers", "99"], "kvinfo analyze: error: --layers: "),
        (["bench", "{dump}", "--heads", "9"], "kvinfo bench: error: --heads: "),
    ],
)
def test_analysis_errors_name_the_commands_flags(synthetic_dump, capsys, argv, expected):
    """One mapper (kvinfo.cli.main) turns a library parameter into the command's option."""
    from kvinfo.cli import main

    rc = main([a.format(dump=synthetic_dump) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(expected), err
    assert len(err.strip().splitlines()) == 1


def test_analysis_error_renamed_only_for_a_leading_parameter():
    from kvinfo.errors import AnalysisInputError, SelectionError

    e = AnalysisInputError("knn_k must be at least 1, got 0")
    assert str(e.renamed({"knn_k": "--knn-k"})) == "--knn-k must be at least 1, got 0"
    assert e.renamed({"knn": "--knn"}) is e  # a prefix of a word is not a parameter
    s = SelectionError("7 is out of range", "layers")
    r = s.renamed({"layers": "--layers"})
    assert str(r) == "--layers: 7 is out of range" and isinstance(r, SelectionError)
