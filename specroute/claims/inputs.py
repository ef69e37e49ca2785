"""What the claims read besides a study's summary: the summary itself, C10's label-disagreement measurement
and C11's paper-profile proxies, all from the study's spec, and C12's controlled step timing from a
``specroute bench`` result of the same study. The CLI and the claim regression call these."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

#: The seed-claim roles of C11's two recipes.
PROXY_ROLES = {"utilrank": ("g1_utilrank", "g3_utilrank"), "lm": ("g1_lm", "g3_lm")}
EXECUTIONS = ("masked", "gather")


def load_summary(path: str | Path) -> dict[str, Any]:
    """A study report's summary: ``path`` is a report folder or its ``summary.json``.

    Raises:
        OSError: the file cannot be read. ValueError: it is not JSON.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "summary.json"
    return json.loads(p.read_text(encoding="utf-8"))


def paper_proxies(spec_path: str | Path) -> dict[str, Any] | None:
    """C11's figures: the analytic training-FLOPs proxies of the spec's util/rank and LM-only role arms at
    its paper profile (averaged over the gates declared), under every execution × denominator, and the
    reading the study itself runs.

    Returns:
        {"readings": {execution: {denominator: {"utilrank": x, "lm": y}}}, "execution", "denominator",
        "why"}; None without a paper profile or without both recipes' roles.
    """
    from specroute.flops.analytic import DENOMINATORS, flops_proxy
    from specroute.spec import SpecError, load_study

    try:
        resolved = load_study(spec_path, "paper")
    except SpecError:
        return None
    roles = resolved.study.roles.declared()
    specs = {key: [resolved.arm_spec(roles[r]) for r in names if r in roles] for key, names in PROXY_ROLES.items()}
    if not specs["utilrank"] or not specs["lm"]:
        return None
    readings = {e: {d: {key: statistics.fmean(flops_proxy(s, d, execution=e) for s in arms)
                        for key, arms in specs.items()} for d in DENOMINATORS} for e in EXECUTIONS}
    run = specs["utilrank"][0]
    denominator = "controller_only" if run.train.controller_only else "full_training"
    why = (f"the study's specs run execution {run.routing.execution} and train "
           + ("the controller only (backbone frozen, as the paper's S2)" if run.train.controller_only
              else "the backbone too"))
    return {"readings": readings, "execution": run.routing.execution, "denominator": denominator, "why": why}


def mechanism_input(spec_path: str | Path) -> dict[str, Any] | None:
    """C10's necessary condition: off- vs on-policy label disagreement (Spearman, sign flips, full share,
    tokens) measured on a small model trained with the spec's first util/rank arm; None without one."""
    from specroute.spec import load_study
    from specroute.verify.oracle import measure_mechanism

    resolved = load_study(spec_path)
    oracle_arms = [resolved.arm_spec(a) for a in resolved.study.arms if resolved.arm_spec(a).loss.uses_oracle]
    if not oracle_arms:
        return None
    m = measure_mechanism(oracle_arms[0])
    return {k: m[k] for k in ("spearman", "sign_flips", "full_share", "tokens")}


def bench_timing(summary: dict[str, Any], root: str | Path = Path("reports") / "bench") -> dict[str, Any] | None:
    """C12's timing: the newest ``specroute bench`` summary under ``root`` (``<root>/<study>_<profile>/
    summary.json``, as the bench writes it) of the study ``summary`` judges, that timed util/rank against
    LM-only pairs; None when there is none (or none that can be read as JSON)."""
    study = summary.get("study")
    found = []
    for p in Path(root).glob(f"{study}_*/summary.json") if study else []:
        try:
            bench = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(bench, dict) and bench.get("study") == study and bench.get("recipes"):
            found.append((p.stat().st_mtime, str(p), bench))
    return {**max(found)[2], "path": max(found)[1]} if found else None
