"""Model FLOPs utilisation (MFU) and throughput: achieved FLOP/s of the analytic cost model over the
device's peak.

The achieved figure is the analytic FLOPs of a step (2 x the multiply-adds of
:mod:`specroute.flops.analytic`: matmuls only, executed work, so gather counts only the tokens it runs)
times steps per second. The peak (:func:`device_peak`):

* CUDA: :data:`GPU_PEAK_TFLOPS`, dense (no sparsity) tensor-core peaks of NVIDIA's datasheets, for the
  precision the run's matmuls use: bf16 under bf16 autocast, TF32 for float32 matmuls with TF32 allowed
  (:func:`specroute.train.device.pick_device` allows it), else plain fp32. An unlisted GPU has no peak
  (MFU None, the tokens/s still given).
* CPU: measured once per process and thread count with a large float32 matmul
  (:data:`CPU_PEAK_N`; the best of a few, after a warm-up) and stated as such: what this machine's BLAS
  reaches, not a datasheet figure, so a CPU MFU near 100% means "matmul-bound", not "perfect".
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import torch

#: Dense tensor-core peaks in TFLOP/s per precision, by a fragment of ``torch.cuda.get_device_name()``
#: (first match wins: the more specific names first). Sources: NVIDIA's H200, H100 (SXM, PCIe), A100,
#: L40S, L4 and V100 datasheets; V100 has no bf16 and no TF32 (its bf16 runs fall back to fp32, see
#: :func:`specroute.train.device.pick_device`).
GPU_PEAK_TFLOPS: tuple[tuple[str, dict[str, float | None]], ...] = (
    ("H200", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.1, "tf32": 183.0, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("V100", {"bf16": None, "tf32": None, "fp32": 15.7}),
)
#: Size of the square float32 matmul that measures a CPU's peak (2 N^3 FLOPs: 2.1 GFLOP, ~20-60 ms a
#: core); :data:`CPU_PEAK_REPEATS` timed after one warm-up, the fastest taken.
CPU_PEAK_N = 1024
CPU_PEAK_REPEATS = 3


@dataclass(frozen=True)
class Peak:
    """A device's peak FLOP/s for a run's precision (None: unknown) and where the figure comes from."""

    flops_per_s: float | None
    source: str


def gpu_peak(name: str, precision: str) -> Peak:
    """The table's peak for a GPU named ``name`` (``torch.cuda.get_device_name()``) at ``precision``
    (``bf16`` | ``tf32`` | ``fp32``)."""
    for fragment, peaks in GPU_PEAK_TFLOPS:
        if fragment.lower() in name.lower():
            tflops = peaks.get(precision)
            if tflops is None:
                return Peak(None, f"{fragment} has no {precision} peak in the table")
            return Peak(tflops * 1e12, f"datasheet: {fragment} {precision} dense {tflops:g} TFLOP/s")
    return Peak(None, f"{name!r} is not in the GPU peak table (specroute.flops.mfu.GPU_PEAK_TFLOPS)")


@functools.cache
def measured_cpu_peak(threads: int) -> Peak:
    """This CPU's float32 matmul rate at ``threads`` intra-op threads, measured once per process and
    thread count (see the module docstring); ~0.1-0.3 s the first time."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(CPU_PEAK_N, CPU_PEAK_N, generator=g)
        b = torch.randn(CPU_PEAK_N, CPU_PEAK_N, generator=g)
        a @ b  # warm-up: allocation, BLAS thread pool
        best = float("inf")
        for _ in range(CPU_PEAK_REPEATS):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    rate = 2 * CPU_PEAK_N ** 3 / best
    return Peak(rate, f"measured: {CPU_PEAK_N}x{CPU_PEAK_N} fp32 matmul, {threads} thread"
                      f"{'s' if threads != 1 else ''}, {rate / 1e9:.0f} GFLOP/s")


def device_peak(device: Any) -> Peak:
    """The peak FLOP/s of a :class:`specroute.train.device.Device` for its precision (see the module
    docstring); on CPU at the current intra-op thread count."""
    if device.type != "cuda":
        return measured_cpu_peak(torch.get_num_threads())
    if device.autocast_dtype == torch.bfloat16:
        precision = "bf16"
    else:
        precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"
    return gpu_peak(torch.cuda.get_device_name(), precision)


def speed(tokens: float, flops: float | None, seconds: float, peak: Peak | None) -> dict[str, Any]:
    """Throughput of ``tokens`` tokens and ``flops`` analytic FLOPs done in ``seconds``: ``tokens_per_s``,
    ``flops_per_s`` (None without FLOPs), ``mfu`` (achieved / peak, 0..1; None without a peak),
    ``peak_flops_per_s`` and ``peak_source``. Zero seconds gives None rates."""
    ok = seconds > 0
    fps = flops / seconds if ok and flops is not None else None
    peak_fps = peak.flops_per_s if peak is not None else None
    return {"tokens_per_s": tokens / seconds if ok else None, "flops_per_s": fps,
            "mfu": fps / peak_fps if fps is not None and peak_fps else None,
            "peak_flops_per_s": peak_fps, "peak_source": peak.source if peak is not None else None}


def fmt_speed(tokens_per_s: float | None, mfu: float | None) -> str:
    """``"1,234 tok/s, MFU 12.3%"`` (a dash for what is unknown)."""
    tps = "—" if tokens_per_s is None else f"{tokens_per_s:,.0f}"
    return f"{tps} tok/s, MFU {'—' if mfu is None else f'{mfu:.1%}'}"
