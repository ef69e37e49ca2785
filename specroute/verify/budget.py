"""Budget adherence (docs/DESIGN.md, "Budget").

- ``budget.topk_exact``: under top-k the realised full count of every controlled layer is exactly
  ``ceil(b * T)`` per sequence (``topk_sequence``) or ``ceil(b * B * T)`` per batch (``topk_batch``), for
  any batch size, sequence length (1 and odd ones included), budget (0, tiny, 0.5, 1 and any other),
  execution, and with every score tied.
- ``budget.threshold``: under ``threshold`` the realised share after training with the budget loss is
  within ``routing.budget.tolerance`` of b at every controlled layer.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from specroute.spec.models import ceil_budget
from specroute.train.stages import seeded_model
from specroute.verify.common import (CheckResult, Context, Target, fmt, prose_tokens, result, run_property, shrink,
                                     skipped, tokens, train_controller, batch)

#: Peak learning rate of the threshold-adherence training (controller only, a few dozen steps, decaying
#: linearly to a tenth so that the realised share settles).
THRESHOLD_LR = 1e-2

BUDGETS = st.one_of(st.sampled_from([0.0, 1e-3, 0.5, 1.0]), st.floats(0.0, 1.0, allow_nan=False))


def _tie_scores(model) -> None:
    """Make every gate score equal (zero the score layer's weight: score = its bias for every token)."""
    with torch.no_grad():
        for block in model.controlled_blocks():
            block.routed_ffn.gate.score_head.weight.zero_()


def topk_exact(target: Target, ctx: Context) -> CheckResult:
    base = shrink(target.spec)
    enforcements = ["topk_sequence", "topk_batch"]
    worst = {"gap": 0, "examples": 0}

    def body(enforcement, B, T, b, tied, execution, seed):
        spec = shrink(target.spec, {"routing": {"execution": execution,
                                                 "estimator": "score_scaling" if execution == "gather"
                                                 else base.routing.estimator,
                                                 "budget": {"enforcement": enforcement, "full_fraction": b}}})
        model = seeded_model(spec, seed)
        if tied:
            _tie_scores(model)
        with torch.no_grad():
            out = model(tokens(B, T, seed))
        worst["examples"] += 1
        for rec in out.routing:
            if enforcement == "topk_sequence":
                got, want = rec.full_BT.sum(dim=1), torch.full((B,), ceil_budget(b, T))
            else:
                got, want = rec.full_BT.sum().view(1), torch.tensor([ceil_budget(b, B * T)])
            gap = int((got - want).abs().max())
            worst["gap"] = max(worst["gap"], gap)
            assert gap == 0, (f"layer {rec.layer}: {enforcement} routed {got.tolist()} full tokens, "
                              f"expected {want.tolist()} (b={b}, B={B}, T={T})")

    typical = [dict(enforcement=e, B=3, T=7, b=0.5, tied=tied, execution=x, seed=1)
               for e in enforcements for tied, x in ((False, "gather"), (True, "masked"))]
    failure = run_property(
        body, ctx.examples, typical,
        enforcement=st.sampled_from(enforcements), B=st.integers(1, 4),
        T=st.one_of(st.sampled_from([1, 2, 3, 7]), st.integers(1, base.model.context_length)),
        b=BUDGETS, tied=st.booleans(), execution=st.sampled_from(["masked", "gather"]),
        seed=st.integers(0, 2**16),
    )
    own = target.spec.routing.budget.enforcement
    note = "" if own != "threshold" else " (spec is threshold; top-k variants checked)"
    return result("budget.topk_exact", target, failure is None,
                  f"max |count - ceil(b*n)| = {worst['gap']}" if failure is None else "off",
                  "0 tokens off, every layer", failure or f"{worst['examples']} examples, both top-k modes{note}",
                  max_gap=worst["gap"])


def threshold_trained(target: Target, ctx: Context) -> CheckResult:
    budget = target.spec.routing.budget
    if budget.enforcement != "threshold":
        return skipped("budget.threshold", target,
                       f"spec uses {budget.enforcement} (exact by construction); runs on threshold specs")
    weight = target.spec.loss.budget or 1.0
    spec = shrink(target.spec, {"loss": {"budget": weight}, "train": {"batch_size": 8, "seq_len": 32}})
    stream = prose_tokens()
    b, tol = budget.full_fraction, budget.tolerance
    seen: dict[str, float] = {"worst": 0.0}

    def body(seed):
        model = seeded_model(spec, seed)
        train_controller(model, spec, ctx.train_steps * 2, seed, lr=THRESHOLD_LR, stream=stream, decay=True)
        g = torch.Generator().manual_seed(seed + 1)
        x, _ = batch(stream, 32, spec.train.seq_len, g)
        with torch.no_grad():
            out = model(x)
        shares = [rec.full_fraction for rec in out.routing]
        gap = max(abs(s - b) for s in shares)
        seen["worst"] = max(seen["worst"], gap)
        assert gap <= tol, f"realised full shares {[round(s, 3) for s in shares]} vs b={b} (seed {seed})"

    failure = run_property(body, max(1, min(ctx.examples, 3)), seed=st.integers(0, 1000))
    return result("budget.threshold", target, failure is None, f"max |share - b| = {fmt(seen['worst'])}",
                  f"<= {tol:g} (tolerance)", failure or f"{2 * ctx.train_steps} steps with budget weight {weight:g}",
                  max_gap=seen["worst"])
