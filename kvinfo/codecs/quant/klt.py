"""``klt``: transform coding of KV (Karhunen-Loeve basis, reverse water-filling, ECSQ).

Each slab ``(tokens, head_dim)`` is coded in an orthonormal basis of its covariance
(principal components, mean removed). The coordinates ``y = V^T (x - mu)`` are nearly
uncorrelated, so the Gaussian rate-distortion function of the slab splits into independent
scalar problems: reverse water-filling gives the water level ``theta`` with
``(1/d) sum_i min(theta, lambda_i) = D``; components with ``lambda_i <= theta`` are dropped
(reconstructed at the mean) and the others share one uniform quantizer step ``Delta``, which
is the high-rate optimum of entropy-coded scalar quantization (ECSQ). The target distortion is
``D = variance_per_element * 10**(-snr_db / 10)``; the encoder adjusts ``Delta`` so that the
measured MSE of the slab is ``D`` (within 0.5 %). The indices ``k`` go through the coder with
one table (or adaptive context) per component: the coded array of a slab is
``(coded tokens, active components)``, so ``{"id": "rans", "per_channel": true}`` (the default)
gives every component its own frequency table and ``{"id": "arith"}`` an adaptive model per
component and previous token (prediction across tokens through the context).

Quantizer details, both choices of the encoder and recorded in the stream:

* ``rounding``: ``k = sign(u) floor(|u| / Delta + rounding)``; 0.5 is plain rounding, smaller
  values widen the zero bin (a deadzone), which saves rate at low rates.
* reconstruction at the centroid: each component stores one offset ``delta`` (int8 / 256 of a
  step) and reconstructs ``sign(k) (|k| - delta) Delta``, the least-squares shift of its
  bins towards zero (``reconstruction="midpoint"`` stores none and uses ``k Delta``).

**Where the basis comes from.** Without ``basis`` the encoder fits it on the slab itself and
stores the mean and the active eigenvectors (``side_dtype``) as side information: about
``16 d / tokens`` bits per element per active component, 0.5 bit per element for a 64 x 64
basis on a 2,000-token slab. With ``basis`` (a file written by ``kvinfo calibrate`` or
:func:`save_klt_bases`) the eigenvectors come from the calibration file, which the decoder
reads too; only the slab's mean (``side_dtype``), its active-component mask and the offsets are
in the stream. The stream records the (layer, kind, head) and a CRC-32 of the basis entries it
used, so a stream decoded against another basis file is refused.

**Which basis: the slab identity hook.** A calibration file holds one basis per (layer, kind,
head), and ``encode(array)`` sees only an array. Callers that know where the array comes from
bind it first with :meth:`KltCodec.for_slab` ``(layer, kind, head=None, positions=None,
token_ids=None)``, which returns a bound copy (same config). ``head=None`` means the leading
axis of the array enumerates the KV heads (what ``kvinfo eval`` passes: one layer per call);
``positions`` are the tokens' positions in their sequences (attention sinks and RoPE use
them; default ``0, 1, ...``); ``token_ids`` let the codec refuse a basis that was fitted on the
very tokens it is asked to code (bench does this: a basis is never tested on its own
calibration data). ``kvinfo bench`` and ``kvinfo eval`` call the hook for every codec that has
it; it is a no-op for an in-stream basis except for positions.

**Keys before RoPE.** With ``rope_theta`` set, keys (kind ``"keys"`` or an unbound array) are
rotated back into the pre-RoPE frame (Llama ``rotate_half`` convention, ``inv_freq_i =
theta**(-2i/d)``) at their positions before the transform, and rotated forward again after
decoding; the distortion is that of the keys the cache holds (the rotation is orthogonal per
token, so the MSE is the same in both frames). A calibrated codec then uses the file's
``keys_pre_rope`` bases. The positions are stored in the stream as runs (side information).

**Attention sinks and a recent window.** The rows whose position is below ``sink_tokens`` and
the last ``recent_tokens`` rows of each slab are stored verbatim in the input dtype (side
information, counted in the rate) and not transformed.

**Symbol model.** ``symbol_model="auto"`` (the default) codes each slab's indices twice, with
the configured coder and with a discretised logistic per component (one byte of scale per
component, 16-bit rANS tables built with IEEE basic operations only so that every machine
builds the same ones), and keeps the shorter; ``"coder"`` and ``"logistic"`` force one. The
adaptive coders pay a learning cost that grows with the alphabet (about 0.05 to 0.1 bit per
element at 30 dB on SmolLM2); the logistic costs one byte per component.

Stream versions: 1 (the parameter block without its last byte, coder sections only, Givens
rotations as byte triples with ``code / 127``) is still decoded; 2 is written.

Stream sections (container of :mod:`kvinfo.codecs.quant._base`, codec tag 5)::

    params  "<dddBBBBBBBiiiIB": step Delta (float64), rounding (float64), rope_theta (float64, 0 =
            off), mode (0 in-stream, 1 calibrated, 2 calibrated and refined by Givens
            rotations), reconstruction (0 midpoint, 1 centroid),
            side dtype (1 float16, 3 float32), kind (0 keys, 1 values, 2 unbound, 3 pre-RoPE
            keys), RoPE inverse-frequency dtype (1 float32, 2 bfloat16, 3 float16; 0 off),
            prediction (0 none, 1 lag-1), metric (0 MSE, 1 attention),
            layer (int32, -1 unbound), head (int32, -1: the leading axis is the head),
            token count per slab kept verbatim at the end (recent_tokens), basis CRC-32,
            klt stream version (uint8, 2; absent in version 1)
    side    verbatim rows: uint32 row indices into (slabs * tokens), ascending
    side    their values, input dtype, (rows, head_dim)
    side    position runs: uint32 pairs (first row of the run, its position) (RoPE or
            prediction only; empty otherwise)
    side    active-component masks: packed bits, slabs x head_dim (components in basis order)
    side    per-slab means, side dtype, (slabs, head_dim)
    side    in-stream bases: for each slab its active eigenvectors, side dtype, (head_dim, m)
    side    centroid offsets: int8 per active component, all slabs concatenated
    side    per-slab steps, float64
    side    lag-1 prediction coefficients: int8 / 127 per active component (lag-1 only)
    side    (mode 2 only) Givens rotations: per slab a uint16 count, then per rotation the
            components i < j (ceil(log2 head_dim) bits each) and the angle code plus 63
            (7 bits, angle code/63 pi/4), bit-packed most significant bit first and padded
            to a byte (version 1: uint8, uint8, int8 with code/127); the basis is the
            calibrated one with columns i, j rotated in order
    then per slab one section: coded symbols int32 (coded tokens, m), either the coder's
            stream or a logistic-model section (``KLTL``, see :data:`LOGISTIC_MAGIC` and
            docs/codecs.md), or an empty side section when the slab has no active component

References
----------
V. K. Goyal, "Theoretical foundations of transform coding", IEEE Signal Processing Magazine
18(5), 2001. T. M. Cover, J. A. Thomas, *Elements of Information Theory*, 2nd ed., section
10.3.3 (reverse water-filling). G. J. Sullivan, "Efficient scalar quantization of exponential
and Laplacian random variables", IEEE Trans. IT 42(5), 1996 (deadzone and centroid
reconstruction). K. Staniszewski, A. Lancucki et al., "KV Cache Transform Coding for Compact
Storage in LLM Inference" (KVTC), arXiv:2511.01815, 2025.

Examples
--------
>>> import numpy as np
>>> from kvinfo.codecs import get_codec
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((2048, 16)) @ rng.standard_normal((16, 16))
>>> codec = get_codec({"id": "klt", "snr_db": 20})
>>> y = codec.decode(codec.encode(x))
>>> snr = 10 * np.log10(np.mean(np.var(x, axis=0)) / np.mean((x - y) ** 2))
>>> bool(19.8 < snr < 20.2)
True
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numba
import numpy as np

from ...errors import CodecConfigError, CorruptStreamError
from ...kernels import cpu
from ..abc import Codec, RateBreakdown
from ..registry import register_codec
from ._base import (
    CODED,
    DTYPE_CODES,
    SIDE,
    SIDE_DTYPES,
    QuantCodec,
    Section,
    as_slabs,
    build_stream,
    check_float_array,
    finite_side,
    round_side,
    side_array,
    to_le_bytes,
    to_output,
    unpack_params,
)

__all__ = [
    "KltCodec",
    "KltBases",
    "BASIS_FORMAT",
    "BASIS_VERSION",
    "BASIS_KINDS",
    "fit_klt_bases",
    "save_klt_bases",
    "load_klt_bases",
    "water_level_from_eigenvalues",
    "rope_rotate",
    "sequence_fingerprints",
    "STREAM_VERSION",
    "LOGISTIC_MAGIC",
    "ANGLE_BITS",
    "rotation_bits",
]

_PARAMS_V1 = "<dddBBBBBBBiiiI"
_PARAMS = _PARAMS_V1 + "B"  # version 2 and later: the klt stream version last
#: klt stream version written (1: no version byte, every index section the coder's;
#: 2: index sections may be logistic-model sections, see ``symbol_model``)
STREAM_VERSION = 2
_SYMBOL_MODELS = ("auto", "coder", "logistic")
_KINDS = ("keys", "values", None, "keys_pre_rope")  # stream kind codes 0..3
_RECON = ("midpoint", "centroid")
_PREDICT = ("none", "lag1")
_METRICS = ("mse", "attention")
_ROPE_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
_ROPE_CODES = ("auto", "float32", "bfloat16", "float16")
MAX_SLABS = 240  # one coded section per slab; the container holds at most 255 sections
MAX_INDEX = 1 << 15  # |k| bound: the coder's alphabet is at most 65536 symbols
BASIS_FORMAT = "kvinfo-klt-basis"
BASIS_VERSION = 1
#: the kinds a calibration file holds bases for (``keys_pre_rope`` when it could be made)
BASIS_KINDS = ("keys", "values", "keys_pre_rope")


# ---------------------------------------------------------------------------------------
# math helpers
# ---------------------------------------------------------------------------------------
def water_level_from_eigenvalues(eigenvalues, mse: float) -> float:
    """The water level ``theta`` with ``mean(min(theta, lambda_i)) = mse``.

    ``mse`` at or above the mean eigenvalue gives ``max(lambda)`` (every component dropped).

    Examples
    --------
    >>> water_level_from_eigenvalues([4.0, 1.0, 0.25, 0.0], 0.5)  # (2 theta + 0.25) / 4
    0.875
    """
    lam = np.sort(np.maximum(np.asarray(eigenvalues, dtype=np.float64).ravel(), 0.0))
    d = lam.size
    if d == 0 or mse <= 0:
        return 0.0
    if mse >= lam.mean():
        return float(lam[-1])
    # with the k smallest dropped: (sum(lam[:k]) + (d - k) theta) / d = mse, lam[k-1] <= theta
    csum = np.concatenate([[0.0], np.cumsum(lam)])
    for k in range(d):
        theta = (d * mse - csum[k]) / (d - k)
        lo = lam[k - 1] if k else 0.0
        if lo <= theta <= lam[k]:
            return float(theta)
    return float(lam[-1])  # pragma: no cover - the loop always finds the segment


def rope_rotate(
    x: np.ndarray, positions: np.ndarray, theta: float, inverse: bool = False,
    inv_freq_dtype: str = "float32",
):
    """Apply (or undo) the rotary embedding, Llama ``rotate_half`` convention.

    ``x`` is ``(..., tokens, head_dim)`` float64 with an even ``head_dim``; ``positions`` has
    one entry per token. ``inverse=True`` rotates post-RoPE keys back to the pre-RoPE frame.
    The inverse frequencies ``theta**(-2i/d)`` are computed in float32 and rounded to
    ``inv_freq_dtype``: a transformers model cast to bfloat16 holds them in bfloat16 (its
    ``inv_freq`` buffer is cast with the weights), which moves the angles by up to 1e-3
    radian per position -- several percent of the keys after a few hundred tokens.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((5, 8))
    >>> p = np.arange(5)
    >>> back = rope_rotate(rope_rotate(x, p, 1e4), p, 1e4, inverse=True)
    >>> bool(np.allclose(back, x))
    True
    """
    d = x.shape[-1]
    half = d // 2
    cos, sin = _rope_cos_sin(np.asarray(positions, dtype=np.float64), float(theta), d,
                             inv_freq_dtype)
    if inverse:
        sin = -sin
    x1, x2 = x[..., :half], x[..., half:]
    out = np.empty(np.broadcast_shapes(x.shape, cos.shape[:-1] + (d,)), np.float64)
    np.subtract(x1 * cos, x2 * sin, out=out[..., :half])
    np.add(x2 * cos, x1 * sin, out=out[..., half:])
    return out


_ROPE_CACHE: dict = {}
_ROPE_LOCK = threading.Lock()


def _rope_cos_sin(pos: np.ndarray, theta: float, d: int, inv_freq_dtype: str):
    """``cos, sin`` of the RoPE angles ``(tokens, d/2)``; the last few are cached (one cache
    holds many layers and heads at the same positions)."""
    key = (theta, d, inv_freq_dtype, pos.tobytes())
    with _ROPE_LOCK:
        hit = _ROPE_CACHE.get(key)
    if hit is not None:
        return hit
    inv = (1.0 / (np.float32(theta) ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d))))
    inv_freq = inv.astype(np.float32).astype(_ROPE_DTYPES[inv_freq_dtype]).astype(np.float64)
    ang = pos[:, None] * inv_freq[None, :]
    out = (np.cos(ang), np.sin(ang))
    for a in out:
        a.setflags(write=False)
    with _ROPE_LOCK:
        if len(_ROPE_CACHE) >= 8:
            _ROPE_CACHE.pop(next(iter(_ROPE_CACHE)))
        _ROPE_CACHE[key] = out
    return out


def sequence_fingerprints(token_ids, offsets) -> list[str]:
    """SHA-256 (hex, first 16 characters) of each sequence's token ids (int64 little-endian)."""
    ids = np.asarray(token_ids, dtype="<i8")
    offs = np.asarray(offsets, dtype=np.int64)
    return [
        hashlib.sha256(ids[offs[i] : offs[i + 1]].tobytes()).hexdigest()[:16]
        for i in range(len(offs) - 1)
    ]


def _runs(positions: np.ndarray) -> np.ndarray:
    """``(first row, position)`` of each run of consecutive positions, uint32 pairs."""
    p = np.asarray(positions, dtype=np.int64)
    starts = np.concatenate([[0], np.nonzero(np.diff(p) != 1)[0] + 1]) if p.size else np.zeros(0)
    starts = starts.astype(np.int64)
    return np.stack([starts, p[starts]], axis=1).astype(np.uint32)


def _positions_from_runs(runs: np.ndarray, tokens: int) -> np.ndarray:
    rows = runs[:, 0].astype(np.int64)
    if rows.size == 0 or rows[0] != 0 or np.any(np.diff(rows) <= 0) or rows[-1] >= tokens:
        raise CorruptStreamError("klt: bad RoPE position runs in stream")
    lengths = np.diff(np.concatenate([rows, [tokens]]))
    base = np.repeat(runs[:, 1].astype(np.int64) - rows, lengths)
    return base + np.arange(tokens)


# ---------------------------------------------------------------------------------------
# calibration files
# ---------------------------------------------------------------------------------------
@dataclass
class KltBases:
    """Per-(layer, kind, head) PCA bases of a calibration dump.

    Attributes
    ----------
    means : dict
        kind -> float32 ``(layers, heads, head_dim)``.
    eigenvectors : dict
        kind -> float16 ``(layers, heads, head_dim, head_dim)``; column ``j`` of
        ``[layer, head]`` is the component with the ``j``-th largest eigenvalue.
    eigenvalues : dict
        kind -> float32 ``(layers, heads, head_dim)``, descending.
    meta : dict
        Provenance: model, weights checksum, source dump, tokens, sequence fingerprints, rope.
    """

    means: dict
    eigenvectors: dict
    eigenvalues: dict
    meta: dict
    path: str | None = None
    #: kind -> float32 ``(layers, heads, d, d)``: ``W = M^(1/2)``, ``M`` the query second moment
    attention_weights: dict | None = None
    #: kind -> float16 ``(layers, heads, d, d)``: eigenvectors of ``W S W`` (descending)
    attention_eigenvectors: dict | None = None

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in BASIS_KINDS if k in self.eigenvectors)

    def entry(self, kind: str, layer: int, head: int):
        """``(mean float64 (d,), eigenvectors float64 (d, d), crc32)`` of one slab."""
        if kind not in self.eigenvectors:
            hint = " (calibrate on a dump captured with --pre-rope)" if "pre" in kind else ""
            raise CodecConfigError(
                f"klt: basis file {self.path} has no {kind!r} bases{hint}; it has "
                f"{list(self.kinds)}"
            )
        nl, nh = self.eigenvectors[kind].shape[:2]
        if not (0 <= layer < nl and 0 <= head < nh):
            raise CodecConfigError(
                f"klt: basis file {self.path} has layers 0..{nl - 1} and heads 0..{nh - 1} for "
                f"{kind}; asked for layer {layer} head {head}"
            )
        mu = self.means[kind][layer, head]
        v = self.eigenvectors[kind][layer, head]
        lam = self.eigenvalues[kind][layer, head]
        crc = zlib.crc32(mu.tobytes())
        crc = zlib.crc32(v.tobytes(), crc)
        crc = zlib.crc32(lam.tobytes(), crc) & 0xFFFFFFFF
        return mu.astype(np.float64), v.astype(np.float64), crc

    def attention_entry(self, kind: str, layer: int, head: int):
        """``(W float64 (d, d), U float64 (d, d), crc32)`` of the attention metric of a slab."""
        if not self.attention_weights or kind not in self.attention_weights:
            raise CodecConfigError(
                f"klt: basis file {self.path} has no attention metric for {kind!r} (calibrate "
                "on a dump captured with --queries)"
            )
        self.entry(kind, layer, head)  # range checks
        w = self.attention_weights[kind][layer, head]
        u = self.attention_eigenvectors[kind][layer, head]
        crc = zlib.crc32(u.tobytes(), zlib.crc32(w.tobytes())) & 0xFFFFFFFF
        return w.astype(np.float64), u.astype(np.float64), crc

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays (what the calibration costs once per model)."""
        dicts = [self.means, self.eigenvectors, self.eigenvalues,
                 self.attention_weights or {}, self.attention_eigenvectors or {}]
        return int(sum(a.nbytes for d in dicts for a in d.values()))


def _pca(x: np.ndarray):
    x = np.asarray(x, dtype=np.float64)
    mu = x.mean(axis=0)
    c = np.cov(x - mu, rowvar=False, bias=True)
    w, v = np.linalg.eigh(np.atleast_2d(c))
    order = np.argsort(-w, kind="stable")
    return mu, v[:, order], np.maximum(w[order], 0.0)


def fit_klt_bases(dump, layers=None, progress: bool = False) -> KltBases:
    """Fit the per-(layer, kind, head) bases of a dump (an open :class:`~kvinfo.dumps.Dump`).

    Kinds: ``keys``, ``values`` and ``keys_pre_rope`` (taken from the dump when it was captured
    with ``--pre-rope``, else computed from the keys with the dump's ``rope_theta`` when its
    RoPE has no scaling; otherwise left out).
    """
    nl, nh, d = dump.num_layers, dump.num_kv_heads, dump.head_dim
    layers = list(range(nl)) if layers is None else list(layers)
    rope = dump.meta.get("rope") or {}
    if isinstance(rope, str):
        rope = json.loads(rope)
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    plain_rope = isinstance(rope, dict) and rope.get("rope_type", "default") in ("default", None)
    kinds = ["keys", "values"]
    if "keys_pre_rope" in dump.kinds or (theta and plain_rope and d % 2 == 0):
        kinds.append("keys_pre_rope")
    pos = dump.positions()
    group = dump.num_heads // nh
    akinds = []
    if "queries" in dump.kinds:  # queries rotate back to the pre-RoPE frame only with a theta
        akinds = [k for k in kinds if k == "keys" or (k == "keys_pre_rope" and theta
                                                       and plain_rope and d % 2 == 0)]
    rdt = dump.dtype if dump.dtype in _ROPE_DTYPES else "float32"
    aw = {k: np.zeros((nl, nh, d, d), np.float32) for k in akinds}
    au = {k: np.zeros((nl, nh, d, d), np.float16) for k in akinds}
    means = {k: np.zeros((nl, nh, d), np.float32) for k in kinds}
    vecs = {k: np.zeros((nl, nh, d, d), np.float16) for k in kinds}
    vals = {k: np.zeros((nl, nh, d), np.float32) for k in kinds}
    for lay in layers:
        for h in range(nh):
            for k in kinds:
                if k == "keys_pre_rope" and "keys_pre_rope" not in dump.kinds:
                    x = rope_rotate(
                        dump.slab("keys", lay, h).astype(np.float64), pos, theta, True,
                        dump.dtype if dump.dtype in _ROPE_DTYPES else "float32",
                    )
                else:
                    x = dump.slab(k, lay, h).astype(np.float64)
                mu, v, w = _pca(x)
                means[k][lay, h] = mu
                vecs[k][lay, h] = v
                vals[k][lay, h] = w
                if k in akinds:
                    q = dump.queries(lay)[h * group : (h + 1) * group].astype(np.float64)
                    if k == "keys_pre_rope":  # q . R_t k = (R_t^T q) . k
                        q = rope_rotate(q, pos, theta, True, rdt)
                    q2 = q.reshape(-1, d)
                    wm = _sqrtm(q2.T @ q2 / q2.shape[0])
                    c = np.cov(x, rowvar=False, bias=True)
                    ev, ub = np.linalg.eigh(wm @ c @ wm)
                    aw[k][lay, h] = wm
                    au[k][lay, h] = ub[:, np.argsort(-ev, kind="stable")]
    meta = {
        "format": BASIS_FORMAT,
        "version": BASIS_VERSION,
        "model": dump.meta.get("model"),
        "weights_checksum": dump.meta.get("weights_checksum"),
        "source_dump": str(dump.path),
        "dtype": dump.dtype,
        "num_tokens": int(dump.num_tokens),
        "layers_fitted": layers,
        "head_dim": d,
        "rope": rope,
        "sequence_fingerprints": sequence_fingerprints(dump.token_ids, dump.sequence_offsets),
    }
    return KltBases(means, vecs, vals, meta, attention_weights=aw or None,
                    attention_eigenvectors=au or None)


def _sqrtm(m: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix, eigenvalues floored at 1e-6 of the largest (so
    that ``W`` is invertible: a direction no query reads is weighted, not discarded)."""
    w, v = np.linalg.eigh(0.5 * (m + m.T))
    w = np.maximum(w, 1e-6 * max(float(w[-1]), 1e-300))
    return (v * np.sqrt(w)) @ v.T


def save_klt_bases(bases: KltBases, path) -> Path:
    """Write a calibration file (``.npz``) atomically: a temporary name, renamed on success.

    Layout (numpy ``.npz``, no pickles): ``meta`` (JSON text, with ``format`` and ``version``)
    and for each kind ``K``: ``K.mean`` float32 ``(layers, heads, d)``, ``K.eigenvectors``
    float16 ``(layers, heads, d, d)`` (columns by descending eigenvalue), ``K.eigenvalues``
    float32 ``(layers, heads, d)``.
    """
    path = Path(path)
    arrays = {"meta": np.array(json.dumps(bases.meta, sort_keys=True))}
    for k in bases.kinds:
        arrays[f"{k}.mean"] = bases.means[k]
        arrays[f"{k}.eigenvectors"] = bases.eigenvectors[k]
        arrays[f"{k}.eigenvalues"] = bases.eigenvalues[k]
    for k in (bases.attention_weights or {}):
        arrays[f"{k}.attention_weight"] = bases.attention_weights[k]
        arrays[f"{k}.attention_eigenvectors"] = bases.attention_eigenvectors[k]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def load_klt_bases(path) -> KltBases:
    """Read a calibration file written by :func:`save_klt_bases` (cached by path and mtime).

    Raises
    ------
    CodecConfigError
        Missing or unreadable file, another format or version, inconsistent arrays.
    """
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise CodecConfigError(f"klt: basis file {path}: {exc.strerror or exc}") from None
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    bad = f"klt: {path} is not a kvinfo calibration file (write one with kvinfo calibrate)"
    try:
        with np.load(p, allow_pickle=False) as z:
            files = set(z.files)
            if "meta" not in files:
                raise CodecConfigError(bad)
            meta = json.loads(str(z["meta"]))
            data = {n: z[n] for n in files if n != "meta"}
    except CodecConfigError:
        raise
    except (OSError, ValueError, EOFError, KeyError, json.JSONDecodeError, zlib.error):
        raise CodecConfigError(bad) from None
    except Exception:  # zipfile.BadZipFile and friends
        raise CodecConfigError(bad) from None
    if not isinstance(meta, dict) or meta.get("format") != BASIS_FORMAT:
        raise CodecConfigError(bad)
    if meta.get("version") != BASIS_VERSION:
        raise CodecConfigError(
            f"klt: {path} is calibration format version {meta.get('version')}; this kvinfo "
            f"reads version {BASIS_VERSION}"
        )
    means, vecs, vals = {}, {}, {}
    for k in BASIS_KINDS:
        names = [f"{k}.mean", f"{k}.eigenvectors", f"{k}.eigenvalues"]
        if not any(n in data for n in names):
            continue
        if not all(n in data for n in names):
            raise CodecConfigError(f"klt: {path}: incomplete bases for {k}")
        mu, v, w = (data[n] for n in names)
        if (
            mu.ndim != 3 or v.ndim != 4 or w.shape != mu.shape
            or v.shape != mu.shape + (mu.shape[-1],)
            or not all(np.all(np.isfinite(a.astype(np.float64))) for a in (mu, v, w))
        ):
            raise CodecConfigError(f"klt: {path}: bad {k} basis arrays")
        means[k] = mu.astype(np.float32)
        vecs[k] = v.astype(np.float16)
        vals[k] = w.astype(np.float32)
    if not vecs:
        raise CodecConfigError(f"klt: {path} holds no bases")
    aw, au = {}, {}
    for k in vecs:
        wn, un = f"{k}.attention_weight", f"{k}.attention_eigenvectors"
        if wn in data or un in data:
            if not (wn in data and un in data) or data[wn].shape != vecs[k].shape \
                    or data[un].shape != vecs[k].shape \
                    or not np.all(np.isfinite(data[wn].astype(np.float64))) \
                    or not np.all(np.isfinite(data[un].astype(np.float64))):
                raise CodecConfigError(f"klt: {path}: bad {k} attention metric arrays")
            aw[k] = data[wn].astype(np.float32)
            au[k] = data[un].astype(np.float16)
    out = KltBases(means, vecs, vals, meta, path=str(path), attention_weights=aw or None,
                   attention_eigenvectors=au or None)
    with _CACHE_LOCK:
        _CACHE[key] = out
    return out


# ---------------------------------------------------------------------------------------
# quantizer
# ---------------------------------------------------------------------------------------
def _quantize(u: np.ndarray, step: float, rounding: float) -> np.ndarray:
    a = np.floor(np.abs(u) / step + rounding)
    return (np.sign(u) * a).astype(np.int64)


def _offsets(u: np.ndarray, k: np.ndarray, step: float) -> np.ndarray:
    """Per-column least-squares shift of the nonzero bins towards zero, int8 / 256 of a step."""
    nz = k != 0
    cnt = nz.sum(axis=0)
    num = np.where(nz, np.abs(k) - np.abs(u) / step, 0.0).sum(axis=0)
    delta = np.where(cnt > 0, num / np.maximum(cnt, 1), 0.0)
    return np.clip(np.rint(delta * 256.0), -128, 127).astype(np.int8)


def _dequantize(k: np.ndarray, step: float, offsets: np.ndarray | None) -> np.ndarray:
    kf = k.astype(np.float64)
    if offsets is None:
        return kf * step
    delta = offsets.astype(np.float64) / 256.0
    return np.sign(kf) * np.maximum(np.abs(kf) - delta[None, :], 0.0) * step


@numba.njit(cache=True)
def _dpcm_encode(y, rho, reset, step, rounding, delta):  # pragma: no cover - compiled
    t, m = y.shape
    k = np.zeros((t, m), np.int64)
    yh = np.zeros((t, m))
    r = np.zeros((t, m))
    for i in range(t):
        for j in range(m):
            pred = 0.0 if reset[i] else rho[j] * yh[i - 1, j]
            u = y[i, j] - pred
            a = math.floor(abs(u) / step + rounding)
            q = a if u > 0 else (-a if u < 0 else 0.0)
            rec = max(a - delta[j], 0.0) * step if a > 0 else 0.0
            yh[i, j] = pred + (rec if u > 0 else -rec)
            r[i, j] = u
            k[i, j] = int(q)
    return k, yh, r


@numba.njit(cache=True)
def _dpcm_decode(k, rho, reset, step, delta):  # pragma: no cover - compiled
    t, m = k.shape
    yh = np.zeros((t, m))
    for i in range(t):
        for j in range(m):
            pred = 0.0 if reset[i] else rho[j] * yh[i - 1, j]
            q = k[i, j]
            a = abs(q)
            rec = max(a - delta[j], 0.0) * step if a > 0 else 0.0
            yh[i, j] = pred + (rec if q > 0 else -rec)
    return yh


_ROT_DTYPE = np.dtype([("i", "u1"), ("j", "u1"), ("code", "i1")])  # stream version 1
#: bits of a version-1 rotation (two component indices and the angle code, one byte each)
ROTATION_BITS = 8 * _ROT_DTYPE.itemsize
#: version 2: the angle code has this many bits (``code / (2**(bits-1) - 1) * pi/4``), the
#: indices ``ceil(log2 head_dim)`` bits each, bit-packed
ANGLE_BITS = 7
_ANGLE_MAX_V1 = 127
_ANGLE_MAX = (1 << (ANGLE_BITS - 1)) - 1


def _index_bits(d: int) -> int:
    return max(1, math.ceil(math.log2(d)))


def rotation_bits(d: int) -> int:
    """Bits one stored Givens rotation costs in a version-2 stream of ``head_dim`` ``d``."""
    return 2 * _index_bits(d) + ANGLE_BITS


def _givens_fit(y: np.ndarray, noise: float, max_rotations: int):
    """Greedy Jacobi rotations that decorrelate the coordinates ``y`` (rows = tokens).

    Works on ``C = y^T y / n + noise I`` (the quantization noise ``noise`` per component
    discounts the correlation of weak components). Each step rotates the pair with the
    largest Gaussian decorrelation gain ``n/2 log2(1 / (1 - rho^2))`` bits by the Jacobi
    angle, quantized to ``code / A * pi / 4`` (``A = 2**(ANGLE_BITS - 1) - 1``); it stops
    when a rotation would save less than its own cost (:func:`rotation_bits`) or after
    ``max_rotations``. Returns ``(i, j, code)`` int64 arrays.
    """
    n, d = y.shape
    empty = (np.zeros(0, np.int64),) * 3
    if d < 2 or n < 2 or max_rotations <= 0 or d > 256:
        return empty
    cc = (y.T @ y) / n + noise * np.eye(d)
    # gain > cost  <=>  1 - rho^2 < 2^(-2 cost / n)
    r2_min = 1.0 - 2.0 ** (-2.0 * rotation_bits(d) / n)
    return _givens_kernel(np.ascontiguousarray(cc), int(max_rotations), r2_min, _ANGLE_MAX)


def _pack_rotations(rots, d: int) -> bytes:
    """One slab's rotations, version 2: uint16 count, then per rotation ``i``, ``j`` (index
    bits each) and ``code + A`` (:data:`ANGLE_BITS`), most significant bit first, padded to a
    byte."""
    ii, jj, codes = rots
    head = struct.pack("<H", ii.size)
    if not ii.size:
        return head
    b = _index_bits(d)
    fields = [(ii, b), (jj, b), (codes + _ANGLE_MAX, ANGLE_BITS)]
    bits = np.concatenate(
        [((v[:, None] >> np.arange(w - 1, -1, -1)) & 1) for v, w in fields], axis=1)
    return head + np.packbits(bits.astype(np.uint8).reshape(-1)).tobytes()


@numba.njit(cache=True)
def _givens_kernel(cc, max_rot, r2_min, amax):  # pragma: no cover - compiled
    d = cc.shape[0]
    ii = np.zeros(max_rot, np.int64)
    jj = np.zeros(max_rot, np.int64)
    codes = np.zeros(max_rot, np.int64)
    r2 = np.zeros((d, d))
    for a in range(d):
        for b in range(a + 1, d):
            r2[a, b] = cc[a, b] * cc[a, b] / max(cc[a, a] * cc[b, b], 1e-300)
    cnt = 0
    q = math.pi / 4.0
    while cnt < max_rot:
        best, bi, bj = -1.0, 0, 1
        for a in range(d):
            for b in range(a + 1, d):
                if r2[a, b] > best:
                    best, bi, bj = r2[a, b], a, b
        if best < r2_min:
            break
        den = cc[bj, bj] - cc[bi, bi]
        if den != 0.0:
            th = 0.5 * math.atan(2.0 * cc[bi, bj] / den)
        else:
            th = q if cc[bi, bj] > 0 else -q
        code = int(round(th / q * amax))
        code = max(-amax, min(amax, code))
        if code == 0:
            break
        ii[cnt], jj[cnt], codes[cnt] = bi, bj, code
        cnt += 1
        t = code / amax * q
        c, s = math.cos(t), math.sin(t)
        for k in range(d):
            xi, xj = cc[k, bi], cc[k, bj]
            cc[k, bi] = c * xi - s * xj
            cc[k, bj] = s * xi + c * xj
        for k in range(d):
            xi, xj = cc[bi, k], cc[bj, k]
            cc[bi, k] = c * xi - s * xj
            cc[bj, k] = s * xi + c * xj
        for k in range(d):
            for m in (bi, bj):
                a, b = (k, m) if k < m else (m, k)
                if a != b:
                    r2[a, b] = cc[a, b] * cc[a, b] / max(cc[a, a] * cc[b, b], 1e-300)
    return ii[:cnt], jj[:cnt], codes[:cnt]


def _parse_rotations(buf: bytes, slabs: int, d: int, version: int) -> list:
    """The per-slab rotations ``(i, j, code, A)`` of a mode-2 stream (uint16 count, then
    the rotations: byte triples in version 1, bit-packed in version 2)."""
    out, pos, buf = [], 0, bytes(buf)
    b = _index_bits(d)
    for _ in range(slabs):
        if pos + 2 > len(buf):
            raise CorruptStreamError("klt: truncated Givens rotation section")
        (cnt,) = struct.unpack_from("<H", buf, pos)
        pos += 2
        if version == 1:
            end = pos + cnt * _ROT_DTYPE.itemsize
            if end > len(buf):
                raise CorruptStreamError("klt: truncated Givens rotation section")
            r = np.frombuffer(buf[pos:end], _ROT_DTYPE)
            ii, jj = r["i"].astype(np.int64), r["j"].astype(np.int64)
            codes, amax = r["code"].astype(np.int64), _ANGLE_MAX_V1
            bad = codes == -128
        else:
            w = 2 * b + ANGLE_BITS
            end = pos + (cnt * w + 7) // 8
            if end > len(buf):
                raise CorruptStreamError("klt: truncated Givens rotation section")
            bits = np.unpackbits(np.frombuffer(buf[pos:end], np.uint8))
            if np.any(bits[cnt * w:]):
                raise CorruptStreamError("klt: bad Givens rotation padding")
            bits = bits[: cnt * w].reshape(cnt, w).astype(np.int64)

            def field(lo, width, bits=bits):
                return bits[:, lo : lo + width] @ (1 << np.arange(width - 1, -1, -1))

            ii, jj = field(0, b), field(b, b)
            codes, amax = field(2 * b, ANGLE_BITS) - _ANGLE_MAX, _ANGLE_MAX
            bad = codes > _ANGLE_MAX
        if cnt and (np.any(ii >= jj) or np.any(jj >= d) or np.any(bad)):
            raise CorruptStreamError("klt: bad Givens rotation in stream")
        out.append((ii, jj, codes, amax))
        pos = end
    if pos != len(buf):
        raise CorruptStreamError("klt: trailing bytes in the Givens rotation section")
    return out


@numba.njit(cache=True)
def _givens_apply_kernel(v, ii, jj, codes, amax):  # pragma: no cover - compiled
    q = math.pi / 4.0
    for r in range(ii.size):
        i, j = ii[r], jj[r]
        t = codes[r] / amax * q
        c, s = math.cos(t), math.sin(t)
        for k in range(v.shape[0]):
            xi, xj = v[k, i], v[k, j]
            v[k, i] = c * xi - s * xj
            v[k, j] = s * xi + c * xj


def _apply_givens(v: np.ndarray, rots, amax: int = _ANGLE_MAX) -> np.ndarray:
    """``v`` with columns ``i, j`` rotated by each code's angle in order (a copy)."""
    ii, jj, codes = rots[:3]
    v = np.array(v, dtype=np.float64, copy=True, order="C")
    if ii.size:
        _givens_apply_kernel(v, np.ascontiguousarray(ii, np.int64),
                             np.ascontiguousarray(jj, np.int64),
                             np.ascontiguousarray(codes, np.int64), float(amax))
    return v


# ---------------------------------------------------------------------------------------
# parametric symbol model: a discretised logistic per component, coded with rANS
# ---------------------------------------------------------------------------------------
#: first bytes of a logistic-model symbol section (never the start of a coder container)
LOGISTIC_MAGIC = b"KLTL"
_LOGIS_HEAD = "<4siHHHII"  # magic, min symbol, alphabet size, columns, lanes, rows, words
_LOGIS_PREC = 16  # rANS probability precision (frequencies sum to 2**16)
_LOGIS_MAX_SPAN = 4096  # larger alphabets go to the configured coder
_LOGIS_LANES = 4
_SCALE_OFF = 96  # scale code c: s = 2**((c - 96) / 16) quantization steps, c in 0..255
_LN2 = 0.6931471805599453
_PI_SQRT3 = 1.8137993642342178  # pi / sqrt(3): logistic scale = std / this


def _exp_neg(z: np.ndarray) -> np.ndarray:
    """``exp(-z)`` for ``z >= 0`` with IEEE basic operations only (+, -, *, /, floor,
    ldexp), so encoder and decoder compute bit-identical tables on any platform (libm and
    SIMD ``exp`` differ in the last bits between machines)."""
    z = np.minimum(np.asarray(z, dtype=np.float64), 740.0)
    n = np.floor(z / _LN2 + 0.5)
    r = z - n * _LN2
    p = np.ones_like(r)
    for i in range(14, 0, -1):
        p = 1.0 - (r / i) * p
    return np.ldexp(p, -n.astype(np.int64))


def _scale_from_code(codes: np.ndarray) -> np.ndarray:
    e = codes.astype(np.int64) - _SCALE_OFF
    q, f = np.floor_divide(e, 16), np.mod(e, 16)
    return np.ldexp(_exp_neg((16 - f) / 16.0 * _LN2), q + 1)  # 2**(f/16 - 1) * 2**(q + 1)


def _logistic_frequencies(codes: np.ndarray, lo: int, span: int) -> np.ndarray:
    """Integer rANS frequencies ``(len(codes), span)`` of the discretised logistic of each
    scale code over the symbols ``lo .. lo + span - 1`` (bins ``[k - 1/2, k + 1/2)``); every
    symbol gets at least 1 of the ``2**16``."""
    s = _scale_from_code(np.asarray(codes))
    x = np.arange(span + 1, dtype=np.float64) + (lo - 0.5)
    e = _exp_neg(np.abs(x)[None, :] * (_PI_SQRT3 / s[:, None]))
    cdf = np.where(x[None, :] >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    mass = (1 << _LOGIS_PREC) - span
    c = np.maximum.accumulate(np.floor(cdf * mass), axis=1).astype(np.int64)
    c = np.minimum(c, mass) + np.arange(span + 1, dtype=np.int64)[None, :]
    c[:, 0] = 0
    c[:, -1] = 1 << _LOGIS_PREC
    return np.diff(c, axis=1)


def _logistic_encode(k: np.ndarray) -> bytes | None:
    """``k`` (rows, columns) int as a logistic-model section, or None where it does not
    apply (alphabet over :data:`_LOGIS_MAX_SPAN` symbols, too many columns)."""
    rows, m = k.shape
    n = rows * m
    if n == 0 or m > 0xFFFF or rows > 0xFFFFFFFF:
        return None
    lo, hi = int(k.min()), int(k.max())
    span = hi - lo + 1
    if span > _LOGIS_MAX_SPAN:
        return None
    kf = k.astype(np.float64)
    sd = np.sqrt(np.maximum(np.mean(kf * kf, axis=0) - 1.0 / 12.0, 1e-6))
    c0 = np.clip(np.rint(16.0 * np.log2(sd)) + _SCALE_OFF, 0, 255).astype(np.int64)
    counts = np.zeros((m, span), np.int64)
    np.add.at(counts, (np.broadcast_to(np.arange(m), k.shape), k - lo), 1)
    best_bits, best = None, c0
    for dc in (-2, -1, 0, 1, 2):  # the code length is measured, not estimated
        c = np.clip(c0 + dc, 0, 255)
        bits = -(counts * np.log2(_logistic_frequencies(c, lo, span))).sum(axis=1)
        if best_bits is None:
            best_bits, best = bits, c
        else:
            better = bits < best_bits
            best_bits = np.where(better, bits, best_bits)
            best = np.where(better, c, best)
    freq = _logistic_frequencies(best, lo, span)
    lanes = _LOGIS_LANES
    chunk = -(-n // lanes) * lanes
    if chunk > 1 << 30:
        return None
    words, num_words, states = cpu.rans_encode(
        np.ascontiguousarray(k, dtype=np.int32).reshape(-1), lo, freq, _LOGIS_PREC, chunk,
        period=m, num_lanes=lanes,
    )
    head = struct.pack(_LOGIS_HEAD, LOGISTIC_MAGIC, lo, span, m, lanes, rows, int(words.size))
    return (head + states.astype("<u4").tobytes() + best.astype(np.uint8).tobytes()
            + words.astype("<u2").tobytes())


def _logistic_parse(blob) -> tuple:
    blob = bytes(blob)
    hs = struct.calcsize(_LOGIS_HEAD)
    if len(blob) < hs:
        raise CorruptStreamError("klt: truncated logistic symbol section")
    magic, lo, span, m, lanes, rows, nw = struct.unpack_from(_LOGIS_HEAD, blob)
    if (magic != LOGISTIC_MAGIC or not 1 <= span <= _LOGIS_MAX_SPAN or m == 0 or rows == 0
            or not 1 <= lanes <= 32):
        raise CorruptStreamError("klt: bad logistic symbol section header")
    if len(blob) != hs + 4 * lanes + m + 2 * nw:
        raise CorruptStreamError("klt: logistic symbol section has the wrong length")
    return lo, span, m, lanes, rows, nw, hs


def _logistic_decode(blob) -> np.ndarray:
    lo, span, m, lanes, rows, nw, pos = _logistic_parse(blob)
    blob = bytes(blob)
    states = np.frombuffer(blob, "<u4", lanes, pos).astype(np.uint32).reshape(1, lanes)
    pos += 4 * lanes
    codes = np.frombuffer(blob, np.uint8, m, pos).astype(np.int64)
    pos += m
    words = np.frombuffer(blob, "<u2", nw, pos).astype(np.uint16)
    n = rows * m
    out = np.empty(n, np.int32)
    try:
        status = cpu.rans_decode(words, np.array([nw], np.uint32), states,
                                 _logistic_frequencies(codes, lo, span), _LOGIS_PREC,
                                 -(-n // lanes) * lanes, lo, m, out)
    except CodecConfigError as exc:
        raise CorruptStreamError(f"klt: bad logistic symbol section: {exc}") from None
    if status.any():
        raise CorruptStreamError("klt: logistic symbol section does not decode cleanly")
    return out.reshape(rows, m)


class _SymbolCoder(Codec):
    """The configured coder of klt's indices, which also reads logistic-model sections.

    ``encode`` is the configured coder's; ``decode`` and ``rate`` recognise a section by its
    first bytes (:data:`LOGISTIC_MAGIC`, or the coder's own stream). Its config is the
    configured coder's, so a bench record names the coder the user chose.
    """

    def __init__(self, inner: Codec):
        self.inner = inner
        self.codec_id = inner.codec_id

    def get_config(self) -> dict:
        return self.inner.get_config()

    def encode(self, array) -> bytes:
        return self.inner.encode(array)

    def decode(self, data, device: str = "cpu", **kwargs):
        if bytes(data[: len(LOGISTIC_MAGIC)]) == LOGISTIC_MAGIC:
            return _logistic_decode(data)
        return self.inner.decode(data, device, **kwargs) if kwargs else self.inner.decode(data)

    def rate(self, data) -> RateBreakdown:
        if bytes(data[: len(LOGISTIC_MAGIC)]) == LOGISTIC_MAGIC:
            lo, span, m, lanes, rows, nw, _ = _logistic_parse(data)
            r = RateBreakdown.from_bits(8 * len(data), 16 * nw, rows * m)
            r["model_bits"] = 8 * m
            return r
        if type(self.inner).rate is Codec.rate:
            return RateBreakdown.from_bits(8 * len(data), 8 * len(data), 0)
        return self.inner.rate(data)


def _check_num(name, value, lo, hi, *, integer=False, open_lo=False):
    ok_type = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, ok_type) or not math.isfinite(value):
        raise CodecConfigError(f"klt: {name} must be a finite number; found {value!r}")
    if value < lo or (open_lo and value == lo) or value > hi:
        rng = f"({lo}, {hi}]" if open_lo else f"[{lo}, {hi}]"
        raise CodecConfigError(f"klt: {name} must lie in {rng}; found {value!r}")
    return int(value) if integer else float(value)


@register_codec
class KltCodec(QuantCodec):
    """Transform codec: PCA basis, reverse water-filling, one ECSQ step, per-component tables.

    Parameters
    ----------
    snr_db : float
        Target SNR: the distortion is ``D = variance_per_element * 10**(-snr_db / 10)``.
    basis : str or None
        A calibration file from ``kvinfo calibrate``; None fits the basis in-stream.
    rope_theta : float or None
        Code keys in the pre-RoPE frame (RoPE base ``theta``); None codes them as given.
    rope_dtype : {"auto", "float32", "bfloat16", "float16"}
        Precision of the RoPE inverse frequencies (see :func:`rope_rotate`); ``"auto"`` is
        the input's dtype for bfloat16/float16 input (a model run in that dtype), else float32.
    sink_tokens : int
        Rows whose position is below this are stored verbatim (attention sinks).
    recent_tokens : int
        The last rows of each slab stored verbatim (a recent window).
    rounding : float
        Rounding offset of the quantizer in ``(0, 0.5]``; below 0.5 is a deadzone.
    reconstruction : {"centroid", "midpoint"}
        Reconstruct at a per-component least-squares offset, or at the bin centres.
    side_dtype : {"float16", "float32"}
        Storage of the means and of in-stream eigenvectors.
    metric : {"mse"}
        The distortion the bits are allocated for.
    predict : {"none", "lag1"}
        ``"lag1"``: closed-loop prediction of each component from its reconstruction one
        token earlier (DPCM), ``y_t - rho_i y_hat_{t-1}`` is quantized; ``rho_i`` (int8 / 127,
        side information) is the lag-1 correlation shrunk by ``lambda_i / (lambda_i +
        theta)`` for the quantization noise of the reference. Reset at every sequence start.
    rotations : int
        With a calibration file (and ``metric="mse"``): at most this many Givens rotations
        per slab refine the calibrated basis towards the slab's own principal axes (greedy
        Jacobi steps on the slab's covariance in the calibrated basis, each stored in
        :func:`rotation_bits` bits of side information and kept only while its estimated
        gain exceeds that); 0 uses the
        calibrated basis as it is. No effect on an in-stream basis (already the slab's own).
    symbol_model : {"auto", "coder", "logistic"}
        Entropy model of each slab's indices: the configured ``coder``, a discretised
        logistic per component (rANS, one byte of scale per component; the coder where the
        alphabet exceeds 4,096 symbols), or ``"auto"``: both, the shorter kept per slab.
    coder : dict
        Coder of the indices; default ``{"id": "rans", "per_channel": true}``.

    See the module docstring for the stream layout and :meth:`for_slab`.
    """

    codec_id = "klt"
    _tag = 5

    def __init__(
        self,
        snr_db: float = 20.0,
        basis: str | None = None,
        rope_theta: float | None = None,
        rope_dtype: str = "auto",
        sink_tokens: int = 0,
        recent_tokens: int = 0,
        rounding: float = 0.5,
        reconstruction: str = "centroid",
        side_dtype: str = "float16",
        metric: str = "mse",
        predict: str = "lag1",
        rotations: int = 1024,
        symbol_model: str = "auto",
        coder: dict | None = None,
    ):
        self.snr_db = _check_num("snr_db", snr_db, -20.0, 80.0)
        if basis is not None and not isinstance(basis, str | os.PathLike):
            raise CodecConfigError(f"klt: basis must be a file path or null; found {basis!r}")
        self.basis = None if basis is None else os.fspath(basis)
        self.rope_theta = (
            None if rope_theta is None
            else _check_num("rope_theta", rope_theta, 0.0, 1e12, open_lo=True)
        )
        if rope_dtype not in _ROPE_CODES:
            raise CodecConfigError(
                f"klt: rope_dtype must be one of {_ROPE_CODES}; found {rope_dtype!r}"
            )
        self.rope_dtype = rope_dtype
        self.sink_tokens = _check_num("sink_tokens", sink_tokens, 0, 0xFFFFFFFF, integer=True)
        self.recent_tokens = _check_num(
            "recent_tokens", recent_tokens, 0, 0x7FFFFFFF, integer=True
        )
        self.rounding = _check_num("rounding", rounding, 0.0, 0.5, open_lo=True)
        if reconstruction not in _RECON:
            raise CodecConfigError(
                f"klt: reconstruction must be one of {_RECON}; found {reconstruction!r}"
            )
        if side_dtype not in SIDE_DTYPES:
            raise CodecConfigError(
                f"klt: side_dtype must be one of {tuple(SIDE_DTYPES)}; found {side_dtype!r}"
            )
        if metric not in _METRICS:
            raise CodecConfigError(f"klt: metric must be one of {_METRICS}; found {metric!r}")
        if predict not in _PREDICT:
            raise CodecConfigError(f"klt: predict must be one of {_PREDICT}; found {predict!r}")
        self.predict = predict
        if symbol_model not in _SYMBOL_MODELS:
            raise CodecConfigError(
                f"klt: symbol_model must be one of {_SYMBOL_MODELS}; found {symbol_model!r}"
            )
        self.symbol_model = symbol_model
        self.rotations = _check_num("rotations", rotations, 0, 65535, integer=True)
        self.reconstruction = reconstruction
        self.side_dtype = side_dtype
        self.metric = metric
        super().__init__({"id": "rans", "per_channel": True} if coder is None else coder)
        self._coder = _SymbolCoder(self._coder)
        self._bases = load_klt_bases(self.basis) if self.basis is not None else None
        self._layer: int | None = None
        self._kind: str | None = None
        self._head: int | None = None
        self._positions: np.ndarray | None = None

    def get_config(self) -> dict:
        return {
            "id": self.codec_id,
            "snr_db": self.snr_db,
            "basis": self.basis,
            "rope_theta": self.rope_theta,
            "rope_dtype": self.rope_dtype,
            "sink_tokens": self.sink_tokens,
            "recent_tokens": self.recent_tokens,
            "rounding": self.rounding,
            "reconstruction": self.reconstruction,
            "side_dtype": self.side_dtype,
            "metric": self.metric,
            "predict": self.predict,
            "rotations": self.rotations,
            "symbol_model": self.symbol_model,
            "coder": self.coder_config,
        }

    # -- the slab identity hook ----------------------------------------------------------
    def for_slab(
        self, layer=None, kind=None, head=None, *, positions=None, token_ids=None,
        sequences=None,
    ):
        """A copy of this codec bound to one slab (or one layer, ``head=None``).

        Parameters
        ----------
        layer : int or None
            The layer index (needed with a calibration file).
        kind : {"keys", "values"} or None
            What the array holds; RoPE handling applies to keys only.
        head : int or None
            The KV head; None when the array's leading axis enumerates the heads.
        positions : array of int, optional
            Each token's position in its sequence (default ``0, 1, ...``).
        token_ids : array of int, optional
            The tokens of the data to be coded, with ``sequences`` (``(start, stop)`` pairs,
            default one sequence): if a calibration file was fitted on any of these exact
            sequences, the codec refuses (:class:`~kvinfo.errors.CodecConfigError`) -- a basis
            is never tested on its own calibration data.

        Examples
        --------
        >>> from kvinfo.codecs import get_codec
        >>> codec = get_codec({"id": "klt", "snr_db": 20}).for_slab(3, "keys", 0)
        >>> codec.get_config()["snr_db"]
        20.0
        """
        if token_ids is not None and self._bases is not None:
            ids = np.asarray(token_ids)
            spans = [(0, ids.size)] if sequences is None else list(sequences)
            offsets = [spans[0][0]] + [int(e) for _, e in spans]
            if [int(a) for a, _ in spans] == offsets[:-1]:
                fps = sequence_fingerprints(ids, offsets)
            else:
                fps = [sequence_fingerprints(ids[a:e], [0, e - a])[0] for a, e in spans]
            cal = set(self._bases.meta.get("sequence_fingerprints") or [])
            same = cal.intersection(fps)
            if same:
                raise CodecConfigError(
                    f"klt: basis {self.basis} was fitted on {len(same)} of the sequences it is "
                    "asked to code (same tokens); calibrate on a different dump"
                )
        bound = copy.copy(self)
        bound._layer = None if layer is None else int(layer)
        bound._kind = kind
        bound._head = None if head is None else int(head)
        bound._positions = None if positions is None else np.asarray(positions, dtype=np.int64)
        return bound

    # -- helpers -------------------------------------------------------------------------
    def _stream_kind(self) -> int:
        if self._kind not in (None, "keys", "values"):
            raise CodecConfigError(f"klt: kind must be 'keys', 'values' or None; found "
                                   f"{self._kind!r}")
        if self.rope_theta is not None and self._kind in (None, "keys"):
            return 3
        return 2 if self._kind is None else _KINDS.index(self._kind)

    def _slab_heads(self, b: int) -> list[int]:
        if self._head is not None:
            return [self._head] * b
        return list(range(b))

    def _basis_for(self, kind_code: int, layer: int, heads: list[int], attention=False):
        """Per head: mean, forward matrix ``F`` (``y = (x - mu) F``), weight ``W`` (None for
        MSE), and the CRC of the entries. For MSE ``F = V``; for the attention metric
        ``F = W U`` and the reconstruction is ``mu + y (W^-1 U)^T``."""
        kind = _KINDS[kind_code]
        if kind is None:
            raise CodecConfigError(
                "klt: a calibrated basis needs the slab's kind: bind the codec with "
                "for_slab(layer, kind, head) (kvinfo bench and eval do)"
            )
        mus, fs, ws, crc = [], [], [], 0
        for h in heads:
            mu, v, c = self._bases.entry(kind, layer, h)
            crc = zlib.crc32(struct.pack("<I", c), crc)
            w = None
            if attention:
                w, u, c2 = self._bases.attention_entry(kind, layer, h)
                crc = zlib.crc32(struct.pack("<I", c2), crc)
                v = w @ u
            mus.append(mu)
            fs.append(v)
            ws.append(w)
        return mus, fs, ws, crc & 0xFFFFFFFF

    # -- codec ---------------------------------------------------------------------------
    def encode(self, array) -> bytes:
        array = check_float_array(array, self.codec_id)
        x3 = as_slabs(array)
        b, t, d = x3.shape
        if b > MAX_SLABS:
            raise CodecConfigError(
                f"klt: at most {MAX_SLABS} slabs per call; found {b} (shape {array.shape})"
            )
        kind_code = self._stream_kind()
        rope = self.rope_theta is not None and kind_code == 3
        if rope and d % 2:
            raise CodecConfigError(f"klt: rope_theta needs an even head_dim; found {d}")
        pos = self._positions
        if pos is None:
            pos = np.arange(t, dtype=np.int64)
        if pos.shape != (t,) or (pos.size and (pos.min() < 0 or pos.max() > 0xFFFFFFFF)):
            raise CodecConfigError(
                f"klt: positions must be {t} integers in 0..2**32-1; found shape {pos.shape}"
            )
        calibrated = self._bases is not None
        if calibrated:
            if self._layer is None:
                raise CodecConfigError(
                    "klt: a calibrated basis needs the slab's layer, kind and head: bind the "
                    "codec with for_slab(layer, kind, head) (kvinfo bench and eval do)"
                )
            heads = self._slab_heads(b)
            attention = self.metric == "attention" and kind_code in (0, 3)
            cal_mu, cal_v, cal_w, crc = self._basis_for(kind_code, self._layer, heads, attention)
            if cal_v[0].shape[0] != d:
                raise CodecConfigError(
                    f"klt: basis file {self.basis} has head_dim {cal_v[0].shape[0]}; the data "
                    f"has {d}"
                )
        else:
            crc = 0
            attention = False
            if self.metric == "attention":
                raise CodecConfigError(
                    "klt: metric 'attention' needs a calibration file with the query moments "
                    "(kvinfo calibrate on a dump captured with --queries)"
                )
        # rows kept verbatim: sinks by position, the recent window at the end
        keep_row = pos < self.sink_tokens
        if self.recent_tokens:
            keep_row[max(t - self.recent_tokens, 0):] = True
        coded_rows = ~keep_row
        tc = int(coded_rows.sum())
        verbatim = np.nonzero(np.tile(keep_row, b))[0].astype(np.uint32)
        flat_in = np.ascontiguousarray(array).reshape(b * t, d)
        sd = SIDE_DTYPES[self.side_dtype]
        rdt = self.rope_dtype
        if rdt == "auto":
            rdt = {"bfloat16": "bfloat16", "float16": "float16"}.get(array.dtype.name, "float32")
        xw = rope_rotate(x3, pos, self.rope_theta, True, rdt) if rope else x3
        masks, means, vec_parts, off_parts, coded, steps = [], [], [], [], [], []
        predict = self.predict == "lag1"
        refine = calibrated and not attention and self.rotations > 0 and 2 <= d <= 256
        rho_parts, rot_parts = [], []
        cpos = pos[coded_rows]
        reset = np.ones(tc, dtype=np.bool_)
        if tc > 1:
            reset[1:] = np.diff(cpos) != 1
        for s in range(b):
            xs = xw[s][coded_rows]
            wgt = cal_w[s] if attention else None
            # the SNR is that of the keys in the metric W (attention) or plain (MSE)
            var = float(np.mean(np.var(xw[s] @ wgt if attention else x3[s], axis=0)))
            target = var * 10.0 ** (-self.snr_db / 10.0) * (t / max(tc, 1))
            if tc == 0:
                masks.append(np.zeros(d, bool))
                means.append(np.zeros(d))
                steps.append(None)
                if refine:
                    rot_parts.append(struct.pack("<H", 0))
                continue
            mu_store = round_side(xs.mean(axis=0), sd, "means", "klt")
            mu = mu_store.astype(np.float64)
            if calibrated:
                v = cal_v[s]
            else:
                _, v, _ = _pca(xs)
            y = (xs - mu) @ v
            if refine:
                rots = _givens_fit(y, target, self.rotations)
                rot_parts.append(_pack_rotations(rots, d))
                if rots[0].size:
                    v = _apply_givens(v, rots)
                    y = (xs - mu) @ v
            lam = np.mean(y * y, axis=0)
            theta = water_level_from_eigenvalues(lam, target)
            active = lam > theta
            if not target > 0:  # a constant slab: the mean is the whole reconstruction
                active = np.zeros(d, bool)
            va = v[:, active]
            xc = xs - mu
            if attention:  # work in the weighted frame, where the basis U is orthonormal
                xc = xc @ wgt
                va = np.linalg.solve(wgt, va)  # = U[:, active]
            if not calibrated and va.size:
                va = round_side(va, sd, "eigenvectors", "klt").astype(np.float64)
                vec_parts.append(to_le_bytes(va.astype(sd)))
                y = (xs - mu) @ va
            else:
                y = y[:, active]
            masks.append(active)
            means.append(mu_store)
            if y.shape[1] == 0:
                steps.append(None)
                continue
            rho = None
            if predict:
                lam_a = lam[active]
                prev, cur = y[:-1][~reset[1:]], y[1:][~reset[1:]]
                den = np.sqrt(np.sum(prev * prev, axis=0) * np.sum(cur * cur, axis=0))
                r1 = np.where(den > 0, np.sum(prev * cur, axis=0) / np.maximum(den, 1e-300), 0.0)
                r1 = r1 * lam_a / (lam_a + theta)
                q = np.clip(np.rint(r1 * 127.0), -127, 127).astype(np.int8)
                rho_parts.append(q.tobytes())
                rho = q.astype(np.float64) / 127.0
            k, offs, step = self._fit_step(y, xc, va, target * d, rho, reset)
            steps.append(step)
            off_parts.append(offs.tobytes())
            coded.append((s, k))
        # one step for the whole stream would need one target; slabs get their own step:
        # the params carry the first, the others go in a side section of float64
        params_step = next((s for s in steps if s is not None), 1.0)
        sections = [
            Section(SIDE, to_le_bytes(verbatim)),
            Section(SIDE, to_le_bytes(flat_in[verbatim])),
            Section(SIDE, to_le_bytes(_runs(pos)) if rope or predict else b""),
            Section(SIDE, np.packbits(np.stack(masks).astype(np.uint8), axis=None).tobytes()),
            Section(SIDE, to_le_bytes(np.stack([np.asarray(m, sd) for m in means]))),
            Section(SIDE, b"".join(vec_parts)),
            Section(SIDE, b"".join(off_parts)),
            Section(SIDE, to_le_bytes(np.array([s or 0.0 for s in steps], "<f8"))),
            Section(SIDE, b"".join(rho_parts)),
        ]
        if refine:  # mode 2: the calibrated basis refined by Givens rotations
            sections.append(Section(SIDE, b"".join(rot_parts)))
        by_slab = dict(coded)
        for s in range(b):
            if s in by_slab:
                sections.append(self._coded_indices(by_slab[s].astype(np.int32)))
            else:
                sections.append(Section(SIDE, b""))
        params = struct.pack(
            _PARAMS, float(params_step), self.rounding, self.rope_theta if rope else 0.0,
            2 if refine else int(calibrated), _RECON.index(self.reconstruction),
            DTYPE_CODES[self.side_dtype],
            kind_code, _ROPE_CODES.index(rdt) if rope else 0, int(predict), int(attention),
            -1 if self._layer is None else self._layer,
            -1 if self._head is None else self._head, self.recent_tokens, crc, STREAM_VERSION,
        )
        return build_stream(self._tag, array.dtype, array.shape, params, sections)

    def _coded_indices(self, k: np.ndarray) -> Section:
        """One slab's indices: the configured coder's stream or a logistic-model section,
        whichever ``symbol_model`` asks for (``"auto"``: the shorter of the two, measured)."""
        if self.symbol_model != "coder":
            blob = _logistic_encode(k)
            if blob is not None and self.symbol_model == "logistic":
                return Section(CODED, blob)
            if blob is not None:
                coded = bytes(self._coder.encode(np.ascontiguousarray(k)))
                return Section(CODED, blob if len(blob) < len(coded) else coded)
        return self._coded(k)

    def _fit_step(self, y, xc, va, target_sse_per_row, rho=None, reset=None):
        """Step, indices and offsets so that the slab's MSE is the target (within 0.5 %).

        ``target_sse_per_row`` is ``D * d``; the residual of the active subspace (the
        dropped components) is a fixed part of the error.
        """
        resid = float(np.mean(np.sum(np.square(xc - y @ va.T), axis=1)))
        want = target_sse_per_row - resid
        centroid = self.reconstruction == "centroid"
        m = y.shape[1]
        if want <= 0:
            want = 1e-3 * target_sse_per_row
        step = math.sqrt(12.0 * want / m)

        def run(st):
            if rho is not None:  # closed loop: offsets from a first pass, then the real one
                zero = np.zeros(m)
                k, yh, r = _dpcm_encode(y, rho, reset, st, self.rounding, zero)
                offs = _offsets(r, k, st) if centroid else None
                if centroid:
                    k, yh, r = _dpcm_encode(y, rho, reset, st, self.rounding,
                                            offs.astype(np.float64) / 256.0)
                return k, offs, float(np.mean(np.sum(np.square(y - yh), axis=1)))
            k = _quantize(y, st, self.rounding)
            offs = _offsets(y, k, st) if centroid else None
            yh = _dequantize(k, st, offs)
            return k, offs, float(np.mean(np.sum(np.square(y - yh), axis=1)))

        lo, hi = None, None
        best = None
        for _ in range(40):
            k, offs, err = run(step)
            best = (k, offs, step)
            if abs(err - want) <= 0.005 * want:
                break
            if err > want:
                hi = step
            else:
                lo = step
            if lo is not None and hi is not None:
                step = math.sqrt(lo * hi)
            else:
                step = step * (want / max(err, 1e-300)) ** 0.5
        k, offs, step = best
        if int(np.max(np.abs(k))) >= MAX_INDEX:
            raise CodecConfigError(
                f"klt: snr_db {self.snr_db:g} needs indices beyond +-{MAX_INDEX} for this data; "
                "use a lower snr_db"
            )
        if offs is None:
            offs = np.zeros(0, np.int8)
        return k, offs, step

    def decode(
        self, data, device: str = "cpu", max_output_bytes: int | None = None
    ) -> np.ndarray:
        """Decode a stream (layout in the module docstring); ``max_output_bytes`` caps the
        output before any allocation (:mod:`kvinfo.codecs.limits`)."""
        self._check_device(device)
        p = self._parse(data, max_output_bytes)
        v1 = len(p.params) == struct.calcsize(_PARAMS_V1)
        (step0, rounding, theta, mode, recon, sd_code, kind_code, rope_code, pred_code,
         metric_code, layer, head, recent, crc, version) = (
            unpack_params(_PARAMS_V1, p.params) + (1,) if v1 else unpack_params(_PARAMS, p.params)
        )
        if not v1 and not 2 <= version <= STREAM_VERSION:
            raise CorruptStreamError(
                f"unknown klt stream version {version}; this kvinfo reads versions 1 and "
                f"{STREAM_VERSION}"
            )
        symbols = self._coder if version >= 2 else self._coder.inner
        if (
            mode > 2 or recon > 1 or sd_code not in (1, 3) or kind_code > 3
            or not math.isfinite(theta) or theta < 0 or not math.isfinite(step0)
            or rope_code > 3 or (theta > 0) != (rope_code > 0) or pred_code > 1
            or metric_code > 1 or (metric_code and (mode != 1 or kind_code not in (0, 3)))
            or (mode == 2 and metric_code)
        ):
            raise CorruptStreamError("bad klt parameter block")
        t, d = p.shape[-2:]
        b = int(np.prod(p.shape[:-2], dtype=np.int64))
        n_side = 10 if mode == 2 else 9
        if b > MAX_SLABS or len(p.sections) != n_side + b:
            raise CorruptStreamError("bad klt stream layout")
        sd = SIDE_DTYPES["float16" if sd_code == 1 else "float32"]
        secs = p.sections
        if any(s.kind != SIDE for s in secs[:n_side]):
            raise CorruptStreamError("bad klt stream layout")
        rots = [None] * b
        if mode == 2:
            rots = _parse_rotations(secs[9].data, b, d, version)
            secs = secs[:9] + secs[10:]
        n_verb = len(secs[0].data) // 4
        rows = side_array(secs[0], np.uint32, n_verb).astype(np.int64)
        if n_verb and (np.any(np.diff(rows) <= 0) or rows[-1] >= b * t):
            raise CorruptStreamError("klt: bad verbatim row indices in stream")
        verb = side_array(secs[1], p.dtype, n_verb * d).reshape(n_verb, d)
        keep = np.zeros(b * t, bool)
        keep[rows] = True
        keep = keep.reshape(b, t)
        if b and not np.all(keep == keep[0]):
            raise CorruptStreamError("klt: verbatim rows differ between slabs")
        coded_rows = ~keep[0] if b else np.ones(t, bool)
        tc = int(coded_rows.sum())
        rope = theta > 0
        if rope and d % 2:
            raise CorruptStreamError("klt: RoPE stream with an odd head_dim")
        if rope or pred_code:
            nr = len(secs[2].data) // 8
            pos = _positions_from_runs(side_array(secs[2], np.uint32, 2 * nr).reshape(nr, 2), t)
        else:
            side_array(secs[2], np.uint8, 0)
        nbits = b * d
        mbytes = side_array(secs[3], np.uint8, (nbits + 7) // 8)
        masks = np.unpackbits(mbytes)[:nbits].reshape(b, d).astype(bool)
        if np.any(np.unpackbits(mbytes)[nbits:]):
            raise CorruptStreamError("klt: bad component mask padding")
        means = finite_side(side_array(secs[4], sd, b * d).reshape(b, d), "means")
        counts = masks.sum(axis=1)
        steps = finite_side(side_array(secs[7], np.dtype("<f8"), b), "steps", nonnegative=True)
        if mode >= 1:
            if self._bases is None:
                raise CorruptStreamError(
                    "klt: this stream was coded with a calibrated basis; decode it with a codec "
                    "whose config names that basis file"
                )
            if layer < 0 or (head < -1) or kind_code == 2:
                raise CorruptStreamError("klt: calibrated stream without its slab identity")
            heads = [head] * b if head >= 0 else list(range(b))
            try:
                mus, vs, ws, want_crc = self._basis_for(kind_code, layer, heads,
                                                        bool(metric_code))
            except CodecConfigError as exc:
                raise CorruptStreamError(f"klt: stream and basis file disagree: {exc}") from None
            if want_crc != crc or vs[0].shape[0] != d:
                raise CorruptStreamError(
                    f"klt: the stream was coded with another basis than {self.basis} "
                    "(basis checksum mismatch)"
                )
            side_array(secs[5], sd, 0)
            if metric_code:  # reconstruction matrix W^-1 U
                vs = [np.linalg.solve(w, v) for w, v in zip(ws, vs, strict=True)]
                vs = [np.linalg.solve(w, v) for w, v in zip(ws, vs, strict=True)]
            vs = [v if rots[s] is None else _apply_givens(v, rots[s], rots[s][3])
                  for s, v in enumerate(vs)]
            bases = [v[:, masks[s]] for s, v in enumerate(vs)]
        else:
            total = int(counts.sum()) * d
            allv = finite_side(side_array(secs[5], sd, total), "eigenvectors")
            bases, pos_v = [], 0
            for s in range(b):
                n = int(counts[s]) * d
                bases.append(allv[pos_v : pos_v + n].reshape(d, int(counts[s])))
                pos_v += n
        centroid = recon == 1
        n_off = int(counts[steps > 0].sum()) if centroid else 0
        offs_all = side_array(secs[6], np.int8, n_off) if centroid else side_array(
            secs[6], np.int8, 0
        )
        rhos = [None] * b
        if pred_code:
            n_rho = int(counts[steps > 0].sum()) if tc else 0
            rq = side_array(secs[8], np.int8, n_rho).astype(np.float64) / 127.0
            at = 0
            for s in range(b):
                if steps[s] > 0 and tc:
                    rhos[s] = rq[at : at + int(counts[s])]
                    at += int(counts[s])
            cpos = pos[coded_rows]
            reset = np.ones(tc, dtype=np.bool_)
            if tc > 1:
                reset[1:] = np.diff(cpos) != 1
        else:
            side_array(secs[8], np.int8, 0)
        out = np.empty((b, t, d), np.float64)
        off_pos = 0
        for s in range(b):
            m = int(counts[s])
            sec = secs[9 + s]
            y = np.zeros((tc, m))
            if m and tc:
                if sec.kind != CODED or not steps[s] > 0:
                    raise CorruptStreamError("klt: missing coded section for a slab")
                sym = np.asarray(symbols.decode(sec.data))
                if sym.shape != (tc, m):
                    raise CorruptStreamError(
                        f"klt: decoded symbols have shape {sym.shape}; expected {(tc, m)}"
                    )
                if sym.size and int(np.max(np.abs(sym.astype(np.int64)))) >= MAX_INDEX:
                    raise CorruptStreamError(f"klt: decoded indices beyond +-{MAX_INDEX}")
                offs = None
                if centroid:
                    offs = offs_all[off_pos : off_pos + m]
                    off_pos += m
                if pred_code:
                    delta = np.zeros(m) if offs is None else offs.astype(np.float64) / 256.0
                    y = _dpcm_decode(sym.astype(np.int64), rhos[s], reset, float(steps[s]), delta)
                else:
                    y = _dequantize(sym, float(steps[s]), offs)
            elif sec.kind != SIDE or sec.data:
                raise CorruptStreamError("klt: unexpected coded section for an empty slab")
            xs = means[s][None, :] + y @ bases[s].T
            out[s][coded_rows] = xs
        if rope:
            out = rope_rotate(out, pos, theta, False, _ROPE_CODES[rope_code])
        flat = out.reshape(b * t, d)
        flat[rows] = verb.astype(np.float64)
        if not np.all(np.isfinite(flat)):
            raise CorruptStreamError("klt stream reconstructs non-finite values")
        return to_output(flat.reshape(p.shape), p.dtype)
