"""Checks of output paths, shared by every writer and command.

Commands call :func:`check_output_file` / :func:`check_output_dir` before any work, so
that a bad ``-o`` fails in a second rather than after a long run; the writers call them
again and turn the :class:`OSError` of the actual write into an
:class:`~kvinfo.errors.OutputPathError` with :func:`output_error`.

The rules every output follows (``docs/cli.md`` and each ``-o`` help say so):

* **Never an input.** ``inputs=`` names the files (and folders) a command reads; an output
  that *is* one of them -- by file identity (device and inode, so also through symlinks and
  hard links, whatever the spelling), or an existing file inside an input folder -- is refused
  before any work.
* **Overwrite only the same kind.** An existing output is replaced when it is of the kind
  being written (``kind="results"``: a JSON document; ``kind="kvdump"``: an HDF5 file) or
  empty; any other existing file is refused rather than destroyed.
* **One writer at a time.** A dump writer holds an exclusive lock (:class:`OutputLock`,
  ``<name>.kvinfo-lock`` beside the output, ``flock`` plus the writer's pid), and
  :func:`check_output_file` refuses an output whose lock another process holds.
* **Partial files say what they are.** Data is written to ``<name>.kvinfo-partial-<pid>``
  beside the output and renamed into place only when complete (:func:`create_partial`);
  a killed writer's partial file is recognised by that name and removed by the next writer
  (:func:`remove_stale_partials`).
* **The umask applies.** Partial files are created with mode ``0o666`` minus the umask,
  like any file the user creates (not the ``0o600`` of :func:`tempfile.mkstemp`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .errors import OutputPathError

__all__ = [
    "check_output_file",
    "check_output_dir",
    "check_not_input",
    "make_dirs",
    "output_error",
    "create_partial",
    "commit_partial",
    "discard_partial",
    "atomic_write",
    "partial_name",
    "remove_stale_partials",
    "OutputLock",
    "PARTIAL_TAG",
    "LOCK_SUFFIX",
]

#: ``<name><PARTIAL_TAG><pid>[-<n>]``: a file being written for ``<name>``
PARTIAL_TAG = ".kvinfo-partial-"
#: ``<name><LOCK_SUFFIX>``: the lock file of a writer of ``<name>``
LOCK_SUFFIX = ".kvinfo-lock"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_KIND_NAMES = {"results": "a results JSON file", "kvdump": "an HDF5 kvdump"}


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


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: a link to an input is that input
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def check_not_input(
    path: str | os.PathLike, inputs: Iterable | None, option: str | None = None
) -> None:
    """Refuse an output ``path`` that is one of ``inputs``, by file identity.

    ``inputs`` holds paths (None entries and paths that do not exist are skipped). The
    output is refused when it is the same file as an input (same device and inode: the
    same path, another spelling, a symlink or a hard link), or when it is an existing file
    inside an input folder.

    >>> import tempfile, pathlib, os
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> (folder / "in.h5").write_bytes(b"x")
    1
    >>> os.symlink(folder / "in.h5", folder / "link.json")
    >>> check_not_input(folder / "link.json", [folder / "in.h5"], "-o")
    Traceback (most recent call last):
    ...
    kvinfo.errors.OutputPathError: -o .../link.json: is the input .../in.h5; refusing ...
    """
    out = Path(path)
    out_id = _identity(out)
    if out_id is None:
        return
    for item in inputs or ():
        if item is None or isinstance(item, bool):
            continue
        inp = Path(item)
        in_id = _identity(inp)
        if in_id is None:
            continue
        if in_id == out_id:
            raise OutputPathError(
                f"{_name(out, option)}: is the input {inp}; refusing to overwrite an input"
            )
        if inp.is_dir() and out.is_file():
            try:
                inside = out.resolve().is_relative_to(inp.resolve())
            except OSError:
                inside = False
            if inside:
                raise OutputPathError(
                    f"{_name(out, option)}: is a file of the input folder {inp}; "
                    "refusing to overwrite an input"
                )


def _sniff_kind(path: Path) -> str | None:
    """``"kvdump"``, ``"results"``, ``"empty"`` or None (anything else) for an existing file."""
    try:
        with open(path, "rb") as f:
            head = f.read(2048 + 8)
    except OSError:
        return None
    if not head:
        return "empty"
    for off in (0, 512, 1024, 2048):  # HDF5 allows a user block of 512 * 2**k bytes
        if head[off : off + 8] == _HDF5_SIGNATURE:
            return "kvdump"
    if head.lstrip()[:1] == b"{":
        return "results"
    return None


def _check_kind(p: Path, kind: str | None, option: str | None) -> None:
    if kind is None or not p.is_file():
        return
    found = _sniff_kind(p)
    if found in ("empty", kind):
        return
    what = _KIND_NAMES.get(found, "some other file")
    raise OutputPathError(
        f"{_name(p, option)}: exists and is {what}, not {_KIND_NAMES.get(kind, kind)}; "
        "refusing to overwrite it (remove it or choose another name)"
    )


def check_output_file(
    path: str | os.PathLike,
    option: str | None = None,
    *,
    inputs: Iterable | None = None,
    kind: str | None = None,
) -> Path:
    """Raise :class:`OutputPathError` if ``path`` cannot become a file; return it as a Path.

    A missing parent folder is fine (the writers create it); a folder at ``path``, a file
    where a parent folder should be, or a folder without write permission is not. With
    ``inputs``, an output that is one of them is refused (:func:`check_not_input`). With
    ``kind`` (``"results"`` or ``"kvdump"``), an existing non-empty file of another kind is
    refused; one of the same kind will be overwritten. An output that another process is
    writing (it holds the :class:`OutputLock`) is refused.

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
    check_not_input(p, inputs, option)
    _check_ancestor(p.parent, p, option)
    _check_kind(p, kind, option)
    _check_unlocked(p, option)
    return p


def check_output_dir(
    path: str | os.PathLike,
    option: str | None = None,
    *,
    inputs: Iterable | None = None,
    writes: Iterable[str] = (),
) -> Path:
    """Raise :class:`OutputPathError` if ``path`` cannot be (or become) a folder.

    With ``inputs`` and ``writes`` (glob patterns of the file names written into the
    folder), an input that is the folder itself, or a file in it that a name in ``writes``
    would replace, is refused.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"{_name(p, option)}: exists and is a file; expected a folder")
    patterns = tuple(writes)
    out_id = _identity(p)
    for item in inputs or ():
        if item is None:
            continue
        inp = Path(item)
        in_id = _identity(inp)
        if in_id is None or out_id is None:
            continue
        if in_id == out_id:
            raise OutputPathError(
                f"{_name(p, option)}: is the input {inp}; refusing to write into an input"
            )
        if (
            inp.is_file()
            and _identity(inp.parent) == out_id
            and any(fnmatch.fnmatch(inp.name, pat) for pat in patterns)
        ):
            raise OutputPathError(
                f"{_name(p, option)}: would overwrite the input {inp}; "
                "refusing to overwrite an input (write the output to another folder)"
            )
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


# -- partial files and the writer lock ----------------------------------------------------
def partial_name(path: str | os.PathLike, pid: int | None = None) -> Path:
    """``<path>.kvinfo-partial-<pid>``: where a writer puts ``path`` until it is complete."""
    p = Path(path)
    return p.with_name(f"{p.name}{PARTIAL_TAG}{os.getpid() if pid is None else pid}")


def create_partial(path: str | os.PathLike, option: str | None = None) -> tuple[int, Path]:
    """Create a new, empty partial file for ``path``; return ``(fd, partial_path)``.

    The file is named ``<name>.kvinfo-partial-<pid>`` (``-<n>`` appended if this process
    already has one), created exclusively with mode ``0o666`` minus the umask.
    """
    base = partial_name(path)
    for n in range(1, 1000):
        cand = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            fd = os.open(cand, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                         0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise output_error(path, exc, option) from None
        _OPEN_PARTIALS.add(str(cand.absolute()))
        return fd, cand
    raise OutputPathError(f"{_name(Path(path), option)}: too many partial files beside it")


def commit_partial(partial: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Rename a complete partial file onto ``path`` (atomic on one file system)."""
    os.replace(partial, path)
    _OPEN_PARTIALS.discard(str(Path(partial).absolute()))
    return Path(path)


def discard_partial(partial: str | os.PathLike) -> None:
    """Remove a partial file after a failure (missing is fine)."""
    _OPEN_PARTIALS.discard(str(Path(partial).absolute()))
    Path(partial).unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", option: str | None = None):
    """Write ``path`` through a partial file opened with ``mode`` (``"w"`` or ``"wb"``),
    renamed onto ``path`` when the block ends; after a failure the partial is removed (an
    OSError becomes :class:`OutputPathError`), so ``path`` never looks complete early.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> with atomic_write(out) as f:
    ...     _ = f.write("done")
    >>> out.read_text()
    'done'
    """
    fd, tmp = create_partial(path, option)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        commit_partial(tmp, path)
    except BaseException as exc:
        discard_partial(tmp)
        if isinstance(exc, OSError):
            raise output_error(path, exc, option) from None
        raise


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_partials(path: str | os.PathLike, *, locked: bool = False) -> list[Path]:
    """Remove partial files of ``path`` left by writers that were killed; return them.

    A partial file ``<name>.kvinfo-partial-<pid>[-<n>]`` is stale when its process no longer
    runs, or -- when the caller holds ``path``'s :class:`OutputLock` (``locked=True``), so
    no other writer can be at work -- whenever it is not one of this process's own open
    partial files. Under the lock, the ``<name>.<8 chars>.tmp`` files of kvinfo versions
    before these names are removed too. Nothing else is touched.
    """
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    pat = re.compile(re.escape(p.name) + re.escape(PARTIAL_TAG) + r"(\d+)(?:-\d+)?")
    legacy = re.compile(re.escape(p.name) + r"\.[a-z0-9_]{8}\.tmp")
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = pat.fullmatch(e.name)
        stale = False
        if m:
            pid = int(m.group(1))
            if pid == os.getpid():
                stale = locked and str(Path(e.path).absolute()) not in _OPEN_PARTIALS
            else:
                stale = locked or not _pid_alive(pid)
        elif locked and legacy.fullmatch(e.name):
            stale = True
        if stale and e.is_file(follow_symlinks=False):
            try:
                os.unlink(e.path)
                removed.append(Path(e.path))
            except FileNotFoundError:
                pass
            except OSError:
                pass  # not ours to remove (permissions): leave it
    return removed


#: absolute paths of the partial files this process is writing now
_OPEN_PARTIALS: set[str] = set()
#: absolute output path -> [OutputLock, count] for the locks this process holds
_HELD: dict[str, list] = {}


def _lock_path(p: Path) -> Path:
    return p.with_name(p.name + LOCK_SUFFIX)


def _read_pid(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode("ascii", "replace").strip()
    except OSError:
        return "?"
    return text if text.isdigit() else "?"


def _check_unlocked(p: Path, option: str | None) -> None:
    """Refuse ``p`` while another process holds its writer lock."""
    if str(p.absolute()) in _HELD:
        return
    lp = _lock_path(p)
    try:
        fd = os.open(lp, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return  # no lock file: nobody writes it
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputPathError(
                    f"{_name(p, option)}: another kvinfo process (pid {_read_pid(fd)}) is "
                    "writing it; wait for it to finish or choose another name"
                ) from None
            return
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class OutputLock:
    """An exclusive lock on an output path, held by one writer at a time.

    The lock is ``flock(2)`` on ``<name>.kvinfo-lock`` beside the output; the file holds the
    writer's pid (for the error message). The kernel releases the lock when its process
    dies, even by SIGKILL, so a killed writer never blocks the next one. Acquiring a lock
    another process holds raises :class:`~kvinfo.errors.OutputPathError` at once (no
    waiting). Within one process the lock is re-entrant. Releasing removes the lock file.

    Use as a context manager, or call :meth:`acquire` and :meth:`release`.
    """

    def __init__(self, path: str | os.PathLike, option: str | None = None):
        self.path = Path(path)
        self.option = option
        self._key = str(self.path.absolute())
        self._fd: int | None = None
        self._held = False

    def acquire(self) -> OutputLock:
        if self._held:
            return self
        held = _HELD.get(self._key)
        if held is not None:
            held[1] += 1
            self._held = True
            return self
        lp = _lock_path(self.path)
        for _ in range(20):
            try:
                fd = os.open(lp, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            except OSError as exc:
                raise output_error(self.path, exc, self.option) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                pid = _read_pid(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputPathError(
                        f"{_name(self.path, self.option)}: another kvinfo process (pid {pid}) "
                        "is writing it; wait for it to finish or choose another name"
                    ) from None
                raise output_error(self.path, exc, self.option) from None
            # the previous holder may have removed the file between our open and flock:
            # the lock only counts if it is on the file that is at the path now
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(lp))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:  # pragma: no cover - twenty lost races in a row
            raise OutputPathError(f"{_name(self.path, self.option)}: cannot take its lock")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        self._held = True
        _HELD[self._key] = [self, 1]
        return self

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        held = _HELD.get(self._key)
        if held is None:
            return
        held[1] -= 1
        if held[1] > 0:
            return
        owner = held[0]
        del _HELD[self._key]
        fd, owner._fd = owner._fd, None
        if fd is not None:
            try:
                os.unlink(_lock_path(owner.path))  # while still holding it: see acquire
            except OSError:
                pass
            os.close(fd)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
