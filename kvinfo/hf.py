"""A transformers KV cache that stores every layer's keys and values through a kvinfo codec.

:class:`CompressedCache` is a :class:`transformers.Cache` made of :class:`CompressedLayer`
objects, which are transformers' own :class:`~transformers.cache_utils.DynamicLayer` with the
storage replaced, the way transformers' ``QuantizedLayer`` (KIVI style) does it:

* the most recent tokens stay uncompressed in ``layer.keys`` / ``layer.values`` (the
  *recent window*, ``window`` tokens, at most ``window + block - 1`` between flushes);
* whenever the window holds ``window + block`` tokens, its oldest ``block`` tokens are encoded
  through the codec, one stream per (kind, batch row) of shape ``(kv_heads, block, head_dim)``,
  and dropped from the window;
* the prefill is either compressed at once (``prefill="compress"``: everything but the recent
  window, as one block) or kept uncompressed (``prefill="keep"``: only later tokens are
  compressed; this is what transformers issue 35185 asked for);
* the model attends to exactly what the codec reconstructs. With ``keep_decoded=False``
  (the default: memory holds the streams only) every step decodes every stored block again,
  as ``QuantizedLayer`` re-dequantizes every step; with ``keep_decoded=True`` each block is
  decoded once, when it is encoded, and its decoded keys and values are kept beside the
  streams (a step then codes only newly completed blocks; the held bytes include the
  decoded copies, so this mode saves no memory: it is for quality runs and long
  generations, and gives the model the same tensors bit for bit). The prefill's own forward
  attends to the exact states (as in ``QuantizedLayer`` and in ``kvinfo eval``).

Bytes are *measurements of what the cache object holds*: :attr:`CompressedCache.bytes_held`
(streams, side information included, plus the uncompressed window and, with
``keep_decoded=True``, the decoded copies), :meth:`plain_bytes` (what
a plain cache holding the same tokens would hold, at the model's dtype or a named one) and
:attr:`CompressedCache.peak_bytes` (the largest ``bytes_held`` plus the decoded keys and values
of the layer being updated, over all steps). They count tensor and stream payloads, not Python
object overhead or allocator slack.

Beam search and batches above 1 work: each batch row has its own streams, so reordering beams
(``reorder_cache``), repeating (``batch_repeat_interleave``) or selecting rows moves streams
without re-encoding them. ``crop`` (assisted generation) works within the recent window and
is refused beyond it. Codecs that need more than a layer's keys and values (those that
rematerialize the cache from layer inputs or tokens) are refused.

Supported transformers: 4.56 (the first with cache layers) to 5.x; tested with 5.24
(``pyproject.toml`` pins ``transformers>=4.56,<6``). With transformers 5, pass the cache as
``cache=`` (``past_key_values=`` is deprecated there); :func:`cache_kwargs` picks the name.

Examples
--------
>>> from kvinfo.hf import CompressedCache
>>> cache = CompressedCache({"id": "uniform", "bits": 4, "coder": {"id": "rans"}},
...                         window=64, block=64)
>>> cache.bytes_held, len(cache)
(0, 0)

With a model (not run here)::

    out = model.generate(ids, max_new_tokens=32, **cache_kwargs(model, cache))
    cache.bytes_held, cache.plain_bytes("bfloat16"), cache.peak_bytes
"""

from __future__ import annotations

import contextlib
import inspect

import numpy as np

try:
    from transformers.cache_utils import Cache, DynamicLayer
except ImportError as exc:  # pragma: no cover - only without the capture extra or too old
    raise ImportError(
        "kvinfo.hf needs transformers >=4.56,<6 (cache layers): pip install 'kvinfo[capture]'"
    ) from exc

from .codecs.spec import KINDS, KVCodecSpec
from .errors import CacheInputError, CodecConfigError

__all__ = [
    "CompressedCache",
    "CompressedLayer",
    "CacheInputError",
    "cache_kwargs",
    "cache_argument",
    "cache_spec",
    "keep_torch_threads",
    "MODEL_AWARE_CODEC_IDS",
    "SUPPORTED_TRANSFORMERS",
]

#: the transformers versions CompressedCache supports (the pin in pyproject.toml)
SUPPORTED_TRANSFORMERS = ">=4.56,<6"

#: codec ids that rematerialize the cache from more than K and V (kvinfo.remat)
MODEL_AWARE_CODEC_IDS = frozenset({"xquant", "xquant-cl", "xquant-latent", "latent", "tokens"})

PREFILL_MODES = ("compress", "keep")


@contextlib.contextmanager
def keep_torch_threads():
    """Restore torch's intra-op thread count after the block if something changed it.

    numba's ``omp`` threading layer shares the OpenMP runtime with torch: a parallel numba
    kernel (kvinfo's coders) sets the runtime's thread count to numba's, so after the first
    codec call every later model forward ran on ``NUMBA_NUM_THREADS`` threads (1 in the
    benchmarks) instead of torch's (measured: 2 before a ``rans`` round trip, 1 after).
    Every codec call of :class:`CompressedCache` and :mod:`kvinfo.evaluate` runs inside
    this.
    """
    import torch

    n = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def cache_argument(model) -> str:
    """The name under which ``model``'s forward (and ``generate``) takes a cache.

    ``cache`` since transformers 5 (which deprecates ``past_key_values``), ``past_key_values``
    before.
    """
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - not a python callable
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model, cache) -> dict:
    """``{name: cache}`` for ``model(...)`` / ``model.generate(...)``, without deprecation
    warnings on any supported transformers."""
    return {cache_argument(model): cache}


def _check_model_free(spec: KVCodecSpec) -> None:
    for kind, codec in spec.codecs.items():
        cid = getattr(codec, "codec_id", None)
        if cid in MODEL_AWARE_CODEC_IDS or getattr(codec, "needs_model", False):
            raise CodecConfigError(
                f"codec {cid!r} (for {kind}) rematerializes the cache from the model's layer "
                "inputs or tokens; CompressedCache stores each layer's keys and values only "
                "and cannot run it (use kvinfo eval for model-aware codecs)"
            )


def _remat_ids() -> set:
    from . import remat

    return set(MODEL_AWARE_CODEC_IDS) | set(remat.REMAT_CODECS)


def _refuse_remat_config(codec) -> None:
    if not isinstance(codec, dict):
        return
    configs = [codec] if "id" in codec else [v for v in codec.values() if isinstance(v, dict)]
    for cfg in configs:
        if cfg.get("id") in _remat_ids():
            raise CodecConfigError(
                f"codec {cfg.get('id')!r} rematerializes the cache from the model's layer "
                "inputs or tokens; CompressedCache stores each layer's keys and values only "
                "and cannot run it (use kvinfo eval without --context for model-aware codecs)"
            )


def cache_spec(codec) -> KVCodecSpec:
    """``codec`` validated for :class:`CompressedCache`: a KV codec for keys and values
    that needs nothing but each layer's keys and values (else
    :class:`~kvinfo.errors.CodecConfigError`)."""
    _refuse_remat_config(codec)
    if isinstance(codec, KVCodecSpec):
        spec = codec
        if any(k not in spec.codecs for k in KINDS):
            spec = KVCodecSpec(spec.spec, require=KINDS)
    else:
        spec = KVCodecSpec(codec, require=KINDS)
    _check_model_free(spec)
    return spec


def _int_option(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise CacheInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _to_numpy(t):
    import torch

    x = t.detach().cpu().contiguous()
    if x.dtype == torch.bfloat16:
        import ml_dtypes

        return x.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return x.numpy()


def _from_numpy(a, like):
    import torch

    a = np.ascontiguousarray(a)
    if like.dtype == torch.bfloat16:
        out = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    else:
        out = torch.from_numpy(a)
    return out.to(like.device)


def _bind(codec, layer: int, kind: str, start: int, n: int):
    """``codec`` bound to (layer, kind) and token positions ``[start, start+n)``, if it has
    the slab identity hook."""
    if hasattr(codec, "for_slab"):
        return codec.for_slab(layer, kind, None, positions=start + np.arange(n))
    return codec


class _Block:
    """Tokens ``[start, start + length)`` of one layer: one stream per (kind, batch row)."""

    __slots__ = ("start", "length", "streams")

    def __init__(self, start, length, streams):
        self.start = start
        self.length = length
        self.streams = streams  # {"keys": [bytes per row], "values": [...]}

    @property
    def nbytes(self) -> int:
        return sum(len(s) for rows in self.streams.values() for s in rows)


class CompressedLayer(DynamicLayer):
    """One layer of a :class:`CompressedCache` (see the module docstring).

    ``keys`` / ``values`` hold the uncompressed recent window, as in transformers'
    ``QuantizedLayer``; the older tokens are in codec streams.
    """

    is_croppable = False
    is_compileable = False

    def __init__(self, owner, layer_idx: int):
        super().__init__()
        self._owner = owner
        self.layer_idx = layer_idx
        self.cumulative_length = 0
        self._blocks: list[_Block] = []
        self._like = None  # an empty tensor with the cache's dtype and device
        self._shape = None  # (kv_heads, head_dim)
        self._batch = 0
        self._prefix = None  # (keys, values) of a prefill kept uncompressed
        # keep_decoded: {kind: tensor} of the kept prefill and every decoded block, in order
        self._dec: dict = {}

    # -- storage ------------------------------------------------------------------------
    def _encode(self, keys, values, start: int) -> _Block:
        n = keys.shape[-2]
        streams = {}
        for kind, t in (("keys", keys), ("values", values)):
            codec = _bind(self._owner.spec.codecs[kind], self.layer_idx, kind, start, n)
            arr = _to_numpy(t)
            with keep_torch_threads():
                rows = [codec.encode(np.ascontiguousarray(arr[b])) for b in range(arr.shape[0])]
            streams[kind] = rows
        return _Block(start, n, streams)

    def _decode_block(self, blk: _Block, kind: str):
        """Block ``blk``'s ``kind``, decoded: a tensor ``(batch, kv_heads, length, head_dim)``."""
        import torch

        codec = _bind(self._owner.spec.codecs[kind], self.layer_idx, kind, blk.start,
                      blk.length)
        rows = []
        want = (self._shape[0], blk.length, self._shape[1])
        for s in blk.streams[kind]:
            with keep_torch_threads():
                out = codec.decode(s)
            if tuple(out.shape) != want:
                raise CodecConfigError(
                    f"codec {codec!r} decoded shape {tuple(out.shape)}, expected {want}"
                )
            rows.append(_from_numpy(out, self._like))
        return torch.stack(rows)

    def _head(self, kind) -> list:
        """The tensors before the window, in order: the kept prefill and the decoded blocks
        of ``kind`` (kept ones with ``keep_decoded``, else decoded now)."""
        parts = []
        if self._prefix is not None:
            parts.append(self._prefix[KINDS.index(kind)])
        if self._owner.keep_decoded:
            if kind in self._dec:
                parts.append(self._dec[kind])
        else:
            parts.extend(self._decode_block(blk, kind) for blk in self._blocks)
        return parts

    def _keep(self, blk: _Block) -> None:
        """``keep_decoded``: append block ``blk``, decoded once, to the kept tensors."""
        import torch

        for kind in KINDS:
            new = self._decode_block(blk, kind)
            old = self._dec.get(kind)
            self._dec[kind] = new if old is None else torch.cat([old, new], dim=-2)

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the kept decoded copies of the compressed blocks (``keep_decoded``)."""
        if not self._dec or self._shape is None:
            return 0
        per = self._like.element_size() * self._batch * self._shape[0] * self._shape[1]
        return 2 * per * self.compressed_length

    @property
    def compressed_length(self) -> int:
        """Tokens held in codec streams."""
        return sum(b.length for b in self._blocks)

    @property
    def stream_bytes(self) -> int:
        """Bytes of this layer's codec streams (side information included)."""
        return sum(b.nbytes for b in self._blocks)

    @property
    def bytes_held(self) -> int:
        """Stream bytes plus the uncompressed window (and kept prefill), plus the decoded
        copies with ``keep_decoded``."""
        plain = [self.keys, self.values, *(self._prefix or ())]
        return self.stream_bytes + self.decoded_bytes + sum(
            t.numel() * t.element_size() for t in plain if t is not None
        )

    # -- the transformers layer interface ---------------------------------------------
    def lazy_initialization(self, key_states, value_states) -> None:
        super().lazy_initialization(key_states, value_states)
        self._like = key_states.new_empty(0)
        self._shape = (key_states.shape[1], key_states.shape[-1])

    def update(self, key_states, value_states, *args, **kwargs):
        import torch

        owner = self._owner
        first = not self.is_initialized
        if first:
            self.lazy_initialization(key_states, value_states)
        elif key_states.shape[0] != self._batch:
            raise CacheInputError(
                f"batch size changed from {self._batch} to {key_states.shape[0]}"
            )
        self._batch = key_states.shape[0]
        if first and owner.prefill == "keep":
            self._prefix = (key_states, value_states)
            self.cumulative_length += key_states.shape[-2]
            owner._step(self, key_states, value_states, decoded=False)
            return key_states, value_states
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self.cumulative_length += key_states.shape[-2]
        head_k, head_v = self._head("keys"), self._head("values")
        decoded = bool(head_k)  # keys_out is a fresh tensor beside what is held
        if head_k:
            keys_out = torch.cat([*head_k, self.keys], dim=-2)
            values_out = torch.cat([*head_v, self.values], dim=-2)
        else:
            keys_out, values_out = self.keys, self.values
        self._flush(first)
        owner._step(self, keys_out, values_out, decoded=decoded)
        return keys_out, values_out

    def _flush(self, first: bool) -> None:
        owner = self._owner
        w = self.keys.shape[-2]
        avail = w - owner.window
        if first and owner.prefill == "compress":
            n = max(avail, 0)  # the prefill: everything but the window, as one block
        else:
            n = (avail // owner.block) * owner.block if avail >= owner.block else 0
        if n <= 0:
            return
        start = self.cumulative_length - w
        blk = self._encode(self.keys[:, :, :n], self.values[:, :, :n], start)
        self._blocks.append(blk)
        if owner.keep_decoded:
            self._keep(blk)
        self.keys = self.keys[:, :, n:].contiguous()
        self.values = self.values[:, :, n:].contiguous()

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def reset(self) -> None:
        super().reset()
        self._blocks = []
        self._prefix = None
        self._dec = {}
        self._batch = 0
        self.cumulative_length = 0

    def _rows(self, index) -> None:
        """Keep batch rows ``index`` (a list of ints, repeats allowed), in that order."""
        import torch

        for blk in self._blocks:
            for kind in KINDS:
                rows = blk.streams[kind]
                blk.streams[kind] = [rows[i] for i in index]
        idx = torch.as_tensor(index, dtype=torch.long)
        if self._prefix is not None:
            self._prefix = tuple(t.index_select(0, idx.to(t.device)) for t in self._prefix)
        self._dec = {k: t.index_select(0, idx.to(t.device)) for k, t in self._dec.items()}
        if self.keys is not None and self.keys.dim() == 4:
            self.keys = self.keys.index_select(0, idx.to(self.keys.device))
            self.values = self.values.index_select(0, idx.to(self.values.device))
        self._batch = len(index)

    def reorder_cache(self, beam_idx) -> None:
        """Beam search: streams move with their rows (no re-encoding, no loss)."""
        if self.is_initialized:
            self._rows([int(i) for i in beam_idx.tolist()])

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._rows([i for i in range(self._batch) for _ in range(repeats)])

    def batch_select_indices(self, indices) -> None:
        if not self.is_initialized:
            return
        import torch

        idx = torch.as_tensor(indices)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        self._rows([int(i) for i in idx.tolist()])

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last ``-tokens_to_remove`` tokens (or keep ``tokens_to_remove``
        tokens, if positive), within the uncompressed window only."""
        if not self.is_initialized:
            return
        n = tokens_to_remove if tokens_to_remove < 0 else tokens_to_remove - \
            self.cumulative_length
        n = -n
        if n <= 0:
            return
        w = self.keys.shape[-2] if self.keys.dim() == 4 else 0
        if n > w:
            raise CacheInputError(
                f"CompressedCache can crop only within its uncompressed window "
                f"({w} tokens), asked to remove {n}"
            )
        self.keys = self.keys[..., : w - n, :]
        self.values = self.values[..., : w - n, :]
        self.cumulative_length -= n


class CompressedCache(Cache):
    """A transformers cache storing keys and values through a kvinfo codec.

    Parameters
    ----------
    codec : dict or KVCodecSpec
        Any codec spec ``kvinfo eval --codec`` accepts: ``{"id": ...}`` for both kinds or
        ``{"keys": ..., "values": ...}`` (an allocation plan included). A codec with the
        ``for_slab`` hook is bound to each (layer, kind) and block's token positions.
    window : int
        Recent tokens kept uncompressed (default 128; 0 compresses everything).
    block : int
        Tokens encoded together once the window overflows (default 128).
    prefill : {"compress", "keep"}
        Compress the prompt's cache at once (all but the window), or keep it uncompressed
        and compress generated tokens only.
    keep_decoded : bool
        Keep each block's decoded keys and values once it is encoded (each block is
        decoded once; held bytes include the copies) instead of decoding every block on
        every step (default False: memory holds the streams and the window only). The model
        gets the same tensors either way.
    config : transformers config, optional
        The model's config: creates every layer now and refuses sliding-window layers;
        without it, layers are created on their first update.

    Raises
    ------
    kvinfo.errors.CodecConfigError
        A spec that is not a KV codec for keys and values, or a codec that needs the model
        (rematerialization from layer inputs or tokens).
    CacheInputError
        Bad ``window``, ``block``, ``prefill`` or ``config``.
    """

    def __init__(self, codec, *, window: int = 128, block: int = 128,
                 prefill: str = "compress", keep_decoded: bool = False, config=None):
        spec = cache_spec(codec)
        window = _int_option("window", window, 0)
        block = _int_option("block", block, 1)
        if prefill not in PREFILL_MODES:
            raise CacheInputError(
                f"prefill must be one of {', '.join(PREFILL_MODES)}, got {prefill!r}"
            )
        if not isinstance(keep_decoded, bool):
            raise CacheInputError(f"keep_decoded must be True or False, got {keep_decoded!r}")
        self.spec = spec
        self.keep_decoded = keep_decoded
        self.codec = spec.spec
        self.window = window
        self.block = block
        self.prefill = prefill
        self.peak_bytes = 0
        self._kept: dict[int, int] = {}
        layers = []
        self.num_layers = None
        if config is not None:
            cfg = config.get_text_config(decoder=True) if hasattr(
                config, "get_text_config") else config
            types = getattr(cfg, "layer_types", None) or []
            bad = sorted(set(types) - {"full_attention"})
            if bad:
                raise CacheInputError(
                    f"CompressedCache supports full-attention layers only; the config has "
                    f"{', '.join(bad)} layers"
                )
            self.num_layers = int(cfg.num_hidden_layers)
            layers = [CompressedLayer(self, i) for i in range(self.num_layers)]
        super().__init__(layers=layers)

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        if self.num_layers is not None and layer_idx >= self.num_layers:
            raise CacheInputError(
                f"layer {layer_idx} updated, but the config has {self.num_layers} layers"
            )
        while len(self.layers) <= layer_idx:
            self.layers.append(CompressedLayer(self, len(self.layers)))
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def _step(self, layer, keys_out, values_out, decoded: bool) -> None:
        transient = 0
        if decoded:
            transient = (keys_out.numel() * keys_out.element_size()
                         + values_out.numel() * values_out.element_size())
        self.peak_bytes = max(self.peak_bytes, self.bytes_held + transient)

    def ingest(self, cache) -> CompressedCache:
        """Take a plain cache's tokens (a prefill) as the model's prefill would hand them
        to this cache, layer by layer; this cache must be empty. Returns ``self``."""
        if self.get_seq_length() or any(layer.is_initialized for layer in self.layers):
            raise CacheInputError("ingest needs an empty CompressedCache")
        src = getattr(cache, "layers", None)
        if src is None:
            raise CacheInputError(
                f"ingest takes a transformers cache with .layers, got {type(cache).__name__}"
            )
        for i, layer in enumerate(src):
            self.update(layer.keys, layer.values, i)
        return self

    def compressed_elements(self) -> int:
        """Key and value elements held in codec streams."""
        return sum(2 * layer._batch * layer._shape[0] * layer._shape[1]
                   * layer.compressed_length for layer in self.layers if layer._shape)

    # -- accounting -------------------------------------------------------------------
    @property
    def bytes_held(self) -> int:
        """Bytes held now: codec streams (side information included) and the
        uncompressed window, over every layer (a measurement)."""
        return sum(layer.bytes_held for layer in self.layers)

    @property
    def stream_bytes(self) -> int:
        """Bytes of the codec streams alone."""
        return sum(layer.stream_bytes for layer in self.layers)

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the kept decoded copies (0 unless ``keep_decoded``)."""
        return sum(layer.decoded_bytes for layer in self.layers)

    @property
    def compressed_tokens(self) -> int:
        """Tokens per layer held in codec streams (layer 0)."""
        return self.layers[0].compressed_length if self.layers else 0

    def num_elements(self) -> int:
        """Key and value elements a plain cache holding the same tokens holds."""
        total = 0
        for layer in self.layers:
            if layer._shape is None:
                continue
            h, d = layer._shape
            total += 2 * layer._batch * h * d * layer.cumulative_length
        return total

    def plain_bytes(self, dtype=None) -> int:
        """Bytes a plain cache holding the same tokens holds, at ``dtype``
        (``"bfloat16"``, ``"float16"``, ``"float32"``, or a torch dtype; default the
        dtype of the states this cache got)."""
        sizes = {"bfloat16": 2, "float16": 2, "float32": 4}
        if dtype is None:
            if not self.layers or self.layers[0]._like is None:
                return 0
            size = self.layers[0]._like.element_size()
        elif isinstance(dtype, str):
            if dtype not in sizes:
                raise CacheInputError(
                    f"dtype must be one of {', '.join(sizes)}, got {dtype!r}"
                )
            size = sizes[dtype]
        else:
            size = dtype.itemsize
        return self.num_elements() * size

    def bits_per_element(self) -> float:
        """``8 * bytes_held / num_elements()`` (window included), nan when empty."""
        n = self.num_elements()
        return 8 * self.bytes_held / n if n else float("nan")

    def memory_report(self, dtype="bfloat16") -> dict:
        """Measured bytes: ``bytes_held``, ``stream_bytes``, ``window_bytes``,
        ``decoded_bytes``, ``peak_bytes``, ``plain_bytes`` (at ``dtype``), ``ratio`` (held / plain),
        ``tokens``, ``compressed_tokens``."""
        plain = self.plain_bytes(dtype)
        held = self.bytes_held
        return {
            "bytes_held": held,
            "stream_bytes": self.stream_bytes,
            "window_bytes": held - self.stream_bytes - self.decoded_bytes,
            "decoded_bytes": self.decoded_bytes,
            "peak_bytes": self.peak_bytes,
            "plain_bytes": plain,
            "plain_dtype": dtype if isinstance(dtype, str) else str(dtype),
            "ratio": held / plain if plain else float("nan"),
            "tokens": self.get_seq_length(),
            "compressed_tokens": self.compressed_tokens,
        }

    def reset(self):
        super().reset()
        self._kept = {}
        self.peak_bytes = 0

    def __repr__(self):
        return (f"CompressedCache(codec={self.codec!r}, window={self.window}, "
                f"block={self.block}, prefill={self.prefill!r}, keep_decoded={self.keep_decoded}, "
                f"layers={len(self.layers)})")

