"""Data parallel training of one run: the processes ``torchrun`` starts, and how a step's batch is cut.

``torchrun --nproc_per_node=K -m specroute run SPEC ...`` starts K processes with ``WORLD_SIZE``, ``RANK``
and ``LOCAL_RANK`` in their environment; :func:`join_world` joins them into one process group (NCCL on
CUDA, each process on GPU ``LOCAL_RANK``; gloo on the CPU). Every process samples the same global batch
of ``batch_size`` sequences with the run's generators and trains on its own rows of it
(:class:`BatchSplit`), in ``grad_accum_steps`` micro-batches; the gradients are summed over the processes
(:meth:`World.sum_grads`) before the clip and the optimiser step, so every process holds the same
parameters and the step is the one a single process takes on the whole batch. Batch-level statistics of
the losses are those of the global batch (:mod:`specroute.train.accumulate`). Only rank 0 writes
(metrics, checkpoints, reports); every rank reads the same checkpoint to resume.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from specroute.store import UserError

#: How long a process waits in a collective for the others (a backbone trained by one rank first).
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=6)


@dataclass(frozen=True)
class World:
    """The processes training one run together: ``size`` of them, this one is ``rank`` (``local_rank`` on
    its machine). The default is one process, whose collectives do nothing."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes (rank 0)."""
        return self.rank == 0

    def sum(self, t: Tensor) -> Tensor:
        """``t`` summed over the processes (a new tensor; ``t`` itself for one process)."""
        if self.size == 1:
            return t
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def gather_rows(self, t: Tensor) -> Tensor:
        """Every process's ``t`` (same shape on each) concatenated along dim 0 in rank order."""
        if self.size == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def sum_grads(self, params: list[nn.Parameter]) -> None:
        """Sum ``.grad`` of ``params`` over the processes, in one collective; a parameter that has a gradient
        on some process gets zeros where it has none (each process reaches the same parameters in practice)."""
        if self.size == 1:
            return
        device = params[0].device
        has = self.sum(torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device))
        live = [p for p, n in zip(params, has.tolist()) if n > 0]
        if not live:
            return
        for p in live:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = self.sum(torch.cat([p.grad.reshape(-1) for p in live]))
        for p, g in zip(live, flat.split([p.numel() for p in live])):
            p.grad.copy_(g.view_as(p.grad))

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


#: One process: no collectives.
SINGLE = World()


def main_process() -> bool:
    """Whether this process is the main one of a torchrun launch (``RANK`` 0), or not launched by torchrun."""
    return os.environ.get("RANK", "0") == "0"

T = TypeVar("T")


def main_only(world: World, block: contextlib.AbstractContextManager[T]) -> contextlib.AbstractContextManager[Any]:
    """``block`` on the main process; a block that does nothing on the others (a lock, a session record)."""
    return block if world.is_main else contextlib.nullcontext()


def on_main(world: World, write: Callable[[], T]) -> T | None:
    """``write()`` on the main process only (the others write nothing); its result, None elsewhere."""
    return write() if world.is_main else None


def join_world(device_type: str) -> World:
    """The :class:`World` of this process: one process unless torchrun set ``WORLD_SIZE`` > 1, then the
    process group joined (once; NCCL when ``device_type`` is ``cuda``, with this process on GPU
    ``LOCAL_RANK``; else gloo)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return world


@dataclass(frozen=True)
class BatchSplit:
    """How one optimiser step's global batch of ``batch_size`` sequences is cut: into ``world.size`` equal
    row blocks, one per process in rank order, each into ``micro_batches`` micro-batches.

    Raises:
        UserError: ``batch_size`` is not a multiple of ``world.size * micro_batches``.
    """

    batch_size: int
    micro_batches: int = 1
    world: World = SINGLE

    def __post_init__(self) -> None:
        parts = self.world.size * self.micro_batches
        if self.batch_size % parts:
            raise UserError(f"train.batch_size: {self.batch_size} sequences cannot be cut into {self.world.size} "
                            f"process(es) x {self.micro_batches} micro-batch(es) (train.grad_accum_steps) of equal "
                            f"size; use a batch_size that is a multiple of {parts}")

    @property
    def whole(self) -> bool:
        """Whether the step runs on the whole batch at once (one process, no accumulation)."""
        return self.world.size == 1 and self.micro_batches == 1

    @property
    def rows_per_rank(self) -> int:
        return self.batch_size // self.world.size

    @property
    def rows_per_micro(self) -> int:
        return self.rows_per_rank // self.micro_batches

    def local(self, x_B: Tensor) -> Tensor:
        """This process's rows of a global-batch tensor (dim 0 = the batch)."""
        return x_B[self.world.rank * self.rows_per_rank:(self.world.rank + 1) * self.rows_per_rank]

    def micro_rows(self, i: int) -> slice:
        """The global-batch rows of this process's micro-batch ``i``."""
        start = self.world.rank * self.rows_per_rank + i * self.rows_per_micro
        return slice(start, start + self.rows_per_micro)
