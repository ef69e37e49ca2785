"""summary.json: every metric of every run, per arm means and spreads, per-seed comparisons.

Layout (a contract: the claims evaluator reads it)::

    {"study", "profile", "spec_sha256", "environment": {...},
     "data": {"kind", "corpus_sha256", "tokenizer", "tokenizer_sha256", "train_tokens", "heldout_tokens",
              "unigram_entropy_nats"},
     "backbone": {"heldout_lm", "steps", "cache_key", "wall_s", ...},
     "arms": {ARM: {"label", "gate", "loss": {"util", "rank", "jepa", "budget"},
                    "seeds": {"<seed>": {"lm": [[step, value], ...], "best_lm", "avg_lm", "final_lm",
                                          "threshold_hits": {"<tau>": step_or_null},
                                          "grad_norm": {"mean", "median"},
                                          "full_fraction": {"train": {"<layer>": x}, "eval": {...}},
                                          "flops_proxy", "wall_s", "latent": {...} or null, ...}},
                    "mean": {metric: x}, "std": {metric: x}}},
     "comparisons": [{"id", "better", "worse", "claim", "metric", "wins", "n"}],
     "wall_s"}

``std`` is the sample standard deviation over seeds (ddof 1; 0 for a single seed). A comparison's
``wins`` counts the seeds where ``better`` beats ``worse``: for ``avg_lm`` / ``best_lm`` / ``final_lm``
a strictly lower value; for ``threshold_hits`` reaching every threshold no later and at least one
strictly sooner (never reaching a threshold counts as later than any step).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from specroute.spec.loader import Resolved
from specroute.spec.models import RunSpec

#: Per-arm aggregate metrics (name -> how to read it from a seed's summary).
AGGREGATES = {
    "best_lm": lambda s: s["best_lm"],
    "avg_lm": lambda s: s["avg_lm"],
    "final_lm": lambda s: s["final_lm"],
    "initial_lm": lambda s: s.get("initial_lm"),
    "grad_norm": lambda s: s["grad_norm"]["mean"],
    "grad_norm_median": lambda s: s["grad_norm"]["median"],
    "flops_proxy": lambda s: s["flops_proxy"],
    "wall_s": lambda s: s["wall_s"],
    "full_fraction_train": lambda s: _mean_or_none(s["full_fraction"]["train"].values()),
    "full_fraction_eval": lambda s: _mean_or_none(s["full_fraction"]["eval"].values()),
    "latent_variance": lambda s: (s.get("latent") or {}).get("variance"),
    "latent_effective_rank": lambda s: (s.get("latent") or {}).get("effective_rank"),
}
LM_METRICS = ("avg_lm", "best_lm")


def _mean_or_none(values: Any) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def threshold_faster(a: dict[str, int | None], b: dict[str, int | None]) -> bool:
    """Whether hits ``a`` are faster than ``b``: every threshold no later, at least one sooner."""
    inf = math.inf
    pairs = [(inf if a[k] is None else a[k], inf if b.get(k) is None else b[k]) for k in a]
    return bool(pairs) and all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)


def seed_wins(better: dict[str, Any], worse: dict[str, Any], metric: str) -> tuple[int, int]:
    """(wins, n) of ``better`` over ``worse`` on their common seeds for ``metric``."""
    common = sorted(set(better["seeds"]) & set(worse["seeds"]), key=int)
    wins = 0
    for s in common:
        a, b = better["seeds"][s], worse["seeds"][s]
        if metric == "threshold_hits":
            wins += threshold_faster(a["threshold_hits"], b["threshold_hits"])
        else:
            wins += a[metric] < b[metric]
    return wins, len(common)


def arm_entry(label: str, spec: RunSpec, seeds: dict[int, dict[str, Any]]) -> dict[str, Any]:
    per_seed = {str(s): seeds[s] for s in sorted(seeds)}
    mean, std = {}, {}
    for name, read in AGGREGATES.items():
        mean[name], std[name] = mean_std([read(v) for v in per_seed.values()])
    return {
        "label": label or spec.gate.kind,
        "gate": spec.gate.kind,
        "loss": {"util": spec.loss.util, "rank": spec.loss.rank, "jepa": spec.loss.jepa, "budget": spec.loss.budget},
        "steps": spec.train.steps,
        "lm_thresholds": list(spec.train.lm_thresholds),
        "seeds": per_seed,
        "mean": mean,
        "std": std,
    }


def build_summary(resolved: Resolved, spec_sha256: str, runs: list[tuple[str, int, RunSpec]],
                  results: dict[str, dict[int, dict[str, Any]]], data: Any, backbone: Any,
                  environment: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """The summary of a study (see the module docstring for the layout)."""
    study = resolved.study
    arms = {}
    for arm in study.arms:
        if arm in results:
            arms[arm] = arm_entry(study.arms[arm].label, resolved.arm_spec(arm), results[arm])
    thresholds = any(a["lm_thresholds"] for a in arms.values())
    comparisons = []
    for c in study.comparisons:
        if c.better not in arms or c.worse not in arms:
            continue
        for metric in (*LM_METRICS, *(("threshold_hits",) if thresholds else ())):
            wins, n = seed_wins(arms[c.better], arms[c.worse], metric)
            comparisons.append({"id": c.id, "better": c.better, "worse": c.worse, "claim": c.claim,
                                "metric": metric, "wins": wins, "n": n})
    info = backbone.info
    return {
        "study": study.name,
        "profile": study.profile,
        "description": study.description,
        "spec_sha256": spec_sha256,
        "environment": environment,
        "data": {**data.summary(), "documents": data.meta.get("documents"), "cache_key": data.meta.get("cache_key")},
        "backbone": {"heldout_lm": info["heldout_lm"], "steps": info["steps"], "cache_key": info["cache_key"],
                     "wall_s": info["wall_s"], "initial_lm": info.get("initial_lm"), "source": info["source"],
                     "wall_s_trained": info.get("wall_s_trained", info["wall_s"])},
        "arms": arms,
        "comparisons": comparisons,
        "wall_s": wall_s,
    }


# --------------------------------------------------------------------------------------------------
# derived figures the paper reports (the report puts them beside the paper's)


def find_arm(summary: dict[str, Any], gate: str, utilrank: bool) -> str | None:
    """First arm with this gate and util/rank on (util or rank > 0) or off; None if none."""
    for name, a in summary["arms"].items():
        on = a["loss"]["util"] > 0 or a["loss"]["rank"] > 0
        if a["gate"] == gate and on == utilrank:
            return name
    return None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def paper_figures(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Our figure beside the paper's for C3 (grad-norm ratio), C4 (endpoint gap), C11 (FLOPs proxy)
    and C12 (wall time). Each row: claim, what, ours (number or None), paper, note."""
    arms = summary["arms"]
    g1u, g3u = find_arm(summary, "G1", True), find_arm(summary, "G3", True)
    g1l, g3l = find_arm(summary, "G1", False), find_arm(summary, "G3", False)
    mean = lambda arm, m: arms[arm]["mean"].get(m) if arm else None  # noqa: E731
    rows = []
    if g1u and g3u:
        per_seed = [arms[g1u]["seeds"][s]["grad_norm"]["mean"] / arms[g3u]["seeds"][s]["grad_norm"]["mean"]
                    for s in sorted(set(arms[g1u]["seeds"]) & set(arms[g3u]["seeds"]), key=int)]
        rows.append({"claim": "C3", "what": f"grad-norm ratio G1/G3 under util/rank ({g1u} / {g3u})",
                     "ours": ratio(mean(g1u, "grad_norm"), mean(g3u, "grad_norm")), "paper": 10.3,
                     "unit": "x", "note": "per seed: " + ", ".join(f"{r:.2f}x" for r in per_seed)})
        gap = [abs(arms[g3u]["seeds"][s]["final_lm"] - arms[g1u]["seeds"][s]["final_lm"])
               for s in sorted(set(arms[g1u]["seeds"]) & set(arms[g3u]["seeds"]), key=int)]
        rows.append({"claim": "C4", "what": f"|final_lm G3 - G1| under util/rank ({g3u}, {g1u})",
                     "ours": statistics.fmean(gap) if gap else None, "paper": 0.005, "unit": "nats",
                     "note": "paper: within 0.005 at 20k steps; per seed: " + ", ".join(f"{g:.4f}" for g in gap)})
    for arm, paper, label in ((g1u, 1.53, "with util/rank"), (g3u, 1.53, "with util/rank"),
                              (g1l, 1.07, "without util/rank"), (g3l, 1.07, "without util/rank")):
        if arm:
            rows.append({"claim": "C11", "what": f"training FLOPs proxy {label} ({arm})",
                         "ours": mean(arm, "flops_proxy"), "paper": paper, "unit": "x",
                         "note": "analytic, denominator controller_only"})
    for lm_arm, ur_arm in ((g1l, g1u), (g3l, g3u)):
        if lm_arm and ur_arm:
            r = ratio(mean(lm_arm, "wall_s"), mean(ur_arm, "wall_s"))
            rows.append({"claim": "C12", "what": f"wall time without / with util/rank ({lm_arm} / {ur_arm})",
                         "ours": r, "paper": 1.75 / 2.87, "unit": "x",
                         "note": f"paper 2.87 h -> 1.75 h (-39%); ours {mean(ur_arm, 'wall_s'):.1f} s -> "
                                 f"{mean(lm_arm, 'wall_s'):.1f} s" + (f" ({(r - 1) * 100:+.0f}%)" if r else "")})
    return rows
