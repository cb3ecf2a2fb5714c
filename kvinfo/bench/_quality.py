"""Model-quality records (``kvinfo bench --eval``) added to a bench document."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["add_quality"]


def add_quality(doc: dict, quality, specs: Sequence[dict] | None = None) -> dict:
    """Add the quality records of :func:`kvinfo.evaluate.evaluate`'s result to a bench document.

    The records are built by :meth:`kvinfo.evaluate.EvalResult.records` (the one builder
    that ``kvinfo eval -o`` uses too; ``specs`` is no longer needed) and ``settings["eval"]``
    is set; see docs/results-schema.md.
    """
    return quality.add_to(doc)
