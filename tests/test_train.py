"""Training: the learning-rate schedule, determinism, interruption and --resume, output-folder safety,
the paper profile's confirmation, unknown arms."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from specroute.cli import app
from specroute.spec import load_study
from specroute.spec.models import OptimizerSpec
from specroute.train import Interrupted, StudyOptions, run_study
from specroute.train.trainer import lr_at

SPECS = Path(__file__).resolve().parent.parent / "specs"

#: A micro profile of the A3 study: 2 blocks x width 32, 30 backbone steps, 12 controller steps.
MICRO = [
    "model.n_layers=2", "model.d_model=32", "model.n_heads=2", "model.context_length=32",
    "routing.controlled_layers=[1]", "routing.cheap_ffn_hidden=16",
    "gates.G1.hidden=8", "gates.G3.latent_dim=4", "gates.G3.predictor_hidden=8",
    "backbone.train.steps=30", "backbone.train.batch_size=4", "backbone.train.seq_len=32",
    "backbone.train.eval_every=10", "backbone.train.eval_batches=2", "backbone.train.checkpoint_every=10",
    "train.steps=12", "train.batch_size=4", "train.seq_len=32", "train.eval_every=4", "train.eval_batches=2",
    "train.checkpoint_every=5", "train.lm_thresholds=[4.5, 3.5]", "seeds=[0, 1]",
]


def micro(*extra: str):
    return load_study(SPECS / "a3.yaml", "smoke", [*MICRO, *extra])


def test_lr_schedule():
    opt = OptimizerSpec(lr_peak=1.0, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_at(s, 20, opt) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, 20, opt) == 1.0
    assert math.isclose(lr_at(19, 20, opt), 0.1)
    lin = OptimizerSpec(lr_peak=1.0, warmup_steps=0, schedule="linear", min_lr_ratio=0.0)
    assert math.isclose(lr_at(5, 11, lin), 0.5)
    assert lr_at(7, 10, OptimizerSpec(lr_peak=2.0, warmup_steps=0, schedule="constant")) == 2.0


def strip_wall(seed_summary: dict) -> dict:
    return {k: v for k, v in seed_summary.items() if k != "wall_s"}


def events(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] in ("train", "eval", "eval_initial")]


def test_interrupted_study_resumes_to_identical_metrics(tmp_path):
    resolved = micro()
    arms = ["G3_utilrank"]
    ref = run_study(resolved, StudyOptions(out=tmp_path / "ref", arms=arms, seeds=[0], device="cpu",
                                           cache=tmp_path / "cache_ref", workers=1))
    out, cache = tmp_path / "resumed", tmp_path / "cache_resumed"
    # crash 1: inside the backbone (checkpoint at 10, died at 17); crash 2: inside the controller run
    # (backbone done after 20 replayed steps, controller checkpoint at 5, died at 10)
    for budget in (17, 30):
        with pytest.raises(Interrupted):
            run_study(resolved, StudyOptions(out=out, arms=arms, seeds=[0], device="cpu", cache=cache,
                                             resume=True, workers=1, max_steps_this_session=budget))
    assert (out / "runs" / "G3_utilrank" / "seed0" / "ckpt" / "latest").read_text() == "step_000010"
    got = run_study(resolved, StudyOptions(out=out, arms=arms, seeds=[0], device="cpu", cache=cache,
                                           resume=True, workers=1))
    a = ref.summary["arms"]["G3_utilrank"]["seeds"]["0"]
    b = got.summary["arms"]["G3_utilrank"]["seeds"]["0"]
    assert strip_wall(a) == strip_wall(b)
    assert ref.summary["backbone"]["heldout_lm"] == got.summary["backbone"]["heldout_lm"]
    run = Path("runs") / "G3_utilrank" / "seed0" / "metrics.jsonl"
    assert events(ref.out / run) == events(got.out / run)  # nothing lost, nothing duplicated
    assert len(events(got.out / run)) == 1 + 12 + 3


def test_same_seed_same_metrics_different_seed_differs(tmp_path):
    resolved = micro()
    opts = dict(arms=["G1_lm"], device="cpu", cache=tmp_path / "cache", workers=1)
    one = run_study(resolved, StudyOptions(out=tmp_path / "a", **opts)).summary["arms"]["G1_lm"]["seeds"]
    two = run_study(resolved, StudyOptions(out=tmp_path / "b", **opts)).summary["arms"]["G1_lm"]["seeds"]
    assert strip_wall(one["0"]) == strip_wall(two["0"])
    assert one["0"]["lm"] != one["1"]["lm"]


runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, ["run", str(SPECS / "a3.yaml"), "--profile", "smoke",
                               *[x for s in MICRO for x in ("--set", s)], *args])


def test_existing_output_is_never_overwritten_silently(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = cli("--out", str(out), "--cache-dir", str(tmp_path / "c"), "--arm", "G1_lm")
    assert r.exit_code == 2 and "--resume" in r.output and "--overwrite" in r.output
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    # a --resume into a folder of another study (other spec) is refused too
    (out / "study.json").write_text(json.dumps({"spec_sha256": "0" * 64}))
    r = cli("--out", str(out), "--cache-dir", str(tmp_path / "c"), "--arm", "G1_lm", "--resume")
    assert r.exit_code == 2 and "another resolved spec" in r.output


def test_unknown_arm_and_seed_exit_2(tmp_path):
    r = cli("--out", str(tmp_path / "o"), "--arm", "G7_magic")
    assert r.exit_code == 2 and "G7_magic" in r.output and "G1_lm" in r.output
    r = cli("--out", str(tmp_path / "o"), "--seed", "9")
    assert r.exit_code == 2 and "seed" in r.output
    assert not (tmp_path / "o").exists()


def test_paper_profile_without_gpu_needs_yes(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    r = runner.invoke(app, ["run", str(SPECS / "a3.yaml"), "--profile", "paper", "--out", str(tmp_path / "p")])
    assert r.exit_code == 2 and "--yes" in r.output
    assert not (tmp_path / "p").exists()
