"""Facts about the machine a benchmark ran on: CPU model, load, and the CPU time other processes took."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import time
from typing import Any

import psutil


def machine() -> dict[str, Any]:
    """``cpu_model`` (from /proc/cpuinfo where there is one: psutil does not name the CPU), ``machine``
    (the architecture) and ``load_avg_1_5_15`` (None where unknown)."""
    cpu = None
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            cpu = m.group(1).strip() if m else None
    try:
        load = [round(x, 2) for x in psutil.getloadavg()]
    except OSError:  # pragma: no cover
        load = None
    return {"cpu_model": cpu or platform.processor() or platform.machine(), "machine": platform.machine(),
            "load_avg_1_5_15": load}


class OtherLoad:
    """CPU time that other processes (and the hypervisor, as steal) took from this machine since
    construction, as a share of its capacity (0: the benchmark had the machine to itself, 1: others used
    every CPU all the time): all CPUs' busy time (psutil) less this process's own CPU time."""

    def __init__(self) -> None:
        self.t0, self.own0, self.busy0 = time.perf_counter(), time.process_time(), busy_cpu_s()

    def share(self) -> float | None:
        """The share so far, in [0, 1]; None where the CPUs' times are unknown."""
        busy = busy_cpu_s()
        if busy is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.t0
        others = (busy - self.busy0) - (time.process_time() - self.own0)
        return min(1.0, max(0.0, others / (wall * (os.cpu_count() or 1)))) if wall > 0 else None


def busy_cpu_s() -> float | None:
    """Seconds all CPUs have spent not idle since boot (user, nice, system, irq, softirq, steal; the
    fields a platform lacks count 0), None where psutil cannot tell."""
    try:
        t = psutil.cpu_times()
    except (OSError, NotImplementedError):  # pragma: no cover
        return None
    return sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))
