"""The benchmark's cases: the spec variants they run, the models, and one step of each.

Every training case takes the study's step (:meth:`specroute.train.trainer.Trainer.train_step`: the
stage's optimiser from :func:`specroute.train.step.make_optimizer`, its clip, the stage's loss) on one
fixed batch; forward cases take a no-grad forward. See :mod:`specroute.bench.runner` for the families.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from specroute.bench.reference import HF_ACTIVATION, hf_lm_loss, hf_reference
from specroute.claims.paper import WALL_HOURS
from specroute.flops.analytic import dense_step_macs, flops_proxy, step_macs
from specroute.spec import Resolved, rebuild
from specroute.spec.models import RunSpec, ceil_budget
from specroute.train.compiled import compile_model
from specroute.train.device import Device
from specroute.train.stages import ControllerStage, DenseStage, seeded_model
from specroute.train.step import lr_at
from specroute.train.trainer import FixedBatch, Stage, Trainer

#: Budgets (full_fraction) at which the gather step is timed (issue 5, item 2).
BUDGETS: tuple[float, ...] = (0.25, 0.5, 0.75)
#: The paper's wall time with and without util/rank, hours on one V100-32GB (docs/CLAIMS.md C12).
PAPER_HOURS = WALL_HOURS  # C12 (specroute.claims.paper)
#: Quick mode (the tests): shrunken sizes, 1 warm-up step and 2 timed rounds, one torch thread; seconds
#: in all. Its figures check the code path, not the machine: at these sizes a step is mostly Python
#: overhead, and one thread avoids the thread pool's contention on a loaded machine.
QUICK = {"d_model": 64, "n_heads": 2, "seq_len": 32, "batch_size": 2, "vocab_size": 512, "cheap": 16,
         "warmup": 1, "repeats": 2, "threads": 1}


@dataclass(frozen=True)
class BenchOptions:
    """How to run the benchmark. ``repeats``/``warmup`` of None take the mode's default (5/2, quick 2/1)."""

    repeats: int | None = None
    warmup: int | None = None
    quick: bool = False
    device: str = "auto"
    reference: bool = True
    compile: bool | None = None  # None: on except in quick mode

    @property
    def compiled_cases(self) -> bool:
        """Whether the compiled training cases (dense, GPT-2 under torch.compile) are timed."""
        return (not self.quick) if self.compile is None else self.compile

    @property
    def rounds(self) -> int:
        return self.repeats or (QUICK["repeats"] if self.quick else 5)

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else (QUICK["warmup"] if self.quick else 2)


@dataclass
class Case:
    """One timed step: what it is, its predicted MACs, the step and its measurements.

    ``step``: runs one step (None: the case cannot run; ``status`` says why); ``state``: bytes of its
    parameters, buffers and optimiser state; ``release``: drops what the previous step left (gradients)
    before a memory measurement.
    """

    name: str                  # e.g. "train/gather@0.5"
    kind: str                  # "train" | "forward" | "recipe"
    variant: str               # "dense" | "masked" | "gather" | "hf_gpt2" | an arm name
    budget: float | None       # full_fraction of routed cases
    macs: float | None         # analytic MACs of the step (cost.py; GPT-2 gets the dense model's)
    step: Callable[[], Any] | None
    state: Callable[[], int] | None = None
    release: Callable[[], None] | None = None
    times_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)  # process CPU time of each timed step (all threads)
    status: str = "ok"
    peak_mb: float | None = None
    state_mb: float | None = None
    step_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.times_s) if self.times_s else None

    def as_dict(self, tokens: int) -> dict[str, Any]:
        med = self.median_s
        return {
            "name": self.name, "kind": self.kind, "variant": self.variant, "budget": self.budget,
            "status": self.status, "median_s": med, "mean_s": statistics.mean(self.times_s) if self.times_s else None,
            "min_s": min(self.times_s) if self.times_s else None,
            "times_s": self.times_s,
            "cpu_median_s": statistics.median(self.cpu_s) if self.cpu_s else None,
            "spread": quartile_spread(self.times_s), "tokens_per_s": tokens / med if med else None,
            "predicted_macs": self.macs, "peak_mb": self.peak_mb, "state_mb": self.state_mb,
            "step_mb": self.step_mb, **self.extra,
        }


def quartile_spread(xs: list[float]) -> float | None:
    """(Q3 - Q1) / median: the relative spread of the repetitions (None under 2 samples)."""
    if len(xs) < 2:
        return None
    qs = statistics.quantiles(xs, n=4, method="inclusive")
    return (qs[2] - qs[0]) / statistics.median(xs)


# --------------------------------------------------------------------------------------------------
# spec variants (all by re-validation)


def quick_spec(spec: RunSpec) -> RunSpec:
    """Quick mode's spec: same layers, routing and recipe; the width, batch and sequence of :data:`QUICK`."""
    m = spec.model
    return rebuild(spec, {
        "model": {"d_model": QUICK["d_model"], "n_heads": QUICK["n_heads"], "d_ff": None,
                  "context_length": QUICK["seq_len"], "vocab_size": min(m.vocab_size, QUICK["vocab_size"])},
        "routing": {"cheap_ffn_hidden": min(spec.routing.cheap_ffn_hidden, QUICK["cheap"])},
        "train": {"batch_size": QUICK["batch_size"], "seq_len": QUICK["seq_len"]},
        "backbone": {"train": {"batch_size": QUICK["batch_size"], "seq_len": QUICK["seq_len"]}},
    })


def full_training(spec: RunSpec, execution: str, budget: float | None = None) -> RunSpec:
    """The routed model trained on every parameter with the LM loss alone (as the dense model and the
    reference are), with a known realised share (top-k per sequence)."""
    b = spec.routing.budget.full_fraction if budget is None else budget
    return rebuild(spec, {
        "train": {"trainable": ["gate", "cheap_ffn", "backbone"]},
        "loss": {"lm": 1.0, "util": 0.0, "rank": 0.0, "jepa": 0.0, "budget": 0.0},
        "routing": {"execution": execution, "estimator": "score_scaling",
                    "budget": {"full_fraction": b, "enforcement": "topk_sequence"}},
    })


def realised_share(spec: RunSpec) -> float:
    """Share of full tokens under top-k per sequence: ceil(b*T) / T."""
    T = spec.train.seq_len
    return ceil_budget(spec.routing.budget.full_fraction, T) / T


def recipe_pairs(resolved: Resolved, quick: bool) -> tuple[dict[str, RunSpec], list[dict[str, str]]]:
    """The arms to time in controller-only mode, and (util/rank, LM-only) pairs per gate kind.

    A pair is the first arm of a gate kind with util or rank on and the first without (A3 removes both).
    When the study lacks one side of a pair, it is built from the other by setting util and rank
    (to 1 / to 0) and named ``<arm>+utilrank`` / ``<arm>-utilrank``.
    """
    arms: dict[str, RunSpec] = {}
    for name in resolved.study.arms:
        spec = resolved.arm_spec(name)
        arms[name] = quick_spec(spec) if quick else spec
    pairs = []
    for kind in dict.fromkeys(s.gate.kind for s in arms.values()):
        with_oracle = [a for a, s in arms.items() if s.gate.kind == kind and s.loss.uses_oracle]
        without = [a for a, s in arms.items() if s.gate.kind == kind and not s.loss.uses_oracle]
        if with_oracle and not without:
            name = f"{with_oracle[0]}-utilrank"
            arms[name] = rebuild(arms[with_oracle[0]], {"loss": {"util": 0.0, "rank": 0.0}})
            without = [name]
        elif without and not with_oracle:
            name = f"{without[0]}+utilrank"
            arms[name] = rebuild(arms[without[0]], {"loss": {"util": 1.0, "rank": 1.0}})
            with_oracle = [name]
        pairs.append({"gate": kind, "utilrank": with_oracle[0], "lm": without[0]})
    return arms, pairs


# --------------------------------------------------------------------------------------------------
# steps


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """Bytes of the model's parameters and buffers and the optimiser's state (each storage once)."""
    seen, total = set(), 0
    tensors = [*model.parameters(), *model.buffers()]
    if optimizer is not None:
        tensors += [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


class TrainingStep:
    """The study's step of ``stage`` on one batch (:meth:`Trainer.train_step`, the trainer of a study
    without files); calling it runs one step at the first step's learning rate."""

    def __init__(self, stage: Stage, idx_BT: Tensor, targets_BT: Tensor, device: Device):
        self.trainer = Trainer(stage, FixedBatch(idx_BT, targets_BT), {"data": 0, "loss": 0}, device)
        self.idx_BT, self.targets_BT = idx_BT, targets_BT

    def __call__(self) -> None:
        self.trainer.train_step(self.idx_BT, self.targets_BT)

    def state_bytes(self) -> int:
        return state_bytes(self.trainer.stage.model, self.trainer.optimizer)

    def release(self) -> None:
        """Drop the gradients the last step left (the next step's zero_grad would), so that a measured
        step grows by them as a study's first step does."""
        self.trainer.optimizer.zero_grad(set_to_none=True)


class ForwardStep:
    """One no-grad forward of ``model`` on ``idx_BT`` (logits only)."""

    def __init__(self, model: nn.Module, idx_BT: Tensor, device: Device):
        self.model, self.idx_BT, self.device = model, idx_BT, device

    def __call__(self) -> None:
        with torch.no_grad(), self.device.autocast():
            out = self.model(self.idx_BT)
            getattr(out, "logits_BTV", None)  # the decoder's logits are computed on demand (GPT-2's always are)

    def state_bytes(self) -> int:
        return state_bytes(self.model, None)


# --------------------------------------------------------------------------------------------------
# the cases


def _routed_macs(spec: RunSpec) -> tuple[float, float]:
    """(training step, forward) MACs of a routed case at its realised share."""
    parts = step_macs(spec, full_fraction=realised_share(spec))
    return parts["total"], parts["routed_forward"] + parts["gate"]


def _lm_cases(name: str, variant: str, budget: float | None, stage: DenseStage, macs: tuple[float, float],
              batch: tuple[Tensor, Tensor], device: Device, forward_too: bool) -> list[Case]:
    """``train/<name>`` (the study's step of ``stage``) and, if ``forward_too``, ``forward/<name>``."""
    train = TrainingStep(stage, *batch, device)
    cases = [Case(f"train/{name}", "train", variant, budget, macs[0], train, train.state_bytes, train.release)]
    if forward_too:
        fwd = ForwardStep(stage.model, batch[0], device)
        cases.append(Case(f"forward/{name}", "forward", variant, budget, macs[1], fwd, fwd.state_bytes))
    return cases


def build_cases(resolved: Resolved, options: BenchOptions, device: Device) -> tuple[list[Case], dict[str, Any]]:
    """Every case of the benchmark, ready to time, and the settings they share."""
    first_arm = next(iter(resolved.study.arms))
    base = resolved.arm_spec(first_arm)
    if options.quick:
        base = quick_spec(base)
    B, T = base.train.batch_size, base.train.seq_len
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, base.model.vocab_size, (B, T + 1), generator=g).to(device.torch)
    batch = data[:, :-1].contiguous(), data[:, 1:].contiguous()

    spec_budget = base.routing.budget.full_fraction
    budgets = sorted(set(BUDGETS) | {spec_budget})
    masked_spec = full_training(base, "masked")
    train = masked_spec.train
    # MACs: the routed cases at their realised share; dense and GPT-2 under the same accounting
    dense_macs = dense_step_macs(masked_spec, "full_training"), dense_step_macs(masked_spec, "forward_only")

    def model(s: RunSpec, routed: bool = True) -> nn.Module:
        return seeded_model(s, 0, routed).to(device.torch)

    cases = _lm_cases("dense", "dense", None, DenseStage(model(masked_spec, routed=False), train, device),
                      dense_macs, batch, device, True)
    cases += _lm_cases("masked", "masked", spec_budget, DenseStage(model(masked_spec), train, device),
                       _routed_macs(masked_spec), batch, device, True)
    for b in budgets:
        s = full_training(base, "gather", b)
        cases += _lm_cases(f"gather@{b:g}", "gather", b, DenseStage(model(s), s.train, device),
                           _routed_macs(s), batch, device, b == spec_budget)

    hf = hf_reference(masked_spec, device) if options.reference else "skipped (--no-reference)"
    if isinstance(hf, str):
        cases += [Case(f"{kind}/hf_gpt2", kind, "hf_gpt2", None, macs, None, status=hf)
                  for kind, macs in zip(("train", "forward"), dense_macs)]
    else:
        stage = DenseStage(hf, train, device, loss_of=functools.partial(hf_lm_loss, hf))
        cases += _lm_cases("hf_gpt2", "hf_gpt2", None, stage, dense_macs, batch, device, True)
    if options.compiled_cases:  # the same two training steps with the model's forward compiled
        cases += _lm_cases("dense+compile", "dense+compile", None,
                           DenseStage(compile_model(model(masked_spec, routed=False)), train, device),
                           dense_macs, batch, device, False)
        hf_c = hf_reference(masked_spec, device) if options.reference else "skipped (--no-reference)"
        if isinstance(hf_c, str):
            cases.append(Case("train/hf_gpt2+compile", "train", "hf_gpt2+compile", None, dense_macs[0], None,
                              status=hf_c))
        else:
            compile_model(hf_c)
            stage = DenseStage(hf_c, train, device, loss_of=functools.partial(hf_lm_loss, hf_c))
            cases += _lm_cases("hf_gpt2+compile", "hf_gpt2+compile", None, stage, dense_macs, batch, device, False)

    arms, pairs = recipe_pairs(resolved, options.quick)
    for name, s in arms.items():
        s = arms[name] = rebuild(s, {"train": {"batch_size": B, "seq_len": T}})
        # each arm's trainer draws its labelled layers and rank pairs from its own loss generator with the
        # same seed, so the util/rank arms label the same layer at the same step
        step = TrainingStep(ControllerStage(s, model(s), device), *batch, device)
        cases.append(Case(f"recipe/{name}", "recipe", name, s.routing.budget.full_fraction,
                          step_macs(s)["total"], step, step.state_bytes, step.release,
                          extra={"gate": s.gate.kind, "uses_oracle": s.loss.uses_oracle,
                                 "flops_proxy": flops_proxy(s), "execution": s.routing.execution}))
    o = train.optimizer
    settings = {
        "base_arm": first_arm, "batch_size": B, "seq_len": T, "tokens_per_step": B * T,
        "spec_budget": spec_budget, "budgets": budgets, "pairs": pairs,
        "model": masked_spec.model.model_dump(mode="json"),
        "routing": {"controlled_layers": list(base.routing.controlled_layers),
                    "cheap_ffn_hidden": base.routing.cheap_ffn_hidden,
                    "enforcement": "topk_sequence", "estimator": "score_scaling"},
        "gate": base.gate.model_dump(mode="json"),
        "recipe_execution": sorted({s.routing.execution for s in arms.values()}),
        "optimizer": f"the study's AdamW (weight decay {o.weight_decay:g} on matrices only), "
                     f"lr {lr_at(0, train.steps, o):g}",
        "grad_clip": train.grad_clip,
        "reference_activation": HF_ACTIVATION,
        # gather's MACs over the whole budget range (share = b exactly), for the plot's predicted curve
        "predicted_gather_macs": [
            [i / 20, step_macs(full_training(base, "gather", i / 20), full_fraction=i / 20)["total"]]
            for i in range(21)],
        "quick_sizes": QUICK if options.quick else None,
    }
    return cases, settings
