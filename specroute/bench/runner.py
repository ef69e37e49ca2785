"""Measuring routed vs dense training steps side by side in one process (``specroute bench``).

Three families of cases, all on the same batch (B sequences of T random token ids, from the spec's
``train.batch_size`` / ``train.seq_len``), the same device and the same precision:

* ``train``: one full-parameter training step, the study's step (``Trainer.train_step``:
  ``zero_grad(set_to_none=True)``, forward, LM loss, backward of every parameter, global-norm clip
  ``train.grad_clip``, the study's AdamW of ``specroute.train.step.make_optimizer``) — for the dense
  full-only model, the routed model with ``masked`` execution, the routed model with ``gather``
  execution at each budget of :data:`specroute.bench.cases.BUDGETS`, and Hugging Face transformers' GPT-2 at the same dense
  configuration (the reference; its loss comes from ``labels``).
* ``forward``: one no-grad forward (logits only) of dense, masked, gather at the spec's budget, GPT-2.
* ``recipe``: the study's own controller-only step (the same trainer step on the arm's
  ``ControllerStage``: ``compute_losses`` of its recipe, backward, clip, AdamW on the trainable set) —
  for each arm, used to compare A3 (LM only) with util/rank.
  A util/rank step's cost depends on which controlled layer it labels (``oracle.layers_per_step``
  drawn at random), so these are compared by their *mean* step time, which is what a run's wall time
  adds up; the other families by their median.

Every case is warmed up, then the cases are run round-robin (in a fixed order, each an untimed
lead-in step and a timed step) for ``repeats`` rounds and each case's median is reported, so slow
drifts of machine load hit every case alike. The routed cases use top-k per sequence (exactly
ceil(b*T) full tokens per sequence, so the realised share is known) and the score-scaling estimator
(the only one gather supports).

Peak memory: see :mod:`specroute.bench.timing`. Cases and their steps: :mod:`specroute.bench.cases`;
machine facts: :mod:`specroute.bench.machine`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from specroute.bench.cases import QUICK, BenchOptions, build_cases
from specroute.bench.figures import summarise
from specroute.bench.machine import OtherLoad, machine
from specroute.bench.reference import hf_version, quiet_transformers
from specroute.bench.timing import measure_memory, memory_method, time_cases
from specroute.text import plural
from specroute.spec import Resolved
from specroute.store import UserError
from specroute.train.device import Device, environment, pick_device, torch_threads


def run_bench(resolved: Resolved, options: BenchOptions,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark of a resolved study; return the summary (JSON-able, see ``report.py``).

    Raises:
        UserError: ``--device cuda`` without a CUDA device, or ``repeats`` < 1.
    """
    if options.rounds < 1 or options.warmup_steps < 0:
        raise UserError("--repeats must be >= 1 and warm-up >= 0")
    device = pick_device(options.device)
    with torch_threads(QUICK["threads"] if options.quick else None):
        return _run(resolved, options, device, progress or (lambda _msg: None))


def _run(resolved: Resolved, options: BenchOptions, device: Device, say: Callable[[str], None]) -> dict[str, Any]:
    env = {**environment(device), **machine(), "transformers": hf_version()}
    start_load = env["load_avg_1_5_15"]
    say("building models")
    with quiet_transformers():
        cases, settings = build_cases(resolved, options, device)
        say(f"timing {plural(sum(c.step is not None for c in cases), 'case')}: "
            f"{plural(options.warmup_steps, 'warm-up step')} each, then {plural(options.rounds, 'interleaved round')}")
        t0 = time.perf_counter()
        others = OtherLoad()
        time_cases(cases, options, device, say)
        env["other_processes_cpu_share"] = others.share()
        say("measuring peak memory")
        measure_memory(cases, device)
    env["load_avg_1_5_15_end"] = machine()["load_avg_1_5_15"]
    env["load_avg_1_5_15"] = start_load
    env["timing_wall_s"] = time.perf_counter() - t0
    return summarise(resolved, options, device, env, settings, cases, memory_method(device))
