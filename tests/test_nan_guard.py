"""The NaN guard: a training whose loss, gradient norm or held-out LM stops being finite is stopped and
recorded as a failed run; the study goes on, reports the failure and exits 1; a diverged backbone stops
the study with exit 2; every JSON file the toolkit writes is standard JSON."""

from __future__ import annotations

import copy
import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from helpers import MICRO, SPECS, micro
from specroute.claims import NOT_CHECKABLE, evaluate_claims
from specroute.cli import app
from specroute.report.markdown import render
from specroute.spec.training import TrainSpec
from specroute.store import atomic_write_json, json_text, nonfinite_paths
from specroute.train import StudyOptions, StudyResult, run_study
from specroute.train.device import Device
from specroute.train.stages import ControllerStage
from specroute.train.trainer import Diverged, FixedBatch, MetricsSink, Trainer

#: MICRO, smaller still: a 10-step backbone and 6-step controller runs, three seeds.
NANO = [*MICRO, "backbone.train.steps=10", "backbone.train.eval_every=5", "backbone.train.checkpoint_every=5",
        "train.steps=6", "train.eval_every=3", "train.checkpoint_every=3", "seeds=[0, 1, 2]"]
#: A learning rate that makes every weight ~1e19 after one step: the next step's loss is NaN.
ABSURD = "1e20"
REFERENCE = Path(__file__).resolve().parent.parent / "reports" / "reference" / "micro" / "summary.json"

runner = CliRunner()


def strict_loads(text: str) -> Any:
    """``json.loads`` that refuses the non-standard ``NaN`` / ``Infinity`` / ``-Infinity`` tokens."""
    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache (corpus shards, the NANO backbone) for the module's studies."""
    return tmp_path_factory.mktemp("cache")


def run_cli(*args: str, sets: list[str] = ()):
    return runner.invoke(app, ["run", str(SPECS / "a3.yaml"), "--profile", "smoke",
                               *[x for s in [*NANO, *sets] for x in ("--set", s)], *args])


# --------------------------------------------------------------------------------------------------
# the guard in the loop, on a one-parameter stage


class ScalarStage:
    """A stage with one parameter ``w``: loss (w - 1)^2, made non-finite in the way ``poison`` names from
    step ``at`` (1-based) on: ``loss`` (the total and the ``lm`` term NaN), ``grad`` (a finite loss with a
    NaN gradient), ``inf_term`` (the ``aux`` term +inf), ``eval`` (the held-out LM NaN)."""

    def __init__(self, poison: str, at: int, steps: int = 6):
        self.model = nn.Module()
        self.model.w = nn.Parameter(torch.tensor(3.0))
        self.train = TrainSpec.model_validate({"steps": steps, "eval_every": 2, "checkpoint_every": 1,
                                               "batch_size": 1, "seq_len": 1})
        self.poison, self.at, self.calls = poison, at, 0

    def trainable(self) -> dict[str, nn.Parameter]:
        return {"w": self.model.w}

    def loss(self, idx_BT, targets_BT, generator, step=1):
        self.calls += 1
        w = self.model.w
        lm = (w - 1) ** 2
        aux = torch.zeros(())
        if self.calls >= self.at:
            if self.poison == "loss":
                lm = lm * math.nan
            elif self.poison == "grad":
                lm = lm + torch.sqrt(w - w)  # value 0, gradient inf * 0 = NaN
            elif self.poison == "inf_term":
                aux = torch.tensor(math.inf)
        total = lm + aux
        return total, {"loss": total.item(), "lm": lm.item(), "aux": aux.item()}

    def evaluate(self) -> dict[str, Any]:
        lm = float((self.model.w.detach() - 1) ** 2)
        return {"lm": math.nan if self.poison == "eval" and self.calls >= self.at else lm}


@pytest.mark.parametrize(
    ("poison", "at", "step", "during", "nonfinite", "last_step"),
    [
        ("loss", 3, 3, "train", {"loss": "nan", "lm": "nan", "grad_norm": "nan"}, 2),
        ("grad", 2, 2, "train", {"grad_norm": "nan"}, 1),
        ("inf_term", 4, 4, "train", {"loss": "inf", "aux": "inf"}, 3),
        ("eval", 3, 4, "eval", {"lm": "nan"}, 2),  # evaluations at steps 2, 4, 6; poisoned from step 3
        ("loss", 1, 1, "train", {"loss": "nan", "lm": "nan", "grad_norm": "nan"}, None),  # nothing finite before
    ],
)
def test_the_guard_stops_at_the_first_non_finite_value(tmp_path, poison, at, step, during, nonfinite, last_step):
    stage = ScalarStage(poison, at)
    sink = MetricsSink(tmp_path / "metrics.jsonl")
    trainer = Trainer(stage, FixedBatch(torch.zeros(1, 1), torch.zeros(1, 1)), {"data": 0, "loss": 0},
                      Device("cpu", None), tmp_path / "ckpt", sink, name="G1_lm seed 2")
    with pytest.raises(Diverged) as info:
        trainer.run()
    sink.close()
    e = info.value
    assert (e.run, e.step, e.steps, e.during, e.nonfinite) == ("G1_lm seed 2", step, 6, during, nonfinite)
    assert {name: (v or {}).get("step") for name, v in e.last_finite.items()} == dict.fromkeys(nonfinite, last_step)
    text = str(e)
    assert "G1_lm seed 2: non-finite" in text and f"at step {step} of 6" in text
    assert all(f"{k} {v}" in text for k, v in nonfinite.items())
    assert trainer.step == step  # nothing trained after it
    assert (tmp_path / "ckpt" / "latest").read_text() == f"step_{step - 1:06d}" if step > 1 else True
    lines = [strict_loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    bad = [r for r in lines if r.get("nonfinite")]
    assert len(bad) == 1 and bad[0]["step"] == step and sorted(bad[0]["nonfinite"]) == sorted(nonfinite)
    assert all(bad[0][k] is None for k in nonfinite)


def test_a_finite_training_is_untouched(tmp_path):
    stage = ScalarStage("none", 1)
    trainer = Trainer(stage, FixedBatch(torch.zeros(1, 1), torch.zeros(1, 1)), {"data": 0, "loss": 0},
                      Device("cpu", None))
    history = trainer.run()
    assert len(history["train"]) == 6 and [e["step"] for e in history["eval"]] == [2, 4, 6]


def test_json_text_writes_null_for_non_finite_and_says_where():
    record = {"loss": math.nan, "ok": 1.5, "full_fraction": {"1": math.inf}, "lm": [1.0, -math.inf], "n": None}
    assert strict_loads(json_text(record)) == {"loss": None, "ok": 1.5, "full_fraction": {"1": None},
                                               "lm": [1.0, None], "n": None}
    assert nonfinite_paths(record) == ["loss", "full_fraction.1", "lm.1"]
    assert nonfinite_paths({"a": [1.0, {"b": 2}]}) == []


def test_atomic_write_json_is_standard_json(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"mean": math.nan, "iv": (1.0, math.inf)})
    assert strict_loads((tmp_path / "x.json").read_text()) == {"mean": None, "iv": [1.0, None]}


# --------------------------------------------------------------------------------------------------
# studies: what the user sees (the table of cases), a failed seed among finished ones, resume


@pytest.mark.parametrize(
    ("sets", "args", "code", "words", "absent"),
    [
        # a controller run diverges: the report is written, the study exits 1 naming the run and step
        ([f"train.optimizer.lr_peak={ABSURD}"], ["--arm", "G1_lm", "--seed", "0"], 1,
         ["1 of 1 run failed", "G1_lm seed 0 at step 2 of 6", "loss nan", "train.optimizer.lr_peak"], []),
        # the backbone diverges: nothing to route, exit 2 naming the step, no report
        ([f"backbone.train.optimizer.lr_peak={ABSURD}"], ["--arm", "G1_lm", "--seed", "0"], 2,
         ["backbone: non-finite training loss", "at step 2 of 10", "The study stops",
          "backbone.train.optimizer.lr_peak"], ["report.md", "summary.json"]),
    ],
    ids=["controller-diverges", "backbone-diverges"],
)
def test_a_diverged_training_is_a_message_not_a_traceback(tmp_path, cache, sets, args, code, words, absent):
    out = tmp_path / "out"
    r = run_cli("--out", str(out), "--cache-dir", str(cache), *args, sets=sets)
    assert r.exit_code == code, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    message = " ".join(r.output.split())
    for w in words:
        assert w in message, (w, r.output)
    assert "Traceback" not in r.output
    for name in absent:
        assert not (out / name).exists()
    if code == 1:
        summary = strict_loads((out / "summary.json").read_text())
        assert summary["arms"] == {} and list(summary["failed"]["G1_lm"]) == ["0"]
        assert "## Failed runs" in (out / "report.md").read_text()


def _nan_for_seed(seed: int, from_call: int):
    """A ControllerStage.loss that turns NaN for the run of ``seed`` from its ``from_call``-th step on."""
    original = ControllerStage.loss
    calls: dict[int, int] = {}

    def loss(self, idx_BT, targets_BT, generator, step=1):
        total, record = original(self, idx_BT, targets_BT, generator, step)
        calls[self.spec.seed] = calls.get(self.spec.seed, 0) + 1
        if self.spec.seed == seed and calls[seed] >= from_call:
            total = total * math.nan
            record = {**record, "loss": math.nan, "lm": math.nan}
        return total, record

    return loss


def test_a_failed_seed_leaves_the_others_and_resume_keeps_it(tmp_path, cache, monkeypatch):
    resolved = micro(*NANO[len(MICRO):])
    out = tmp_path / "out"
    opts = dict(out=out, arms=["G1_lm"], device="cpu", cache=cache, workers=1)
    with monkeypatch.context() as m:
        m.setattr(ControllerStage, "loss", _nan_for_seed(1, 4))
        result = run_study(resolved, StudyOptions(**opts))
    summary = result.summary
    arm = summary["arms"]["G1_lm"]
    assert list(arm["seeds"]) == ["0", "2"] and arm["n"] == 2 and arm["failed_seeds"] == ["1"]
    assert arm["mean"]["avg_lm"] == statistics.fmean(arm["seeds"][s]["avg_lm"] for s in ("0", "2"))
    failure = summary["failed"]["G1_lm"]["1"]
    assert failure["status"] == "failed" and failure["failure"]["step"] == 4
    assert failure["failure"]["nonfinite"] == {"loss": "nan", "lm": "nan", "grad_norm": "nan"}
    assert failure["failure"]["last_finite"]["lm"]["step"] == 3
    assert [(a, s) for a, s, _ in result.failed] == [("G1_lm", "1")]
    assert "1 of 3 runs failed" in result.failure_message()
    seed1 = out / "runs" / "G1_lm" / "seed1"
    assert strict_loads((seed1 / "result.json").read_text())["status"] == "failed"
    assert not (seed1 / "controller.safetensors").exists()
    assert strict_loads((seed1 / "metrics.jsonl").read_text().splitlines()[-1])["event"] == "failed"
    report = (out / "report.md").read_text()
    assert "## Failed runs" in report and "| G1_lm | 1 | 4 of 6 (training step) |" in report
    assert "(n=2)" in report and "**1 failed run**" in report
    # --resume (without the poison) keeps the failed run as it is and reports it again
    before = {p.name: p.read_bytes() for p in seed1.iterdir() if p.is_file()}
    again = run_study(resolved, StudyOptions(**opts, resume=True))
    assert {p.name: p.read_bytes() for p in seed1.iterdir() if p.is_file()} == before
    assert again.summary["failed"] == summary["failed"] and list(again.summary["arms"]["G1_lm"]["seeds"]) == ["0", "2"]


def test_every_json_file_of_a_failed_study_is_standard_json_workers_included(tmp_path, cache):
    """Two runs in two worker processes, one of them diverging: the other finishes, the study exits 1, and
    every JSON / JSONL file written (output folder and cache) parses with a strict parser."""
    out = tmp_path / "out"
    r = run_cli("--out", str(out), "--cache-dir", str(cache), "--arm", "G1_lm", "--arm", "G3_lm", "--seed", "0",
                "--workers", "2", sets=[f"arms.G1_lm.overrides.train.optimizer.lr_peak={ABSURD}"])
    assert r.exit_code == 1, r.output
    assert "1 of 2 runs failed" in " ".join(r.output.split())
    summary = strict_loads((out / "summary.json").read_text())
    assert list(summary["arms"]) == ["G3_lm"] and list(summary["failed"]) == ["G1_lm"]
    assert summary["arms"]["G3_lm"]["seeds"]["0"]["concurrent_runs"] == 2
    files = [p for root in (out, cache) for p in root.rglob("*") if p.suffix in (".json", ".jsonl")]
    assert {p.name for p in files} >= {"summary.json", "study.json", "result.json", "metrics.jsonl", "info.json"}
    for p in files:
        text = p.read_text()
        for part in (text.splitlines() if p.suffix == ".jsonl" else [text]):
            strict_loads(part)
    failed_log = (out / "runs" / "G1_lm" / "seed0" / "metrics.jsonl").read_text()
    assert "NaN" not in failed_log and '"nonfinite"' in failed_log


# --------------------------------------------------------------------------------------------------
# claims and report on summaries with failed seeds (the committed micro study's summary, seeds removed)


def _fail(summary: dict[str, Any], arm: str, *seeds: str) -> dict[str, Any]:
    """``summary`` with ``seeds`` of ``arm`` moved to ``failed`` (the arm removed when none is left)."""
    s = copy.deepcopy(summary)
    entry = s["arms"][arm]
    record = {"status": "failed", "wall_s": 1.0, "concurrent_runs": 1, "failure": {
        "run": arm, "step": 2, "steps": 6, "during": "train", "lr": 2e19, "nonfinite": {"loss": "nan"},
        "last_finite": {"loss": {"step": 1, "value": 5.4}}, "message": "diverged"}}
    for seed in seeds:
        del entry["seeds"][seed]
        s.setdefault("failed", {}).setdefault(arm, {})[seed] = record
    entry["failed_seeds"] = sorted(s["failed"][arm])
    if not entry["seeds"]:
        del s["arms"][arm]
    return s


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return json.loads(REFERENCE.read_text())


def verdicts(summary: dict[str, Any]) -> dict[str, Any]:
    return {v.id: v for v in evaluate_claims(summary)}


def test_claims_on_fewer_seeds_are_not_checkable(reference):
    base = verdicts(reference)
    got = verdicts(_fail(reference, "G1_utilrank", "1"))
    for cid in ("C1", "C4", "C9"):  # each compares G1_utilrank seed by seed
        assert got[cid].verdict == NOT_CHECKABLE and "n=2 < 3 seeds" in got[cid].reason, (cid, got[cid])
    assert got["C7"].n == 2  # its G3 part still decides it (one part not reproduced refutes a claim)
    assert got["C5"] == base["C5"] and got["C6"] == base["C6"]  # arms without a failure keep their verdict


def test_an_arm_whose_every_seed_failed_says_so(reference):
    got = verdicts(_fail(reference, "G3_utilrank", "0", "1", "2"))
    for cid in ("C1", "C3", "C4", "C5", "C7", "C9"):
        assert got[cid].verdict == NOT_CHECKABLE, cid
        assert "every seed of arm 'G3_utilrank' failed" in got[cid].reason, (cid, got[cid].reason)
    assert "G3_utilrank" not in _fail(reference, "G3_utilrank", "0", "1", "2")["arms"]


def test_claims_and_report_cope_with_arms_that_share_no_seed(reference):
    s = _fail(_fail(reference, "G3_jepa0.25", "1", "2"), "G3_jepa2", "0")
    s = _fail(_fail(s, "G3_nojepa", "0", "1"), "G3_utilrank", "2")
    got = verdicts(s)
    assert got["C6"].verdict == NOT_CHECKABLE and got["C5"].verdict == NOT_CHECKABLE
    text = render(s, {})
    assert "| G3_jepa2 | 0 | 2 of 6 (training step) |" in text
    assert "## Failed runs" in text and "**6 failed runs**" in text


def test_the_report_of_a_study_whose_every_run_failed(reference):
    s = reference
    for arm in list(reference["arms"]):
        s = _fail(s, arm, "0", "1", "2")
    assert s["arms"] == {}
    assert all(v.verdict == NOT_CHECKABLE for v in evaluate_claims(s) if v.id not in ("C10", "C11"))
    text = render(s, {})
    assert "**21 failed runs**" in text and "No run finished." in text
    assert text.count("(training step)") == 21


def test_the_study_message_counts_the_failed_runs_and_groups_an_arms_seeds(reference):
    result = StudyResult(Path("out"), _fail(_fail(reference, "G1_lm", "0", "2"), "G3_lm", "1"))
    assert [(f.arm, f.seed) for f in result.failed] == [("G1_lm", "0"), ("G1_lm", "2"), ("G3_lm", "1")]
    message = result.failure_message()
    assert message.startswith("3 of 21 runs failed (non-finite values): G1_lm seeds 0, 2 at step 2 of 6 (loss nan); "
                              "G3_lm seed 1 at step 2 of 6 (loss nan). The report (out/report.md)")
    assert StudyResult(Path("out"), reference).failure_message() is None


def test_json_on_stdout_is_standard_json():
    r = runner.invoke(app, ["validate", str(SPECS / "a3.yaml"), "--profile", "smoke", "--json"])
    assert r.exit_code == 0, r.output
    assert set(strict_loads(r.stdout)["arms"]) == {"G1_utilrank", "G3_utilrank", "G1_lm", "G3_lm"}
