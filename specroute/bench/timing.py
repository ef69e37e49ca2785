"""Timing the benchmark's cases (round-robin, medians) and measuring their peak memory.

Peak memory is measured in a separate pass after the timing, one step per case:

* CUDA: ``torch.cuda.max_memory_allocated`` during the step minus the allocation before it;
* CPU (Linux): growth of the process's peak resident set (VmHWM, reset through /proc/self/clear_refs)
  during the step over the resident set before it (freed heap returned with ``malloc_trim`` first).

Either way the reported peak is that step growth plus the exact bytes of the case's parameters, buffers
and optimiser state, i.e. what one training (or forward) step of that model alone needs at its peak.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
import time
from collections.abc import Callable, Iterator

import psutil
import torch

from specroute.bench.cases import BenchOptions, Case
from specroute.train.device import Device


def _sync(device: Device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_cases(cases: list[Case], options: BenchOptions, device: Device,
               progress: Callable[[str], None] | None = None) -> None:
    """Warm every case up, then ``rounds`` round-robin rounds of one timed step per case.

    Within a round, the cases that a target compares run back to back (dense, GPT-2; masked, gather at
    each budget), so a change of machine load between them is as small as it can be. Each timed step
    follows an untimed step of the same case, so it runs in that case's steady state (heap, caches)
    rather than in the state the previous case left: without it, a case that follows a lighter one pays
    for regrowing the heap (measured: ~7% on the bench profile, whichever case comes first).
    """
    live = sorted((c for c in cases if c.step is not None), key=_timing_order)
    for c in live:
        for i in range(max(options.warmup_steps, 1 if c.variant.endswith("+compile") else 0)):
            t0 = time.perf_counter()
            c.step()
            _sync(device)
            if i == 0 and c.variant.endswith("+compile"):
                c.extra["compile_s"] = time.perf_counter() - t0  # the first step compiles: timed apart
    _sync(device)
    for r in range(options.rounds):
        if progress:
            progress(f"round {r + 1}/{options.rounds}")
        for c in live:
            c.step()  # lead-in, untimed
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            c.step()
            _sync(device)
            c.times_s.append(time.perf_counter() - t0)
            c.cpu_s.append(time.process_time() - c0)


def _timing_order(c: Case) -> tuple[int, int, tuple[int, float]]:
    family = ("train", "forward", "recipe").index(c.kind)
    variant = {"dense": 0, "hf_gpt2": 1, "dense+compile": 2, "hf_gpt2+compile": 3, "masked": 4,
               "gather": 5}.get(c.variant, 6)
    first = c.budget == 0.5  # the target's budget right after masked
    return family, variant, (0 if first else 1, c.budget or 0.0)


# --------------------------------------------------------------------------------------------------
# memory


class _CpuPeak:
    """Peak resident-set growth of this process during a block (Linux: VmHWM reset via clear_refs)."""

    def __init__(self) -> None:
        self.ok = _can_reset_hwm()
        self._process = psutil.Process()
        try:
            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
        except OSError:  # pragma: no cover - not glibc
            self._trim = None

    @contextlib.contextmanager
    def measure(self) -> Iterator[list[int]]:
        out: list[int] = []
        gc.collect(1)  # young generations only: a full collection costs ~0.5 s with transformers loaded
        if self._trim is not None:
            self._trim(0)
        before = self._process.memory_info().rss
        _reset_hwm()
        yield out
        out.append(max(0, _peak_rss_bytes() - before))


def _peak_rss_bytes() -> int:
    """VmHWM of this process (psutil does not report it), bytes; 0 if unknown."""
    with open("/proc/self/status") as f:
        m = re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) * 1024 if m else 0


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _can_reset_hwm() -> bool:
    try:
        _reset_hwm()
        return _peak_rss_bytes() > 0
    except OSError:
        return False


def memory_method(device: Device) -> str:
    if device.type == "cuda":
        return ("torch.cuda.max_memory_allocated during one step minus the allocation before it, plus the "
                "case's parameters, buffers and optimiser state")
    if _can_reset_hwm():
        return ("growth of the process's peak resident set (VmHWM, reset via /proc/self/clear_refs; heap "
                "trimmed first) during one step, plus the exact bytes of the case's parameters, buffers "
                "and optimiser state")
    return "unavailable (needs Linux /proc/self/clear_refs on CPU)"


def measure_memory(cases: list[Case], device: Device) -> None:
    """One extra step per case, measuring its peak (see the module docstring)."""
    cpu = _CpuPeak() if device.type == "cpu" else None
    gc.collect()
    for c in cases:
        if c.step is None or c.state is None:
            continue
        if c.release is not None:
            c.release()
        if cpu is not None:
            if not cpu.ok:
                return
            with cpu.measure() as out:
                c.step()
            grow = out[0]
        else:
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            c.step()
            torch.cuda.synchronize()
            grow = max(0, torch.cuda.max_memory_allocated() - before)
        state = c.state()
        c.state_mb, c.step_mb = state / 2**20, grow / 2**20
        c.peak_mb = c.state_mb + c.step_mb
