"""GPU decoding on a real CUDA device: bit-exact with the CPU decoders.

Marked ``gpu``; skipped unless Numba sees a real GPU (the simulator does not count:
``tests/kernels/test_cuda_sim.py`` covers it). Every decode writes into an output buffer
poisoned with a value (or NaN pattern) that no decode produces, so an element that is
never written shows up. Inputs are fresh random data of many sizes (partial chunks
included) and real KV from a SmolLM2 dump: ``$KVINFO_REAL_KV`` or
``out/gpu_carry/kv_real.npz`` (bfloat16 bit patterns, made from ``dumps/default.h5``),
else ``dumps/default.h5`` itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = [
    pytest.mark.gpu,
    # numba-cuda warns about small grids (tiny test inputs); not an error here
    pytest.mark.filterwarnings("ignore:.*Grid size"),
]

ROOT = Path(__file__).resolve().parents[2]


def _real_gpu() -> bool:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False
    from kvinfo.kernels import gpu

    return gpu.cuda_available()


if not _real_gpu():
    pytest.skip("needs a real CUDA GPU", allow_module_level=True)

import ml_dtypes  # noqa: E402

from kvinfo.codecs import get_codec  # noqa: E402
from kvinfo.errors import CorruptStreamError  # noqa: E402
from kvinfo.kernels import gpu  # noqa: E402

K = gpu.require_cuda()
cuda = K.cuda
POISON = {"uint8": 0xEE, "uint16": 0xEEEE, "int32": -0x11111112}
NAN_BITS = {"float16": 0x7E01, "bfloat16": 0x7FC1}


def _decode_poisoned(codec, data):
    prep = codec.prepare_cuda(data)
    if prep.result_dtype in NAN_BITS:
        host = np.full(prep.num_elements, NAN_BITS[prep.result_dtype], np.uint16)
        host = host.view(prep.dtype)
    elif prep.dtype.kind == "f":
        host = np.full(prep.num_elements, np.nan, prep.dtype)
    else:
        host = np.full(prep.num_elements, POISON[prep.dtype.name], prep.dtype)
    out = cuda.to_device(host)
    res = prep.decode(out=out)
    assert hasattr(res, "__cuda_array_interface__")
    return prep, res.copy_to_host()


def _assert_same(got, ref, result_dtype):
    ref = np.asarray(ref)
    assert got.shape == ref.shape
    if result_dtype in ("float16", "bfloat16"):
        np.testing.assert_array_equal(got.view(np.uint16), ref.view(np.uint16))
    else:
        np.testing.assert_array_equal(got, ref)


def _real_kv():
    path = Path(os.environ.get("KVINFO_REAL_KV", ROOT / "out" / "gpu_carry" / "kv_real.npz"))
    if path.exists():
        z = np.load(path)
        return z["keys_bf16_bits"], z["values_bf16_bits"]
    dump = ROOT / "dumps" / "default.h5"
    if not dump.exists():
        pytest.skip("no real KV dump here")
    import kvinfo

    with kvinfo.open_dump(dump) as d:
        k = np.stack([d.raw_bits("keys", 0, h) for h in range(d.num_kv_heads)])
        v = np.stack([d.raw_bits("values", 0, h) for h in range(d.num_kv_heads)])
    return k, v


SIZES = [1, 31, 32, 33, 1000, 65535, 65536, 65537, 3 * 65536 + 17, 1_000_003]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("coder", ["rans", "huffman"])
def test_random_symbols_bit_exact(coder, n):
    rng = np.random.default_rng()
    sigma = rng.uniform(0.5, 40)
    x = np.clip(np.rint(rng.standard_normal(n) * sigma + 128), 0, 255).astype(np.uint8)
    codec = get_codec({"id": coder})
    data = codec.encode(x)
    prep, got = _decode_poisoned(codec, data)
    _assert_same(got, codec.decode(data), prep.result_dtype)


@pytest.mark.parametrize("cfg", [
    {"id": "rans", "per_channel": True},
    {"id": "rans", "precision_bits": 15},
    {"id": "rans", "chunk_size": 4096},
    {"id": "huffman", "max_code_length": 14, "sub_block_size": 1024},
])
@pytest.mark.parametrize("dtype", ["uint16", "int32"])
def test_random_variants_bit_exact(cfg, dtype):
    rng = np.random.default_rng()
    shape = (int(rng.integers(100, 3000)), 128)
    x = np.rint(rng.laplace(0, rng.uniform(1, 300), shape)).clip(-30000, 30000)
    x = (x + (30000 if dtype == "uint16" else 0)).astype(dtype)
    codec = get_codec(cfg)
    data = codec.encode(x)
    prep, got = _decode_poisoned(codec, data)
    _assert_same(got, codec.decode(data), prep.result_dtype)


@pytest.mark.parametrize("coder", ["rans", "huffman"])
def test_real_kv_bits_bit_exact(coder):
    keys, values = _real_kv()
    for bits in (keys, values):  # bfloat16 bit patterns as uint16 symbols (wide alphabet)
        codec = get_codec({"id": coder})
        data = codec.encode(np.ascontiguousarray(bits))
        prep, got = _decode_poisoned(codec, data)
        _assert_same(got, codec.decode(data), prep.result_dtype)


@pytest.mark.parametrize("out_dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("coder", [{"id": "rans"}, {"id": "rans", "per_channel": True},
                                   {"id": "huffman"}])
def test_real_kv_fused_uniform_bit_exact(coder, out_dtype):
    keys, values = _real_kv()
    kv = np.concatenate([keys, values]).view(ml_dtypes.bfloat16).astype(out_dtype)
    for axis, group in (("channel", 64), ("token", 32)):
        codec = get_codec({"id": "uniform", "bits": 4, "axis": axis, "group_size": group,
                           "coder": coder})
        data = codec.encode(kv)
        prep, got = _decode_poisoned(codec, data)
        assert prep.result_dtype == out_dtype
        _assert_same(got, codec.decode(data), out_dtype)


def test_shared_memory_tables_are_used_for_the_default_codecs():
    x = np.random.default_rng().integers(0, 16, 100_000, dtype=np.uint8)
    prep = get_codec({"id": "rans"}).prepare_cuda(get_codec({"id": "rans"}).encode(x))
    assert prep._launch[0] is K.rans_kernel(True, False, K.MODE_SYMBOLS)


def test_tampered_payload_is_reported():
    from kvinfo.codecs import _container as C
    from kvinfo.codecs import reseal_stream

    codec = get_codec({"id": "rans"})
    x = np.random.default_rng().integers(0, 16, 300_000, dtype=np.uint8)
    data = bytearray(codec.encode(x))
    data[C.unpack(bytes(data)).offsets["payload"] + 1001] ^= 0x44
    data = reseal_stream(bytes(data))  # every checksum but the symbols CRC recomputed
    with pytest.raises(CorruptStreamError, match="GPU"):
        codec.decode(bytes(data), device="cuda")


def test_torch_and_cupy_take_the_output_without_copy():
    x = np.random.default_rng().integers(0, 16, 50_000, dtype=np.uint8)
    codec = get_codec({"id": "rans"})
    out = codec.decode(codec.encode(x), device="cuda")
    ptr = out.__cuda_array_interface__["data"][0]
    torch = pytest.importorskip("torch")
    t = torch.as_tensor(out, device="cuda")
    assert t.data_ptr() == ptr
    assert np.array_equal(t.cpu().numpy(), x)
    cp = pytest.importorskip("cupy")
    assert cp.asarray(out).data.ptr == ptr


@pytest.mark.parametrize("cfg", [{"id": "rans"}, {"id": "huffman"}, {"id": "uniform", "bits": 4}])
def test_codec_decode_device_cuda(cfg):
    """The public API: ``codec.decode(data, device="cuda")`` equals the CPU decode."""
    rng = np.random.default_rng(7)
    codec = get_codec(cfg)
    if cfg["id"] == "uniform":
        x = rng.standard_normal((3, 300, 64)).astype(np.float16)
    else:
        x = rng.integers(0, 16, size=100_003).astype(np.uint8)
    data = codec.encode(x)
    out = codec.decode(data, device="cuda")
    assert hasattr(out, "__cuda_array_interface__")
    host = out.copy_to_host() if hasattr(out, "copy_to_host") else np.asarray(out)
    ref = codec.decode(data)
    np.testing.assert_array_equal(host.reshape(-1).view(np.uint8), ref.reshape(-1).view(np.uint8))
