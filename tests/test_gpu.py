"""The GPU check (benchmarks/gpu_check.sh) and the tests it runs on a CUDA device (marked ``gpu``: opt-in
with ``-m gpu``; they skip without CUDA): CUDA forward = CPU forward, bf16 oracle labels against fp32,
the compiled forward on CUDA = eager."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import G3, tiny_spec, tokens
from torch.testing import assert_close

from specroute.losses import oracle_labels
from specroute.model.decoder import build_model

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_gpu_check_says_no_cuda_and_exits_0_without_a_device(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("no CUDA device: torch "), done.stdout
    assert "nothing to check" in done.stdout
    assert not (tmp_path / "out").exists()  # it did nothing else


def test_gpu_check_is_strict_bash():
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert os.access(SCRIPT, os.X_OK)


def _pair(spec):
    torch.manual_seed(0)
    cpu = build_model(spec).eval()
    cuda = build_model(spec)
    cuda.load_state_dict(cpu.state_dict())
    return cpu, cuda.cuda().eval()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("execution", ["masked", "gather"])
def test_cuda_forward_equals_cpu_forward(execution):
    spec = tiny_spec({**G3, "routing": {"execution": execution}})
    cpu, cuda = _pair(spec)
    idx = tokens(4, 32, vocab=spec.model.vocab_size)
    with torch.no_grad():
        a, b = cpu(idx), cuda(idx.cuda())
    assert_close(b.logits_BTV.cpu(), a.logits_BTV, rtol=1e-3, atol=1e-4)
    for ra, rb in zip(a.routing, b.routing):
        assert torch.equal(ra.full_BT, rb.full_BT.cpu())


@pytest.mark.gpu
@needs_cuda
def test_bf16_oracle_labels_agree_with_fp32():
    """The oracle labels under bf16 autocast against fp32 on the same CUDA model: printed (the GPU check
    quotes it) and required to rank tokens alike."""
    spec = tiny_spec()
    _, model = _pair(spec)
    idx = tokens(8, 32, vocab=spec.model.vocab_size).cuda()
    layers = list(spec.routing.controlled_layers)
    with torch.no_grad():
        out = model(idx)
        fp32 = oracle_labels(model, out, idx, layers, "off_policy")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out16 = model(idx)
            bf16 = oracle_labels(model, out16, idx, layers, "off_policy")
    for layer in layers:
        a, b = fp32[layer].float().flatten(), bf16[layer].float().flatten()
        corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
        dev = ((a - b).abs().mean() / a.std()).item()
        print(f"bf16 vs fp32 oracle labels, layer {layer}: correlation {corr:.4f}, mean |diff| {dev:.1%} of std")
        assert corr > 0.9


@pytest.mark.gpu
@needs_cuda
def test_compiled_forward_on_cuda_equals_eager():
    from specroute.train.compiled import compile_model

    spec = tiny_spec({"routing": {"execution": "gather"}})
    _, eager = _pair(spec)
    _, compiled = _pair(spec)
    compile_model(compiled)
    idx = tokens(4, 32, vocab=spec.model.vocab_size).cuda()
    with torch.no_grad():
        assert_close(compiled(idx).logits_BTV, eager(idx).logits_BTV, rtol=1e-3, atol=1e-4)
