"""How much memory a study needs: a closed-form estimate from the spec (no model built), set against what the
machine has, before anything is allocated (``specroute run``) and shown by ``specroute validate``.

The estimate of one process's peak, per stage, in two parts:

- **exact** (counted from :func:`specroute.flops.analytic.count_params`): fp32 parameters (4 bytes each), and
  for every trained parameter its fp32 gradient and AdamW's two moments (12 bytes more); on CUDA the bf16
  copies autocast keeps of the weights (2 bytes); in a worker the backbone's state it receives (4 bytes per
  backbone parameter); and :data:`PROCESS_BYTES` for the process itself.
- **activations** (approximate): what autograd keeps for the backward of one step at the stage's batch, per
  token — 17 x D values per block on the gradient path (LayerNorm inputs and outputs, q, k, v, attention
  output, FFN input, hidden pre- and post-GELU: 9 D + 2 x 4 D; Korthikanti et al. 2022, without dropout; a
  SwiGLU FFN keeps 4 values per hidden unit instead of 2), the
  routed layers' gate and cheap FFN, and the LM head's logits, log-softmax and their gradient (V values each,
  fp32); the oracle's no-grad continuations add two heads' worth. Values are 4 bytes on a CPU (fp32) and 2 on
  CUDA (bf16 autocast; the loss in fp32). Attention is assumed to run fused (no T x T matrix kept); a kernel
  that keeps it, temporaries and the allocator's fragmentation can double this part, and a kernel that frees
  more can halve it: the estimate of activations is a band, [0.5, 2] x the figure.

Controller runs that go in parallel (CPU workers) each need their own stage-2 memory; the main process keeps
the backbone meanwhile. The study's peak is the larger of stage 1 (the backbone, alone) and stage 2.

The rule (:func:`judge`): the exact part alone beyond the device's total memory cannot fit (refused); the whole
estimate's upper end beyond what is available now may not fit (refused unless ``--yes``, then a warning).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from specroute.flops.analytic import count_params
from specroute.spec.models import RunSpec
from specroute.store import UserError

#: Memory of a process before any model (Python, torch and its libraries; on CUDA the context), in bytes.
PROCESS_BYTES = 512 << 20
#: Values autograd keeps per token of a block on the gradient path, in units of d_model (see the module doc).
BLOCK_VALUES_PER_D = 17
#: Values autograd keeps per hidden unit of a full FFN, by kind: mlp the hidden pre- and post-GELU; swiglu the
#: two input projections' outputs, the SiLU's output and their product.
FFN_VALUES_PER_HIDDEN = {"mlp": 2, "swiglu": 4}
#: The band around the activation estimate: [LOW, HIGH] x the figure.
ACTIVATION_LOW, ACTIVATION_HIGH = 0.5, 2.0


@dataclass(frozen=True)
class StageMemory:
    """One process's peak in one stage, in bytes: ``exact`` (parameters, gradients, optimiser state, the
    process) and ``activations`` (the central figure of an approximate part)."""

    stage: str
    exact: int
    activations: int

    @property
    def low(self) -> int:
        return self.exact + int(ACTIVATION_LOW * self.activations)

    @property
    def central(self) -> int:
        return self.exact + self.activations

    @property
    def high(self) -> int:
        return self.exact + int(ACTIVATION_HIGH * self.activations)


@dataclass(frozen=True)
class MemoryEstimate:
    """A study's peak memory on its device: the stage that peaks, with every process of it summed."""

    device: str  # "cpu" | "cuda"
    peak: StageMemory
    stages: tuple[StageMemory, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "peak_stage": self.peak.stage,
                "bytes": {"exact": self.peak.exact, "low": self.peak.low, "central": self.peak.central,
                          "high": self.peak.high},
                "stages": {s.stage: {"exact": s.exact, "activations": s.activations} for s in self.stages}}


@dataclass(frozen=True)
class Available:
    """The memory of the device a study would run on: what (``RAM``, ``GPU memory (name)``), how much is
    free now and the total, in bytes."""

    what: str
    free: int
    total: int


def _activations(spec: RunSpec, dense: bool, value_bytes: int) -> int:
    """Bytes autograd keeps for one training step of a stage (see the module docstring)."""
    m, r = spec.model, spec.routing
    train = spec.backbone.train if dense else spec.train
    N = train.batch_size // train.grad_accum_steps * train.seq_len  # one micro-batch's graph at a time
    D, V = m.d_model, m.vocab_size
    controlled = [] if dense else list(r.controlled_layers)
    trains_backbone = dense or "backbone" in spec.train.trainable
    lowest = 0 if trains_backbone or not controlled else min(controlled)
    per_token = 2 * D  # embeddings' output, final LayerNorm
    per_token += (m.n_layers - lowest) * BLOCK_VALUES_PER_D * D
    per_token += (m.ffn_hidden * FFN_VALUES_PER_HIDDEN[m.ffn] - 8 * D) * (m.n_layers - lowest)  # d_ff, FFN kind
    gate = spec.gate
    gate_width = gate.hidden if gate.kind == "G1" else gate.latent_dim + 2 * gate.predictor_hidden
    per_token += len(controlled) * (3 * D + 2 * gate_width + 2 * r.cheap_ffn_hidden)
    head = 3 * V * 4 + (V * value_bytes if value_bytes != 4 else 0)  # logits (+ their fp32 copy), log-softmax, grad
    oracle = 2 * 2 * V * 4 if not dense and spec.loss.uses_oracle else 0  # two no-grad continuations' heads
    return N * (per_token * value_bytes + head + oracle)


def stage_memory(spec: RunSpec, device: str) -> tuple[StageMemory, StageMemory]:
    """(stage 1: dense backbone pretraining, stage 2: one controller run) for one process on ``device``."""
    pc = count_params(spec)
    value_bytes = 2 if device == "cuda" else 4
    cast = 2 if device == "cuda" else 0  # autocast's bf16 weight copies
    dense_exact = PROCESS_BYTES + pc.backbone * (16 + cast)
    trainable = {"gate": pc.gate, "cheap_ffn": pc.cheap_ffn, "backbone": pc.backbone}
    trained = sum(trainable[g] for g in set(spec.train.trainable))
    routed_exact = PROCESS_BYTES + pc.total * (4 + cast) + trained * 12 + pc.backbone * 4  # + the state received
    return (StageMemory("backbone pretraining", dense_exact, _activations(spec, True, value_bytes)),
            StageMemory("controller run", routed_exact, _activations(spec, False, value_bytes)))


def estimate_study(specs: list[RunSpec], device: str, parallel: int = 1, backbone: bool = True) -> MemoryEstimate:
    """The peak memory of a study of ``specs`` (its arms) on ``device``, ``parallel`` controller runs at once
    (CPU workers), stage 1 included when ``backbone`` (it is not when a checkpoint is loaded and cached).
    Raises ValueError for an empty ``specs``."""
    if not specs:
        raise ValueError("no run specs to estimate")
    dense = max((stage_memory(s, device)[0] for s in specs), key=lambda s: s.high)
    run = max((stage_memory(s, device)[1] for s in specs), key=lambda s: s.high)
    main = PROCESS_BYTES + count_params(specs[0]).backbone * 4
    parallel = max(1, parallel)
    runs = run if parallel == 1 else StageMemory(f"{parallel} controller runs at once",
                                                 main + parallel * run.exact, parallel * run.activations)
    stages = (dense, runs) if backbone and not specs[0].backbone.checkpoint else (runs,)
    return MemoryEstimate(device, max(stages, key=lambda s: s.high), stages)


def available(device: str) -> Available:
    """The memory of ``device`` (``cpu``: RAM through psutil; ``cuda``: the first GPU's, through torch)."""
    if device == "cuda":
        import torch

        free, total = torch.cuda.mem_get_info(0)
        return Available(f"GPU memory ({torch.cuda.get_device_name(0)})", int(free), int(total))
    import psutil

    vm = psutil.virtual_memory()
    return Available("RAM", int(vm.available), int(vm.total))


def human_bytes(n: float) -> str:
    """``512 MiB``, ``3.2 GiB``, ``1.5 TiB``, ``2.0e+06 TiB``: binary units, one decimal from GiB up."""
    if n < 1 << 30:
        return f"{n / (1 << 20):.0f} MiB"
    if n < 1 << 40:
        return f"{n / (1 << 30):.1f} GiB"
    if n < 1 << 50:
        return f"{n / (1 << 40):.1f} TiB"
    return f"{n / (1 << 40):.1e} TiB"


@dataclass(frozen=True)
class Judgement:
    """Whether a study fits: ``status`` "fits", "uncertain" (the upper end of the estimate is beyond what is
    free now) or "cannot" (the exact part alone is beyond the device's total); ``message`` says why."""

    status: str
    message: str


def describe(est: MemoryEstimate, avail: Available) -> str:
    """``about 3.1 GiB (1.9-5.5 GiB) at peak (backbone pretraining) on cpu; RAM: 21.9 GiB free of 23.4 GiB``."""
    p = est.peak
    return (f"about {human_bytes(p.central)} ({human_bytes(p.low)}-{human_bytes(p.high)}) at peak ({p.stage}) on "
            f"{est.device}; {avail.what}: {human_bytes(avail.free)} free of {human_bytes(avail.total)}")


def judge(est: MemoryEstimate, avail: Available) -> Judgement:
    """The rule of the module docstring, with a message naming the estimate and what is available."""
    p = est.peak
    if p.exact > avail.total:
        return Judgement("cannot", f"the study cannot fit in memory: its parameters, gradients and optimiser state "
                         f"alone need {human_bytes(p.exact)} ({p.stage} on {est.device}), beyond the "
                         f"{human_bytes(avail.total)} of {avail.what} of this machine; make the model smaller")
    if p.high > avail.free:
        return Judgement("uncertain", f"the study may not fit in memory: it needs {describe(est, avail)}; a "
                         "smaller batch (train.batch_size, backbone.train.batch_size), micro-batches "
                         "(train.grad_accum_steps, backbone.train.grad_accum_steps) or fewer --workers need less")
    return Judgement("fits", describe(est, avail))


def check_memory(specs: list[RunSpec], device: str, parallel: int, yes: bool) -> str | None:
    """Refuse a study that cannot fit ``device``'s memory, before anything is allocated (:func:`judge`).

    Returns a warning to print when the study may not fit and ``yes`` lets it run anyway, else None.
    Raises UserError: it cannot fit, or it may not fit and not ``yes`` (the message says to pass --yes).
    """
    verdict = judge(estimate_study(specs, device, parallel), available(device))
    if verdict.status == "cannot":
        raise UserError(verdict.message)
    if verdict.status == "uncertain":
        if not yes:
            raise UserError(f"{verdict.message}. Pass --yes to run it anyway.")
        return f"{verdict.message}; running anyway (--yes)"
    return None
