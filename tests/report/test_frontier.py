"""The frontier figure from eval records with bits_per_token and FLOPs."""

from __future__ import annotations

from kvinfo.evaluate import EvalResult, QualityResult
from kvinfo.report import build_report
from kvinfo.report._data import gather
from kvinfo.report.frontier import frontier_points


def _doc():
    base = QualityResult(codec=None, perplexity=20.0, nll_nats_per_token=3.0)
    rows = [
        QualityResult(codec={"id": "tokens"}, perplexity=20.0, nll_nats_per_token=3.0,
                      kl_nats_per_token=0.0, bits_per_element=4.3 / 11520,
                      bits_per_token=4.3, extra={"remat_flops_per_token": 5.7e8}),
        QualityResult(codec={"id": "xquant", "bits": 4}, perplexity=20.5,
                      nll_nats_per_token=3.02, kl_nats_per_token=0.01,
                      bits_per_element=6.75, bits_per_token=77760.0,
                      extra={"remat_flops_per_token": 1.3e7}),
        QualityResult(codec={"id": "uniform", "bits": 4}, perplexity=20.3,
                      nll_nats_per_token=3.01, kl_nats_per_token=0.005,
                      bits_per_element=4.5, bits_per_token=51840.0),
    ]
    res = EvalResult(baseline=base, results=rows, num_tokens=64, prefix=32, max_tokens=64,
                     num_scored_tokens=32, model="m")
    return res.to_results()


def test_frontier_points_and_figure(tmp_path):
    doc = _doc()
    pts = frontier_points(gather([("x", doc)]))
    assert [p["flops_per_token"] for p in pts] == [5.7e8, 1.3e7, 0.0]
    assert pts[0]["kl"] == 0.0 and pts[0]["bits_per_token"] == 4.3
    out = build_report([doc], tmp_path / "r", formats=("png",))
    fig = next(f for f in out["figures"] if f["name"] == "frontier")
    assert "missing" not in fig and (tmp_path / "r" / "frontier.png").stat().st_size > 1000
