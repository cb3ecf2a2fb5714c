"""Needle retrieval: exact placement, scoring, and the run through CompressedCache."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from kvinfo.dumps.capture import load_model  # noqa: E402
from kvinfo.errors import EvalInputError  # noqa: E402
from kvinfo.hf import cache_kwargs  # noqa: E402
from kvinfo.needle import (  # noqa: E402
    NEEDLE_TEMPLATE,
    build_prompt,
    evaluate_needle,
    is_exact_match,
    score_answer,
)

HAY = "It was a bright cold day in April, and the clocks were striking thirteen. " * 20


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tok, _ = load_model(str(tiny_model_dir))
    return model, tok


def _ids(tok, text):
    return list(tok(text, add_special_tokens=False).input_ids)


@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_depth_placement_is_exact_in_tokens(tiny, depth):
    _, tok = tiny
    hay = _ids(tok, HAY)
    p = build_prompt(tok, hay, 300, depth, "40721")
    needle = _ids(tok, NEEDLE_TEMPLATE.format(key="40721"))
    assert len(p.ids) == 300 and p.needle_len == len(needle)
    assert p.ids[p.needle_start:p.needle_start + len(needle)] == needle
    n_hay = 300 - len(needle) - len(_ids(tok, "\nWhat is the pass key? The pass key is"))
    assert p.needle_start == round(depth * n_hay)
    assert p.ids[:p.needle_start] == hay[:p.needle_start]  # haystack before, untouched
    with pytest.raises(EvalInputError, match="too short"):
        build_prompt(tok, hay, 20, depth, "40721")


def test_known_answer_scores_right_and_wrong_answer_wrong(tiny):
    model, tok = tiny
    from transformers import DynamicCache

    prompt = _ids(tok, "The pass key is 40721. What is the pass key? The pass key is")
    right, wrong = _ids(tok, " 40721"), _ids(tok, " 99999")

    def ll(answer):
        cache = DynamicCache()
        with torch.no_grad():
            model(torch.tensor([prompt[:-1]]), use_cache=True, **cache_kwargs(model, cache))
        return score_answer(model, cache, prompt[-1], answer)

    # the score is the teacher-forced sum of log-probabilities of the answer's tokens
    full = torch.tensor([prompt + right])
    with torch.no_grad():
        lp = torch.log_softmax(model(full).logits[0].double(), -1)
    want = sum(lp[len(prompt) - 1 + i, t].item() for i, t in enumerate(right))
    assert ll(right) == pytest.approx(want, abs=1e-4)  # float32 cache vs one pass
    assert ll(right) != ll(wrong)
    assert is_exact_match(" 40721.", "40721") and not is_exact_match(" 99999", "40721")
    assert not is_exact_match("", "40721") and not is_exact_match(" 407210", "40721")


def test_evaluate_needle_lossless_equals_baseline(tiny):
    model, tok = tiny
    res = evaluate_needle(model, tok, [{"id": "lossless"},
                                       {"id": "uniform", "bits": 1, "coder": {"id": "rans"}}],
                          HAY, lengths=[160], depths=[0.0, 1.0], num_trials=1, window=8,
                          block=16)
    base = [c for c in res.cells if c["run"] == 0]
    lossless = [c for c in res.cells if c["run"] == 1]
    assert [c["answer_logprob_nats"] for c in base] == [c["answer_logprob_nats"]
                                                        for c in lossless]
    assert [c["generated"] for c in base] == [c["generated"] for c in lossless]
    one_bit = [c for c in res.cells if c["run"] == 2]
    assert all(c["bits_per_element"] < 4 for c in one_bit)
    s = res.summary(1)[160]
    assert s["answer_logprob_change_nats"] == 0.0
    # the random model never retrieves: exact match of a codec is not counted
    assert s["baseline_success_rate"] < 0.5 and s["exact_match"] is None
    assert res.grid(0).shape == (2, 1)
    # decoding every step (keep_decoded=False) gives the model the same tensors
    again = evaluate_needle(model, tok, [{"id": "uniform", "bits": 1, "coder": {"id": "rans"}}],
                            HAY, lengths=[160], depths=[0.0, 1.0], num_trials=1, window=8,
                            block=16, keep_decoded=False)
    assert [c["answer_logprob_nats"] for c in again.cells if c["run"] == 1] == [
        c["answer_logprob_nats"] for c in one_bit]
    assert res.keep_decoded and not again.to_results()["settings"]["keep_decoded"]
    doc = res.to_results()
    assert [r["metrics"]["task"] for r in doc["records"]] == ["needle"] * 3
    from kvinfo.report.needle import needle_grids

    grids = needle_grids(doc)
    assert [g["label"] for g in grids][0] == "baseline (uncompressed)" and len(grids) == 3
    with pytest.raises(EvalInputError, match="longer than the model's maximum"):
        evaluate_needle(model, tok, [{"id": "lossless"}], HAY, lengths=[4096])
    from kvinfo.evaluate import model_max_context
    from kvinfo.needle import ANSWER_ROOM

    m = model_max_context(model)
    with pytest.raises(EvalInputError, match=f"at most {m - ANSWER_ROOM}"):
        evaluate_needle(model, tok, [{"id": "lossless"}], HAY, lengths=[m])


def test_report_draws_the_needle_heatmap(tiny, tmp_path):
    from kvinfo.report import build_report

    model, tok = tiny
    res = evaluate_needle(model, tok, [{"id": "lossless"}], HAY, lengths=[120, 140],
                          depths=[0.0, 1.0], num_trials=1)
    out = build_report([res.to_results()], tmp_path / "r", formats=("png",))
    fig = {f["name"]: f for f in out["figures"]}["needle"]
    assert "png" in fig and (tmp_path / "r" / fig["png"]).stat().st_size > 0
