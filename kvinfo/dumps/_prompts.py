"""The built-in default prompt set: a few thousand tokens that need no network.

It mixes prose written for kvinfo with documentation text read at run time from this
Python's standard library (module and function docstrings), so that the cache sees
narrative text, technical prose and code-like text. The stdlib part depends on the
Python version; the capture settings record the Python version used.
"""

from __future__ import annotations

import importlib
import inspect
import sys

__all__ = ["default_prompts", "DEFAULT_PROSE", "DEFAULT_STDLIB_MODULES"]

DEFAULT_PROSE = (
    "Once upon a time, in a village at the edge of a great forest, there lived an old "
    "clockmaker named Elsbeth. Every morning she opened the shutters of her small shop, "
    "wound the hundred clocks that lined its walls, and listened until every one of them "
    "ticked in time with the others. Children from the village came to watch her work. "
    "She showed them how a spring stores the force of a turning key, how an escapement "
    "lets that force out one tooth at a time, and how a pendulum, if it is long enough, "
    "keeps the whole machine honest. One winter a traveller arrived with a clock that "
    "had stopped at a quarter past three and would not start again. He said it had "
    "belonged to his grandmother, and that it had not missed a second in sixty years. "
    "Elsbeth opened the case and found, wedged between two wheels, a folded letter. "
    "She handed it to the traveller without reading it, and while he read, she cleaned "
    "the wheels, oiled the pivots and set the pendulum swinging again. When he looked up "
    "his eyes were wet, and the clock was ticking.",
    "A transformer language model generates text one token at a time. For every layer "
    "and every attention head it computes a key and a value vector for each token, and "
    "it keeps these vectors in a cache so that later tokens can attend to earlier ones "
    "without recomputing them. The cache grows linearly with the length of the context "
    "and with the number of concurrent requests, and for long contexts it dominates the "
    "memory of an inference server. Engineers therefore compress it: they quantize keys "
    "per channel and values per token, rotate vectors before quantizing them so that "
    "outliers spread out, evict tokens that receive little attention, or code the "
    "quantized symbols with an entropy coder. Each method trades bits against accuracy. "
    "Information theory says how good such a trade can possibly be: the entropy of the "
    "stored numbers bounds lossless compression, and the rate-distortion function of "
    "the source bounds every lossy scheme at a given mean squared error. Measuring both "
    "on real caches tells an engineer how much room is left.",
)

DEFAULT_STDLIB_MODULES = ("json", "collections", "functools", "itertools", "pathlib", "statistics")


def _module_text(name: str, max_chars: int) -> str:
    mod = importlib.import_module(name)
    parts = [inspect.getdoc(mod) or ""]
    for attr in sorted(getattr(mod, "__all__", dir(mod))):
        if attr.startswith("_"):
            continue
        obj = getattr(mod, attr, None)
        doc = inspect.getdoc(obj) if callable(obj) else None
        if doc:
            parts.append(f"{attr}: {doc}")
        if sum(map(len, parts)) > max_chars:
            break
    return "\n\n".join(p for p in parts if p)[:max_chars]


def default_prompts(max_chars: int = 2400) -> list[str]:
    """The default prompts: kvinfo's own prose, then stdlib documentation text."""
    return list(DEFAULT_PROSE) + [_module_text(m, max_chars) for m in DEFAULT_STDLIB_MODULES]


def default_prompts_source() -> dict:
    """What :func:`default_prompts` was built from (recorded in the capture settings)."""
    return {
        "prose": len(DEFAULT_PROSE),
        "stdlib_modules": list(DEFAULT_STDLIB_MODULES),
        "python": sys.version.split()[0],
    }
