"""Gradient flow (docs/DESIGN.md, "Gradient path into the gate").

- ``gradients.<term>`` for term in lm, util, rank, jepa, budget: with that loss alone (weight 1, every
  other weight 0), every controller parameter on the term's path gets a finite, non-zero gradient, every
  other trainable parameter a zero (or no) gradient, and no frozen parameter a gradient at all.
  Paths: lm reaches the whole gate and the cheap FFN; util, rank and budget act on the score, so they reach
  the whole gate (rank is blind to the score's output bias: it only sees score differences); jepa reaches
  G3's LayerNorm, encoder and predictor, not the score head. A trained backbone (joint training) gets lm's
  gradient everywhere (a full FFN only where some token took it) and may get the other terms' below and at
  the last controlled layer (what feeds a gate), never above it or in the final LayerNorm.
- ``gradients.extreme``: under extreme hidden states (embeddings scaled by up to 1e6, saturated gate
  scores) the logits, every loss term and every gradient of the spec's recipe stay finite.
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from specroute.losses import LOSS_TERMS, compute_losses
from specroute.spec.controller import G1Spec
from specroute.spec.models import ceil_budget
from specroute.train.stages import seeded_model
from specroute.verify.common import (CheckResult, Context, Target, result, run_property, shrink,
                                     skipped, tokens)


def _path(name: str, group: str, term: str, last_layer: int) -> str:
    """Whether parameter ``name`` of ``group`` must get a gradient from ``term`` alone (``required``),
    may get one (``allowed``: it feeds a later controlled layer's gate), or must not (``zero``)."""
    layer = int(name.split(".")[1]) if name.startswith("blocks.") else -1
    feeds_later_gate = layer < last_layer
    if group == "cheap_ffn":
        return "required" if term == "lm" else "allowed" if feeds_later_gate else "zero"
    if group == "backbone":  # trained (joint training): lm reaches all of it, the other terms what feeds a gate
        if term == "lm":
            return "allowed" if ".ffn." in name else "required"  # a full FFN no token took gets none
        return "allowed" if layer <= last_layer and not name.startswith(("ln_f.", "lm_head.")) else "zero"
    if group != "gate":
        return "zero"
    if (term == "rank" and name.endswith(".gate.score_head.bias")) or (term == "jepa" and ".gate.score_head." in name):
        return "allowed" if feeds_later_gate else "zero"
    return "required"


def alone(term: str):
    """The verifier of one loss term alone."""

    def check(target: Target, ctx: Context) -> CheckResult:
        cid = f"gradients.{term}"
        if term == "jepa" and isinstance(target.spec.gate, G1Spec):
            return skipped(cid, target, "jepa needs a G3 gate")
        weights = {t: 0.0 for t in LOSS_TERMS}
        weights[term] = 1.0
        update = {"loss": weights}
        if term in ("util", "rank"):
            update["loss"]["oracle"] = {"layers_per_step": None}  # every controlled layer gets labels
        spec = shrink(target.spec, update)
        stats = {"min_grad": math.inf, "params": 0}

        def body(B, T, seed):
            model = seeded_model(spec, seed)
            x = tokens(B, T + 1, seed)
            terms = compute_losses(model, x[:, :-1], x[:, 1:], spec, torch.Generator().manual_seed(seed))
            terms.total.backward()
            groups = model.param_groups()
            last = max(spec.routing.controlled_layers)
            for group, params in groups.items():
                for name, p in params:
                    if not p.requires_grad:
                        assert p.grad is None, f"frozen {name} ({group}) got a gradient"
                        continue
                    g = p.grad
                    path = _path(name, group, term, last)
                    if path == "required":
                        assert g is not None, f"{name} got no gradient from {term} alone (B={B}, T={T})"
                        assert torch.isfinite(g).all(), f"{name}: non-finite gradient"
                        size = g.abs().max().item()
                        assert size > 0, f"{name}: zero gradient from {term} alone (B={B}, T={T})"
                        stats["min_grad"] = min(stats["min_grad"], size)
                        stats["params"] += 1
                    elif path == "zero" and g is not None:
                        size = g.abs().max().item()
                        assert size < 1e-6, f"{name} ({group}) is off {term}'s path but got a gradient {size:.2g}"

        # Top-k routes ceil(b*T) tokens full: a T at which every token takes one path leaves the other's FFN
        # without a gradient by design (b = 0.75, T = 2), so T starts where both paths have a token.
        budget = spec.routing.budget
        t_min = next((t for t in range(2, 17) if 0 < ceil_budget(budget.full_fraction, t) < t), 2) \
            if budget.enforcement != "threshold" else 2
        failure = run_property(body, ctx.examples, [dict(B=2, T=9, seed=1)], B=st.integers(1, 3),
                               T=st.integers(t_min, 16), seed=st.integers(0, 2**16))
        return result(cid, target, failure is None,
                      f"min |grad| on path = {stats['min_grad']:.2g}" if failure is None else "missing or bad",
                      "finite, non-zero on the path; none on frozen", failure or
                      f"{term} alone; {ctx.examples} examples, trainable {list(spec.train.trainable)}",
                      min_grad=stats["min_grad"] if stats["params"] else None)

    check.__name__ = f"gradients_{term}"
    return check


def extreme(target: Target, ctx: Context) -> CheckResult:
    spec = shrink(target.spec, {"loss": {"budget": max(target.spec.loss.budget, 1.0)}})
    seen = {"examples": 0}

    def body(scale, init_bias, B, T, seed):
        s = shrink(target.spec, {"gate": {"init_bias": init_bias},
                                 "loss": {"budget": max(target.spec.loss.budget, 1.0)}})
        model = seeded_model(s, seed)
        with torch.no_grad():
            model.wte.weight.mul_(scale)
            if model.wpe is not None:  # none under rotary positions
                model.wpe.weight.mul_(scale)
        x = tokens(B, T + 1, seed)
        terms = compute_losses(model, x[:, :-1], x[:, 1:], s, torch.Generator().manual_seed(seed))
        assert torch.isfinite(terms.out.logits_BTV).all(), f"non-finite logits at scale {scale}"
        for k, v in terms.parts.items():
            assert math.isfinite(v), f"loss term {k} = {v} at scale {scale}, init_bias {init_bias}"
        terms.total.backward()
        for name, p in model.named_parameters():
            if p.grad is not None:
                assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient at scale {scale}"
        seen["examples"] += 1

    failure = run_property(body, ctx.examples,
                           [dict(scale=1e6, init_bias=30.0, B=2, T=8, seed=1),
                            dict(scale=1e-6, init_bias=-30.0, B=2, T=8, seed=2)],
                           scale=st.sampled_from([1e-6, 1.0, 1e3, 1e6]),
                           init_bias=st.sampled_from([0.0, 30.0, -30.0]),
                           B=st.integers(1, 2), T=st.integers(1, 12), seed=st.integers(0, 2**16))
    terms = [t for t in LOSS_TERMS if getattr(spec.loss, t) > 0]
    return result("gradients.extreme", target, failure is None,
                  "all finite" if failure is None else "non-finite", "finite logits, losses, gradients",
                  failure or f"recipe {terms}; embeddings x1e-6..1e6, gate bias +-30; {seen['examples']} examples")
