"""The host side of GPU decoding, without a GPU: the arrays a codec hands the kernels.

``kvinfo.kernels.gpu.Dequant`` lays out the side information for the fused kernels; here
a numpy model of the kernels' indexing (``kernels/cuda.py``: ``_rowterm`` plus
``colterm``) reads it back and must reproduce the CPU decoder. The checks a quantizer's
coded section passes before dequantization (``codecs/_device.py``) are tested directly.
"""

from __future__ import annotations

import numpy as np
import pytest

from kvinfo.codecs import _container as C
from kvinfo.codecs import _device, get_codec
from kvinfo.errors import CorruptStreamError
from kvinfo.kernels.gpu import Dequant


def _kernel_indexing(q, dq: Dequant) -> np.ndarray:
    """What the fused kernels compute: ``zero[s] + q * step[s]`` with
    ``s = rowterm(slab, token) + colterm[channel]`` (float64, before the final rounding)."""
    zero, step, colterm, p = dq.host_arrays()
    d, t, g, ng, axis = (int(v) for v in p)
    b = q.size // (t * d)
    bi, ti, di = np.meshgrid(np.arange(b), np.arange(t), np.arange(d), indexing="ij")
    row = (bi * ng + ti // g) * d if axis == 0 else bi * ng * t + ti
    s = row + colterm[di]
    return zero[s].astype(np.float64) + q.reshape(b, t, d) * step[s].astype(np.float64)


@pytest.mark.parametrize("cfg", [
    {"id": "uniform", "bits": 4, "axis": "channel", "group_size": 16},
    {"id": "uniform", "bits": 3, "axis": "token", "group_size": 10},
    {"id": "uniform", "bits": 8, "axis": "channel", "side_dtype": "float32"},
    {"id": "uniform", "bits": 2, "axis": "token"},
])
def test_dequant_arrays_index_the_groups_like_the_cpu_decoder(cfg):
    rng = np.random.default_rng()
    x = (rng.standard_normal((2, 37, 24)) * np.linspace(0.1, 4, 24)).astype(np.float32)
    codec = get_codec(cfg)
    data = codec.encode(x)
    p, bits, axis, group_size, zero, step = codec._read(data)
    t, d = p.shape[-2:]
    length = t if axis == "channel" else d
    dq = Dequant(zero.reshape(-1), step.reshape(-1), tokens=t, head_dim=d,
                 group_size=min(group_size, length) if group_size else length,
                 num_groups=zero.shape[1], per_token=axis == "token", out_dtype="float32")
    q = codec.coder.decode(p.sections[2].data).astype(np.float64)
    got = _kernel_indexing(q, dq).astype(np.float32).reshape(x.shape)
    np.testing.assert_array_equal(got, codec.decode(data))
    assert dq.kernel_dtype() == np.float32 and dq.mode() == 3


def test_dequant_modes_and_dtypes():
    z = np.zeros(4, np.float16)
    for name, mode, kdt in (("float16", 1, np.uint16), ("bfloat16", 2, np.uint16),
                            ("float32", 3, np.float32), ("float64", 4, np.float64)):
        dq = Dequant(z, z, tokens=2, head_dim=2, group_size=2, num_groups=1, per_token=False,
                     out_dtype=name)
        assert dq.mode() == mode and dq.kernel_dtype() == np.dtype(kdt)
    from kvinfo.errors import CodecConfigError

    with pytest.raises(CodecConfigError, match="out_dtype"):
        Dequant(z, z, tokens=2, head_dim=2, group_size=2, num_groups=1, per_token=False,
                out_dtype="int8").mode()


@pytest.mark.parametrize("coder", ["rans", "huffman"])
def test_coded_section_checks_before_dequantization(coder):
    codec = get_codec({"id": coder})
    # 60 rows: enough that coding beats storing the channels raw
    x = (np.arange(600) % 9).astype(np.uint8).reshape(60, 10)  # symbols 0..8
    c = C.unpack(codec.encode(x), coder)
    _device.check_coded(c, (60, 10), 15)  # fits a 4-bit quantizer
    with pytest.raises(CorruptStreamError, match=r"span \[0, 8\], expected within \[0, 7\]"):
        _device.check_coded(c, (60, 10), 7)
    with pytest.raises(CorruptStreamError, match="decoded symbols have shape"):
        _device.check_coded(c, (10, 60), 15)
    verify = _device.crc_check(c)
    verify(x.reshape(-1))
    bad = x.copy()
    bad[0, 0] += 1
    with pytest.raises(CorruptStreamError, match="CRC-32"):
        verify(bad)


def test_which_codecs_have_a_cuda_decoder():
    have = {cid for cid in ("rans", "huffman", "uniform", "arith", "ecsq", "turbo", "lossless",
                            "constriction-ans")
            if _device.has_cuda_decoder(get_codec({"id": cid}))}
    assert have == {"rans", "huffman", "uniform"}
