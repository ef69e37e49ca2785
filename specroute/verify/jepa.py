"""JEPA (docs/DESIGN.md, "Gates"; docs/CLAIMS.md G3, C5).

- ``jepa.target_frozen``: G3's target projection head never changes: it does not require a gradient, is
  not among the parameters a trainer optimises, and after a few dozen optimiser steps of the spec's
  recipe its weights are bit-identical.
- ``jepa.collapse_measurable``: predictor collapse is measurable, so A1 (C5) can be judged: the latent
  variance and effective rank of the predictor's outputs separate a working predictor from a collapsed
  one (its output layer zeroed: every token gets the same latent), and both are reported for the spec's
  recipe after training.
- ``jepa.target_equation``: the JEPA target is the one the gate's ``target`` names (docs/DESIGN.md, "Gates"):
  T(sg(h_after)), T(sg(FFN_a(LN(h)))) or T(LN(sg(h_after))), recomputed from an explicit forward of the
  executed branch, and it is stop-gradient: a layer's JEPA term alone puts no gradient on that layer's
  full or cheap FFN (they reach the term only through the target). Measured beside it: the share of the
  target's norm that the action moves, ||T(full) - T(cheap)|| / ||T(executed)||, on prose at init.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

from specroute.losses import executed_latent
from specroute.metrics import effective_rank, latent_variance
from specroute.model.routing import FULL, G3Gate
from specroute.spec.controller import G1Spec
from specroute.train.stages import action_gaps, seeded_model, trainable_params
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


def _equation_target(model, rec, kind: str) -> torch.Tensor:
    """The JEPA target of a G3 layer's record by the equation of the spec's ``target`` kind, from an explicit
    forward of each token's executed branch (what the gate's :meth:`G3Gate.target_latent` must equal), (B, T, K)."""
    block = model.blocks[rec.layer]
    gate = block.routed_ffn.gate
    x = block.ln2(rec.h_in_BTD)
    branch = torch.where(rec.full_BT.unsqueeze(-1), block.ffn(x), block.routed_ffn.cheap_branch(x))
    h_after = rec.h_in_BTD + branch
    source = {"h_after": h_after, "ffn_effect": branch,
              "normalized": F.layer_norm(h_after, h_after.shape[-1:])}[kind]
    return source.detach() @ gate.target.weight.T


def target_equation(target: Target, ctx: Context) -> CheckResult:
    if isinstance(target.spec.gate, G1Spec):
        return skipped("jepa.target_equation", target, "G1 has no target head")
    spec = shrink(target.spec)
    kind = spec.gate.target
    stats = {"max_error": 0.0, "max_grad": 0.0}

    def body(seed):
        model = seeded_model(spec, seed)
        for p in model.parameters():
            p.requires_grad_(True)  # the FFNs too: a target that is not stop-gradient would reach them
        out = model(tokens(2, spec.train.seq_len, seed))
        for rec in out.routing:
            block = model.blocks[rec.layer]
            gate = block.routed_ffn.gate
            got = gate.target_latent(rec.h_in_BTD, rec.h_out_BTD)
            want = _equation_target(model, rec, kind)
            err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()
            stats["max_error"] = max(stats["max_error"], err)
            assert err < 1e-4, f"layer {rec.layer}: target differs from T(...) of target={kind} by {err:.2g} (relative)"
            term = F.mse_loss(executed_latent(rec), got)
            ffns = [p for m in (block.ffn, block.routed_ffn.cheap) if m is not None for p in m.parameters()]
            grads = torch.autograd.grad(term, ffns, allow_unused=True, retain_graph=True)
            worst = max((g.abs().max().item() for g in grads if g is not None), default=0.0)
            stats["max_grad"] = max(stats["max_grad"], worst)
            assert worst == 0.0, (f"layer {rec.layer}: the JEPA term puts a gradient of {worst:.2g} on the layer's "
                                  "FFNs: its target is not stop-gradient")

    failure = run_property(body, max(1, min(ctx.examples, 3)), seed=st.integers(0, 1000))
    model = seeded_model(spec, 0)
    with torch.no_grad():
        recs = [r for r in model(prose_tokens()[: 4 * spec.train.seq_len].view(4, -1)).routing if r.gate is not None]
        share = [(g[:, 1].mean() / g[:, 2].mean()).item() for g in (action_gaps(model, r) for r in recs)]
    measured = (f"max relative error {stats['max_error']:.2g}, max FFN gradient {stats['max_grad']:.2g}; "
                f"action share of ||T|| {', '.join(f'{x:.3f}' for x in share)}")
    return result("jepa.target_equation", target, failure is None, measured,
                  f"target={kind}: error < 1e-4, FFN gradient 0", failure or f"target={kind}, at init on prose",
                  max_error=stats["max_error"], max_grad=stats["max_grad"], action_share=share)
