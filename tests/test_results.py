"""kvinfo.results: the one record builder, codec normalisation, schema versions 1 and 2."""

from __future__ import annotations

import copy
import json

import pytest

from kvinfo.errors import CodecConfigError, ResultsSchemaError
from kvinfo.results import (
    SCHEMA_VERSION,
    load_results,
    make_record,
    new_results,
    normalize_codec,
    upgrade_results,
    validate_results,
    write_results,
)

FULL_U4 = {
    "id": "uniform", "bits": 4, "axis": "channel", "group_size": None, "side_dtype": "float16",
    "coder": {"id": "rans", "precision_bits": 12, "chunk_size": None, "per_channel": "auto",
              "store_below": 0.001},
}


@pytest.mark.parametrize(
    "spelling",
    [
        {"id": "uniform", "bits": 4},
        {"bits": 4, "id": "uniform", "coder": {"id": "rans"}},
        FULL_U4,
        {"keys": {"id": "uniform", "bits": 4}, "values": {"id": "uniform", "bits": 4}},
        {"id": "per-kind", "keys": FULL_U4, "values": {"id": "uniform", "bits": 4}},
    ],
)
def test_equivalent_spellings_normalise_to_one_config(spelling):
    assert normalize_codec(spelling) == FULL_U4
    assert make_record("run", {}, codec=spelling)["codec"] == FULL_U4


def test_per_kind_normalisation_keeps_the_kinds_apart_and_reads_back():
    spec = {"keys": {"id": "uniform", "bits": 2, "axis": "channel"},
            "values": {"id": "uniform", "bits": 2, "axis": "token"}}
    cfg = normalize_codec(spec)
    assert cfg["id"] == "per-kind" and cfg["keys"]["axis"] == "channel"
    assert cfg["values"]["axis"] == "token" and cfg["values"]["group_size"] is None
    assert normalize_codec(cfg) == cfg  # idempotent: a recorded config is its own spelling
    keys_only = normalize_codec({"keys": {"id": "lossless"}})
    assert keys_only["id"] == "per-kind" and set(keys_only) == {"id", "keys"}


def test_normalised_configs_are_fresh_copies():
    a = normalize_codec({"id": "uniform", "bits": 4})
    a["coder"]["id"] = "changed"
    assert normalize_codec({"id": "uniform", "bits": 4}) == FULL_U4


def test_records_refuse_what_is_not_a_kv_codec():
    with pytest.raises(CodecConfigError, match="not a KV codec"):
        make_record("run", {}, codec={"id": "rans"})
    with pytest.raises(ResultsSchemaError, match="scope must be one of"):
        make_record("nope", {})
    assert make_record("slab", {"x": 1.0}, layer=0, kind="keys", head=1)["codec"] is None


def _v1_eval_doc() -> dict:
    doc = new_results("eval", {"model": "m"}, {"prefix": 4}, command=["kvinfo", "eval"])
    doc["schema_version"] = 1
    doc["records"] = [
        {"scope": "run", "layer": None, "kind": None, "head": None, "codec": None,
         "metrics": {"perplexity": 10.0, "kl": 0.0}},
        {"scope": "run", "layer": None, "kind": None, "head": None,
         "codec": {"id": "uniform", "bits": 4},
         "metrics": {"perplexity": 11.0, "kl": 0.25, "top1_agreement": 0.9}},
        {"scope": "run", "layer": None, "kind": None, "head": None,
         "codec": {"id": "someone-elses-codec", "x": 1},
         "metrics": {"kl": 0.5}},
    ]
    return doc


def test_version_1_documents_are_read_with_the_version_2_names(tmp_path):
    doc = _v1_eval_doc()
    before = copy.deepcopy(doc)
    up = upgrade_results(validate_results(doc))
    assert doc == before  # the input is not modified
    assert up["schema_version"] == SCHEMA_VERSION == 2
    base, u4, other = up["records"]
    assert base["metrics"] == {"perplexity": 10.0, "kl_nats_per_token": 0.0}
    assert u4["metrics"]["kl_nats_per_token"] == 0.25 and "kl" not in u4["metrics"]
    assert u4["codec"] == FULL_U4  # v1 eval kept the user's spelling; now it joins bench's
    assert other["codec"] == {"id": "someone-elses-codec", "x": 1}  # unknown: kept as written
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(doc))
    assert load_results(path) == up
    assert load_results(path, upgrade=False)["schema_version"] == 1


def test_new_documents_are_version_2_and_newer_ones_are_refused(tmp_path):
    doc = new_results("bench", {}, {}, command=["kvinfo", "bench", "x.h5"])
    assert doc["schema_version"] == 2
    doc["records"].append(make_record("overall", {"bits_per_element": 4.2},
                                      codec={"id": "uniform", "bits": 4}))
    path = write_results(doc, tmp_path / "b.json")
    assert load_results(path)["records"][0]["codec"] == FULL_U4
    doc["schema_version"] = 3
    with pytest.raises(ResultsSchemaError, match="schema_version 3 is newer"):
        validate_results(doc)
