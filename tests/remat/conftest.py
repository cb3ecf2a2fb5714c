"""The tiny in-process Llama (tests/conftest.py), loaded once for the remat tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    from kvinfo.dumps.capture import load_model

    model, tok, _ = load_model(str(tiny_model_dir), dtype="float32")
    return model, tok


@pytest.fixture(scope="session")
def other_tiny(tiny):
    """The tiny model with one weight changed: another model to the fingerprint."""
    import copy

    import torch

    other = copy.deepcopy(tiny[0])
    with torch.no_grad():
        other.model.layers[0].self_attn.k_proj.weight[0, 0] += 1.0
    return other
