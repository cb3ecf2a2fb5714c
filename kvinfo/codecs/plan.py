"""``plan``: a per-slab codec map (an allocation plan from ``kvinfo allocate``) used as a codec.

A plan file assigns every (layer, kind, head) slab of one model geometry one setting of a
codec family (``docs/allocation.md``). ``{"id": "plan", "path": "plan.json"}`` is a KV codec
like any other: ``kvinfo bench --codec`` and ``kvinfo eval --codec`` accept it. It must be
bound to its slab through the slab identity hook :meth:`PlanCodec.for_slab` (bench binds one
head, eval one layer with ``head=None``, whose heads the codec then codes one by one with
each head's own setting); an unbound plan refuses to encode. A plan made for another
geometry (number of layers, KV heads, head dimension) refuses the data with
:class:`~kvinfo.errors.PlanFormatError`; :meth:`PlanCodec.check_geometry` lets a caller that
knows the whole geometry refuse it before any slab is coded.

Plan file (JSON, ``plan_version`` 1; written by :func:`kvinfo.allocation.save_plan`)::

    {"schema": "kvinfo.plan", "plan_version": 1, "kvinfo_version": ..., "created": ...,
     "command": [...], "source": {...},
     "geometry": {"num_layers": L, "num_kv_heads": H, "head_dim": d},
     "family": "uniform",
     "settings": {"keys": [config, ...], "values": [config, ...]},
     "assignment": {"keys": [[index per head] per layer], "values": [...]},
     "budget": {...}, "predicted": {...}, "records": [...]}

Only ``geometry``, ``settings`` and ``assignment`` decide what the codec does; the rest
documents how the plan was made (see ``docs/allocation.md``).

Stream: the quantizer container of :mod:`kvinfo.codecs.quant._base` (codec tag 6), with
the input's dtype and shape, so tools that read the container (``kvinfo bench``) read it::

    params   "<4sBHBH": plan digest (BLAKE2b-4 of geometry, settings and assignment),
             kind (0 keys, 1 values), layer, bound head + 1 (0: one layer, its heads on the
             array's axis -3), number of parts N
    side     N sections: KV head (uint16) + that head's own codec stream, in head order

Rate accounting: the symbol bits are the parts' own symbol bits (each codec's
:meth:`~kvinfo.codecs.abc.Codec.rate`); everything else, the plan's 20-byte framing
included, is side information. The parts are side sections of the container, so
``kvinfo bench``'s own-symbol entropy of a plan is its parts' coded payload, not an entropy.

Examples
--------
>>> import json, os, tempfile
>>> import numpy as np
>>> from kvinfo.codecs import get_codec
>>> folder = tempfile.mkdtemp()
>>> plan = {"schema": "kvinfo.plan", "plan_version": 1,
...         "geometry": {"num_layers": 1, "num_kv_heads": 2, "head_dim": 8},
...         "family": "uniform",
...         "settings": {k: [{"id": "uniform", "bits": b} for b in (2, 4)]
...                      for k in ("keys", "values")},
...         "assignment": {"keys": [[0, 1]], "values": [[1, 1]]}}
>>> path = os.path.join(folder, "plan.json")
>>> with open(path, "w") as f:
...     json.dump(plan, f)
>>> codec = get_codec({"id": "plan", "path": path}).for_slab(0, "keys", None)
>>> x = np.random.default_rng(0).standard_normal((2, 32, 8)).astype(np.float32)
>>> codec.decode(codec.encode(x)).shape
(2, 32, 8)
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
import os
import struct

import numpy as np

from ..errors import CodecConfigError, CorruptStreamError, PlanFormatError
from .abc import RateBreakdown
from .limits import check_output_bytes
from .quant._base import (
    SIDE,
    TAGS,
    QuantCodec,
    Section,
    build_stream,
    check_float_array,
    parse_stream,
    unpack_params,
)
from .registry import get_codec, register_codec

__all__ = ["PlanCodec", "load_plan", "check_plan", "plan_digest", "framing_bytes", "PLAN_SCHEMA",
           "PLAN_VERSION", "KINDS"]

PLAN_SCHEMA = "kvinfo.plan"
PLAN_VERSION = 1
KINDS = ("keys", "values")
_PARAMS = "<4sBHBH"
MAX_PLAN_BYTES = 64 << 20  # a plan is a few hundred kB for a 100-layer model


def _int(v, lo: int, hi: int, what: str, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise PlanFormatError(f"{where}: {what} must be an integer in {lo}..{hi}; found {v!r}")
    return v


def framing_bytes(ndim: int, parts: int) -> int:
    """Bytes a plan stream adds around its parts (container header, section headers, head
    numbers, CRC) for an array of ``ndim`` dimensions coded in ``parts`` parts.

    >>> framing_bytes(2, 1)
    55
    """
    header = 7 + 8 * ndim + 2 + struct.calcsize(_PARAMS) + 1 + 4
    return header + parts * (9 + 2) + 4


def plan_digest(plan: dict) -> bytes:
    """4 bytes identifying what a plan does (its geometry, settings and assignment)."""
    key = json.dumps(
        {k: plan[k] for k in ("geometry", "settings", "assignment")}, sort_keys=True
    ).encode()
    return hashlib.blake2b(key, digest_size=4).digest()


def check_plan(plan, where: str = "plan") -> dict:
    """Validate a plan document (the part that decides the coding); return it.

    Raises :class:`~kvinfo.errors.PlanFormatError` naming the first problem.
    """
    if not isinstance(plan, dict) or plan.get("schema") != PLAN_SCHEMA:
        raise PlanFormatError(f"{where}: not a kvinfo plan (expected \"schema\": "
                              f"\"{PLAN_SCHEMA}\")")
    ver = plan.get("plan_version")
    if ver != PLAN_VERSION:
        raise PlanFormatError(
            f"{where}: unknown plan_version {ver!r}; this kvinfo reads version {PLAN_VERSION}"
        )
    geo = plan.get("geometry")
    if not isinstance(geo, dict):
        raise PlanFormatError(f"{where}: geometry must be an object")
    nl = _int(geo.get("num_layers"), 1, 0xFFFF, "geometry.num_layers", where)
    nh = _int(geo.get("num_kv_heads"), 1, 0xFFFF, "geometry.num_kv_heads", where)
    _int(geo.get("head_dim"), 1, 1 << 20, "geometry.head_dim", where)
    settings, assign = plan.get("settings"), plan.get("assignment")
    if not isinstance(settings, dict) or not isinstance(assign, dict):
        raise PlanFormatError(f"{where}: settings and assignment must be objects")
    for kind in KINDS:
        table = settings.get(kind)
        if not isinstance(table, list) or not table or not all(
            isinstance(c, dict) and "id" in c for c in table
        ):
            raise PlanFormatError(
                f"{where}: settings.{kind} must be a non-empty list of codec configs"
            )
        if any(c["id"] == PlanCodec.codec_id for c in table):
            raise PlanFormatError(f"{where}: settings.{kind}: a plan cannot contain a plan")
        rows = assign.get(kind)
        if not isinstance(rows, list) or len(rows) != nl or not all(
            isinstance(r, list) and len(r) == nh for r in rows
        ):
            raise PlanFormatError(
                f"{where}: assignment.{kind} must be {nl} lists (layers) of {nh} setting "
                "indices (KV heads)"
            )
        for layer, row in enumerate(rows):
            for head, i in enumerate(row):
                _int(i, 0, len(table) - 1,
                     f"assignment.{kind}[{layer}][{head}] (a setting index)", where)
    return plan


def load_plan(path: str | os.PathLike) -> dict:
    """Read and validate a plan file; :class:`~kvinfo.errors.PlanFormatError` if it is not one."""
    where = os.fspath(path)
    try:
        size = os.path.getsize(where)
        if size > MAX_PLAN_BYTES:
            raise PlanFormatError(f"{where}: {size} bytes is too large for a plan file")
        with open(where, encoding="utf-8") as f:
            plan = json.load(f)
    except FileNotFoundError:
        raise PlanFormatError(f"{where}: no such plan file") from None
    except IsADirectoryError:
        raise PlanFormatError(f"{where}: is a folder, not a plan file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanFormatError(f"{where}: not a JSON plan file ({exc})") from None
    except OSError as exc:
        raise PlanFormatError(f"{where}: cannot read ({exc.strerror})") from None
    return check_plan(plan, where)


@register_codec
class PlanCodec(QuantCodec):
    """A per-slab codec map read from a plan file (``kvinfo allocate``).

    Parameters
    ----------
    path : str
        The plan file (JSON, see the module docstring).

    Notes
    -----
    Bind it with :meth:`for_slab` before encoding. Each slab's codec is built once from the
    plan's settings table, so encoding costs what the slab's own codec costs.
    """

    codec_id = "plan"

    def __init__(self, path: str | os.PathLike):
        if not isinstance(path, str | os.PathLike):
            raise CodecConfigError(f"plan: path must be a file path; found {path!r}")
        super().__init__(None)
        self.path = os.fspath(path)
        self.plan = load_plan(self.path)
        self._digest = plan_digest(self.plan)
        self._codecs = {}
        for kind in KINDS:
            table = []
            for j, cfg in enumerate(self.plan["settings"][kind]):
                try:
                    c = get_codec(cfg)
                except CodecConfigError as exc:
                    raise PlanFormatError(f"{self.path}: settings.{kind}[{j}]: {exc}") from None
                if not isinstance(c, QuantCodec):
                    raise PlanFormatError(
                        f"{self.path}: settings.{kind}[{j}] is {cfg['id']!r}, not a KV codec"
                    )
                table.append(c)
            self._codecs[kind] = table
        self._layer: int | None = None
        self._kind: str | None = None
        self._head: int | None = None
        self._bind_kwargs: dict = {}

    def get_config(self) -> dict:
        return {"id": self.codec_id, "path": self.path}

    @property
    def geometry(self) -> dict:
        """``{"num_layers", "num_kv_heads", "head_dim"}`` of the plan."""
        return dict(self.plan["geometry"])

    # -- geometry and the slab identity hook ---------------------------------------------
    def _mismatch(self, found: str) -> PlanFormatError:
        g = self.plan["geometry"]
        return PlanFormatError(
            f"plan {self.path} was made for {g['num_layers']} layers x {g['num_kv_heads']} KV "
            f"heads x head_dim {g['head_dim']}; {found}"
        )

    def check_geometry(self, num_layers: int, num_kv_heads: int, head_dim: int) -> None:
        """Refuse (:class:`~kvinfo.errors.PlanFormatError`) data of another geometry."""
        g = self.plan["geometry"]
        if (num_layers, num_kv_heads, head_dim) != (
            g["num_layers"], g["num_kv_heads"], g["head_dim"]
        ):
            raise self._mismatch(
                f"the data has {num_layers} layers x {num_kv_heads} KV heads x head_dim "
                f"{head_dim}; make a plan for this geometry (kvinfo allocate)"
            )

    def for_slab(self, layer=None, kind=None, head=None, *, positions=None, **kwargs):
        """A copy bound to one slab (``head`` given) or one layer's heads (``head=None``).

        ``positions`` and further keywords (``token_ids``, ``sequences``) are passed on to
        settings that have the hook themselves (``klt``).
        """
        g = self.plan["geometry"]
        if layer is None or kind not in KINDS:
            raise CodecConfigError(
                f"plan: bind it with for_slab(layer, kind, head), kind one of {KINDS}; found "
                f"layer={layer!r}, kind={kind!r}"
            )
        if not 0 <= int(layer) < g["num_layers"]:
            raise self._mismatch(f"asked for layer {layer}")
        if head is not None and not 0 <= int(head) < g["num_kv_heads"]:
            raise self._mismatch(f"asked for KV head {head}")
        bound = copy.copy(self)
        bound._layer = int(layer)
        bound._kind = kind
        bound._head = None if head is None else int(head)
        bound._bind_kwargs = dict(kwargs)
        if positions is not None:
            bound._bind_kwargs["positions"] = positions
        return bound

    def slab_codec(self, layer: int, kind: str, head: int):
        """The codec the plan assigns to one slab (bound to it when it has the hook)."""
        i = self.plan["assignment"][kind][layer][head]
        c = self._codecs[kind][i]
        if hasattr(c, "for_slab"):
            c = c.for_slab(layer, kind, head, **self._bind_kwargs)
        return c

    def _heads(self, array: np.ndarray) -> list[tuple[int, np.ndarray]]:
        g = self.plan["geometry"]
        if self._layer is None:
            raise CodecConfigError(
                "plan: an unbound plan cannot code: bind it with for_slab(layer, kind, head) "
                "(kvinfo bench and eval do)"
            )
        if array.shape[-1] != g["head_dim"]:
            raise self._mismatch(f"the data has head_dim {array.shape[-1]}")
        if self._head is not None:
            return [(self._head, array)]
        if array.ndim != 3 or array.shape[0] != g["num_kv_heads"]:
            raise self._mismatch(
                f"the layer's array has shape {array.shape}; expected (num_kv_heads, tokens, "
                "head_dim)"
            )
        return [(h, array[h]) for h in range(array.shape[0])]

    # -- codec ---------------------------------------------------------------------------
    def encode(self, array) -> bytes:
        array = check_float_array(array, self.codec_id)
        sections = []
        for h, x in self._heads(array):
            data = self.slab_codec(self._layer, self._kind, h).encode(np.ascontiguousarray(x))
            sections.append(Section(SIDE, struct.pack("<H", h) + data))
        params = struct.pack(
            _PARAMS, self._digest, KINDS.index(self._kind), self._layer,
            0 if self._head is None else self._head + 1, len(sections),
        )
        return build_stream(TAGS["plan"], array.dtype, array.shape, params, sections)

    def _parts(self, data) -> tuple[str, int, bool, list[tuple[int, bytes]], tuple]:
        p = parse_stream(data, TAGS["plan"])
        digest, kind, layer, head1, n = unpack_params(_PARAMS, p.params)
        if digest != self._digest:
            raise CorruptStreamError(f"the stream was written with another plan than {self.path}")
        g = self.plan["geometry"]
        if kind > 1 or layer >= g["num_layers"] or head1 > g["num_kv_heads"] or n != len(
            p.sections
        ) or n == 0 or (head1 and n != 1):
            raise CorruptStreamError("bad plan stream parameters")
        if self._layer is not None and (
            kind != KINDS.index(self._kind) or layer != self._layer
            or head1 != (0 if self._head is None else self._head + 1)
        ):
            raise CorruptStreamError(
                "the stream was written for another slab than the codec is bound to"
            )
        out = []
        for sec in p.sections:
            if sec.kind != SIDE or len(sec.data) < 2:
                raise CorruptStreamError("bad part section in plan stream")
            (h,) = struct.unpack_from("<H", sec.data, 0)
            if h >= g["num_kv_heads"]:
                raise CorruptStreamError(f"plan stream part for KV head {h} out of range")
            out.append((h, bytes(sec.data[2:])))
        return KINDS[kind], layer, head1 > 0, out, p

    def decode(self, data, device: str = "cpu", max_output_bytes: int | None = None):
        self._check_device(device)
        kind, layer, one_slab, parts, p = self._parts(data)
        check_output_bytes(math.prod(p.shape) * p.dtype.itemsize, max_output_bytes)
        arrays = []
        for h, part in parts:
            codec = self._codecs[kind][self.plan["assignment"][kind][layer][h]]
            if hasattr(codec, "for_slab"):
                codec = codec.for_slab(layer, kind, h, **self._bind_kwargs)
            if max_output_bytes is not None and "max_output_bytes" in inspect.signature(
                codec.decode
            ).parameters:
                arrays.append(codec.decode(part, max_output_bytes=max_output_bytes))
            else:
                arrays.append(codec.decode(part))
        out = arrays[0] if one_slab else np.stack(arrays)
        if out.shape != p.shape or out.dtype != p.dtype:
            raise CorruptStreamError(
                f"plan stream parts decode to {out.dtype}{out.shape}; the header says "
                f"{p.dtype}{p.shape}"
            )
        return out

    def rate(self, data) -> RateBreakdown:
        symbol_bits, n = 0, 0
        kind, layer, _, parts, _ = self._parts(data)
        for h, part in parts:
            codec = self._codecs[kind][self.plan["assignment"][kind][layer][h]]
            r = codec.rate(part)
            symbol_bits += int(r["symbol_bits"])
            n += int(r["num_elements"])
        return RateBreakdown.from_bits(8 * len(bytes(data)), symbol_bits, n)


