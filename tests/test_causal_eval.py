"""Causal evaluation of top-k gates (calibrated thresholds) end to end on the micro A3 study: calibration
itself, the top-k numbers left unchanged, the seed and arm summaries, thresholds.json, report.md and the plot,
threshold arms evaluated natively, and ``specroute generate`` on the runs."""

from __future__ import annotations

import json
import shutil
import statistics

import pytest
import torch
from helpers import micro, strip_wall, tiny_spec, tokens
from typer.testing import CliRunner

from specroute.cli import app
from specroute.model.decoder import build_model
from specroute.train import StudyOptions, run_study
from specroute.train.calibration import calibrate

ARM = "G1_lm"


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """The G1_lm arm (top-k) with causal evaluation after training, at every evaluation, without it, and as a
    threshold arm; one shared cache."""
    tmp = tmp_path_factory.mktemp("causal")
    cache = tmp / "cache"

    def study(name, *extra, seeds=(0, 1)):
        options = StudyOptions(out=tmp / name, arms=[ARM], seeds=list(seeds), device="cpu", cache=cache, workers=1)
        return run_study(micro(*extra), options).summary

    return {"cache": cache, "root": tmp,
            "causal": study("causal"),
            "every": study("every", "routing.budget.calibrate_every_eval=true", seeds=(0,)),
            "off": study("off", "routing.budget.calibration_batches=0", seeds=(0,)),
            "threshold": study("threshold", "routing.budget.enforcement=threshold", "loss.budget=1.0", seeds=(0,))}


def test_calibration_realises_the_budget_layer_by_layer():
    torch.manual_seed(0)
    model = build_model(tiny_spec({"routing": {"controlled_layers": [1, 2]}})).eval()
    batches = [tokens(2, 16, seed=s) for s in range(3)]
    for b in (0.25, 0.5, 0.75):
        cal = calibrate(model, batches, b)
        n = 3 * 2 * 16
        assert cal.tokens == n
        with torch.no_grad():
            outs = [model(x, thresholds=cal.thresholds) for x in batches]
        for layer in (1, 2):
            recs = [next(r for r in o.routing if r.layer == layer) for o in outs]
            share = sum(r.full_BT.sum().item() for r in recs) / n
            assert abs(share - b) <= 1 / n and cal.full_fraction[layer] == share
            # layer 2's threshold is fitted to its scores under layer 1's threshold, not under top-k
            scores = torch.cat([r.gate.score_BT.reshape(-1) for r in recs])
            assert cal.thresholds[layer] == pytest.approx(torch.quantile(scores, 1 - b).item(), abs=1e-7)
        with torch.no_grad():
            topk_scores = torch.cat([next(r for r in model(x).routing if r.layer == 2).gate.score_BT.reshape(-1)
                                     for x in batches])
        assert cal.thresholds[2] != pytest.approx(torch.quantile(topk_scores, 1 - b).item(), abs=1e-7)


def test_topk_numbers_are_unchanged_by_the_causal_evaluation(studies):
    off = studies["off"]["arms"][ARM]["seeds"]["0"]
    assert "causal" not in off and studies["off"]["arms"][ARM]["causal_rule"] == "none"
    for name in ("causal", "every"):
        seed = studies[name]["arms"][ARM]["seeds"]["0"]
        assert {k: v for k, v in strip_wall(seed).items() if k != "causal"} == strip_wall(off)
    # calibrated after training or at every evaluation: the trained model's causal figures are the same
    final, every = (studies[n]["arms"][ARM]["seeds"]["0"]["causal"] for n in ("causal", "every"))
    for key in ("final_lm", "thresholds", "full_fraction", "calibration_full_fraction"):
        assert final[key] == every[key]
    assert "avg_lm" not in final and every["avg_lm"] >= every["best_lm"]


def _log(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").open()]


def test_causal_seed_summary_and_thresholds_file(studies):
    root = studies["root"]
    for seed, s in studies["causal"]["arms"][ARM]["seeds"].items():
        c = s["causal"]
        assert c["final_lm"] == pytest.approx(statistics.fmean(c["lm_by_batch"]["final_lm"]))
        assert set(c["full_fraction"]) == set(c["thresholds"]) == {"1"}
        assert abs(c["calibration_full_fraction"]["1"] - 0.5) <= 1 / c["tokens"]
        assert 0.0 < c["full_fraction"]["1"] < 1.0
        run = root / "causal" / "runs" / ARM / f"seed{seed}"
        saved = json.loads((run / "thresholds.json").read_text())
        assert saved["thresholds"] == c["thresholds"] and saved["full_fraction"] == 0.5
        log = _log(run)
        assert not any("causal" in l for l in log if l["event"] in ("eval_initial", "eval"))
        (event,) = [l for l in log if l["event"] == "causal"]
        assert event["lm"] == c["final_lm"] and event["step"] == 12 and log[-1]["event"] == "end"
    evals = [l for l in _log(root / "every" / "runs" / ARM / "seed0") if l["event"] in ("eval_initial", "eval")]
    assert all("causal" in e for e in evals)
    c = studies["every"]["arms"][ARM]["seeds"]["0"]["causal"]
    curve = [e["causal"]["lm"] for e in evals[1:]]  # the evaluation before training enters none
    assert (c["final_lm"], c["best_lm"]) == (curve[-1], min(curve))
    assert c["avg_lm"] == pytest.approx(statistics.fmean(curve))
    assert not (root / "off" / "runs" / ARM / "seed0" / "thresholds.json").exists()


def test_arm_entry_gap_over_seeds(studies):
    arm = studies["causal"]["arms"][ARM]
    assert arm["causal_rule"] == "calibrated"
    seeds = arm["seeds"].values()
    diffs = [s["causal"]["final_lm"] - s["final_lm"] for s in seeds]
    gap = arm["causal"]["gap"]["final_lm"]
    assert gap["mean_diff"] == pytest.approx(statistics.fmean(diffs))
    assert gap["n"] == 2 and gap["interval"][0] <= gap["mean_diff"] <= gap["interval"][1]
    assert gap["wins"] + gap["ties"] + gap["losses"] == 2
    assert set(arm["causal"]["gap"]) == {"final_lm"}
    assert set(studies["every"]["arms"][ARM]["causal"]["gap"]) == {"final_lm", "avg_lm", "best_lm"}
    assert arm["mean"]["causal_final_lm"] == pytest.approx(statistics.fmean(s["causal"]["final_lm"] for s in seeds))
    layer = arm["causal"]["full_fraction"]["1"]
    assert layer["mean"] == pytest.approx(statistics.fmean(s["causal"]["full_fraction"]["1"] for s in seeds))


def test_report_section_and_plot(studies):
    out = studies["root"] / "causal"
    text = (out / "report.md").read_text()
    section = text.split("### Causal evaluation", 1)[1].split("\n## ", 1)[0]
    arm = studies["causal"]["arms"][ARM]
    assert f"{arm['mean']['causal_final_lm']:.4f}" in section
    assert f"{arm['causal']['gap']['final_lm']['mean_diff']:+.4f}" in section
    assert "plots/causal_lm.png" in text
    assert (out / "plots" / "causal_lm.png").read_bytes()[:4] == b"\x89PNG"
    assert not (studies["root"] / "off" / "plots" / "causal_lm.png").exists()
    assert "### Causal evaluation" not in (studies["root"] / "off" / "report.md").read_text()


def test_threshold_arm_is_evaluated_natively(studies):
    arm = studies["threshold"]["arms"][ARM]
    assert arm["causal_rule"] == "native" and "causal" not in arm
    assert "causal" not in arm["seeds"]["0"]
    assert not (studies["root"] / "threshold" / "runs" / ARM / "seed0" / "thresholds.json").exists()
    text = (studies["root"] / "threshold" / "report.md").read_text()
    assert "evaluated natively" in text


def test_generate_command(studies, tmp_path):
    run = studies["root"] / "causal" / "runs" / ARM / "seed0"
    cache = str(studies["cache"])
    args = ["generate", str(run), "--prompt", "The class ", "--max-new-tokens", "12", "--cache-dir", cache]
    first, again = CliRunner().invoke(app, args), CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.stdout == again.stdout and len(first.stdout.rstrip("\n").encode()) >= 1
    threshold_run = studies["root"] / "threshold" / "runs" / ARM / "seed0"
    r = CliRunner().invoke(app, ["generate", str(threshold_run), "--prompt", "x", "--cache-dir", cache,
                                 "--max-new-tokens", "4", "--temperature", "0.8"])
    assert r.exit_code == 0, r.output
    # a top-k run without its thresholds cannot run causally
    copy = tmp_path / "out" / "runs" / ARM / "seed0"
    shutil.copytree(run, copy)
    shutil.copy(studies["root"] / "causal" / "summary.json", tmp_path / "out" / "summary.json")
    (copy / "thresholds.json").unlink()
    for bad, words in (([str(copy), "--prompt", "x"], "no thresholds.json"),
                       ([str(run), "--prompt", ""], "--prompt: empty"),
                       ([str(tmp_path / "nowhere"), "--prompt", "x"], "not a finished run folder")):
        r = CliRunner().invoke(app, ["generate", *bad, "--cache-dir", cache])
        assert r.exit_code == 2 and "Traceback" not in r.output and words in r.stderr, r.output
    r = CliRunner().invoke(app, ["generate", str(run), "--prompt", "x", "--cache-dir", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "is not in the cache" in r.stderr
    alone = tmp_path / "alone" / "seed0"  # a run folder copied out of its study: no summary.json above it
    shutil.copytree(run, alone)
    r = CliRunner().invoke(app, ["generate", str(alone), "--prompt", "x", "--cache-dir", cache])
    assert r.exit_code == 2 and "not in a study's output folder" in r.stderr, r.output
    assert f"looked for {alone.resolve().parent.parent.parent / 'summary.json'}" in " ".join(r.stderr.split())
    (copy / "thresholds.json").write_text((run / "thresholds.json").read_text())
    (copy / "controller.safetensors").write_bytes(b"\xff" * 64)  # a damaged file: a message, not a traceback
    r = CliRunner().invoke(app, ["generate", str(copy), "--prompt", "x", "--cache-dir", cache])
    assert r.exit_code == 2 and "cannot be read as safetensors" in r.stderr, r.output


@pytest.mark.parametrize("text,words", [("inf", "--temperature inf: not a finite number (a number beyond a "
                                                "float's range, such as 1e400, reads as inf)"),
                                        ("1e400", "--temperature inf: not a finite number"),
                                        ("-inf", "--temperature -inf: not a finite number"),
                                        ("nan", "--temperature nan: not a finite number; give 0 (greedy) or a "
                                                "positive number such as 0.8 (sampling)"),
                                        ("-1", "--temperature -1.0: must be >= 0 (0: greedy; > 0: sampling)")])
def test_generate_refuses_a_temperature_it_cannot_sample_with_before_reading_the_run(tmp_path, text, words):
    r = CliRunner().invoke(app, ["generate", str(tmp_path / "nowhere"), "--prompt", "x", "--temperature", text])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert f"error: {words}" in " ".join(r.stderr.split())


@pytest.mark.parametrize("gate", ["G1", "G3"])
def test_evaluations_from_the_kept_frozen_prefix_equal_whole_forwards_bitwise(gate):
    """The stage keeps the hidden state entering the first controlled layer of its fixed batches (nothing
    before it trains): every figure of an evaluation and of the causal evaluation equals the one computed
    by whole forwards; in joint training (the blocks before it train) nothing is kept."""
    from specroute.train.device import Device
    from specroute.train.stages import ControllerStage

    spec = tiny_spec({"gate": {"kind": gate}, "routing": {"controlled_layers": [1, 2]}})
    batches = [(tokens(2, 16, seed=s), tokens(2, 16, seed=s + 10)) for s in range(2)]
    calibration = [tokens(2, 16, seed=20 + s) for s in range(2)]
    torch.manual_seed(0)
    model = build_model(spec).eval()
    stage = ControllerStage(spec, model, Device("cpu", None), batches, calibration=calibration)
    assert stage.prefix.on and stage.prefix.start == 1
    with torch.no_grad():
        kept = [stage.evaluate(), stage.evaluate(), stage.evaluate_causal()]
        stage.prefix.on = False
        whole = [stage.evaluate(), stage.evaluate(), stage.evaluate_causal()]
    assert len(stage.prefix._h) == len(batches) + len(calibration)
    assert kept == whole
    joint = tiny_spec({"gate": {"kind": gate}, "routing": {"controlled_layers": [1, 2]},
                       "train": {"trainable": ["gate", "cheap_ffn", "backbone"]}})
    assert not ControllerStage(joint, build_model(joint), Device("cpu", None), batches).prefix.on
