"""End to end through the CLI on a micro profile of the A3 study: the report's files, the summary's keys
and the sanity of its values; parallel worker runs equal in-process runs."""

from __future__ import annotations

import json
import re
import math

import pytest
import torch
from typer.testing import CliRunner

from helpers import MICRO, SPECS, micro, strip_wall
from specroute.cli import app
from specroute.train import StudyOptions, run_study

ARMS = ["G1_utilrank", "G3_utilrank", "G1_lm", "G3_lm"]
SEED_KEYS = {"lm", "best_lm", "avg_lm", "final_lm", "threshold_hits", "grad_norm", "full_fraction", "flops_proxy",
             "wall_s", "latent"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    args = ["run", str(SPECS / "a3.yaml"), "--profile", "smoke", *[x for s in MICRO for x in ("--set", s)],
            "--out", str(tmp / "out"), "--cache-dir", str(tmp / "cache"), "--workers", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return tmp / "out", result.output


def test_report_files(study):
    out, output = study
    assert "estimated time" in output and "report.md" in output
    for name in ("report.md", "summary.json", "study.json"):
        assert (out / name).stat().st_size > 100
    for png in ("lm_curves", "grad_norm", "full_fraction"):
        data = (out / "plots" / f"{png}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    for arm in ARMS:
        for seed in (0, 1):
            run = out / "runs" / arm / f"seed{seed}"
            lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
            assert [l["step"] for l in lines if l["event"] == "train"] == list(range(1, 13))
            assert lines[-1]["event"] == "end"
            assert (run / "controller.safetensors").is_file() and (run / "ckpt" / "latest").is_file()
    assert not list(out.rglob("*.tmp"))


def test_summary_contract_and_values(study):
    out, _ = study
    s = json.loads((out / "summary.json").read_text())
    assert {"study", "profile", "spec_sha256", "environment", "data", "backbone", "arms", "comparisons",
            "wall_s"} <= set(s)
    assert s["study"] == "a3" and s["profile"] == "smoke" and len(s["spec_sha256"]) == 64
    env = s["environment"]
    assert env["device"] == "cpu" and env["dtype"] == "float32" and env["torch"] == torch.__version__
    assert env["git_commit"]
    data = s["data"]
    assert {"kind", "corpus_sha256", "tokenizer", "tokenizer_sha256", "train_tokens", "heldout_tokens",
            "unigram_entropy_nats"} <= set(data)
    assert data["kind"] == "embedded" and data["tokenizer"] == "bytes"
    bb = s["backbone"]
    assert {"heldout_lm", "steps", "cache_key", "wall_s"} <= set(bb) and bb["steps"] == 30
    assert bb["heldout_lm"] < bb["initial_lm"] and bb["heldout_lm"] < math.log(256)
    assert list(s["arms"]) == ARMS
    for name, arm in s["arms"].items():
        assert {"label", "gate", "loss", "seeds", "mean", "std"} <= set(arm)
        assert set(arm["loss"]) == {"util", "rank", "jepa", "budget"}
        assert arm["gate"] == name[:2] and set(arm["seeds"]) == {"0", "1"}
        for seed in arm["seeds"].values():
            assert SEED_KEYS <= set(seed)
            values = [v for _, v in seed["lm"]]
            assert [st for st, _ in seed["lm"]] == [4, 8, 12]
            assert all(math.isfinite(v) and 0 < v < math.log(256) for v in values)
            assert seed["best_lm"] == min(values) <= seed["avg_lm"] <= max(values)
            assert seed["best_lm"] <= seed["final_lm"] == values[-1]
            assert set(seed["threshold_hits"]) == {"4.5", "3.5"}
            for tau, hit in seed["threshold_hits"].items():
                assert hit is None or (hit in (4, 8, 12) and dict(seed["lm"])[hit] <= float(tau))
            assert seed["full_fraction"]["train"] == {"1": 0.5} and seed["full_fraction"]["eval"] == {"1": 0.5}
            assert 0 < seed["grad_norm"]["median"] and 0 < seed["grad_norm"]["mean"]
            assert seed["flops_proxy"] > 0 and seed["wall_s"] > 0
            if arm["gate"] == "G3":
                assert seed["latent"]["variance"] >= 0 and 1 <= seed["latent"]["effective_rank"] <= 4
            else:
                assert seed["latent"] is None
        assert math.isclose(arm["mean"]["best_lm"], sum(v["best_lm"] for v in arm["seeds"].values()) / 2)
    on, off = s["arms"]["G1_utilrank"]["mean"]["flops_proxy"], s["arms"]["G1_lm"]["mean"]["flops_proxy"]
    assert on > off  # the oracle's continuations cost FLOPs
    comps = s["comparisons"]
    assert len(comps) == 4 * 3 and {c["metric"] for c in comps} == {"avg_lm", "best_lm", "threshold_hits"}
    for c in comps:
        assert {"id", "better", "worse", "claim", "metric", "wins", "n"} == set(c)
        assert c["n"] == 2 and 0 <= c["wins"] <= 2


def test_report_markdown(study):
    out, _ = study
    md = (out / "report.md").read_text()
    s = json.loads((out / "summary.json").read_text())
    for needle in ("## Environment", "## Data", "## Backbone", "## Results per arm", "### Threshold hits",
                   "## Per-seed comparisons", "## The paper's figures beside ours", "## Claims", "## Plots",
                   s["data"]["corpus_sha256"], s["spec_sha256"], "G1, util/rank", "10.30×", "1.53×",
                   "unigram entropy", "plots/lm_curves.png"):
        assert needle in md, needle
    for c in s["comparisons"]:
        assert f"| {c['id']} | {c['better']} | {c['worse']} | {c['metric']} | {c['wins']}/{c['n']} seeds |" in md
    claims = md.split("## Claims")[1].split("## Plots")[0]
    rows = [line for line in claims.splitlines() if line.startswith("| C")]
    assert [r.split(" | ")[0] for r in rows] == [f"| C{i}" for i in range(1, 13)]
    for row in rows:  # five cells each: a "|" inside a cell is escaped
        assert len(re.findall(r"(?<!\\)\|", row)) == 6, row
    assert "not a V100" in next(r for r in rows if r.startswith("| C12"))  # how each claim was judged


def test_resume_of_finished_study_rewrites_same_report(study, tmp_path):
    out, _ = study
    before = json.loads((out / "summary.json").read_text())
    args = ["run", str(SPECS / "a3.yaml"), "--profile", "smoke", *[x for s in MICRO for x in ("--set", s)],
            "--out", str(out), "--cache-dir", str(out.parent / "cache"), "--resume"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    after = json.loads((out / "summary.json").read_text())
    assert after["arms"] == before["arms"] and after["backbone"]["source"] == "cache"


def test_parallel_workers_equal_in_process(study, tmp_path):
    out, _ = study
    seq = json.loads((out / "summary.json").read_text())
    par = run_study(micro(), StudyOptions(out=tmp_path / "par", arms=["G3_utilrank"], device="cpu",
                                          cache=out.parent / "cache", workers=2)).summary
    for seed in ("0", "1"):
        assert strip_wall(seq["arms"]["G3_utilrank"]["seeds"][seed]) == strip_wall(par["arms"]["G3_utilrank"]["seeds"][seed])
