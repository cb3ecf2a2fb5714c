"""``report.md`` and the self-contained ``report.html`` (images embedded as data URIs)."""

from __future__ import annotations

import base64
import html
import math
import shlex
from pathlib import Path

__all__ = ["summary_rows", "analysis_rows", "write_markdown", "write_html", "BOUNDS_TEXT"]

BOUNDS_TEXT = [
    ("Gaussian R(D)",
     "a **bound**: computed exactly from each slab's covariance by reverse water-filling. It is "
     "the rate-distortion function of a Gaussian source with that covariance and an **upper "
     "bound** on the true R(D) of the data, so a good codec may go below it on non-Gaussian "
     "data."),
    ("Lower curve and best achievable rate",
     "the band: the lower curve is a **bound** on R(D) when the data fit at least one of its "
     "models (independent PCA coordinates, independent channels, a Gaussian mixture; "
     "docs/analysis.md section 3), with 4-standard-error margins; the best achievable rate "
     "is an upper **bound** (the Gaussian R(D), or a clustered Gaussian code fitted on one "
     "half of the vectors and measured on the other)."),
    ("Shannon lower bound (SLB)",
     "an **estimate** of a lower bound: the SLB `h - ½·log2(2πe·D)` is a lower bound on R(D), "
     "but the differential entropy `h` is a Kozachenko-Leonenko kNN estimate on a subsample "
     "(bias-corrected and clipped at the Gaussian entropy), so the curve is an estimate; "
     "on heavy-tailed or clustered data it can exceed R(D)."),
    ("Order-0 entropy of the codec's own symbols",
     "**exact** for the symbols the quantizer produced (plug-in entropy, per channel when the "
     "coder uses per-channel tables). It **bounds** any static or adaptive order-0 coder of "
     "those symbols, so their gap to it is never negative; context-modelling coders "
     "(`arith` with context) can go below it."),
    ("Lossless entropies of the stored values",
     "**exact** plug-in entropies of the stored bit patterns (order 0): what an order-0 "
     "lossless coder needs; not a bound on coders with context."),
    ("Transform and prediction gains",
     "differences of Gaussian R(D) values (independent channels minus decorrelated; "
     "plain minus lag-1 innovation): **model-based** numbers, exact for Gaussian data."),
    ("Per-vector code lengths",
     "**estimates**: the information density of each vector under the fitted Gaussian model at "
     "the stated SNR."),
    ("Bits per element, MSE, SNR, attention errors, throughput, perplexity",
     "**measured** on the data: the codec's real stream (side information included), its real "
     "reconstruction, and wall-clock timings on this machine."),
]


def _f(v, prec=3):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{prec}f}"


def summary_rows(data) -> tuple[list[str], list[list[str]]]:
    """The codec summary table: overall means per codec (and quality when measured)."""
    import json

    quality = {json.dumps(r["codec"], sort_keys=True): r["metrics"] for r in data.quality}
    recs = data.records("bench", "overall")
    has_gpu = any(r["metrics"].get("gpu_decode_mbytes_per_s") for r in recs)
    has_att = any("attention_kl_nats" in r["metrics"] for r in recs)
    head = ["codec", "bits/elt", "side bits/elt", "SNR dB", "Gaussian R(D)", "SLB~ (est.)",
            "H0 own symbols", "gap to SLB~", "gap to SLB~ %", "gap to R_G", "enc MB/s",
            "dec MB/s"]
    if has_gpu:
        head.append("GPU dec MB/s")
    if has_att:
        head += ["attn KL (keys, nats)", "attn top-1 (keys)", "attn out rel. err (values)"]
    if quality:
        head += ["ppl +%", "KL nats/token", "top-1 agree"]
    rows = []
    seen = set()
    for r in recs:
        m = r["metrics"]
        key = json.dumps(r["codec"], sort_keys=True)
        seen.add(key)
        row = [
            data.label(r["codec"]), _f(m.get("bits_per_element")),
            _f(m.get("side_bits_per_element")), _f(m.get("snr_db"), 1),
            _f(m.get("rd_gaussian_bits_per_element")), _f(m.get("slb_estimate_bits_per_element")),
            _f(m.get("own_symbols_entropy_bits_per_element")),
            _f(m.get("gap_to_slb_estimate_bits_per_element")),
            _f(m.get("gap_to_slb_estimate_pct"), 0),
            _f(m.get("gap_to_rd_gaussian_bits_per_element")),
            _f(m.get("encode_mbytes_per_s"), 1), _f(m.get("decode_mbytes_per_s"), 1),
        ]
        if has_gpu:
            row.append(_f(m.get("gpu_decode_mbytes_per_s"), 0))
        if has_att:
            row += [_f(m.get("attention_kl_nats"), 4), _f(m.get("attention_top1_agreement")),
                    _f(m.get("attention_output_relative_error"))]
        if quality:
            q = quality.get(key, {})
            row += [_f(q.get("perplexity_increase_pct"), 2), _f(q.get("kl_nats_per_token"), 4),
                    _f(q.get("top1_agreement"))]
        rows.append(row)
    # codecs evaluated for quality but not benched on the dump
    for r in data.quality:
        key = json.dumps(r["codec"], sort_keys=True)
        if key in seen:
            continue
        q = r["metrics"]
        row = [data.label(r["codec"]), _f(q.get("bits_per_element"))] + ["–"] * (len(head) - 2)
        if quality:
            row[-3:] = [_f(q.get("perplexity_increase_pct"), 2), _f(q.get("kl_nats_per_token"), 4),
                        _f(q.get("top1_agreement"))]
        rows.append(row)
    return head, rows


#: above this many distinct stored patterns per value, the plug-in H0 is marked undersampled
UNDERSAMPLED_FRACTION = 0.1
ANALYSIS_NOTE = (
    "Bits per element, mean over slabs. **Undersampled**: more than one distinct stored pattern "
    "per ten values (typical of float32), so the plug-in H0 is capped near log2(values) and "
    "biased low; per channel that happens with only a few hundred tokens (each channel has one "
    "value per token), and the per-channel gain then measures the sample size. **Clipped**: "
    "the kNN entropy estimate exceeded the Gaussian entropy, which the true entropy cannot, "
    "so it was replaced by it and the SLB estimate equals the Gaussian R(D) there. The lower "
    "curve and the best achievable rate are the band of the figure; see docs/analysis.md."
)


def analysis_rows(data) -> tuple[list[str], list[list[str]]]:
    """Per-kind limits from ``kvinfo analyze`` (at the grid point nearest 20 dB)."""
    recs = [r for r in data.analyze if r["scope"] in ("kind", "overall")]
    if not recs:
        return [], []
    snr = data.analyze_settings.get("snr_db") or []
    gi = min(range(len(snr)), key=lambda i: abs(snr[i] - 20.0)) if snr else None
    at = f" @{snr[gi]:g} dB" if gi is not None else ""
    head = ["kind", "H0 stored (lossless)", "H0 per channel", "h Gaussian", "h kNN (est.)",
            f"lower curve{at}", f"best achievable{at}", f"Gaussian R(D){at}", f"SLB~{at}",
            f"transform gain{at}", f"prediction gain{at}", "first token / median"]

    def g(m, k):
        v = m.get(k)
        if gi is None or not isinstance(v, list) or gi >= len(v):
            return None
        return v[gi]

    rows = []
    for r in recs:
        m = r["metrics"]
        h0 = _f(m.get("h0_pooled_bits_per_element"))
        if (m.get("h0_distinct_pattern_fraction") or 0.0) > UNDERSAMPLED_FRACTION:
            h0 += " (undersampled)"
        h0ch = _f(m.get("h0_per_channel_bits_per_element"))
        if m.get("h0_per_channel_undersampled"):  # a fraction of slabs in aggregates
            h0ch += " (undersampled)"
        slb_cell = _f(g(m, "slb_estimate_bits_per_element"))
        clip = m.get("h_knn_clipped_to_gaussian")
        if clip:
            slb_cell += f" (clipped to R_G in {100 * float(clip):.0f}% of slabs)"
        rows.append([
            r["kind"] or "all", h0, h0ch, _f(m.get("h_gaussian_bits_per_element")),
            _f(m.get("h_knn_estimate_bits_per_element")),
            _f(g(m, "rd_lower_bound_bits_per_element")),
            _f(g(m, "rd_upper_bound_bits_per_element")),
            _f(g(m, "rd_gaussian_bits_per_element")), slb_cell,
            _f(g(m, "transform_coding_gain_bits_per_element")),
            _f(g(m, "temporal_prediction_gain_bits_per_element")),
            _f(m.get("pervector_first_token_to_median_ratio"), 2),
        ])
    return head, rows


def _md_table(head, rows) -> str:
    if not rows:
        return ""
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out)


def _intro(data) -> list[str]:
    src = data.dump_source or {}
    lines = []
    if src:
        lines.append(
            f"Dump `{src.get('dump', src.get('path', '?'))}`: model {src.get('model', '?')}, "
            f"{src.get('dtype', '?')}, {src.get('num_layers', '?')} layers × "
            f"{src.get('num_kv_heads', '?')} KV heads × head_dim {src.get('head_dim', '?')}, "
            f"{src.get('num_tokens', '?')} tokens in {src.get('num_sequences', '?')} sequences."
        )
    bs = data.bench_settings
    if bs:
        lines.append(
            f"Bench: layers {bs.get('layers')}, kinds {bs.get('kinds')}; attention errors "
            f"{'on ' + str(bs.get('max_queries')) + ' query positions per slab' if bs.get('attention') else 'not measured'}; "  # noqa: E501
            f"SNR is relative to each slab's variance per element."
        )
        gpu = bs.get("gpu") or {}
        lines.append(
            f"Throughput measured on the GPU ({gpu.get('device')}) and the CPU."
            if gpu.get("available")
            else f"Throughput is CPU only: {gpu.get('reason') or 'no GPU'}."
        )
    if data.analyze_settings:
        a = data.analyze_settings
        lines.append(
            f"Analyze: layers {a.get('layers')}, kinds {a.get('kinds')}, kNN {a.get('knn_samples')}"
            f" samples (k = {a.get('knn_k')}, seed {a.get('seed')})."
        )
    if data.quality:
        b = data.baseline or {}
        lines.append(
            f"Quality: {len(data.quality)} codecs through kvinfo eval; baseline perplexity "
            f"{_f(b.get('perplexity'))}."
        )
    lines.append("Inputs: " + ", ".join(f"`{s}`" for s in data.sources) + ".")
    return lines


def _commands(docs) -> list[str]:
    out = []
    for _, doc in docs:
        cmd = doc.get("command") or []
        if cmd:
            out.append(" ".join(shlex.quote(str(c)) for c in cmd))
    return out


def write_markdown(path: Path, data, docs, figures: list[dict]) -> Path:
    lines = ["# kvinfo report", ""]
    lines += [" ".join(_intro(data)), ""]
    head, rows = summary_rows(data)
    if rows:
        lines += ["## Codecs against the bounds", "",
                  "Overall means over the benched slabs; rates in bits per element; bounds at "
                  "each codec's own achieved MSE; `~` and *(est.)* mark estimates.", "",
                  _md_table(head, rows), ""]
    ah, ar = analysis_rows(data)
    if ar:
        lines += ["## Information limits of the data (kvinfo analyze)", "",
                  ANALYSIS_NOTE, "", _md_table(ah, ar), ""]
    lines += ["## Which numbers are bounds and which are estimates", ""]
    lines += [f"- **{name}**: {text}" for name, text in BOUNDS_TEXT]
    lines.append("")
    lines += ["## Figures", ""]
    for f in figures:
        if f.get("png"):
            lines += [f"### {f['title']}", "", f["caption"], "",
                      f"![{f['title']}]({f['png']})", f"(SVG: [{f['svg']}]({f['svg']}))", ""]
        else:
            lines += [f"### {f['title']}", "", f"*Not drawn: {f['missing']}*", ""]
    cmds = _commands(docs)
    if cmds:
        lines += ["## Reproduce", "", "```sh", *cmds, "```", ""]
    path.write_text("\n".join(lines))
    return path


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1250px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;font-size:12.5px;margin:1em 0;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fafafa}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
code,pre{background:#f5f5f5;padding:1px 4px;border-radius:3px}pre{padding:8px;overflow-x:auto}
.note{color:#555;font-size:.92em}
"""


def _html_table(head, rows) -> str:
    if not rows:
        return ""
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _md_inline(text: str) -> str:
    """The tiny subset of markdown used in the bound texts: **bold** and `code`."""
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def write_html(path: Path, data, docs, figures: list[dict], out_dir: Path) -> Path:
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>kvinfo report</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>kvinfo report</h1>", f"<p>{_md_inline(' '.join(_intro(data)))}</p>",
    ]
    head, rows = summary_rows(data)
    if rows:
        parts += ["<h2>Codecs against the bounds</h2>",
                  "<p class='note'>Overall means over the benched slabs; rates in bits per "
                  "element; bounds at each codec's own achieved MSE; ~ and (est.) mark "
                  "estimates.</p>", _html_table(head, rows)]
    ah, ar = analysis_rows(data)
    if ar:
        parts += ["<h2>Information limits of the data (kvinfo analyze)</h2>",
                  f"<p class='note'>{_md_inline(ANALYSIS_NOTE)}</p>", _html_table(ah, ar)]
    parts.append("<h2>Which numbers are bounds and which are estimates</h2><ul>")
    parts += [f"<li><b>{html.escape(n)}</b>: {_md_inline(t)}</li>" for n, t in BOUNDS_TEXT]
    parts.append("</ul><h2>Figures</h2>")
    for f in figures:
        parts.append(f"<h3>{html.escape(f['title'])}</h3>")
        if f.get("png"):
            b64 = base64.b64encode((out_dir / f["png"]).read_bytes()).decode("ascii")
            parts += [f"<p>{_md_inline(f['caption'])}</p>",
                      f"<img alt='{html.escape(f['title'])}' src='data:image/png;base64,{b64}'>"]
        else:
            parts.append(f"<p class='note'>Not drawn: {html.escape(f['missing'])}</p>")
    cmds = _commands(docs)
    if cmds:
        parts += ["<h2>Reproduce</h2><pre>", html.escape("\n".join(cmds)), "</pre>"]
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    return path
