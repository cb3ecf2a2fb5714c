"""kvinfo.capacity and `kvinfo capacity`: batch x context within a memory budget."""

from __future__ import annotations

import json

import pytest

from kvinfo.capacity import (
    GEOMETRIES,
    CapacityInputError,
    Geometry,
    bytes_per_sequence,
    capacity_table,
)
from kvinfo.cli import main


def test_bytes_and_batches_by_hand():
    g = Geometry("toy", 2, 4, 8)  # 2 * 2 * 4 * 8 = 128 elements per token
    assert bytes_per_sequence(g, 100, 16.0) == 128 * 100 * 2
    # 10 tokens in the window at 16 bits, 90 at 4 bits
    assert bytes_per_sequence(g, 100, 4.0, window=10) == 128 * (90 * 4 + 10 * 16) / 8
    assert bytes_per_sequence(g, 5, 4.0, window=10) == 128 * 5 * 2  # all in the window
    r = capacity_table(g, {"plain": 16.0, "q4": 4.0}, budget_bytes=1e6, weights_bytes=0,
                       contexts=[100], window=0)
    assert r.rows[0]["max_batch"] == [int(1e6 // 25600)]
    assert r.rows[1]["max_batch"] == [int(1e6 // 6400)]
    assert r.rows[1]["gain_vs_plain"] == pytest.approx(4.0)


def test_refusals():
    with pytest.raises(CapacityInputError, match="leave nothing"):
        capacity_table(GEOMETRIES["llama-3-8b"], {"x": 4.0}, budget_bytes=10e9)
    with pytest.raises(CapacityInputError, match="positive"):
        capacity_table(GEOMETRIES["llama-3-8b"], {"x": -1.0}, budget_bytes=80e9)
    with pytest.raises(CapacityInputError, match="LAYERS,KV_HEADS,HEAD_DIM"):
        Geometry.parse("32,8")
    assert Geometry.parse("32,8,128,16").weights_bytes == 16e9


def test_capacity_cli(tmp_path, capsys):
    out = tmp_path / "cap"
    rc = main(["capacity", "--bits", "q4=4.25", "--geometry", "llama-3-8b", "--geometry",
               "4,2,64", "--contexts", "1024,8192", "-o", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "llama-3-8b" in text and "estimate" in text
    doc = json.loads((out / "capacity.json").read_text())
    assert [t["geometry"]["name"] for t in doc["tables"]] == ["llama-3-8b", "4,2,64"]
    assert [r["label"] for r in doc["tables"][0]["rows"]] == ["plain bf16", "q4"]
    assert (out / "capacity-llama-3-8b.png").stat().st_size > 0
    assert main(["capacity", "--bits", "q4"]) == 2
    assert "LABEL=BITS" in capsys.readouterr().err
