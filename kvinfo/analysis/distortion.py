"""Distortion measures for reconstructed KV: elementwise, and what attention sees.

Elementwise: :func:`mse_per_element`, :func:`snr_db`, :func:`cosine_similarity`.

Attention: a key error matters through the logits ``q . k / sqrt(d)`` and the softmax over
them; a value error matters through the attention output ``softmax(...) V``.

* :func:`attention_score_errors` compares the logits and attention distributions computed
  with the original and the reconstructed keys: the mean squared logit error over all
  (query, visible key) pairs, the mean KL divergence ``KL(p || p_hat)`` in nats per query, and
  how often the most-attended key stays the same.
* :func:`attention_output_error` compares the attention outputs with the original and the
  reconstructed values (and, optionally, keys): the error norm relative to the output norm.

Both take the captured queries ``(query_heads, tokens, head_dim)`` and the keys or values
``(kv_heads, tokens, head_dim)``. With grouped-query attention, query head ``h`` reads KV head
``h // (query_heads // kv_heads)`` (the ``repeat_kv`` convention of Hugging Face models).
Attention is causal within each sequence (``sequences``: ``(start, stop)`` token ranges, as
:meth:`kvinfo.dumps.Dump.sequences` returns) unless ``causal=False``; tokens never attend
across sequences. ``max_queries`` evaluates an evenly spaced subset of query positions, to
bound the cost (``O(query_heads * queries * tokens * head_dim)``).

All arithmetic is float64. Examples run as doctests.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from ..errors import AnalysisInputError

__all__ = [
    "mse_per_element",
    "snr_db",
    "cosine_similarity",
    "attention_score_errors",
    "attention_output_error",
]


def _finite_float64(arrays, empty: str, nonfinite: str) -> list[np.ndarray]:
    """``arrays`` as float64, refusing an empty first array and any NaN or Inf (the one
    input check of every distortion measure; the messages name the caller's inputs)."""
    if arrays[0].size == 0:
        raise AnalysisInputError(empty)
    out = [a.astype(np.float64) for a in arrays]
    if not all(np.all(np.isfinite(a)) for a in out):
        raise AnalysisInputError(nonfinite)
    return out


def _pair(x, x_hat) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    x_hat = np.asarray(x_hat)
    if x.shape != x_hat.shape:
        raise AnalysisInputError(
            f"original and reconstruction must have the same shape; found {x.shape} and "
            f"{x_hat.shape}"
        )
    x, x_hat = _finite_float64(
        [x, x_hat], f"expected non-empty arrays; found shape {x.shape}",
        "expected finite values; found NaN or Inf",
    )
    return x, x_hat


def mse_per_element(x, x_hat) -> float:
    """Mean squared error per element, ``mean((x - x_hat)**2)``, in float64.

    Examples
    --------
    >>> from kvinfo.analysis.distortion import mse_per_element
    >>> mse_per_element([1.0, 2.0], [1.0, 4.0])
    2.0
    """
    x, x_hat = _pair(x, x_hat)
    return float(np.mean(np.square(x - x_hat)))


def snr_db(x, x_hat, reference: str = "power") -> float:
    """Signal-to-noise ratio in dB: ``10 log10(S / mse)``.

    ``reference="power"`` takes ``S = mean(x**2)``; ``"variance"`` takes the variance of
    ``x`` about its mean. An exact reconstruction gives ``inf``.

    Examples
    --------
    >>> from kvinfo.analysis.distortion import snr_db
    >>> round(snr_db([1.0, -1.0, 1.0, -1.0], [1.1, -0.9, 0.9, -1.1]), 6)
    20.0
    """
    if reference not in ("power", "variance"):
        raise AnalysisInputError(f"reference must be 'power' or 'variance'; found {reference!r}")
    x, x_hat = _pair(x, x_hat)
    err = float(np.mean(np.square(x - x_hat)))
    sig = float(np.mean(np.square(x))) if reference == "power" else float(np.var(x))
    if err == 0.0:
        return math.inf
    if sig == 0.0:
        return -math.inf
    return 10.0 * math.log10(sig / err)


def cosine_similarity(x, x_hat, axis: int = -1, reduce: str = "mean"):
    """Cosine similarity of the vectors along ``axis``; their mean (or all with ``reduce="none"``).

    A pair of zero vectors counts as 1, a zero vector against a non-zero one as 0.

    Examples
    --------
    >>> from kvinfo.analysis.distortion import cosine_similarity
    >>> cosine_similarity([[1.0, 0.0], [0.0, 2.0]], [[1.0, 1.0], [0.0, 3.0]], reduce="none")
    array([0.70710678, 1.        ])
    """
    if reduce not in ("mean", "none"):
        raise AnalysisInputError(f"reduce must be 'mean' or 'none'; found {reduce!r}")
    x, x_hat = _pair(x, x_hat)
    dot = np.sum(x * x_hat, axis=axis)
    na = np.sqrt(np.sum(x * x, axis=axis))
    nb = np.sqrt(np.sum(x_hat * x_hat, axis=axis))
    both = (na == 0) & (nb == 0)
    denom = np.where(na * nb > 0, na * nb, 1.0)
    cos = np.where(both, 1.0, np.where(na * nb > 0, dot / denom, 0.0))
    return float(np.mean(cos)) if reduce == "mean" else cos


# -- attention -----------------------------------------------------------------------------
def _as_heads(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise AnalysisInputError(
            f"{name} must have shape (heads, tokens, head_dim) or (tokens, head_dim); "
            f"found {a.shape}"
        )
    return _finite_float64([a], f"{name} is empty; found shape {a.shape}",
                           f"{name} contains NaN or Inf")[0]


def _check_kv(q: np.ndarray, kvs: dict[str, np.ndarray]) -> int:
    hq, t, d = q.shape
    ref = None
    for name, a in kvs.items():
        if ref is None:
            ref = (name, a.shape)
        elif a.shape != ref[1]:
            raise AnalysisInputError(
                f"{name} must have the shape of {ref[0]} {ref[1]}; found {a.shape}"
            )
        if a.shape[1:] != (t, d):
            raise AnalysisInputError(
                f"{name} must have (tokens, head_dim) = {(t, d)} like the queries; "
                f"found {a.shape[1:]}"
            )
    hkv = ref[1][0]
    if hq % hkv:
        raise AnalysisInputError(
            f"query heads must be a multiple of KV heads; found {hq} query heads and {hkv} KV heads"
        )
    return hq // hkv


def _sequences(sequences, t: int) -> list[tuple[int, int]]:
    if sequences is None:
        return [(0, t)]
    out = []
    for s in sequences:
        a, b = int(s[0]), int(s[1])
        if not 0 <= a < b <= t:
            raise AnalysisInputError(
                f"sequence ranges must satisfy 0 <= start < stop <= {t}; found ({a}, {b})"
            )
        out.append((a, b))
    return out


def _positions(t: int, max_queries: int | None) -> np.ndarray:
    if max_queries is None or max_queries >= t:
        return np.arange(t)
    if max_queries < 1:
        raise AnalysisInputError(f"max_queries must be >= 1; found {max_queries}")
    return np.unique(np.round(np.linspace(0, t - 1, max_queries)).astype(np.int64))


def _blocks(
    q: np.ndarray,
    group: int,
    sequences: list[tuple[int, int]],
    positions: np.ndarray,
    causal: bool,
    block: int,
) -> Iterator[tuple[int, np.ndarray, int, int, np.ndarray]]:
    """Yield ``(kv head, queries, start, stop, mask)`` blocks.

    ``queries`` is ``(group, n, head_dim)``: the block's query positions for every query
    head that reads this KV head. Keys span ``[start, stop)`` (for causal attention, only up
    to the block's last query) and ``mask`` ``(n, stop - start)`` marks the visible keys.
    """
    hkv = q.shape[0] // group
    for a, b in sequences:
        pos = positions[(positions >= a) & (positions < b)]
        for i in range(0, pos.size, block):
            qp = pos[i : i + block]
            stop = int(qp[-1]) + 1 if causal else b
            if causal:
                mask = np.arange(a, stop)[None, :] <= qp[:, None]
            else:
                mask = np.ones((qp.size, b - a), dtype=bool)
            for g in range(hkv):
                yield g, q[g * group : (g + 1) * group, qp], a, stop, mask


def _logits(qv: np.ndarray, keys: np.ndarray, scale: float) -> np.ndarray:
    """``(group, n, d) x (L, d) -> (group, n, L)`` as one BLAS call."""
    g, n, d = qv.shape
    return (qv.reshape(g * n, d) @ keys.T).reshape(g, n, keys.shape[0]) * scale


def _log_softmax(logits: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masked log-softmax over the last axis: ``(log p, p)``, both 0 where ``mask`` is False.

    Every row has at least one visible key (a query always sees itself or its sequence)."""
    z = np.where(mask, logits, -np.inf)
    z -= np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)  # exactly 0 where masked
    logp = z - np.log(np.sum(e, axis=-1, keepdims=True))
    logp[:, ~mask] = 0.0
    return logp, np.exp(logp) * mask


def _attention_setup(queries, kv: dict, sequences, causal, scale, max_queries, block):
    """The prologue shared by :func:`attention_score_errors` and
    :func:`attention_output_error`: every array as heads, their shapes checked against the
    queries, the logit scale, and the (validated, eagerly) sequences and query positions.

    ``kv`` maps names to the KV-side arrays (None entries are skipped). Returns
    ``(arrays by name, head_dim, scale, blocks)`` with ``blocks`` the iterator of
    :func:`_blocks`.
    """
    q = _as_heads(queries, "queries")
    arrays = {name: _as_heads(a, name) for name, a in kv.items() if a is not None}
    group = _check_kv(q, arrays)
    t, d = q.shape[1:]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    seqs = _sequences(sequences, t)
    pos = _positions(t, max_queries)
    return arrays, d, scale, _blocks(q, group, seqs, pos, causal, block)


def attention_score_errors(
    queries,
    keys,
    keys_hat,
    *,
    sequences: Sequence[tuple[int, int]] | None = None,
    causal: bool = True,
    scale: float | None = None,
    max_queries: int | None = None,
    block: int = 256,
) -> dict:
    """How much reconstructed keys change the attention logits and distributions.

    Parameters
    ----------
    queries : array (query_heads, tokens, head_dim) or (tokens, head_dim)
    keys, keys_hat : arrays (kv_heads, tokens, head_dim) or (tokens, head_dim)
        The original and the reconstructed keys (post-RoPE, as the queries).
    sequences : list of (start, stop), optional
        Token ranges of the sequences; default one sequence of all tokens.
    causal : bool
        Whether a query sees only the keys at or before its position (default True).
    scale : float, optional
        Logit scale; default ``1 / sqrt(head_dim)``.
    max_queries : int, optional
        Evaluate only this many evenly spaced query positions.
    block : int
        Queries per block (bounds memory at ``block * tokens`` floats).

    Returns
    -------
    dict
        ``logit_mse`` (mean squared logit error over all visible (query, key) pairs),
        ``kl_nats`` (mean over queries and query heads of ``KL(p || p_hat)``),
        ``kl_nats_max``, ``top1_agreement`` (fraction of queries whose most-attended key is
        unchanged), ``num_queries`` (query positions times query heads).

    Examples
    --------
    >>> import numpy as np
    >>> from kvinfo.analysis.distortion import attention_score_errors
    >>> rng = np.random.default_rng(0)
    >>> q, k = rng.standard_normal((4, 32, 8)), rng.standard_normal((2, 32, 8))
    >>> attention_score_errors(q, k, k)["kl_nats"]
    0.0
    >>> r = attention_score_errors(q, k, k + 0.1 * rng.standard_normal(k.shape))
    >>> 0 < r["kl_nats"] < 0.05, r["num_queries"]
    (True, 128)
    """
    arrays, _, scale, blocks = _attention_setup(
        queries, {"keys": keys, "keys_hat": keys_hat}, sequences, causal, scale, max_queries,
        block,
    )
    k, kh = arrays["keys"], arrays["keys_hat"]
    sq_err = 0.0
    n_pairs = 0
    kl_sum = 0.0
    kl_max = 0.0
    agree = 0
    n_q = 0
    for g, qv, a, b, mask in blocks:
        lg = _logits(qv, k[g, a:b], scale)
        lh = _logits(qv, kh[g, a:b], scale)
        diff = (lg - lh) * mask
        sq_err += float(np.sum(diff * diff))
        n_pairs += int(np.count_nonzero(mask)) * qv.shape[0]
        lp, p = _log_softmax(lg, mask)
        lph, _ = _log_softmax(lh, mask)
        kl = np.maximum(np.sum(p * (lp - lph), axis=-1), 0.0)
        kl_sum += float(np.sum(kl))
        kl_max = max(kl_max, float(np.max(kl)))
        agree += int(
            np.sum(
                np.argmax(lp + np.where(mask, 0.0, -np.inf), axis=-1)
                == np.argmax(lph + np.where(mask, 0.0, -np.inf), axis=-1)
            )
        )
        n_q += kl.size
    return {
        "logit_mse": sq_err / max(n_pairs, 1),
        "kl_nats": kl_sum / max(n_q, 1),
        "kl_nats_max": kl_max,
        "top1_agreement": agree / max(n_q, 1),
        "num_queries": n_q,
    }


def attention_output_error(
    queries,
    keys,
    values,
    values_hat,
    *,
    keys_hat=None,
    sequences: Sequence[tuple[int, int]] | None = None,
    causal: bool = True,
    scale: float | None = None,
    max_queries: int | None = None,
    block: int = 256,
) -> dict:
    """Error of the attention output ``softmax(q K^T * scale) V`` with reconstructed values.

    The weights come from the original ``keys``; pass ``keys_hat`` to use reconstructed keys
    for the compressed output as well (the end-to-end error of a compressed cache).

    Returns
    -------
    dict
        ``relative_error`` = ``sqrt(sum ||o - o_hat||^2 / sum ||o||^2)`` over all query
        positions and heads, ``mean_relative_error`` (mean over queries of
        ``||o - o_hat|| / ||o||``), ``output_mse_per_element``, ``num_queries``.

    Examples
    --------
    >>> import numpy as np
    >>> from kvinfo.analysis.distortion import attention_output_error
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.standard_normal((2, 16, 4)) for _ in range(3))
    >>> attention_output_error(q, k, v, v)["relative_error"]
    0.0
    >>> r = attention_output_error(q, k, v, 1.1 * v)  # a 10 % gain error on every output
    >>> round(r["relative_error"], 6), round(r["mean_relative_error"], 6)
    (0.1, 0.1)
    """
    arrays, d, scale, blocks = _attention_setup(
        queries, {"keys": keys, "values": values, "values_hat": values_hat, "keys_hat": keys_hat},
        sequences, causal, scale, max_queries, block,
    )
    k, v, vh, kh = (arrays.get(n) for n in ("keys", "values", "values_hat", "keys_hat"))
    err_sq = 0.0
    ref_sq = 0.0
    rel_sum = 0.0
    n_q = 0
    for g, qv, a, b, mask in blocks:
        w = _log_softmax(_logits(qv, k[g, a:b], scale), mask)[1]
        o = w @ v[g, a:b]
        if kh is not None:
            w = _log_softmax(_logits(qv, kh[g, a:b], scale), mask)[1]
        oh = w @ vh[g, a:b]
        e2 = np.sum(np.square(o - oh), axis=-1)
        r2 = np.sum(np.square(o), axis=-1)
        err_sq += float(np.sum(e2))
        ref_sq += float(np.sum(r2))
        rel = np.where(r2 > 0, np.sqrt(e2) / np.sqrt(np.where(r2 > 0, r2, 1.0)), 0.0)
        rel_sum += float(np.sum(rel))
        n_q += rel.size
    return {
        "relative_error": math.sqrt(err_sq / ref_sq) if ref_sq > 0 else 0.0,
        "mean_relative_error": rel_sum / max(n_q, 1),
        "output_mse_per_element": err_sq / max(n_q * d, 1),
        "num_queries": n_q,
    }
