"""Timing: best-of-N wall time on the CPU, and GPU decode timing when a CUDA GPU is present."""

from __future__ import annotations

import math
import sys
import time

__all__ = ["best_time", "GpuTimer", "cpu_threads"]


def best_time(fn, repeat: int):
    """``(result of the last run, best wall time in seconds)`` of ``repeat`` runs of ``fn``."""
    best = math.inf
    out = None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


class GpuTimer:
    """GPU decode timing through :mod:`kvinfo.kernels.gpu`, when a real GPU is present."""

    def __init__(self, enabled: bool):
        self.available = False
        self.reason = "disabled (--no-gpu)"
        self.name = None
        if not enabled:
            return
        import os

        if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
            self.reason = "Numba CUDA simulator enabled: GPU timings would be meaningless"
            return
        try:
            from ..kernels import gpu
        except ImportError:  # pragma: no cover - the GPU front end is part of kvinfo
            self.reason = "kvinfo.kernels.gpu is not installed"
            return
        if not gpu.cuda_available():
            self.reason = "no CUDA GPU found"
            return
        self.gpu = gpu
        from numba import cuda

        self.cuda = cuda
        self.available = True
        self.reason = None
        try:
            self.name = cuda.get_current_device().name
            if isinstance(self.name, bytes):
                self.name = self.name.decode()
        except Exception:  # noqa: BLE001 - the name is cosmetic
            self.name = "CUDA GPU"
        try:
            gpu.warmup()
        except Exception as exc:  # noqa: BLE001 - reported, and the CPU bench goes on
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            self.available = False
            self.reason = f"the GPU kernels failed to compile on {self.name}: " + (
                f"{type(exc).__name__}: {first}"
            )
            print(f"kvinfo bench: warning: {self.reason}; timing the CPU only", file=sys.stderr)

    def time_decode(self, codec, data: bytes, repeat: int) -> float | None:
        """Best-of-``repeat`` seconds of a device decode (after one untimed run), or None when
        the GPU front end does not support this codec."""
        from ..errors import KvinfoError

        try:
            prepared = codec.prepare_cuda(data)
        except KvinfoError:
            return None
        out = prepared.decode()
        self.cuda.synchronize()

        def run():
            prepared.decode(out=out)
            self.cuda.synchronize()

        return best_time(run, max(repeat, 3))[1]


def cpu_threads() -> int | None:
    """Numba's thread count (informational; None when Numba is absent)."""
    try:
        import numba

        return int(numba.get_num_threads())
    except Exception:  # noqa: BLE001 - informational only
        return None
