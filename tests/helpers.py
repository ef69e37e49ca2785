"""Tiny specs for fast tests: 4 blocks x width 32, bytes vocabulary (256), context 32.

``tiny_spec(update)`` builds one by merging ``update`` (nested keys of RunSpec) into the base and
validating again, so every test spec is a valid spec by construction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from specroute.spec.loader import deep_merge
from specroute.spec.models import RunSpec

TINY: dict[str, Any] = {
    "name": "tiny",
    "model": {"n_layers": 4, "d_model": 32, "n_heads": 2, "context_length": 32, "vocab_size": 256, "d_ff": 64},
    "routing": {"controlled_layers": [1, 2], "cheap_ffn_hidden": 16, "execution": "masked"},
    "gate": {"kind": "G1", "hidden": 16},
    "backbone": {"train": {"seq_len": 16, "batch_size": 2}},
    "train": {"seq_len": 16, "batch_size": 2},
}

G3: dict[str, Any] = {"gate": {"kind": "G3", "latent_dim": 8, "predictor_hidden": 16}}


def tiny_spec(update: dict[str, Any] | None = None) -> RunSpec:
    """The tiny run spec with ``update`` merged in (a gate ``kind`` change replaces the gate)."""
    return RunSpec.model_validate(deep_merge(TINY, update or {}))


def tokens(B: int, T: int, seed: int = 0, vocab: int = 256) -> torch.Tensor:
    """Deterministic random token ids (B, T)."""
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"
