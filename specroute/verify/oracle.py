"""Oracle labels (docs/DESIGN.md, "Losses"; docs/CLAIMS.md C10).

- ``oracle.brute_force``: on a tiny model, labels computed by brute force — two explicit full forwards
  from scratch per labelled layer l, with the earlier controlled layers forced to the decisions the routed
  forward took, layer l forced full / cheap, and the later controlled layers forced full (off-policy) or
  left to their gates (on-policy) — equal the toolkit's batched :func:`oracle_labels`, for both labelings.
  The same for the ``per_token`` counterfactual: a Python loop over the sampled tokens, two explicit
  forwards from scratch per token (that token forced full / cheap at layer l, every other token at the
  routed decision), its sequence's loss difference summed over *every* position, equals the batched
  :func:`per_token_labels` (which leaves out the positions before the token under causal attention).
- ``oracle.policy_equivalence``: off-policy equals on-policy when every later layer runs full anyway
  (budget b = 1) and differs otherwise (b = the spec's, < 1).
- ``oracle.per_token_agreement``: a measurement on the small trained model below: how far the all-flip
  labels of the spec's labeling agree with exact one-token labels of every token (Spearman, share of
  sign flips, per layer). It passes or fails on parity only: on that trained model the batched
  one-token labels of a few tokens equal the brute-force loop.

:func:`measure_mechanism` measures, on a small model trained on real prose (dense backbone, then a few
dozen controller steps of the spec's recipe), how far the two labelings disagree on held-out batches: the
Spearman correlation of off- vs on-policy labels and the share of tokens whose label changes sign — C10's
necessary condition, judged by :mod:`specroute.claims` (a measurement, not a check that passes or fails).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
from hypothesis import strategies as st
from torch.testing import assert_close

from specroute.losses import oracle_labels, per_token_labels, sample_label_tokens, token_ce
from specroute.metrics import spearman
from specroute.model.decoder import Decoder
from specroute.spec.models import RunSpec
from specroute.train.stages import seeded_model
from specroute.verify.common import (CheckResult, Context, Target, batch, prose_tokens, result, run_property, shrink,
                                     skipped, tokens, train_controller, train_dense)

LABELINGS = ("off_policy", "on_policy")
COUNTERFACTUALS = ("all_flip", "per_token")


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


def brute_force_token_labels(model, idx_BT, targets_BT, out, layer: int, labeling: str,
                             pos_BS: torch.Tensor) -> torch.Tensor:
    """Exact one-token labels (B, S) by a Python loop over the positions ``pos_BS``: per token two explicit
    forwards from scratch (see the module docstring), the loss difference of its sequence summed over every
    position."""
    decided = {rec.layer: rec.full_BT for rec in out.routing}
    B, S = pos_BS.shape
    u = torch.zeros(B, S)
    for b in range(B):
        for j in range(S):
            ce = {}
            for action in (True, False):
                force: dict[int, Any] = {l: d for l, d in decided.items() if l < layer}
                at_layer = decided[layer].clone()
                at_layer[b, pos_BS[b, j]] = action
                force[layer] = at_layer
                if labeling == "off_policy":
                    force.update({l: True for l in decided if l > layer})
                ce[action] = token_ce(model(idx_BT, force=force).logits_BTV, targets_BT)[b]
            u[b, j] = (ce[False] - ce[True]).sum()
    return u


def _per_token_refused(spec: RunSpec, labeling: str) -> bool:
    """Whether the spec language refuses per_token labels for ``labeling`` (on-policy under topk_batch)."""
    return labeling == "on_policy" and spec.routing.budget.enforcement == "topk_batch"


#: Tokens per sequence the per-token brute force loops over (at most; two forwards each, per layer).
BRUTE_FORCE_TOKENS = 4
#: Tolerance of batched vs brute-force labels. A one-token label sums T per-token differences, each with
#: the rounding of a differently shaped batch; T <= 16 here.
ATOL = {"all_flip": 1e-5, "per_token": 1e-4}


def brute_force(target: Target, ctx: Context) -> CheckResult:
    spec = shrink(target.spec)
    S = min(spec.loss.oracle.tokens_per_sequence, BRUTE_FORCE_TOKENS)
    stats = {"max_err": 0.0, "per_token_err": 0.0, "examples": 0}

    def body(B, T, seed, labeling, counterfactual):
        if counterfactual == "per_token" and _per_token_refused(spec, labeling):
            return
        model = seeded_model(spec, seed)
        x = tokens(B, T + 1, seed)
        idx, tgt = x[:, :-1], x[:, 1:]
        layers = list(spec.routing.controlled_layers)
        with torch.no_grad():
            out = model(idx)
            if counterfactual == "all_flip":
                batched = oracle_labels(model, out, tgt, layers, labeling)
                brute = {l: brute_force_labels(model, idx, tgt, out, l, labeling) for l in layers}
            else:
                exact = per_token_labels(model, out, tgt, layers, labeling, S, torch.Generator().manual_seed(seed))
                batched = {l: e.u_BS for l, e in exact.items()}
                brute = {l: brute_force_token_labels(model, idx, tgt, out, l, labeling, e.pos_BS)
                         for l, e in exact.items()}
        key = "max_err" if counterfactual == "all_flip" else "per_token_err"
        for l in layers:
            stats[key] = max(stats[key], (brute[l] - batched[l]).abs().max().item())
            assert_close(batched[l], brute[l], rtol=1e-4, atol=ATOL[counterfactual],
                         msg=lambda m, l=l: f"layer {l} {labeling} {counterfactual}: batched != brute force: {m}")
        stats["examples"] += 1

    typical = [dict(B=2, T=9, seed=1, labeling=l, counterfactual=c) for c in COUNTERFACTUALS for l in LABELINGS]
    failure = run_property(body, ctx.examples, typical,
                           B=st.integers(1, 3), T=st.integers(1, 16),
                           seed=st.integers(0, 2**16), labeling=st.sampled_from(LABELINGS),
                           counterfactual=st.sampled_from(COUNTERFACTUALS))
    return result("oracle.brute_force", target, failure is None,
                  f"max |batched - brute| = {stats['max_err']:.2g} (all-flip), {stats['per_token_err']:.2g} "
                  f"(per-token, S={S})", "<= 1e-5 all-flip, <= 1e-4 per-token (both labelings)",
                  failure or f"{stats['examples']} examples, every controlled layer",
                  max_err=stats["max_err"], per_token_err=stats["per_token_err"])


#: Off- and on-policy labels "differ" beyond float noise: the two continuations run different decisions, so a
#: labeling that ignored the gates would give exactly 0; fp32 cross-entropies of ~5.5 nats are exact to ~1e-6.
#: At init the gap is second order (a later layer's full-vs-cheap effect on each continuation): ~1e-5 at least
#: on a SwiGLU model, whose FFN output starts ~10x smaller than the GELU MLP's (1e-3 to 1e-2 for GPT-2's).
DIFFER_ATOL = 1e-6


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
            assert diffs[b] > DIFFER_ATOL, f"b={b}: off- and on-policy labels agree (max diff {diffs[b]:.3g})"

    if len(shrink(target.spec).routing.controlled_layers) < 2:
        return skipped("oracle.policy_equivalence", target, "needs two controlled layers (a later one)")
    failure = run_property(body, ctx.examples, [dict(B=2, T=9, seed=1)], B=st.integers(1, 3),
                           T=st.integers(4, 16), seed=st.integers(0, 2**16))
    return result("oracle.policy_equivalence", target, failure is None,
                  f"b=1: {stats['equal_err']:.2g}; b={b:g}: >= {stats['min_diff']:.2g}",
                  f"equal (<= 1e-5) at b=1, differ (> {DIFFER_ATOL:g}) at b<1", failure or "max |off - on| per example",
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
def _trained(spec_json: str, backbone_steps: int, controller_steps: int, seed: int) -> tuple[Decoder, float]:
    """The small model of a spec trained on prose (the shared backbone, then ``controller_steps`` steps of
    the recipe), and the backbone's last LM loss. Read it under no_grad only: it is shared."""
    spec = RunSpec.model_validate_json(spec_json)
    stream = prose_tokens()
    train = stream[: int(0.9 * len(stream))]
    dense_spec = RunSpec.model_validate({"model": spec.model.model_dump(exclude_computed_fields=True),
                                         "train": {"seq_len": spec.train.seq_len},
                                         "backbone": {"train": {"seq_len": spec.train.seq_len}}})
    state, lm = _backbone(dense_spec.model_dump_json(exclude_computed_fields=True), backbone_steps, seed,
                          spec.train.seq_len)
    model = seeded_model(spec, seed)
    model.load_backbone({k: v for k, v in state.items() if k in model.backbone_state_dict()})
    train_controller(model, spec, controller_steps, seed, stream=train)
    return model, lm


def _heldout() -> torch.Tensor:
    stream = prose_tokens()
    return stream[int(0.9 * len(stream)):]


@lru_cache(maxsize=16)
def _mechanism(spec_json: str, backbone_steps: int, controller_steps: int, seed: int) -> dict[str, Any]:
    spec = RunSpec.model_validate_json(spec_json)
    model, lm = _trained(spec_json, backbone_steps, controller_steps, seed)
    held = _heldout()
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


def _small(spec: RunSpec) -> str:
    """The small trained model's spec (a shrunk copy with the recipe's util/rank on), as its cache key; its
    name and description are dropped (they change nothing it computes), so equal arms of different studies
    share one training."""
    loss = {"util": spec.loss.util or 1.0, "rank": spec.loss.rank or 1.0}
    small = shrink(spec, {"loss": loss, "train": {"seq_len": 32}, "name": "small", "description": ""})
    return small.model_dump_json(exclude_computed_fields=True)


def _one_thread(measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run a measurement on one intra-op thread: the training behind these figures is chaotic enough that
    a different reduction order (another thread count) moves them by more than their tolerance."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return dict(measure())
    finally:
        torch.set_num_threads(threads)


def measure_mechanism(spec: RunSpec, backbone_steps: int = 100, controller_steps: int = 40,
                      seed: int = 0) -> dict[str, Any]:
    """Off- vs on-policy label disagreement on a small trained model of ``spec`` (a shrunk copy with the
    recipe's util/rank on), on held-out prose. Keys: spearman, sign_flips (share of tokens), mean labels,
    full_share, tokens, per-layer figures. Cached per spec and settings."""
    return _one_thread(lambda: _mechanism(_small(spec), backbone_steps, controller_steps, seed))


# --------------------------------------------------------------------------------------------------
# all-flip vs per-token labels, measured

#: Held-out batches (16 x 32 tokens each) of ``oracle.per_token_agreement``.
AGREEMENT_BATCHES = 2
#: Tokens per sequence the parity part of ``oracle.per_token_agreement`` checks by brute force (2 sequences).
PARITY_TOKENS = 3


@lru_cache(maxsize=16)
def _agreement(spec_json: str, backbone_steps: int, controller_steps: int, seed: int) -> dict[str, Any]:
    spec = RunSpec.model_validate_json(spec_json)
    model, _ = _trained(spec_json, backbone_steps, controller_steps, seed)
    labeling = spec.loss.oracle.labeling
    held = _heldout()
    g = torch.Generator().manual_seed(seed + 11)
    last = spec.model.n_layers - 1
    layers = list(spec.routing.controlled_layers)
    flip, exact, own = {l: [] for l in layers}, {l: [] for l in layers}, {l: [] for l in layers}
    parity_err = 0.0
    with torch.no_grad():
        for i in range(AGREEMENT_BATCHES):
            x, y = batch(held, 16, spec.train.seq_len, g)
            out = model(x)
            T = x.shape[1]
            af = oracle_labels(model, out, y, layers, labeling)
            pt = per_token_labels(model, out, y, layers, labeling, T)  # every token: (B, T), in order
            for l in layers:
                flip[l].append(af[l].flatten())
                exact[l].append(pt[l].u_BS.flatten())
                own[l].append(pt[l].own_BS.flatten())
            if i == 0:  # parity on this trained model: a few tokens of two sequences by brute force
                pos = sample_label_tokens(2, T, PARITY_TOKENS, g)
                sub = model(x[:2])
                batched = per_token_labels(model, sub, y[:2], layers, labeling, PARITY_TOKENS,
                                           positions={l: pos for l in layers})
                for l in layers:
                    brute = brute_force_token_labels(model, x[:2], y[:2], sub, l, labeling, pos)
                    parity_err = max(parity_err, (brute - batched[l].u_BS).abs().max().item())

    def figures(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
        return {"spearman": spearman(a, b), "sign_flips": ((a > 0) != (b > 0)).double().mean().item()}

    per_layer = {}
    for l in layers:
        a, b, c = torch.cat(flip[l]), torch.cat(exact[l]), torch.cat(own[l])
        per_layer[str(l)] = {**figures(a, b), "spearman_own": spearman(a, c), "attention_after": l < last}
    # layers with attention after them: at the last block a flip reaches no other token, the labels are equal
    pooled = [l for l in layers if l < last]
    out = {"labeling": labeling, "layers": per_layer, "parity_err": parity_err,
           "tokens": sum(int(t.numel()) for t in flip[layers[0]]) if layers else 0}
    if pooled:
        a, b = torch.cat([torch.cat(flip[l]) for l in pooled]), torch.cat([torch.cat(exact[l]) for l in pooled])
        out.update(figures(a, b))
        out["spearman_own"] = spearman(a, torch.cat([torch.cat(own[l]) for l in pooled]))
    return out


def measure_per_token_agreement(spec: RunSpec, backbone_steps: int = 100, controller_steps: int = 40,
                                seed: int = 0) -> dict[str, Any]:
    """All-flip vs exact one-token labels (every token, the spec's labeling) on the small trained model of
    ``spec`` (the one :func:`measure_mechanism` uses), on AGREEMENT_BATCHES held-out batches of 16 x 32
    tokens.

    Keys: spearman, sign_flips (share of tokens whose label changes sign), spearman_own (against the
    one-token label's own-loss part), pooled over the controlled layers with attention after them (absent
    when there is none); ``layers`` per layer; ``parity_err``: max |batched - brute force| of one-token
    labels of a few tokens on this model; tokens per layer. Cached per spec and settings.
    Raises ValueError where per_token labels are refused (on-policy under ``topk_batch``)."""
    if _per_token_refused(spec, spec.loss.oracle.labeling):
        raise ValueError("per_token on-policy labels need a per-sequence budget, not topk_batch")
    return _one_thread(lambda: _agreement(_small(spec), backbone_steps, controller_steps, seed))


#: The most |batched - brute force| one-token labels of the trained model may differ by (nats, T = 32).
AGREEMENT_PARITY_TOLERANCE = 2e-4


def per_token_agreement(target: Target, ctx: Context) -> CheckResult:
    labeling = target.spec.loss.oracle.labeling
    if _per_token_refused(target.spec, labeling):
        return skipped("oracle.per_token_agreement", target,
                       "per_token on-policy labels need a per-sequence budget (topk_batch here)")
    m = measure_per_token_agreement(target.spec)
    ok = m["parity_err"] <= AGREEMENT_PARITY_TOLERANCE
    if "spearman" in m:
        measured = f"Spearman {m['spearman']:.3f}, sign flips {m['sign_flips']:.1%} ({labeling})"
    else:
        measured = "equal (no attention after the controlled layers)"
    layers = "; ".join(f"layer {l}: Spearman {v['spearman']:.3f}, flips {v['sign_flips']:.1%}, "
                       f"vs own loss {v['spearman_own']:.3f}" for l, v in m["layers"].items())
    return result("oracle.per_token_agreement", target, ok, measured,
                  f"a measurement; pass = per-token parity on the trained model "
                  f"(<= {AGREEMENT_PARITY_TOLERANCE:g}, is {m['parity_err']:.2g})",
                  f"all-flip vs one-token labels of every token, {m['tokens']} tokens per layer; {layers}", **m)
