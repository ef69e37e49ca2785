"""Causality (docs/DESIGN.md, "Budget"): what token t's routing may depend on.

- ``causality.threshold``: under threshold routing, changing the tokens after position t changes neither
  the decisions nor the logits at positions <= t (checked on the spec's threshold variant when the spec
  itself uses top-k).
- ``causality.topk_reported``: top-k over the sequence is not causal; the spec says so
  (``budget.causal`` is False), generation refuses it (``NonCausalRoutingError``), and the look-ahead is
  real (a change after t moves a decision at <= t in at least one of the tries).
- ``causality.calibrated``: a top-k gate's causal rule (:mod:`specroute.train.calibration`): thresholds
  calibrated on prose batches realise the budget on those batches within ``routing.budget.tolerance`` at
  every controlled layer (measured by a fresh forward under the thresholds, not by the calibration's own
  count), and the rule is causal: tokens after t change neither decisions nor logits at <= t (checked on
  the spec's top-k variant when the spec itself routes by threshold).
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from specroute.model.decoder import NonCausalRoutingError
from specroute.train import calibration
from specroute.train.stages import seeded_model
from specroute.verify.common import (CheckResult, Context, Target, batch, fmt, prose_tokens, result, run_property,
                                     shrink, skipped, tokens)


def threshold_causal(target: Target, ctx: Context) -> CheckResult:
    own = target.spec.routing.budget.enforcement
    stats = {"examples": 0, "max_logit_diff": 0.0}

    def body(B, T, t, execution, init_bias, seed):
        t = min(t, T - 2)
        spec = shrink(target.spec, {
            "routing": {"execution": execution, "budget": {"enforcement": "threshold"},
                        "estimator": "score_scaling" if execution == "gather" else target.spec.routing.estimator},
            "gate": {"init_bias": init_bias}})
        model = seeded_model(spec, seed)
        x = tokens(B, T, seed)
        y = x.clone()
        y[:, t + 1:] = tokens(B, T - t - 1, seed + 1)
        with torch.no_grad():
            a, b = model(x), model(y)
        stats["examples"] += 1
        for ra, rb in zip(a.routing, b.routing):
            same = torch.equal(ra.full_BT[:, :t + 1], rb.full_BT[:, :t + 1])
            assert same, f"layer {ra.layer}: decisions at positions <= {t} changed when tokens after {t} did"
        diff = (a.logits_BTV[:, :t + 1] - b.logits_BTV[:, :t + 1]).abs().max().item()
        stats["max_logit_diff"] = max(stats["max_logit_diff"], diff)
        assert diff <= 1e-5, f"logits at positions <= {t} moved by {diff:.3g} when tokens after {t} changed"

    failure = run_property(
        body, ctx.examples,
        [dict(B=2, T=16, t=5, execution=x, init_bias=0.0, seed=1) for x in ("masked", "gather")],
        B=st.integers(1, 3), T=st.integers(2, 32), t=st.integers(0, 30),
        execution=st.sampled_from(["masked", "gather"]), init_bias=st.sampled_from([0.0, 0.02, -0.02]),
        seed=st.integers(0, 2**16))
    where = "spec" if own == "threshold" else f"threshold variant of the {own} spec"
    return result("causality.threshold", target, failure is None,
                  "prefix unchanged" if failure is None else "prefix changed",
                  "decisions and logits at <= t independent of tokens > t",
                  failure or f"{stats['examples']} examples on the {where}; max logit change "
                             f"{stats['max_logit_diff']:.2g}",
                  max_logit_diff=stats["max_logit_diff"])


def topk_reported(target: Target, ctx: Context) -> CheckResult:
    budget = target.spec.routing.budget
    spec = shrink(target.spec)
    model = seeded_model(spec, 0)
    prompt = tokens(1, 4, 0)
    if budget.causal:
        out = model.generate(prompt, 2)
        ok = out.shape == (1, 6)
        return result("causality.topk_reported", target, ok, "causal; generation runs",
                      "threshold is causal: generate works", f"enforcement={budget.enforcement}")
    try:
        model.generate(prompt, 1)
        refused = False
    except NonCausalRoutingError:
        refused = True
    # the look-ahead is real: some change after t moves a decision at <= t
    moved = 0
    tries = max(4, ctx.examples)
    for seed in range(tries):
        x = tokens(2, spec.train.seq_len, seed)
        y = x.clone()
        t = spec.train.seq_len // 2
        y[:, t + 1:] = tokens(2, spec.train.seq_len - t - 1, seed + 100)
        with torch.no_grad():
            a, b = model(x), model(y)
        moved += any(not torch.equal(ra.full_BT[:, :t + 1], rb.full_BT[:, :t + 1])
                     for ra, rb in zip(a.routing, b.routing))
    ok = refused and not budget.causal and moved > 0
    return result("causality.topk_reported", target, ok,
                  f"causal={budget.causal}, generate {'refuses' if refused else 'RUNS'}, "
                  f"look-ahead in {moved}/{tries}",
                  "non-causal, reported and refused",
                  f"enforcement={budget.enforcement}: the decision for token t depends on later tokens",
                  refused=refused, lookahead_tries=moved)


def calibrated_threshold(target: Target, ctx: Context) -> CheckResult:
    budget = target.spec.routing.budget
    if not budget.causal and budget.calibration_batches == 0:
        return skipped("causality.calibrated", target, "routing.budget.calibration_batches is 0: no causal rule")
    enforcement = "topk_sequence" if budget.causal else budget.enforcement
    n_batches = budget.calibration_batches if not budget.causal else 4
    stream = prose_tokens()
    tol = budget.tolerance
    stats = {"examples": 0, "worst_gap": 0.0, "max_logit_diff": 0.0}

    def body(B, T, b, t, execution, seed):
        t = min(t, T - 2)
        spec = shrink(target.spec, {"routing": {
            "execution": execution, "budget": {"enforcement": enforcement, "full_fraction": b},
            "estimator": "score_scaling" if execution == "gather" else target.spec.routing.estimator}})
        model = seeded_model(spec, seed).eval()
        g = torch.Generator().manual_seed(seed)
        cal_batches = [batch(stream, B, T, g)[0] for _ in range(n_batches)]
        with torch.no_grad():
            cal = calibration.calibrate(model, cal_batches, b)
            full: dict[int, float] = {}
            for idx in cal_batches:
                for rec in model(idx, thresholds=cal.thresholds).routing:
                    full[rec.layer] = full.get(rec.layer, 0.0) + rec.full_BT.sum().item()
            x = batch(stream, B, T, g)[0]
            y = x.clone()
            y[:, t + 1:] = tokens(B, T - t - 1, seed + 1)
            a, c = model(x, thresholds=cal.thresholds), model(y, thresholds=cal.thresholds)
        stats["examples"] += 1
        n = n_batches * B * T
        shares = {layer: f / n for layer, f in full.items()}
        gap = max(abs(v - b) for v in shares.values())
        stats["worst_gap"] = max(stats["worst_gap"], gap)
        assert gap <= tol, (f"calibrated thresholds realise full shares {({k: round(v, 3) for k, v in shares.items()})} "
                            f"on their calibration data, budget b={b} (tolerance {tol:g}; B={B}, T={T})")
        for ra, rc in zip(a.routing, c.routing):
            assert torch.equal(ra.full_BT[:, :t + 1], rc.full_BT[:, :t + 1]), (
                f"layer {ra.layer}: calibrated-threshold decisions at positions <= {t} changed when tokens "
                f"after {t} did")
        diff = (a.logits_BTV[:, :t + 1] - c.logits_BTV[:, :t + 1]).abs().max().item()
        stats["max_logit_diff"] = max(stats["max_logit_diff"], diff)
        assert diff <= 1e-5, f"logits at positions <= {t} moved by {diff:.3g} when tokens after {t} changed"

    typical = [{"B": 2, "T": 16, "b": b, "t": 5, "execution": x, "seed": 1}
               for b, x in ((0.25, "gather"), (0.5, "masked"), (0.75, "gather"))]
    failure = run_property(
        body, ctx.examples, typical,
        B=st.integers(1, 3), T=st.integers(8, 32), b=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]) | st.floats(0, 1),
        t=st.integers(0, 30), execution=st.sampled_from(["masked", "gather"]), seed=st.integers(0, 2**16))
    where = "spec" if not budget.causal else "topk_sequence variant of the threshold spec"
    return result("causality.calibrated", target, failure is None,
                  f"max |share - b| = {fmt(stats['worst_gap'])}; prefix unchanged" if failure is None else "off",
                  f"calibration share within {tol:g} of b; decisions at <= t independent of tokens > t",
                  failure or f"{stats['examples']} examples on the {where}, {n_batches} calibration batches; "
                             f"max logit change {stats['max_logit_diff']:.2g}",
                  max_gap=stats["worst_gap"], max_logit_diff=stats["max_logit_diff"])
