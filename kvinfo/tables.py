"""Fixed-width text tables: the one number formatter of every kvinfo command.

:func:`format_number` writes a number right-aligned in a fixed width, ``-`` for a null
or non-finite value, and a short mark (``n<=d``: fewer vectors than dimensions) for a
value that is null because the data was too small to define it. :func:`truncate` cuts a
label to a column width.

Examples
--------
>>> format_number(3.14159, 7, 3)
'  3.142'
>>> format_number(None, 6)
'     -'
>>> format_number(None, 6, mark="n<=d")
'  n<=d'
>>> format_number(0.00412, 9, spec=".2e")
' 4.12e-03'
"""

from __future__ import annotations

import math

__all__ = ["format_number", "truncate", "NULL", "SMALL_DATA_MARK"]

#: what a null or non-finite number prints as
NULL = "-"
#: what a number null for lack of data (fewer vectors than dimensions) prints as
SMALL_DATA_MARK = "n<=d"


def format_number(
    value, width: int = 6, prec: int = 2, *, spec: str | None = None, mark: str | None = None
) -> str:
    """``value`` right-aligned in ``width`` characters with ``prec`` decimals.

    Parameters
    ----------
    value : number or None
    width, prec : int
        Field width and decimals (``f`` format) when ``spec`` is not given.
    spec : str, optional
        A format spec without the width (``".2e"``, ``"d"``), used instead of ``prec``.
    mark : str, optional
        Printed instead of :data:`NULL` when ``value`` is null or non-finite (say why).
    """
    if value is None or isinstance(value, bool) or (
        isinstance(value, float) and not math.isfinite(value)
    ):
        return f"{mark or NULL:>{width}}"
    fmt = spec if spec is not None else f".{prec}f"
    return f"{value:>{width}{fmt}}"


def truncate(label: str, width: int) -> str:
    """``label`` cut to ``width`` characters, the last one an ellipsis when cut."""
    return label if len(label) <= width else label[: max(width - 1, 0)] + "…"
