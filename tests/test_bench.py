"""`specroute bench --quick` end to end (issue 5): files, keys, finite figures, cost-model consistency.

Quick mode shrinks the model and runs 1 warm-up step and 2 rounds per case, so the benchmark cannot rot;
no test asserts anything about timings beyond "positive and finite".
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from helpers import SPECS
from specroute.bench.cases import BUDGETS, full_training, quick_spec, realised_share
from specroute.bench.machine import OtherLoad
from specroute.bench.reference import HF_MISSING
from specroute.cli import app
from specroute.flops.analytic import step_macs
from specroute.spec import load_study

runner = CliRunner()
FILES = ("summary.json", "report.md", "throughput_vs_budget.png")
THREADS_BEFORE = torch.get_num_threads()


def bench(*args: str):
    return runner.invoke(app, ["bench", str(SPECS / "a3.yaml"), "--profile", "smoke", "--quick", *map(str, args)])


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, Path, str]:
    out = tmp_path_factory.mktemp("bench") / "a3_smoke"
    result = bench("--json", "--out", out)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), out, result.stdout


def test_writes_every_file_and_json_matches_stdout(quick_run):
    summary, out, _ = quick_run
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert json.loads((out / "summary.json").read_text()) == summary
    report = (out / "report.md").read_text()
    for section in ("## Where", "## Throughput and memory", "## Gather by budget", "## A3 vs util/rank", "## Targets"):
        assert section in report
    assert (out / "throughput_vs_budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_records_machine_and_settings(quick_run):
    summary, _, _ = quick_run
    env = summary["environment"]
    for key in ("cpu_model", "threads", "torch", "dtype", "device", "git_commit", "load_avg_1_5_15",
                "load_avg_1_5_15_end", "transformers", "other_processes_cpu_share"):
        assert key in env, key
    assert env["threads"] == 1  # quick mode runs on one thread (and restores the setting)
    assert torch.get_num_threads() == THREADS_BEFORE
    assert env["torch"] == torch.__version__
    st = summary["settings"]
    assert (summary["study"], summary["profile"], summary["quick"]) == ("a3", "smoke", True)
    assert (st["repeats"], st["warmup"]) == (2, 1)
    assert st["budgets"] == list(BUDGETS)
    assert any("fewer than 5" in w for w in summary["warnings"])


def test_every_case_measured_with_finite_positive_figures(quick_run):
    summary, _, _ = quick_run
    names = {c["name"] for c in summary["cases"]}
    expected = {"train/dense", "train/masked", "forward/dense", "forward/masked", "forward/gather@0.5",
                "train/hf_gpt2", "forward/hf_gpt2", *(f"train/gather@{b:g}" for b in BUDGETS),
                *(f"recipe/{a}" for a in ("G1_utilrank", "G3_utilrank", "G1_lm", "G3_lm"))}
    assert names == expected
    for c in summary["cases"]:
        if c["status"] != "ok":
            continue
        assert len(c["times_s"]) == 2, c["name"]
        for key in ("median_s", "tokens_per_s", "predicted_macs", "peak_mb"):
            assert c[key] is not None and math.isfinite(c[key]) and c[key] > 0, (c["name"], key, c[key])


def test_predicted_savings_come_from_the_cost_model(quick_run):
    summary, _, _ = quick_run
    spec = quick_spec(load_study(SPECS / "a3.yaml", "smoke").arm_spec("G1_utilrank"))
    masked = step_macs(full_training(spec, "masked"))["total"]
    for row in summary["budgets"]:
        gather = full_training(spec, "gather", row["budget"])
        expected = 1 - step_macs(gather, full_fraction=realised_share(gather))["total"] / masked
        assert 0 < row["predicted_saving_vs_masked"] < 1
        assert row["predicted_saving_vs_masked"] == pytest.approx(expected, rel=1e-12)
        assert row["realised_full_fraction"] == realised_share(gather)
    savings = [r["predicted_saving_vs_masked"] for r in summary["budgets"]]
    assert savings == sorted(savings, reverse=True)  # fewer full tokens, more saved


def test_recipes_pair_util_rank_with_lm_only_per_gate(quick_run):
    summary, _, _ = quick_run
    pairs = {(r["gate"], r["utilrank"], r["lm"]) for r in summary["recipes"]}
    assert pairs == {("G1", "G1_utilrank", "G1_lm"), ("G3", "G3_utilrank", "G3_lm")}
    for r in summary["recipes"]:
        assert r["paper_ratio"] == pytest.approx(1.75 / 2.87)
        assert 0 < r["predicted_ratio"] < 1  # the oracle's continuations make util/rank dearer
        assert r["predicted_ratio"] == pytest.approx(r["flops_proxy_lm"] / r["flops_proxy_utilrank"])
        assert r["measured_ratio"] > 0 and math.isfinite(r["measured_ratio"])
        cases = {c["name"]: c for c in summary["cases"]}  # peak memory of each controller-only step
        assert (r["utilrank_peak_mb"], r["lm_peak_mb"]) == (cases[f"recipe/{r['utilrank']}"]["peak_mb"],
                                                           cases[f"recipe/{r['lm']}"]["peak_mb"])


def test_targets_listed_and_not_applicable_in_quick_mode(quick_run):
    summary, _, _ = quick_run
    ids = [t["id"] for t in summary["targets"]]
    assert ids == ["dense_vs_reference", "gather_efficiency", "recipe_vs_flops_proxy", "cuda_bf16"]
    status = {t["id"]: t["status"] for t in summary["targets"]}
    assert status["gather_efficiency"] == "n/a"  # quick mode: sizes too small for the width >= 512 target
    assert status["recipe_vs_flops_proxy"] == "n/a"
    if not torch.cuda.is_available():
        assert status["cuda_bf16"] == "n/a"


def test_dense_vs_reference_figures_come_from_the_rounds(quick_run):
    summary, _, _ = quick_run
    times = {c["name"]: c["times_s"] for c in summary["cases"]}
    target = next(t for t in summary["targets"] if t["id"] == "dense_vs_reference")
    dense, ref = times["train/dense"], times["train/hf_gpt2"]
    if not ref:  # transformers not installed
        assert (target["figure"], target["paired_figure"]) == (None, None)
        return
    # quick mode times no compiled case: ours is the eager dense step, paired by round with an interval
    paired = [a / b for a, b in zip(dense, ref, strict=True)]
    assert target["ours"] == "train/dense"
    assert target["figure"] == pytest.approx(statistics.median(paired))
    lo, hi = target["interval"]
    assert min(paired) <= lo <= target["figure"] <= hi <= max(paired)


def test_bootstrap_interval_brackets_the_rounds_and_is_reproducible():
    from specroute.bench.figures import bootstrap_interval

    rounds = [0.9, 1.1, 1.0, 0.95, 1.05, 1.2, 0.85]
    iv = bootstrap_interval(rounds, statistics.median)
    assert min(rounds) <= iv[0] < statistics.median(rounds) < iv[1] <= max(rounds)
    assert bootstrap_interval(rounds, statistics.median) == iv  # seeded
    assert bootstrap_interval([1.0], statistics.median) is None
    assert bootstrap_interval([1.0] * 5, statistics.median) == [1.0, 1.0]


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux /proc/stat")
class _Clocks:
    """Fake clocks for OtherLoad: wall seconds, this process's CPU seconds, all CPUs' busy seconds."""

    def __init__(self):
        self.wall, self.own, self.busy = 100.0, 5.0, 1000.0

    def advance(self, wall: float, own: float, others: float) -> None:
        self.wall += wall
        self.own += own
        self.busy += own + others  # the machine's busy time holds this process's own CPU time too


@pytest.fixture
def clocks(monkeypatch):
    import specroute.bench.machine as machine

    c = _Clocks()
    monkeypatch.setattr(machine.time, "perf_counter", lambda: c.wall)
    monkeypatch.setattr(machine.time, "process_time", lambda: c.own)
    monkeypatch.setattr(machine, "busy_cpu_s", lambda: c.busy)
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 4)
    return c


@pytest.mark.parametrize("own, others, share", [
    (4.0, 0.0, 0.0),     # this process kept every CPU busy: none of it is "other"
    (1.0, 1.0, 0.25),    # another process kept one of 4 CPUs busy for the whole second
    (0.0, 4.0, 1.0),     # others used every CPU all the time
    (2.0, -0.05, 0.0),   # tick granularity: busy time below own CPU time is no negative share
    (0.0, 9.0, 1.0),     # never above 1
])
def test_other_processes_share_is_busy_time_less_own_cpu_time(clocks, own, others, share):
    load = OtherLoad()
    clocks.advance(wall=1.0, own=own, others=others)
    assert load.share() == pytest.approx(share)


def test_other_processes_share_unknown_without_cpu_times(clocks, monkeypatch):
    import specroute.bench.machine as machine

    load = OtherLoad()
    assert load.share() is None  # no time has passed
    monkeypatch.setattr(machine, "busy_cpu_s", lambda: None)
    clocks.advance(wall=1.0, own=0.5, others=0.5)
    assert load.share() is None


def test_busy_cpu_time_counts_a_busy_child():
    """The real counters, with a check that load can only help: other processes add busy time, they never
    take away the child's. The child's own CPU time (getrusage) is the yardstick, not the wall clock."""
    import resource

    from specroute.bench.machine import busy_cpu_s

    before, child0 = busy_cpu_s(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "import time\nt = time.process_time() + 0.5\n"
                    "while time.process_time() < t: pass"], check=True)
    after, child1 = busy_cpu_s(), resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = (child1.ru_utime + child1.ru_stime) - (child0.ru_utime + child0.ru_stime)
    assert child_cpu >= 0.5
    assert after - before >= 0.5 * child_cpu  # psutil's ticks are 10 ms; half the child's time is a wide margin


def test_refuses_to_overwrite_a_result(quick_run):
    _, out, _ = quick_run
    result = bench("--out", out)
    assert result.exit_code == 2
    assert "--overwrite" in result.stderr
    assert "Traceback" not in result.output


def test_overwrite_never_touches_what_is_not_a_result(tmp_path):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("precious")
    (mine / "summary.json").write_text("{}")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for out in (mine, victim):
        result = bench("--out", out, "--overwrite")
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
    assert "not a benchmark result" in bench("--out", mine, "--overwrite").stderr
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "sub", "summary.json"]
    assert (mine / "notes.txt").read_text() == victim.read_text() == "precious"


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")
def test_op_profile_script_runs(tmp_path):
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "dense_vs_gpt2_ops.py"
    done = subprocess.run([sys.executable, str(script), "--profile", "smoke", "--steps", "1", "--rows", "3"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert re.search(r"self CPU time, dense / GPT-2: \d+\.\d{3} \([+-]\d+\.\d%\)", done.stdout), done.stdout


def test_missing_transformers_is_reported_cleanly(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # any import of it now raises ImportError
    out = tmp_path / "no_ref"
    result = bench("--out", out, "--repeats", "1")
    assert result.exit_code == 0, result.output
    assert "not installed" in result.stdout
    assert "specroute[reference]" in result.stdout.replace("\n", "")  # the extra is printed, not eaten as markup
    summary = json.loads((out / "summary.json").read_text())
    hf = {c["name"]: c for c in summary["cases"] if c["variant"] == "hf_gpt2"}
    assert {c["status"] for c in hf.values()} == {HF_MISSING}
    assert all(c["tokens_per_s"] is None for c in hf.values())
    assert summary["environment"]["transformers"] is None
    target = next(t for t in summary["targets"] if t["id"] == "dense_vs_reference")
    assert (target["status"], target["figure"]) == ("n/a", None)
    assert "train/dense" in result.stdout  # the tables still print
    assert "round 1/1" in result.stderr  # progress on stderr, in a terminal or not (a log under nohup, CI)


def test_repeats_are_bounded(tmp_path):
    result = bench("--out", tmp_path / "x", "--repeats", "1001")
    assert result.exit_code == 2 and "less than or equal to 1000" in result.output and not (tmp_path / "x").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_user_error(tmp_path):
    result = bench("--device", "cuda", "--out", tmp_path / "x")
    assert result.exit_code == 2
    assert "CUDA" in result.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quick_bench_on_cuda_in_bf16(tmp_path):
    result = bench("--device", "cuda", "--json", "--out", tmp_path / "cuda")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["environment"]["device"] == "cuda"
    assert "bfloat16" in summary["environment"]["dtype"]
    assert next(t for t in summary["targets"] if t["id"] == "cuda_bf16")["status"] == "PASS"


def test_training_cases_take_the_study_step_with_the_study_optimiser():
    from specroute.bench.cases import BenchOptions, TrainingStep, build_cases
    from specroute.train.device import Device
    from specroute.train.step import make_optimizer

    cases, _ = build_cases(load_study(SPECS / "a3.yaml", "smoke"), BenchOptions(quick=True, reference=False),
                           Device("cpu", None))
    steps = [c.step for c in cases if c.kind in ("train", "recipe") and c.step is not None]
    assert len(steps) == len(BUDGETS) + 2 + 4  # dense, masked, gather at each budget; 4 arms
    for step in steps:
        assert isinstance(step, TrainingStep)
        trainer = step.trainer
        expected = make_optimizer(trainer.params, trainer.spec.optimizer)
        assert [(len(g["params"]), g["weight_decay"]) for g in trainer.optimizer.param_groups] == \
            [(len(g["params"]), g["weight_decay"]) for g in expected.param_groups]


def test_a_band_target_is_settled_only_by_an_interval_inside_it_or_wholly_beyond_an_edge():
    from specroute.bench.figures import _settled_within

    assert _settled_within([-0.02, 0.03], 0.05)          # wholly inside: a settled PASS
    assert _settled_within([0.06, 0.09], 0.05)           # wholly beyond +5 pp: a settled MISS
    assert _settled_within([-0.09, -0.06], 0.05)
    assert not _settled_within([-0.059, 0.053], 0.05)    # pokes out on both sides (the endpoints both fail)
    assert not _settled_within([0.01, 0.08], 0.05)
    assert not _settled_within(None, 0.05)
