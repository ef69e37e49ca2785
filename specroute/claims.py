"""The paper's claims as data, and an evaluator that judges them against a study's ``summary.json``.

Every claim of docs/CLAIMS.md (C1–C12, arXiv 2604.17228) is a :class:`Claim`: what it says, which metric it
reads, how the comparison is made (our operationalisation where the paper gives none, stated here once)
and the paper's figure. :func:`evaluate_claims` returns one verdict per claim:

- ``reproduced`` / ``not reproduced``: the comparison was made on the report's numbers (shown);
- ``not checkable at this scale``: the report lacks what the claim needs (an arm, LM thresholds, latent
  statistics, a measurement), or the claim is about a configuration the report's profile does not have.

Arms are found by what they are — gate kind and loss weights — never by name, so user studies work:
"util/rank on" means util > 0 or rank > 0; the standard G3 arm has jepa > 0. At smoke scale an empirical
claim can come out either way; the verdict states the seed count and the scale and is never forced.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SOURCE = "arXiv 2604.17228, docs/CLAIMS.md"
REPRODUCED, NOT_REPRODUCED, NOT_CHECKABLE = "reproduced", "not reproduced", "not checkable at this scale"

#: Operationalisations (ours; the paper gives no tolerance).
GRAD_RATIO_FACTOR = 2.0          # C3: "≈10.3x" means within a factor 2 (5.2x .. 20.6x)
ENDPOINT_GAP = 0.005             # C4: |final_lm G3 - G1| <= 0.005 nats (the paper's figure)
COLLAPSE_RATIO = 0.5             # C5: collapse = effective rank (or variance) at most half the aligned G3's
INSENSITIVE_FLOOR = 0.005        # C6: range of arm means <= max(2 x mean seed std, 0.005 nats)
MECHANISM_SPEARMAN = 0.95        # C10: labelings disagree materially: Spearman < 0.95 ...
MECHANISM_FLIPS = 0.05           # ... or >= 5% of tokens change the sign of their label
PROXY_TOLERANCE = 0.10           # C11: within 10% of 1.53x and 1.07x
WALL_SAVING_TOLERANCE = 0.10     # C12: wall-time saving within 10 points of 39%


@dataclass(frozen=True)
class Claim:
    """One claim of the paper. ``comparison`` says how a report's numbers are judged."""

    id: str
    statement: str
    kind: str  # empirical | mechanism | accounting | timing
    metric: str
    comparison: str
    paper_value: Any
    source: str = SOURCE

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


CLAIMS: tuple[Claim, ...] = (
    Claim("C1", "under util/rank, G3 has lower average LM loss than G1 in 3/3 seeds", "empirical", "avg_lm",
          "G3 (util/rank, jepa > 0) avg_lm < G1 (util/rank) avg_lm in every common seed", "3/3 seeds"),
    Claim("C2", "under util/rank, G3 hits LM thresholds faster than G1 in 3/3 seeds", "empirical",
          "threshold_hits", "G3 reaches every threshold no later and one sooner than G1, in every seed",
          "3/3 seeds"),
    Claim("C3", "under util/rank, G3's training gradient norm is ≈10.3x lower than G1's", "empirical",
          "grad_norm", f"mean grad_norm G1 / G3 within a factor {GRAD_RATIO_FACTOR:g} of 10.3", 10.3),
    Claim("C4", "at the 20k-step endpoint, G3's LM is within 0.005 of G1's", "empirical", "final_lm",
          f"mean over seeds of |final_lm G3 - G1| <= {ENDPOINT_GAP} nats (util/rank arms)", ENDPOINT_GAP),
    Claim("C5", "A1: without JEPA alignment the G3 predictor collapses", "empirical",
          "latent.effective_rank, latent.variance",
          f"G3 with jepa = 0 has effective rank or latent variance <= {COLLAPSE_RATIO:g}x the aligned G3's",
          "collapse"),
    Claim("C6", "A4: results are insensitive to lambda_JEPA in {0.25, 1.0, 2.0}", "empirical", "avg_lm, best_lm",
          f"range of arm means over the jepa weights <= max(2 x mean seed std, {INSENSITIVE_FLOOR}) nats",
          "insensitive"),
    Claim("C7", "A3: removing util/rank improves best LM and avg LM in 3/3 seeds, for both gates", "empirical",
          "best_lm, avg_lm", "per gate, the no-util/rank arm has lower best_lm and avg_lm in every seed",
          "3/3 seeds, both gates"),
    Claim("C8", "A3: removing util/rank speeds up threshold hits in 3/3 seeds, for both gates", "empirical",
          "threshold_hits", "per gate, the no-util/rank arm reaches the thresholds faster in every seed",
          "3/3 seeds, both gates"),
    Claim("C9", "A3: without util/rank, G3's early-to-mid advantage over G1 disappears", "empirical", "avg_lm",
          "G3 beats G1 on avg_lm in every seed under util/rank, and not in every seed without",
          "advantage disappears"),
    Claim("C10", "cause: the util/rank oracle label is off-policy while gated execution sends only a fraction "
          "through full", "mechanism", "oracle label disagreement (Spearman, sign flips)",
          f"off- vs on-policy labels on a trained model: Spearman < {MECHANISM_SPEARMAN} or sign flips >= "
          f"{MECHANISM_FLIPS:.0%}, with a realised full share < 1", "off-policy mismatch"),
    Claim("C11", "training FLOPs proxy ≈1.53x full-only with util/rank, ≈1.07x without", "accounting",
          "flops_proxy", f"analytic proxy at the paper profile (controller_only, masked) within "
          f"{PROXY_TOLERANCE:.0%} of both figures", {"utilrank": 1.53, "lm": 1.07}),
    Claim("C12", "wall time 2.87 h -> 1.75 h on a V100-32GB when util/rank are removed (≈39% less)", "timing",
          "wall_s", f"wall-time saving without util/rank within {WALL_SAVING_TOLERANCE:.0%} points of 39%",
          {"with_h": 2.87, "without_h": 1.75, "saving": 1 - 1.75 / 2.87}),
)


# --------------------------------------------------------------------------------------------------
# finding arms by what they are


def _utilrank(arm: dict[str, Any]) -> bool:
    loss = arm.get("loss", {})
    return (loss.get("util") or 0) > 0 or (loss.get("rank") or 0) > 0


def find_arms(summary: dict[str, Any], gate: str, utilrank: bool, jepa: bool | None = None) -> list[str]:
    """Arms with this gate kind, util/rank on or off, and (G3) JEPA on / off / either (None)."""
    out = []
    for name, arm in summary.get("arms", {}).items():
        if arm.get("gate") != gate or _utilrank(arm) != utilrank:
            continue
        has_jepa = (arm.get("loss", {}).get("jepa") or 0) > 0
        if jepa is not None and has_jepa != jepa:
            continue
        out.append(name)
    return out


def _standard(summary: dict[str, Any], gate: str, utilrank: bool) -> str | None:
    """The arm of the standard recipe for this gate (G3: JEPA on, weight closest to 1)."""
    arms = find_arms(summary, gate, utilrank, jepa=True if gate == "G3" else None)
    if gate == "G3" and len(arms) > 1:
        arms.sort(key=lambda a: abs((summary["arms"][a]["loss"].get("jepa") or 0) - 1.0))
    return arms[0] if arms else None


def _seeds(summary: dict[str, Any], *arms: str) -> list[str]:
    sets = [set(summary["arms"][a]["seeds"]) for a in arms]
    return sorted(set.intersection(*sets), key=int) if sets else []


def _seed_value(summary: dict[str, Any], arm: str, seed: str, metric: str) -> Any:
    s = summary["arms"][arm]["seeds"][seed]
    if metric == "grad_norm":
        return (s.get("grad_norm") or {}).get("mean")
    return s.get(metric)


def _faster(a: dict[str, Any], b: dict[str, Any]) -> bool:
    inf = math.inf
    pairs = [(inf if a.get(k) is None else a[k], inf if b.get(k) is None else b[k]) for k in a]
    return bool(pairs) and all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)


def _wins(summary: dict[str, Any], better: str, worse: str, metric: str) -> tuple[int, int]:
    seeds = _seeds(summary, better, worse)
    wins = 0
    for s in seeds:
        a, b = _seed_value(summary, better, s, metric), _seed_value(summary, worse, s, metric)
        if metric == "threshold_hits":
            wins += _faster(a or {}, b or {})
        elif a is not None and b is not None:
            wins += a < b
    return wins, len(seeds)


def _mean(summary: dict[str, Any], arm: str, metric: str) -> float | None:
    return summary["arms"][arm].get("mean", {}).get(metric)


def _scale(summary: dict[str, Any], *arms: str) -> str:
    steps = {summary["arms"][a].get("steps") for a in arms if a}
    steps.discard(None)
    step_text = f", {'/'.join(map(str, sorted(steps)))} steps" if steps else ""
    return f"profile {summary.get('profile', '?')}{step_text}"


def _has_thresholds(summary: dict[str, Any], *arms: str) -> bool:
    """Whether some run of these arms reached some LM threshold (else a speed comparison says nothing)."""
    for a in arms:
        for s in summary["arms"][a]["seeds"].values():
            if any(v is not None for v in (s.get("threshold_hits") or {}).values()):
                return True
    return False


# --------------------------------------------------------------------------------------------------
# the verdicts


Verdict = dict[str, Any]


def _verdict(claim: Claim, verdict: str, numbers: str, explanation: str, **values: Any) -> Verdict:
    return {"id": claim.id, "statement": claim.statement, "kind": claim.kind, "verdict": verdict,
            "numbers": numbers, "explanation": explanation, "values": values, "source": claim.source}


def _missing(claim: Claim, what: str) -> Verdict:
    return _verdict(claim, NOT_CHECKABLE, "–", f"the report has no {what}")


def _c1(c: Claim, s: dict[str, Any], **_: Any) -> Verdict:
    g1, g3 = _standard(s, "G1", True), _standard(s, "G3", True)
    if not (g1 and g3):
        return _missing(c, "util/rank arm for both G1 and G3 (G3 with jepa > 0)")
    wins, n = _wins(s, g3, g1, "avg_lm")
    ok = n > 0 and wins == n
    return _verdict(c, REPRODUCED if ok else NOT_REPRODUCED,
                    f"G3 lower avg_lm in {wins}/{n} seeds (mean {_mean(s, g3, 'avg_lm'):.4f} vs "
                    f"{_mean(s, g1, 'avg_lm'):.4f}); {_scale(s, g1, g3)}",
                    f"{g3} vs {g1}, per seed", wins=wins, n=n, arms=[g3, g1])


def _c2(c: Claim, s: dict[str, Any], **_: Any) -> Verdict:
    g1, g3 = _standard(s, "G1", True), _standard(s, "G3", True)
    if not (g1 and g3):
        return _missing(c, "util/rank arm for both G1 and G3")
    if not _has_thresholds(s, g1, g3):
        return _missing(c, "run that reached an LM threshold (none set at this profile, or none reached)")
    wins, n = _wins(s, g3, g1, "threshold_hits")
    ok = n > 0 and wins == n
    return _verdict(c, REPRODUCED if ok else NOT_REPRODUCED, f"G3 faster in {wins}/{n} seeds; {_scale(s, g1, g3)}",
                    f"{g3} vs {g1}: every threshold no later, one sooner", wins=wins, n=n)


def _c3(c: Claim, s: dict[str, Any], **_: Any) -> Verdict:
    g1, g3 = _standard(s, "G1", True), _standard(s, "G3", True)
    if not (g1 and g3):
        return _missing(c, "util/rank arm for both G1 and G3")
    a, b = _mean(s, g1, "grad_norm"), _mean(s, g3, "grad_norm")
    if a is None or not b:
        return _missing(c, "grad_norm means")
    r = a / b
    ok = 10.3 / GRAD_RATIO_FACTOR <= r <= 10.3 * GRAD_RATIO_FACTOR
    return _verdict(c, REPRODUCED if ok else NOT_REPRODUCED,
                    f"grad_norm G1/G3 = {r:.2f}x (paper 10.3x); {_scale(s, g1, g3)}",
                    f"mean controller gradient norm {a:.4g} ({g1}) / {b:.4g} ({g3})", ratio=r)


def _c4(c: Claim, s: dict[str, Any], **_: Any) -> Verdict:
    g1, g3 = _standard(s, "G1", True), _standard(s, "G3", True)
    if not (g1 and g3):
        return _missing(c, "util/rank arm for both G1 and G3")
    gaps = [abs(_seed_value(s, g3, k, "final_lm") - _seed_value(s, g1, k, "final_lm")) for k in _seeds(s, g1, g3)]
    if not gaps:
        return _missing(c, "common seeds")
    gap = statistics.fmean(gaps)
    return _verdict(c, REPRODUCED if gap <= ENDPOINT_GAP else NOT_REPRODUCED,
                    f"|final_lm G3 - G1| = {gap:.4f} nats (paper <= 0.005); {_scale(s, g1, g3)}",
                    "at this run's endpoint (the paper's is 20k steps)", gap=gap, per_seed=gaps)


def _latent(s: dict[str, Any], arm: str) -> tuple[float | None, float | None]:
    m = s["arms"][arm].get("mean", {})
    var, rank = m.get("latent_variance"), m.get("latent_effective_rank")
    if var is None or rank is None:
        lat = [v.get("latent") for v in s["arms"][arm]["seeds"].values() if v.get("latent")]
        if lat:
            var = statistics.fmean(x["variance"] for x in lat)
            rank = statistics.fmean(x["effective_rank"] for x in lat)
    return var, rank


def _c5(c: Claim, s: dict[str, Any], **_: Any) -> Verdict:
    aligned = _standard(s, "G3", True) or _standard(s, "G3", False)
    bare = (find_arms(s, "G3", True, jepa=False) or find_arms(s, "G3", False, jepa=False))
    if not (aligned and bare):
        return _missing(c, "pair of G3 arms with and without JEPA alignment (A1)")
    (va, ra), (vb, rb) = _latent(s, aligned), _latent(s, bare[0])
    if None in (va, ra, vb, rb):
        return _missing(c, "latent statistics (variance, effective rank) for the G3 arms")
    collapsed = rb <= COLLAPSE_RATIO * ra or vb <= COLLAPSE_RATIO * va
    return _verdict(c, REPRODUCED if collapsed else NOT_REPRODUCED,
                    f"effective rank {rb:.2f} vs {ra:.2f}, variance {vb:.3g} vs {va:.3g} (no JEPA vs JEPA); "
                    f"{_scale(s, aligned, bare[0])}", f"{bare[0]} vs {aligned}",
                    effective_rank=[rb, ra], variance=[vb, va])


def _c6(c: Claim, s: dict[str, Any], **_: Any) -> Verdict:
    by_weight: dict[float, str] = {}
    for a in find_arms(s, "G3", True, jepa=True):
        by_weight.setdefault(s["arms"][a]["loss"]["jepa"], a)
    if len(by_weight) < 2:
        return _missing(c, "G3 util/rank arms at two or more JEPA weights (A4)")
    rows, ok = [], True
    values: dict[str, Any] = {}
    for metric in ("avg_lm", "best_lm"):
        means = {w: _mean(s, a, metric) for w, a in by_weight.items()}
        stds = [s["arms"][a].get("std", {}).get(metric) or 0.0 for a in by_weight.values()]
        spread = max(means.values()) - min(means.values())
        allowed = max(2 * statistics.fmean(stds), INSENSITIVE_FLOOR)
        ok &= spread <= allowed
        rows.append(f"{metric} range {spread:.4f} (allowed {allowed:.4f})")
        values[metric] = {"range": spread, "allowed": allowed, "means": {str(k): v for k, v in means.items()}}
    weights = ", ".join(f"{w:g}" for w in sorted(by_weight))
    return _verdict(c, REPRODUCED if ok else NOT_REPRODUCED, "; ".join(rows) + f"; {_scale(s, *by_weight.values())}",
                    f"lambda_JEPA in {{{weights}}}", **values)


def _ablation(c: Claim, s: dict[str, Any], metrics: tuple[str, ...]) -> Verdict:
    parts, ok, values = [], True, {}
    for gate in ("G1", "G3"):
        ur, lm = _standard(s, gate, True), _standard(s, gate, False)
        if not (ur and lm):
            return _missing(c, f"{gate} arms with and without util/rank (A3)")
        if "threshold_hits" in metrics and not _has_thresholds(s, ur, lm):
            return _missing(c, "run that reached an LM threshold (none set at this profile, or none reached)")
        for metric in metrics:
            wins, n = _wins(s, lm, ur, metric)
            ok &= n > 0 and wins == n
            parts.append(f"{gate} {metric} {wins}/{n}")
            values[f"{gate}.{metric}"] = [wins, n]
    scale = _scale(s, *find_arms(s, "G1", False))
    return _verdict(c, REPRODUCED if ok else NOT_REPRODUCED, ", ".join(parts) + f"; {scale}",
                    "seeds where the no-util/rank arm wins", **values)


def _c7(c: Claim, s: dict[str, Any], **_: Any) -> Verdict:
    return _ablation(c, s, ("best_lm", "avg_lm"))


def _c8(c: Claim, s: dict[str, Any], **_: Any) -> Verdict:
    return _ablation(c, s, ("threshold_hits",))


def _c9(c: Claim, s: dict[str, Any], **_: Any) -> Verdict:
    g1u, g3u, g1l, g3l = (_standard(s, "G1", True), _standard(s, "G3", True), _standard(s, "G1", False),
                          _standard(s, "G3", False))
    if not all((g1u, g3u, g1l, g3l)):
        return _missing(c, "G1 and G3 arms both with and without util/rank (A3)")
    w_ur, n_ur = _wins(s, g3u, g1u, "avg_lm")
    w_lm, n_lm = _wins(s, g3l, g1l, "avg_lm")
    present = n_ur > 0 and w_ur == n_ur
    gone = w_lm < n_lm
    ok = present and gone
    why = ("the advantage is present with util/rank and gone without" if ok else
           "there is no consistent advantage under util/rank to disappear" if not present else
           "G3 still beats G1 in every seed without util/rank")
    return _verdict(c, REPRODUCED if ok else NOT_REPRODUCED,
                    f"G3 better avg_lm: {w_ur}/{n_ur} seeds with util/rank, {w_lm}/{n_lm} without; "
                    f"{_scale(s, g1u, g3u)}", why, with_utilrank=[w_ur, n_ur], without=[w_lm, n_lm])


def _c10(c: Claim, s: dict[str, Any], mechanism: dict[str, Any] | None = None, **_: Any) -> Verdict:
    m = mechanism or s.get("mechanism")
    if not m:
        return _missing(c, "oracle-disagreement measurement (`specroute verify --claims REPORT` measures it)")
    shares = [v for a in s.get("arms", {}).values() if _utilrank(a)
              for v in [a.get("mean", {}).get("full_fraction_train")] if v is not None]
    share = statistics.fmean(shares) if shares else m.get("full_share")
    disagree = m["spearman"] < MECHANISM_SPEARMAN or m["sign_flips"] >= MECHANISM_FLIPS
    gated = share is not None and share < 1.0
    return _verdict(c, REPRODUCED if (disagree and gated) else NOT_REPRODUCED,
                    f"off- vs on-policy labels: Spearman {m['spearman']:.3f}, sign flips {m['sign_flips']:.1%}; "
                    f"realised full share {share:.2f}",
                    "measured on a small model trained on real prose (tokens "
                    f"{m.get('tokens', '?')}); this shows the labelings differ under gated execution, not that "
                    "the difference is what costs LM", spearman=m["spearman"], sign_flips=m["sign_flips"],
                    full_share=share)


def _c11(c: Claim, s: dict[str, Any], paper_proxies: dict[str, float] | None = None, **_: Any) -> Verdict:
    ours = {}
    for key, on in (("utilrank", True), ("lm", False)):
        arms = [a for g in ("G1", "G3") for a in find_arms(s, g, on)]
        vals = [_mean(s, a, "flops_proxy") for a in arms if _mean(s, a, "flops_proxy") is not None]
        if vals:
            ours[key] = statistics.fmean(vals)
    at_scale = ", ".join(f"{k} {v:.2f}x" for k, v in ours.items()) or "none"
    if paper_proxies is None:
        return _verdict(c, NOT_CHECKABLE, f"this report's proxies ({s.get('profile')}): {at_scale}",
                        "the proxy depends on depth and the controlled layers: judged at the paper profile "
                        "(`specroute verify --claims` or `specroute flops SPEC --profile paper`)", **ours)
    u, l = paper_proxies["utilrank"], paper_proxies["lm"]
    ok = abs(u / 1.53 - 1) <= PROXY_TOLERANCE and abs(l / 1.07 - 1) <= PROXY_TOLERANCE
    return _verdict(c, REPRODUCED if ok else NOT_REPRODUCED,
                    f"paper profile, controller_only/masked: {u:.2f}x with util/rank, {l:.2f}x without "
                    f"(paper 1.53x / 1.07x); this report: {at_scale}",
                    "analytic (specroute.model.cost), checked against FlopCounterMode by `specroute verify`",
                    utilrank=u, lm=l, report=ours)


def _c12(c: Claim, s: dict[str, Any], **_: Any) -> Verdict:
    ratios = []
    for gate in ("G1", "G3"):
        ur, lm = _standard(s, gate, True), _standard(s, gate, False)
        if ur and lm and _mean(s, ur, "wall_s") and _mean(s, lm, "wall_s") is not None:
            ratios.append(_mean(s, lm, "wall_s") / _mean(s, ur, "wall_s"))
    if not ratios:
        return _missing(c, "arms with and without util/rank with wall times")
    saving = 1 - statistics.fmean(ratios)
    ok = abs(saving - (1 - 1.75 / 2.87)) <= WALL_SAVING_TOLERANCE
    device = (s.get("environment") or {}).get("device", "?")
    return _verdict(c, REPRODUCED if ok else NOT_REPRODUCED,
                    f"wall time without/with util/rank {statistics.fmean(ratios):.2f}x ({saving:.0%} less; paper "
                    f"39% less); {_scale(s)}", f"measured on {device}, not a V100; relative saving compared",
                    saving=saving, ratios=ratios)


EVALUATORS: dict[str, Callable[..., Verdict]] = {
    "C1": _c1, "C2": _c2, "C3": _c3, "C4": _c4, "C5": _c5, "C6": _c6, "C7": _c7, "C8": _c8, "C9": _c9,
    "C10": _c10, "C11": _c11, "C12": _c12,
}


def evaluate_claims(summary: dict[str, Any], mechanism: dict[str, Any] | None = None,
                    paper_proxies: dict[str, float] | None = None) -> list[Verdict]:
    """Judge every claim against a study's summary.

    Args:
        summary: the study's ``summary.json`` (layout in :mod:`specroute.report.summary`).
        mechanism: the oracle-disagreement measurement for C10 (:func:`specroute.verify.oracle.measure_mechanism`);
            falls back to ``summary["mechanism"]``.
        paper_proxies: {"utilrank": x, "lm": y}, the analytic proxies at the paper profile for C11.
    Returns:
        one dict per claim: id, statement, kind, verdict, numbers (text), explanation, values, source.
    """
    out = []
    for claim in CLAIMS:
        try:
            out.append(EVALUATORS[claim.id](claim, summary, mechanism=mechanism, paper_proxies=paper_proxies))
        except (KeyError, TypeError, ZeroDivisionError) as e:
            out.append(_verdict(claim, NOT_CHECKABLE, "–", f"the report lacks a field this claim reads ({e!r})"))
    return out


def load_summary(path: str | Path) -> dict[str, Any]:
    """A study report's summary: ``path`` is a report folder or its ``summary.json``."""
    p = Path(path)
    if p.is_dir():
        p = p / "summary.json"
    return json.loads(p.read_text(encoding="utf-8"))


def paper_proxies(spec_path: str | Path) -> dict[str, float] | None:
    """C11's figures: the analytic proxies (controller_only, masked) of the spec's util/rank and no-util/rank
    arms at its paper profile, averaged over gates; None without a paper profile or such arms."""
    from specroute.flops.analytic import flops_proxy
    from specroute.spec import SpecError, load_study

    try:
        resolved = load_study(spec_path, "paper")
    except SpecError:
        return None
    vals: dict[str, list[float]] = {"utilrank": [], "lm": []}
    for arm in resolved.study.arms:
        spec = resolved.arm_spec(arm)
        key = "utilrank" if spec.loss.uses_oracle else "lm"
        vals[key].append(flops_proxy(spec, "controller_only", execution="masked"))
    if not vals["utilrank"] or not vals["lm"]:
        return None
    return {k: statistics.fmean(v) for k, v in vals.items()}
