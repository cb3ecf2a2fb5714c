"""The converted-model cache of kvinfo.dumps._model (the default GGUF, saved once, reread)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("gguf")

from kvinfo._paths import PARTIAL_TAG  # noqa: E402
from kvinfo.dumps import _model  # noqa: E402

pytestmark = pytest.mark.slow


def test_cache_dir_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("KVINFO_MODEL_CACHE", "off")
    assert _model.model_cache_dir() is None
    monkeypatch.setenv("KVINFO_MODEL_CACHE", str(tmp_path / "c"))
    assert _model.model_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("KVINFO_MODEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert _model.model_cache_dir() == tmp_path / "x" / "kvinfo" / "models"


def test_cached_load_equals_gguf_load(monkeypatch, tmp_path):
    try:
        _model.default_gguf_path()
    except ValueError as exc:  # pragma: no cover - only without the README set-up
        pytest.skip(str(exc))
    monkeypatch.setenv("KVINFO_MODEL_CACHE", str(tmp_path))
    direct, tok_a, name_a = _model.load_model(None, dtype="float32")  # converts, then saves
    entries = [p for p in tmp_path.iterdir() if PARTIAL_TAG not in p.name]
    assert len(entries) == 1 and (entries[0] / _model.CACHE_MARKER).is_file()
    assert not [p for p in tmp_path.iterdir() if PARTIAL_TAG in p.name]
    assert "quantization_config" not in json.loads((entries[0] / "config.json").read_text())
    cached, tok_b, name_b = _model.load_model(None, dtype="float32")  # reads the folder
    assert name_a == name_b
    assert _model.weights_checksum(direct) == _model.weights_checksum(cached)
    text = "The KV cache of a transformer grows with the context: 8,192 tokens, é, 你好."
    assert tok_a(text).input_ids == tok_b(text).input_ids
    for key in ("num_hidden_layers", "num_key_value_heads", "rope_theta", "rms_norm_eps",
                "tie_word_embeddings", "max_position_embeddings", "vocab_size"):
        assert getattr(direct.config, key, None) == getattr(cached.config, key, None), key
    # a damaged entry (weights gone) is not trusted: the GGUF is loaded and the entry rebuilt
    (entries[0] / "model.safetensors").unlink()
    again, _, _ = _model.load_model(None, dtype="float32")
    assert _model.weights_checksum(again) == _model.weights_checksum(direct)
    assert (entries[0] / "model.safetensors").is_file()
