"""Measuring routed vs dense training steps side by side in one process (``specroute bench``).

Three families of cases, all on the same batch (B sequences of T random token ids, from the spec's
``train.batch_size`` / ``train.seq_len``), the same device and the same precision:

* ``train``: one full-parameter training step — forward, LM loss, backward of every parameter,
  global-norm clip (``train.grad_clip``), AdamW step, ``zero_grad(set_to_none=True)`` — for the dense
  full-only model, the routed model with ``masked`` execution, the routed model with ``gather``
  execution at each budget of :data:`BUDGETS`, and Hugging Face transformers' GPT-2 at the same dense
  configuration (the reference; its loss comes from ``labels``).
* ``forward``: one no-grad forward (logits only) of dense, masked, gather at the spec's budget, GPT-2.
* ``recipe``: the study's own step — controller-only training (``compute_losses`` of the arm's recipe,
  backward, clip, AdamW on the trainable set) — for each arm, used to compare A3 (LM only) with util/rank.
  A util/rank step's cost depends on which controlled layer it labels (``oracle.layers_per_step``
  drawn at random), so these are compared by their *mean* step time, which is what a run's wall time
  adds up; the other families by their median.

Every case is warmed up, then the cases are run round-robin (in a fixed order, each an untimed
lead-in step and a timed step) for ``repeats`` rounds and each case's median is reported, so slow
drifts of machine load hit every case alike. The routed cases use top-k per sequence (exactly
ceil(b*T) full tokens per sequence, so the realised share is known) and the score-scaling estimator
(the only one gather supports).

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
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from specroute.losses import compute_losses, lm_loss
from specroute.flops.analytic import dense_step_macs, flops_proxy, step_macs
from specroute.model.decoder import build_model
from specroute.spec.loader import Resolved, rebuild
from specroute.spec.models import RunSpec, ceil_budget
from specroute.store import UserError
from specroute.train.device import Device, environment, pick_device

#: Budgets (full_fraction) at which the gather step is timed (issue 5, item 2).
BUDGETS: tuple[float, ...] = (0.25, 0.5, 0.75)
#: The paper's wall time with and without util/rank, hours on one V100-32GB (docs/CLAIMS.md C12).
PAPER_HOURS = {"utilrank": 2.87, "lm": 1.75}
#: GPT-2's activation is the tanh GELU. transformers' "gelu_new" computes it as a chain of Python-level
#: elementwise ops; "gelu_pytorch_tanh" is the same function through PyTorch's fused kernel (as ours),
#: the faster of the two, so the reference is not slowed down by its activation.
HF_ACTIVATION = "gelu_pytorch_tanh"
#: What "not installed" says, and how to fix it.
HF_MISSING = "not installed (pip install 'specroute[reference]')"
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

    @property
    def rounds(self) -> int:
        return self.repeats or (QUICK["repeats"] if self.quick else 5)

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else (QUICK["warmup"] if self.quick else 2)


@dataclass
class Case:
    """One timed step: what it is, its predicted MACs, the callable and its measurements."""

    name: str                  # e.g. "train/gather@0.5"
    kind: str                  # "train" | "forward" | "recipe"
    variant: str               # "dense" | "masked" | "gather" | "hf_gpt2" | an arm name
    budget: float | None       # full_fraction of routed cases
    macs: float | None         # analytic MACs of the step (cost.py; GPT-2 gets the dense model's)
    step: Callable[[], None] | None
    state: Callable[[], int] | None = None  # bytes of parameters + buffers + optimiser state
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
        q = quartile_spread(self.times_s)
        return {
            "name": self.name, "kind": self.kind, "variant": self.variant, "budget": self.budget,
            "status": self.status, "median_s": med, "mean_s": statistics.mean(self.times_s) if self.times_s else None,
            "min_s": min(self.times_s) if self.times_s else None,
            "times_s": self.times_s,
            "cpu_median_s": statistics.median(self.cpu_s) if self.cpu_s else None,
            "spread": q, "tokens_per_s": tokens / med if med else None,
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


def shrink(spec: RunSpec) -> RunSpec:
    """Quick mode's spec: same layers, routing and recipe, tiny width, batch and sequence."""
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
        arms[name] = shrink(spec) if quick else spec
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


def make_optimizer(params: list[nn.Parameter], spec: RunSpec) -> torch.optim.Optimizer:
    """AdamW with the spec's settings; fused kernel when torch has one for the device (else foreach)."""
    o = spec.train.optimizer
    kw = dict(lr=o.lr_peak, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    try:
        return torch.optim.AdamW(params, fused=True, **kw)
    except (RuntimeError, TypeError):  # pragma: no cover - older torch / unsupported device
        return torch.optim.AdamW(params, foreach=True, **kw)


def _state_bytes(model: nn.Module, opt: torch.optim.Optimizer | None) -> int:
    seen, total = set(), 0
    tensors = [*model.parameters(), *model.buffers()]
    if opt is not None:
        tensors += [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def train_step(model: nn.Module, loss_fn: Callable[[], torch.Tensor], spec: RunSpec,
               device: Device) -> tuple[Callable[[], None], Callable[[], int]]:
    """One optimiser step on the model's trainable parameters; returns (step, state bytes)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, spec)
    clip = spec.train.grad_clip

    def step() -> None:
        with device.autocast():
            loss = loss_fn()
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, lambda: _state_bytes(model, opt)


def forward_step(model: nn.Module, fwd: Callable[[], torch.Tensor],
                 device: Device) -> tuple[Callable[[], None], Callable[[], int]]:
    def step() -> None:
        with torch.no_grad(), device.autocast():
            fwd()

    return step, lambda: _state_bytes(model, None)


def hf_reference(spec: RunSpec, device: Device) -> nn.Module | str:
    """transformers' GPT-2 at the dense configuration of ``spec``, or the reason it cannot be built."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return HF_MISSING
    m = spec.model
    if not m.bias:
        return "not comparable: GPT-2 always has biases and this spec has model.bias=false"
    with _quiet_transformers():
        cfg = GPT2Config(
            n_layer=m.n_layers, n_embd=m.d_model, n_head=m.n_heads, n_positions=m.context_length,
            vocab_size=m.vocab_size, n_inner=m.ffn_hidden, activation_function=HF_ACTIVATION,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
            initializer_range=m.init_std, tie_word_embeddings=m.tie_embeddings, use_cache=False,
            bos_token_id=None, eos_token_id=None, attn_implementation="sdpa",
        )
        torch.manual_seed(0)
        model = GPT2LMHeadModel(cfg)
    return model.to(device.torch).train()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' logging at error level for the block (its config warnings are not ours to show)."""
    try:
        import transformers
    except ImportError:
        yield
        return
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)


def hf_version() -> str | None:
    try:
        import transformers
    except ImportError:
        return None
    return transformers.__version__


# --------------------------------------------------------------------------------------------------
# the cases


def build_cases(resolved: Resolved, options: BenchOptions, device: Device) -> tuple[list[Case], dict[str, Any]]:
    """Every case of the benchmark, ready to time, and the settings they share."""
    first_arm = next(iter(resolved.study.arms))
    base = resolved.arm_spec(first_arm)
    if options.quick:
        base = shrink(base)
    B, T = base.train.batch_size, base.train.seq_len
    V = base.model.vocab_size
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, V, (B, T + 1), generator=g).to(device.torch)
    idx, tgt = data[:, :-1].contiguous(), data[:, 1:].contiguous()

    spec_budget = base.routing.budget.full_fraction
    budgets = sorted(set(BUDGETS) | {spec_budget})
    masked_spec = full_training(base, "masked")
    gather_specs = {b: full_training(base, "gather", b) for b in budgets}
    # MACs: the routed cases at their realised share; dense and GPT-2 under the same accounting
    dense_train = dense_step_macs(masked_spec, "full_training")
    dense_fwd = dense_step_macs(masked_spec, "forward_only")

    def routed_macs(s: RunSpec) -> tuple[float, float]:
        parts = step_macs(s, full_fraction=realised_share(s))
        return parts["total"], parts["routed_forward"] + parts["gate"]

    cases: list[Case] = []

    def lm_of(model: nn.Module) -> Callable[[], torch.Tensor]:
        return lambda: lm_loss(model(idx).logits_BTV, tgt)

    def add(name: str, variant: str, budget: float | None, model: nn.Module, spec: RunSpec,
            train_macs: float | None, fwd_macs: float | None, loss: Callable[[], torch.Tensor],
            fwd: Callable[[], torch.Tensor], forward_too: bool) -> None:
        step, state = train_step(model, loss, spec, device)
        cases.append(Case(f"train/{name}", "train", variant, budget, train_macs, step, state))
        if forward_too:
            step, state = forward_step(model, fwd, device)
            cases.append(Case(f"forward/{name}", "forward", variant, budget, fwd_macs, step, state))

    torch.manual_seed(0)
    dense = build_model(masked_spec, routed=False).to(device.torch)
    add("dense", "dense", None, dense, masked_spec, dense_train, dense_fwd, lm_of(dense),
        lambda: dense(idx).logits_BTV, True)
    torch.manual_seed(0)
    masked = build_model(masked_spec).to(device.torch)
    add("masked", "masked", spec_budget, masked, masked_spec, *routed_macs(masked_spec), lm_of(masked),
        lambda: masked(idx).logits_BTV, True)
    for b, s in gather_specs.items():
        torch.manual_seed(0)
        model = build_model(s).to(device.torch)
        add(f"gather@{b:g}", "gather", b, model, s, *routed_macs(s), lm_of(model),
            (lambda mod: lambda: mod(idx).logits_BTV)(model), b == spec_budget)

    hf = hf_reference(masked_spec, device) if options.reference else "skipped (--no-reference)"
    if isinstance(hf, str):
        for kind in ("train", "forward"):
            cases.append(Case(f"{kind}/hf_gpt2", kind, "hf_gpt2", None,
                              dense_train if kind == "train" else dense_fwd, None, status=hf))
    else:
        add("hf_gpt2", "hf_gpt2", None, hf, masked_spec, dense_train, dense_fwd,
            lambda: hf(input_ids=idx, labels=idx).loss, lambda: hf(input_ids=idx).logits, True)

    arms, pairs = recipe_pairs(resolved, options.quick)
    for name, s in arms.items():
        s = rebuild(s, {"train": {"batch_size": B, "seq_len": T}})
        arms[name] = s
        torch.manual_seed(0)
        model = build_model(s).to(device.torch)
        # each arm draws its labelled layers and rank pairs from its own generator with the same seed,
        # so the util/rank arms label the same layer at the same step
        gen = torch.Generator().manual_seed(0)
        step, state = train_step(
            model, (lambda mod, sp, g: lambda: compute_losses(mod, idx, tgt, sp, g).total)(model, s, gen), s, device)
        cases.append(Case(f"recipe/{name}", "recipe", name, s.routing.budget.full_fraction,
                          step_macs(s)["total"], step, state,
                          extra={"gate": s.gate.kind, "uses_oracle": s.loss.uses_oracle,
                                 "flops_proxy": flops_proxy(s), "execution": s.routing.execution}))
    settings = {
        "base_arm": first_arm, "batch_size": B, "seq_len": T, "tokens_per_step": B * T,
        "spec_budget": spec_budget, "budgets": budgets, "pairs": pairs,
        "model": masked_spec.model.model_dump(mode="json"),
        "routing": {"controlled_layers": list(base.routing.controlled_layers),
                    "cheap_ffn_hidden": base.routing.cheap_ffn_hidden,
                    "enforcement": "topk_sequence", "estimator": "score_scaling"},
        "gate": base.gate.model_dump(mode="json"),
        "recipe_execution": sorted({s.routing.execution for s in arms.values()}),
        "optimizer": f"AdamW ({'fused' if _fused_ok(device) else 'foreach'}), lr {base.train.optimizer.lr_peak:g}",
        "grad_clip": base.train.grad_clip,
        "reference_activation": HF_ACTIVATION,
        # gather's MACs over the whole budget range (share = b exactly), for the plot's predicted curve
        "predicted_gather_macs": [
            [i / 20, step_macs(full_training(base, "gather", i / 20), full_fraction=i / 20)["total"]]
            for i in range(21)],
        "quick_sizes": QUICK if options.quick else None,
    }
    return cases, settings


def _fused_ok(device: Device) -> bool:
    try:
        torch.optim.AdamW([nn.Parameter(torch.zeros(1, device=device.torch))], fused=True)
        return True
    except (RuntimeError, TypeError):  # pragma: no cover
        return False


# --------------------------------------------------------------------------------------------------
# timing and memory


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
        for _ in range(options.warmup_steps):
            c.step()
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
    variant = {"dense": 0, "hf_gpt2": 1, "masked": 2, "gather": 3}.get(c.variant, 4)
    first = c.budget == 0.5  # the target's budget right after masked
    return family, variant, (0 if first else 1, c.budget or 0.0)


class _CpuPeak:
    """Peak resident-set growth of this process during a block (Linux: VmHWM reset via clear_refs)."""

    def __init__(self) -> None:
        self.ok = _can_reset_hwm()
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
        before = _status_kb("VmRSS")
        _reset_hwm()
        yield out
        out.append(max(0, _status_kb("VmHWM") - before) * 1024)


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) if m else 0


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _can_reset_hwm() -> bool:
    try:
        _reset_hwm()
        return _status_kb("VmHWM") > 0
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


# --------------------------------------------------------------------------------------------------
# the run


def machine() -> dict[str, Any]:
    cpu = None
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            cpu = m.group(1).strip() if m else None
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        load = None
    return {"cpu_model": cpu or platform.processor() or platform.machine(), "machine": platform.machine(),
            "load_avg_1_5_15": load}


class OtherLoad:
    """CPU time that other processes (and the hypervisor, as steal) took from this machine since
    construction, as a share of its capacity (0: the benchmark had the machine to itself, 1: others used
    every CPU all the time). Linux ``/proc/stat`` less this process's own CPU time; None elsewhere."""

    def __init__(self) -> None:
        self.t0, self.own0, self.busy0 = time.perf_counter(), time.process_time(), _busy_cpu_s()

    def share(self) -> float | None:
        busy = _busy_cpu_s()
        if busy is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.t0
        others = (busy - self.busy0) - (time.process_time() - self.own0)
        return min(1.0, max(0.0, others / (wall * (os.cpu_count() or 1)))) if wall > 0 else None


def _busy_cpu_s() -> float | None:
    """Seconds all CPUs have spent not idle since boot (user, nice, system, irq, softirq, steal)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / tick


def run_bench(resolved: Resolved, options: BenchOptions,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark of a resolved study; return the summary (JSON-able, see ``report.py``).

    Raises:
        UserError: ``--device cuda`` without a CUDA device, or ``repeats`` < 1.
    """
    if options.rounds < 1 or options.warmup_steps < 0:
        raise UserError("--repeats must be >= 1 and warm-up >= 0")
    device = pick_device(options.device)
    with _threads(QUICK["threads"] if options.quick else None):
        return _run(resolved, options, device, progress or (lambda _msg: None))


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block (None: left as they are)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(resolved: Resolved, options: BenchOptions, device: Device, say: Callable[[str], None]) -> dict[str, Any]:
    env = {**environment(device), **machine(), "transformers": hf_version()}
    start_load = env["load_avg_1_5_15"]
    say("building models")
    with _quiet_transformers():
        cases, settings = build_cases(resolved, options, device)
        say(f"timing {sum(c.step is not None for c in cases)} cases: {options.warmup_steps} warm-up step(s) "
            f"each, then {options.rounds} interleaved rounds")
        t0 = time.perf_counter()
        others = OtherLoad()
        time_cases(cases, options, device, say)
        env["other_processes_cpu_share"] = others.share()
        say("measuring peak memory")
        measure_memory(cases, device)
    env["load_avg_1_5_15_end"] = machine()["load_avg_1_5_15"]
    env["load_avg_1_5_15"] = start_load
    env["timing_wall_s"] = time.perf_counter() - t0
    from specroute.bench.report import summarise

    return summarise(resolved, options, device, env, settings, cases, memory_method(device))
