"""The study's time estimate (specroute.train.estimate, study.describe_estimate): the probe's batch and
threads, and the runs' wall time when several run at once."""

from __future__ import annotations

import torch

from specroute.flops.analytic import dense_step_macs, step_macs
from specroute.spec.loader import load_study
from specroute.train import estimate
from specroute.train.device import Device
from specroute.train.estimate import Throughput, probe_shape, runs_wall_seconds
from specroute.train.study import describe_estimate

from helpers import SPECS

CPU, CUDA = Device("cpu", None), Device("cuda", None)


def test_runs_wall_seconds_hands_each_run_to_the_first_free_slot():
    assert runs_wall_seconds([3.0, 3.0, 3.0, 3.0], 2) == 6.0
    assert runs_wall_seconds([5.0, 1.0, 1.0, 1.0], 2) == 5.0  # the three short runs share the other slot
    assert runs_wall_seconds([1.0, 1.0, 5.0], 2) == 6.0  # in the study's order: the long run starts last
    assert runs_wall_seconds([2.0, 3.0], 1) == 5.0
    assert runs_wall_seconds([2.0, 3.0], 8) == 3.0
    assert runs_wall_seconds([], 2) == 0.0


def test_a_smoke_step_is_probed_on_its_own_batch_a_paper_step_on_a_small_one():
    smoke = load_study(SPECS / "a3.yaml", "smoke").arm_spec("G3_utilrank")
    paper = load_study(SPECS / "a3.yaml", "paper").arm_spec("G3_utilrank")
    dense = lambda spec: (lambda B, T: dense_step_macs(spec, "full_training", B, T))  # noqa: E731
    controller = lambda spec: (lambda B, T: step_macs(spec, batch_size=B, seq_len=T)["total"])  # noqa: E731
    for macs in (dense(smoke), controller(smoke)):
        assert probe_shape(16, 64, CPU, macs) == (16, 64)
    for macs in (dense(paper), controller(paper)):
        B, T = probe_shape(16, 1024, CPU, macs)
        assert T == 256 and B * T <= estimate.CPU_PROBE_TOKENS
        assert probe_shape(16, 1024, CUDA, macs) == (16, 1024)


def test_the_controller_probe_runs_at_the_runs_thread_count(monkeypatch):
    seen = {}
    monkeypatch.setattr(estimate, "_dense_rate", lambda spec, device: seen.setdefault("dense", torch.get_num_threads()))
    monkeypatch.setattr(estimate, "_controller_rate",
                        lambda spec, device: seen.setdefault("controller", torch.get_num_threads()))
    spec = load_study(SPECS / "a3.yaml", "smoke").arm_spec("G1_lm")
    was = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        estimate.probe(spec, spec, CPU, run_threads=1)
        assert seen == {"dense": 2, "controller": 1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(was)


def test_the_estimate_counts_the_runs_left_at_the_study_concurrency():
    resolved = load_study(SPECS / "a3.yaml", "smoke")
    runs = resolved.runs()
    left = {(a, s): spec.train.steps for a, s, spec in runs}
    left[runs[0][0], runs[0][1]] = 0  # finished before
    rate = Throughput(dense_macs_per_s=1e10, controller_macs_per_s=1e10)
    per_run = [estimate.run_seconds(spec, left[a, s], rate) for a, s, spec in runs[1:]]
    bb = {"key": runs[0][2]}
    two = describe_estimate(bb, {"key": 0}, runs, left, rate, at_once=2)
    one = describe_estimate(bb, {"key": 0}, runs, left, rate, at_once=1)
    assert f"11 runs {estimate.human(runs_wall_seconds(per_run, 2))}, 2 at a time" in two
    assert f"11 runs {estimate.human(sum(per_run))}, one at a time" in one
    assert runs_wall_seconds(per_run, 2) < 0.6 * sum(per_run)
    done = {k: 0 for k in left}
    assert describe_estimate(bb, {"key": 0}, runs, done, rate, 2) == ("estimated time: nothing left to train (the "
                                                                      "backbone is cached and every run has finished)")
    assert estimate.backbone_seconds(runs[0][2], 0, rate) == 0.0
