"""summary.json: every metric of every run, per arm means and spreads, per-seed comparisons.

Layout (a contract: the claims evaluator reads it)::

    {"study", "profile", "spec_sha256", "environment": {...},
     "data": {"kind", "corpus_sha256", "tokenizer", "tokenizer_sha256", "train_tokens", "heldout_tokens",
              "unigram_entropy_nats"},
     "backbone": {"heldout_lm", "steps", "cache_key", "wall_s", "source", ...,
                  "checkpoint": {"source", "repo_id", "revision", "model_type", "weights_file", "weights_sha256",
                                 "path"} (backbone.pretrained) or null},
     "arms": {ARM: {"label", "gate", "loss": {"util", "rank", "jepa", "budget"}, "steps",
                    "enforcement" (topk_sequence | topk_batch | threshold), "full_fraction_budget",
                    "oracle": {"labeling", "counterfactual"}, "trainable": [group, ...],
                    "seeds": {"<seed>": {"lm": [[step, value], ...], "best_lm", "avg_lm", "final_lm",
                                          "threshold_hits": {"<tau>": step_or_null},
                                          "grad_norm": {"mean", "median"},
                                          "full_fraction": {"train": {"<layer>": x}, "eval": {...}},
                                          "flops_proxy", "wall_s", "latent": {...} or null,
                                          "score_quantiles": {"<layer>": [q05, q25, q50, q75, q95]},
                                          "gate_diagnostics": {"initial" | "final": {"score_std",
                                              "pred_gap", "target_gap", "target_norm": {"<layer>": x}
                                              (the last three null for G1)}},
                                          "lm_by_batch": {"avg_lm" | "best_lm" | "final_lm": [x per
                                                          held-out batch]} or null,
                                          "loss_grad_norm": {group: {term: x}} (only when logged),
                                          "causal": {"best_lm", "avg_lm", "final_lm", "lm_by_batch",
                                              "full_fraction", "calibration_full_fraction": {"<layer>": x},
                                              "thresholds": {"<layer>": tau}, "tokens"} (top-k only), ...}},
                    "mean": {metric: x}, "std": {metric: x}, "n": seeds finished, "failed_seeds": ["<seed>"],
                    "loss_grad_norm": {group: {term: {"mean", "std"}}} (only when logged),
                    "causal_rule": "native" | "calibrated" | "none",
                    "causal": {"full_fraction" | "calibration_full_fraction" | "thresholds":
                                   {"<layer>": {"mean", "std"}},
                               "gap": {"final_lm" (+ "avg_lm", "best_lm" with calibrate_every_eval):
                                       paired stats}} (calibrated only)}},
     "failed": {ARM: {"<seed>": {"status": "failed", "failure": {"step", "steps", "event", "lr", "nonfinite",
                                                                "last_finite", "message"}, "wall_s", ...}}},
     "roles": {role: arm, "jepa_sweep": [arm, ...]}, "equivalence_margin_nats",
     "sweeps": [{"name", "label", "grid": [path, ...], "arms": {ARM: {path: value}}}] (the study's ``sweeps:``),
     "comparisons": [{"id", "claim", "better", "worse", "metric", "n", "wins", "ties", "losses",
                      "mean_diff", "interval", "p_sign", "per_seed": [...]}],
     "wall_s" (total over sessions), "sessions": [{"started", "wall_s", "ended"}, ...],
     "missing": {ARM: [seed, ...]} (the study's runs with no result yet: a shard's report before the others end),
     "unreadable": {ARM: {"<seed>": reason}} (runs left out because a file of theirs is damaged: the file and
                   what is wrong; :func:`specroute.report.aggregate.collect_runs`)}

A failed run (its training diverged: :mod:`specroute.train.runs`) is kept out of its arm's ``seeds`` and
in ``failed`` instead, so every mean, comparison and claim rests on the finished seeds only (``n`` of
them; an arm whose every seed failed is in ``failed`` only). Every number is finite or null (standard
JSON). ``std`` is the sample standard deviation over seeds (ddof 1; 0 for a single seed). A comparison is
:func:`specroute.claims.stats.paired`: per seed a win, tie (within the noise over held-out batches) or
loss of ``better`` against ``worse``; over seeds the mean difference (better - worse), its 95% interval
and a sign-test p-value. ``roles`` are the study's declared claim roles (:mod:`specroute.spec.roles`).

``causal`` (top-k arms with ``routing.budget.calibration_batches`` > 0, :mod:`specroute.train.calibration`):
per seed the held-out LM under the calibrated causal rule full iff score > tau_l, its realised full share
per layer and the thresholds; per arm ``mean``/``std`` of ``causal_best_lm``, ``causal_avg_lm``,
``causal_final_lm``, ``causal_full_fraction``, and ``gap``: the causal LM against the top-k LM of the same
seeds (diff = causal - top-k, per-seed noise over the held-out batches, 95% interval over seeds, sign test).
A threshold arm's rule is causal as it is (``causal_rule`` ``native``: its LM is the causal one).

``loss_grad_norm`` (runs of a spec with ``train.loss_grad_norm_every``): per trained parameter group (``gate``,
``cheap_ffn``, ``backbone``) the L2 norm of each loss term's gradient, weighted as the term enters the total
(``lm``, ``util``, ``rank``, ``jepa``, ``budget``) and of their sum (``total``); a seed's is the mean over its
logged steps, an arm's the mean and spread of those over seeds.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, NamedTuple

from specroute.claims.stats import paired, paired_evaluations
from specroute.spec.models import RunSpec
from specroute.spec.sweeps import SweepSpec, expansion
from specroute.train.runs import is_failed

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
    "tokens_per_s": lambda s: (s.get("speed") or {}).get("tokens_per_s"),
    "mfu": lambda s: (s.get("speed") or {}).get("mfu"),
    "full_fraction_train": lambda s: _mean_or_none(s["full_fraction"]["train"].values()),
    "full_fraction_eval": lambda s: _mean_or_none(s["full_fraction"]["eval"].values()),
    "latent_variance": lambda s: (s.get("latent") or {}).get("variance"),
    "latent_effective_rank": lambda s: (s.get("latent") or {}).get("effective_rank"),
    "score_std_initial": lambda s: _diagnostic(s, "initial", "score_std"),
    "score_std": lambda s: _diagnostic(s, "final", "score_std"),
    "pred_gap": lambda s: _diagnostic(s, "final", "pred_gap"),
    "target_gap": lambda s: _diagnostic(s, "final", "target_gap"),
    "target_share": lambda s: _diagnostic(s, "final", "target_share"),
    "causal_best_lm": lambda s: (s.get("causal") or {}).get("best_lm"),
    "causal_avg_lm": lambda s: (s.get("causal") or {}).get("avg_lm"),
    "causal_final_lm": lambda s: (s.get("causal") or {}).get("final_lm"),
    "causal_full_fraction": lambda s: _mean_or_none(((s.get("causal") or {}).get("full_fraction") or {}).values()),
}
#: The LM metrics the causal gap is reported for (causal - top-k of the same seeds).
CAUSAL_METRICS = ("final_lm", "avg_lm", "best_lm")
LM_METRICS = ("avg_lm", "best_lm")


class FailedRun(NamedTuple):
    """A failed run of a summary: its arm, seed (as summary.json keys it) and ``failure`` (step, steps,
    during, lr, nonfinite, last_finite, message: :meth:`specroute.train.trainer.Diverged.as_dict`)."""

    arm: str
    seed: str
    failure: dict[str, Any]


def failed_runs(summary: dict[str, Any]) -> list[FailedRun]:
    """The summary's failed runs (its ``failed``), in spec order."""
    return [FailedRun(arm, seed, r["failure"]) for arm, seeds in (summary.get("failed") or {}).items()
            for seed, r in seeds.items()]


def layer_diagnostics(seed: dict[str, Any], when: str) -> dict[str, dict[str, float]]:
    """A seed's gate diagnostics (:func:`specroute.train.stages.gate_diagnostics`) at ``when`` (``initial`` or
    ``final``) by name -> {layer: value}, with ``target_share`` = target_gap / target_norm added for G3
    layers; {} for an older summary, G3 names absent for G1."""
    diag = (seed.get("gate_diagnostics") or {}).get(when) or {}
    out = {k: v for k, v in diag.items() if v is not None}
    if "target_gap" in out and "target_norm" in out:
        out["target_share"] = {l: g / out["target_norm"][l] if out["target_norm"][l] > 0 else None
                               for l, g in out["target_gap"].items()}
    return out


def _diagnostic(seed: dict[str, Any], when: str, name: str) -> float | None:
    """A gate diagnostic of a seed, mean over controlled layers (None when not recorded)."""
    return _mean_or_none((layer_diagnostics(seed, when).get(name) or {}).values())


def _mean_or_none(values: Any) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def arm_entry(label: str, spec: RunSpec, seeds: dict[int, dict[str, Any]], failed: list[int] = ()) -> dict[str, Any]:
    """An arm's entry: its finished ``seeds`` (seed -> seed summary), their means and spreads; ``failed``:
    the seeds whose runs failed (named only; their records are the summary's ``failed``)."""
    per_seed = {str(s): seeds[s] for s in sorted(seeds)}
    mean, std = {}, {}
    for name, read in AGGREGATES.items():
        mean[name], std[name] = mean_std([read(v) for v in per_seed.values()])
    entry = {
        "label": label or spec.gate.kind,
        "gate": spec.gate.kind,
        "loss": {"util": spec.loss.util, "rank": spec.loss.rank, "jepa": spec.loss.jepa, "budget": spec.loss.budget},
        "steps": spec.train.steps,
        "enforcement": spec.routing.budget.enforcement,
        "full_fraction_budget": spec.routing.budget.full_fraction,
        "oracle": {"labeling": spec.loss.oracle.labeling, "counterfactual": spec.loss.oracle.counterfactual},
        "trainable": list(spec.train.trainable),
        "lm_thresholds": list(spec.train.lm_thresholds),
        "seeds": per_seed,
        "mean": mean,
        "std": std,
        "n": len(per_seed),
        "failed_seeds": [str(s) for s in sorted(failed)],
    }
    grads = [v["loss_grad_norm"] for v in per_seed.values() if v.get("loss_grad_norm")]
    if grads:
        entry["loss_grad_norm"] = _term_grad_spread(grads)
    causal = {s: v["causal"] for s, v in per_seed.items() if v.get("causal")}
    entry["causal_rule"] = "native" if spec.routing.budget.causal else "calibrated" if causal else "none"
    if causal:
        entry["causal"] = causal_entry(per_seed, causal)
    return entry


def causal_entry(per_seed: dict[str, dict[str, Any]], causal: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """An arm's causal evaluation over its seeds (see the module docstring): per layer mean and std of the
    held-out and calibration full shares and of the thresholds, and the ``gap`` of each
    :data:`CAUSAL_METRICS` (causal - top-k, :func:`specroute.claims.stats.paired_evaluations`)."""
    out: dict[str, Any] = {}
    for field in ("full_fraction", "calibration_full_fraction", "thresholds"):
        layers = list(dict.fromkeys(l for c in causal.values() for l in c[field]))
        out[field] = {}
        for l in layers:
            m, sd = mean_std([c[field].get(l) for c in causal.values()])
            out[field][l] = {"mean": m, "std": sd}
    pairs = {s: (c, per_seed[s]) for s, c in causal.items()}
    out["gap"] = {m: paired_evaluations(pairs, "causal", "topk", m).as_dict() for m in CAUSAL_METRICS
                  if all(c.get(m) is not None for c in causal.values())}
    return out


def _term_grad_spread(per_seed: list[dict[str, dict[str, float | None]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{group: {term: {"mean", "std"}}} over seeds of the seeds' ``loss_grad_norm`` (in first-seen order)."""
    keys = {g: list(dict.fromkeys(t for s in per_seed for t in s.get(g, {}))) for g in
            dict.fromkeys(g for s in per_seed for g in s)}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for g, terms in keys.items():
        out[g] = {}
        for t in terms:
            m, sd = mean_std([s.get(g, {}).get(t) for s in per_seed])
            out[g][t] = {"mean": m, "std": sd}
    return out


def sweep_entries(sweeps: list[SweepSpec]) -> list[dict[str, Any]]:
    """The study's sweeps as summary.json holds them: name, label, the grid's field paths and, per arm it
    made, the values of those paths."""
    return [{"name": sw.name, "label": sw.label, "grid": list(sw.grid),
             "arms": {arm: dict(zip(sw.grid, combo)) for arm, combo in expansion(sw)}} for sw in sweeps]


def inputs_record(data: Any, backbone: Any, environment: dict[str, Any]) -> dict[str, Any]:
    """What a summary says of a study's data (a :class:`specroute.data.shards.TokenData`), backbone (a
    :class:`specroute.train.backbone.Backbone`) and environment: its ``data``, ``backbone`` and
    ``environment`` entries (the input of :func:`build_summary`; the study folder keeps it in
    ``inputs.json``)."""
    info = backbone.info
    return {
        "data": {**data.summary(), "documents": data.meta.get("documents"), "cache_key": data.meta.get("cache_key")},
        "backbone": {"heldout_lm": info["heldout_lm"], "steps": info["steps"], "cache_key": info["cache_key"],
                     "wall_s": info["wall_s"], "initial_lm": info.get("initial_lm"), "source": info["source"],
                     "wall_s_trained": info.get("wall_s_trained", info["wall_s"]),
                     "checkpoint": info.get("checkpoint"), "speed": info.get("speed")},
        "environment": environment,
    }


def build_summary(resolved: Any, spec_sha256: str, results: dict[str, dict[int, dict[str, Any]]],
                  inputs: dict[str, Any], wall_s: float, sessions: list[dict[str, Any]] | None = None,
                  missing: dict[str, list[int]] | None = None,
                  unreadable: dict[str, dict[int, str]] | None = None) -> dict[str, Any]:
    """The summary of a study (see the module docstring for the layout). ``resolved``: the study (a
    :class:`specroute.spec.Resolved`, or what a study folder recorded of it,
    :class:`specroute.report.aggregate.RecordedStudy`); ``results``: {arm: {seed: run result}} of the finished
    and failed runs; ``inputs``: :func:`inputs_record`; ``wall_s``: the study's total wall time (seconds,
    summed over ``sessions``, :mod:`specroute.report.sessions`); ``missing``: {arm: [seed]} of the study's runs
    with no result yet; ``unreadable``: {arm: {seed: reason}} of those left out for a damaged file."""
    study = resolved.study
    arms, failed = {}, {}
    for arm in study.arms:
        done = {s: r for s, r in results.get(arm, {}).items() if not is_failed(r)}
        bad = {s: r for s, r in results.get(arm, {}).items() if is_failed(r)}
        if bad:
            failed[arm] = {str(s): bad[s] for s in sorted(bad)}
        if done:
            arms[arm] = arm_entry(study.arms[arm].label, resolved.arm_spec(arm), done, list(bad))
    thresholds = any(a["lm_thresholds"] for a in arms.values())
    comparisons = []
    partial = {"arms": arms}
    for c in study.comparisons:
        if c.better not in arms or c.worse not in arms:
            continue
        for metric in (*LM_METRICS, *(("threshold_hits",) if thresholds else ())):
            stats = paired(partial, c.better, c.worse, metric).as_dict()
            comparisons.append({"id": c.id, "claim": c.claim, **stats})
    return {
        "study": study.name,
        "profile": study.profile,
        "description": study.description,
        "spec_sha256": spec_sha256,
        "environment": inputs["environment"],
        "data": inputs["data"],
        "backbone": inputs["backbone"],
        "arms": arms,
        "failed": failed,
        "roles": study.roles.declared(),
        "sweeps": sweep_entries(study.sweeps),
        "equivalence_margin_nats": study.equivalence_margin_nats,
        "comparisons": comparisons,
        "wall_s": wall_s,
        "sessions": list(sessions or []),
        "missing": {arm: list(seeds) for arm, seeds in (missing or {}).items() if seeds},
        "unreadable": {arm: {str(s): why for s, why in sorted(seeds.items())}
                       for arm, seeds in (unreadable or {}).items() if seeds},
    }
