"""The fixed-width table that ``kvinfo bench`` prints."""

from __future__ import annotations

import json

from ..codecs.labels import codec_label
from ..tables import SMALL_DATA_MARK, format_number, truncate

__all__ = ["format_table", "format_gap_table"]

#: (metric, column header) of the gap-decomposition table
_GAP_COLUMNS = (
    ("gap_to_rd_gaussian_bits_per_element", "gapR_G"),
    ("gap_side_information_bits_per_element", "side"),
    ("gap_coder_overhead_bits_per_element", "coder"),
    ("gap_modelling_bits_per_element", "model"),
    ("gap_decorrelation_bits_per_element", "decor"),
    ("gap_allocation_bits_per_element", "alloc"),
    ("gap_scalar_quantizer_bits_per_element", "scalQ"),
    ("gap_residual_bits_per_element", "resid"),
)


def format_gap_table(doc: dict, scopes=("kind", "overall")) -> str | None:
    """The gap to the Gaussian R(D) split into its named terms (docs/analysis.md section 7),
    one row per aggregate codec record; None when no record has the terms."""
    rows = [r for r in doc["records"] if r["scope"] in scopes and r["codec"] is not None
            and r["metrics"].get("gap_residual_bits_per_element") is not None]
    if not rows:
        return None
    width = min(max([len(codec_label(r["codec"])) for r in rows] + [10]), 44)
    head = f"{'codec':<{width}} {'kind':<6} " + " ".join(f"{h:>6}" for _, h in _GAP_COLUMNS)
    lines = [
        "gap to R_G (bits - Gaussian R(D), bits per element) = side information + coder "
        "overhead + modelling (pooled tables) + decorrelation + distortion allocation + scalar "
        "quantizer + residual (docs/analysis.md section 7)",
        head,
        "-" * len(head),
    ]
    for r in rows:
        m = r["metrics"]
        cells = " ".join(_cell(m, k, 6, 3) for k, _ in _GAP_COLUMNS)
        lines.append(f"{truncate(codec_label(r['codec']), width):<{width}} "
                     f"{(r['kind'] or 'all'):<6} {cells}")
    return "\n".join(lines)


def _cell(m: dict, key: str, width: int, prec: int) -> str:
    mark = SMALL_DATA_MARK if key in (m.get("null_reasons") or {}) else None
    return format_number(m.get(key), width, prec, mark=mark)


def format_table(doc: dict, scopes=("kind", "overall")) -> str:
    """A fixed-width table of a bench document's aggregate records (and quality columns)."""
    quality = {
        json.dumps(r["codec"], sort_keys=True): r["metrics"]
        for r in doc["records"]
        if r["scope"] == "run" and r["codec"] is not None
    }
    rows = [r for r in doc["records"] if r["scope"] in scopes and r["codec"] is not None]
    width = max([len(codec_label(r["codec"])) for r in rows] + [10])
    width = min(width, 44)
    head = (
        f"{'codec':<{width}} {'kind':<6} {'bits':>6} {'side':>5} {'SNR dB':>6} {'R_G':>6} "
        f"{'SLB~':>6} {'H0own':>6} {'gapSLB':>6} {'gap%':>6} {'enc':>7} {'dec':>7}"
    )
    has_att = any("attention_kl_nats" in r["metrics"] for r in rows)
    if has_att:
        head += f" {'attKL':>7} {'top1':>5}"
    if quality:
        head += f" {'ppl+%':>7}"
    lines = [
        "bits per element; R_G = Gaussian R(D) (upper bound on R(D)), SLB~ = Shannon lower bound "
        "estimate, H0own = order-0 entropy of the codec's symbols (+ literal bits), all at the "
        "achieved MSE; gap = bits - SLB~; enc/dec in MB/s of KV on the CPU",
        head,
        "-" * len(head),
    ]
    for r in rows:
        m = r["metrics"]
        label = codec_label(r["codec"])
        label = truncate(label, width)
        row = (
            f"{label:<{width}} {(r['kind'] or 'all'):<6} {_cell(m, 'bits_per_element', 6, 3)} "
            f"{_cell(m, 'side_bits_per_element', 5, 2)} {_cell(m, 'snr_db', 6, 1)} "
            f"{_cell(m, 'rd_gaussian_bits_per_element', 6, 3)} "
            f"{_cell(m, 'slb_estimate_bits_per_element', 6, 3)} "
            f"{_cell(m, 'own_symbols_entropy_bits_per_element', 6, 3)} "
            f"{_cell(m, 'gap_to_slb_estimate_bits_per_element', 6, 3)} "
            f"{_cell(m, 'gap_to_slb_estimate_pct', 6, 0)} "
            f"{_cell(m, 'encode_mbytes_per_s', 7, 1)} {_cell(m, 'decode_mbytes_per_s', 7, 1)}"
        )
        if has_att:
            row += (
                f" {_cell(m, 'attention_kl_nats', 7, 4)} "
                f"{_cell(m, 'attention_top1_agreement', 5, 3)}"
            )
        if quality:
            qm = quality.get(json.dumps(r["codec"], sort_keys=True), {})
            row += f" {format_number(qm.get('perplexity_increase_pct'), 7, 2)}"
        lines.append(row)
    if any(SMALL_DATA_MARK in line for line in lines[3:]):
        lines.append(
            f"{SMALL_DATA_MARK}: bound null, the slabs have no more vectors than dimensions (the "
            "reason is in the JSON's null_reasons); aggregates use the slabs where it is defined"
        )
    gap = format_gap_table(doc, scopes)
    if gap:
        lines += ["", gap, ""]
    gpu = doc["settings"].get("gpu", {})
    if gpu.get("available"):
        lines.append(f"GPU decode timed on {gpu.get('device')} (see gpu_* metrics in the JSON)")
    else:
        lines.append(f"throughput: CPU only ({gpu.get('reason') or 'no GPU'})")
    return "\n".join(lines)
