"""Named codec sweeps for ``kvinfo bench --preset``."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import CodecConfigError

__all__ = ["PRESETS", "preset_codecs"]

_RANS = {"id": "rans"}


def _standard() -> list[dict]:
    out: list[dict] = []
    for bits in (2, 3, 4, 8):
        out.append(
            {"id": "uniform", "bits": bits, "axis": "channel", "group_size": 128, "coder": _RANS}
        )
        out.append({"id": "uniform", "bits": bits, "axis": "token", "coder": _RANS})
    for step in (0.1, 0.25, 0.5, 1.0):
        out.append({"id": "ecsq", "step": step, "step_mode": "relative", "coder": _RANS})
    for bits in (2, 3, 4):
        out.append({"id": "turbo", "bits": bits, "coder": _RANS})
    return out


def _coders() -> list[dict]:
    quant = {"id": "uniform", "bits": 4, "axis": "channel", "group_size": 128}
    coders = [
        {"id": "huffman"},
        {"id": "rans"},
        {"id": "rans", "per_channel": True},
        {"id": "arith", "context": "none"},
        {"id": "arith"},
        {"id": "constriction-ans"},
        {"id": "constriction-range"},
    ]
    return [{**quant, "coder": c} for c in coders]


#: preset name -> (description, function returning the codec configs)
PRESETS: dict[str, tuple[str, Callable[[], list[dict]]]] = {
    "standard": (
        "uniform 2/3/4/8 bits per channel (groups of 128 tokens) and per token, ecsq at "
        "relative steps 0.1/0.25/0.5/1.0, turbo at 2/3/4 bits; all with rans",
        _standard,
    ),
    "coders": (
        "one quantizer (uniform 4 bits per channel) with huffman, rans, rans per channel, "
        "arith order-0 and with context, constriction ANS and range: the same symbols",
        _coders,
    ),
}


def preset_codecs(name: str) -> list[dict]:
    """The codec configs of a preset (see :data:`PRESETS`)."""
    try:
        return PRESETS[name][1]()
    except KeyError:
        raise CodecConfigError(
            f"unknown preset {name!r}; expected one of {sorted(PRESETS)}"
        ) from None
