"""Claim regression: recompute the deterministic values and a micro study's verdicts and compare them with
the committed reference (reports/reference/claims_reference.json). Refresh the reference after a
deliberate change with ``specroute verify --regression reports/reference/claims_reference.json
--update-reference`` and review its diff like code."""

from __future__ import annotations

import copy
import json

import pytest

from specroute.spec import load_study
from specroute.train import StudyOptions, run_study
from specroute.verify.regression import collect, compare, fragile
from verify_support import REFERENCE, SPECS

REFERENCE_FILE = REFERENCE / "claims_reference.json"


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def micro_summary(tmp_path_factory):
    """The micro study, run from scratch (its own cache): 7 arms x 3 seeds x 30 steps of a 4 x 32 model."""
    out = tmp_path_factory.mktemp("micro")
    resolved = load_study(REFERENCE / "micro.yaml")
    run_study(resolved, StudyOptions(out=out / "report", cache=out / "cache", overwrite=True))
    return out / "report" / "summary.json"


def test_nothing_regressed(reference, shipped_reports, micro_summary):
    current = collect(SPECS, micro_summary, REFERENCE / "micro.yaml", reports=shipped_reports)
    problems = compare(reference, current)
    for note in fragile(reference, current):  # verdicts another CPU changes: reported, not failed
        print("fragile:", note)
    assert problems == [], "\n".join(problems)


def test_the_committed_micro_summary_still_gives_the_reference_verdicts(reference):
    """The evaluator alone, on the committed summary (no training): catches a change to the evaluator."""
    from specroute.verify.regression import micro_verdicts

    ref = reference["micro"]
    now = micro_verdicts(REFERENCE / "micro" / "summary.json", REFERENCE / "micro.yaml")
    # fragile verdicts also rest on C10's measurement, retrained on this CPU: only the pinned ones are exact
    assert set(now["verdicts"]) == set(ref["verdicts"]) | set(ref["fragile"])
    assert {k: now["verdicts"][k] for k in ref["verdicts"]} == ref["verdicts"]
    assert now["values"] == pytest.approx({k: v["value"] for k, v in ref["values"].items()}, abs=1e-12)


def as_current(reference: dict) -> dict:
    """The reference in the layout :func:`collect` returns (micro values and mechanism as plain numbers)."""
    current = copy.deepcopy(reference)
    micro = current["micro"]
    micro["values"] = {k: v["value"] for k, v in micro["values"].items()}
    micro["mechanism"] = {k: v["value"] for k, v in micro["mechanism"].items()}
    return current


def test_the_regression_bites(reference):
    """A flipped pinned verdict, a drifted micro LM value, a drifted analytic value, a failing check and a
    grown error are all reported; a fragile verdict that flips is not."""
    assert compare(reference, as_current(reference)) == []
    current = as_current(reference)
    cid = next(k for k in current["micro"]["verdicts"] if k != "C12")
    current["micro"]["verdicts"][cid] = "flipped"
    for fragile_id in reference["micro"]["fragile"]:
        current["micro"]["verdicts"][fragile_id] = "flipped too"
    lm_key, lm_ref = next(iter(reference["micro"]["values"].items()))
    current["micro"]["values"][lm_key] = lm_ref["value"] + 2 * lm_ref["atol"]
    key = next(k for k in current["values"] if k.startswith("proxy.paper."))
    current["values"][key]["value"] *= 1.001
    check = next(iter(current["checks"]))
    current["checks"][check] = "fail"
    err = next(k for k in current["values"] if "max" in current["values"][k])
    current["values"][err]["value"] = current["values"][err]["max"] * 10
    problems = compare(reference, current)
    assert len(problems) == 5, problems
    assert any(cid in p for p in problems) and any(key in p for p in problems) and any(lm_key in p for p in problems)
    assert any(check in p for p in problems) and any(err in p for p in problems)
