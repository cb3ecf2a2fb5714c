"""Property-based fuzzing of every decoder and of the dump reader (docs/fuzzing.md).

The property, for every registered codec id through the public ``get_codec(config).decode``:
a mutated stream either decodes to an array or raises
:class:`~kvinfo.errors.CorruptStreamError` -- never another exception, never a crash, never
a :class:`MemoryError` (the process runs under ``RLIMIT_AS``, so an allocation that a small
stream should not cause fails loudly), never a "not enough memory" refusal. For the dump
reader: a mutated dump either opens (and then its slabs read with the declared shape and
dtype) or raises :class:`~kvinfo.errors.DumpFormatError`.

Mutations start from valid streams of each codec (several dtypes, shapes, degenerate
inputs) and apply byte flips, overwrites with boundary integers, truncations, insertions
and deletions, optionally with every checksum recomputed so that the structural checks
behind the checksums are exercised: a quantizer stream is re-assembled with a changed
shape or parameter block, a coder stream with a changed meta (shape, params).

Two ways to run it:

* in CI, ``tests/test_fuzz.py`` runs :func:`main` with ``--ci`` in a subprocess (bounded
  examples, derandomized, about 40 s);
* by hand, the longer target: ``python tests/fuzzing.py --examples 5000`` (random seeds;
  ``--codec rans`` to focus; ``--dumps 2000`` for the reader).

A failing case, shrunk by hypothesis, is written to ``tests/fuzz_regressions/`` as
``<codec>__<sha1>.bin`` (dumps: ``dump__<sha1>.h5``); ``tests/test_fuzz.py`` replays every
file there on each run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import struct
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REGRESSIONS = HERE / "fuzz_regressions"
if str(HERE.parent) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(HERE.parent))

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402

#: headroom above the process's address space at start for one decode (RLIMIT_AS)
MEMORY_HEADROOM_BYTES = 3 << 30

# -- seed streams ------------------------------------------------------------------------------
CODER_CONFIGS = {
    "rans": [{"id": "rans"}, {"id": "rans", "per_channel": True, "chunk_size": 64}],
    "huffman": [{"id": "huffman"}, {"id": "huffman", "chunk_size": 64, "sub_block_size": 16}],
    "arith": [{"id": "arith"}, {"id": "arith", "context": "channel", "chunk_size": 50}],
    "constriction-ans": [{"id": "constriction-ans"},
                         {"id": "constriction-ans", "per_channel": True}],
    "constriction-range": [{"id": "constriction-range"}],
}
QUANT_CONFIGS = {
    "uniform": [{"id": "uniform", "bits": 3, "group_size": 4},
                {"id": "uniform", "bits": 2, "axis": "token", "coder": {"id": "huffman"}}],
    "ecsq": [{"id": "ecsq", "step": 0.2, "step_mode": "relative"},
             {"id": "ecsq", "step": 0.5, "coder": {"id": "arith"}}],
    "turbo": [{"id": "turbo", "bits": 2, "num_outliers": 2, "sink_tokens": 1},
              {"id": "turbo", "bits": 1, "rotation": "orthogonal"}],
    "lossless": [{"id": "lossless"}, {"id": "lossless", "mantissa_bits": 3,
                                      "coder": {"id": "constriction-ans"}}],
}


def _symbol_inputs(rng):
    return [
        rng.integers(0, 6, (3, 40)).astype(np.uint8),
        rng.integers(0, 300, (2, 5, 7)).astype(np.uint16),
        rng.integers(-20, 20, (50,)).astype(np.int32),
        np.full((4, 16), 7, dtype=np.uint8),
        np.zeros((0, 4), dtype=np.uint8),
    ]


def _float_inputs(rng):
    x = rng.standard_normal((2, 6, 8))
    return [x.astype(np.float16), x.astype(ml_dtypes.bfloat16), x[:1].astype(np.float32),
            np.zeros((1, 4, 4), np.float32)]


def seed_streams(codec_id: str) -> list[tuple[dict, bytes]]:
    """Valid ``(config, stream)`` pairs of ``codec_id`` to start mutating from."""
    from kvinfo.codecs import get_codec
    from kvinfo.errors import CodecConfigError

    rng = np.random.default_rng(12)
    if codec_id in CODER_CONFIGS:
        configs, inputs = CODER_CONFIGS[codec_id], _symbol_inputs(rng)
    elif codec_id in QUANT_CONFIGS:
        configs, inputs = QUANT_CONFIGS[codec_id], _float_inputs(rng)
    else:  # a codec registered by someone else: its default config, both kinds of input
        configs, inputs = [{"id": codec_id}], _symbol_inputs(rng) + _float_inputs(rng)
    out = []
    for cfg in configs:
        codec = get_codec(cfg)
        for x in inputs:
            try:
                out.append((cfg, bytes(codec.encode(x))))
            except CodecConfigError:
                continue  # an input this codec does not take
    if not out:
        raise RuntimeError(f"no seed stream for codec {codec_id!r}")
    return out


# -- checksum repair and structural edits ------------------------------------------------------
def _fix_outer(buf: bytes) -> bytes:
    if buf[:3] == b"KVQ" and len(buf) >= 8:
        return buf[:-4] + struct.pack("<I", zlib.crc32(buf[:-4]) & 0xFFFFFFFF)
    if buf[:4] == b"KVIC" and len(buf) >= 28:
        return buf[:-4] + struct.pack("<I", zlib.crc32(buf[:-4]) & 0xFFFFFFFF)
    return buf


def _rebuild_quant(buf: bytes, edit) -> bytes | None:
    """Re-assemble a quantizer stream after ``edit(shape, params, sections)``; None if the
    stream does not parse."""
    from kvinfo.codecs.quant._base import build_stream, parse_stream

    try:
        p = parse_stream(buf)
    except Exception:
        return None
    shape, params, sections = edit(list(p.shape), bytearray(p.params), list(p.sections))
    try:
        return build_stream(p.tag, p.dtype, tuple(shape), bytes(params), sections)
    except Exception:
        return None


def _rebuild_coder(buf: bytes, edit) -> bytes | None:
    """Re-pack a coder container after ``edit(meta)`` (a dict: shape, params...); None if the
    stream does not parse or the container API is not the one this harness knows."""
    try:
        from kvinfo.codecs import _container as C

        c = C.unpack(buf)
        meta = {"codec": dict(c.codec), "shape": list(c.shape), "dtype": c.dtype,
                "params": dict(c.params)}
        edit(meta)
        return C.pack(meta["codec"], meta["shape"], meta["dtype"], meta["params"],
                      [(k, bytes(v)) for k, v in c.sections.items()], c.symbols_crc32)
    except Exception:
        return None


_BIG = [0, 1, 2, 3, 7, 255, 256, 65535, 65536, 1 << 20, 1 << 24, (1 << 31) - 1, 1 << 31,
        (1 << 32) - 1, 1 << 32, 1 << 40, (1 << 63) - 1, (1 << 64) - 1]


def _structural(buf: bytes, which: int, value: int, axis: int) -> bytes | None:
    """Change a shape entry or a parameter to ``value`` and recompute every checksum."""
    if buf[:3] == b"KVQ":
        def edit(shape, params, sections):
            if which % 2 == 0 and shape:
                shape[axis % len(shape)] = value % (1 << 64)
            elif params:
                i = axis % len(params)
                params[i] = value & 0xFF
            return shape, params, sections
        return _rebuild_quant(buf, edit)
    if buf[:4] == b"KVIC":
        def edit(meta):
            if which % 2 == 0 and meta["shape"]:
                meta["shape"][axis % len(meta["shape"])] = value
            elif meta["params"]:
                keys = sorted(meta["params"])
                meta["params"][keys[axis % len(keys)]] = value
        return _rebuild_coder(buf, edit)
    return None


def mutate(buf: bytes, ops: list[tuple], fix: str) -> bytes:
    """Apply byte-level ``ops`` to ``buf``, then repair checksums per ``fix``."""
    b = bytearray(buf)
    for op in ops:
        kind = op[0]
        if not b and kind != "insert":
            continue
        if kind == "flip":
            b[op[1] % len(b)] ^= op[2] or 1
        elif kind == "int":
            width = op[3]
            pos = op[1] % max(len(b) - width + 1, 1)
            chunk = (op[2] % (1 << (8 * width))).to_bytes(width, "little")
            b[pos : pos + width] = chunk[: len(b) - pos]
        elif kind == "trunc":
            del b[op[1] % (len(b) + 1):]
        elif kind == "insert":
            pos = op[1] % (len(b) + 1)
            b[pos:pos] = op[2]
        elif kind == "delete":
            pos = op[1] % len(b)
            del b[pos : pos + op[2]]
    out = bytes(b)
    if fix in ("outer", "all"):
        out = _fix_outer(out)
    return out


_LAST: dict = {"path": None}


# -- the properties -----------------------------------------------------------------------------
class FuzzFailure(AssertionError):
    pass


def check_decode(config: dict, data: bytes) -> str:
    """Decode ``data``; return ``"ok"`` or ``"refused"``; raise :class:`FuzzFailure` else."""
    from kvinfo.codecs import get_codec
    from kvinfo.errors import CorruptStreamError

    codec = get_codec(config)
    if _LAST["path"] is not None:  # so that a crash (abort, segfault) can be reported
        _LAST["path"].write_bytes(json.dumps(config).encode() + b"\n" + data)
    try:
        y = codec.decode(data)
    except CorruptStreamError as exc:
        if "not enough memory" in str(exc):
            raise FuzzFailure(f"{config['id']}: a {len(data)}-byte stream ran out of memory "
                              f"under RLIMIT_AS: {exc}") from None
        if "\n" in str(exc):
            raise FuzzFailure(f"{config['id']}: error message is not one line: {exc!r}") from None
        return "refused"
    except MemoryError:
        raise FuzzFailure(f"{config['id']}: MemoryError escaped decoding a {len(data)}-byte "
                          "stream (RLIMIT_AS)") from None
    except Exception as exc:
        raise FuzzFailure(f"{config['id']}: {type(exc).__name__} escaped: {exc}\n"
                          + traceback.format_exc(limit=6)) from None
    if not isinstance(y, np.ndarray):
        raise FuzzFailure(f"{config['id']}: decode returned {type(y).__name__}")
    return "ok"


def _save(name: str, data: bytes, suffix: str = ".bin") -> Path:
    REGRESSIONS.mkdir(exist_ok=True)
    path = REGRESSIONS / f"{name}__{hashlib.sha1(data).hexdigest()[:12]}{suffix}"
    path.write_bytes(data)
    return path


def fuzz_codec(codec_id: str, examples: int, derandomize: bool, save: bool = True) -> dict:
    """Fuzz one codec id; returns counts; raises FuzzFailure (after saving the shrunk case)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    seeds = seed_streams(codec_id)
    for cfg, data in seeds:  # warm up the kernels outside the timed part
        check_decode(cfg, data)
    op = st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(0, 255)),
        st.tuples(st.just("int"), st.integers(0, 1 << 16), st.sampled_from(_BIG),
                  st.sampled_from([1, 2, 4, 8])),
        st.tuples(st.just("trunc"), st.integers(0, 1 << 16)),
        st.tuples(st.just("insert"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), st.integers(0, 1 << 16), st.integers(1, 16)),
    )
    counts = {"ok": 0, "refused": 0}
    smallest: dict = {}

    @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(seed=st.integers(0, len(seeds) - 1),
           ops=st.lists(op, min_size=0, max_size=4),
           fix=st.sampled_from(["none", "outer", "all"]),
           structural=st.one_of(st.none(), st.tuples(st.integers(0, 1), st.sampled_from(_BIG),
                                                      st.integers(0, 64))))
    def prop(seed, ops, fix, structural):
        cfg, data = seeds[seed]
        if structural is not None:
            data = _structural(data, *structural) or data
        data = mutate(data, ops, fix)
        try:
            counts[check_decode(cfg, data)] += 1
        except FuzzFailure:
            if "data" not in smallest or len(data) < len(smallest["data"]):
                smallest.update(data=data, cfg=cfg)
            raise

    try:
        prop()
    except FuzzFailure as exc:
        if save and smallest:
            path = _save(codec_id, smallest["data"])
            (path.with_suffix(".json")).write_text(json.dumps(smallest["cfg"]) + "\n")
            raise FuzzFailure(f"{exc}\n(shrunk case saved as {path})") from None
        raise
    return counts


# -- the dump reader ----------------------------------------------------------------------------
_ATTR_VALUES = [0, 1, -1, 2, 8, 4097, 1 << 40, 1.5, float("nan"), "", "1", "{", "{}", "[1]",
                "float32", "bfloat16", "int8", True, False, b"\xff\xfe", "kvinfo.kvdump"]
_DTYPES = ["<f4", "<f2", "<u2", "<u4", "<i4", "<i8", ">f4", "<f8", "u1"]


def check_dump(path: Path) -> str:
    from kvinfo.dumps import open_dump
    from kvinfo.errors import DumpFormatError

    try:
        with open_dump(path) as d:
            for kind in d.kinds:
                s = d.slab(kind, 0, 0)
                if s.shape != (d.num_tokens, d.head_dim) or s.dtype.kind not in "fV":
                    if s.dtype.name != "bfloat16":
                        raise FuzzFailure(f"slab of {kind}: shape {s.shape}, dtype {s.dtype}")
            d.describe()
    except DumpFormatError as exc:
        if "\n" in str(exc):
            raise FuzzFailure(f"dump error is not one line: {exc!r}") from None
        return "refused"
    except FuzzFailure:
        raise
    except MemoryError:
        raise FuzzFailure("MemoryError escaped the dump reader") from None
    except Exception as exc:
        raise FuzzFailure(f"dump reader: {type(exc).__name__} escaped: {exc}\n"
                          + traceback.format_exc(limit=6)) from None
    return "ok"


def fuzz_dumps(examples: int, derandomize: bool, folder: Path, save: bool = True) -> dict:
    import h5py
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from kvinfo.dumps import write_synthetic_dump
    from kvinfo.dumps._format import ATTRIBUTES, DATASETS

    good = write_synthetic_dump(folder / "seed.h5", num_layers=2, num_kv_heads=2, num_heads=4,
                                num_tokens=40, head_dim=8)
    good_bytes = good.read_bytes()
    counts = {"ok": 0, "refused": 0}
    smallest: dict = {}
    names = sorted(DATASETS) + ["extra"]
    edit = st.one_of(
        st.tuples(st.just("attr"), st.sampled_from(sorted(ATTRIBUTES) + ["other"]),
                  st.sampled_from(_ATTR_VALUES)),
        st.tuples(st.just("delattr"), st.sampled_from(sorted(ATTRIBUTES))),
        st.tuples(st.just("group"), st.sampled_from(names)),
        st.tuples(st.just("delete"), st.sampled_from(names)),
        st.tuples(st.just("dtype"), st.sampled_from(names), st.sampled_from(_DTYPES)),
        st.tuples(st.just("shape"), st.sampled_from(names), st.integers(0, 3),
                  st.sampled_from([0, 1, 3, 39, 41, 1 << 20])),
    )

    @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(edits=st.lists(edit, min_size=1, max_size=3))
    def prop(edits):
        path = folder / "case.h5"
        path.write_bytes(good_bytes)
        with h5py.File(path, "a") as f:
            for e in edits:
                _apply_dump_edit(f, e)
        try:
            counts[check_dump(path)] += 1
        except FuzzFailure:
            data = path.read_bytes()
            if "data" not in smallest or len(edits) < smallest["n"]:
                smallest.update(data=data, n=len(edits))
            raise

    try:
        prop()
    except FuzzFailure as exc:
        if save and smallest:
            p = _save("dump", smallest["data"], ".h5")
            raise FuzzFailure(f"{exc}\n(shrunk case saved as {p})") from None
        raise
    return counts


def _apply_dump_edit(f, e) -> None:
    kind, name = e[0], e[1]
    if kind == "attr":
        f.attrs[name] = e[2]
    elif kind == "delattr":
        if name in f.attrs:
            del f.attrs[name]
    elif kind in ("group", "delete", "dtype", "shape"):
        old = f[name][...] if name in f and hasattr(f[name], "shape") else np.zeros((2, 2))
        if name in f:
            del f[name]
        if kind == "group":
            f.create_group(name)
        elif kind == "dtype":
            f.create_dataset(name, data=old.astype(np.dtype(e[2])))
        elif kind == "shape":
            shape = list(old.shape) or [1]
            shape[e[2] % len(shape)] = e[3]
            f.create_dataset(name, shape=tuple(shape), dtype=old.dtype)  # sparse: no data


# -- entry point -------------------------------------------------------------------------------
def limit_memory(headroom: int = MEMORY_HEADROOM_BYTES) -> int:
    """Cap the address space at its current size plus ``headroom``; return the cap."""
    with open("/proc/self/statm") as f:
        vm_bytes = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    cap = vm_bytes + headroom
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return cap


def replay_regressions(codec_ids) -> dict:
    """Re-check every saved case of ``codec_ids`` ("dump" for the reader); returns counts."""
    counts = {"ok": 0, "refused": 0}
    for path in sorted(REGRESSIONS.glob("*.bin")):
        cfg = json.loads(path.with_suffix(".json").read_text())
        if path.name.split("__")[0] in codec_ids:
            counts[check_decode(cfg, path.read_bytes())] += 1
    if "dump" in codec_ids:
        for path in sorted(REGRESSIONS.glob("dump__*.h5")):
            counts[check_dump(path)] += 1
    return counts


def _child(args) -> int:
    """Fuzz ``args.codec`` in this process under the memory cap; one JSON line per target."""
    ids = args.codec
    codec_ids = [c for c in ids if c != "dump"]
    _LAST["path"] = Path(args.last) if args.last else None
    # everything imported and compiled before the cap: numba and LLVM reserve address space
    for cid in codec_ids:
        for cfg, data in seed_streams(cid):
            check_decode(cfg, data)
    cap = None if args.no_memory_limit else limit_memory()
    for cid in ids:
        t = time.perf_counter()
        line = {"target": cid, "memory_limit_bytes": cap}
        try:
            line["regressions"] = replay_regressions([cid])
            if cid == "dump":
                with tempfile.TemporaryDirectory() as tmp:
                    line.update(fuzz_dumps(args.dumps, args.ci, Path(tmp), not args.no_save))
            else:
                line.update(fuzz_codec(cid, args.examples, args.ci, not args.no_save))
        except FuzzFailure as exc:
            line["failure"] = str(exc)
        line["seconds"] = round(time.perf_counter() - t, 2)
        print(json.dumps(line), flush=True)
    return 0


def run(ids, *, examples: int, dumps: int, ci: bool, save: bool = True,
        memory_limit: bool = True, timeout_s: float = 3600) -> dict:
    """Fuzz ``ids`` (codec ids, and ``"dump"`` for the reader) in child processes.

    A child that crashes (an abort or segfault in native code cannot be caught) is
    reported as a failure of the target it was decoding, with that input saved as a
    regression file (not shrunk), and the remaining targets go on in a new child.
    """
    import subprocess

    report: dict = {"targets": {}, "failures": []}
    todo = list(ids)
    t0 = time.perf_counter()
    while todo:
        with tempfile.TemporaryDirectory() as tmp:
            last = Path(tmp) / "last"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--last", str(last),
                   "--examples", str(examples), "--dumps", str(dumps)]
            cmd += ["--ci"] * ci + ["--no-save"] * (not save)
            cmd += ["--no-memory-limit"] * (not memory_limit)
            for cid in todo:
                cmd += ["--codec", cid]
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                  timeout=timeout_s)
            done = []
            for text in proc.stdout.splitlines():
                if text.startswith("{"):
                    line = json.loads(text)
                    done.append(line["target"])
                    report["memory_limit_bytes"] = line.pop("memory_limit_bytes")
                    if "failure" in line:
                        report["failures"].append({"target": line["target"],
                                                   "error": line.pop("failure")})
                    report["targets"][line.pop("target")] = line
            todo = [c for c in todo if c not in done]
            if not todo:
                break
            crashed = todo.pop(0)
            error = (f"the process died (exit status {proc.returncode}) decoding; "
                     f"stderr: {' '.join(proc.stderr.split()[-40:])}")
            if last.exists():
                cfg_line, _, data = last.read_bytes().partition(b"\n")
                cfg = json.loads(cfg_line)
                if save:
                    path = _save(cfg["id"] if crashed != "dump" else "dump", data)
                    path.with_suffix(".json").write_text(json.dumps(cfg) + "\n")
                    error += f" (input saved as {path})"
            report["failures"].append({"target": crashed, "error": error})
    report["seconds"] = round(time.perf_counter() - t0, 2)
    return report


def main(argv=None) -> int:
    from kvinfo.codecs import list_codecs

    ap = argparse.ArgumentParser(description="fuzz every kvinfo decoder and the dump reader")
    ap.add_argument("--ci", action="store_true", help="derandomized (reproducible) examples")
    ap.add_argument("--examples", type=int, default=2000, help="examples per codec")
    ap.add_argument("--dumps", type=int, default=500, help="examples for the dump reader")
    ap.add_argument("--codec", action="append",
                    help="only these codec ids ('dump' for the reader); repeatable")
    ap.add_argument("--no-save", action="store_true", help="do not write regression files")
    ap.add_argument("--no-memory-limit", action="store_true", help="no RLIMIT_AS cap")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--last", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args)
    ids = args.codec or [*list_codecs(), "dump"]
    report = run(ids, examples=args.examples, dumps=args.dumps, ci=args.ci,
                 save=not args.no_save, memory_limit=not args.no_memory_limit)
    print(json.dumps(report, indent=1))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
