"""Each loss term's gradient norm on the controller (``train.loss_grad_norm_every``): the per-term gradients
add up to the step's, logging them changes no metric, and a study that asks for them gets them in
metrics.jsonl, summary.json, report.md and plots/loss_grad_norms.png."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from helpers import G3, MICRO, SPECS, tiny_spec, tokens
from specroute.cli import app
from specroute.losses import LOSS_TERMS, compute_losses
from specroute.report.markdown import render
from specroute.report.plots import PLOTS, write_plots
from specroute.train.device import Device
from specroute.train.stages import ControllerStage, seeded_model, trainable_params
from specroute.train.step import term_grad, term_grad_norms
from specroute.train.trainer import FixedBatch, Trainer

CPU = Device("cpu", None)

#: Recipes that between them weight every term: G3 with util, rank and JEPA (top-k); G1 with util and the
#: budget loss (threshold routing); each under both estimators.
RECIPES = {
    "G3_utilrank_jepa": {**G3, "loss": {"util": 0.7, "rank": 1.3, "jepa": 0.5}},
    "G1_threshold_budget": {"routing": {"budget": {"enforcement": "threshold"}}, "loss": {"util": 1.0, "budget": 2.0}},
}


def _spec(recipe: str, estimator: str, every: int | None = None):
    update = {**RECIPES[recipe], "routing": {**RECIPES[recipe].get("routing", {}), "estimator": estimator}}
    return tiny_spec({**update, "train": {"seq_len": 16, "batch_size": 2, "loss_grad_norm_every": every}})


@pytest.mark.parametrize("estimator", ["score_scaling", "straight_through"])
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_per_term_gradients_sum_to_the_total_gradient(recipe, estimator):
    spec = _spec(recipe, estimator)
    model = seeded_model(spec, 0)
    params = list(trainable_params(model).values())
    idx = tokens(2, 16, seed=1)
    terms = compute_losses(model, idx, idx.roll(-1, 1), spec, torch.Generator().manual_seed(0))
    w = spec.loss
    assert list(terms.weighted) == [t for t in LOSS_TERMS if getattr(w, t) > 0]
    torch.testing.assert_close(sum(terms.weighted.values()), terms.total)
    for t, v in terms.weighted.items():  # weighted as the term enters the total
        torch.testing.assert_close(v, getattr(w, t) * torch.tensor(terms.parts[t]))
    per_term = {t: term_grad(v, params) for t, v in terms.weighted.items()}
    norms = term_grad_norms(terms.weighted, {"all": params})["all"]
    assert all(p.grad is None for p in params)  # measuring leaves .grad alone
    terms.total.backward()
    for i, p in enumerate(params):
        torch.testing.assert_close(sum(g[i] for g in per_term.values()), p.grad)
    assert all(norms[t] > 0 for t in terms.weighted)  # every term reaches the controller: no silent zero


def test_term_grad_norms_are_the_norms_of_each_terms_gradient_per_group():
    spec = _spec("G3_utilrank_jepa", "score_scaling")
    model = seeded_model(spec, 0)
    idx = tokens(2, 16, seed=2)
    terms = compute_losses(model, idx, idx.roll(-1, 1), spec, torch.Generator().manual_seed(0))
    stage = ControllerStage(spec, model, CPU)
    groups = stage.trained_groups()
    assert list(groups) == ["gate", "cheap_ffn"]
    norms = term_grad_norms(terms.weighted, groups)
    expect = {(g, t): torch.linalg.vector_norm(torch.cat([x.flatten() for x in term_grad(v, ps)])).item()
              for g, ps in groups.items() for t, v in terms.weighted.items()}
    terms.total.backward()
    for group, params in groups.items():
        assert list(norms[group]) == [*terms.weighted, "total"]
        for t in terms.weighted:
            assert norms[group][t] == pytest.approx(expect[group, t], rel=1e-5)
        total = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params]))
        assert norms[group]["total"] == pytest.approx(total.item(), rel=1e-5)
    assert norms["gate"]["lm"] > 0 and norms["cheap_ffn"]["lm"] > 0


def _train(spec, steps: int = 5):
    model = seeded_model(spec, 0)
    idx = tokens(2, 16, seed=3)
    trainer = Trainer(ControllerStage(spec, model, CPU), FixedBatch(idx, idx.roll(-1, 1)),
                      {"data": 1, "loss": 2}, CPU)
    for _ in range(steps):
        trainer.advance()
    return trainer.history["train"], {k: p.detach().clone() for k, p in trainer.params.items()}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_logging_them_changes_no_metric_and_the_default_logs_none(recipe):
    assert tiny_spec().train.loss_grad_norm_every is None
    off, w_off = _train(_spec(recipe, "score_scaling"))
    on, w_on = _train(_spec(recipe, "score_scaling", every=2))
    assert all("loss_grad_norm" not in r for r in off)
    assert [r["step"] for r in on if "loss_grad_norm" in r] == [2, 4]  # every 2nd step
    assert [{k: v for k, v in r.items() if k != "loss_grad_norm"} for r in on] == off  # bit-identical
    for k in w_off:
        assert torch.equal(w_off[k], w_on[k])
    logged = on[1]["loss_grad_norm"]
    terms = [t for t in LOSS_TERMS if t in on[1]]
    assert set(logged) == {"gate", "cheap_ffn"} and list(logged["gate"]) == [*terms, "total"]
    assert all(math.isfinite(v) and v >= 0 for g in logged.values() for v in g.values())


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two arms of the estimator study, one seed, on the micro profile (the study logs every 4th step;
    here every 3rd)."""
    tmp = tmp_path_factory.mktemp("a6")
    args = ["run", str(SPECS / "a6_estimator.yaml"), "--profile", "smoke", *[x for s in MICRO for x in ("--set", s)],
            "--set", "train.loss_grad_norm_every=3", "--arm", "G1_lm_st", "--arm", "G3_utilrank", "--seed", "0",
            "--seed", "1", "--out", str(tmp / "out"), "--cache-dir", str(tmp / "cache"), "--workers", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return tmp / "out"


def test_the_study_writes_them_to_metrics_summary_report_and_plot(study):
    out = study
    lines = [json.loads(l) for l in (out / "runs" / "G3_utilrank" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    train = [l for l in lines if l["event"] == "train"]
    logged = [l for l in train if "loss_grad_norm" in l]
    assert [l["step"] for l in logged] == [3, 6, 9, 12]
    assert list(logged[0]["loss_grad_norm"]["gate"]) == ["lm", "util", "rank", "jepa", "total"]
    s = json.loads((out / "summary.json").read_text())
    seed = s["arms"]["G3_utilrank"]["seeds"]["0"]["loss_grad_norm"]
    expect = sum(l["loss_grad_norm"]["gate"]["rank"] for l in logged) / len(logged)
    assert seed["gate"]["rank"] == pytest.approx(expect)  # the seed's: mean over the logged steps
    arm = s["arms"]["G3_utilrank"]["loss_grad_norm"]
    seeds = [s["arms"]["G3_utilrank"]["seeds"][k]["loss_grad_norm"]["gate"]["jepa"] for k in ("0", "1")]
    assert arm["gate"]["jepa"]["mean"] == pytest.approx(sum(seeds) / 2)  # the arm's: mean over seeds
    assert set(s["arms"]["G1_lm_st"]["loss_grad_norm"]["gate"]) == {"lm", "total"}
    md = (out / "report.md").read_text()
    section = md.split("### Which loss drives the controller")[1].split("\n#")[0]
    rows = [l for l in section.splitlines() if l.startswith("| G")]
    assert len(rows) == 4  # 2 arms x (gate, cheap_ffn)
    assert rows[0].startswith("| G1, no util/rank, straight_through | gate |") and rows[0].endswith("| lm |")
    assert "![loss_grad_norms](plots/loss_grad_norms.png)" in md
    png = (out / "plots" / "loss_grad_norms.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_a_study_without_them_has_no_such_section_or_plot(study, tmp_path):
    s = json.loads((study / "summary.json").read_text())
    for arm in s["arms"].values():
        arm.pop("loss_grad_norm")
        for seed in arm["seeds"].values():
            seed.pop("loss_grad_norm")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / PLOTS["loss_grad_norms"]).write_bytes(b"an earlier report's")
    plots = write_plots(s, tmp_path)
    assert "loss_grad_norms" not in plots and not (tmp_path / "plots" / PLOTS["loss_grad_norms"]).exists()
    assert "Which loss drives" not in render(s, plots)


@pytest.mark.parametrize(("value", "reason"), [("0", "greater than or equal to 1"), ("x", "valid integer")])
def test_a_bad_interval_is_a_spec_error(value, reason):
    result = CliRunner().invoke(app, ["validate", str(SPECS / "a6_estimator.yaml"),
                                      "--set", f"train.loss_grad_norm_every={value}"])
    assert result.exit_code == 2
    assert "train.loss_grad_norm_every" in result.output and reason in result.output
    assert "Traceback" not in result.output
