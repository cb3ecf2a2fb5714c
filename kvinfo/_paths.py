"""Checks of output paths, shared by every writer and command.

Commands call :func:`check_output_file` / :func:`check_output_dir` before any work, so
that a bad ``-o`` fails in a second rather than after a long run; the writers call them
again and turn the :class:`OSError` of the actual write into an
:class:`~kvinfo.errors.OutputPathError` with :func:`output_error`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import OutputPathError

__all__ = ["check_output_file", "check_output_dir", "make_dirs", "output_error"]


def _name(path: Path, option: str | None) -> str:
    return f"{option} {path}" if option else str(path)


def _check_ancestor(folder: Path, target: Path, option: str | None) -> None:
    """The nearest existing ancestor of ``folder`` must be a folder we may write into."""
    anc = folder.absolute()
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise OutputPathError(
            f"{_name(target, option)}: cannot create it, {anc} is a file, not a folder"
        )
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputPathError(f"{_name(target, option)}: folder {anc} is not writable")
    try:  # os.access says yes to root everywhere, and knows nothing of /proc or a full disk
        fd, probe = tempfile.mkstemp(prefix=".kvinfo-probe-", dir=anc)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputPathError(
            f"{_name(target, option)}: cannot write into folder {anc} "
            f"({exc.strerror or type(exc).__name__})"
        ) from None


def check_output_file(path: str | os.PathLike, option: str | None = None) -> Path:
    """Raise :class:`OutputPathError` if ``path`` cannot become a file; return it as a Path.

    A missing parent folder is fine (the writers create it); a folder at ``path``, a file
    where a parent folder should be, or a folder without write permission is not.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> check_output_file(folder / "new" / "analyze.json").name
    'analyze.json'
    >>> check_output_file(folder)
    Traceback (most recent call last):
    ...
    kvinfo.errors.OutputPathError: ...: is a folder; expected a file name
    """
    p = Path(path)
    if p.is_dir():
        raise OutputPathError(f"{_name(p, option)}: is a folder; expected a file name")
    _check_ancestor(p.parent, p, option)
    return p


def check_output_dir(path: str | os.PathLike, option: str | None = None) -> Path:
    """Raise :class:`OutputPathError` if ``path`` cannot be (or become) a folder."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"{_name(p, option)}: exists and is a file; expected a folder")
    _check_ancestor(p, p, option)
    return p


def make_dirs(folder: str | os.PathLike, option: str | None = None) -> Path:
    """``mkdir -p folder`` with an :class:`OutputPathError` instead of an OSError."""
    p = Path(folder)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(p, exc, option) from None
    return p


def output_error(path: str | os.PathLike, exc: OSError, option: str | None = None):
    """An :class:`OutputPathError` for an OSError met while writing ``path``."""
    return OutputPathError(
        f"{_name(Path(path), option)}: cannot write ({exc.strerror or type(exc).__name__})"
    )
