"""How long a study will take: analytic MACs (specroute.model.cost) / a short measured throughput.

The probe times a few optimiser steps of the dense stage and of the most expensive controller arm on
random tokens (random weights), on the study's device. On a CPU the probe uses a small batch (at most
:data:`CPU_PROBE_TOKENS` tokens of at most 256 positions) so that even the paper profile's probe takes
seconds; the MACs of the probed batch come from the same cost model, so the throughput carries over.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from specroute.losses import compute_losses, lm_loss
from specroute.flops.analytic import dense_step_macs, step_macs
from specroute.spec.models import RunSpec
from specroute.train.device import Device
from specroute.train.stages import build_seeded

CPU_PROBE_TOKENS = 512
PROBE_STEPS = 2


@dataclass(frozen=True)
class Throughput:
    """Measured multiply-adds per second of the dense (stage 1) and controller (stage 2) steps."""

    dense_macs_per_s: float
    controller_macs_per_s: float


def _probe_shape(spec: RunSpec, train_batch: int, train_seq: int, device: Device) -> tuple[int, int]:
    if device.type == "cuda":
        return train_batch, train_seq
    T = min(train_seq, 256)
    return max(1, min(train_batch, CPU_PROBE_TOKENS // T)), T


def _time_steps(step, device: Device) -> float:
    step()  # warm-up (allocations, kernel selection)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(PROBE_STEPS):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / PROBE_STEPS


def probe(dense_spec: RunSpec, controller_spec: RunSpec, device: Device) -> Throughput:
    """Time a few steps of each stage on random data; see the module docstring."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Throughput(_dense_rate(dense_spec, device), _controller_rate(controller_spec, device))


def _dense_rate(spec: RunSpec, device: Device) -> float:
    B, T = _probe_shape(spec, spec.backbone.train.batch_size, spec.backbone.train.seq_len, device)
    model = build_seeded(spec, 0, routed=False).to(device.torch)
    idx = torch.randint(0, spec.model.vocab_size, (B, T), device=device.torch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with device.autocast():
            loss = lm_loss(model(idx).logits_BTV, idx)
        loss.backward()
        opt.step()

    return dense_step_macs(spec, "full_training", B, T) / _time_steps(step, device)


def _controller_rate(spec: RunSpec, device: Device) -> float:
    B, T = _probe_shape(spec, spec.train.batch_size, spec.train.seq_len, device)
    model = build_seeded(spec, 0, routed=True).to(device.torch)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-9)
    idx = torch.randint(0, spec.model.vocab_size, (B, T), device=device.torch)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with device.autocast():
            terms = compute_losses(model, idx, idx, spec, gen)
        terms.total.backward()
        opt.step()

    return step_macs(spec, batch_size=B, seq_len=T)["total"] / _time_steps(step, device)


def heaviest(specs: list[RunSpec]) -> RunSpec:
    """The spec whose controller step costs the most MACs (the one to probe)."""
    return max(specs, key=lambda s: step_macs(s)["total"])


def backbone_seconds(spec: RunSpec, steps: int, rate: Throughput) -> float:
    t = spec.backbone.train
    evals = steps // t.eval_every + 2
    forward = dense_step_macs(spec, "forward_only") * t.eval_batches
    return (steps * dense_step_macs(spec, "full_training") + evals * forward) / rate.dense_macs_per_s


def run_seconds(spec: RunSpec, steps: int, rate: Throughput) -> float:
    t = spec.train
    evals = steps // t.eval_every + 2
    forward = step_macs(spec)["routed_forward"] * t.eval_batches
    return (steps * step_macs(spec)["total"] + evals * forward) / rate.controller_macs_per_s


def human(seconds: float) -> str:
    """``93 s``, ``12.5 min``, ``3.4 h``, ``2.1 days``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
