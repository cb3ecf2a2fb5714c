"""Short human labels of codec configs, shared by the bench tables and the report's legends.

:func:`codec_label` names one codec (``'uniform 4b/channel g128 +rans'``);
:func:`codec_family` names the curve it belongs to (its label without the parameter that
sets the rate). Both take a config dict as :meth:`~kvinfo.codecs.abc.Codec.get_config`
returns it (or a per-kind spec ``{"id": "per-kind", "keys": ..., "values": ...}``); they
read the dict only, so they never build a codec.

Examples
--------
>>> codec_label({"id": "uniform", "bits": 4, "axis": "channel", "group_size": 128,
...              "coder": {"id": "rans"}})
'uniform 4b/channel g128 +rans'
>>> codec_family({"id": "ecsq", "step": 0.5, "step_mode": "relative", "coder": {"id": "rans"}})
'ecsq (relative step) +rans'
"""

from __future__ import annotations

import json

__all__ = ["codec_label", "codec_family", "coder_label"]


def coder_label(coder: dict | None) -> str:
    """The short label of an entropy coder's config (``'rans'``, ``'rans/ch'``, ...)."""
    if not coder:
        return "rans"
    cid = coder.get("id", "?")
    if cid in ("rans", "huffman") and coder.get("per_channel") is True:
        return f"{cid}/ch"
    if cid == "arith":
        return f"arith({coder.get('context', 'auto')})"
    return cid


def codec_label(config: dict) -> str:
    """A short human label of a codec config (used in tables, legends and file names)."""
    cid = config.get("id")
    if cid == "per-kind":
        parts = [
            f"{k[0].upper()}: {codec_label(config[k])}" for k in ("keys", "values") if k in config
        ]
        return " | ".join(parts)
    if cid == "plan":  # a per-slab codec map (kvinfo allocate): named by its file
        return f"plan {str(config.get('path', '')).replace(chr(92), '/').rsplit('/', 1)[-1]}"
    coder = coder_label(config.get("coder"))
    if cid == "uniform":
        g = config.get("group_size")
        gs = f" g{g}" if g else ""
        return f"uniform {config.get('bits')}b/{config.get('axis', 'channel')}{gs} +{coder}"
    if cid == "ecsq":
        unit = "·rms" if config.get("step_mode") == "relative" else ""
        return f"ecsq Δ={config.get('step'):g}{unit} +{coder}"
    if cid == "turbo":
        extra = ""
        if config.get("num_outliers"):
            extra += f" o{config['num_outliers']}"
        if config.get("sink_tokens"):
            extra += f" s{config['sink_tokens']}"
        return f"turbo {config.get('bits')}b{extra} +{coder}"
    if cid == "lossless":
        return f"lossless +{coder}"
    if cid == "klt":  # klt (issue 15): its rate parameter is snr_db
        return f"klt {config.get('snr_db', 20):g}dB {_klt_traits(config)}+{coder}"
    rest = {k: v for k, v in config.items() if k not in ("id", "coder")}
    return f"{cid} {json.dumps(rest, separators=(',', ':'))} +{coder}"


def codec_family(config: dict) -> str:
    """The curve a codec belongs to: its label without the parameter that sets the rate."""
    cid = config.get("id")
    if cid == "plan":
        return codec_label(config)
    coder = coder_label(config.get("coder"))
    if cid == "uniform":
        g = config.get("group_size")
        return f"uniform/{config.get('axis', 'channel')}{f' g{g}' if g else ''} +{coder}"
    if cid == "ecsq":
        return f"ecsq ({config.get('step_mode', 'absolute')} step) +{coder}"
    if cid == "turbo":
        return f"turbo +{coder}"
    if cid == "per-kind":
        return codec_label(config)
    if cid == "klt":
        return f"klt {_klt_traits(config)}+{coder}"
    return f"{cid} +{coder}"


def _klt_traits(config: dict) -> str:
    """``cal``/``in-stream`` and the klt options that differ from the defaults."""
    out = ["cal" if config.get("basis") else "in-stream"]
    if config.get("rope_theta"):
        out.append("preRoPE")
    if config.get("metric") == "attention":
        out.append("att")
    if config.get("sink_tokens"):
        out.append(f"s{config['sink_tokens']}")
    if config.get("recent_tokens"):
        out.append(f"r{config['recent_tokens']}")
    if config.get("predict") == "none":
        out.append("nopred")
    if config.get("basis") and config.get("rotations") == 0:
        out.append("rot0")
    if config.get("symbol_model") in ("coder", "logistic"):
        out.append(f"{config['symbol_model']}-model")
    return " ".join(out) + " "
