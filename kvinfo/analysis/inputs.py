"""Limits of caching the layer inputs X instead of K and V (``kvinfo analyze --inputs``).

For a dump captured with ``--inputs`` (and ideally ``--pre-rope``), per layer ``l`` with
``Y_l = [K_l; V_l]`` per token (all kv heads; pre-RoPE keys when the dump has them), X_l the
layer input and ``r_l`` the residual stream, the Gaussian bounds at a signal-to-noise ratio
``s`` (distortion ``D = var / 10**(s/10)`` per element, each source against its own
variance):

* ``rd_kv_bits_per_token``: R_G(D) of ``Y_l``; an **upper bound** on the R(D) of K and V.
  Since ``[K_pre; V] = W X`` is linear in X, coding X and measuring the error on K and V
  can never need fewer bits than this (any code of X is a code of W X);
* ``rd_x_bits_per_token``: R_G(D) of X_l at the same SNR on X, the price of caching X
  to that fidelity (more than the above whenever X is wider than what W keeps of it);
* ``rd_dx_bits_per_token``: R_G of the cross-layer difference ``X_l - X_{l-1}`` at X's
  distortion; ``rd_dresidual_bits_per_token``: the same for ``r_l - r_{l-1}`` at r's
  distortion (what ``xquant-cl`` codes);
* the **conditional bounds** across layers, what rematerialization can win: R_G(D) of
  ``Y_l`` given ``Y_{l-1}`` and given ``X_{l-1}``, and of X_l given X_{l-1}, from the
  linear-prediction residual covariance ``S_aa - S_ab S_bb^-1 S_ba`` (a ridge of
  ``1e-6 tr(S_bb)/d`` keeps it defined). For jointly Gaussian sources this is the
  conditional R(D) with the previous layer known exactly; with the previous layer's
  *reconstruction* (closed loop) the side information is noisier, so these are optimistic
  estimates, not bounds, of what a cross-layer coder can reach;
* ``kv_active_components``: how many eigen-directions of Y the water-filling keeps, the
  rank a latent of that rate needs; ``kv_rank_snr_db_<r>``: the SNR on Y of its best rank
  ``r`` latent (its top-``r`` principal components), truncation alone;
* ``h_gaussian_*_bits_per_element``: the Gaussian differential entropy (an **upper bound**
  on the differential entropy) of X, of its difference and of Y.

Rates per token are per element times the width. All covariances are estimated from the
dump's tokens (an estimate: with ``T`` tokens and width ``d`` the prediction residuals are
biased low by about ``d / T``).
"""

from __future__ import annotations

import numpy as np

from ..errors import AnalysisInputError
from ._entropy import entropy_gaussian
from ._rd import rd_gaussian_eigenvalues, water_level

__all__ = ["analyze_inputs", "conditional_covariance", "format_inputs_table", "INPUT_SNRS_DB"]

#: SNRs (dB) at which the bounds are given
INPUT_SNRS_DB = (10.0, 20.0, 30.0)
_RANKS = (32, 64, 128, 192, 256, 384)


def _cov(a: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=0)
    return a.T @ a / max(a.shape[0] - 1, 1)


def conditional_covariance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Covariance of the linear-prediction residual of ``a`` from ``b`` (rows are samples).

    ``S_aa - S_ab (S_bb + eps I)^-1 S_ba`` with ``eps = 1e-6 tr(S_bb) / d_b``.
    """
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    n = max(a.shape[0] - 1, 1)
    saa, sab, sbb = a.T @ a / n, a.T @ b / n, b.T @ b / n
    eps = 1e-6 * np.trace(sbb) / sbb.shape[0] + 1e-300
    sol = np.linalg.solve(sbb + eps * np.eye(sbb.shape[0]), sab.T)
    c = saa - sab @ sol
    return (c + c.T) / 2


def _eig(c: np.ndarray) -> np.ndarray:
    return np.clip(np.linalg.eigvalsh(c), 0.0, None)


def _rd_per_token(c: np.ndarray, mse: float) -> float:
    return float(rd_gaussian_eigenvalues(_eig(c), mse)) * c.shape[0]


def _h(c: np.ndarray) -> float | None:
    try:
        return float(entropy_gaussian(c + 1e-12 * np.trace(c) / c.shape[0] * np.eye(len(c))))
    except AnalysisInputError:
        return None


def _kv(dump, layer: int) -> np.ndarray:
    kind = "keys_pre_rope" if "keys_pre_rope" in dump.kinds else "keys"
    k = dump.tensor(kind, layer).astype(np.float64)
    v = dump.tensor("values", layer).astype(np.float64)
    t = k.shape[1]
    return np.concatenate([k.transpose(1, 0, 2).reshape(t, -1),
                           v.transpose(1, 0, 2).reshape(t, -1)], axis=1)


def analyze_inputs(dump, layers=None, snrs_db=INPUT_SNRS_DB) -> list[dict]:
    """Per-layer records (``scope: "layer"``, ``kind: "inputs"``) of the bounds above.

    Parameters
    ----------
    dump : kvinfo.dumps.Dump
        A dump with ``inputs`` and ``residual`` (``kvinfo capture --inputs``).
    layers : sequence of int, optional
        Default: every layer.
    snrs_db : sequence of float
        SNRs at which the rates are given.

    Raises
    ------
    AnalysisInputError
        If the dump has no layer inputs or too few tokens.
    """
    from ..results import make_record

    if not getattr(dump, "has_inputs", False):
        raise AnalysisInputError(
            f"{dump.path}: analyze --inputs needs a dump captured with --inputs"
        )
    layers = list(range(dump.num_layers)) if layers is None else [int(x) for x in layers]
    for i in layers:
        if not 0 <= i < dump.num_layers:
            raise AnalysisInputError(f"layer {i} out of range [0, {dump.num_layers})")
    if dump.num_tokens < 16:
        raise AnalysisInputError(f"{dump.path}: {dump.num_tokens} tokens are too few")
    pre = "keys_pre_rope" in dump.kinds
    records = []
    for i in layers:
        x = dump.inputs(i).astype(np.float64)
        r = dump.residual(i).astype(np.float64)
        y = _kv(dump, i)
        cx, cy = _cov(x), _cov(y)
        vx, vy, vr = np.trace(cx) / len(cx), np.trace(cy) / len(cy), r.var(axis=0).mean()
        m: dict = {
            "x_width": x.shape[1], "kv_width": y.shape[1], "kv_keys_pre_rope": pre,
            "x_variance_per_element": vx, "kv_variance_per_element": vy,
            "h_gaussian_x_bits_per_element": _h(cx),
            "h_gaussian_kv_bits_per_element": _h(cy),
        }
        ey = _eig(cy)[::-1]
        for rank in _RANKS:
            if rank < ey.size:
                dropped = ey[rank:].sum()
                m[f"kv_rank_snr_db_{rank}"] = (10 * np.log10(ey.sum() / dropped)
                                               if dropped > 0 else None)
        prev = None
        if i >= 1:
            xp = dump.inputs(i - 1).astype(np.float64)
            rp = dump.residual(i - 1).astype(np.float64)
            yp = _kv(dump, i - 1)
            cdx, cdr = _cov(x - xp), _cov(r - rp)
            m["h_gaussian_dx_bits_per_element"] = _h(cdx)
            prev = {"y|y": conditional_covariance(y, yp), "y|x": conditional_covariance(y, xp),
                    "x|x": conditional_covariance(x, xp), "dx": cdx, "dr": cdr}
        for s in snrs_db:
            tag = f"{int(s)}db" if float(s).is_integer() else f"{s}db"
            f = 10 ** (-s / 10)
            m[f"rd_kv_bits_per_token_{tag}"] = rkv = _rd_per_token(cy, vy * f)
            m[f"rd_x_bits_per_token_{tag}"] = rx = _rd_per_token(cx, vx * f)
            m[f"x_over_kv_rate_ratio_{tag}"] = rx / rkv if rkv > 0 else None
            lam = _eig(cy)
            m[f"kv_active_components_{tag}"] = int((lam > float(water_level(lam, vy * f))).sum())
            if prev is not None:
                m[f"rd_dx_bits_per_token_{tag}"] = _rd_per_token(prev["dx"], vx * f)
                m[f"rd_dresidual_bits_per_token_{tag}"] = _rd_per_token(prev["dr"], vr * f)
                m[f"rd_x_given_prev_x_bits_per_token_{tag}"] = _rd_per_token(prev["x|x"], vx * f)
                m[f"rd_kv_given_prev_kv_bits_per_token_{tag}"] = _rd_per_token(prev["y|y"],
                                                                                vy * f)
                m[f"rd_kv_given_prev_x_bits_per_token_{tag}"] = _rd_per_token(prev["y|x"],
                                                                               vy * f)
        records.append(make_record("layer", m, layer=i, kind="inputs"))
    return records


def format_inputs_table(records: list[dict], snr_db: float = 20.0) -> str:
    """A plain-text table of :func:`analyze_inputs` records at one SNR, with the verdict
    on caching X against caching K and V (all numbers Gaussian bounds or estimates)."""
    tag = f"{int(snr_db)}db" if float(snr_db).is_integer() else f"{snr_db}db"
    cols = [("R(KV)", "rd_kv_bits_per_token"), ("R(X)", "rd_x_bits_per_token"),
            ("R(dX)", "rd_dx_bits_per_token"), ("R(dres)", "rd_dresidual_bits_per_token"),
            ("R(KV|KV-1)", "rd_kv_given_prev_kv_bits_per_token"),
            ("R(KV|X-1)", "rd_kv_given_prev_x_bits_per_token"),
            ("R(X|X-1)", "rd_x_given_prev_x_bits_per_token")]
    lines = [f"layer inputs at {snr_db:g} dB SNR, Gaussian bounds in bits per token "
             "(R(KV), R(X), R(dX), R(dres): upper bounds on R(D); the conditional ones: "
             "estimates with the previous layer known exactly)",
             f"{'layer':>5} " + " ".join(f"{c:>11}" for c, _ in cols) + f" {'X/KV':>6}"]
    more = 0
    for r in records:
        m = r["metrics"]
        vals = []
        for _, k in cols:
            v = m.get(f"{k}_{tag}")
            vals.append(f"{v:11.1f}" if v is not None else f"{'-':>11}")
        ratio = m.get(f"x_over_kv_rate_ratio_{tag}")
        more += ratio is not None and ratio > 1
        lines.append(f"{r['layer']:>5} " + " ".join(vals) + (f" {ratio:6.2f}" if ratio else ""))
    if records:
        m = records[0]["metrics"]
        lines.append(
            f"caching X costs more than caching K and V in {more} of {len(records)} layers at "
            f"{snr_db:g} dB (X is {m['x_width']} wide, K plus V {m['kv_width']})"
        )
    return "\n".join(lines)
