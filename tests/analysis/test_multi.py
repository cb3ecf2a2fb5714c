"""Several dumps as one: merged statistics, analyze_dumps in-process and on 2 Dask workers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from kvinfo.analysis import AnalysisWarning, analyze_dumps, analyze_slab
from kvinfo.analysis._stats import SlabStats
from kvinfo.dumps import DumpSet, Selection, open_dump, open_dumps, write_synthetic_dump
from kvinfo.errors import DumpSetError

OPTS = {"snr_db": [10.0, 20.0], "knn_samples": 150}
SEL = Selection(layers=[1], kinds="keys,values")


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    paths = [write_synthetic_dump(root / f"d{i}.h5", num_layers=2, num_tokens=80 + 24 * i,
                                  head_dim=8, num_sequences=1 + i, seed=10 + i)
             for i in range(3)]
    return [str(p) for p in paths]


def _stats(slab, starts):
    st = SlabStats(slab.shape[1], str(slab.dtype))
    st.update(slab, starts)
    return st


def test_merged_statistics_equal_those_of_the_concatenation(dumps):
    """Counts merge exactly; moments, covariance and lag-1 pairs to rtol 1e-12."""
    slabs, starts = [], []
    for p in dumps[:2]:
        with open_dump(p) as d:
            slabs.append(d.slab("keys", 1, 0))
            s = np.zeros(d.num_tokens, bool)
            s[[a for a, _ in d.sequences()]] = True
            starts.append(s)
    merged = _stats(slabs[0], starts[0]).merge(_stats(slabs[1], starts[1]))
    whole = _stats(np.concatenate(slabs), np.concatenate(starts))
    assert merged.patterns.n == whole.patterns.n
    for a, b in zip(merged.patterns.triplets(), whole.patterns.triplets(), strict=True):
        assert np.array_equal(a, b)
    assert merged.moments.n == whole.moments.n and merged.pairs.n == whole.pairs.n
    for x, y in [(merged.moments.mean, whole.moments.mean),
                 (merged.moments.m2, whole.moments.m2), (merged.moments.m3, whole.moments.m3),
                 (merged.moments.m4, whole.moments.m4),
                 (merged.pairs.moments.m2, whole.pairs.moments.m2)]:
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)


def test_analyze_dumps_is_the_analysis_of_the_concatenated_dumps(dumps):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnalysisWarning)
        doc = analyze_dumps(dumps, SEL, **OPTS)
    assert doc["source"]["dumps"] == dumps
    with DumpSet(dumps) as s:
        assert s.num_sequences == 6 and s.num_tokens == 80 + 104 + 128
        slab = s.slab("values", 1, 1)
        ranges = s.sequences()
    ref = analyze_slab(slab, sequences=ranges, **OPTS)
    rec = next(r for r in doc["records"] if r["scope"] == "slab" and r["kind"] == "values"
               and r["head"] == 1)
    m = rec["metrics"]
    assert m["num_vectors"] == slab.shape[0]
    assert m["temporal_pairs"] == slab.shape[0] - 6  # no pair crosses a dump or a sequence
    for key in ("h0_pooled_bits_per_element", "h_gaussian_bits_per_element",
                "pervector_max_bits_per_element"):
        assert m[key] == pytest.approx(ref[key], rel=1e-12)
    for key in ("rd_gaussian_bits_per_element", "rd_temporal_innovation_bits_per_element"):
        np.testing.assert_allclose(m[key], ref[key], rtol=1e-12)


def test_globs_and_mismatches_are_named(dumps, tmp_path):
    other = write_synthetic_dump(tmp_path / "wide.h5", num_tokens=64, head_dim=16)
    with pytest.raises(DumpSetError, match=r"wide\.h5: head_dim is 16.*has 8"):
        open_dumps([dumps[0], other])
    with pytest.raises(DumpSetError, match="matches no dump"):
        analyze_dumps([str(tmp_path / "none*.h5")], SEL, **OPTS)
    star = str(tmp_path.parent / "*" / "d*.h5")
    with open_dumps([dumps[0].replace("d0.h5", "d*.h5")]) as s:
        assert [str(p) for p in s.paths] == dumps
    assert star  # a pattern per folder level works the same way


def test_skip_failed_drops_an_unreadable_dump(dumps, tmp_path):
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(DumpSetError, match="broken.h5"):
        analyze_dumps([dumps[0], str(bad)], SEL, **OPTS)
    with pytest.warns(AnalysisWarning, match="skipped dump .*broken.h5"):
        doc = analyze_dumps([dumps[0], str(bad), dumps[1]], SEL, skip_failed=True, **OPTS)
    assert doc["source"]["dumps"] == [dumps[0], dumps[1]]


def test_a_dump_failing_mid_run_is_skipped_or_stops_the_run(dumps, monkeypatch):
    from kvinfo.dumps import Dump
    from kvinfo.errors import DumpFormatError

    real = Dump.slab

    def slab(self, kind, layer, head):
        if self.path.name == "d1.h5" and head == 1:
            raise DumpFormatError(f"{self.path}: damaged data in 'keys'")
        return real(self, kind, layer, head)

    monkeypatch.setattr(Dump, "slab", slab)
    with pytest.raises(DumpSetError, match="d1.h5 failed to read"):
        analyze_dumps(dumps, SEL, **OPTS)
    with pytest.warns(AnalysisWarning, match="skipped dump .*d1.h5"):
        doc = analyze_dumps(dumps, SEL, skip_failed=True, **OPTS)
    assert doc["source"]["dumps"] == [dumps[0], dumps[2]]
