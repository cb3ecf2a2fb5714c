"""kvinfo.testing's lossy contract, on every registered lossy codec, and on codecs that break
it (so that each check can fail)."""

from __future__ import annotations

import numpy as np
import pytest

from kvinfo import testing
from kvinfo.codecs import codec_registry, get_codec

#: the test's tolerance (relative MSE: MSE over the input's mean square) for the lossy
#: codecs that state no bound of their own (uniform and ecsq state max_abs_error), on the
#: KV-like data of testing.kv_like (measured worst case over its dtypes and shapes: turbo
#: 3-bit 0.033)
TOLERANCE = {"turbo": 0.06}
#: a loose sanity bound for a newly registered lossy codec until it gets its own entry
DEFAULT_TOLERANCE = 0.2
EXTRA_CONFIGS = [
    {"id": "uniform", "bits": 2, "axis": "token", "group_size": 16, "coder": {"id": "huffman"}},
    {"id": "ecsq", "step": 0.02, "step_mode": "relative", "coder": {"id": "arith"}},
    {"id": "turbo", "bits": 2, "num_outliers": 2, "sink_tokens": 1},
]
TOLERANCE_EXTRA = {"turbo": 0.15}
#: "plan" needs a plan file and a slab binding: its contract is in tests/codecs/test_plan.py
LOSSY_IDS = sorted(cid for cid, cls in codec_registry.items() if cls.lossy and cid != "plan")


def test_the_lossy_codecs_are_known():
    assert {"uniform", "ecsq", "turbo"} <= set(LOSSY_IDS)
    assert "lossless" not in LOSSY_IDS and "rans" not in LOSSY_IDS


@pytest.mark.parametrize("codec_id", LOSSY_IDS)
def test_every_registered_lossy_codec_keeps_the_contract(codec_id):
    codec = get_codec({"id": codec_id})
    if callable(getattr(codec, "max_abs_error", None)):
        testing.check_lossy_codec(codec)  # the codec's own stated bound
    else:
        testing.check_lossy_codec(codec,
                                  max_relative_mse=TOLERANCE.get(codec_id, DEFAULT_TOLERANCE))


@pytest.mark.parametrize("cfg", EXTRA_CONFIGS, ids=lambda c: c["id"])
def test_other_configs_keep_the_contract(cfg):
    codec = get_codec(cfg)
    tol = TOLERANCE_EXTRA.get(cfg["id"])  # None: the codec's own stated bound
    testing.check_lossy_codec(codec, max_relative_mse=tol, shapes=((40, 16), (2, 33, 8)))


def test_stated_bounds_hold_on_fresh_data():
    seed = int(np.random.SeedSequence().entropy % (1 << 32))
    rng = np.random.default_rng(seed)
    for dtype in testing.LOSSY_DTYPES + (np.float64,):
        x = rng.standard_normal((3, 50, 24)) * rng.uniform(0.01, 30, 24)
        x[..., :3] = np.round(x[..., :3]) + rng.uniform(-500, 500)  # offset, coarse channels
        x[:, :, 3] = 1.5  # a constant channel (step 0)
        x = x.astype(dtype)
        for cfg in ({"id": "ecsq", "step": float(rng.uniform(0.01, 1))},
                    {"id": "ecsq", "step": float(rng.uniform(0.01, 0.5)),
                     "step_mode": "relative"},
                    {"id": "uniform", "bits": int(rng.integers(1, 9)), "axis": "channel",
                     "group_size": int(rng.integers(1, 60))},
                    {"id": "uniform", "bits": int(rng.integers(1, 9)), "axis": "token",
                     "side_dtype": "float32"}):
            codec = get_codec(cfg)
            try:
                testing.check_lossy_roundtrip(codec, x)
            except AssertionError as exc:
                raise AssertionError(f"seed {seed}: {exc}") from None


# ---- codecs that break the contract -------------------------------------------------------
class _Noisy(type(get_codec({"id": "uniform"}))):
    """uniform, plus noise added after decoding (too much distortion)."""

    def decode(self, data, device="cpu"):
        y = super().decode(data, device)
        return (y.astype(np.float64) + 0.5).astype(y.dtype)


class _LyingRate(type(get_codec({"id": "uniform"}))):
    def rate(self, data):
        r = dict(super().rate(data))
        r["side_bits"] -= 8
        return r


class _NoBound(type(get_codec({"id": "uniform"}))):
    max_abs_error = None  # states no bound


def test_the_checks_catch_distortion_rate_and_missing_bounds():
    with pytest.raises(AssertionError, match="relative MSE"):
        testing.check_lossy_codec(_Noisy(bits=8), max_relative_mse=0.01)
    with pytest.raises(AssertionError, match="exceed the stated max_abs_error"):
        testing.check_lossy_roundtrip(_Noisy(bits=8), testing.kv_like(), max_abs_error=0.1)
    with pytest.raises(AssertionError, match="symbol \\+ side bits != total"):
        testing.check_lossy_codec(_LyingRate(), max_relative_mse=0.1)
    with pytest.raises(AssertionError, match="states no distortion bound"):
        testing.check_lossy_codec(_NoBound())
    with pytest.raises(AssertionError, match="not a lossy codec"):
        testing.check_lossy_codec(get_codec({"id": "lossless"}), max_relative_mse=0.1)


def test_the_config_check_catches_a_config_that_drops_a_parameter():
    base = type(get_codec({"id": "uniform"}))

    class _Forgetful(base):
        codec_id = "uniform"

        def get_config(self):
            cfg = super().get_config()
            cfg.pop("bits")  # rebuilt with the default 4 bits
            return cfg

    with pytest.raises(AssertionError, match="JSON round trip differs"):
        testing.check_lossy_config_json(_Forgetful(bits=2))
