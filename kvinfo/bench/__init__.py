"""The bench engine: run KV codecs on a dump and compare what they achieve with the bounds.

For every selected (layer, kind, head) slab and every codec, :func:`bench_dump` encodes the
slab, decodes it, and measures:

* the rate: ``bits_per_element`` of the whole stream, split into ``symbol_bits_per_element``
  (entropy-coded payload) and ``side_bits_per_element`` (scales, norms, headers, tables...),
  as the codec's own :meth:`~kvinfo.codecs.abc.Codec.rate` reports it;
* the distortion: ``mse_per_element`` and ``snr_db`` (relative to the slab's variance per
  element, the reference of ``kvinfo analyze``'s grid), and, when the dump has queries, what
  attention sees: for keys the logit MSE, the KL divergence of the attention distribution and
  the top-1 agreement; for values the relative error of the attention output;
* the bounds at the distortion the codec achieved, computed with :mod:`kvinfo.analysis`:
  the Gaussian R(D) (``rd_gaussian``; an upper bound on R(D) of any source with this
  covariance, so a codec *can* beat it), the Shannon lower bound estimate (a lower bound on
  R(D) when the differential entropy is exact; here ``h`` is a kNN estimate, so it is an
  estimate), and the order-0 entropy of the codec's own symbols (what an ideal order-0 coder
  of exactly those symbols would spend; a true bound for static or adaptive order-0 coders,
  not for context-modelling ones such as ``arith``);
* the gap to each bound, in bits per element and in percent of the bound;
* encode and decode throughput on the CPU (MB/s of uncompressed KV, and M symbols/s for the
  entropy coder alone), and on the GPU when :mod:`kvinfo.kernels.gpu` finds one.

Slab results are aggregated per (layer, kind), per kind and overall, per codec, by the one
aggregator of :mod:`kvinfo.analysis.aggregate` (each metric over the slabs where it is
defined, with ``counts``). The result is a results document (``tool: "bench"``) of
:mod:`kvinfo.results`; the metric names are listed in ``docs/results-schema.md`` (section
"bench").

The package is split along its seams: ``_presets`` (named codec sweeps), ``_spec``
(:class:`CodecSpec`), ``_timing`` (best-of-N CPU timing and the GPU timer), ``_measure``
(:func:`measure_codec`: one codec on one slab), ``_reference`` (the slab's bounds, from the
covariance and eigendecomposition that :func:`kvinfo.analysis.slab_analysis` computed once),
``_aggregate`` (:func:`aggregate_codec_metrics`), ``_table`` (:func:`format_table`),
``_quality`` (:func:`add_quality`) and ``_engine`` (:func:`bench_dump`). Codec labels live in
:mod:`kvinfo.codecs.labels` (the report uses them without loading bench).

Examples
--------
>>> from kvinfo.bench import preset_codecs, codec_label
>>> len(preset_codecs("standard"))
15
>>> codec_label({"id": "uniform", "bits": 4, "axis": "channel", "group_size": 128,
...              "coder": {"id": "rans"}})
'uniform 4b/channel g128 +rans'
"""

from __future__ import annotations

from ..codecs.labels import codec_family, codec_label
from ._aggregate import aggregate_codec_metrics
from ._engine import bench_dump
from ._measure import GAP_TERMS, gap_decomposition, measure_codec, symbol_entropy
from ._presets import PRESETS, preset_codecs
from ._quality import add_quality
from ._reference import SlabReference
from ._spec import CodecSpec
from ._table import format_gap_table, format_table
from ._timing import GpuTimer
from .multi import bench_dumps

__all__ = [
    "PRESETS",
    "preset_codecs",
    "CodecSpec",
    "codec_label",
    "codec_family",
    "symbol_entropy",
    "measure_codec",
    "gap_decomposition",
    "GAP_TERMS",
    "SlabReference",
    "GpuTimer",
    "aggregate_codec_metrics",
    "bench_dump",
    "bench_dumps",
    "add_quality",
    "format_table",
    "format_gap_table",
]
