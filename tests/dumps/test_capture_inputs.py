"""``capture --inputs``: X and the residual stream, checked against an independent forward."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from kvinfo.cli import main  # noqa: E402
from kvinfo.dumps import FORMAT_VERSION, open_dump  # noqa: E402
from kvinfo.dumps.capture import capture_model, load_model  # noqa: E402
from kvinfo.errors import DumpFormatError  # noqa: E402

PROMPTS = ["Hello world, this is kvinfo.", "abc de"]


def _bits(a):
    a = np.asarray(a)
    return a.view(np.uint16 if a.dtype.itemsize == 2 else np.uint32)


def _torch_bits(t):
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy().view(np.uint32)


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def captured(request, tiny_model_dir, tmp_path_factory):
    model, tok, _ = load_model(str(tiny_model_dir), dtype=request.param)
    out = tmp_path_factory.mktemp("inputs") / f"x_{request.param}.h5"
    path = capture_model(model, tok, out, PROMPTS, inputs=True, pre_rope=True, progress=False,
                         model_name="tiny")
    return model, tok, path


def test_inputs_are_bit_exact_against_an_independent_forward(captured):
    model, tok, path = captured
    with open_dump(path) as d:
        assert d.meta["format_version"] == FORMAT_VERSION == 2
        assert d.input_kinds == ("inputs", "residual") and d.has_inputs
        assert d.hidden_size == model.config.hidden_size
        for a, b in d.sequences():
            ids = torch.tensor([d.token_ids[a:b].tolist()])
            with torch.no_grad():  # independent: hidden states + the model's own norms
                out = model(ids, output_hidden_states=True)
                for layer in range(d.num_layers):
                    h = out.hidden_states[layer][0]
                    x = model.model.layers[layer].input_layernorm(h)
                    np.testing.assert_array_equal(_bits(d.residual(layer)[a:b]), _torch_bits(h))
                    np.testing.assert_array_equal(_bits(d.inputs(layer)[a:b]), _torch_bits(x))


def test_kv_recomputed_from_inputs_match_the_cache(captured):
    model, _, path = captured
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    with open_dump(path) as d:
        dt = model.dtype
        for a, b in d.sequences():
            pos = torch.arange(b - a)[None]
            for layer in range(d.num_layers):
                attn = model.model.layers[layer].self_attn
                x = torch.from_numpy(np.ascontiguousarray(d.inputs(layer)[a:b]).astype(
                    np.float32)).to(dt)[None]
                with torch.no_grad():
                    k = attn.k_proj(x).view(1, b - a, -1, d.head_dim).transpose(1, 2)
                    v = attn.v_proj(x).view(1, b - a, -1, d.head_dim).transpose(1, 2)
                    cos, sin = model.model.rotary_emb(x, pos)
                    _, k_rot = apply_rotary_pos_emb(k, k, cos, sin)
                want_k = d.keys(layer)[:, a:b].astype(np.float32)
                want_v = d.values(layer)[:, a:b].astype(np.float32)
                tol = 0 if dt == torch.float32 else 2.0 ** -7  # the dtype's rounding
                np.testing.assert_allclose(k_rot[0].float().numpy(), want_k, rtol=tol,
                                           atol=tol * np.abs(want_k).max())
                np.testing.assert_allclose(v[0].float().numpy(), want_v, rtol=tol,
                                           atol=tol * np.abs(want_v).max())


def test_version_1_dump_still_reads_and_has_no_inputs(synthetic_dump):
    with open_dump(synthetic_dump) as d:
        assert d.meta["format_version"] == 1 and d.input_kinds == () and not d.has_inputs
        with pytest.raises(DumpFormatError, match="capture with --inputs"):
            d.inputs(0)


def test_inputs_in_a_version_1_file_are_refused(captured, tmp_path):
    _, _, path = captured
    bad = tmp_path / "bad.h5"
    bad.write_bytes(path.read_bytes())
    with h5py.File(bad, "r+") as f:
        f.attrs["format_version"] = 1
    with pytest.raises(DumpFormatError, match="needs format version 2"):
        open_dump(bad)
    with h5py.File(bad, "r+") as f:
        f.attrs["format_version"] = 2
        del f.attrs["hidden_size"]
    with pytest.raises(DumpFormatError, match="hidden_size"):
        open_dump(bad)


def test_cli_capture_inputs(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "c.h5"
    assert main(["capture", "--model", str(tiny_model_dir), "--prompt", "hi there", "--inputs",
                 "--no-progress", "-o", str(out)]) == 0
    with open_dump(out) as d:
        assert d.inputs(1).shape == (d.num_tokens, d.hidden_size)
        assert d.describe()["input_kinds"] == ["inputs", "residual"]
