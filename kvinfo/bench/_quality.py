"""Model-quality records (``kvinfo bench --eval``) added to a bench document."""

from __future__ import annotations

from collections.abc import Sequence

from ._spec import CodecSpec

__all__ = ["add_quality"]


def add_quality(doc: dict, quality: dict, specs: Sequence[dict]) -> dict:
    """Add the records of :func:`kvinfo.evaluate.evaluate`'s output to a bench document.

    One ``scope: "run"`` record per codec (its normalised config, in the order of ``specs``)
    with ``perplexity``, ``perplexity_increase_pct``, ``kl``, ``top1_agreement``,
    ``bits_per_element`` (of the cache the model actually used) and ``baseline_perplexity``;
    and one record with ``codec: null`` for the uncompressed baseline.
    """
    from .. import results

    base = dict(quality["baseline"])
    doc["records"].append(results.make_record("run", {**base, "quality_baseline": True}))
    for spec, r in zip(specs, quality["results"], strict=True):
        metrics = {k: v for k, v in r.items() if k != "codec"}
        metrics["baseline_perplexity"] = base["perplexity"]
        doc["records"].append(
            results.make_record("run", metrics, codec=CodecSpec(spec).config)
        )
    doc["settings"]["eval"] = {
        k: quality.get(k) for k in ("num_tokens", "prefix", "num_scored_tokens", "block", "model")
    }
    return doc
