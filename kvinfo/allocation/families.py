"""Codec families for allocation: an ordered table of settings per kind.

A family is a list of settings ordered from the coarsest (fewest bits) to the finest; a plan
picks one setting per (layer, kind, head). ``--min-setting`` / ``--max-setting`` restrict the
choice to a range of this table, by index.

========  =====================================================================
family    settings (``coder`` rans everywhere)
========  =====================================================================
uniform   ``bits`` 1..8; keys per channel in groups of 128 tokens, values per
          token (KIVI's choice, as ``kvinfo bench --preset standard``)
uniform_  ``bits`` 1..6 x two group sizes: keys per channel in groups of 128 or
groups    32 tokens, values per token in groups of 64 or 16 channels; ordered
          by nominal rate (bits plus float16 scale and zero point per group)
ecsq      relative ``step`` 2**(k/4) for k = 4, 3, ..., -28 (2.0 down to 0.0078)
turbo     ``bits`` 1..6 (rotation + Lloyd-Max)
klt       ``snr_db`` 0, 2, ..., 40 (basis in-stream unless ``base`` names a file)
========  =====================================================================

``base`` (a dict) is merged into every setting's config, e.g. ``{"group_size": 64}`` for
uniform or ``{"basis": "basis.npz", "rope_theta": 100000}`` for klt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..codecs.spec import KINDS, KVCodecSpec
from ..errors import AllocationError, CodecConfigError

__all__ = ["Family", "FAMILIES", "get_family"]

_RANS = {"id": "rans"}


@dataclass(frozen=True)
class Family:
    """An ordered settings table per kind.

    Attributes
    ----------
    name : str
    settings : dict
        Kind -> list of codec configs, coarsest first (the same length for every kind).
    labels : list of str
        A short label per setting index (``"3 bits"``, ``"step 0.25"``).
    """

    name: str
    settings: dict = field(default_factory=dict)
    labels: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def spec(self, index: int) -> dict:
        """The single setting ``index`` for keys and values, as a KV codec spec."""
        return {k: self.settings[k][index] for k in KINDS}


def _uniform(base):
    bits = list(range(1, 9))
    return {
        "keys": [{"id": "uniform", "bits": b, "axis": "channel", "group_size": 128,
                  "coder": _RANS, **base} for b in bits],
        "values": [{"id": "uniform", "bits": b, "axis": "token", "coder": _RANS, **base}
                   for b in bits],
    }, [f"{b} bits" for b in bits]


def _uniform_groups(base):
    rows = []
    for b in range(1, 7):
        for gk, gv in ((128, 64), (32, 16)):
            nominal = b + 0.5 * (32 / gk + 32 / gv)  # two float16 numbers per group
            rows.append((nominal, b, gk, gv))
    rows.sort()
    keys = [{"id": "uniform", "bits": b, "axis": "channel", "group_size": gk, "coder": _RANS,
             **base} for _, b, gk, _ in rows]
    values = [{"id": "uniform", "bits": b, "axis": "token", "group_size": gv, "coder": _RANS,
               **base} for _, b, _, gv in rows]
    labels = [f"{b} bits g{gk}/{gv}" for _, b, gk, gv in rows]
    return {"keys": keys, "values": values}, labels


def _ecsq(base):
    steps = [round(2.0 ** (k / 4), 6) for k in range(4, -29, -1)]
    cfgs = [{"id": "ecsq", "step": s, "step_mode": "relative", "coder": _RANS, **base}
            for s in steps]
    return {k: cfgs for k in KINDS}, [f"step {s:g}" for s in steps]


def _turbo(base):
    bits = list(range(1, 7))
    cfgs = [{"id": "turbo", "bits": b, "coder": _RANS, **base} for b in bits]
    return {k: cfgs for k in KINDS}, [f"{b} bits" for b in bits]


def _klt(base):
    snrs = [float(s) for s in range(0, 41, 2)]
    cfgs = [{"id": "klt", "snr_db": s, **base} for s in snrs]
    return {k: cfgs for k in KINDS}, [f"{s:g} dB" for s in snrs]


#: family name -> function(base) returning (settings per kind, labels)
FAMILIES = {"uniform": _uniform, "uniform_groups": _uniform_groups, "ecsq": _ecsq,
            "turbo": _turbo, "klt": _klt}


def get_family(name: str, base: dict | None = None) -> Family:
    """The settings table of family ``name``, every config validated once.

    Raises
    ------
    AllocationError
        An unknown family, or a ``base`` that is not a dict.
    kvinfo.errors.CodecConfigError
        A ``base`` that makes a setting invalid.

    Examples
    --------
    >>> f = get_family("uniform")
    >>> len(f), f.labels[2], f.settings["values"][2]["axis"]
    (8, '3 bits', 'token')
    >>> get_family("uniform_groups").labels[:3]
    ['1 bits g128/64', '2 bits g128/64', '1 bits g32/16']
    """
    if name not in FAMILIES:
        raise AllocationError(f"unknown family {name!r}; expected one of {sorted(FAMILIES)}")
    if base is not None and not isinstance(base, dict):
        raise AllocationError(f"family base config must be a JSON object; found {base!r}")
    base = {k: v for k, v in (base or {}).items() if k != "id"}
    settings, labels = FAMILIES[name](base)
    for i in range(len(labels)):
        try:
            KVCodecSpec({k: settings[k][i] for k in KINDS}, require=KINDS)
        except CodecConfigError as exc:
            raise CodecConfigError(f"family {name} setting {labels[i]}: {exc}") from None
    return Family(name, settings, labels)
