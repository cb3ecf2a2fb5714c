"""Capture from a tiny random-weight Llama built in-process (no download)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from kvinfo.cli import main  # noqa: E402
from kvinfo.dumps import open_dump  # noqa: E402
from kvinfo.dumps.capture import capture, capture_model, load_model, read_prompts  # noqa: E402
from kvinfo.errors import CaptureInputError, DumpFormatError, ModelNotFoundError  # noqa: E402

PROMPTS = ["Hello world, this is kvinfo.", "abc"]


def _direct_cache(model, ids):
    """An independent transformers forward: the model's own past_key_values."""
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True)
    pkv = out.past_key_values
    return [(layer.keys[0], layer.values[0]) for layer in pkv.layers]


def _as_numpy(t):
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_capture_matches_direct_forward(tmp_path, tiny_model_dir, dtype):
    model, tok, _ = load_model(str(tiny_model_dir), dtype=dtype)
    path = capture_model(
        model,
        tok,
        tmp_path / "t.h5",
        PROMPTS,
        queries=True,
        pre_rope=True,
        progress=False,
        model_name="tiny",
    )
    with open_dump(path) as d:
        assert d.dtype == dtype and d.num_sequences == 2 and d.num_layers == 2
        assert d.kinds == ("keys", "values", "queries", "keys_pre_rope")
        for s, (a, b) in enumerate(d.sequences()):
            ids = d.token_ids[a:b].tolist()
            assert ids == tok(PROMPTS[s]).input_ids
            direct = _direct_cache(model, ids)
            for layer, (k, v) in enumerate(direct):
                got_k = d.tensor("keys", layer)[:, a:b]
                got_v = d.tensor("values", layer)[:, a:b]
                bits = np.uint16 if dtype == "bfloat16" else np.uint32
                np.testing.assert_array_equal(got_k.view(bits), _as_numpy(k).view(bits))
                np.testing.assert_array_equal(got_v.view(bits), _as_numpy(v).view(bits))
        # queries: attention with the stored q, K, V equals softmax(qK^T/sqrt(d)) V of the model
        q = d.queries(0).astype(np.float64)
        k = d.keys(0).astype(np.float64)
        assert q.shape == (4, d.num_tokens, 16)
        pre = d.keys_pre_rope(0).astype(np.float64)
        # the first token has position 0, where RoPE is the identity
        np.testing.assert_array_equal(pre[:, 0], k[:, 0])
        assert not np.allclose(pre[:, 1:], k[:, 1:])
        assert d.meta["capture"]["queries"] is True
        assert d.meta["weights_checksum"].startswith("sha256:")


def test_capture_generate_and_cli(tmp_path, tiny_model_dir, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hi there"}) + "\n\n" + json.dumps("second") + "\n")
    out = tmp_path / "g.h5"
    rc = main(
        [
            "capture",
            "--model",
            str(tiny_model_dir),
            "--prompts",
            str(prompts),
            "--generate",
            "4",
            "--dtype",
            "float32",
            "--no-progress",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    with open_dump(out) as d:
        assert d.num_sequences == 2
        assert [b - a for a, b in d.sequences()] == [len("Hi there") + 4, len("second") + 4]
        assert d.meta["capture"]["generate"] == 4
    assert "wrote" in capsys.readouterr().err
    assert main(["info", str(out)]) == 0


def test_max_tokens_truncates(tmp_path, tiny_model_dir):
    p = capture(
        tmp_path / "m.h5",
        ["a long prompt indeed"],
        model=str(tiny_model_dir),
        max_tokens=5,
        progress=False,
    )
    with open_dump(p) as d:
        assert d.num_tokens == 5


def test_read_prompts(tmp_path):
    t = tmp_path / "p.txt"
    t.write_text("one\n\ntwo\n")
    assert read_prompts(t) == ["one", "two"]
    bad = tmp_path / "p.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(CaptureInputError, match="invalid JSON"):
        read_prompts(bad)
    with pytest.raises(CaptureInputError, match="no such prompts file"):
        read_prompts(tmp_path)  # a directory
    (tmp_path / "p.csv").write_text("x")
    with pytest.raises(CaptureInputError, match=r"\.txt or \.jsonl"):
        read_prompts(tmp_path / "p.csv")


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["--prompt", "  "], "empty"),
        (["--model", "/no/such/model"], "no such model"),
        (["--model", "missing.gguf"], "no such GGUF"),
        (["--prompts", "/no/such/prompts.txt"], "no such prompts file"),
    ],
)
def test_capture_bad_input(tmp_path, tiny_model_dir, capsys, argv, pattern):
    if "--model" not in argv:
        argv = argv + ["--model", str(tiny_model_dir)]
    out = tmp_path / "bad.h5"
    assert main(["capture", *argv, "--no-progress", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    import re

    assert re.search(pattern, err), err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_model_errors_are_value_errors(tmp_path):
    (tmp_path / "notamodel").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(str(tmp_path / "notamodel"))
    assert issubclass(ModelNotFoundError, ValueError)
    assert issubclass(DumpFormatError, ValueError)


def test_interrupted_capture_leaves_no_file(tmp_path, tiny_model_dir, monkeypatch):
    model, tok, _ = load_model(str(tiny_model_dir))
    calls = {"n": 0}
    orig = model.forward

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return orig(*a, **k)

    monkeypatch.setattr(model, "forward", flaky)
    with pytest.raises(KeyboardInterrupt):
        capture_model(model, tok, tmp_path / "i.h5", PROMPTS, progress=False)
    assert list(tmp_path.iterdir()) == []
