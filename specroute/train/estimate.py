"""How long a study will take: analytic MACs (specroute.flops.analytic) / a short measured throughput.

The probe times a few study steps (:class:`specroute.train.trainer.Trainer`, the stage's optimiser and
clip) of the dense stage and of the most expensive controller arm on random tokens (random weights), on
the study's device, the controller step at the thread count each controller run will have. On a CPU a
stage whose step costs more than :data:`CPU_PROBE_MACS` is probed on a smaller batch (at most
:data:`CPU_PROBE_TOKENS` tokens of at most 256 positions; the paper profile's dense step on 512 tokens still
costs ~2.4e11 MACs, tens of seconds a step on a CPU); the MACs of the probed batch come from the same cost
model, so the throughput carries over (a small batch runs at a lower rate, so such an estimate errs long).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from specroute.flops.analytic import dense_step_macs, step_macs
from specroute.spec.models import RunSpec
from specroute.train.device import Device, torch_threads
from specroute.train.stages import ControllerStage, DenseStage, build_seeded
from specroute.train.trainer import FixedBatch, Stage, Trainer

#: MACs of one step up to which a CPU probe runs the stage's own batch (a smoke step: ~2.5e9).
CPU_PROBE_MACS = 8e9
CPU_PROBE_TOKENS = 512
PROBE_STEPS = 2


@dataclass(frozen=True)
class Throughput:
    """Measured multiply-adds per second of the dense (stage 1) and controller (stage 2) steps."""

    dense_macs_per_s: float
    controller_macs_per_s: float


def probe_shape(train_batch: int, train_seq: int, device: Device,
                macs: Callable[[int, int], float]) -> tuple[int, int]:
    """(B, T) of the probe: the stage's own on CUDA, or on a CPU when its step costs at most
    :data:`CPU_PROBE_MACS` (``macs(B, T)``: one step's MACs); else at most CPU_PROBE_TOKENS tokens, T <= 256."""
    if device.type == "cuda" or macs(train_batch, train_seq) <= CPU_PROBE_MACS:
        return train_batch, train_seq
    T = min(train_seq, 256)
    return max(1, min(train_batch, CPU_PROBE_TOKENS // T)), T


def _seconds_per_step(stage: Stage, B: int, T: int, vocab: int, device: Device) -> float:
    """Mean wall seconds of PROBE_STEPS study steps (:meth:`Trainer.train_step`) of ``stage`` on one batch
    of B x T random token ids, after one warm-up step (allocations, kernel selection)."""
    idx = torch.randint(0, vocab, (B, T), device=device.torch)
    trainer = Trainer(stage, FixedBatch(idx, idx), {"data": 0, "loss": 0}, device)
    trainer.train_step(idx, idx)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(PROBE_STEPS):
        trainer.train_step(idx, idx)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / PROBE_STEPS


def probe(dense_spec: RunSpec, controller_spec: RunSpec, device: Device,
          run_threads: int | None = None) -> Throughput:
    """Time a few steps of each stage on random data; see the module docstring. ``run_threads``: a CPU
    controller run's intra-op threads (:func:`specroute.train.parallel.run_threads`; None: as set now)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        dense = _dense_rate(dense_spec, device)
        with torch_threads(run_threads if device.type == "cpu" else None):
            controller = _controller_rate(controller_spec, device)
        return Throughput(dense, controller)


def _dense_rate(spec: RunSpec, device: Device) -> float:
    train = spec.backbone.train
    macs = lambda B, T: dense_step_macs(spec, "full_training", B, T)  # noqa: E731
    B, T = probe_shape(train.batch_size, train.seq_len, device, macs)
    stage = DenseStage(build_seeded(spec, 0, routed=False).to(device.torch), train, device)
    return macs(B, T) / _seconds_per_step(stage, B, T, spec.model.vocab_size, device)


def _controller_rate(spec: RunSpec, device: Device) -> float:
    macs = lambda B, T: step_macs(spec, batch_size=B, seq_len=T)["total"]  # noqa: E731
    B, T = probe_shape(spec.train.batch_size, spec.train.seq_len, device, macs)
    stage = ControllerStage(spec, build_seeded(spec, 0, routed=True).to(device.torch), device)
    return macs(B, T) / _seconds_per_step(stage, B, T, spec.model.vocab_size, device)


def heaviest(specs: list[RunSpec]) -> RunSpec:
    """The spec whose controller step costs the most MACs (the one to probe)."""
    return max(specs, key=lambda s: step_macs(s)["total"])


def backbone_seconds(spec: RunSpec, steps: int, rate: Throughput) -> float:
    """Seconds of ``steps`` backbone steps and their evaluations (0 with no step left: a cached backbone)."""
    if steps <= 0:
        return 0.0
    t = spec.backbone.train
    evals = steps // t.eval_every + 2
    forward = dense_step_macs(spec, "forward_only") * t.eval_batches
    return (steps * dense_step_macs(spec, "full_training") + evals * forward) / rate.dense_macs_per_s


def run_seconds(spec: RunSpec, steps: int, rate: Throughput) -> float:
    """Seconds of ``steps`` controller steps and their evaluations (0 with no step left: a finished run)."""
    if steps <= 0:
        return 0.0
    t = spec.train
    evals = steps // t.eval_every + 2
    forward = step_macs(spec)["routed_forward"] * t.eval_batches
    return (steps * step_macs(spec)["total"] + evals * forward) / rate.controller_macs_per_s


def runs_wall_seconds(seconds: list[float], slots: int) -> float:
    """Wall seconds of runs taking ``seconds`` each (in the study's order) when ``slots`` run at once, each
    next run starting in the first slot to free up (as :func:`specroute.train.parallel.run_parallel`
    hands them out)."""
    free = [0.0] * max(1, slots)
    for s in seconds:
        i = free.index(min(free))
        free[i] += s
    return max(free)


def human(seconds: float) -> str:
    """``93 s``, ``12.5 min``, ``3.4 h``, ``2.1 days``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
