"""``kvinfo allocate``: a plan from a dump and a sensitivity file; one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kvinfo.cli import main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from kvinfo.allocation import Sensitivity
    from kvinfo.dumps import write_synthetic_dump

    t = tmp_path_factory.mktemp("allocate_cli")
    dump = write_synthetic_dump(t / "d.h5", num_layers=2, num_kv_heads=2, num_tokens=64,
                                head_dim=8, queries=False, seed=9)
    f = np.random.default_rng(0).lognormal(0, 1, (2, 2, 2, 8))
    Sensitivity(f, {"num_layers": 2, "num_kv_heads": 2, "head_dim": 8}, 10, 10, 1, 0.1,
                {}).save(t / "s.json")
    return t, dump, t / "s.json"


def test_allocate_writes_a_plan_curves_and_heatmap(inputs, capsys):
    t, dump, sens = inputs
    args = ["allocate", str(dump), "--sensitivity", str(sens), "--family", "ecsq", "--budget", "6",
            "--curves", str(t / "c.npz"), "--heatmap", str(t / "h.png"),
            "-o", str(t / "plan.json"), "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "rate on the calibration dump (measurement)" in out and "(estimate" in out
    plan = json.loads((t / "plan.json").read_text())
    assert plan["family"] == "ecsq" and plan["command"][:2] == ["kvinfo", "allocate"]
    assert 5.98 <= plan["predicted"]["bits_per_element"] <= 6.0
    assert (t / "h.png").stat().st_size > 0 and (t / "c.npz").exists()
    # the curves are reused: a second budget needs no measurement
    again = [*args[1:7], "7", "--curves", str(t / "c.npz"), "-o", str(t / "plan7.json")]
    assert main(["allocate", *again, "--no-progress"]) == 0
    assert "R-D curves" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--budget", "0.01"], "outside what these settings reach"),
    (["--budget", "3", "--memory-bytes", "100"], "exactly one of"),
    (["--budget-keys", "3"], "give both --budget-keys and --budget-values"),
    (["--budget", "3", "--min-setting", "nope"], "--min-setting must be"),
    (["--budget", "3", "--family-config", "{"], "--family-config is not valid JSON"),
])
def test_bad_options_are_one_line_errors(inputs, capsys, extra, message):
    t, dump, sens = inputs
    rc = main(["allocate", str(dump), "--sensitivity", str(sens), *extra,
               "-o", str(t / "bad.json"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (t / "bad.json").exists()


def test_sensitivity_of_another_geometry_and_bad_files(inputs, tmp_path, capsys):
    from kvinfo.allocation import Sensitivity

    t, dump, _ = inputs
    Sensitivity(np.ones((3, 2, 2, 8)), {"num_layers": 3, "num_kv_heads": 2, "head_dim": 8},
                1, 1, 1, 0.0, {}).save(tmp_path / "s3.json")
    for sens, message in ((tmp_path / "s3.json", "sensitivity was measured for 3 layers"),
                          (dump, "not a sensitivity JSON file")):
        rc = main(["allocate", str(dump), "--sensitivity", str(sens), "--budget", "4",
                   "-o", str(tmp_path / "p.json"), "--no-progress"])
        assert rc == 2 and message in capsys.readouterr().err
    rc = main(["allocate", str(dump), "--sensitivity", str(t / "s.json"), "--budget", "4",
               "-o", str(dump)])
    assert rc == 2 and "input" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """A tiny random Llama (vocabulary of 1,024) and a synthetic dump of its geometry."""
    pytest.importorskip("transformers")
    from kvinfo.dumps import write_synthetic_dump
    from tests.conftest import make_char_tokenizer, make_tiny_llama

    t = tmp_path_factory.mktemp("perturb_cli")
    make_tiny_llama(1024, seed=2).save_pretrained(t / "model")
    make_char_tokenizer().save_pretrained(t / "model")
    dump = write_synthetic_dump(t / "d.h5", num_layers=2, num_kv_heads=2, num_heads=4,
                                head_dim=16, num_tokens=160, queries=False, seed=1)
    return t, dump


def test_sensitivity_perturb_then_allocate(tiny_pair, capsys):
    from kvinfo.allocation import PerturbSensitivity, load_sensitivity

    t, dump = tiny_pair
    rc = main(["sensitivity", str(dump), "--model", str(t / "model"), "--method", "perturb",
               "--family", "turbo", "--scored", "16", "-o", str(t / "p.json"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "measured KL of 2 layers x 2 kinds x 6 settings" in out
    sens = load_sensitivity(t / "p.json")
    assert isinstance(sens, PerturbSensitivity) and sens.num_scored_tokens == 32
    assert sens.replay_max_abs_logit_deviation < 1e-5
    rc = main(["allocate", str(dump), "--sensitivity", str(t / "p.json"), "--family", "turbo",
               "--budget", "3", "-o", str(t / "plan.json"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "sum of the groups' measured KLs" in out
    plan = json.loads((t / "plan.json").read_text())
    assert plan["predicted"]["cost_model"] == "perturb"
    # a perturbation sensitivity of another family is refused, one line, exit 2
    rc = main(["allocate", str(dump), "--sensitivity", str(t / "p.json"), "--family", "uniform",
               "--budget", "3", "-o", str(t / "plan2.json"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "measured for family 'turbo'" in err and len(err.strip().splitlines()) == 1
    rc = main(["sensitivity", str(dump), "--model", str(t / "model"), "--scored", "500",
               "-o", str(t / "q.json"), "--no-progress"])
    assert rc == 2 and "2 x --scored = 1000" in capsys.readouterr().err
