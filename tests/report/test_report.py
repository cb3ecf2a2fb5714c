"""kvinfo report: figures, report.md and report.html from analyze, bench and eval results."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from kvinfo.cli import main
from kvinfo.report import FIGURES, build_report

CODECS = [
    {"id": "uniform", "bits": 2, "axis": "channel", "coder": {"id": "rans"}},
    {"id": "uniform", "bits": 4, "axis": "channel", "coder": {"id": "rans"}},
    {"id": "uniform", "bits": 4, "axis": "channel", "coder": {"id": "huffman"}},
    {"id": "ecsq", "step": 0.5, "step_mode": "relative", "coder": {"id": "rans"}},
    {"id": "ecsq", "step": 0.2, "step_mode": "relative", "coder": {"id": "rans"}},
]


@pytest.fixture(scope="module")
def result_files(synthetic_dump, tiny_model_dir, tmp_path_factory):
    """analyze.json and bench.json (with eval quality records) for the synthetic dump."""
    from kvinfo.bench import add_quality, bench_dump
    from kvinfo.dumps.capture import load_model
    from kvinfo.evaluate import evaluate
    from kvinfo.results import write_results

    d = tmp_path_factory.mktemp("report_inputs")
    rc = main(["analyze", str(synthetic_dump), "-o", str(d / "analyze.json"),
               "--knn-samples", "200", "--no-progress"])
    assert rc == 0
    doc = bench_dump(synthetic_dump, CODECS, knn_samples=200, max_queries=32, use_gpu=False)
    model, tok, _ = load_model(str(tiny_model_dir), dtype="float32")
    q = evaluate(model, tok, CODECS, prefix=40, max_tokens=80)
    add_quality(doc, q, CODECS)
    write_results(doc, d / "bench.json")
    return d / "analyze.json", d / "bench.json"


def _check_png(path):
    import matplotlib.image as mpimg

    assert path.stat().st_size > 5000, path
    img = mpimg.imread(path)[..., :3]
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    assert float(img.std()) > 0.05, f"{path.name} looks blank"
    non_white = np.mean(np.any(img < 0.9, axis=-1))
    assert non_white > 0.03, f"{path.name}: only {non_white:.1%} of pixels are drawn"


@pytest.fixture(scope="module")
def report_dir(result_files, tmp_path_factory):
    """The report command run once on analyze.json and bench.json (with quality)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("report") / "rep"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["report", *map(str, result_files), "-o", str(out)])
    assert rc == 0
    return out, buf.getvalue()


def test_report_command_writes_every_figure(report_dir):
    out, stdout = report_dir
    assert "not drawn" not in stdout
    assert "report.html" in stdout
    for name in FIGURES:
        _check_png(out / f"{name}.png")
        svg = (out / f"{name}.svg").read_text()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg and len(svg) > 5000


def test_markdown_has_the_tables_figures_and_the_bounds_text(report_dir):
    out, _ = report_dir
    md = (out / "report.md").read_text()
    for name in FIGURES:
        assert f"({name}.png)" in md
    assert "Which numbers are bounds and which are estimates" in md
    assert "upper bound" in md and "estimate" in md
    # the summary table has one row per codec, with the quality columns
    assert md.count("| uniform 4b/channel +rans |") == 1
    assert "ppl +%" in md
    assert "## Reproduce" in md and "kvinfo analyze" in md
    # the synthetic dump is float32 with ~4096 values per slab, nearly all distinct patterns:
    # its plug-in H0 is marked as undersampled
    assert "(undersampled)" in md


def test_html_is_self_contained(report_dir):
    out, _ = report_dir
    page = (out / "report.html").read_text()
    # every figure, plus the frontier (an extra figure: its eval records carry bits_per_token;
    # no needle results, so no needle heatmap)
    assert page.count("src='data:image/png;base64,") == len(FIGURES) + 1
    # nothing is fetched from elsewhere: every src and href is a data URI
    for link in re.findall(r"(?:src|href)=['\"]([^'\"]+)", page):
        assert link.startswith("data:"), link
    assert "<table>" in page and "Gaussian R(D)" in page
    assert "Shannon lower bound" in page


def test_report_from_bench_alone_says_what_is_missing(tmp_path, synthetic_dump):
    from kvinfo.bench import bench_dump

    doc = bench_dump(synthetic_dump, CODECS[:2], knn_samples=100, max_queries=16,
                     use_gpu=False, layers=[0])
    out = build_report([doc], tmp_path / "rep", formats=("png",))
    missing = {f["name"] for f in out["figures"] if "missing" in f}
    assert missing == {"quality"}
    for f in out["figures"]:
        if "png" in f:
            _check_png(tmp_path / "rep" / f["png"])
    assert not list((tmp_path / "rep").glob("*.svg"))
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Not drawn: no eval results" in md


def test_rate_distortion_band_uses_the_analysis(result_files):
    from kvinfo.report import _figures as F
    from kvinfo.report._data import gather
    from kvinfo.results import load_results

    docs = [(str(p), load_results(p)) for p in result_files]
    data = gather(docs)
    band = F._band_from_analyze(data, "keys")
    assert band is not None
    snr, slb, rg, _, _ = band
    ok = np.isfinite(slb)
    assert ok.any() and np.all(slb[ok] <= rg[ok] + 1e-12)
    fig = F.fig_rate_distortion(data, F.family_colors(data))
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("SNR (dB)")
    assert "bits per element" in ax.get_ylabel()
    assert ax.collections, "the band between the SLB estimate and the Gaussian R(D) is shaded"
    labels = fig.legends[0].get_texts()
    assert any("Gaussian R(D)" in t.get_text() for t in labels)
    assert any("uniform/channel +rans" in t.get_text() for t in labels)


def test_duplicate_codecs_keep_the_first_measurement(result_files):
    from kvinfo.report._data import gather
    from kvinfo.results import load_results

    doc = load_results(result_files[1])
    data = gather([("a", doc), ("b", json.loads(json.dumps(doc)))])
    overall = data.records("bench", "overall")
    assert len(overall) == len(CODECS)
    assert len(data.quality) == len(CODECS)


@pytest.mark.parametrize(
    ("content", "message"),
    [("{", "not valid JSON"), ('{"schema": "other"}', "expected schema 'kvinfo.results'")],
)
def test_bad_results_file_is_a_clear_error(tmp_path, content, message, capsys):
    p = tmp_path / "bad.json"
    p.write_text(content)
    rc = main(["report", str(p), "-o", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("kvinfo report: error:") and message in err


def test_bench_then_eval_of_the_same_codec_is_one_row(synthetic_dump, tiny_model_dir, tmp_path,
                                                      capsys):
    """bench spells the codec out in full, eval as the user typed it: one joined row."""
    from kvinfo.bench import bench_dump
    from kvinfo.report._data import gather
    from kvinfo.report._page import summary_rows
    from kvinfo.results import load_results, normalize_codec, write_results

    full = normalize_codec({"id": "uniform", "bits": 4})
    doc = bench_dump(synthetic_dump, [full], layers=[0], knn_samples=100, max_queries=8,
                     use_gpu=False)
    bench_json = write_results(doc, tmp_path / "bench.json")
    eval_json = tmp_path / "eval.json"
    rc = main(["eval", "--model", str(tiny_model_dir), "--codec", '{"bits": 4, "id": "uniform"}',
               "--prefix", "40", "--max-tokens", "80", "-o", str(eval_json)])
    assert rc == 0
    out = tmp_path / "rep"
    capsys.readouterr()
    rc = main(["report", str(bench_json), str(eval_json), "-o", str(out), "--no-svg"])
    assert rc == 0
    assert "not drawn: Bits against model quality" not in capsys.readouterr().out
    data = gather([(str(p), load_results(p)) for p in (bench_json, eval_json)])
    assert list(data.codecs.values()) == [full]
    head, rows = summary_rows(data)
    assert len(rows) == 1
    row = dict(zip(head, rows[0], strict=True))
    assert row["bits/elt"] != "–" and row["KL nats/token"] != "–" and row["ppl +%"] != "–"
    md = (out / "report.md").read_text()
    assert md.count(f"| {data.label(full)} |") == 1


def test_report_reads_version_1_results(result_files, tmp_path, capsys):
    """A version-1 file (``kl``, codecs as the user wrote them) still reports its KL."""
    from kvinfo.report._data import gather
    from kvinfo.report._page import summary_rows
    from kvinfo.results import load_results, normalize_codec

    doc = json.loads(result_files[1].read_text())
    doc["schema_version"] = 1
    for r in doc["records"]:
        if "kl_nats_per_token" in r["metrics"]:
            r["metrics"]["kl"] = r["metrics"].pop("kl_nats_per_token")
        if r["scope"] == "run" and r["codec"] is not None:  # v1 eval kept the raw spec
            r["codec"] = next(c for c in CODECS if normalize_codec(c) == r["codec"])
            assert r["codec"] != normalize_codec(r["codec"])
    v1 = tmp_path / "bench_v1.json"
    v1.write_text(json.dumps(doc))
    new = gather([("new", load_results(result_files[1]))])
    old = gather([("old", load_results(v1))])
    assert summary_rows(old) == summary_rows(new)
    kl_col = summary_rows(old)[0].index("KL nats/token")
    assert all(row[kl_col] != "–" for row in summary_rows(old)[1])
    rc = main(["report", str(v1), "-o", str(tmp_path / "rep"), "--no-svg"])
    assert rc == 0
    capsys.readouterr()
