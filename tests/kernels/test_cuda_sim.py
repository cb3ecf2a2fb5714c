"""The CUDA decode kernels under Numba's CUDA simulator, against the CPU decoders.

The simulator must be switched on before ``numba.cuda`` is first imported, so the cases
run in a subprocess (this file executed as a script with ``NUMBA_ENABLE_CUDASIM=1``)
that prints one JSON line per case; the tests here read them. Inputs are small (the
simulator runs one Python thread per CUDA thread) and fresh random data each run
(the seed is printed with any failure).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
POISON = {"uint8": 0xEE, "uint16": 0xEEEE, "int32": -0x11111112}
NAN_BITS = {"float16": 0x7E01, "bfloat16": 0x7FC1}


# ---------------------------------------------------------------------------------------
# the cases, run inside the simulator process
# ---------------------------------------------------------------------------------------
def _poisoned(prep, cuda):
    """A device output buffer filled with a value no decode writes (or a NaN pattern)."""
    if prep.result_dtype in NAN_BITS:
        host = np.full(prep.num_elements, NAN_BITS[prep.result_dtype], np.uint16).view(prep.dtype)
    elif prep.dtype.kind == "f":
        host = np.full(prep.num_elements, np.nan, prep.dtype)
    else:
        host = np.full(prep.num_elements, POISON[prep.dtype.name], prep.dtype)
    return cuda.to_device(host)


def _cases(seed: int):
    import ml_dtypes

    rng = np.random.default_rng(seed)
    sym = []
    for n in (1, 31, 32, 33, 700):
        sym.append(({"id": "rans", "chunk_size": 256}, rng.integers(0, 16, n, dtype=np.uint8)))
    sym += [
        # chunks long enough to cycle the per-warp word ring several times
        ({"id": "rans", "chunk_size": 2048}, rng.integers(0, 16, 2500, dtype=np.uint8)),
        ({"id": "rans", "chunk_size": 1024}, rng.integers(0, 256, 1500, dtype=np.uint8)),
        # 2-D, per-channel tables (global-memory table)
        ({"id": "rans", "chunk_size": 128, "per_channel": True},
         rng.integers(0, 9, (20, 24), dtype=np.uint8)),
        # > 256 symbols (shared table with a separate symbol table)
        ({"id": "rans", "chunk_size": 256}, rng.integers(1000, 1300, 600, dtype=np.uint16)),
        # precision 14 (global-memory table), negative int32 symbols
        ({"id": "rans", "chunk_size": 96, "precision_bits": 14},
         rng.integers(-40, 40, (5, 70), dtype=np.int32)),
        ({"id": "rans"}, np.zeros((0, 4), np.uint8)),
        ({"id": "huffman", "chunk_size": 256, "sub_block_size": 64},
         rng.integers(0, 16, 600, dtype=np.uint8)),
        ({"id": "huffman", "chunk_size": 96, "sub_block_size": 32},
         np.minimum(rng.geometric(0.3, (7, 33)), 40).astype(np.int32) - 20),
        # > 4096 distinct symbols: 13-bit table in global memory
        ({"id": "huffman", "chunk_size": 8192, "sub_block_size": 1024},
         rng.permutation(np.arange(5000, dtype=np.uint16)).repeat(2)[:9000]),
        ({"id": "huffman"}, np.full((3, 5), 7, np.uint8)),  # single symbol: no payload
        # per-channel codes (global-memory tables, one row per channel)
        ({"id": "huffman", "chunk_size": 128, "sub_block_size": 32, "per_channel": True},
         np.clip(np.round(rng.normal(0, np.linspace(0.3, 5, 6), (50, 6))), -9, 9
                 ).astype(np.int32)),
        # format version 2 automatic layouts: one chunk of a single lane (low entropy),
        # per-channel tables chosen by measurement
        ({"id": "rans"}, (rng.random(300) < 0.03).astype(np.uint8)),
        ({"id": "rans"}, np.clip(np.round(rng.normal(0, np.linspace(0.2, 6, 6), (40, 6))),
                                 -9, 9).astype(np.int32)),
        # format version 3: raw-stored channels beside coded ones (uint8, uint16), and
        # every channel stored
        ({"id": "rans", "store_below": 0.05},
         np.stack([rng.integers(0, 256, 300), rng.integers(0, 3, 300),
                   rng.integers(0, 256, 300), rng.integers(7, 9, 300)], 1).astype(np.uint8)),
        ({"id": "rans", "store_below": 0.05},
         np.stack([rng.integers(0, 1 << 16, 200), rng.integers(5, 9, 200),
                   rng.integers(0, 1 << 16, 200)], 1).astype(np.uint16)),
        ({"id": "rans", "store_below": 0.05}, rng.integers(0, 256, 3000, dtype=np.uint8)),
    ]
    for cfg, x in sym:
        yield cfg, x
    x = rng.standard_normal((2, 40, 24)) * np.linspace(0.1, 4, 24)
    # the fused decode-and-dequantize path through stored channels
    yield ({"id": "uniform", "bits": 8, "axis": "channel", "group_size": 40,
            "coder": {"id": "rans", "store_below": 0.2}}, x.astype(np.float16))
    yield ({"id": "uniform", "bits": 4, "axis": "channel", "group_size": 16,
            "coder": {"id": "rans", "chunk_size": 256}}, x.astype(np.float16))
    yield ({"id": "uniform", "bits": 3, "axis": "token", "group_size": 10,
            "coder": {"id": "huffman", "chunk_size": 256, "sub_block_size": 64}},
           x.astype(ml_dtypes.bfloat16))
    yield ({"id": "uniform", "bits": 8, "axis": "channel", "side_dtype": "float32",
            "coder": {"id": "rans", "chunk_size": 128, "per_channel": True}},
           x[0].astype(np.float32))
    yield ({"id": "uniform", "bits": 2, "axis": "token",
            "coder": {"id": "huffman", "chunk_size": 64, "sub_block_size": 32}},
           (x[:, :9, :5] * 1e3).astype(np.float64))


def rng_kv(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((16, 8)).astype(np.float32)


def _bits(a):
    a = np.asarray(a)
    return a.view(np.uint16) if a.dtype.itemsize == 2 and a.dtype.kind != "u" else a


def run_cases(seed: int) -> None:  # pragma: no cover - runs in the simulator subprocess
    from kvinfo.codecs import _container as C
    from kvinfo.codecs import get_codec, reseal_stream
    from kvinfo.errors import CodecConfigError, CorruptStreamError
    from kvinfo.kernels import gpu

    kernels = gpu.require_cuda()
    cuda = kernels.cuda
    assert kernels.SIMULATOR
    for cfg, x in _cases(seed):
        codec = get_codec(cfg)
        data = codec.encode(x)
        ref = codec.decode(data)
        prep = codec.prepare_cuda(data)
        out = _poisoned(prep, cuda)
        res = prep.decode(out=out)
        got = res.copy_to_host()
        ok = got.shape == ref.shape and np.array_equal(_bits(got), _bits(ref.astype(
            got.dtype if prep.result_dtype != "bfloat16" else ref.dtype)))
        print(json.dumps({"case": cfg["id"], "cfg": cfg, "n": int(x.size), "ok": bool(ok),
                          "dtype": prep.result_dtype, "kind": prep.kind, "seed": seed}),
              flush=True)
    # streams of format version 1 (the committed golden files) decode on the GPU too
    golden = ROOT / "tests" / "golden"
    for name, cfg in (("rans", {"id": "rans", "chunk_size": 512}),
                      ("rans_pc", {"id": "rans", "per_channel": True, "chunk_size": 256}),
                      ("huffman", {"id": "huffman", "chunk_size": 512, "sub_block_size": 128})):
        for key in ("gauss", "walk"):
            codec = get_codec(cfg)
            data = (golden / f"v1_{name}_{key}.kvic").read_bytes()
            got = codec.prepare_cuda(data).decode().copy_to_host()
            want = np.load(golden / f"v1_{name}_{key}.npy")
            print(json.dumps({"case": "v1-golden", "name": f"{name}_{key}",
                              "v1_ok": bool(np.array_equal(got, want))}), flush=True)
    # every lane count 1..32 of format version 2, through the arrays-only front end
    from kvinfo.codecs.models import PerChannelTables
    from kvinfo.kernels import cpu

    r2 = np.random.default_rng(seed + 1)
    for lanes in (1, 3, 17, 32):
        for per in (False, True):
            x = r2.integers(0, 6, 200, dtype=np.uint8)
            counts = cpu.histogram(x, 0, 6, 4, per_channel=per)
            t = PerChannelTables.from_counts(counts, 10, 0)
            chunk = lanes * 4
            w, nw, st = cpu.rans_encode(x, 0, t.frequencies, 10, chunk, 4, num_lanes=lanes)
            prep = gpu.prepare_rans(w, nw, st, t.frequencies, precision_bits=10,
                                    chunk_size=chunk, min_symbol=0, period=4, shape=(50, 4),
                                    dtype=np.uint8)
            got = prep.decode().copy_to_host().reshape(-1)
            print(json.dumps({"case": "lanes", "lanes": lanes, "per": per,
                              "lanes_ok": bool(np.array_equal(got, x))}), flush=True)
    # the optional shared-memory word-ring variant of the rANS kernel (benchmarked against
    # the default), on chunks long enough to cycle the ring several times
    for cfg, x in list(_cases(seed))[5:7]:
        cfg = {**cfg, "store_below": 0}  # every channel coded: the ring kernel's launch
        codec = get_codec(cfg)
        data = codec.encode(x)
        prep = codec.prepare_cuda(data)
        kern, grid, block, pre, post, status = prep._launch
        ring = kernels.rans_kernel(True, False, kernels.MODE_SYMBOLS, ring=True)
        out = _poisoned(prep, cuda)
        ring[grid, block](*pre, out, *post)
        ok = np.array_equal(out.copy_to_host(), codec.decode(data).reshape(-1)) and not np.any(
            status.copy_to_host())
        print(json.dumps({"case": "ring", "cfg": cfg, "ring_ok": bool(ok), "seed": seed}),
              flush=True)
    # a payload altered behind a recomputed CRC passes the host checks, so the per-chunk
    # status of the kernel must catch it
    x = np.random.default_rng(seed).integers(0, 16, 2000, dtype=np.uint8)
    # (Huffman codes resynchronise after a flipped payload bit, so there a sub-block
    # offset is moved instead: the sub-block before it then ends elsewhere.)
    for cfg, section, at, flip in (
        ({"id": "rans", "chunk_size": 512}, "payload", 5, 0x5A),
        ({"id": "huffman", "chunk_size": 512, "sub_block_size": 128}, "subblocks", 4, 0x01),
    ):
        codec = get_codec(cfg)
        data = bytearray(codec.encode(x))
        offset = C.unpack(bytes(data)).offsets[section]
        data[offset + at] ^= flip
        data = bytearray(reseal_stream(bytes(data)))
        outcome = {}
        for where, fn in (("cpu", lambda c=codec, d=bytes(data): c.decode(d)),
                          ("gpu", lambda c=codec, d=bytes(data): c.decode(d, device="cuda"))):
            try:
                fn()
                outcome[where] = "decoded"
            except CorruptStreamError as exc:
                outcome[where] = "corrupt: " + str(exc)
        print(json.dumps({"case": "tampered-" + cfg["id"], **outcome}), flush=True)
    # verify_crc runs the codec's symbol-CRC check on the copied-back symbols
    codec = get_codec({"id": "huffman", "chunk_size": 512, "sub_block_size": 128})
    got = codec.prepare_cuda(codec.encode(x)).decode(verify_crc=True).copy_to_host()
    print(json.dumps({"case": "verify_crc", "ok": None, "crc_ok": bool(np.array_equal(got, x))}),
          flush=True)
    # the arrays-only warm-up (streams from the CPU encoders of kvinfo.kernels.cpu)
    gpu.warmup()
    print(json.dumps({"case": "warmup", "done": True}), flush=True)
    # a uniform stream whose coder has no CUDA decoder is refused on the host
    ucodec = get_codec({"id": "uniform", "bits": 4, "coder": {"id": "arith"}})
    try:
        ucodec.prepare_cuda(ucodec.encode(rng_kv(seed)))
        msg = "prepared"
    except CodecConfigError as exc:
        msg = str(exc)
    print(json.dumps({"case": "arith-coder", "msg": msg}), flush=True)
    # a damaged container fails on the host, before any kernel
    codec = get_codec({"id": "rans"})
    data = bytearray(codec.encode(x))
    data[-9] ^= 1
    try:
        codec.prepare_cuda(bytes(data))
        msg = "prepared"
    except CorruptStreamError as exc:
        msg = str(exc)
    print(json.dumps({"case": "crc", "msg": msg}), flush=True)


# ---------------------------------------------------------------------------------------
# the tests, in the normal pytest process
# ---------------------------------------------------------------------------------------
def _run(code: str, sim: bool, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    if sim:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def sim_results():
    seed = int(np.random.SeedSequence().entropy % (1 << 32))
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('cuda_sim_cases', {str(__file__)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        f"m.run_cases({seed})\n"
    )
    proc = _run(code, sim=True)
    assert proc.returncode == 0, f"seed {seed}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_simulated_decode_matches_cpu(sim_results):
    cases = [r for r in sim_results if r.get("ok") is not None]
    assert len(cases) == 26
    bad = [r for r in cases if not r["ok"]]
    assert not bad, bad
    # the version-3 cases went through the stored-channel merge (plain and fused)
    stored = [r for r in cases if r["kind"] == "rans-stored"]
    assert len(stored) >= 4 and {r["dtype"] for r in stored} >= {"uint8", "uint16", "float16"}
    assert {r["dtype"] for r in cases} >= {"uint8", "uint16", "int32", "float16", "bfloat16",
                                           "float32", "float64"}


def test_simulated_decode_of_version_1_streams(sim_results):
    rows = [r for r in sim_results if r.get("case") == "v1-golden"]
    assert len(rows) == 6 and all(r["v1_ok"] for r in rows), rows


def test_simulated_decode_of_every_lane_count(sim_results):
    rows = [r for r in sim_results if r.get("case") == "lanes"]
    assert len(rows) == 8 and all(r["lanes_ok"] for r in rows), rows


def test_simulated_word_ring_variant_matches_cpu(sim_results):
    rows = [r for r in sim_results if r.get("case") == "ring"]
    assert len(rows) == 2 and all(r["ring_ok"] for r in rows), rows


def test_simulated_status_catches_tampered_payload(sim_results):
    rows = {r["case"]: r for r in sim_results}
    for name in ("tampered-rans", "tampered-huffman"):
        assert rows[name]["cpu"].startswith("corrupt"), rows[name]
        assert rows[name]["gpu"].startswith("corrupt"), rows[name]
        assert "GPU" in rows[name]["gpu"]


def test_simulated_verify_crc_and_warmup(sim_results):
    rows = {r["case"]: r for r in sim_results}
    assert rows["verify_crc"]["crc_ok"] and rows["warmup"]["done"]


def test_uniform_with_a_coder_without_cuda_decoder_is_refused(sim_results):
    rows = {r["case"]: r for r in sim_results}
    assert "no CUDA decoder for coder 'arith'" in rows["arith-coder"]["msg"]


def test_container_damage_is_caught_before_kernels(sim_results):
    rows = {r["case"]: r for r in sim_results}
    assert "CRC-32 mismatch" in rows["crc"]["msg"]


def test_cpu_path_never_imports_numba_cuda():
    proc = _run(
        "import sys, numpy as np\n"
        "import kvinfo.kernels.gpu\n"
        "from kvinfo.codecs import get_codec\n"
        "for cid in ('rans', 'huffman'):\n"
        "    c = get_codec({'id': cid}); x = np.arange(300, dtype=np.uint8) % 11\n"
        "    assert (c.decode(c.encode(x)) == x).all()\n"
        "print(sorted(m for m in sys.modules if m.startswith('numba.cuda')))\n",
        sim=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


def test_without_gpu_cuda_decode_raises_clear_error():
    proc = _run(
        "import numpy as np\n"
        "from kvinfo.codecs import get_codec\n"
        "from kvinfo.errors import CudaUnavailableError\n"
        "from kvinfo.kernels import gpu\n"
        "if gpu.cuda_available():\n"
        "    print('has-gpu')\n"
        "else:\n"
        "    c = get_codec({'id': 'rans'})\n"
        "    try:\n"
        "        c.decode(c.encode(np.arange(10, dtype=np.uint8)), device='cuda')\n"
        "    except CudaUnavailableError as exc:\n"
        "        print('error:', exc)\n",
        sim=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.strip()
    if out == "has-gpu":
        pytest.skip("a CUDA GPU is present")
    assert out.startswith("error:") and "device='cpu'" in out and "NUMBA_ENABLE_CUDASIM" in out
