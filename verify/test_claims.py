"""The claims registry and its evaluator, on hand-built study summaries (no training) whose verdicts are known.

Every summary here has the layout of specroute.report.summary: per seed the LM metrics and their values per
held-out batch (``lm_by_batch``), per arm the means, and the study's declared ``roles``.
"""

from __future__ import annotations

import copy
import math
import re

import pytest

from specroute.claims import (CLAIMS, INCONCLUSIVE, NECESSARY, NOT_CHECKABLE, NOT_REPRODUCED, REPRODUCED, VERDICTS,
                              evaluate_claims, paired, paper_proxies)
from specroute.claims import paper as P
from specroute.claims.stats import sign_test, t_interval
from verify_support import ROOT

SEEDS = ("0", "1", "2")
#: Per-batch offsets of the held-out batches (shared by every run: the same fixed batches).
BATCHES = (-0.02, 0.0, 0.01, 0.03)


#: Patterns of per-batch deviations; runs with different phases have noisy paired differences.
PATTERNS = ((1, -1, -1, 1), (-1, -1, 1, 1), (-1, 1, 1, -1), (1, 1, -1, -1))


def seed_entry(avg: float, best: float | None = None, final: float | None = None, grad: float = 1.0,
               hits: dict | None = None, latent: dict | None = None, jitter: float = 0.0005, phase: int = 0) -> dict:
    """One run: LM metrics (nats) with per-batch values deviating from the shared batch offsets by
    ``jitter`` in the pattern ``phase``."""
    best = avg - 0.2 if best is None else best
    final = avg - 0.3 if final is None else final
    signs = PATTERNS[phase % 4]

    def per_batch(x: float) -> list[float]:
        return [x + b + s * jitter for b, s in zip(BATCHES, signs)]

    return {"lm": [[10, avg + 0.01], [20, final]], "best_lm": best, "avg_lm": avg, "final_lm": final,
            "threshold_hits": hits or {}, "grad_norm": {"mean": grad, "median": grad},
            "full_fraction": {"train": {"1": 0.5}, "eval": {"1": 0.5}}, "flops_proxy": 1.5, "wall_s": 100.0,
            "concurrent_runs": 1,
            "latent": latent, "lm_by_batch": {m: per_batch(v) for m, v in
                                              (("avg_lm", avg), ("best_lm", best), ("final_lm", final))}}


def arm(gate: str, util: float, jepa: float, seeds: dict, proxy: float = 1.5, labeling: str = "off_policy") -> dict:
    def mean(read):
        vals = [read(s) for s in seeds.values()]
        return sum(vals) / len(vals) if None not in vals else None

    means = {m: mean(lambda s, m=m: s[m]) for m in ("avg_lm", "best_lm", "final_lm", "wall_s")}
    means.update(grad_norm=mean(lambda s: s["grad_norm"]["mean"]), flops_proxy=proxy, full_fraction_train=0.5)
    return {"label": "", "gate": gate, "loss": {"util": util, "rank": util, "jepa": jepa, "budget": 0.0},
            "labeling": labeling, "steps": 2000, "seeds": seeds, "mean": means, "std": {k: 0.0 for k in means}}


def runs(avgs, **kw) -> dict:
    return {s: seed_entry(a, **kw) for s, a in zip(SEEDS, avgs)}


def shift(arm_seeds: dict, offsets, **kw) -> dict:
    """Runs whose avg_lm is ``arm_seeds``' plus ``offsets`` per seed (other metrics follow)."""
    return {k: seed_entry(x["avg_lm"] + d, **kw) for (k, x), d in zip(arm_seeds.items(), offsets)}


def paper_like() -> dict:
    """A summary in which every claim holds, with the paper's shape of numbers (3 seeds)."""
    slow, fast = {"3.6": 900, "3.5": 1500}, {"3.6": 700, "3.5": 1200}
    ok = {"variance": 0.2, "effective_rank": 9.0}
    g1u = {s: seed_entry(3.60 + d, final=3.300 + d, grad=1.03, hits=slow) for s, d in zip(SEEDS, (0, .01, .02))}
    g3u = {s: seed_entry(3.55 + d, final=3.301 + d, grad=0.10, hits=fast, latent=ok)
           for s, d in zip(SEEDS, (0, .01, .02))}
    g1l = {s: seed_entry(3.50 + d, grad=0.5, hits=fast) for s, d in zip(SEEDS, (0, .01, .02))}
    g3l = {s: seed_entry(3.51 + d, grad=0.4, hits={"3.6": 600, "3.5": 1100}, latent=ok)
           for s, d in zip(SEEDS, (-.02, .01, .02))}
    nojepa = runs((3.56,) * 3, latent={"variance": 0.001, "effective_rank": 1.2})
    onpolicy = {s: seed_entry(3.50 + d + e, phase=1) for s, d, e in zip(SEEDS, (0, .01, .02), (1e-4, -2e-3, 1.5e-3))}
    a4 = {w: {s: seed_entry(3.55 + d, final=3.301 + d, latent=ok) for s, d in zip(SEEDS, (0, .01, .02))}
          for w in (0.25, 2.0)}
    for s in SEEDS:
        for entry in (g1l, g3l, g1u, g3u):
            entry[s]["wall_s"] = 6.3e3 if entry in (g1l, g3l) else 10.3e3
    return {
        "study": "fixture", "profile": "paper", "environment": {"device": "V100"},
        "arms": {
            "mlp_ur": arm("G1", 1.0, 0.0, g1u, 1.53), "jepa_gate_ur": arm("G3", 1.0, 1.0, g3u, 1.53),
            "mlp_lm": arm("G1", 0.0, 0.0, g1l, 1.07), "jepa_gate_lm": arm("G3", 0.0, 1.0, g3l, 1.07),
            "no_align": arm("G3", 1.0, 0.0, nojepa), "mlp_onpolicy": arm("G1", 1.0, 0.0, onpolicy, labeling="on_policy"),
            "w025": arm("G3", 1.0, 0.25, a4[0.25]), "w2": arm("G3", 1.0, 2.0, a4[2.0]),
        },
        "roles": {"g1_utilrank": "mlp_ur", "g3_utilrank": "jepa_gate_ur", "g1_lm": "mlp_lm", "g3_lm": "jepa_gate_lm",
                  "g3_unaligned": "no_align", "g1_onpolicy": "mlp_onpolicy",
                  "jepa_sweep": ["w025", "jepa_gate_ur", "w2"]},
        "equivalence_margin_nats": 0.005, "comparisons": [], "wall_s": 1.0,
    }


MECHANISM = {"spearman": 0.6, "sign_flips": 0.2, "full_share": 0.5, "tokens": 1000}
_READ = {"utilrank": 1.55, "lm": 1.06}
PROXIES = {"readings": {e: {d: dict(_READ) for d in ("forward_only", "controller_only", "full_training")}
                        for e in ("masked", "gather")}, "execution": "gather", "denominator": "controller_only",
           "why": "fixture"}


def verdicts(summary, **kw) -> dict:
    return {v.id: v for v in evaluate_claims(summary, **kw)}


def verdict_map(summary, **kw) -> dict[str, str]:
    return {k: v.verdict for k, v in verdicts(summary, **kw).items()}


# -- the registry and the statistics ---------------------------------------------------------------

def test_registry_holds_every_claim_of_claims_md_and_its_criterion():
    text = (ROOT / "docs" / "CLAIMS.md").read_text()
    ids = [c.id for c in CLAIMS]
    assert ids == [f"C{i}" for i in range(1, 13)]
    assert re.findall(r"^\| (C\d+) \|", text, flags=re.M)[:12] == ids
    judged = text[text.index("## How each claim is judged"):]
    for c in CLAIMS:
        assert c.statement and c.metric and c.criterion and c.roles
        assert f"| {c.id} |" in judged, f"docs/CLAIMS.md states no criterion for {c.id}"


def test_t_interval_and_sign_test_values():
    lo, hi = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.3027
    assert (lo, hi) == pytest.approx((2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)), rel=1e-6)
    assert t_interval([1.0]) is None
    assert sign_test(3, 0) == pytest.approx(0.25) and sign_test(5, 0) == pytest.approx(0.0625)
    assert sign_test(2, 1) == pytest.approx(1.0) and sign_test(0, 0) == 1.0


def test_a_paired_difference_inside_the_batch_noise_is_a_tie():
    s = paper_like()
    # 0.0002 nats apart; the per-batch differences scatter by ~0.001: a tie on every seed.
    s["arms"]["jepa_gate_ur"]["seeds"] = runs((3.5998, 3.6098, 3.6198), jitter=0.0)
    s["arms"]["mlp_ur"]["seeds"] = runs((3.60, 3.61, 3.62), jitter=0.0005)
    p = paired(s, "jepa_gate_ur", "mlp_ur", "avg_lm")
    assert (p.wins, p.ties, p.losses) == (0, 3, 0)
    assert all(x.noise > abs(x.diff) for x in p.seeds)


# -- a paper-like report reproduces; each claim can fail ------------------------------------------

def test_a_paper_like_report_reproduces_every_claim():
    v = verdicts(paper_like(), mechanism=MECHANISM, paper_proxies=PROXIES)
    assert {k: x.verdict for k, x in v.items()} == {f"C{i}": REPRODUCED for i in range(1, 13)}, \
        {k: x.reason for k, x in v.items() if x.verdict != REPRODUCED}
    assert v["C3"].effect == pytest.approx(10.3, rel=1e-3)
    assert re.fullmatch(r"10\.3\d*x \[\d+\.?\d*x, \d+\.?\d*x\]", v["C3"].effect_text), v["C3"].effect_text
    assert v["C1"].effect_text.startswith("-") and " nats [" in v["C1"].effect_text
    assert v["C1"].n == 3 and v["C1"].interval[1] < 0 and v["C1"].p_value == pytest.approx(0.25)
    assert v["C12"].values["saving"] == pytest.approx(1 - 6.3 / 10.3)
    for x in v.values():
        assert x.criterion and x.reason and x.verdict in VERDICTS


@pytest.mark.parametrize(("claim", "mutate"), [
    ("C1", lambda s: s["arms"]["jepa_gate_ur"]["seeds"]["2"].update(seed_entry(9.0))),
    ("C3", lambda s: [x["grad_norm"].update(mean=1.0) for x in s["arms"]["jepa_gate_ur"]["seeds"].values()]),
    ("C4", lambda s: [x.update(seed_entry(x["avg_lm"], final=4.0)) for x in s["arms"]["jepa_gate_ur"]["seeds"].values()]),
    ("C5", lambda s: [x.update(latent={"variance": 0.2, "effective_rank": 9.0})
                      for x in s["arms"]["no_align"]["seeds"].values()]),
    ("C6", lambda s: [x.update(seed_entry(x["avg_lm"] + 0.3)) for x in s["arms"]["w2"]["seeds"].values()]),
    ("C7", lambda s: s["arms"]["mlp_lm"]["seeds"]["1"].update(seed_entry(9.0))),
    ("C8", lambda s: s["arms"]["jepa_gate_lm"]["seeds"]["0"].update(threshold_hits={"3.6": None, "3.5": None})),
    ("C9", lambda s: [x.update(seed_entry(x["avg_lm"] - 0.5)) for x in s["arms"]["jepa_gate_lm"]["seeds"].values()]),
    ("C10", lambda s: [x.update(seed_entry(x["avg_lm"] + 0.2)) for x in s["arms"]["mlp_onpolicy"]["seeds"].values()]),
    ("C12", lambda s: s["arms"]["mlp_lm"]["mean"].update(wall_s=10.3e3)),
])
def test_each_claim_can_fail(claim, mutate):
    s = copy.deepcopy(paper_like())
    mutate(s)
    assert verdicts(s, mechanism=MECHANISM, paper_proxies=PROXIES)[claim].verdict == NOT_REPRODUCED


def test_proxies_under_the_studys_own_execution():
    v = verdicts(paper_like(), paper_proxies={**PROXIES, "readings": {
        **PROXIES["readings"], "gather": {d: {"utilrank": 1.5, "lm": 0.94} for d in PROXIES["readings"]["gather"]}}})
    assert v["C11"].verdict == NOT_REPRODUCED and "gather/controller_only" in v["C11"].reason
    readings = v["C11"].numbers.split("All readings")[1].split("This report")[0]
    assert readings.count("x /") == 6  # all six printed


# -- the failures of the old evaluator, each with a test that bites ---------------------------------

def test_one_seed_is_not_checkable():
    s = paper_like()
    for a in s["arms"].values():
        a["seeds"] = {"0": a["seeds"]["0"]}
    v = verdicts(s, mechanism=MECHANISM, paper_proxies=PROXIES)
    for cid in ("C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9", "C10"):
        assert v[cid].verdict == NOT_CHECKABLE and "n=1 < 3 seeds" in v[cid].reason, (cid, v[cid].reason)


def test_a_variance_only_change_is_not_collapse():
    s = paper_like()
    for x in s["arms"]["no_align"]["seeds"].values():
        x["latent"] = {"variance": 0.0001, "effective_rank": 8.5}  # variance 2000x smaller, rank intact
    assert verdicts(s)["C5"].verdict == NOT_REPRODUCED


def test_a_noise_level_difference_is_a_tie_not_a_win():
    s = paper_like()
    s["arms"]["mlp_ur"]["seeds"] = {k: seed_entry(x["avg_lm"] + 1e-4, jitter=0.002)
                                    for k, x in s["arms"]["jepa_gate_ur"]["seeds"].items()}
    v = verdicts(s)["C1"]
    assert v.verdict != REPRODUCED and v.values["paired"]["ties"] == 3


def test_arms_reordered_or_an_extra_g1_utilrank_arm_give_the_same_verdicts():
    base = verdict_map(paper_like(), mechanism=MECHANISM, paper_proxies=PROXIES)
    s = paper_like()
    s["arms"] = dict(reversed(list(s["arms"].items())))
    assert verdict_map(s, mechanism=MECHANISM, paper_proxies=PROXIES) == base
    s = paper_like()
    s["arms"] = {"G1_onpolicy_first": arm("G1", 1.0, 0.0, runs((3.0, 3.0, 3.0)), labeling="on_policy"), **s["arms"]}
    assert verdict_map(s, mechanism=MECHANISM, paper_proxies=PROXIES) == base


def test_c9_at_two_of_three_with_an_interval_below_zero_is_not_disappears():
    s = paper_like()
    g1l = s["arms"]["mlp_lm"]["seeds"]
    # G3 ahead by 0.020 / 0.021 (tight: wins) and 0.015 (noisy batches: a tie) without util/rank.
    s["arms"]["jepa_gate_lm"]["seeds"] = {k: seed_entry(g1l[k]["avg_lm"] + d, jitter=j) for k, d, j in
                                          zip(SEEDS, (-0.020, -0.021, -0.015), (0.0005, 0.0005, 0.02))}
    p = paired(s, "jepa_gate_lm", "mlp_lm", "avg_lm")
    assert (p.wins, p.ties) == (2, 1) and p.interval[1] < 0
    v = verdicts(s)["C9"]
    assert v.verdict == NOT_REPRODUCED and "remains" in v.reason
    # the same 2/3 with the third seed clearly behind: the interval includes 0, the advantage is gone
    s["arms"]["jepa_gate_lm"]["seeds"]["2"] = seed_entry(g1l["2"]["avg_lm"] + 0.03)
    assert paired(s, "jepa_gate_lm", "mlp_lm", "avg_lm").interval[1] > 0
    assert verdicts(s)["C9"].verdict == REPRODUCED


def test_c6_with_large_seed_noise_is_not_insensitive():
    s = paper_like()
    for name, offsets in (("w025", (-0.05, 0.05, 0.0)), ("w2", (0.08, -0.04, 0.02))):
        s["arms"][name]["seeds"] = {k: seed_entry(x["avg_lm"] + d) for (k, x), d in
                                    zip(s["arms"]["jepa_gate_ur"]["seeds"].items(), offsets)}
    assert verdicts(s)["C6"].verdict == INCONCLUSIVE
    for x in s["arms"]["w2"]["seeds"].values():
        x.update(seed_entry(x["avg_lm"] + 0.3))
    assert verdicts(s)["C6"].verdict == NOT_REPRODUCED


def test_c10_without_on_policy_arms_is_only_a_necessary_condition():
    s = paper_like()
    del s["roles"]["g1_onpolicy"]
    v = verdicts(s, mechanism=MECHANISM)["C10"]
    assert v.verdict == NECESSARY
    assert verdicts(s, mechanism={**MECHANISM, "spearman": 0.99, "sign_flips": 0.01})["C10"].verdict == NOT_REPRODUCED
    assert verdicts(s)["C10"].verdict == NOT_CHECKABLE


def test_smoke_scale_noise_gives_inconclusive_not_refuted():
    """Differences that are ties within noise, with intervals wider than the margin: the data cannot tell."""
    s = paper_like()
    base = runs((3.60, 3.63, 3.57))
    for phase, (name, d) in enumerate((("mlp_ur", (0, 0, 0)), ("jepa_gate_ur", (-0.004, -0.008, 0.003)),
                                       ("mlp_lm", (-0.012, 0.008, -0.004)), ("jepa_gate_lm", (0.001, 0.002, -0.01)))):
        s["arms"][name]["seeds"] = shift(base, d, jitter=0.02, phase=phase)
    v = verdicts(s)
    assert v["C1"].verdict == INCONCLUSIVE and v["C7"].verdict == INCONCLUSIVE, {k: x.reason for k, x in v.items()}
    assert v["C1"].values["paired"]["ties"] == 3


def test_wall_time_of_runs_sharing_the_machine_is_not_checkable():
    s = paper_like()
    s["arms"]["mlp_lm"]["seeds"]["1"]["concurrent_runs"] = 2
    assert "runs at once" in verdicts(s)["C12"].reason and verdicts(s)["C12"].verdict == NOT_CHECKABLE


def test_undeclared_roles_are_not_checkable_never_guessed():
    s = paper_like()
    s["roles"] = {}
    v = verdicts(s, mechanism=MECHANISM, paper_proxies=PROXIES)
    for cid in ("C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9", "C12"):
        assert v[cid].verdict == NOT_CHECKABLE and "not declared" in v[cid].reason, cid
    assert v["C10"].verdict == NECESSARY  # the label measurement needs no role


def test_a_report_without_per_batch_noise_cannot_tell_a_tie_from_a_win():
    s = paper_like()
    for a in s["arms"].values():
        for x in a["seeds"].values():
            x.pop("lm_by_batch")
    v = verdicts(s)["C1"]
    assert v.verdict == NOT_CHECKABLE and "per-batch" in v.reason


def test_unreached_thresholds_make_speed_claims_not_checkable():
    s = paper_like()
    for a in s["arms"].values():
        for x in a["seeds"].values():
            x["threshold_hits"] = {"3.0": None}
    v = verdicts(s)
    assert v["C2"].verdict == NOT_CHECKABLE and v["C8"].verdict == NOT_CHECKABLE


def test_a_malformed_report_raises_instead_of_a_verdict():
    s = paper_like()
    del s["arms"]["mlp_ur"]["seeds"]["0"]["avg_lm"]
    with pytest.raises(KeyError):
        evaluate_claims(s)


def test_paper_proxies_of_the_a3_spec_name_the_reading_it_runs():
    p = paper_proxies(ROOT / "specs" / "a3.yaml")
    assert (p["execution"], p["denominator"]) == ("gather", "controller_only")
    assert p["readings"]["masked"]["controller_only"] == pytest.approx({"utilrank": 1.61, "lm": 1.048}, abs=0.01)
    assert set(p["readings"]) == {"masked", "gather"} and all(len(d) == 3 for d in p["readings"].values())
    assert P.PROXY == {"utilrank": 1.53, "lm": 1.07}
