"""MFU and throughput (specroute.flops.mfu): the GPU peak table, the measured CPU peak, the trainer's
speed figures and the progress line."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_spec, tokens

from specroute.flops.analytic import dense_step_macs
from specroute.flops.mfu import Peak, device_peak, fmt_speed, gpu_peak, measured_cpu_peak, speed
from specroute.train.device import Device
from specroute.train.stages import DenseStage, seeded_model
from specroute.train.trainer import FixedBatch, Trainer


@pytest.mark.parametrize("name, precision, tflops", [
    ("NVIDIA H200", "bf16", 989.4), ("NVIDIA H100 80GB HBM3", "bf16", 989.4), ("NVIDIA H100 PCIe", "bf16", 756.0),
    ("NVIDIA A100-SXM4-80GB", "tf32", 156.0), ("Tesla V100-SXM2-32GB", "fp32", 15.7), ("NVIDIA L4", "bf16", 121.0),
    ("NVIDIA L40S", "bf16", 362.1),
])
def test_gpu_peak_table(name, precision, tflops):
    peak = gpu_peak(name, precision)
    assert peak.flops_per_s == pytest.approx(tflops * 1e12)
    assert precision in peak.source


def test_gpu_without_a_peak_says_why():
    assert gpu_peak("Tesla V100-SXM2-32GB", "bf16").flops_per_s is None
    unknown = gpu_peak("Some Future GPU", "bf16")
    assert unknown.flops_per_s is None and "not in the GPU peak table" in unknown.source


def test_cpu_peak_is_measured_once_per_thread_count():
    first = measured_cpu_peak(1)
    assert first is measured_cpu_peak(1)  # cached: measured once per process
    assert 1e8 < first.flops_per_s < 1e13
    assert first.source.startswith("measured: 1024x1024 fp32 matmul, 1 thread")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert device_peak(Device("cpu", None)) is first
    finally:
        torch.set_num_threads(before)


def test_speed_arithmetic():
    s = speed(tokens=2048, flops=4e9, seconds=2.0, peak=Peak(1e10, "x"))
    assert s["tokens_per_s"] == 1024 and s["flops_per_s"] == 2e9 and s["mfu"] == pytest.approx(0.2)
    assert speed(10, None, 1.0, Peak(None, "unknown"))["mfu"] is None
    assert speed(10, 1.0, 0.0, None)["tokens_per_s"] is None
    assert fmt_speed(1234.4, 0.1234) == "1,234 tok/s, MFU 12.3%"
    assert fmt_speed(None, None) == "— tok/s, MFU —"


def test_trainer_speed_is_the_cost_model_over_its_step_times():
    spec = tiny_spec()
    device = Device("cpu", None)
    stage = DenseStage(seeded_model(spec, 0, routed=False), spec.train, device)
    flops = 2 * dense_step_macs(spec, "full_training")
    seen = []
    idx = tokens(spec.train.batch_size, spec.train.seq_len)
    trainer = Trainer(stage, FixedBatch(idx, idx), {"data": 0, "loss": 0}, device,
                      on_step=lambda step, record: seen.append(record), step_flops=flops)
    for _ in range(3):
        trainer.advance()
    s = trainer.speed()
    seconds = sum(trainer.step_s)
    assert len(trainer.step_s) == 3
    assert s["tokens_per_s"] == pytest.approx(3 * spec.train.batch_size * spec.train.seq_len / seconds)
    assert s["mfu"] == pytest.approx(3 * flops / seconds / device_peak(device).flops_per_s)
    assert all(r["tokens_per_s"] > 0 and r["mfu"] > 0 for r in seen)  # the progress line's figures
    assert all("tokens_per_s" not in r for r in trainer.history["train"])  # timings stay out of the metrics
