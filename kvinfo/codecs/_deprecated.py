"""Deprecated names kept for one release: a module ``__getattr__`` that warns.

Examples
--------
>>> import warnings
>>> from kvinfo.codecs import rans
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")
...     cls = rans.Rans
>>> cls is rans.RansCodec, caught[0].category.__name__
(True, 'DeprecationWarning')
"""

from __future__ import annotations

import sys
import warnings

__all__ = ["deprecated_aliases"]


def deprecated_aliases(module: str, aliases: dict[str, str]):
    """A module ``__getattr__`` resolving each old name in ``aliases`` to its new name in
    ``module``, with a :class:`DeprecationWarning` naming the replacement."""

    def __getattr__(name: str):
        if name in aliases:
            new = aliases[name]
            warnings.warn(
                f"{module}.{name} is deprecated and will be removed in the next release; "
                f"use {module}.{new}",
                DeprecationWarning,
                stacklevel=2,
            )
            return getattr(sys.modules[module], new)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
