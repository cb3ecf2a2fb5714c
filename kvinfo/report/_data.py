"""Gather the records of several results documents into what the figures and tables need."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..codecs.labels import codec_family, codec_label
from ..errors import ResultsSchemaError

__all__ = ["ReportData", "gather"]


def _key(codec: dict | None) -> str:
    return json.dumps(codec, sort_keys=True)


@dataclass
class ReportData:
    """Records by tool, deduplicated, with one label and family per codec."""

    sources: list[str] = field(default_factory=list)
    analyze: list[dict] = field(default_factory=list)  # analyze records
    analyze_settings: dict = field(default_factory=dict)
    bench: list[dict] = field(default_factory=list)  # bench records with a codec
    bench_ref: list[dict] = field(default_factory=list)  # bench records without a codec
    bench_settings: dict = field(default_factory=dict)
    quality: list[dict] = field(default_factory=list)  # eval results, one per codec
    baseline: dict | None = None
    codecs: dict = field(default_factory=dict)  # key -> config, in first-seen order
    dump_source: dict | None = None
    # hf (issue 18): eval documents of the needle task, drawn by report.needle
    needle_docs: list[dict] = field(default_factory=list)

    def label(self, codec: dict) -> str:
        return codec_label(codec)

    def family(self, codec: dict) -> str:
        return codec_family(codec)

    def families(self) -> list[str]:
        out: list[str] = []
        for cfg in self.codecs.values():
            f = codec_family(cfg)
            if f not in out:
                out.append(f)
        return out

    def records(self, which: str, scope: str, kind=None, codec=None) -> list[dict]:
        recs = getattr(self, which)
        out = []
        for r in recs:
            if r["scope"] != scope:
                continue
            if kind is not None and r["kind"] != kind:
                continue
            if codec is not None and _key(r["codec"]) != _key(codec):
                continue
            out.append(r)
        return out

    def kinds(self) -> list[str]:
        out: list[str] = []
        for r in self.analyze + self.bench + self.bench_ref:
            k = r.get("kind")
            if k and k not in out:
                out.append(k)
        order = {"keys": 0, "values": 1, "queries": 2, "keys_pre_rope": 3}
        return sorted(out, key=lambda k: order.get(k, 9))


def gather(docs: list[tuple[str, dict]]) -> ReportData:
    """Combine validated results documents (``(name, doc)`` pairs) into :class:`ReportData`.

    Several bench or eval documents may be given; a codec measured twice keeps its first
    measurement. Analyze records come from the first analyze document.
    """
    data = ReportData()
    seen: set = set()
    if not docs:
        raise ResultsSchemaError("no results documents given")
    for name, doc in docs:
        data.sources.append(name)
        tool = doc["tool"]
        if tool == "analyze":
            if data.analyze:
                continue
            data.analyze = list(doc["records"])
            data.analyze_settings = dict(doc["settings"])
            data.dump_source = data.dump_source or doc["source"]
        elif tool == "bench":
            data.dump_source = data.dump_source or doc["source"]
            if not data.bench_settings:
                data.bench_settings = dict(doc["settings"])
            for r in doc["records"]:
                if r["codec"] is None:
                    if r["scope"] == "run":
                        if data.baseline is None:
                            data.baseline = r["metrics"]
                    elif not any(
                        x["scope"] == r["scope"] and x["kind"] == r["kind"]
                        and x["layer"] == r["layer"] and x["head"] == r["head"]
                        for x in data.bench_ref
                    ):
                        data.bench_ref.append(r)
                    continue
                _add_codec(data, r["codec"])
                if r["scope"] == "run":
                    _add_quality(data, r, seen)
                    continue
                k = ("bench", r["scope"], r["kind"], r["layer"], r["head"], _key(r["codec"]))
                if k in seen:
                    continue
                seen.add(k)
                data.bench.append(r)
        elif tool == "eval":
            # hf (issue 18): needle records have no perplexity; report.needle draws them
            if doc.get("settings", {}).get("task") == "needle":
                data.needle_docs.append(doc)
                continue
            for r in doc["records"]:
                if r["scope"] != "run":
                    continue
                if r["codec"] is None:
                    if data.baseline is None:
                        data.baseline = r["metrics"]
                    continue
                _add_codec(data, r["codec"])
                _add_quality(data, r, seen)
    return data


def _add_codec(data: ReportData, codec: dict) -> None:
    data.codecs.setdefault(_key(codec), codec)


def _add_quality(data: ReportData, r: dict, seen: set) -> None:
    k = ("quality", _key(r["codec"]))
    if k in seen:
        return
    seen.add(k)
    data.quality.append(r)
