"""Device, precision, determinism and the environment record of a run.

- CPU by default (``--device auto`` picks CUDA when one is available); fp32 on CPU.
- CUDA: bf16 autocast for the forward passes where the GPU supports bf16 (fp32 otherwise), TF32 matmuls.
- Determinism: on CPU a fixed seed gives identical metrics (``torch.use_deterministic_algorithms`` is on
  while a study runs); on CUDA runs are not bit-reproducible.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from specroute.store import UserError


@dataclass(frozen=True)
class Device:
    """Where and in which precision a study runs."""

    type: str  # "cpu" | "cuda"
    autocast_dtype: torch.dtype | None  # None: no autocast (fp32)

    @property
    def torch(self) -> torch.device:
        return torch.device(self.type)

    @property
    def dtype_name(self) -> str:
        return "float32" if self.autocast_dtype is None else f"{str(self.autocast_dtype).removeprefix('torch.')} autocast"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.type, dtype=self.autocast_dtype)


def pick_device(name: str = "auto") -> Device:
    """``auto`` | ``cpu`` | ``cuda`` -> a :class:`Device`. Raises UserError for cuda without a GPU."""
    if name not in ("auto", "cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")
    cuda = torch.cuda.is_available()
    if name == "cuda" and not cuda:
        raise UserError("--device cuda was asked for but torch sees no CUDA device "
                        f"(torch {torch.__version__}); use --device cpu")
    if name == "cpu" or not cuda:
        return Device("cpu", None)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return Device("cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else None)


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` inside the block (None: left as it is), restored after."""
    was = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(was)


@contextlib.contextmanager
def deterministic(device: Device, threads: int | None = None) -> Iterator[None]:
    """Deterministic algorithms on CPU for the duration of the block (restored afterwards), with the
    intra-op thread count fixed: float reductions depend on it, so a run's metrics would otherwise depend
    on whoever set the thread count before. ``threads``: the count (None: the machine's core count; a
    worker process passes its own share, one thread when the runs go one per core: more threads than
    cores make every parallel region wait for a descheduled thread)."""
    if device.type != "cpu":
        yield
        return
    before, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    was, filled = torch.get_num_threads(), torch.utils.deterministic.fill_uninitialized_memory
    set_deterministic(True, warn_only=True)
    # Deterministic mode also fills every new tensor with NaN (a guard against reading uninitialised memory,
    # which no specroute op does: runs with equal seeds give equal metrics, tests check it); ~5% of a smoke
    # controller step on a CPU, so it is off.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        yield
    finally:
        set_deterministic(before, warn_only=warn)
        torch.utils.deterministic.fill_uninitialized_memory = filled
        torch.set_num_threads(was)


def set_deterministic(mode: bool, warn_only: bool) -> None:
    """``torch.use_deterministic_algorithms(mode, warn_only=...)`` without its import of the compiler
    (``torch._inductor``, ~2 s of start-up in every process): the compiler's ``deterministic`` setting
    is set here only when it is already loaded; :func:`specroute.train.compiled.compile_module` sets it
    from the flag when it loads it."""
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:
        inductor.deterministic = mode
    torch._C._set_deterministic_algorithms(mode, warn_only=warn_only)


def git_commit(start: Path | None = None) -> str:
    """``git rev-parse HEAD`` of the checkout holding specroute (or ``start``), else "unknown"."""
    where = start or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                             timeout=5, check=True)
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: Device) -> dict[str, object]:
    """What a report records about where it ran."""
    from specroute import __version__

    env: dict[str, object] = {
        "specroute": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else (platform.processor() or platform.machine()),
        "dtype": device.dtype_name,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "git_commit": git_commit(),
        "argv": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:]),
    }
    return env
