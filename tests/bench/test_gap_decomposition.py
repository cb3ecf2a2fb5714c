"""The gap decomposition of bench records (docs/analysis.md section 7) and the keys' bound in
the attention metric: sums, signs on constructed cases, the residual on a Gaussian source."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kvinfo.analysis import (
    query_second_moment,
    rd_gaussian_attention,
    rd_gaussian_eigenvalues,
    slab_analysis,
)
from kvinfo.bench import GAP_TERMS, SlabReference, bench_dump, measure_codec
from kvinfo.codecs import get_codec

CODECS = [
    {"id": "uniform", "bits": 3, "axis": "token", "coder": {"id": "huffman"}},
    {"id": "ecsq", "step": 0.3, "step_mode": "relative", "coder": {"id": "arith"}},
    {"id": "turbo", "bits": 3},
    {"id": "klt", "snr_db": 15},
    {"id": "lossless"},
]


@pytest.fixture(scope="module")
def doc(synthetic_dump):
    return bench_dump(synthetic_dump, CODECS, layers=[1], knn_samples=50, max_queries=8,
                      use_gpu=False)


def test_terms_add_up_to_the_gap_on_every_record(doc):
    recs = [r for r in doc["records"] if r["codec"] is not None]
    defined = 0
    for r in recs:
        m = r["metrics"]
        total = m["gap_to_rd_gaussian_bits_per_element"]
        terms = [m[k] for k in GAP_TERMS]
        if total is None:  # the lossless codec: no lossy bound, no terms
            assert all(t is None for t in terms), r
            continue
        defined += 1
        assert abs(sum(terms) - total) <= 1e-9, (r["scope"], r["codec"]["id"])
        assert m["gap_side_information_bits_per_element"] == pytest.approx(
            m["side_bits_per_element"], abs=1e-12)
        for k in ("gap_decorrelation_bits_per_element", "gap_allocation_bits_per_element",
                  "gap_scalar_quantizer_bits_per_element", "gap_modelling_bits_per_element"):
            assert m[k] >= -1e-12, (k, r["codec"]["id"])
    assert defined == 4 * (2 * 2 + 2 + 2 + 1)


def _gaussian_slab(rng, n=2048, d=16, independent=False):
    lam = np.logspace(-3, 0, d)  # eigenvalues over three decades
    z = rng.standard_normal((n, d)) * np.sqrt(lam)
    if independent:
        return z.astype(np.float32)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (z @ q.T).astype(np.float32)


_REFS: dict = {}


def _measure(cfg, x):
    key = (x.shape, x.tobytes()[:4096])
    if key not in _REFS:
        _REFS[key] = SlabReference(slab_analysis(x, knn_samples=50))
    return measure_codec(get_codec(cfg), x, _REFS[key])


def test_residual_is_small_on_a_gaussian_source():
    """The named terms explain klt's gap on a fresh i.i.d. Gaussian source."""
    x = _gaussian_slab(np.random.default_rng(11))
    for snr in (10, 20, 30):
        m = _measure({"id": "klt", "snr_db": snr, "predict": "none"}, x)
        assert abs(m["gap_residual_bits_per_element"]) <= 0.05, (snr, m)
        assert m["gap_decorrelation_bits_per_element"] < 0.01  # klt decorrelates first
        assert m["gap_modelling_bits_per_element"] == 0.0  # per-component tables


def test_each_term_on_a_case_where_it_is_known():
    rng = np.random.default_rng(12)
    corr = _gaussian_slab(rng)
    ind = _gaussian_slab(rng, independent=True) * np.float32(3.0)
    ecsq = {"id": "ecsq", "step": 0.2, "step_mode": "relative"}
    pooled = {**ecsq, "coder": {"id": "rans", "per_channel": False}}
    per = {**ecsq, "coder": {"id": "rans", "per_channel": True}}
    # decorrelation: about 0 on independent channels; R_ind - R_G on correlated ones
    mi = _measure(per, ind)
    assert mi["gap_decorrelation_bits_per_element"] < 0.01
    mc = _measure(per, corr)
    ref = _REFS[(corr.shape, corr.tobytes()[:4096])]
    d_i = rd_gaussian_eigenvalues(ref.sorted_variance, mc["mse_per_element"])
    d_g = rd_gaussian_eigenvalues(ref.eigenvalues, mc["mse_per_element"])
    assert mc["gap_decorrelation_bits_per_element"] == pytest.approx(d_i - d_g, abs=0.06)
    assert mc["gap_decorrelation_bits_per_element"] > 0.5
    # modelling: 0 with per-channel tables, > 0 with one table over channels of 3 decades
    assert mi["gap_modelling_bits_per_element"] == 0.0
    mp = _measure(pooled, ind)
    assert mp["gap_modelling_bits_per_element"] > 0.3
    assert mp["gap_coder_model"] == "pooled" and mi["gap_coder_model"] == "per_channel"
    # coder overhead of a static order-0 coder: small and not below its own model
    for m in (mi, mp, mc):
        assert -2e-3 <= m["gap_coder_overhead_bits_per_element"] < 0.03
    # side information: klt's in-stream basis is side information, it grows with the basis
    k_small = _measure({"id": "klt", "snr_db": 20}, corr[:512])
    k_big = _measure({"id": "klt", "snr_db": 20}, corr)
    assert k_small["gap_side_information_bits_per_element"] > \
        2 * k_big["gap_side_information_bits_per_element"] > 0
    # scalar quantizer: the Gish-Pierce 0.254 at high rate, smaller at low rate
    hi = _measure({"id": "klt", "snr_db": 40, "predict": "none"}, ind)
    lo = _measure({"id": "klt", "snr_db": 3, "predict": "none"}, ind)
    assert hi["gap_scalar_quantizer_bits_per_element"] == pytest.approx(0.254, abs=0.01)
    assert 0 <= lo["gap_scalar_quantizer_bits_per_element"] < 0.2
    # allocation: per-channel scales of uniform spread the error unlike water-filling
    un = _measure({"id": "uniform", "bits": 5, "axis": "channel"}, ind)
    assert un["gap_allocation_bits_per_element"] > 0.5
    assert mi["gap_allocation_bits_per_element"] < 0.02  # one relative step: white error


def test_attention_bound_in_key_records(doc, synthetic_dump):
    from kvinfo.dumps import open_dump

    recs = [r for r in doc["records"] if r["scope"] == "slab" and r["codec"] is not None
            and r["codec"]["id"] == "klt"]
    keys = [r for r in recs if r["kind"] == "keys"]
    assert keys and all("rd_gaussian_attention_bits_per_element" not in r["metrics"]
                        for r in recs if r["kind"] == "values")
    r = keys[0]
    m = r["metrics"]
    with open_dump(synthetic_dump) as d:
        group = d.num_heads // d.num_kv_heads
        lay, h = r["layer"], r["head"]
        x = d.slab("keys", lay, h)
        q = d.queries(lay)[h * group:(h + 1) * group].astype(np.float64)
        codec = get_codec(r["codec"]).for_slab(lay, "keys", h, positions=d.positions())
        y = codec.decode(codec.encode(x)).astype(np.float64)
    e = x.astype(np.float64) - y
    mq = query_second_moment(q)
    dim = x.shape[1]
    pooled = float(np.mean(np.einsum("ti,ij,tj->t", e, mq, e))) / dim
    assert m["attention_logit_mse_pooled"] == pytest.approx(pooled, rel=1e-9)
    cov = np.cov(x.astype(np.float64), rowvar=False)
    want = float(rd_gaussian_attention(cov, mq, pooled, scale=1 / math.sqrt(dim)))
    assert m["rd_gaussian_attention_bits_per_element"] == pytest.approx(want, rel=1e-6)
    assert m["gap_to_rd_gaussian_attention_bits_per_element"] == pytest.approx(
        m["bits_per_element"] - want, rel=1e-6)
    kind = [r for r in doc["records"] if r["scope"] == "kind" and r["kind"] == "keys"
            and r["codec"] is not None and r["codec"]["id"] == "klt"][0]["metrics"]
    assert kind["rd_gaussian_attention_bits_per_element"] > 0


def test_report_draws_the_stacked_bars(doc):
    from kvinfo.report._data import gather
    from kvinfo.report._gap_bars import fig_gap_decomposition

    fig = fig_gap_decomposition(gather([("doc", doc)]))
    assert fig is not None
    ax = fig.axes[0]
    assert len(ax.get_xticklabels()) == 4  # the four lossy codecs; lossless has no terms
    labels = set(fig.axes[-1].get_legend_handles_labels()[1])
    assert {"side information", "scalar quantizer", "residual"} <= labels
    # an old bench document without the terms: nothing to draw
    old = {**doc, "records": [
        {**r, "metrics": {k: v for k, v in r["metrics"].items() if k not in GAP_TERMS}}
        for r in doc["records"]]}
    assert fig_gap_decomposition(gather([("old", old)])) is None
