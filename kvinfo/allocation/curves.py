"""Operational rate-distortion curves: every setting of a family run on every slab of a dump.

For each (layer, kind, head) slab and each setting of the family, the real codec encodes the
slab and decodes it; the curve point is the measured ``bits_per_element`` (``8 *
len(stream) / elements``: side information included) and the measured
``mse_per_element``, also per channel (the sensitivity weighs channels). The rate includes
the plan codec's own framing of each slab (:func:`kvinfo.codecs.plan.framing_bytes`, 55
bytes), so that a plan's rate on the calibration dump is the rate the solver budgeted. A
setting that cannot code a slab (an ``ecsq`` step too fine for its index alphabet) is
recorded as NaN and never chosen.

``tokens`` (the dynamic mode) codes the slab in consecutive windows of that many tokens, as a
cache of that length would be coded, so that the side information per element at that length
is what the curve holds.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np

from .._paths import (
    atomic_write,
    check_output_file,
)
from ..codecs.plan import framing_bytes
from ..codecs.spec import KINDS
from ..errors import AllocationError, CodecConfigError
from .families import Family

__all__ = ["RDCurves", "measure_rd_curves", "load_rd_curves"]

CURVES_SCHEMA = "kvinfo.rd-curves"


@dataclass
class RDCurves:
    """Measured curves of one family on one dump.

    Attributes
    ----------
    family : str
    settings : dict
        Kind -> codec configs (the family's table).
    labels : list of str
    slabs : list of (layer, kind, head)
    bits_per_element : ndarray, shape (slabs, settings)
        Measurement, side information included; NaN where the setting cannot code the slab.
    mse_per_element : ndarray, shape (slabs, settings)
    mse_per_channel : ndarray, shape (slabs, settings, head_dim)
    geometry : dict
        ``num_layers``, ``num_kv_heads``, ``head_dim``.
    num_tokens : int
        Tokens per slab of the dump.
    tokens : int or None
        The window length of the dynamic mode (None: the whole slab in one call).
    seconds : float
        Wall time of the measurement.
    source : dict
        The dump's path, model and dtype.
    """

    family: str
    settings: dict
    labels: list
    slabs: list
    bits_per_element: np.ndarray
    mse_per_element: np.ndarray
    mse_per_channel: np.ndarray
    geometry: dict
    num_tokens: int
    tokens: int | None
    seconds: float
    source: dict

    def save(self, path) -> None:
        """Write the curves to an ``.npz`` file (temporary name, then rename)."""
        path = check_output_file(path)
        meta = {
            "schema": CURVES_SCHEMA, "version": 1, "family": self.family,
            "settings": self.settings, "labels": self.labels,
            "slabs": [list(s) for s in self.slabs], "geometry": self.geometry,
            "num_tokens": self.num_tokens, "tokens": self.tokens, "seconds": self.seconds,
            "source": self.source,
        }
        with atomic_write(path, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), bits=self.bits_per_element,
                     mse=self.mse_per_element, mse_channel=self.mse_per_channel)


def load_rd_curves(path) -> RDCurves:
    """Read curves written by :meth:`RDCurves.save`; :class:`AllocationError` if not such."""
    where = os.fspath(path)
    try:
        with np.load(where, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            bits, mse, mch = z["bits"], z["mse"], z["mse_channel"]
    except (OSError, ValueError, KeyError) as exc:
        raise AllocationError(f"{where}: not a kvinfo curves file ({exc})") from None
    if meta.get("schema") != CURVES_SCHEMA or meta.get("version") != 1:
        raise AllocationError(f"{where}: not a version-1 kvinfo curves file")
    slabs = [(int(a), str(b), int(c)) for a, b, c in meta["slabs"]]
    k = len(meta["labels"])
    if bits.shape != (len(slabs), k) or mse.shape != bits.shape or mch.shape[:2] != bits.shape:
        raise AllocationError(f"{where}: curves arrays do not match their slabs and settings")
    return RDCurves(meta["family"], meta["settings"], meta["labels"], slabs, bits, mse, mch,
                    meta["geometry"], int(meta["num_tokens"]), meta["tokens"],
                    float(meta["seconds"]), meta["source"])


class _Unusable(Exception):
    """A setting that cannot code a slab (e.g. an ecsq step too fine for its alphabet)."""


def _windows(n: int, tokens: int | None) -> list[tuple[int, int]]:
    if tokens is None:
        return [(0, n)]
    return [(a, a + tokens) for a in range(0, n - tokens + 1, tokens)]


def measure_rd_curves(dump, family: Family, *, tokens: int | None = None,
                      progress: bool = False) -> RDCurves:
    """Run every setting of ``family`` on every keys and values slab of ``dump``.

    Parameters
    ----------
    dump : path or kvinfo.dumps.Dump
    family : Family
        From :func:`~kvinfo.allocation.get_family`.
    tokens : int, optional
        Code windows of this many consecutive tokens (the dynamic mode); at most the dump's
        number of tokens.
    progress : bool
        Show a progress bar over the slabs.

    Returns
    -------
    RDCurves

    Raises
    ------
    AllocationError
        ``tokens`` out of range.
    """
    from tqdm.auto import tqdm

    from ..codecs import get_codec
    from ..dumps import open_dump

    own = not hasattr(dump, "slab")
    d = open_dump(dump) if own else dump
    t0 = time.perf_counter()
    try:
        n = d.num_tokens
        if tokens is not None and (
            isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= n
        ):
            raise AllocationError(
                f"tokens must be an integer in 1..{n} (the dump's tokens); found {tokens!r}"
            )
        codecs = {k: [get_codec(c) for c in family.settings[k]] for k in KINDS}
        slabs = [(lay, kind, h) for lay in range(d.num_layers) for kind in KINDS
                 for h in range(d.num_kv_heads)]
        k_n, dim = len(family), d.head_dim
        bits = np.full((len(slabs), k_n), np.nan)
        mse = np.full((len(slabs), k_n), np.nan)
        mch = np.full((len(slabs), k_n, dim), np.nan)
        pos_all = d.positions()
        ids = d.token_ids
        wins = _windows(n, tokens)
        for s, (lay, kind, h) in enumerate(tqdm(slabs, desc="rd curves", disable=not progress)):
            x = d.slab(kind, lay, h)
            x64 = x.astype(np.float64)
            for j in range(k_n):
                total_bits, err = 0, np.zeros(dim)
                used = 0
                try:
                    for a, b in wins:
                        c = codecs[kind][j]
                        if hasattr(c, "for_slab"):  # binding errors (a basis fitted on
                            # this dump) are the user's to see: outside the try below
                            c = c.for_slab(lay, kind, h, positions=pos_all[a:b],
                                           token_ids=ids[a:b])
                        try:
                            data = c.encode(np.ascontiguousarray(x[a:b]))
                        except CodecConfigError:
                            raise _Unusable from None
                        y = np.asarray(c.decode(data), dtype=np.float64)
                        total_bits += 8 * (len(data) + framing_bytes(2, 1))
                        err += np.sum((x64[a:b] - y) ** 2, axis=0)
                        used += b - a
                except _Unusable:
                    continue  # this setting cannot code this slab: left NaN, never chosen
                bits[s, j] = total_bits / (used * dim)
                mch[s, j] = err / used
                mse[s, j] = float(np.mean(mch[s, j]))
        geometry = {"num_layers": d.num_layers, "num_kv_heads": d.num_kv_heads,
                    "head_dim": d.head_dim}
        source = {"dump": str(d.path), "model": d.meta.get("model"), "dtype": d.dtype,
                  "num_tokens": n}
    finally:
        if own:
            d.close()
    return RDCurves(family.name, family.settings, list(family.labels), slabs, bits, mse, mch,
                    geometry, n, tokens, time.perf_counter() - t0, source)
