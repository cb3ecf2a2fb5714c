"""Shared fixtures: synthetic dumps and a tiny random-weight Llama built in-process."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_dump(tmp_path_factory):
    """A small float32 synthetic dump with queries (2 layers, 2 kv heads, 256 tokens, d=16)."""
    from kvinfo.dumps import write_synthetic_dump

    return write_synthetic_dump(tmp_path_factory.mktemp("dumps") / "synthetic.h5")


@pytest.fixture(scope="session")
def synthetic_dump_bf16(tmp_path_factory):
    from kvinfo.dumps import write_synthetic_dump

    return write_synthetic_dump(
        tmp_path_factory.mktemp("dumps") / "synthetic_bf16.h5", dtype="bfloat16", seed=1
    )


def make_char_tokenizer():
    """A character-level fast tokenizer built in-process (no download)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(i): i - 32 for i in range(32, 127)}
    vocab["[UNK]"] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")


def make_tiny_llama(vocab_size: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A local Hugging Face model folder holding a tiny random Llama and its tokenizer."""
    pytest.importorskip("transformers")
    tok = make_char_tokenizer()
    model = make_tiny_llama(len(tok))
    d = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def default_model():
    """The real default model (SmolLM2-135M-Instruct GGUF), loaded once per session in float32."""
    pytest.importorskip("torch")
    pytest.importorskip("gguf")
    from kvinfo.dumps._model import default_gguf_path, load_model

    try:
        default_gguf_path()
    except ValueError as exc:  # pragma: no cover - only without the README set-up
        pytest.skip(str(exc))
    return load_model(None, dtype="float32")
