"""Selections of layers and heads given as text (``'0,3,5-7'``), shared by every command."""

from __future__ import annotations

from ..errors import AnalysisInputError

__all__ = ["parse_index_list", "check_index_list"]


def _ranges(spec: str, what: str) -> list[tuple[int, int]]:
    """``'0,3,5-7'`` -> ``[(0, 0), (3, 3), (5, 7)]``; checks the syntax only."""
    out = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
            else:
                lo = hi = int(part)
        except ValueError:
            raise AnalysisInputError(
                f"--{what}: expected integers or ranges like '0,3,5-7'; got {spec!r}"
            ) from None
        out.append((lo, hi))
    if not out:
        raise AnalysisInputError(f"--{what} {spec!r} selects nothing")
    return out


def check_index_list(spec: str, what: str) -> None:
    """Check the syntax of a selection before its upper bound is known.

    >>> check_index_list("0,2-4", "layers")
    """
    _ranges(spec, what)


def parse_index_list(spec: str | None, upper: int, what: str) -> list[int]:
    """``'0,3,5-7'`` -> ``[0, 3, 5, 6, 7]``, each in ``[0, upper)``; None -> all.

    Raises :class:`~kvinfo.errors.AnalysisInputError` naming the option ``--{what}`` for
    text that is not a list of integers and ranges, values out of range, or an empty
    selection.

    >>> parse_index_list("0,2-4,2", 5, "layers")
    [0, 2, 3, 4]
    """
    if spec is None:
        return list(range(upper))
    out: list[int] = []
    seen: set[int] = set()
    for lo, hi in _ranges(spec, what):
        for v in (lo, hi):  # before expanding, so that '0-10**12' fails at once
            if not 0 <= v < upper:
                raise AnalysisInputError(f"--{what}: {v} is out of range [0, {upper})")
        for v in range(lo, hi + 1):
            if v not in seen:
                seen.add(v)
                out.append(v)
    return out
