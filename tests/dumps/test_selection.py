"""kvinfo.dumps.Selection: one selection type, checked once against the dump."""

from __future__ import annotations

import numpy as np
import pytest

from kvinfo.dumps import Selection, open_dump, parse_index_list, write_synthetic_dump
from kvinfo.errors import AnalysisInputError, SelectionError


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    return write_synthetic_dump(tmp_path_factory.mktemp("sel") / "s.h5", num_layers=3,
                                num_kv_heads=2, num_heads=4, num_tokens=60, num_sequences=3,
                                head_dim=8)


def test_defaults_select_every_layer_head_and_sequence_of_keys_and_values(dump):
    with open_dump(dump) as d:
        sel = Selection().resolve(d)
        assert sel.layers == (0, 1, 2) and sel.kinds == ("keys", "values")
        assert sel.heads == {"keys": (0, 1), "values": (0, 1)}
        assert sel.sequences == (0, 1, 2) and sel.rows is None
        assert sel.num_tokens == d.num_tokens
        assert [tuple(r) for r in sel.sequence_ranges] == d.sequences()
        np.testing.assert_array_equal(sel.positions, d.positions())
        np.testing.assert_array_equal(sel.sequence_index, d.sequence_index())
        assert len(sel.slabs()) == 3 * 2 * 2
        assert len(list(d.iter_slabs(selection=sel))) == 12


def test_text_and_lists_select_the_same_slabs(dump):
    with open_dump(dump) as d:
        a = Selection(layers="0,2", kinds="values,queries", heads="1").resolve(d)
        b = Selection(layers=[0, 2], kinds=["values", "queries"], heads=[1]).resolve(d)
        assert a.slabs() == b.slabs() == [
            (0, "values", 1), (0, "queries", 1), (2, "values", 1), (2, "queries", 1)
        ]
        # heads are checked against each kind's head count: query heads go to 3
        assert Selection(kinds="queries", heads="3").resolve(d).heads == {"queries": (3,)}


def test_sequences_restrict_every_slab_to_their_tokens(dump):
    with open_dump(dump) as d:
        o = d.sequence_offsets
        sel = Selection(layers=[1], kinds="keys", heads=[0], sequences="2,0").resolve(d)
        rows = np.r_[o[2]:o[3], o[0]:o[1]]
        np.testing.assert_array_equal(sel.rows, rows)
        (lay, kind, head, slab), = list(d.iter_slabs(selection=sel))
        np.testing.assert_array_equal(slab, d.slab("keys", 1, 0)[rows])
        n2 = int(o[3] - o[2])
        assert sel.sequence_ranges == ((0, n2), (n2, n2 + int(o[1] - o[0])))
        np.testing.assert_array_equal(sel.token_ids, np.asarray(d.token_ids)[rows])
        assert sel.positions[0] == 0 and sel.positions[n2] == 0
        assert sel.settings()["sequences"] == [2, 0]


@pytest.mark.parametrize(
    "kwargs, param, message",
    [
        ({"layers": "3"}, "layers", "3 is out of range [0, 3)"),
        ({"layers": "x"}, "layers", "expected integers or ranges"),
        ({"layers": [True]}, "layers", "expected integers"),
        ({"layers": []}, "layers", "selects nothing"),
        ({"kinds": "keys_pre_rope"}, "kinds", "not in this dump"),
        ({"kinds": ","}, "kinds", "empty selection"),
        ({"heads": "2"}, "heads", "2 is out of range [0, 2)"),
        ({"sequences": "0-10**12"}, "sequences", "expected integers"),
        ({"sequences": "0-999999999999"}, "sequences", "out of range"),
    ],
)
def test_one_error_class_naming_the_parameter(dump, kwargs, param, message):
    with open_dump(dump) as d:
        with pytest.raises(SelectionError) as info:
            Selection(**kwargs).resolve(d)
    assert info.value.parameter == param
    assert str(info.value).startswith(f"{param}: ") and message in str(info.value)
    assert isinstance(info.value, AnalysisInputError)


def test_parse_index_list_and_iter_slabs_keyword_form(dump):
    assert parse_index_list("0,2-4,2", 5, "layers") == [0, 2, 3, 4]
    with pytest.raises(SelectionError, match="^heads: 5 is out of range"):
        parse_index_list([5], 2, "heads")
    with open_dump(dump) as d:
        got = [(s[0], s[1], s[2]) for s in d.iter_slabs(kinds=["keys"], layers=[2], heads=[1])]
        assert got == [(2, "keys", 1)]
        with pytest.raises(SelectionError, match="^layers: "):
            list(d.iter_slabs(layers=[9]))
        with pytest.raises(TypeError):
            list(d.iter_slabs(kinds=["keys"], selection=Selection()))
