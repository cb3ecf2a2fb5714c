"""The ``kvinfo`` command line: one ``main(argv)`` that dispatches to subcommands.

Each subcommand lives in :mod:`kvinfo.commands` as a module with ``add_arguments(parser)``
and ``run(args) -> int``. :func:`main` is what the console script calls and what the tests
call in-process. Bad input (any :class:`~kvinfo.errors.KvinfoError`, a missing file) is
reported as one line ``kvinfo <cmd>: error: ...`` on stderr with exit status 2; Ctrl-C
exits with status 130. Neither prints a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ._version import __version__
from .errors import KvinfoError

__all__ = ["main", "build_parser", "cli_markdown", "COMMANDS"]

#: subcommand name -> (module under kvinfo.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "capture": ("capture", "run a causal LM over prompts and dump its KV cache to HDF5"),
    "info": ("info", "describe a KV dump"),
    "calibrate": ("calibrate", "fit per-(layer, kind, head) transform bases for the klt codec"),
    "analyze": ("analyze", "lossless and lossy information limits per (layer, K/V, head)"),
    "bench": ("bench", "run codecs on a dump and compare achieved bits with the bounds"),
    "eval": ("eval", "perplexity and next-token divergence with a compressed cache"),
    "report": ("report", "figures and a report page from results JSON files"),
    "demo": ("demo", "capture, analyze, bench, eval and report on the built-in defaults"),
}


def _available_commands() -> dict[str, tuple[str, str]]:
    out = {}
    for name, (mod, help_) in COMMANDS.items():
        if importlib.util.find_spec(f"kvinfo.commands.{mod}") is not None:
            out[name] = (mod, help_)
    return out


def _formatter(prog: str) -> argparse.HelpFormatter:
    # a fixed width, so that help text (and docs/cli.md) does not depend on the terminal
    return argparse.RawDescriptionHelpFormatter(prog, width=100, max_help_position=32)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other kvinfo error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (used by :func:`main` and to generate CLI docs)."""
    parser = _Parser(
        prog="kvinfo",
        description="How many bits does a KV cache really need, and how close does a codec get?",
        formatter_class=_formatter,
    )
    parser.add_argument("--version", action="version", version=f"kvinfo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (mod, help_) in _available_commands().items():
        module = importlib.import_module(f"kvinfo.commands.{mod}")
        description = (module.__doc__ or help_).strip()
        p = sub.add_parser(name, help=help_, description=description, formatter_class=_formatter)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def cli_markdown() -> str:
    """``docs/cli.md``: every command's ``--help``, generated from the parsers.

    Regenerate with ``python -c "from kvinfo.cli import cli_markdown; print(cli_markdown(), end='')"
    > docs/cli.md``; a test checks that the file is current.
    """
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = [
        "# Command-line reference",
        "",
        "Generated from the argument parsers by `kvinfo.cli.cli_markdown()`; do not edit.",
        "Every command exits with status 2 and one line on stderr for bad input.",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
    ]
    for name, p in sub.choices.items():
        out += ["", f"## kvinfo {name}", "", "```text", p.format_help().rstrip(), "```"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the kvinfo command line with ``argv`` (default ``sys.argv[1:]``); return the status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed its one-line usage error (or help)
        return int(exc.code or 0)
    if getattr(args, "_module", None) is None:
        parser.print_help(sys.stderr)
        return 2
    prog = f"kvinfo {args.command}"
    try:
        return int(args._module.run(args) or 0)
    except KvinfoError as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"{prog}: error: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
