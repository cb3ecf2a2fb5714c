"""The CI fuzz suite: every registered decoder and the dump reader, bounded, under a memory
limit, replaying the saved regression cases first (``tests/fuzzing.py``, docs/fuzzing.md).

A coder whose ``decode`` does not yet take ``max_output_bytes`` (the coders of issue 14,
until that work lands) is allowed to fail: its failures are reported as an expected
failure, with the saved inputs, instead of failing the suite. Every other target must pass.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest

from kvinfo.codecs import codec_registry, list_codecs

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("kvinfo_fuzzing", HERE / "fuzzing.py")
fuzzing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzzing)


def _bounded(codec_id: str) -> bool:
    return "max_output_bytes" in inspect.signature(codec_registry[codec_id].decode).parameters


def test_fuzz_every_decoder_and_the_dump_reader():
    # "plan" needs a plan file to be built: tests/codecs/test_plan.py mutates its streams
    ids = [*(c for c in list_codecs() if c != "plan"), "dump"]
    report = fuzzing.run(ids, examples=30, dumps=30, ci=True, timeout_s=300)
    for target in ids:  # every target ran, or is reported as failed
        assert target in report["targets"] or any(f["target"] == target
                                                  for f in report["failures"]), target
    for name, counts in report["targets"].items():
        if "failure" not in counts and name in report["targets"]:
            assert counts.get("ok", 0) + counts.get("refused", 0) > 0, name
    assert report["memory_limit_bytes"]
    unexpected = [f for f in report["failures"] if f["target"] == "dump" or _bounded(f["target"])]
    assert not unexpected, "\n".join(f"{f['target']}: {f['error']}" for f in unexpected)
    if report["failures"]:
        pytest.xfail("decoders not yet bounded (issue 14): " + "; ".join(
            f"{f['target']}: {f['error'][:300]}" for f in report["failures"]))


def test_regression_files_are_well_formed():
    for path in sorted(fuzzing.REGRESSIONS.glob("*.bin")):
        assert path.with_suffix(".json").exists(), path
        assert path.name.split("__")[0] in codec_registry, path


def test_mutations_cover_every_checksum_repair():
    import numpy as np

    from kvinfo.codecs import get_codec
    from kvinfo.codecs.quant._base import parse_stream

    codec = get_codec({"id": "uniform"})
    data = codec.encode(np.ones((1, 4, 4), np.float32))
    bigger = fuzzing._structural(data, 0, 1 << 30, 1)  # shape edited, every CRC recomputed
    assert parse_stream(bigger).shape == (1, 1 << 30, 4)
    blob = get_codec({"id": "rans"}).encode(np.zeros((2, 3), np.uint8))
    edited = fuzzing._structural(blob, 0, 7, 0)
    assert edited is not None and edited != blob
