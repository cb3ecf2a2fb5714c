"""Convert a kvdump into a zarr v3 store compressed with any kvinfo codec.

:func:`convert_dump` is what ``kvinfo convert DUMP OUT.zarr --codec SPEC`` runs. Each tensor
dataset (keys, values, and queries / pre-RoPE keys when captured) becomes a zarr array of
shape ``(num_layers, heads, num_tokens, head_dim)`` in the dump's storage dtype (bfloat16 as
uint16 bit patterns), **one chunk per (layer, head) slab**, so that reading one slab
decodes one chunk. The root attributes are the dump's own (``docs/dump-format.md``) plus
``zarr_store`` (codec config, whether it is lossy, the source). :func:`kvinfo.open_dump`
reads the store back as a :class:`~kvinfo.dumps.ZarrDump`.

The codec: an entropy coder (``rans``, ``huffman``, ``arith``, ``constriction-*``) codes
each chunk's bytes after zarr's ``bytes`` codec (bytes-to-bytes, exact); ``lossless`` codes
the floats field by field (array-to-bytes, exact, usually smaller); a lossy codec
(``uniform``, ``ecsq``, ``turbo``, ``klt``) stores its reconstruction (the store then holds
lossy KV; ``zarr_store.lossy`` says so).

Safety: the input is never overwritten (an output that is the input, or contains it, is
refused); the store is written under ``<OUT>.kvinfo-partial-<pid>`` and renamed into place
only when complete, so a failed or interrupted conversion never leaves a store that looks
complete; an existing output is replaced only when it is a kvinfo zarr store.

Examples
--------
>>> import os, tempfile
>>> from kvinfo.dumps import open_dump, write_synthetic_dump
>>> tmp = tempfile.mkdtemp()
>>> src = write_synthetic_dump(os.path.join(tmp, "a.h5"), num_layers=2, num_tokens=64,
...                            head_dim=8)
>>> info = convert_dump(src, os.path.join(tmp, "a.zarr"), {"id": "lossless"})
>>> info["lossy"], info["chunks"]
(False, 16)
>>> with open_dump(src) as a, open_dump(os.path.join(tmp, "a.zarr")) as b:
...     bool((a.raw_bits("keys", 1, 0) == b.raw_bits("keys", 1, 0)).all())
True
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .._paths import check_not_input, partial_name
from ..errors import CodecConfigError, OutputPathError, StorageError
from .numcodecs_codecs import ARRAY_CODEC_IDS, CODER_IDS, NAMESPACE, SELF_CONTAINED_IDS
from .zarr_codecs import zarr_codec

__all__ = ["convert_dump", "check_convert_output", "STORE_FORMAT", "format_summary"]

#: ``zarr_store.format`` of a converted dump
STORE_FORMAT = "kvinfo.kvdump-zarr"
STORE_VERSION = 1

#: chunks (slabs) handed to zarr in one write, so that its encoder threads all have work
_CHUNKS_PER_WRITE = 12
#: and at most this many bytes of KV buffered for one write
_BYTES_PER_WRITE = 64 << 20
#: layers read ahead of the one being written (a layer of the default dump: 2.5 MB)
_READ_AHEAD = 6

#: root attributes that the HDF5 format stores as JSON text
_JSON_ATTRS = ("rope", "capture")


def _codec_config(codec) -> dict:
    if isinstance(codec, str):
        try:
            codec = json.loads(codec)
        except json.JSONDecodeError as exc:
            raise CodecConfigError(f"codec is not valid JSON: {exc.msg}") from None
    if not isinstance(codec, dict) or "id" not in codec:
        raise CodecConfigError(
            f"codec must be one kvinfo codec config with an 'id' (e.g. {{\"id\": \"rans\"}}); "
            f"got {codec!r}"
        )
    cid = str(codec["id"])
    if cid.startswith(NAMESPACE):
        cid = cid[len(NAMESPACE):]
    if cid not in SELF_CONTAINED_IDS:
        raise CodecConfigError(
            f"codec {cid!r} cannot be a storage codec; expected one of "
            f"{', '.join(SELF_CONTAINED_IDS)}"
        )
    return {**codec, "id": cid}


def _is_kvinfo_store(p: Path) -> bool:
    zj = p / "zarr.json"
    if not zj.is_file():
        return False
    try:
        meta = json.loads(zj.read_text())
    except (OSError, ValueError):
        return False
    store = (meta.get("attributes") or {}).get("zarr_store") or {}
    return isinstance(store, dict) and store.get("format") == STORE_FORMAT


def check_convert_output(out, dump, option: str | None = None) -> Path:
    """Refuse an output that is (or contains) the input, or an existing path that is not a
    kvinfo zarr store (never destroyed). Raises :class:`~kvinfo.errors.OutputPathError`."""
    p = Path(out)
    name = f"{option} {p}" if option else str(p)
    check_not_input(p, [dump], option)
    try:
        if Path(dump).resolve().is_relative_to(p.resolve()):
            raise OutputPathError(f"{name}: contains the input {dump}; refusing to overwrite it")
    except OSError:
        pass
    if p.exists():
        if not p.is_dir():
            raise OutputPathError(f"{name}: exists and is a file; expected a zarr store folder")
        if any(p.iterdir()) and not _is_kvinfo_store(p):
            raise OutputPathError(
                f"{name}: exists and is not a kvinfo zarr store; refusing to replace it"
            )
    if not p.parent.exists():
        raise OutputPathError(f"{name}: the folder {p.parent} does not exist")
    return p


def _json_attrs(meta: dict) -> dict:
    out = {}
    for k, v in meta.items():
        if k in _JSON_ATTRS and isinstance(v, dict):
            v = json.dumps(v)
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def convert_dump(dump, out, codec, *, kinds=None, progress: bool = False) -> dict:
    """Write a dump's tensors into a zarr v3 store at ``out``, compressed with ``codec``.

    Parameters
    ----------
    dump : path-like or kvinfo.dumps.Dump
        The source dump (HDF5, or another converted store).
    out : path-like
        The store folder to write (``.zarr`` by convention).
    codec : dict or str
        One kvinfo codec config (``{"id": "rans"}``, ``{"id": "uniform", "bits": 4}``), or its
        JSON text.
    kinds : sequence of str, optional
        Tensor datasets to convert: keys and values, plus any of queries and keys_pre_rope
        (default: every one the dump has).
    progress : bool
        A progress bar on stderr, one step per (kind, layer).

    Returns
    -------
    dict
        ``path``, ``codec`` (full config), ``lossy``, ``chunks``, ``kv_bytes`` (uncompressed
        bytes of the converted tensors), ``store_bytes`` (every file of the store, on disk),
        ``compression_ratio``, ``bits_per_element``, ``seconds`` (wall time of the writing,
        a measurement) and ``kv_mb_per_s`` (``kv_bytes / 1e6 / seconds``).

    Raises
    ------
    CodecConfigError
        A codec that is not a self-contained kvinfo codec, or a bad config.
    OutputPathError
        An output that is the input, contains it, or is an existing non-kvinfo path.
    DumpFormatError
        The input cannot be read.
    """
    import zarr
    from tqdm import tqdm

    from ..codecs import get_codec
    from ..dumps import Dump, open_dump, store_bytes

    cfg = _codec_config(codec)
    kv_codec = get_codec(cfg)  # validates every parameter before any work
    full = kv_codec.get_config()
    lossy = bool(getattr(kv_codec, "lossy", False))
    src_path = dump.path if isinstance(dump, Dump) else Path(dump)
    p = check_convert_output(out, src_path)
    own = not isinstance(dump, Dump)
    d = open_dump(dump) if own else dump
    partial = partial_name(p)
    try:
        sel = list(d.kinds) if kinds is None else list(kinds)
        bad = [k for k in sel if k not in d.kinds]
        if bad or not sel:
            raise StorageError(f"kinds {bad or sel} not in this dump; it has {list(d.kinds)}")
        if not {"keys", "values"} <= set(sel):
            raise StorageError(
                f"kinds {sel}: a store always holds keys and values (a dump does); choose "
                "which of queries and keys_pre_rope to add"
            )
        bf16 = d.dtype == "bfloat16"
        storage = np.dtype(np.uint16) if bf16 else np.dtype(d.dtype)
        if cfg["id"] in CODER_IDS:
            pipe = {"serializer": "auto", "compressors": [zarr_codec(full)]}
        else:
            assert cfg["id"] in ARRAY_CODEC_IDS
            pipe = {"serializer": zarr_codec(full, dtype="bfloat16" if bf16 else None),
                    "compressors": None}
        kv_bytes = 0
        chunks = 0
        shutil.rmtree(partial, ignore_errors=True)
        t0 = time.perf_counter()
        try:
            root = zarr.open_group(str(partial), mode="w-")
            for name, data in (("token_ids", np.asarray(d.token_ids, np.int64)),
                               ("sequence_offsets", np.asarray(d.sequence_offsets, np.int64))):
                a = root.create_array(name, shape=data.shape, dtype="int64",
                                      chunks=data.shape)
                a[:] = data
            steps = [(k, lay) for k in sel for lay in range(d.num_layers)]
            bar = tqdm(total=len(steps), desc="convert", unit="layer", file=sys.stderr,
                       disable=not progress, dynamic_ncols=True)
            arrays = {}
            pending: list = []  # consecutive layers of one kind, written in one call

            def flush():
                if pending:
                    kind, first = pending[0][0], pending[0][1]
                    block = np.stack([x for _, _, x in pending])
                    arrays[kind][first:first + len(pending)] = block
                    pending.clear()

            # the next layers are read on a thread while zarr encodes and writes the
            # current ones (h5py reads and the coders' Numba kernels overlap: both release
            # the GIL), at most _READ_AHEAD layers ahead
            reader = ThreadPoolExecutor(1, thread_name_prefix="kvinfo-convert-read")
            todo = iter(steps)
            ahead: collections.deque = collections.deque()

            def read_ahead():
                while len(ahead) < _READ_AHEAD:
                    step = next(todo, None)
                    if step is None:
                        return
                    ahead.append((step, reader.submit(
                        lambda k, la: np.ascontiguousarray(d.tensor(k, la)), *step)))

            def layers():
                try:
                    read_ahead()
                    while ahead:
                        step, fut = ahead.popleft()
                        t = fut.result()
                        read_ahead()
                        bar.update(1)
                        yield step, t
                finally:
                    for _, fut in ahead:
                        fut.cancel()
                    reader.shutdown(wait=True)

            with contextlib.closing(layers()) as stream:  # the reader stops on error
                for (kind, lay), t in stream:
                    if kind not in arrays:
                        shape = (d.num_layers, *t.shape)
                        arrays[kind] = root.create_array(
                            kind, shape=shape, dtype=storage, chunks=(1, 1, *t.shape[1:]),
                            attributes={"dtype": d.dtype, "axes": "layer,head,token,channel"},
                            # every slab is written: skip zarr's per-chunk comparison with the
                            # fill value (a full pass over each chunk)
                            config={"write_empty_chunks": True},
                            **pipe,
                        )
                    x = t  # contiguous: the reader made it so
                    if pending and pending[0][0] != kind:
                        flush()
                    pending.append((kind, lay, x.view(np.uint16) if bf16 else x))
                    kv_bytes += x.nbytes
                    chunks += t.shape[0]
                    # zarr encodes the chunks of one write concurrently (threads; the coders
                    # release the GIL): write several layers at once so that every core has
                    # chunks to encode, within a bounded buffer
                    if (len(pending) * t.shape[0] >= _CHUNKS_PER_WRITE
                            or len(pending) * x.nbytes >= _BYTES_PER_WRITE):
                        flush()
            flush()
            bar.close()
            attrs = _json_attrs(dict(d.meta))
            attrs[STORE_ATTR] = {
                "format": STORE_FORMAT, "version": STORE_VERSION, "codec": full,
                "zarr_codec": f"{NAMESPACE}{cfg['id']}", "lossy": lossy,
                "kinds": sel, "source": str(src_path),
                "source_format_version": int(d.meta.get("format_version", 1)),
            }
            attrs["complete"] = True  # last: a store without it is refused by the reader
            root.attrs.update(attrs)
            seconds = time.perf_counter() - t0
        except BaseException:
            _remove_partial(partial)
            raise
    finally:
        if own:
            d.close()
    _commit(partial, p)
    size = store_bytes(p)
    itemsize = storage.itemsize
    elements = kv_bytes // itemsize
    return {
        "path": str(p),
        "codec": full,
        "lossy": lossy,
        "chunks": chunks,
        "kv_bytes": int(kv_bytes),
        "store_bytes": int(size),
        "compression_ratio": kv_bytes / size if size else None,
        "bits_per_element": 8.0 * size / elements if elements else None,
        "seconds": seconds,
        "kv_mb_per_s": kv_bytes / 1e6 / seconds if seconds > 0 else None,
    }


STORE_ATTR = "zarr_store"


def _remove_partial(partial: Path, settle_s: float = 0.05, limit_s: float = 5.0) -> None:
    """Remove a failed store. zarr writes chunks concurrently: when one chunk's encode fails,
    chunks already in flight may still land after a first removal and re-create the folder,
    so remove until it stays absent for ``settle_s`` (at most ``limit_s``)."""
    deadline = time.monotonic() + limit_s
    while True:
        shutil.rmtree(partial, ignore_errors=True)
        time.sleep(settle_s)
        if not partial.exists() or time.monotonic() > deadline:
            return


def _commit(partial: Path, p: Path) -> None:
    """Rename the finished store into place; an old kvinfo store there is replaced."""
    old = None
    if p.exists():
        old = p.with_name(f"{p.name}.kvinfo-old-{os.getpid()}")
        os.replace(p, old)
    try:
        os.replace(partial, p)
    except OSError:
        if old is not None:
            os.replace(old, p)
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def format_summary(info: dict) -> str:
    """The line ``kvinfo convert`` prints: size on disk and time, each labelled."""
    ratio = info["compression_ratio"]
    bpe = info["bits_per_element"]
    return (
        f"wrote {info['path']}: {info['store_bytes'] / 1e6:.2f} MB on disk (measurement) from "
        f"{info['kv_bytes'] / 1e6:.2f} MB of KV, {ratio:.2f}x, {bpe:.2f} bits per element"
        f"{' (lossy)' if info['lossy'] else ' (exact)'}; {info['seconds']:.3f} s, "
        f"{info['kv_mb_per_s']:.1f} MB/s of KV (measurement, wall time of the writing)"
    )
