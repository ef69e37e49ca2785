"""Oracle labels (docs/DESIGN.md, "Losses"; docs/CLAIMS.md C10).

- ``oracle.brute_force``: on a tiny model, labels computed by brute force — two explicit full forwards
  from scratch per labelled layer l, with the earlier controlled layers forced to the decisions the routed
  forward took, layer l forced full / cheap, and the later controlled layers forced full (off-policy) or
  left to their gates (on-policy) — equal the toolkit's batched :func:`oracle_labels`, for both labelings.
- ``oracle.policy_equivalence``: off-policy equals on-policy when every later layer runs full anyway
  (budget b = 1) and differs otherwise (b = the spec's, < 1).

:func:`measure_mechanism` measures, on a small model trained on real prose (dense backbone, then a few
dozen controller steps of the spec's recipe), how far the two labelings disagree on held-out batches: the
Spearman correlation of off- vs on-policy labels and the share of tokens whose label changes sign — C10's
necessary condition, judged by :mod:`specroute.claims` (a measurement, not a check that passes or fails).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from hypothesis import strategies as st
from torch.testing import assert_close

from specroute.losses import oracle_labels, token_ce
from specroute.metrics import spearman
from specroute.spec.models import RunSpec
from specroute.train.stages import seeded_model
from specroute.verify.common import (CheckResult, Context, Target, batch, prose_tokens, result, run_property, shrink,
                                     skipped, tokens, train_controller, train_dense)

LABELINGS = ("off_policy", "on_policy")


def brute_force_labels(model, idx_BT, targets_BT, out, layer: int, labeling: str) -> torch.Tensor:
    """u_{l,t} by two explicit forwards from scratch (see the module docstring)."""
    decided = {rec.layer: rec.full_BT for rec in out.routing}
    ce = {}
    for action in (True, False):
        force: dict[int, Any] = {l: d for l, d in decided.items() if l < layer}
        force[layer] = action
        if labeling == "off_policy":
            force.update({l: True for l in decided if l > layer})
        logits = model(idx_BT, force=force).logits_BTV
        ce[action] = token_ce(logits, targets_BT)
    return ce[False] - ce[True]


def brute_force(target: Target, ctx: Context) -> CheckResult:
    spec = shrink(target.spec)
    stats = {"max_err": 0.0, "examples": 0}

    def body(B, T, seed, labeling):
        model = seeded_model(spec, seed)
        x = tokens(B, T + 1, seed)
        idx, tgt = x[:, :-1], x[:, 1:]
        with torch.no_grad():
            out = model(idx)
            layers = list(spec.routing.controlled_layers)
            batched = oracle_labels(model, out, tgt, layers, labeling)
            for l in layers:
                brute = brute_force_labels(model, idx, tgt, out, l, labeling)
                stats["max_err"] = max(stats["max_err"], (brute - batched[l]).abs().max().item())
                assert_close(batched[l], brute, rtol=1e-4, atol=1e-5,
                             msg=lambda m, l=l: f"layer {l} {labeling}: batched != brute force: {m}")
        stats["examples"] += 1

    failure = run_property(body, ctx.examples,
                           [dict(B=2, T=9, seed=1, labeling=l) for l in LABELINGS],
                           B=st.integers(1, 3), T=st.integers(1, 16),
                           seed=st.integers(0, 2**16), labeling=st.sampled_from(LABELINGS))
    return result("oracle.brute_force", target, failure is None, f"max |batched - brute| = {stats['max_err']:.2g}",
                  "<= 1e-5 (both labelings)", failure or f"{stats['examples']} examples, every controlled layer",
                  max_err=stats["max_err"])


def policy_equivalence(target: Target, ctx: Context) -> CheckResult:
    b = target.spec.routing.budget.full_fraction
    topk = {"enforcement": "topk_sequence"} if target.spec.routing.budget.enforcement == "threshold" else {}
    stats = {"equal_err": 0.0, "min_diff": float("inf")}

    def body(B, T, seed):
        diffs = {}
        for share in (1.0, b):
            spec = shrink(target.spec, {"routing": {"budget": {"full_fraction": share, **topk}}})
            model = seeded_model(spec, seed)
            x = tokens(B, T + 1, seed)
            with torch.no_grad():
                out = model(x[:, :-1])
                layers = list(spec.routing.controlled_layers)
                off = oracle_labels(model, out, x[:, 1:], layers, "off_policy")
                on = oracle_labels(model, out, x[:, 1:], layers, "on_policy")
            # the last controlled layer has no later layers: its labels agree by definition
            checked = layers[:-1]
            diffs[share] = max([(off[l] - on[l]).abs().max().item() for l in checked] or [0.0])
        stats["equal_err"] = max(stats["equal_err"], diffs[1.0])
        assert diffs[1.0] <= 1e-5, f"b=1: off- and on-policy labels differ by {diffs[1.0]:.3g}"
        if b < 1.0 and len(target.spec.routing.controlled_layers) > 1:
            stats["min_diff"] = min(stats["min_diff"], diffs[b])
            assert diffs[b] > 1e-4, f"b={b}: off- and on-policy labels agree (max diff {diffs[b]:.3g})"

    if len(shrink(target.spec).routing.controlled_layers) < 2:
        return skipped("oracle.policy_equivalence", target, "needs two controlled layers (a later one)")
    failure = run_property(body, ctx.examples, [dict(B=2, T=9, seed=1)], B=st.integers(1, 3),
                           T=st.integers(4, 16), seed=st.integers(0, 2**16))
    return result("oracle.policy_equivalence", target, failure is None,
                  f"b=1: {stats['equal_err']:.2g}; b={b:g}: >= {stats['min_diff']:.2g}",
                  "equal (<= 1e-5) at b=1, differ (> 1e-4) at b<1", failure or "max |off - on| per example",
                  equal_err=stats["equal_err"], min_diff=stats["min_diff"])


# --------------------------------------------------------------------------------------------------
# the mechanism, measured


@lru_cache(maxsize=4)
def _backbone(model_json: str, steps: int, seed: int, seq_len: int) -> tuple[dict[str, torch.Tensor], float]:
    """A small dense backbone pretrained on prose (shared by every arm with the same model spec)."""
    spec = RunSpec.model_validate_json(model_json)
    stream = prose_tokens()
    dense = seeded_model(spec, seed, routed=False)
    lm = train_dense(dense, steps, seed, 16, seq_len, stream=stream[: int(0.9 * len(stream))])
    return {k: v.detach().clone() for k, v in dense.state_dict().items()}, lm


@lru_cache(maxsize=16)
def _mechanism(spec_json: str, backbone_steps: int, controller_steps: int, seed: int) -> dict[str, Any]:
    spec = RunSpec.model_validate_json(spec_json)
    stream = prose_tokens()
    held = stream[int(0.9 * len(stream)):]
    train = stream[: int(0.9 * len(stream))]
    dense_spec = RunSpec.model_validate({"model": spec.model.model_dump(exclude_computed_fields=True),
                                         "train": {"seq_len": spec.train.seq_len},
                                         "backbone": {"train": {"seq_len": spec.train.seq_len}}})
    state, lm = _backbone(dense_spec.model_dump_json(exclude_computed_fields=True), backbone_steps, seed,
                          spec.train.seq_len)
    model = seeded_model(spec, seed)
    model.load_backbone({k: v for k, v in state.items() if k in model.backbone_state_dict()})
    train_controller(model, spec, controller_steps, seed, stream=train)
    g = torch.Generator().manual_seed(seed + 7)
    off_all, on_all, per_layer = [], [], {}
    shares = []
    with torch.no_grad():
        for _ in range(4):
            x, y = batch(held, 16, spec.train.seq_len, g)
            out = model(x)
            shares += [rec.full_fraction for rec in out.routing]
            layers = list(spec.routing.controlled_layers)[:-1]  # the last one: labels equal by definition
            off = oracle_labels(model, out, y, layers, "off_policy")
            on = oracle_labels(model, out, y, layers, "on_policy")
            for l in layers:
                off_all.append(off[l].flatten())
                on_all.append(on[l].flatten())
                per_layer.setdefault(l, ([], []))
                per_layer[l][0].append(off[l].flatten())
                per_layer[l][1].append(on[l].flatten())
    off_t, on_t = torch.cat(off_all), torch.cat(on_all)
    flips = ((off_t > 0) != (on_t > 0)).double().mean().item()
    layers_out = {}
    for l, (a, b) in per_layer.items():
        a, b = torch.cat(a), torch.cat(b)
        layers_out[str(l)] = {"spearman": spearman(a, b), "sign_flips": ((a > 0) != (b > 0)).double().mean().item()}
    return {
        "spearman": spearman(off_t, on_t), "sign_flips": flips,
        "mean_abs_off": off_t.abs().mean().item(), "mean_abs_on": on_t.abs().mean().item(),
        "mean_off": off_t.mean().item(), "mean_on": on_t.mean().item(),
        "full_share": sum(shares) / len(shares), "tokens": int(off_t.numel()), "backbone_lm": lm,
        "layers": layers_out, "backbone_steps": backbone_steps, "controller_steps": controller_steps,
    }


def measure_mechanism(spec: RunSpec, backbone_steps: int = 100, controller_steps: int = 40,
                      seed: int = 0) -> dict[str, Any]:
    """Off- vs on-policy label disagreement on a small trained model of ``spec`` (a shrunk copy with the
    recipe's util/rank on), on held-out prose. Keys: spearman, sign_flips (share of tokens), mean labels,
    full_share, tokens, per-layer figures. Cached per spec and settings."""
    loss = {"util": spec.loss.util or 1.0, "rank": spec.loss.rank or 1.0}
    small = shrink(spec, {"loss": loss, "train": {"seq_len": 32}})
    keyed = small.model_dump_json(exclude_computed_fields=True)
    # One intra-op thread: the training behind this figure is chaotic enough that a different reduction
    # order (another thread count) moves it by more than its tolerance.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return dict(_mechanism(keyed, backbone_steps, controller_steps, seed))
    finally:
        torch.set_num_threads(threads)
