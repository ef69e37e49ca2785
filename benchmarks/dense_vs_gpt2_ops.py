"""Where the time of a dense training step goes, ours beside transformers' GPT-2, op by op.

A diagnostic for the dense-vs-reference target of ``specroute bench``: it shows whether the two steps run
the same ops with the same call counts, and which op a difference in time comes from. Both models take
the same batch, the same step (the study's optimiser and clip) as in the benchmark (``specroute.bench.cases``). The totals
are single measurements and move between runs as much as the benchmark's step times do.

    python benchmarks/dense_vs_gpt2_ops.py [SPEC] [--profile bench] [--steps 3] [--rows 12]

Prints, per model, the total self CPU time of the profiled steps and its largest ops, then the ratio of
the totals (needs ``pip install 'specroute[reference]'``).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from specroute.bench.cases import TrainingStep, full_training
from specroute.bench.reference import hf_lm_loss, hf_reference
from specroute.model.decoder import build_model
from specroute.spec import load_study
from specroute.train.device import pick_device
from specroute.train.stages import DenseStage

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", nargs="?", default=str(ROOT / "specs" / "a3.yaml"))
    ap.add_argument("--profile", default="bench")
    ap.add_argument("--steps", type=int, default=3, help="profiled steps per model (after 2 warm-up steps)")
    ap.add_argument("--rows", type=int, default=12, help="ops shown per model")
    args = ap.parse_args()

    resolved = load_study(args.spec, args.profile)
    spec = full_training(resolved.arm_spec(next(iter(resolved.study.arms))), "masked")
    device = pick_device("cpu")
    B, T, V = spec.train.batch_size, spec.train.seq_len, spec.model.vocab_size
    data = torch.randint(0, V, (B, T + 1), generator=torch.Generator().manual_seed(0))
    idx, tgt = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    torch.manual_seed(0)
    dense = build_model(spec, routed=False)
    hf = hf_reference(spec, device)
    if isinstance(hf, str):
        raise SystemExit(f"transformers' GPT-2: {hf}")
    steps = {
        "dense (specroute)": TrainingStep(DenseStage(dense, spec.train, device), idx, tgt, device),
        "GPT-2 (transformers)": TrainingStep(DenseStage(hf, spec.train, device,
                                                        loss_of=functools.partial(hf_lm_loss, hf)), idx, tgt, device),
    }
    totals = {}
    for name, step in steps.items():
        for _ in range(2):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                step()
        events = prof.key_averages()
        totals[name] = sum(e.self_cpu_time_total for e in events) / 1e6
        print(f"== {name}: self CPU time {totals[name]:.3f} s over {args.steps} steps "
              f"({torch.get_num_threads()} threads)")
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    ours, ref = totals.values()
    print(f"self CPU time, dense / GPT-2: {ours / ref:.3f} ({ours / ref - 1:+.1%})")


if __name__ == "__main__":
    main()
