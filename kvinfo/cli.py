"""The ``kvinfo`` command line: one ``main(argv)`` that dispatches to subcommands.

Each subcommand lives in :mod:`kvinfo.commands` as a module with ``add_arguments(parser)``
and ``run(args) -> int``. :func:`main` is what the console script calls and what the tests
call in-process. Bad input (any :class:`~kvinfo.errors.KvinfoError`, a missing file) is
reported as one line ``kvinfo <cmd>: error: ...`` on stderr with exit status 2; Ctrl-C
exits with status 130. Neither prints a traceback. A library error that names the library's
parameters (``prefix`` in :func:`kvinfo.evaluate.evaluate`) is reported with the command's
flag for it (``--prefix``, or ``--eval-prefix`` in ``kvinfo bench``).

:func:`recorded_command` is the ``command`` that results files record: it is rebuilt from
the parser's own actions, so it names every option of the run and parses back to the same
options.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ._version import __version__
from .errors import KvinfoError

__all__ = ["main", "build_parser", "cli_markdown", "recorded_command", "command_for", "COMMANDS"]

#: subcommand name -> (module under kvinfo.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "capture": ("capture", "run a causal LM over prompts and dump its KV cache to HDF5"),
    "info": ("info", "describe a KV dump"),
    "calibrate": ("calibrate", "fit per-(layer, kind, head) transform bases for the klt codec"),
    "analyze": ("analyze", "lossless and lossy information limits per (layer, K/V, head)"),
    "bench": ("bench", "run codecs on a dump and compare achieved bits with the bounds"),
    "eval": ("eval", "perplexity and next-token divergence with a compressed cache"),
    "sensitivity": ("sensitivity", "measure what an error in each KV slab costs the model"),
    "allocate": ("allocate", "choose a codec setting per (layer, kind, head) for a bit budget"),
    "capacity": ("capacity", "largest batch x context per codec within a memory budget"),
    "report": ("report", "figures and a report page from results JSON files"),
    "convert": ("convert", "write a dump into a zarr store compressed with a kvinfo codec"),
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
        p.set_defaults(_module=module, _parser=p)
    return parser


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if name not in sub.choices:
        raise ValueError(f"no kvinfo command {name!r}; the commands are {sorted(sub.choices)}")
    return sub.choices[name]


def _option_actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        if action.dest == argparse.SUPPRESS:
            continue
        yield action


def _flag(action: argparse.Action) -> str:
    """The option's long name (``--output`` for ``-o/--output``)."""
    return next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])


def _option_tokens(action: argparse.Action, value) -> list[str]:
    flag = _flag(action)
    if isinstance(action, argparse._StoreConstAction | argparse._StoreTrueAction
                  | argparse._StoreFalseAction):
        same = type(value) is type(action.const) and value == action.const
        return [flag] if same else []
    if isinstance(action, argparse._CountAction):
        return [flag] * int(value or 0)
    if value is None:
        return []
    if isinstance(action, argparse._AppendAction):
        return [t for v in value for t in _single(flag, v)]
    if isinstance(value, list):  # nargs '+' or '*'
        return [flag, *(str(v) for v in value)] if value else []
    return _single(flag, value)


def _single(flag: str, value) -> list[str]:
    text = str(value)
    # '--opt=-1' keeps a value that starts with '-' from reading as an option
    return [f"{flag}={text}"] if text.startswith("-") else [flag, text]


def recorded_command(args: argparse.Namespace) -> list[str]:
    """The command line that reproduces the run of ``args``, with every option.

    Built from the actions of the command's parser: each option whose value is set appears
    with that value (defaults included, so that the line means the same under a later
    kvinfo with other defaults), each flag that is on appears, and the positional arguments
    come first. ``build_parser().parse_args(recorded_command(args)[1:])`` gives ``args``
    back.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options of one command (``args.command`` names it), as :func:`main` passes
        them to the command, or as :func:`command_for` builds them.

    Examples
    --------
    >>> args = build_parser().parse_args(["report", "a.json", "-o", "out", "--dpi", "90"])
    >>> recorded_command(args)
    ['kvinfo', 'report', 'a.json', '--output', 'out', '--dpi', '90']
    """
    parser = getattr(args, "_parser", None) or _subparser(args.command)
    positionals: list[str] = []
    options: list[str] = []
    for action in _option_actions(parser):
        value = getattr(args, action.dest, None)
        if action.option_strings:
            options += _option_tokens(action, value)
        elif isinstance(value, list):
            positionals += [str(v) for v in value]
        elif value is not None:
            positionals.append(str(value))
    if any(p.startswith("-") for p in positionals):
        return ["kvinfo", args.command, *options, "--", *positionals]
    return ["kvinfo", args.command, *positionals, *options]


def command_for(name: str, **options) -> list[str]:
    """:func:`recorded_command` of the command ``name`` run with ``options`` (by ``dest``).

    For library code that runs a command's engine without parsing argv (``kvinfo demo``),
    so that its results record a command line that reproduces them. Options not given take
    the parser's defaults.

    >>> command_for("report", results=["a.json"], output="out")
    ['kvinfo', 'report', 'a.json', '--output', 'out', '--dpi', '110']
    """
    parser = _subparser(name)
    values: dict = {}
    for a in _option_actions(parser):  # as argparse does: a dest's first default holds
        values.setdefault(a.dest, a.default)
    unknown = sorted(set(options) - set(values))
    if unknown:
        raise ValueError(f"kvinfo {name} has no options {unknown}")
    values.update(options)
    return recorded_command(argparse.Namespace(command=name, _parser=parser, **values))


#: library parameter -> the command's option (``dest``) for it, where the names differ
PARAMETER_DESTS: dict[str, dict[str, str]] = {
    "eval": {"codecs": "codec"},
    "bench": {"prefix": "eval_prefix", "max_tokens": "eval_max_tokens", "text": "eval_text",
              "codecs": "codec"},
    "demo": {"prefix": "eval_prefix", "max_tokens": "eval_max_tokens"},
}


def _with_flags(exc: BaseException, args: argparse.Namespace) -> BaseException:
    """``exc`` naming the command's flags instead of the library's parameters."""
    renamed = getattr(exc, "renamed", None)
    parser = getattr(args, "_parser", None)
    if not callable(renamed) or parser is None:
        return exc
    flags = {a.dest: _flag(a) for a in _option_actions(parser) if a.option_strings}
    names = dict(flags)
    for param, dest in PARAMETER_DESTS.get(args.command, {}).items():
        if dest in flags:
            names[param] = flags[dest]
    return renamed(names)


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
        print(f"{prog}: error: {_one_line(_with_flags(exc, args))}", file=sys.stderr)
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
