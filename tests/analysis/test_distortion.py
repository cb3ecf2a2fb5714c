"""Distortion metrics against slow, obviously correct references and known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kvinfo.analysis.distortion import (
    attention_output_error,
    attention_score_errors,
    cosine_similarity,
    mse_per_element,
    snr_db,
)
from kvinfo.errors import AnalysisInputError


# -- slow references ---------------------------------------------------------------------------
def _visible(t, seqs, causal):
    """For each token, the list of key positions it attends to."""
    out = {}
    for a, b in seqs:
        for i in range(a, b):
            out[i] = list(range(a, i + 1)) if causal else list(range(a, b))
    return out


def _softmax(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    s = sum(e)
    return [v / s for v in e]


def _ref_scores(q, k, kh, seqs, causal, positions):
    hq, t, d = q.shape
    group = hq // k.shape[0]
    vis = _visible(t, seqs, causal)
    sq, pairs, kls, agree = 0.0, 0, [], 0
    for h in range(hq):
        g = h // group
        for i in positions:
            keys = vis[i]
            lg = [float(q[h, i] @ k[g, j]) / math.sqrt(d) for j in keys]
            lh = [float(q[h, i] @ kh[g, j]) / math.sqrt(d) for j in keys]
            sq += sum((x - y) ** 2 for x, y in zip(lg, lh, strict=True))
            pairs += len(keys)
            p, ph = _softmax(lg), _softmax(lh)
            kls.append(sum(a * math.log(a / b) for a, b in zip(p, ph, strict=True) if a > 0))
            agree += int(np.argmax(lg) == np.argmax(lh))
    return sq / pairs, float(np.mean(kls)), max(kls), agree / len(kls)


def _ref_output(q, k, v, vh, kh, seqs, causal):
    hq, t, d = q.shape
    group = hq // k.shape[0]
    vis = _visible(t, seqs, causal)
    err, ref, rels = 0.0, 0.0, []
    for h in range(hq):
        g = h // group
        for i in range(t):
            keys = vis[i]
            w = _softmax([float(q[h, i] @ k[g, j]) / math.sqrt(d) for j in keys])
            wh = (
                w
                if kh is None
                else _softmax([float(q[h, i] @ kh[g, j]) / math.sqrt(d) for j in keys])
            )
            o = sum(wj * v[g, j] for wj, j in zip(w, keys, strict=True))
            oh = sum(wj * vh[g, j] for wj, j in zip(wh, keys, strict=True))
            e2, r2 = float(np.sum((o - oh) ** 2)), float(np.sum(o**2))
            err += e2
            ref += r2
            rels.append(math.sqrt(e2 / r2))
    return math.sqrt(err / ref), float(np.mean(rels))


def _qkv(hq=4, hkv=2, t=13, d=8, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((hq, t, d)) * 1.5
    k = rng.standard_normal((hkv, t, d))
    v = rng.standard_normal((hkv, t, d))
    return q, k, v, rng


# -- elementwise -------------------------------------------------------------------------------
def test_elementwise_known_answers():
    x = np.array([[3.0, 4.0], [1.0, 0.0]])
    y = np.array([[3.0, 4.0], [0.0, 1.0]])
    assert mse_per_element(x, y) == 0.5
    assert math.isclose(snr_db(x, y), 10 * math.log10(np.mean(x**2) / 0.5))
    assert math.isclose(snr_db(x, y, reference="variance"), 10 * math.log10(np.var(x) / 0.5))
    assert snr_db(x, x) == math.inf
    assert snr_db(np.zeros(3), np.ones(3)) == -math.inf
    np.testing.assert_allclose(cosine_similarity(x, y, reduce="none"), [1.0, 0.0])
    assert cosine_similarity(x, y) == 0.5
    assert cosine_similarity(np.zeros((2, 3)), np.zeros((2, 3))) == 1.0
    assert cosine_similarity(x, y, axis=0, reduce="none").shape == (2,)


def test_elementwise_dtypes_agree():
    import ml_dtypes

    x = np.random.default_rng(0).standard_normal((64, 16))
    y = x + 0.01
    for dt in (np.float16, ml_dtypes.bfloat16, np.float32):
        xs, ys = x.astype(dt), y.astype(dt)
        ref = np.mean((xs.astype(np.float64) - ys.astype(np.float64)) ** 2)
        assert mse_per_element(xs, ys) == ref


@pytest.mark.parametrize("fn", [mse_per_element, snr_db, cosine_similarity])
def test_elementwise_bad_input(fn):
    with pytest.raises(AnalysisInputError, match="shape"):
        fn(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(AnalysisInputError, match="non-empty"):
        fn(np.ones((0, 3)), np.ones((0, 3)))
    with pytest.raises(AnalysisInputError, match="NaN"):
        fn(np.array([1.0, np.nan]), np.ones(2))
    assert issubclass(AnalysisInputError, ValueError)


# -- attention scores --------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("seqs", [None, [(0, 5), (5, 13)]])
@pytest.mark.parametrize("hq,hkv", [(4, 2), (3, 3), (6, 1)])
def test_attention_scores_match_reference(causal, seqs, hq, hkv):
    q, k, _, rng = _qkv(hq, hkv)
    kh = k + 0.2 * rng.standard_normal(k.shape)
    got = attention_score_errors(q, k, kh, sequences=seqs, causal=causal, block=4)
    ref = _ref_scores(q, k, kh, seqs or [(0, 13)], causal, range(13))
    assert math.isclose(got["logit_mse"], ref[0], rel_tol=1e-10)
    assert math.isclose(got["kl_nats"], ref[1], rel_tol=1e-8)
    assert math.isclose(got["kl_nats_max"], ref[2], rel_tol=1e-8)
    assert got["top1_agreement"] == ref[3]
    assert got["num_queries"] == hq * 13


def test_attention_scores_subsampled_queries():
    q, k, _, rng = _qkv(t=40)
    kh = k + 0.3 * rng.standard_normal(k.shape)
    got = attention_score_errors(q, k, kh, max_queries=7)
    pos = np.unique(np.round(np.linspace(0, 39, 7)).astype(int))
    ref = _ref_scores(q, k, kh, [(0, 40)], True, pos)
    assert got["num_queries"] == 4 * 7
    assert math.isclose(got["kl_nats"], ref[1], rel_tol=1e-8)


def test_gqa_mapping_and_sequence_isolation():
    q, k, _, rng = _qkv(hq=4, hkv=2)
    kh = k.copy()
    kh[1] += 0.5 * rng.standard_normal(kh[1].shape)  # only KV head 1 changes
    # query heads 0 and 1 read KV head 0: no error there
    assert attention_score_errors(q[:2], k[:1], kh[:1])["logit_mse"] == 0.0
    full = attention_score_errors(q, k, kh)
    heads23 = attention_score_errors(q[2:], k[1:], kh[1:])
    assert math.isclose(full["kl_nats"], heads23["kl_nats"] / 2)
    # a change in the second sequence does not reach the first
    kh2 = k.copy()
    kh2[:, 6:] += 1.0
    r = attention_score_errors(q[:, :5], k[:, :5], kh2[:, :5])
    assert r["kl_nats"] == 0.0
    seq = attention_score_errors(q, k, kh2, sequences=[(0, 6), (6, 13)])
    alone = attention_score_errors(q[:, 6:], k[:, 6:], kh2[:, 6:])
    assert math.isclose(seq["kl_nats"] * 13, alone["kl_nats"] * 7)


def test_constant_key_shift_moves_logits_not_attention():
    q, k, _, _ = _qkv()
    c = np.linspace(-1, 1, 8)
    r = attention_score_errors(q, k, k + c)  # every key of a head moves by the same c
    assert r["kl_nats"] < 1e-12 and r["top1_agreement"] == 1.0
    t = 13
    pairs = [(h, i) for h in range(4) for i in range(t) for _ in range(i + 1)]
    expected = np.mean([(q[h, i] @ c / math.sqrt(8)) ** 2 for h, i in pairs])
    assert math.isclose(r["logit_mse"], expected, rel_tol=1e-10)


def test_first_token_has_no_choice():
    q, k, _, rng = _qkv(t=6)
    kh = k + rng.standard_normal(k.shape)
    r = attention_score_errors(q[:, :1], k[:, :1], kh[:, :1])
    assert r["kl_nats"] == 0.0 and r["logit_mse"] > 0


# -- attention output --------------------------------------------------------------------------
@pytest.mark.parametrize("with_keys", [False, True])
@pytest.mark.parametrize("seqs", [None, [(0, 4), (4, 13)]])
def test_attention_output_matches_reference(with_keys, seqs):
    q, k, v, rng = _qkv()
    vh = v + 0.1 * rng.standard_normal(v.shape)
    kh = k + 0.1 * rng.standard_normal(k.shape) if with_keys else None
    got = attention_output_error(q, k, v, vh, keys_hat=kh, sequences=seqs, block=5)
    ref = _ref_output(q, k, v, vh, kh, seqs or [(0, 13)], True)
    assert math.isclose(got["relative_error"], ref[0], rel_tol=1e-10)
    assert math.isclose(got["mean_relative_error"], ref[1], rel_tol=1e-10)
    assert got["num_queries"] == 4 * 13


def test_attention_output_known_answers():
    q, k, v, _ = _qkv()
    assert attention_output_error(q, k, v, v)["relative_error"] == 0.0
    r = attention_output_error(q, k, v, 0.75 * v)
    assert math.isclose(r["relative_error"], 0.25) and math.isclose(r["mean_relative_error"], 0.25)
    # a constant value offset moves every output by exactly that offset (weights sum to 1)
    c = np.full(8, 0.5)
    r = attention_output_error(q, k, v, v + c)
    assert math.isclose(r["output_mse_per_element"], 0.25, rel_tol=1e-12)


def test_attention_bad_input():
    q, k, v, _ = _qkv()
    with pytest.raises(AnalysisInputError, match="multiple"):
        attention_score_errors(q[:3], k, k)
    with pytest.raises(AnalysisInputError, match="shape"):
        attention_score_errors(q, k, k[:, :5])
    with pytest.raises(AnalysisInputError, match="tokens, head_dim"):
        attention_score_errors(q[:, :5], k, k)
    with pytest.raises(AnalysisInputError, match="NaN"):
        bad = k.copy()
        bad[0, 0, 0] = np.inf
        attention_score_errors(q, k, bad)
    with pytest.raises(AnalysisInputError, match="sequence"):
        attention_score_errors(q, k, k, sequences=[(0, 20)])
    with pytest.raises(AnalysisInputError, match="heads, tokens, head_dim"):
        attention_output_error(q[0, 0], k, v, v)
    with pytest.raises(AnalysisInputError, match="empty"):
        attention_output_error(q[:, :0], k[:, :0], v[:, :0], v[:, :0])
    with pytest.raises(AnalysisInputError, match="max_queries"):
        attention_score_errors(q, k, k, max_queries=0)


def test_two_dimensional_single_head():
    q, k, _, rng = _qkv(hq=1, hkv=1)
    kh = k + 0.1 * rng.standard_normal(k.shape)
    assert attention_score_errors(q[0], k[0], kh[0]) == attention_score_errors(q, k, kh)
