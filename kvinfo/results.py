"""The one results JSON schema: ``analyze``, ``bench`` and ``eval`` write it, ``report`` reads it.

The schema is documented in ``docs/results-schema.md``. In short, a results document is::

    {
      "schema": "kvinfo.results", "schema_version": 2,
      "tool": "analyze" | "bench" | "eval",
      "kvinfo_version": "...", "created": "ISO-8601 UTC", "command": ["kvinfo", ...],
      "source": {...},        # what was measured: dump path and its metadata, or model and text
      "settings": {...},      # the options of the run
      "records": [            # one per measured unit
        {"scope": "slab" | "layer" | "kind" | "overall" | "run",
         "layer": int | null, "kind": "keys" | "values" | ... | null, "head": int | null,
         "codec": {codec config} | null,
         "metrics": {name: number | null | list | dict}}
      ]
    }

Metric names carry their units (``bits_per_element``, ``mse_per_element``, ``snr_db``,
``kl_nats_per_token``). Non-finite floats are written as ``null`` so that the file is strict
JSON. Every record is built by :func:`make_record`, which normalises the codec config (every
default filled in, one spelling per codec), so that the same codec measured by two tools is
the same key. :func:`load_results` reads the previous schema version too and returns the
document upgraded to the current one (:func:`upgrade_results`).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any

from ._paths import (
    atomic_write,
    check_output_file,
    make_dirs,
    remove_stale_partials,
)
from ._version import __version__
from .errors import ResultsSchemaError

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "TOOLS",
    "SCOPES",
    "new_results",
    "make_record",
    "normalize_codec",
    "upgrade_results",
    "RENAMED_METRICS",
    "validate_results",
    "write_results",
    "load_results",
    "to_jsonable",
]

SCHEMA = "kvinfo.results"
SCHEMA_VERSION = 2
#: version-1 metric name -> its name since version 2 (names carry their units)
RENAMED_METRICS = {"kl": "kl_nats_per_token"}
TOOLS = ("analyze", "bench", "eval")
SCOPES = ("slab", "layer", "kind", "overall", "run")


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and non-finite floats into strict-JSON values."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if np is not None:
        if isinstance(obj, np.ndarray):
            return to_jsonable(obj.tolist())
        if isinstance(obj, np.bool_):
            return bool(obj)
        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating):
            obj = float(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def new_results(tool: str, source: dict, settings: dict, command: list[str] | None = None) -> dict:
    """A fresh results document with no records.

    ``command`` is the command line that reproduces the document (the commands pass
    :func:`kvinfo.cli.recorded_command`); a document made through the Python API without
    one records ``[]``, not the argv of whatever process made it.
    """
    if tool not in TOOLS:
        raise ResultsSchemaError(f"tool must be one of {TOOLS}; got {tool!r}")
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "tool": tool,
        "kvinfo_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": [str(c) for c in command] if command is not None else [],
        "source": to_jsonable(source),
        "settings": to_jsonable(settings),
        "records": [],
    }


def normalize_codec(codec: dict) -> dict:
    """The one spelling of a KV codec spec that results files record.

    The codec's full config with every default filled in (``get_config()``), or
    ``{"id": "per-kind", "keys": config, "values": config}`` when keys and values use
    different codecs (see :class:`kvinfo.codecs.spec.KVCodecSpec`). Equivalent specs give
    equal dicts, so records of one codec from ``bench`` and ``eval`` join in ``report``.
    Raises :class:`~kvinfo.errors.CodecConfigError` for a spec that is not a KV codec.

    Examples
    --------
    >>> normalize_codec({"id": "uniform", "bits": 4}) == normalize_codec(
    ...     {"keys": {"id": "uniform", "bits": 4, "axis": "channel"},
    ...      "values": {"id": "uniform", "bits": 4, "coder": {"id": "rans"}}})
    True
    """
    from . import remat  # rematerializing codecs (issue 17) are not KV codecs

    if remat.is_remat_spec(codec):
        return remat.normalize_remat_spec(codec)
    key = json.dumps(codec, sort_keys=True, default=repr)
    cached = _NORMALIZED.get(key)
    if cached is None:
        from .codecs.spec import KVCodecSpec

        cached = _NORMALIZED[key] = to_jsonable(KVCodecSpec(codec).config)
        if len(_NORMALIZED) > 4096:  # bounded: specs come from user input
            _NORMALIZED.clear()
            _NORMALIZED[key] = cached
    return json.loads(json.dumps(cached))  # a fresh copy: callers may modify it


_NORMALIZED: dict[str, dict] = {}


def make_record(
    scope: str,
    metrics: dict,
    layer: int | None = None,
    kind: str | None = None,
    head: int | None = None,
    codec: dict | None = None,
) -> dict:
    """One record of the ``records`` list: the one record builder of analyze, bench and eval.

    Values are converted with :func:`to_jsonable`; ``codec`` (any spelling of a KV codec
    spec) is recorded as :func:`normalize_codec` writes it.
    """
    if scope not in SCOPES:
        raise ResultsSchemaError(f"scope must be one of {SCOPES}; got {scope!r}")
    return {
        "scope": scope,
        "layer": None if layer is None else int(layer),
        "kind": kind,
        "head": None if head is None else int(head),
        "codec": normalize_codec(codec) if codec is not None else None,
        "metrics": to_jsonable(metrics),
    }


def upgrade_results(doc: dict) -> dict:
    """``doc`` (a validated results document of any readable version) at the current version.

    Version 1 named the KL divergence of ``eval`` records ``kl``; it is renamed to
    ``kl_nats_per_token`` (:data:`RENAMED_METRICS`). Codec configs are normalised
    (:func:`normalize_codec`) where kvinfo knows the codec, so that version-1 ``eval``
    records, which kept the spec as the user wrote it, join the ``bench`` records of the same
    codec. The input is not modified.
    """
    out = dict(doc)
    out["records"] = []
    for rec in doc["records"]:
        rec = dict(rec)
        metrics = dict(rec["metrics"])
        for old, new in RENAMED_METRICS.items():
            if old in metrics and new not in metrics:
                metrics[new] = metrics.pop(old)
        rec["metrics"] = metrics
        if rec.get("codec") is not None:
            rec["codec"] = _normalize_known(rec["codec"])
        out["records"].append(rec)
    out["schema_version"] = SCHEMA_VERSION
    return out


def _normalize_known(codec: dict) -> dict:
    try:
        return normalize_codec(codec)
    except (ValueError, TypeError):  # a codec this kvinfo does not know: keep it as written
        return codec


def _fail(msg: str, where: str) -> None:
    raise ResultsSchemaError(f"{where}: {msg}")


def validate_results(doc: Any, where: str = "results") -> dict:
    """Check ``doc`` against the schema; return it or raise :class:`ResultsSchemaError`."""
    if not isinstance(doc, dict):
        _fail(f"expected a JSON object, found {type(doc).__name__}", where)
    if doc.get("schema") != SCHEMA:
        _fail(f"expected schema {SCHEMA!r}, found {doc.get('schema')!r}", where)
    ver = doc.get("schema_version")
    if not isinstance(ver, int) or ver < 1:
        _fail(f"schema_version must be a positive integer, found {ver!r}", where)
    if ver > SCHEMA_VERSION:
        _fail(
            f"schema_version {ver} is newer than this kvinfo understands ({SCHEMA_VERSION}); "
            "upgrade kvinfo",
            where,
        )
    if doc.get("tool") not in TOOLS:
        _fail(f"tool must be one of {TOOLS}, found {doc.get('tool')!r}", where)
    for key, typ in (
        ("kvinfo_version", str),
        ("created", str),
        ("command", list),
        ("source", dict),
        ("settings", dict),
        ("records", list),
    ):
        if not isinstance(doc.get(key), typ):
            _fail(f"{key!r} must be a {typ.__name__}, found {type(doc.get(key)).__name__}", where)
    for i, rec in enumerate(doc["records"]):
        w = f"{where}: records[{i}]"
        if not isinstance(rec, dict):
            _fail("expected an object", w)
        if rec.get("scope") not in SCOPES:
            _fail(f"scope must be one of {SCOPES}, found {rec.get('scope')!r}", w)
        for key in ("layer", "head"):
            if rec.get(key) is not None and not isinstance(rec.get(key), int):
                _fail(f"{key} must be an integer or null", w)
        if rec.get("kind") is not None and not isinstance(rec.get("kind"), str):
            _fail("kind must be a string or null", w)
        if rec.get("codec") is not None and not (
            isinstance(rec["codec"], dict) and "id" in rec["codec"]
        ):
            _fail("codec must be null or a codec config with an 'id'", w)
        if not isinstance(rec.get("metrics"), dict):
            _fail("metrics must be an object", w)
    return doc


def write_results(doc: dict, path: str | os.PathLike) -> Path:
    """Validate and write ``doc`` atomically (temporary file, then rename)."""
    validate_results(doc)
    path = check_output_file(path, kind="results")
    make_dirs(path.parent)
    remove_stale_partials(path)
    with atomic_write(path) as f:  # <name>.kvinfo-partial-<pid>, mode 0o666 minus the umask
        json.dump(to_jsonable(doc), f, indent=1, allow_nan=False)
        f.write("\n")
    return path


def load_results(path: str | os.PathLike, *, upgrade: bool = True) -> dict:
    """Read and validate a results JSON file.

    With ``upgrade`` (the default), a document of an older schema version is returned as
    :func:`upgrade_results` converts it, so readers see the current metric names.
    """
    path = Path(path)
    if path.is_dir():
        raise ResultsSchemaError(f"{path}: is a folder, not a results JSON file")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ResultsSchemaError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise ResultsSchemaError(f"{path}: not a text file") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsSchemaError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    doc = validate_results(doc, where=str(path))
    return upgrade_results(doc) if upgrade else doc
