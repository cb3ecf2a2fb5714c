"""Selections of layers and heads given as text (``'0,3,5-7'``), shared by every command."""

from __future__ import annotations

from ..errors import AnalysisInputError

__all__ = ["parse_index_list"]


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
                vals = list(range(lo, hi + 1))
            else:
                vals = [int(part)]
        except ValueError:
            raise AnalysisInputError(
                f"--{what}: expected integers or ranges like '0,3,5-7'; got {spec!r}"
            ) from None
        for v in vals:
            if not 0 <= v < upper:
                raise AnalysisInputError(f"--{what}: {v} is out of range [0, {upper})")
            if v not in out:
                out.append(v)
    if not out:
        raise AnalysisInputError(f"--{what} {spec!r} selects nothing")
    return out
