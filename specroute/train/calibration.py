"""Causal evaluation of a top-k gate: a score threshold per controlled layer, calibrated to the budget.

Top-k routing (``topk_sequence``, ``topk_batch``) decides token t by ranking it against later tokens, so a
model trained with it cannot run causally (generation) as it is. Its causal rule: full iff score > tau_l,
where tau_l is the (1 - b) quantile of the gate's scores at controlled layer l on a fixed set of training
batches (``routing.budget.calibration_batches``). The layers are calibrated in order, each on the hidden
states of the causal model: layer l's scores come from a forward in which the layers before it already
decide by their tau, so what tau_l is fitted to is what it sees when the whole model runs by the rule.
Then the share of full tokens on the calibration data is the budget at every layer (b up to 1/N of N
scores; ties aside), and on other text whatever the scores make it (the report's realised full share).

A threshold budget needs none of this: its own rule (score > 0) is causal, and it is evaluated natively.

Shape legend: B batch, T tokens, N calibration tokens (all batches' B * T).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from specroute.model.decoder import Decoder, DecoderOutput, Thresholds
from specroute.spec.models import RunSpec
from specroute.store import UserError

#: The file beside a run's ``controller.safetensors`` that holds its calibrated thresholds.
THRESHOLDS_FILE = "thresholds.json"
#: torch.quantile's input limit (elements).
QUANTILE_MAX = 1 << 24


def calibrates(spec: RunSpec) -> bool:
    """Whether a run of ``spec`` is also evaluated by a calibrated threshold: a top-k budget (a threshold
    budget is causal as it is) with ``routing.budget.calibration_batches`` > 0."""
    budget = spec.routing.budget
    return not budget.causal and budget.calibration_batches > 0


@dataclass
class Calibration:
    """Calibrated thresholds of one model.

    thresholds: tau_l by controlled layer (block index), in score (logit) units; full iff score > tau_l.
    full_fraction: the share of full tokens that rule gives on the calibration data, by layer (0..1).
    tokens: N, the calibration tokens per layer.
    """

    thresholds: dict[int, float]
    full_fraction: dict[int, float]
    tokens: int

    def as_dict(self) -> dict[str, Any]:
        """JSON form (layer keys as strings): {"thresholds", "calibration_full_fraction", "tokens"}."""
        return {"thresholds": {str(k): v for k, v in self.thresholds.items()},
                "calibration_full_fraction": {str(k): v for k, v in self.full_fraction.items()},
                "tokens": self.tokens}


@torch.no_grad()
def calibrate(model: Decoder, batches: list[Tensor], full_fraction: float,
              forward: Callable[..., DecoderOutput] | None = None) -> Calibration:
    """Calibrate tau_l layer by layer (see the module docstring) on token ids ``batches`` ((B, T) each).

    ``full_fraction``: the budget b; tau_l = quantile(scores_l, 1 - b) (linear interpolation, over at most
    :data:`QUANTILE_MAX` scores). Costs one no-grad forward per batch and controlled layer. ``forward``:
    ``(idx_BT, thresholds=...) -> DecoderOutput``, the model's own forward by default (a stage's forward
    from cached frozen hidden states: :class:`specroute.train.stages.FrozenPrefix`).
    """
    forward = forward or model
    thresholds: dict[int, float] = {}
    shares: dict[int, float] = {}
    n = 0
    q = torch.tensor(1.0 - full_fraction)
    for block in model.controlled_blocks():
        scores = []
        for idx_BT in batches:
            out = forward(idx_BT, thresholds=thresholds)  # this layer's scores depend on the earlier ones only
            rec = next(r for r in out.routing if r.layer == block.index)
            scores.append(rec.gate.score_BT.reshape(-1).float().cpu())
        score_N = torch.cat(scores)[:QUANTILE_MAX]
        tau = torch.quantile(score_N, q).item()
        thresholds[block.index] = tau
        shares[block.index] = (score_N > tau).float().mean().item()
        n = score_N.numel()
    return Calibration(thresholds, shares, n)


def thresholds_record(spec: RunSpec, causal: dict[str, Any]) -> dict[str, Any]:
    """What a run's ``thresholds.json`` holds: the rule, the budget b, ``thresholds`` (tau per controlled
    layer, string keys), ``calibration_full_fraction`` and ``tokens`` of its last evaluation's ``causal``
    record (:meth:`specroute.train.stages.ControllerStage.evaluate_causal`)."""
    return {"rule": "full iff score > tau_l, tau_l calibrated to the budget on training batches",
            "full_fraction": spec.routing.budget.full_fraction,
            **{k: causal[k] for k in ("thresholds", "calibration_full_fraction", "tokens")}}


def load_thresholds(path: Path) -> Thresholds:
    """Read the thresholds of a ``thresholds.json`` ({layer index: tau}). Raises UserError naming the file
    when it cannot be read or holds no thresholds."""
    try:
        data = json.loads(path.read_text())
        return {int(k): float(v) for k, v in data["thresholds"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: not a readable thresholds file ({type(e).__name__}: {e})") from None
