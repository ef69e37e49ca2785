"""JEPA (docs/DESIGN.md, "Gates"; docs/CLAIMS.md G3, C5).

- ``jepa.target_frozen``: G3's target projection head never changes: it does not require a gradient, is
  not among the parameters a trainer optimises, and after a few dozen optimiser steps of the spec's
  recipe its weights are bit-identical.
- ``jepa.collapse_measurable``: predictor collapse is measurable, so A1 (C5) can be judged: the latent
  variance and effective rank of the predictor's outputs separate a working predictor from a collapsed
  one (its output layer zeroed: every token gets the same latent), and both are reported for the spec's
  recipe after training.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from specroute.metrics import effective_rank, latent_variance
from specroute.model.routing import FULL, G3Gate
from specroute.spec.models import G1Spec
from specroute.train.stages import trainable_params
from specroute.train.stages import seeded_model
from specroute.verify.common import (CheckResult, Context, Target, batch, prose_tokens, result, run_property, shrink,
                                     skipped, tokens, train_controller)


def target_frozen(target: Target, ctx: Context) -> CheckResult:
    if isinstance(target.spec.gate, G1Spec):
        return skipped("jepa.target_frozen", target, "G1 has no target head")
    spec = shrink(target.spec)
    stream = prose_tokens()
    stats = {"max_change": 0.0}

    def body(seed):
        model = seeded_model(spec, seed)
        heads = {n: p for n, p in model.param_groups()["target_head"]}
        before = {n: p.detach().clone() for n, p in heads.items()}
        optimised = {id(p) for p in trainable_params(model).values()}
        for n, p in heads.items():
            assert not p.requires_grad, f"target head {n} requires a gradient"
            assert id(p) not in optimised, f"target head {n} is among the optimised parameters"
        train_controller(model, spec, max(10, ctx.train_steps // 3), seed, stream=stream)
        for n, p in heads.items():
            change = (p.detach() - before[n]).abs().max().item()
            stats["max_change"] = max(stats["max_change"], change)
            assert change == 0.0, f"target head {n} changed by {change:.3g} during training"
            assert p.grad is None, f"target head {n} has a gradient"

    failure = run_property(body, max(1, min(ctx.examples, 2)), seed=st.integers(0, 1000))
    return result("jepa.target_frozen", target, failure is None,
                  f"max |change| = {stats['max_change']:.2g}", "0 (bit-identical), never optimised",
                  failure or f"recipe jepa={spec.loss.jepa:g}, util={spec.loss.util:g}, rank={spec.loss.rank:g}",
                  max_change=stats["max_change"])


def predictor_latents(model, idx_BT) -> dict[int, torch.Tensor]:
    """The predictor's latent for the full action at every controlled G3 layer, flattened to (N, K)."""
    with torch.no_grad():
        out = model(idx_BT)
    return {rec.layer: rec.gate.pred_full_BTK.reshape(-1, rec.gate.pred_full_BTK.shape[-1])
            for rec in out.routing if rec.gate is not None and rec.gate.pred_full_BTK is not None}


def latent_stats(model, idx_BT) -> dict[str, float]:
    """Mean over G3 layers of the predictor latents' variance and effective rank."""
    z = predictor_latents(model, idx_BT)
    return {"variance": sum(latent_variance(v) for v in z.values()) / len(z),
            "effective_rank": sum(effective_rank(v) for v in z.values()) / len(z)}


def _collapse(model) -> None:
    with torch.no_grad():
        for block in model.controlled_blocks():
            if isinstance(block.routed_ffn.gate, G3Gate):
                block.routed_ffn.gate.predictor[-1].weight.zero_()


def collapse_measurable(target: Target, ctx: Context) -> CheckResult:
    if isinstance(target.spec.gate, G1Spec):
        return skipped("jepa.collapse_measurable", target, "G1 has no predictor")
    spec = shrink(target.spec)
    x = tokens(4, spec.train.seq_len, 0)
    fresh_model = seeded_model(spec, 0)
    fresh = latent_stats(fresh_model, x)
    _collapse(fresh_model)
    collapsed = latent_stats(fresh_model, x)
    trained_model = seeded_model(spec, 0)
    stream = prose_tokens()
    train_controller(trained_model, spec, ctx.train_steps, 0, stream=stream)
    held, _ = batch(stream, 8, spec.train.seq_len, torch.Generator().manual_seed(1))
    trained = latent_stats(trained_model, held)
    ok = (collapsed["variance"] < 1e-10 and collapsed["effective_rank"] <= 1.0
          and fresh["variance"] > 1e3 * max(collapsed["variance"], 1e-30) and fresh["effective_rank"] > 1.5)
    return result("jepa.collapse_measurable", target, ok,
                  f"fresh var {fresh['variance']:.2g} / erank {fresh['effective_rank']:.2f}; collapsed "
                  f"{collapsed['variance']:.2g} / {collapsed['effective_rank']:.2f}",
                  "collapsed ~0 / <= 1, working > 0 / > 1.5",
                  f"after {ctx.train_steps} steps of the recipe (jepa={spec.loss.jepa:g}): var "
                  f"{trained['variance']:.3g}, erank {trained['effective_rank']:.2f}",
                  fresh=fresh, collapsed=collapsed, trained=trained, action=FULL)
