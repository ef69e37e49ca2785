"""The claims registry and its evaluator, on hand-made study summaries with known verdicts."""

from __future__ import annotations

import copy
import re

import pytest

from specroute.claims import (CLAIMS, NOT_CHECKABLE, NOT_REPRODUCED, REPRODUCED, evaluate_claims, find_arms,
                              paper_proxies)
from verify_support import ROOT


def seed_entry(avg: float, best: float, final: float, grad: float, hits: dict, wall: float,
               latent: dict | None = None) -> dict:
    return {"lm": [[10, avg + 0.01], [20, final]], "best_lm": best, "avg_lm": avg, "final_lm": final,
            "threshold_hits": hits, "grad_norm": {"mean": grad, "median": grad},
            "full_fraction": {"train": {"1": 0.5, "3": 0.5}, "eval": {"1": 0.5, "3": 0.5}},
            "flops_proxy": 1.5, "wall_s": wall, "latent": latent}


def arm(gate: str, util: float, rank: float, jepa: float, seeds: dict, proxy: float) -> dict:
    means = {}
    for metric in ("avg_lm", "best_lm", "final_lm", "wall_s"):
        means[metric] = sum(s[metric] for s in seeds.values()) / len(seeds)
    means["grad_norm"] = sum(s["grad_norm"]["mean"] for s in seeds.values()) / len(seeds)
    means["flops_proxy"] = proxy
    means["full_fraction_train"] = 0.5
    lat = [s["latent"] for s in seeds.values() if s["latent"]]
    means["latent_variance"] = sum(x["variance"] for x in lat) / len(lat) if lat else None
    means["latent_effective_rank"] = sum(x["effective_rank"] for x in lat) / len(lat) if lat else None
    std = {k: 0.002 for k in means}
    return {"label": "", "gate": gate, "loss": {"util": util, "rank": rank, "jepa": jepa, "budget": 0.0},
            "seeds": seeds, "mean": means, "std": std}


def paper_like() -> dict:
    """A summary in which every claim holds, with the paper's shape of numbers (3 seeds)."""
    hits_slow, hits_fast = {"3.6": 900, "3.5": 1500}, {"3.6": 700, "3.5": 1200}
    lat_ok = {"variance": 0.2, "effective_rank": 9.0}
    g1u = {str(k): seed_entry(3.60 + d, 3.40 + d, 3.300 + d, 1.03, hits_slow, 10.3e3, None)
           for k, d in enumerate((0.0, 0.01, 0.02))}
    g3u = {str(k): seed_entry(3.55 + d, 3.41 + d, 3.302 + d, 0.10, hits_fast, 10.4e3, lat_ok)
           for k, d in enumerate((0.0, 0.01, 0.02))}
    g1l = {str(k): seed_entry(3.50 + d, 3.30 + d, 3.20 + d, 0.5, hits_fast, 6.3e3, None)
           for k, d in enumerate((0.0, 0.01, 0.02))}
    g3l = {str(k): seed_entry(3.51 + d, 3.31 + d, 3.21 + d, 0.4, {"3.6": 600, "3.5": 1100}, 6.3e3, lat_ok)
           for k, d in enumerate((-0.02, 0.01, 0.02))}
    nojepa = {str(k): seed_entry(3.56, 3.42, 3.31, 0.1, hits_fast, 10e3, {"variance": 0.001, "effective_rank": 1.2})
              for k in range(3)}
    a4 = {w: {str(k): seed_entry(3.55 + d, 3.41 + d, 3.302 + d, 0.1, hits_fast, 10e3, lat_ok)
              for k, d in enumerate((0.0, 0.01, 0.02))} for w in (0.25, 2.0)}
    return {
        "study": "fixture", "profile": "paper", "spec_sha256": "0" * 64, "environment": {"device": "V100"},
        "data": {}, "backbone": {},
        "arms": {
            "mlp_ur": arm("G1", 1.0, 1.0, 0.0, g1u, 1.53), "jepa_gate_ur": arm("G3", 1.0, 1.0, 1.0, g3u, 1.53),
            "mlp_lm": arm("G1", 0.0, 0.0, 0.0, g1l, 1.07), "jepa_gate_lm": arm("G3", 0.0, 0.0, 1.0, g3l, 1.07),
            "no_align": arm("G3", 1.0, 1.0, 0.0, nojepa, 1.53),
            "w025": arm("G3", 1.0, 1.0, 0.25, a4[0.25], 1.53), "w2": arm("G3", 1.0, 1.0, 2.0, a4[2.0], 1.53),
        },
        "comparisons": [], "wall_s": 1.0,
    }


MECHANISM = {"spearman": 0.6, "sign_flips": 0.2, "full_share": 0.5, "tokens": 1000}
PROXIES = {"utilrank": 1.55, "lm": 1.06}


def verdicts(summary, **kw) -> dict[str, dict]:
    return {v["id"]: v for v in evaluate_claims(summary, **kw)}


def test_registry_holds_every_claim_of_claims_md():
    text = (ROOT / "docs" / "CLAIMS.md").read_text()
    ids = [c.id for c in CLAIMS]
    assert ids == [f"C{i}" for i in range(1, 13)]
    assert re.findall(r"^\| (C\d+) \|", text, flags=re.M) == ids
    for c in CLAIMS:
        assert c.statement and c.metric and c.comparison and c.kind in ("empirical", "mechanism", "accounting",
                                                                        "timing")
        assert c.source == "arXiv 2604.17228, docs/CLAIMS.md"


def test_a_paper_like_report_reproduces_every_claim():
    v = verdicts(paper_like(), mechanism=MECHANISM, paper_proxies=PROXIES)
    assert {k: x["verdict"] for k, x in v.items()} == {f"C{i}": REPRODUCED for i in range(1, 13)}
    assert v["C3"]["values"]["ratio"] == pytest.approx(10.3)
    assert v["C12"]["values"]["saving"] == pytest.approx(1 - (6.3 / 10.3 + 6.3 / 10.4) / 2)  # mean over gates


def test_arms_are_found_by_gate_and_loss_not_by_name():
    s = paper_like()
    assert find_arms(s, "G1", True) == ["mlp_ur"]
    assert find_arms(s, "G3", False) == ["jepa_gate_lm"]
    assert find_arms(s, "G3", True, jepa=False) == ["no_align"]


@pytest.mark.parametrize(("claim", "mutate"), [
    ("C1", lambda s: s["arms"]["jepa_gate_ur"]["seeds"]["2"].update(avg_lm=9.0)),
    ("C3", lambda s: s["arms"]["jepa_gate_ur"]["mean"].update(grad_norm=1.0)),
    ("C4", lambda s: [x.update(final_lm=4.0) for x in s["arms"]["jepa_gate_ur"]["seeds"].values()]),
    ("C5", lambda s: s["arms"]["no_align"]["mean"].update(latent_variance=0.2, latent_effective_rank=9.0)),
    ("C6", lambda s: s["arms"]["w2"]["mean"].update(avg_lm=3.9)),
    ("C7", lambda s: s["arms"]["mlp_lm"]["seeds"]["1"].update(best_lm=9.0)),
    ("C8", lambda s: s["arms"]["jepa_gate_lm"]["seeds"]["0"].update(threshold_hits={"3.6": None, "3.5": None})),
    ("C9", lambda s: [x.update(avg_lm=3.0) for x in s["arms"]["jepa_gate_lm"]["seeds"].values()]),
    ("C12", lambda s: s["arms"]["mlp_lm"]["mean"].update(wall_s=10.3e3)),
])
def test_each_claim_can_fail(claim, mutate):
    s = copy.deepcopy(paper_like())
    mutate(s)
    assert verdicts(s, mechanism=MECHANISM, paper_proxies=PROXIES)[claim]["verdict"] == NOT_REPRODUCED


def test_mechanism_and_proxies_can_fail():
    v = verdicts(paper_like(), mechanism={**MECHANISM, "spearman": 0.99, "sign_flips": 0.01},
                 paper_proxies={"utilrank": 2.5, "lm": 1.07})
    assert v["C10"]["verdict"] == NOT_REPRODUCED
    assert v["C11"]["verdict"] == NOT_REPRODUCED


def test_missing_arms_and_measurements_are_not_checkable():
    s = paper_like()
    for name in ("no_align", "w025", "w2", "mlp_lm", "jepa_gate_lm"):
        del s["arms"][name]
    for x in s["arms"]["jepa_gate_ur"]["seeds"].values():
        x["threshold_hits"] = {}
    s["arms"]["mlp_ur"]["seeds"] = {k: {**x, "threshold_hits": {}} for k, x in s["arms"]["mlp_ur"]["seeds"].items()}
    s["profile"] = "smoke"
    v = verdicts(s)
    for cid in ("C2", "C5", "C6", "C7", "C8", "C9", "C10", "C11", "C12"):
        assert v[cid]["verdict"] == NOT_CHECKABLE, (cid, v[cid])
        assert v[cid]["explanation"]
    assert v["C1"]["verdict"] == REPRODUCED


def test_unreached_thresholds_make_speed_claims_not_checkable():
    s = paper_like()
    for a in s["arms"].values():
        for x in a["seeds"].values():
            x["threshold_hits"] = {"3.0": None}
    v = verdicts(s)
    assert v["C2"]["verdict"] == NOT_CHECKABLE
    assert v["C8"]["verdict"] == NOT_CHECKABLE


def test_a_malformed_report_gives_not_checkable_not_a_crash():
    s = paper_like()
    del s["arms"]["mlp_ur"]["seeds"]["0"]["avg_lm"]
    v = verdicts(s)
    assert v["C1"]["verdict"] in (NOT_CHECKABLE, NOT_REPRODUCED)


def test_paper_proxies_of_the_a3_spec():
    p = paper_proxies(ROOT / "specs" / "a3.yaml")
    assert p == pytest.approx({"utilrank": 1.61, "lm": 1.048}, abs=0.01)
