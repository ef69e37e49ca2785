"""Shared pytest set-up: hypothesis profiles and the optional real-data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Idle OpenMP threads sleep instead of spinning (set before torch starts OpenMP): on a busy CPU, spinning
# threads slow the suite manyfold.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("dev", max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Test models are tiny: one intra-op thread is fastest, and it does not stall when the CPU is shared.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parent.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (real fineweb-edu sample, GPT-2 tokenizer files); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-data folder {SHARED_DATA} is absent (only present on CI and dev machines)")
    return SHARED_DATA
