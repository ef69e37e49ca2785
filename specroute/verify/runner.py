"""Run every verifier against study specs; aggregate per spec; render the table or JSON.

Every check runs on each arm of a spec (arms differ in gate and recipe). A spec's verdict for a check is
``fail`` if any arm fails, ``pass`` if at least one arm passes and none fails, ``skip`` otherwise; the
measured value shown is the failing arm's, else the first passing arm's. Results are cached per check and
the parts of the arm spec the check depends on, so arms and specs that share them run it once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specroute.losses import LOSS_TERMS
from specroute.spec import SpecError, load_study
from specroute.spec.loader import dump_run
from specroute.verify import budget, causality, flops, gradients, jepa, oracle
from specroute.verify.common import FAIL, PASS, SKIP, CheckResult, Context, Target

Check = Callable[[Target, Context], CheckResult]

#: What each check reads of an arm's spec (the cache key): model/routing/gate only, or the recipe too.
_SHAPE = ("model", "routing", "gate")
_RECIPE = ("model", "routing", "gate", "loss", "train")


@dataclass(frozen=True)
class Verifier:
    id: str
    run: Check
    depends: tuple[str, ...]
    doc: str


VERIFIERS: tuple[Verifier, ...] = (
    Verifier("params.analytic", flops.params_analytic, _SHAPE, "analytic parameter count == built model"),
    Verifier("params.paper", flops.params_paper, ("paper",), "paper profile: 157.5M routed-model params"),
    Verifier("budget.topk_exact", budget.topk_exact, _SHAPE, "top-k full count exact per layer"),
    Verifier("budget.threshold", budget.threshold_trained, _RECIPE, "threshold share within tolerance"),
    Verifier("causality.threshold", causality.threshold_causal, _SHAPE, "threshold: prefix independent of future"),
    Verifier("causality.topk_reported", causality.topk_reported, _SHAPE, "top-k: non-causal, reported, refused"),
    Verifier("causality.calibrated", causality.calibrated_threshold, _SHAPE,
             "top-k's calibrated threshold: budget on its data, causal"),
    Verifier("execution.parity", flops.parity, _SHAPE, "gather == masked; all-full == dense"),
    *(Verifier(f"gradients.{t}", gradients.alone(t), _RECIPE, f"{t} alone: gradient path")
      for t in LOSS_TERMS),
    Verifier("gradients.extreme", gradients.extreme, _RECIPE, "finite under extreme hidden states"),
    Verifier("oracle.brute_force", oracle.brute_force, _RECIPE, "batched labels == brute force"),
    Verifier("oracle.policy_equivalence", oracle.policy_equivalence, _SHAPE, "off == on iff later layers full"),
    Verifier("oracle.per_token_agreement", oracle.per_token_agreement, _RECIPE,
             "all-flip vs one-token labels, measured (pass: parity)"),
    Verifier("flops.fvcore_dense", flops.fvcore_dense, _SHAPE, "fvcore dense forward == analytic"),
    Verifier("flops.counters_agree", flops.counters_agree, _SHAPE, "fvcore == FlopCounterMode (forward)"),
    Verifier("flops.routed_forward", flops.routed_forward, _SHAPE, "routed forward == analytic; no zero op"),
    Verifier("flops.execution", flops.execution_savings, _SHAPE, "masked: no saving; gather: expected"),
    Verifier("flops.training_step", flops.training_step, _RECIPE, "training step == analytic (FlopCounterMode)"),
    Verifier("jepa.target_frozen", jepa.target_frozen, _RECIPE, "G3 target head never changes"),
    Verifier("jepa.collapse_measurable", jepa.collapse_measurable, _RECIPE, "predictor collapse measurable"),
    Verifier("jepa.target_equation", jepa.target_equation, _SHAPE, "JEPA target = its equation, stop-gradient"),
)


def verifier_ids() -> list[str]:
    return [v.id for v in VERIFIERS]


def _key(v: Verifier, target: Target) -> str:
    if v.depends == ("paper",):
        return v.id + json.dumps(dump_run(target.paper) if target.paper else None, sort_keys=True)
    d = dump_run(target.spec)
    return v.id + json.dumps({k: d[k] for k in v.depends}, sort_keys=True)


def targets_of(path: str | Path, profile: str | None = None) -> list[Target]:
    """One :class:`Target` per arm of the study spec at ``path`` (labels ``file:arm``)."""
    resolved = load_study(path, profile)
    try:
        paper = load_study(path, "paper")
    except SpecError:
        paper = None
    name = Path(path).name
    out = []
    for arm in resolved.study.arms:
        label = name if list(resolved.study.arms) == ["default"] else f"{name}:{arm}"
        out.append(Target(label, resolved.arm_spec(arm), paper.arm_spec(arm) if paper else None))
    return out


@dataclass
class SpecReport:
    """A check's verdict on one spec file, with the per-arm results behind it."""

    check: str
    spec: str
    status: str
    measured: str
    expected: str
    detail: str
    arms: list[CheckResult]

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "spec": self.spec, "status": self.status, "measured": self.measured,
                "expected": self.expected, "detail": self.detail, "arms": [a.as_dict() for a in self.arms]}


def aggregate(check: str, spec: str, arms: list[CheckResult]) -> SpecReport:
    fails = [a for a in arms if a.status == FAIL]
    passes = [a for a in arms if a.status == PASS]
    status = FAIL if fails else PASS if passes else SKIP
    shown = (fails or passes or arms)[0]
    arm = shown.spec.split(":", 1)[1] if ":" in shown.spec else ""
    where = f"[{arm}] " if arm and len(arms) > 1 else ""
    return SpecReport(check, spec, status, shown.measured, shown.expected, where + shown.detail, arms)


def run_verification(paths: Iterable[str | Path], profile: str | None = None, ctx: Context | None = None,
                     only: Iterable[str] | None = None,
                     progress: Callable[[str], None] | None = None) -> list[SpecReport]:
    """Run the verifiers (all, or the ids in ``only``) on every arm of every spec; one report per
    (check, spec). Raises SpecError for a spec that does not load."""
    ctx = ctx or Context()
    chosen = [v for v in VERIFIERS if only is None or v.id in set(only)]
    cache: dict[str, CheckResult] = {}
    reports = []
    for path in paths:
        targets = targets_of(path, profile)
        for v in chosen:
            arms = []
            for t in targets:
                key = _key(v, t)
                if key not in cache:
                    start = time.perf_counter()
                    cache[key] = _safe(v, t, ctx)
                    cache[key].values.setdefault("seconds", round(time.perf_counter() - start, 3))
                    if progress:
                        progress(f"{v.id} {t.label}: {cache[key].status}")
                r = cache[key]
                arms.append(CheckResult(r.check, t.label, r.status, r.measured, r.expected, r.detail, r.values))
            reports.append(aggregate(v.id, Path(path).name, arms))
    return reports


def _safe(v: Verifier, t: Target, ctx: Context) -> CheckResult:
    """Run one check; a crash is a failure with its message (so one broken check never hides the rest)."""
    try:
        return v.run(t, ctx)
    except Exception as e:  # noqa: BLE001
        return CheckResult(v.id, t.label, FAIL, "crashed", "", f"{type(e).__name__}: {e}"[:500])


def default_specs(folder: str | Path = "specs") -> list[Path]:
    return sorted(Path(folder).glob("*.yaml"))
