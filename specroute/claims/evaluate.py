"""Judge the paper's claims (C1–C12) against a study's ``summary.json``.

Arms are read from the roles the study declares (``roles:`` in its spec, copied into the summary), never
guessed; a claim whose roles are not declared is ``not checkable``. Every criterion, margin and seed rule
is stated in docs/CLAIMS.md and in each claim's ``criterion``; every verdict carries the numbers it rests on.

Failed runs (``failed`` in the summary: their training diverged) are not among an arm's seeds, so a claim
rests on the seeds both arms finished; with fewer than the claim needs it is ``not checkable`` (``n=2 <
3 seeds``), and an arm whose every seed failed makes its roles' claims not checkable, saying so.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable
from typing import Any

from specroute.claims import paper as P
from specroute.claims.paper import CLAIMS, Claim
from specroute.claims.stats import (THRESHOLDS, fmt_interval, outside, paired, ratio_over_seeds, common_seeds,
                                    within)
from specroute.claims.verdict import (INCONCLUSIVE, NECESSARY, NOT_CHECKABLE, NOT_REPRODUCED, REPRODUCED, Verdict,
                                      combine, from_paired, judge_band, judge_disappears, judge_wins, make)
from specroute.text import plural

GATES = ("G1", "G3")


class Context:
    """What a claim reads besides the summary: C10's label-disagreement measurement, C11's proxies and C12's
    bench timing."""

    def __init__(self, summary: dict[str, Any], mechanism: dict[str, Any] | None, proxies: dict[str, Any] | None,
                 bench: dict[str, Any] | None = None):
        self.summary, self.mechanism, self.proxies = summary, mechanism or summary.get("mechanism"), proxies
        self.bench = bench
        self.margin = float(summary.get("equivalence_margin_nats", P.ENDPOINT_GAP_NATS))

    def arms(self, *roles: str) -> dict[str, str] | str:
        """role -> arm for every role named, or the reason one is missing."""
        declared = self.summary.get("roles") or {}
        out = {}
        for role in roles:
            arm = declared.get(role)
            if not arm:
                return f"role {role} not declared"
            if arm not in self.summary["arms"]:
                if arm in (self.summary.get("failed") or {}):
                    return f"role {role}: every seed of arm {arm!r} failed (non-finite training; see Failed runs)"
                return f"role {role}: arm {arm!r} has no results in this report"
            out[role] = arm
        return out

    def scale(self, *arms: str) -> str:
        steps = sorted({self.summary["arms"][a].get("steps") for a in arms} - {None})
        return f"profile {self.summary.get('profile', '?')}" + (f", {'/'.join(map(str, steps))} steps" if steps else "")

    def reached_a_threshold(self, *arms: str) -> bool:
        return any(v is not None for a in arms for s in self.summary["arms"][a]["seeds"].values()
                   for v in (s.get(THRESHOLDS) or {}).values())

    def paired_values(self, a: str, b: str, read: Callable[[dict[str, Any]], Any]) -> tuple[list[Any], list[Any]]:
        """``read`` of arms ``a`` and ``b``'s seed summaries, over their common seeds (in seed order)."""
        seeds = common_seeds(self.summary, a, b)
        return tuple([read(self.summary["arms"][arm]["seeds"][s]) for s in seeds] for arm in (a, b))  # type: ignore


def _not_checkable(c: Claim, reason: str) -> Verdict:
    return make(c, NOT_CHECKABLE, reason)


def _c1(c: Claim, x: Context) -> Verdict:
    arms = x.arms("g1_utilrank", "g3_utilrank")
    if isinstance(arms, str):
        return _not_checkable(c, arms)
    p = paired(x.summary, arms["g3_utilrank"], arms["g1_utilrank"], "avg_lm")
    verdict, reason = judge_wins(p, x.margin)
    return from_paired(c, verdict, reason, p, f"G3 - G1 avg_lm: {p.text()}; {x.scale(*arms.values())}", arms=arms,
                       values={"paired": p.as_dict()})


def _speed(c: Claim, x: Context, pairs: list[tuple[str, str, str]]) -> Verdict:
    """Threshold-hit claims (C2, C8): ``pairs`` of (part name, faster role, slower role)."""
    arms = x.arms(*{r for _, a, b in pairs for r in (a, b)})
    if isinstance(arms, str):
        return _not_checkable(c, arms)
    if not x.reached_a_threshold(*arms.values()):
        return _not_checkable(c, "no run reached an LM threshold (none set at this profile, or none reached)")
    parts, values, texts = [], {}, []
    for name, fast, slow in pairs:
        p = paired(x.summary, arms[fast], arms[slow], THRESHOLDS)
        parts.append((name, *judge_wins(p, None)))
        values[name] = p.as_dict()
        texts.append(f"{name}: {p.text('steps')}")
    verdict, reason = combine(parts)
    n = min(v["n"] for v in values.values())
    return make(c, verdict, reason, "; ".join(texts) + f"; {x.scale(*arms.values())}", n=n, arms=arms, values=values)


def _c2(c: Claim, x: Context) -> Verdict:
    return _speed(c, x, [("G3 vs G1", "g3_utilrank", "g1_utilrank")])


def _c3(c: Claim, x: Context) -> Verdict:
    arms = x.arms("g1_utilrank", "g3_utilrank")
    if isinstance(arms, str):
        return _not_checkable(c, arms)
    norm = lambda s: (s.get("grad_norm") or {}).get("mean")  # noqa: E731
    gm, iv, ratios = ratio_over_seeds(list(zip(*x.paired_values(arms["g1_utilrank"], arms["g3_utilrank"], norm))))
    lo, hi = P.GRAD_NORM_RATIO / P.GRAD_RATIO_FACTOR, P.GRAD_NORM_RATIO * P.GRAD_RATIO_FACTOR
    kw = dict(n=len(ratios), effect=gm, effect_unit="x", interval=iv, arms=arms, values={"ratios": ratios})
    numbers = (f"grad_norm G1/G3 per seed: {', '.join(f'{r:.2f}x' for r in ratios)}; geometric mean "
               + (f"{gm:.2f}x {fmt_interval(iv, 3)}" if gm else "–") + f" (paper {P.GRAD_NORM_RATIO}x); "
               + x.scale(*arms.values()))
    return make(c, *judge_band(len(ratios), iv, lo, hi, f"[{lo:.2f}, {hi:.1f}]x"), numbers, **kw)


def _c4(c: Claim, x: Context) -> Verdict:
    arms = x.arms("g1_utilrank", "g3_utilrank")
    if isinstance(arms, str):
        return _not_checkable(c, arms)
    p = paired(x.summary, arms["g3_utilrank"], arms["g1_utilrank"], "final_lm")
    gap, iv = P.ENDPOINT_GAP_NATS, p.interval
    numbers = (f"final_lm G3 - G1 {p.mean:+.4f} nats {fmt_interval(iv)} (paper: within ±{gap}); "
               f"{x.scale(*arms.values())} (the paper's endpoint is {P.STEPS} steps)") if p.n else "–"
    verdict, reason = judge_band(p.n, iv, -gap, gap, f"±{gap} nats")
    return from_paired(c, verdict, reason, p, numbers, arms=arms, values={"paired": p.as_dict()})


def _c5(c: Claim, x: Context) -> Verdict:
    arms = x.arms("g3_utilrank", "g3_unaligned")
    if isinstance(arms, str):
        return _not_checkable(c, arms)
    pair = arms["g3_unaligned"], arms["g3_utilrank"]
    bare, aligned = x.paired_values(*pair, lambda s: (s.get("latent") or {}).get("effective_rank"))
    if not bare:
        return _not_checkable(c, f"n=0 < {P.SEEDS} seeds (no seed finished in both arms)")
    if None in bare or None in aligned:
        return _not_checkable(c, "the report has no latent statistics for the G3 arms")
    gm, iv, ratios = ratio_over_seeds(list(zip(bare, aligned)))
    variances = x.paired_values(*pair, lambda s: s["latent"]["variance"])
    numbers = (f"effective rank no JEPA / JEPA per seed: {', '.join(f'{r:.2f}' for r in ratios)}; geometric mean "
               + (f"{gm:.2f} {fmt_interval(iv, 3)}" if gm else "–")
               + f" (collapse: <= {P.COLLAPSE_RATIO}); latent variance (not judged: scale-dependent) "
               f"{statistics.fmean(variances[0]):.3g} vs {statistics.fmean(variances[1]):.3g}; "
               + x.scale(*arms.values()))
    kw = dict(n=len(ratios), effect=gm, effect_unit="x", interval=iv, arms=arms,
              values={"rank_ratios": ratios, "effective_rank": [bare, aligned], "variance": variances})
    return make(c, *judge_band(len(ratios), iv, 0.0, P.COLLAPSE_RATIO, f"(0, {P.COLLAPSE_RATIO}] (collapse)"),
                numbers, **kw)


def _c6(c: Claim, x: Context) -> Verdict:
    sweep = (x.summary.get("roles") or {}).get("jepa_sweep") or []
    if len(sweep) < 2:
        return _not_checkable(c, "role jepa_sweep not declared")
    missing = [a for a in sweep if a not in x.summary["arms"]]
    if missing:
        return _not_checkable(c, f"role jepa_sweep: arm {missing[0]!r} has no results in this report")
    m, rows, values, state = x.margin, [], {}, []
    for (a, b), metric in itertools.product(itertools.combinations(sweep, 2), ("avg_lm", "best_lm")):
        p = paired(x.summary, a, b, metric)
        iv = p.interval
        state.append("undecided" if iv is None or p.n < P.SEEDS else "inside" if within(iv, -m, m)
                     else "outside" if outside(iv, -m, m) else "undecided")
        rows.append(f"{a} - {b} {metric} " + (f"{p.mean:+.4f} {fmt_interval(iv)}" if p.n else "no common seed"))
        values[f"{a}-{b}.{metric}"] = p.as_dict()
    n = min(v["n"] for v in values.values())
    biggest = max(values.values(), key=lambda v: abs(v["mean_diff"] or 0.0))
    kw = dict(n=n, effect=biggest["mean_diff"], effect_unit="nats", interval=biggest["interval"],
              arms={"jepa_sweep": sweep}, values=values)
    numbers = "; ".join(rows) + f" (margin ±{m:g} nats); {x.scale(*sweep)}"
    if n < P.SEEDS:
        return make(c, NOT_CHECKABLE, f"n={n} < {P.SEEDS} seeds", numbers, **kw)
    if all(s == "inside" for s in state):
        return make(c, REPRODUCED, f"insensitive: every interval lies inside ±{m:g} nats", numbers, **kw)
    if "outside" in state:
        return make(c, NOT_REPRODUCED, f"sensitive: {plural(state.count('outside'), 'interval')} outside ±{m:g} nats",
                    numbers, **kw)
    return make(c, INCONCLUSIVE, f"{plural(state.count('undecided'), 'interval')} straddling ±{m:g} nats", numbers, **kw)


def _c7(c: Claim, x: Context) -> Verdict:
    arms = x.arms("g1_utilrank", "g3_utilrank", "g1_lm", "g3_lm")
    if isinstance(arms, str):
        return _not_checkable(c, arms)
    parts, values, texts = [], {}, []
    for gate, metric in itertools.product(GATES, ("best_lm", "avg_lm")):
        g = gate.lower()
        p = paired(x.summary, arms[f"{g}_lm"], arms[f"{g}_utilrank"], metric)
        parts.append((f"{gate} {metric}", *judge_wins(p, x.margin)))
        values[f"{gate}.{metric}"] = p.as_dict()
        texts.append(f"{gate} {metric}: {p.text()}")
    verdict, reason = combine(parts)
    return make(c, verdict, reason, "; ".join(texts) + f"; {x.scale(*arms.values())}",
                n=min(v["n"] for v in values.values()), arms=arms, values=values)


def _c8(c: Claim, x: Context) -> Verdict:
    return _speed(c, x, [(gate, f"{gate.lower()}_lm", f"{gate.lower()}_utilrank") for gate in GATES])


def _c9(c: Claim, x: Context) -> Verdict:
    arms = x.arms("g1_utilrank", "g3_utilrank", "g1_lm", "g3_lm")
    if isinstance(arms, str):
        return _not_checkable(c, arms)
    with_ur = paired(x.summary, arms["g3_utilrank"], arms["g1_utilrank"], "avg_lm")
    without = paired(x.summary, arms["g3_lm"], arms["g1_lm"], "avg_lm")
    present, why = judge_wins(with_ur, x.margin)
    numbers = (f"G3 - G1 avg_lm with util/rank: {with_ur.text()}; without: {without.text()}; "
               f"{x.scale(*arms.values())}")
    if present != REPRODUCED:
        verdict = present if present in (NOT_CHECKABLE, INCONCLUSIVE) else NOT_REPRODUCED
        reason = why if present == NOT_CHECKABLE else f"no advantage under util/rank to disappear ({why})"
    else:
        verdict, reason = judge_disappears(without)
    return from_paired(c, verdict, reason, without, numbers, arms=arms,
                       values={"with_utilrank": with_ur.as_dict(), "without": without.as_dict()})


def _c10(c: Claim, x: Context) -> Verdict:
    declared = x.summary.get("roles") or {}
    gates = [g for g in GATES if declared.get(f"{g.lower()}_onpolicy")]
    if gates:
        return _c10_direct(c, x, gates)
    m = x.mechanism
    if not m:
        return _not_checkable(c, "roles g1_onpolicy / g3_onpolicy not declared (the direct test), and no "
                                 "label-disagreement measurement (`specroute verify --claims REPORT` measures it)")
    ur = x.arms("g1_utilrank", "g3_utilrank")
    shares = ([x.summary["arms"][a]["mean"].get("full_fraction_train") for a in ur.values()]
              if isinstance(ur, dict) else [])
    shares = [v for v in shares if v is not None]
    share = statistics.fmean(shares) if shares else m.get("full_share")
    disagree = m["spearman"] < P.MECHANISM_SPEARMAN or m["sign_flips"] >= P.MECHANISM_FLIPS
    numbers = (f"off- vs on-policy labels: Spearman {m['spearman']:.3f}, sign flips {m['sign_flips']:.1%} over "
               f"{m.get('tokens', '?')} held-out tokens; realised full share {share:.2f}")
    values = {"spearman": m["spearman"], "sign_flips": m["sign_flips"], "full_share": share}
    if disagree and share is not None and share < 1.0:
        return make(c, NECESSARY, "the labelings disagree under gated execution; whether that is what costs LM "
                                  "needs on-policy util/rank arms (roles gX_onpolicy)", numbers, values=values)
    return make(c, NOT_REPRODUCED, "the necessary condition fails: the labelings agree, or every token runs full",
                numbers, values=values)


def _c10_direct(c: Claim, x: Context, gates: list[str]) -> Verdict:
    parts, values, texts, used = [], {}, [], {}
    for gate in gates:
        g = gate.lower()
        arms = x.arms(f"{g}_utilrank", f"{g}_onpolicy", f"{g}_lm")
        if isinstance(arms, str):
            return _not_checkable(c, arms)
        used.update(arms)
        harm_off = paired(x.summary, arms[f"{g}_lm"], arms[f"{g}_utilrank"], "avg_lm")
        harm_on = paired(x.summary, arms[f"{g}_lm"], arms[f"{g}_onpolicy"], "avg_lm")
        hurts, why = judge_wins(harm_off, x.margin)
        if hurts == REPRODUCED:
            parts.append((gate, *judge_disappears(harm_on)))
        else:
            verdict = hurts if hurts in (NOT_CHECKABLE, INCONCLUSIVE) else NOT_REPRODUCED
            parts.append((gate, verdict, why if hurts == NOT_CHECKABLE else
                          f"off-policy util/rank does not hurt here, nothing to explain ({why})"))
        values[gate] = {"off_policy": harm_off.as_dict(), "on_policy": harm_on.as_dict()}
        texts.append(f"{gate} LM-only - util/rank avg_lm, off-policy: {harm_off.text()}; on-policy: {harm_on.text()}")
    verdict, reason = combine(parts)
    return make(c, verdict, reason, "; ".join(texts) + f"; {x.scale(*used.values())}",
                n=min(v["on_policy"]["n"] for v in values.values()), arms=used, values=values)


def _c11(c: Claim, x: Context) -> Verdict:
    at_scale = {}
    for key, roles in (("utilrank", ("g1_utilrank", "g3_utilrank")), ("lm", ("g1_lm", "g3_lm"))):
        vals = [x.summary["arms"][a]["mean"].get("flops_proxy") for a in
                [(x.summary.get("roles") or {}).get(r) for r in roles] if a in x.summary["arms"]]
        if [v for v in vals if v is not None]:
            at_scale[key] = statistics.fmean(v for v in vals if v is not None)
    here = ", ".join(f"{k} {v:.2f}x" for k, v in at_scale.items()) or "none"
    pp = x.proxies
    if pp is None:
        return make(c, NOT_CHECKABLE, "judged at the paper profile: give the study's spec (`specroute verify "
                                      "--claims REPORT` finds specs/<study>.yaml) with a paper profile and the "
                                      "util/rank and LM-only roles", f"this report ({x.summary.get('profile')}): "
                                                                     f"{here}", values={"report": at_scale})
    e, d = pp["execution"], pp["denominator"]
    u, l = pp["readings"][e][d]["utilrank"], pp["readings"][e][d]["lm"]
    tol = P.PROXY_TOLERANCE
    ok = abs(u / P.PROXY["utilrank"] - 1) <= tol and abs(l / P.PROXY["lm"] - 1) <= tol
    all_six = "; ".join(f"{ee}/{dd} {r['utilrank']:.2f}x / {r['lm']:.2f}x" for ee, dens in pp["readings"].items()
                        for dd, r in dens.items())
    numbers = (f"paper profile, {e}/{d}: {u:.2f}x with util/rank, {l:.2f}x without (paper {P.PROXY['utilrank']}x / "
               f"{P.PROXY['lm']}x). All readings (with / without): {all_six}. This report: {here}")
    reason = (f"judged under {e}/{d}: {pp['why']}; " + ("both within" if ok else "not both within")
              + f" {tol:.0%} of the paper's figures")
    return make(c, REPRODUCED if ok else NOT_REPRODUCED, reason, numbers,
                values={"utilrank": u, "lm": l, "readings": pp["readings"], "report": at_scale})


def _c12(c: Claim, x: Context) -> Verdict:
    """C12 rests on a timing that can carry a 10-point judgement: the bench's controlled controller-step
    timing (:func:`_c12_bench`) when given, else the study's wall times only from accelerator (CUDA) runs
    timed one at a time. CPU wall times of a study's runs are never judged: parallel workers share the cores,
    evaluation and other processes are inside them, and two studies with bit-identical losses gave opposite
    verdicts."""
    arms = x.arms("g1_utilrank", "g3_utilrank", "g1_lm", "g3_lm")
    if isinstance(arms, str):
        return _not_checkable(c, arms)
    if x.bench is not None:
        return _c12_bench(c, x.bench, arms)
    env = x.summary.get("environment") or {}
    concurrent = [s.get("concurrent_runs") for a in arms.values() for s in x.summary["arms"][a]["seeds"].values()]
    if env.get("device") in (None, "cpu"):
        at_once = max((n for n in concurrent if n), default=None)
        return _not_checkable(c, f"the study's wall times are CPU wall times of runs ({at_once or '?'} at once, with "
                                 "evaluation and other processes inside them), which cannot support "
                                 "a timing judgement; `specroute bench SPEC` times the steps under control and "
                                 "`specroute verify --claims REPORT` judges C12 from it")
    if None in concurrent:
        return _not_checkable(c, "the report does not record how its runs were timed (a resumed run, or an "
                                 "older version)")
    if max(concurrent) > 1:
        return _not_checkable(c, f"the wall times come from up to {max(concurrent)} runs at once sharing one "
                                 "machine; time the steps with `specroute bench` instead")
    mean = lambda a: x.summary["arms"][a]["mean"].get("wall_s")  # noqa: E731
    ratios = [mean(arms[f"{g}_lm"]) / mean(arms[f"{g}_utilrank"]) for g in ("g1", "g3")]
    return _c12_judge(c, ratios, f"wall time of runs one at a time on {env.get('device_name') or env['device']}",
                      arms)


def _c12_bench(c: Claim, bench: dict[str, Any], arms: dict[str, str]) -> Verdict:
    """C12 from a ``specroute bench`` summary of the same study: the mean controller-step time without
    util/rank over the mean with it, per gate (``recipes``). A ``--quick`` bench is not checkable; a bench
    that warned of a busy machine is inconclusive."""
    device = (bench.get("environment") or {}).get("device", "?")
    where = f"`specroute bench` ({bench.get('profile', '?')} profile, {device})"
    if bench.get("quick"):
        return _not_checkable(c, f"{where} ran with --quick (a smoke test, not a timing)")
    ratios = [r["measured_ratio"] for r in bench.get("recipes") or [] if r.get("measured_ratio") is not None]
    if not ratios:
        return _not_checkable(c, f"{where} timed no util/rank and LM-only pair")
    busy = [w for w in bench.get("warnings") or [] if "busy" in w]
    if busy:
        saving = 1 - statistics.fmean(ratios)
        return make(c, INCONCLUSIVE, f"{where}: {busy[0]}", f"controller-step time without / with util/rank "
                    f"{statistics.fmean(ratios):.2f}x ({saving:.0%} less)", effect=saving, effect_unit="saving",
                    arms=arms, values={"saving": saving, "ratios": ratios, "source": "bench"})
    return _c12_judge(c, ratios, f"controller-step time from {where}", arms, source="bench")


def _c12_judge(c: Claim, ratios: list[float], what: str, arms: dict[str, str], source: str = "study") -> Verdict:
    saving = 1 - statistics.fmean(ratios)
    ok = abs(saving - P.WALL_SAVING) <= P.WALL_SAVING_TOLERANCE
    return make(c, REPRODUCED if ok else NOT_REPRODUCED,
                f"saving {saving:.0%} is {'within' if ok else 'beyond'} {P.WALL_SAVING_TOLERANCE:.0%} points of "
                f"{P.WALL_SAVING:.0%}", f"{what}: without / with util/rank {statistics.fmean(ratios):.2f}x "
                f"({saving:.0%} less; paper {P.WALL_SAVING:.0%} less on a V100)",
                effect=saving, effect_unit="saving", arms=arms, values={"saving": saving, "ratios": ratios,
                                                                        "source": source})


EVALUATORS: dict[str, Callable[[Claim, Context], Verdict]] = {
    "C1": _c1, "C2": _c2, "C3": _c3, "C4": _c4, "C5": _c5, "C6": _c6, "C7": _c7, "C8": _c8, "C9": _c9,
    "C10": _c10, "C11": _c11, "C12": _c12,
}


def evaluate_claims(summary: dict[str, Any], mechanism: dict[str, Any] | None = None,
                    paper_proxies: dict[str, Any] | None = None, bench: dict[str, Any] | None = None) -> list[Verdict]:
    """Judge every claim against a study's summary.

    Args:
        summary: the study's ``summary.json`` (layout in :mod:`specroute.report.summary`), with its
            ``roles``.
        mechanism: C10's oracle-disagreement measurement (:func:`specroute.claims.inputs.claim_inputs`);
            falls back to ``summary["mechanism"]``.
        paper_proxies: C11's paper-profile proxies (:func:`specroute.claims.inputs.paper_proxies`).
        bench: a ``specroute bench`` summary of the same study (:func:`specroute.claims.inputs.bench_timing`),
            C12's controlled step timing; without it C12 reads the study's wall times (CUDA only).
    Returns:
        one :class:`Verdict` per claim, in the order of :data:`CLAIMS`.
    Raises:
        KeyError, TypeError: a summary that lacks the layout's fields — a bug to see, not a verdict.
    """
    x = Context(summary, mechanism, paper_proxies, bench)
    return [EVALUATORS[claim.id](claim, x) for claim in CLAIMS]
