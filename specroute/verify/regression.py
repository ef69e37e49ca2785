"""Claim regression: the deterministic values and verdicts behind the claims, against committed ones.

``reports/reference/claims_reference.json`` holds, each with its tolerance:

- analytic values: the paper-profile parameter count and FLOP proxies (every arm, execution and
  denominator) of every shipped spec (C11, S1);
- measured-vs-analytic agreement of the FLOP counters and the oracle label equivalences (max errors);
- the status of every verifier on every shipped spec (a pass that turns into a fail is a regression);
- the micro study (``reports/reference/micro.yaml``; its summary is committed): its per-arm LM means, its
  mechanism measurement (C10) and its claim verdicts. Their tolerances come from
  :mod:`specroute.verify.spread` — the micro study rerun under other CPU kernel sets and core counts — and a
  verdict that any of those variants changes is recorded as *fragile*: reported, never a failure.

:func:`collect` recomputes all of it; :func:`compare` lists what flipped or drifted beyond its tolerance.
``specroute verify --regression FILE --update-reference`` refreshes the file (after a deliberate change,
reviewed like code).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from specroute.claims import evaluate_claims, load_summary, mechanism_input, paper_proxies
from specroute.flops.accounting import flops_report
from specroute.store import atomic_write_text, json_text
from specroute.verify.common import Context
from specroute.verify.runner import default_specs, run_verification

FORMAT = 2
#: The committed micro study: its spec and its summary (paths relative to the repository root).
MICRO_SPEC = "reports/reference/micro.yaml"
MICRO_SUMMARY = "reports/reference/micro/summary.json"
#: Numbers taken from each verifier's values for the regression (check id -> value keys).
CHECK_VALUES = {
    "flops.fvcore_dense": ("rel_err",), "flops.counters_agree": ("rel_err",), "flops.routed_forward": ("rel_err",),
    "flops.training_step": ("rel_err",), "oracle.brute_force": ("max_err",),
    "oracle.policy_equivalence": ("equal_err",), "execution.parity": ("max_diff",),
}
#: Absolute tolerances of those numbers (errors: any value up to the tolerance is fine).
ERROR_TOLERANCE = {"rel_err": 0.01, "max_err": 1e-5, "equal_err": 1e-5, "max_diff": 1e-5}
ANALYTIC_RTOL = 1e-9


#: Verdicts that rest on wall-clock time: recorded, never compared.
NONDETERMINISTIC = frozenset({"C12"})
#: The micro study's per-arm means pinned by the regression.
LM_VALUES = ("avg_lm", "best_lm", "final_lm")


def collect(specs: list[Path] | None = None, micro_summary: Path | None = None, micro_spec: Path | None = None,
            ctx: Context | None = None, reports: list | None = None,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Recompute every value the reference holds (see the module docstring). ``reports``: verifier
    results already computed for ``specs`` (:func:`run_verification`), to avoid running them twice.
    ``progress``: called with a line as each part starts (the whole takes minutes on a CPU)."""
    specs = specs or default_specs()
    say = progress or (lambda _msg: None)
    say(f"paper-scale parameters and FLOPs proxies of {len(specs)} specs ...")
    values: dict[str, dict[str, Any]] = {}
    for path in specs:
        try:
            rep = flops_report(path, "paper")
        except Exception:  # noqa: BLE001 - a spec without a paper profile has no paper-scale figures
            continue
        for arm, acc in rep["arms"].items():
            values[f"params.paper.{path.name}:{arm}"] = {"value": acc["params"]["routed_model"], "rtol": ANALYTIC_RTOL}
            for execution, proxies in acc["proxy"].items():
                for den, v in proxies.items():
                    values[f"proxy.paper.{path.name}:{arm}.{execution}.{den}"] = {"value": v, "rtol": ANALYTIC_RTOL}
    statuses: dict[str, str] = {}
    for report in reports if reports is not None else run_verification(specs, ctx=ctx or Context(), progress=progress):
        statuses[f"{report.check}@{report.spec}"] = report.status
        for arm in report.arms:
            for key in CHECK_VALUES.get(report.check, ()):
                v = arm.values.get(key)
                if v is not None:
                    name = f"{report.check}.{key}@{arm.spec}"
                    values[name] = {"value": v, "max": ERROR_TOLERANCE[key]}
    out: dict[str, Any] = {"format": FORMAT, "values": values, "checks": statuses}
    if micro_summary is not None:
        say(f"claim verdicts of the micro study {micro_summary} (C10's mechanism measured on its spec) ...")
        out["micro"] = micro_verdicts(micro_summary, micro_spec)
    return out


def micro_verdicts(summary_path: Path, spec_path: Path | None = None) -> dict[str, Any]:
    """The micro study's claim verdicts (C10 measured on its spec, C11 at its paper profile) and its
    per-arm LM means (``values``: "ARM.metric" -> nats/token)."""
    summary = load_summary(summary_path)
    spec_path = spec_path or Path("specs") / f"{summary['study']}.yaml"
    mech = proxies = None
    if spec_path.is_file():
        mech, proxies = mechanism_input(spec_path), paper_proxies(spec_path)
    verdicts = evaluate_claims(summary, mechanism=mech, paper_proxies=proxies)
    values = {f"{arm}.{m}": a["mean"][m] for arm, a in summary["arms"].items() for m in LM_VALUES
              if a["mean"].get(m) is not None}
    return {"summary": _relative(summary_path), "spec": _relative(spec_path),
            "verdicts": {v.id: v.verdict for v in verdicts}, "numbers": {v.id: v.numbers for v in verdicts},
            "mechanism": mech, "paper_proxies": proxies, "values": values}


def _relative(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (the reference is portable)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def compare(reference: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What regressed: a pinned verdict or a check status that flipped, a value beyond its tolerance,
    something the reference has that the current run lacks. Empty when all is well. Fragile verdicts
    (:func:`fragile`) are not compared."""
    problems = []
    for key, ref in reference.get("values", {}).items():
        cur = current.get("values", {}).get(key)
        if cur is None:
            problems.append(f"{key}: missing (reference {ref['value']})")
            continue
        v = cur["value"]
        if "max" in ref:
            if v > ref["max"]:
                problems.append(f"{key}: {v:.3g} exceeds {ref['max']:.3g}")
        elif abs(v - ref["value"]) > ref.get("rtol", 0) * abs(ref["value"]) + ref.get("atol", 0):
            problems.append(f"{key}: {v!r} drifted from {ref['value']!r} (rtol {ref.get('rtol', 0):g})")
    for key, status in reference.get("checks", {}).items():
        cur = current.get("checks", {}).get(key)
        if cur != status:
            problems.append(f"check {key}: {status} -> {cur}")
    ref_micro, cur_micro = reference.get("micro"), current.get("micro")
    if ref_micro and cur_micro:
        for cid, verdict in ref_micro.get("verdicts", {}).items():
            now = cur_micro["verdicts"].get(cid)
            if cid not in NONDETERMINISTIC and now != verdict:
                problems.append(f"claim {cid}: verdict {verdict!r} -> {now!r} "
                                f"({cur_micro.get('numbers', {}).get(cid, '')})")
        for key, ref in ref_micro.get("values", {}).items():
            now = cur_micro.get("values", {}).get(key)
            if now is None or abs(now - ref["value"]) > ref["atol"]:
                problems.append(f"micro {key}: {now!r} drifted from {ref['value']!r} (atol {ref['atol']:.3g})")
        for key, ref in ref_micro.get("mechanism", {}).items():
            now = (cur_micro.get("mechanism") or {}).get(key)
            if now is None or abs(now - ref["value"]) > ref["atol"]:
                problems.append(f"mechanism {key}: {now!r} drifted from {ref['value']!r} (atol {ref['atol']:.3g})")
    return problems


def fragile(reference: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The fragile verdicts (those another CPU's kernels or core count change), as found now: reported,
    never failures."""
    ref_micro, cur_micro = reference.get("micro") or {}, current.get("micro") or {}
    return [f"claim {cid}: {cur_micro.get('verdicts', {}).get(cid)!r} here; across CPU variants "
            + ", ".join(f"{name} {verdict!r}" for name, verdict in seen)
            for cid, seen in ref_micro.get("fragile", {}).items()]


def refresh(specs: list[Path], ctx: Context, micro_spec: Path, micro_summary: Path, work: Path,
            on_variant: Any = None) -> dict[str, Any]:
    """A new reference: every value recomputed, the micro study rerun under every CPU variant
    (:mod:`specroute.verify.spread`), its summary on this machine committed to ``micro_summary``."""
    from specroute.verify.spread import measure, pin

    current = collect(specs, ctx=ctx)
    results = measure(micro_spec, work, on_variant=on_variant)
    atomic_write_text(micro_summary, (work / "0" / "report" / "summary.json").read_text(encoding="utf-8"))
    current["micro"] = {**pin(results), "summary": _relative(micro_summary), "spec": _relative(micro_spec)}
    return current


def write_reference(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json_text(data, indent=1, sort_keys=True) + "\n")
