"""Parameters and FLOPs: the analytic cost model (:mod:`specroute.flops.analytic`) against real counts.

- ``params.analytic``: ``count_params`` equals ``sum(p.numel())`` per group on the built model (the shrunk
  model and, when it is small enough to build quickly, the spec's own model).
- ``params.paper``: at the paper profile the routed model (backbone + cheap FFNs) has 157.5M parameters
  within 0.5% (docs/CLAIMS.md S1), analytically.
- ``flops.fvcore_dense``: fvcore's forward count of the dense model equals the analytic one within 1%
  (tiny and medium configs).
- ``flops.counters_agree``: fvcore and FlopCounterMode agree on the forward (dense, masked, gather) once
  their conventions are aligned (:mod:`specroute.flops.counters`).
- ``flops.routed_forward``: the routed forward (masked and gather, at the realised full share) matches
  the analytic ``routed_forward + gate`` within 1%, and no routed op is counted as zero: every controlled
  layer's full FFN, cheap FFN and gate have non-zero counts under both counters, and neither counter
  skipped an op outside the allow-list.
- ``flops.execution``: masked execution shows no FFN saving against the dense model, gather the expected
  one (b * full + (1 - b) * cheap).
- ``flops.training_step``: FlopCounterMode's count of a real training step of the recipe (routed forward,
  oracle continuations under no_grad, auxiliary heads, backward) and of the full-only step under each
  denominator reading match the analytic figures within 1%, and so do the proxies.
- ``execution.parity``: gather and masked give the same outputs for the same decisions, and the routed
  model forced all-full gives the dense model's logits.
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st
from torch.testing import assert_close

from specroute.losses import compute_losses
from specroute.flops.analytic import DENOMINATORS, count_params, dense_step_macs, step_macs
from specroute.model.decoder import Decoder
from specroute.flops.counters import CountMACs, forward_macs_mode, fvcore_forward_macs
from specroute.spec import rebuild
from specroute.spec.models import RunSpec
from specroute.train.stages import seeded_model
from specroute.verify.common import (CheckResult, Context, Target, result, run_property, shrink,
                                     skipped, tokens)

PAPER_PARAMS = 157.5e6
PAPER_PARAMS_TOLERANCE = 0.005
FLOP_TOLERANCE = 0.01
#: Build the spec's own model for ``params.analytic`` only up to this many parameters (it is quick).
BUILD_LIMIT = 20_000_000


def _configs(spec: RunSpec) -> list[tuple[str, RunSpec]]:
    """The tiny (width 32, T 16) and medium (width 64, T 32) variants the FLOP checks run on."""
    tiny = shrink(spec)
    medium = rebuild(shrink(spec, seq_len=32, batch_size=2), {"model": {"d_model": 64, "n_heads": 4}})
    return [("tiny", tiny), ("medium", medium)]


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


# --------------------------------------------------------------------------------------------------
# parameters


def _param_groups_numel(model: Decoder) -> dict[str, int]:
    return {g: sum(p.numel() for _, p in ps) for g, ps in model.param_groups().items()}


def params_analytic(target: Target, ctx: Context) -> CheckResult:
    specs = [("shrunk", shrink(target.spec))]
    if count_params(target.spec).total <= BUILD_LIMIT:
        specs.append(("spec", target.spec))
    bad = []
    for name, spec in specs:
        built = _param_groups_numel(Decoder(spec))
        want = count_params(spec)
        analytic = {"backbone": want.backbone, "cheap_ffn": want.cheap_ffn, "gate": want.gate,
                    "target_head": want.target_head}
        if built != analytic:
            bad.append(f"{name}: built {built} != analytic {analytic}")
    pc = count_params(target.spec)
    return result("params.analytic", target, not bad, f"{pc.routed_model:,} routed + {pc.gate + pc.target_head:,} gate",
                  "analytic == sum(numel) per group", "; ".join(bad) or f"checked on {[n for n, _ in specs]}",
                  routed_model=pc.routed_model, trained=pc.trained, total=pc.total)


def params_paper(target: Target, ctx: Context) -> CheckResult:
    if target.paper is None:
        return skipped("params.paper", target, "the spec file has no paper profile")
    changes = target.paper.model.architecture_changes
    if changes:
        return skipped("params.paper", target, "157.5M (S1) is the paper's GPT-2-style decoder; this paper "
                       f"profile's model has {', '.join(changes)}")
    pc = count_params(target.paper)
    rel = _rel(pc.routed_model, PAPER_PARAMS)
    return result("params.paper", target, rel <= PAPER_PARAMS_TOLERANCE, f"{pc.routed_model / 1e6:.2f}M routed model",
                  f"157.5M ± {PAPER_PARAMS_TOLERANCE:.1%} (S1)",
                  f"backbone {pc.backbone / 1e6:.2f}M + cheap FFNs {pc.cheap_ffn / 1e6:.2f}M; gate "
                  f"{pc.gate / 1e6:.2f}M and target head {pc.target_head / 1e6:.2f}M counted apart",
                  routed_model=pc.routed_model, rel_err=rel)


# --------------------------------------------------------------------------------------------------
# forward counts


def fvcore_dense(target: Target, ctx: Context) -> CheckResult:
    worst, rows = 0.0, []
    for name, spec in _configs(target.spec):
        model = seeded_model(spec, 0, routed=False)
        x = tokens(spec.train.batch_size, spec.train.seq_len, 0)
        fv = fvcore_forward_macs(model, x)
        an = dense_step_macs(spec, "forward_only")
        worst = max(worst, _rel(fv.total, an))
        rows.append(f"{name} {fv.total:,} vs {int(an):,}")
        if fv.uncounted:
            return result("flops.fvcore_dense", target, False, "uncounted ops", "none outside the allow-list",
                          f"{name}: fvcore skipped {fv.uncounted}")
    return result("flops.fvcore_dense", target, worst <= FLOP_TOLERANCE, f"max rel. diff {worst:.2e}",
                  f"<= {FLOP_TOLERANCE:.0%}", "; ".join(rows), rel_err=worst)


def counters_agree(target: Target, ctx: Context) -> CheckResult:
    worst, rows = 0.0, []
    for name, spec in _configs(target.spec):
        x = tokens(spec.train.batch_size, spec.train.seq_len, 0)
        for label, model in (("dense", seeded_model(spec, 0, routed=False)),
                             ("masked", seeded_model(rebuild(spec, {"routing": {"execution": "masked"}}), 0)),
                             ("gather", seeded_model(_gather(spec), 0))):
            fv, mo = fvcore_forward_macs(model, x), forward_macs_mode(model, x)
            worst = max(worst, _rel(fv.total, mo.total))
            rows.append(f"{name}/{label} {fv.total:,}/{mo.total:,}")
    return result("flops.counters_agree", target, worst <= FLOP_TOLERANCE, f"max rel. diff {worst:.2e}",
                  f"<= {FLOP_TOLERANCE:.0%} (fvcore vs FlopCounterMode / 2)", "; ".join(rows), rel_err=worst)


def _gather(spec: RunSpec) -> RunSpec:
    return rebuild(spec, {"routing": {"execution": "gather", "estimator": "score_scaling"}})


def routed_forward(target: Target, ctx: Context) -> CheckResult:
    worst, problems, rows = 0.0, [], []
    for name, spec in _configs(target.spec):
        x = tokens(spec.train.batch_size, spec.train.seq_len, 0)
        for execution in ("masked", "gather"):
            s = _gather(spec) if execution == "gather" else rebuild(spec, {"routing": {"execution": "masked"}})
            model = seeded_model(s, 0)
            with torch.no_grad():
                out = model(x)
            shares = [rec.full_fraction for rec in out.routing]
            f = sum(shares) / len(shares) if shares else 0.0
            parts = step_macs(s, full_fraction=f)
            an = parts["routed_forward"] + parts["gate"]
            fv, mo = fvcore_forward_macs(model, x), forward_macs_mode(model, x)
            worst = max(worst, _rel(fv.total, an), _rel(mo.total, an))
            rows.append(f"{name}/{execution} fvcore {fv.total:,} analytic {int(an):,}")
            for counter, uncounted in (("fvcore", fv.uncounted), ("FlopCounterMode", mo.uncounted)):
                if uncounted:
                    problems.append(f"{name}/{execution}: {counter} skipped {uncounted}")
            for layer, share in zip(s.routing.controlled_layers, shares):
                need = ["routed_ffn.gate"] + (["ffn"] if share > 0 else [])
                need += ["routed_ffn.cheap"] if share < 1 and s.routing.cheap_ffn_hidden else []
                for part in need:
                    key = f"blocks.{layer}.{part}"
                    for counter, counts in (("fvcore", fv.by_module), ("FlopCounterMode", mo.by_module)):
                        if counts.get(key, 0) <= 0:
                            problems.append(f"{name}/{execution}: {counter} counts {key} as 0")
    ok = worst <= FLOP_TOLERANCE and not problems
    return result("flops.routed_forward", target, ok, f"max rel. diff {worst:.2e}; {len(problems)} zero/skipped",
                  f"<= {FLOP_TOLERANCE:.0%}; no routed op at 0", "; ".join(problems) or "; ".join(rows),
                  rel_err=worst)


def execution_savings(target: Target, ctx: Context) -> CheckResult:
    spec = shrink(target.spec, seq_len=32)
    x = tokens(spec.train.batch_size, spec.train.seq_len, 0)
    dense = fvcore_forward_macs(seeded_model(spec, 0, routed=False), x).by_module
    masked_spec = rebuild(spec, {"routing": {"execution": "masked"}})
    gather_spec = _gather(spec)
    masked = fvcore_forward_macs(seeded_model(masked_spec, 0), x).by_module
    gathered_model = seeded_model(gather_spec, 0)
    with torch.no_grad():
        shares = [rec.full_fraction for rec in gathered_model(x).routing]
    gathered = fvcore_forward_macs(gathered_model, x).by_module
    problems, rows = [], []
    for layer, f in zip(spec.routing.controlled_layers, shares):
        d = dense.get(f"blocks.{layer}.ffn", 0)
        m = masked.get(f"blocks.{layer}.ffn", 0) + masked.get(f"blocks.{layer}.routed_ffn.cheap", 0)
        g = gathered.get(f"blocks.{layer}.ffn", 0) + gathered.get(f"blocks.{layer}.routed_ffn.cheap", 0)
        cheap_all = masked.get(f"blocks.{layer}.routed_ffn.cheap", 0)
        want = f * d + (1 - f) * cheap_all
        if m < d:
            problems.append(f"layer {layer}: masked FFN step {m:,} < dense {d:,} (a saving masked cannot make)")
        if _rel(g, want) > FLOP_TOLERANCE:
            problems.append(f"layer {layer}: gather FFN step {g:,} != expected {int(want):,} at share {f:.3f}")
        rows.append(f"L{layer}: dense {d:,}, masked {m:,} ({m / d:.3f}x), gather {g:,} ({g / d:.3f}x)")
    ratio_m = sum(masked.get(f"blocks.{l}.ffn", 0) + masked.get(f"blocks.{l}.routed_ffn.cheap", 0)
                  for l in spec.routing.controlled_layers) / max(1, sum(dense.get(f"blocks.{l}.ffn", 0)
                                                                     for l in spec.routing.controlled_layers))
    ratio_g = sum(gathered.get(f"blocks.{l}.ffn", 0) + gathered.get(f"blocks.{l}.routed_ffn.cheap", 0)
                  for l in spec.routing.controlled_layers) / max(1, sum(dense.get(f"blocks.{l}.ffn", 0)
                                                                     for l in spec.routing.controlled_layers))
    return result("flops.execution", target, not problems,
                  f"routed FFN / dense FFN: masked {ratio_m:.3f}x, gather {ratio_g:.3f}x",
                  "masked >= 1 (no saving); gather = b + (1-b)*cheap/full", "; ".join(problems) or "; ".join(rows),
                  masked_ratio=ratio_m, gather_ratio=ratio_g)


# --------------------------------------------------------------------------------------------------
# the training step


def measure_step(spec: RunSpec, seed: int = 0) -> dict[str, Any]:
    """FlopCounterMode's MACs of one real training step of ``spec`` (every trainable group as the spec
    says) and of the full-only step under each denominator reading. Keys: ``step`` (total), ``forward``,
    ``backward``, ``dense`` {denominator: MACs}, ``full_fraction`` (realised), ``uncounted``."""
    model = seeded_model(spec, seed)
    B, T = spec.train.batch_size, spec.train.seq_len
    x = tokens(B, T + 1, seed)
    idx, tgt = x[:, :-1], x[:, 1:]
    with CountMACs() as fwd:
        terms = compute_losses(model, idx, tgt, spec, torch.Generator().manual_seed(seed))
    with CountMACs() as bwd:
        terms.total.backward()
    shares = [rec.full_fraction for rec in terms.out.routing]
    dense = {d: _measure_dense(spec, idx, tgt, d, seed) for d in DENOMINATORS}
    assert fwd.result is not None and bwd.result is not None
    return {"forward": fwd.result.total, "backward": bwd.result.total,
            "step": fwd.result.total + bwd.result.total, "dense": dense,
            "full_fraction": sum(shares) / len(shares) if shares else 0.0,
            "uncounted": {**fwd.result.uncounted, **bwd.result.uncounted}}


def _measure_dense(spec: RunSpec, idx, tgt, denominator: str, seed: int) -> int:
    """The full-only step, measured: the dense forward; + (controller_only) the input-gradient backward
    from the head down to the lowest controlled layer's FFN output; or + (full_training) every gradient."""
    from specroute.losses import lm_loss

    model = seeded_model(spec, seed, routed=False)
    lowest = min(spec.routing.controlled_layers) if spec.routing.controlled_layers else None
    model.requires_grad_(denominator == "full_training")
    with CountMACs() as c:
        if denominator == "forward_only":
            with torch.no_grad():
                model(idx)
        else:
            h = model.embed(idx)
            for block in model.blocks:
                h, _ = block(h)
                if denominator == "controller_only" and block.index == lowest:
                    h = h.detach().requires_grad_(True)  # where the controller's gradient would stop
            loss = lm_loss(model.head(h), tgt)
            if loss.requires_grad:
                loss.backward()
    assert c.result is not None
    return c.result.total


def training_step(target: Target, ctx: Context) -> CheckResult:
    # every controlled layer labelled, so the measured oracle equals the analytic expectation exactly
    worst, rows, problems = 0.0, [], []
    values: dict[str, Any] = {}
    for execution in ("masked", "gather"):
        base = shrink(target.spec, {"loss": {"oracle": {"layers_per_step": None}}}, seq_len=16, batch_size=2)
        spec = _gather(base) if execution == "gather" else rebuild(base, {"routing": {"execution": "masked"}})
        m = measure_step(spec)
        parts = step_macs(spec, full_fraction=m["full_fraction"])
        worst = max(worst, _rel(m["step"], parts["total"]))
        if m["uncounted"]:
            problems.append(f"{execution}: uncounted {m['uncounted']}")
        proxies = {}
        for d in DENOMINATORS:
            an_den = dense_step_macs(spec, d)
            worst = max(worst, _rel(m["dense"][d], an_den))
            measured, analytic = m["step"] / m["dense"][d], parts["total"] / an_den
            worst = max(worst, _rel(measured, analytic))
            proxies[d] = {"measured": measured, "analytic": analytic}
        values[execution] = {"step_measured": m["step"], "step_analytic": parts["total"], "proxies": proxies}
        rows.append(f"{execution}: step {m['step']:,} vs {int(parts['total']):,}; proxy(controller_only) "
                    f"{proxies['controller_only']['measured']:.3f} vs {proxies['controller_only']['analytic']:.3f}")
    ok = worst <= FLOP_TOLERANCE and not problems
    return result("flops.training_step", target, ok, f"max rel. diff {worst:.2e}",
                  f"<= {FLOP_TOLERANCE:.0%} (FlopCounterMode vs cost.py)", "; ".join(problems + rows),
                  rel_err=worst, **values)


# --------------------------------------------------------------------------------------------------
# execution parity


def parity(target: Target, ctx: Context) -> CheckResult:
    base = shrink(target.spec)
    stats = {"max_diff": 0.0}

    def body(B, T, seed, b):
        masked = rebuild(base, {"routing": {"execution": "masked", "estimator": "score_scaling",
                                            "budget": {"full_fraction": b}}})
        gathered = _gather(masked)
        mm, mg = seeded_model(masked, seed), seeded_model(gathered, seed)
        x = tokens(B, T, seed)
        with torch.no_grad():
            om, og = mm(x), mg(x)
            dense = seeded_model(masked, seed, routed=False)
            dense.load_state_dict(mm.backbone_state_dict(), strict=False)
            full = mm(x, all_full=True).logits_BTV
            dl = dense(x).logits_BTV
        for a, c in zip(om.routing, og.routing):
            assert torch.equal(a.full_BT, c.full_BT), f"layer {a.layer}: decisions differ between executions"
        stats["max_diff"] = max(stats["max_diff"], (om.logits_BTV - og.logits_BTV).abs().max().item(),
                                (full - dl).abs().max().item())
        assert_close(og.logits_BTV, om.logits_BTV, rtol=1e-5, atol=1e-5, msg="gather != masked")
        assert_close(full, dl, rtol=1e-5, atol=1e-5, msg="all-full routed != dense")

    failure = run_property(body, ctx.examples, [dict(B=2, T=16, seed=1, b=0.5)], B=st.integers(1, 3),
                           T=st.integers(1, 32),
                           seed=st.integers(0, 2**16), b=st.sampled_from([0.0, 0.25, 0.5, 1.0]))
    return result("execution.parity", target, failure is None, f"max |diff| = {stats['max_diff']:.2g}",
                  "gather == masked; all-full == dense", failure or f"{ctx.examples} examples",
                  max_diff=stats["max_diff"])
