"""The recipe's losses (docs/DESIGN.md, "Losses"):

    L = lm*LM + util*UTIL + rank*RANK + jepa*JEPA + budget*BUDGET

Shape legend: B batch, T tokens, V vocab, K latent.

Oracle utility label u_{l,t} (nats): how much token t's next-token loss rises when controlled layer l runs
``cheap`` instead of ``full`` for it. It is measured with two no-grad counterfactual continuations from the
hidden state entering layer l's FFN step, with layer l all-full and all-cheap:

    u_{l,t} = CE_t(layer l cheap, continuation) - CE_t(layer l full, continuation)

Layers before l keep the decisions of the routed forward. Later layers run ``full`` (off-policy, the
paper's labeling) or follow the current gates (on-policy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from specroute.model.decoder import Decoder, DecoderOutput
from specroute.model.routing import G3Gate, LayerRouting
from specroute.spec.models import LossSpec, OracleSpec, RunSpec


def token_ce(logits_BTV: Tensor, targets_BT: Tensor) -> Tensor:
    """Per-token next-token cross-entropy, (B, T, V), (B, T) -> (B, T) in nats."""
    B, T, V = logits_BTV.shape
    return F.cross_entropy(logits_BTV.float().reshape(B * T, V), targets_BT.reshape(B * T),
                           reduction="none").view(B, T)


def lm_loss(logits_BTV: Tensor, targets_BT: Tensor) -> Tensor:
    """Mean next-token cross-entropy (nats/token), a scalar."""
    return token_ce(logits_BTV, targets_BT).mean()


# --------------------------------------------------------------------------------------------------
# oracle


@torch.no_grad()
def oracle_labels(
    model: Decoder, out: DecoderOutput, targets_BT: Tensor, layers: list[int], labeling: str
) -> dict[int, Tensor]:
    """Batched oracle labels u_{l,t} for each controlled layer l in ``layers``.

    Args:
        model: the routed decoder that produced ``out``.
        out: the routed forward whose decisions fix the prefix (layers before l).
        targets_BT: next-token ids (B, T).
        layers: controlled layer indices to label.
        labeling: ``off_policy`` (later layers full) or ``on_policy`` (later layers follow the gates).
    Returns:
        {layer: u (B, T) float32, nats}. The two continuations run stacked as one batch of 2B, except under
        ``topk_batch`` on-policy, whose budget couples the sequences of a batch (they run apart).
    Raises:
        ValueError: a layer that is not controlled, or an unknown labeling.
    """
    if labeling not in ("off_policy", "on_policy"):
        raise ValueError(f"unknown labeling {labeling!r}")
    records = {rec.layer: rec for rec in out.routing}
    missing = [l for l in layers if l not in records]
    if missing:
        raise ValueError(f"layers {missing} are not controlled layers {sorted(records)}")
    off = labeling == "off_policy"
    apart = not off and model.spec.routing.budget.enforcement == "topk_batch"
    B = targets_BT.shape[0]
    labels = {}
    for layer in layers:
        rec = records[layer]
        block = model.blocks[layer]
        h_in = rec.h_in_BTD.detach()
        x = block.ln2(h_in)
        h_full, h_cheap = h_in + block.ffn(x), h_in + block.routed_ffn.cheap_branch(x)
        if apart:
            ce = [token_ce(model.head(model.run_blocks(h, layer + 1, all_full=off)[0]), targets_BT)
                  for h in (h_full, h_cheap)]
            ce_full, ce_cheap = ce
        else:
            h_end, _ = model.run_blocks(torch.cat([h_full, h_cheap]), layer + 1, all_full=off)
            ce = token_ce(model.head(h_end), targets_BT.repeat(2, 1))
            ce_full, ce_cheap = ce[:B], ce[B:]
        labels[layer] = ce_cheap - ce_full
    return labels


# --------------------------------------------------------------------------------------------------
# auxiliary losses


def util_loss(score_BT: Tensor, u_BT: Tensor, oracle: OracleSpec) -> Tensor:
    """UTIL: regression of the gate score on the oracle label (docs/DESIGN.md). Scalar, target units^2.

    ``standardized`` targets are (u - mean) / std over the labelled tokens (scale-free); ``raw`` are nats.
    """
    target = u_BT
    if oracle.util_target == "standardized":
        target = (u_BT - u_BT.mean()) / (u_BT.std(unbiased=False) + 1e-6)
    if oracle.util_loss == "huber":
        return F.huber_loss(score_BT, target, delta=oracle.huber_delta)
    return F.mse_loss(score_BT, target)


def rank_loss(
    score_BT: Tensor, u_BT: Tensor, oracle: OracleSpec, generator: torch.Generator | None = None
) -> Tensor:
    """RANK: pairwise logistic loss within each sequence (docs/DESIGN.md), a scalar in nats/pair.

    For pairs (i, j) with u_i - u_j > ``rank_margin``: softplus(-(s_i - s_j)), averaged over pairs. Pairs
    are all (i, j) of a sequence, or ``rank_pairs_per_token`` partners j drawn uniformly per token i.
    Returns 0 (with a graph) when no pair qualifies.
    """
    B, T = score_BT.shape
    if oracle.rank_pairs_per_token is None:
        du = u_BT[:, :, None] - u_BT[:, None, :]
        ds = score_BT[:, :, None] - score_BT[:, None, :]
    else:
        # drawn on the CPU (where the run's generator lives), then moved: same pairs on any device
        j = torch.randint(0, T, (B, T, oracle.rank_pairs_per_token), generator=generator)
        j = j.to(score_BT.device)
        du = u_BT[:, :, None] - torch.gather(u_BT, 1, j.view(B, -1)).view(j.shape)
        ds = score_BT[:, :, None] - torch.gather(score_BT, 1, j.view(B, -1)).view(j.shape)
    mask = du > oracle.rank_margin
    if not mask.any():
        return score_BT.sum() * 0.0
    return F.softplus(-ds[mask]).mean()


def executed_latent(rec: LayerRouting) -> Tensor | None:
    """G3's predicted latent of the action each token executed: ``pred_full`` where the token ran full,
    ``pred_cheap`` where it ran cheap, (B, T, K); None for a layer without predicted latents (G1)."""
    if rec.gate is None or rec.gate.pred_full_BTK is None:
        return None
    return torch.where(rec.full_BT.unsqueeze(-1), rec.gate.pred_full_BTK, rec.gate.pred_cheap_BTK)


def jepa_loss(model: Decoder, routing: list[LayerRouting]) -> Tensor:
    """JEPA: MSE between the predicted latent of the executed action and the fixed target latent
    T(sg(h_after)), averaged over G3 layers, tokens and latent dims (docs/DESIGN.md, "Gates")."""
    terms = []
    for rec in routing:
        gate = model.blocks[rec.layer].routed_ffn.gate
        pred = executed_latent(rec)
        if not isinstance(gate, G3Gate) or pred is None:
            continue
        terms.append(F.mse_loss(pred, gate.target_latent(rec.h_out_BTD)))
    if not terms:
        raise ValueError("jepa loss needs G3 gates with scores in the forward")
    return torch.stack(terms).mean()


#: Temperature of the smoothed full share in BUDGET: a fraction of the layer's score spread (std) ...
BUDGET_TEMPERATURE = 0.1
#: ... plus a fraction of the distance from the threshold to the nearest score (0 once scores straddle it).
BUDGET_REACH = 0.25


def budget_loss(routing: list[LayerRouting], full_fraction: float) -> Tensor:
    """BUDGET: mean over controlled layers of (smoothed full share - b)^2 (threshold mode).

    The full share of a threshold layer is mean_t 1[score > 0]; its smooth stand-in is
    mean_t sigmoid(score / tau), tau = BUDGET_TEMPERATURE * std(score) + BUDGET_REACH * min_t |score|
    (no gradient through tau), so the loss steers the *realised* share toward b whatever the scale of the
    scores. The second part of tau keeps the gradient alive when every token sits on one side of the
    threshold (then the spread says nothing about the distance to it); it is ~0 once the scores straddle
    0. (The mean of sigmoid(score) is a different quantity: it can sit at b while the realised share is
    far off.)
    """
    terms = []
    for r in routing:
        if r.gate is None:
            continue
        s = r.gate.score_BT.detach().float()
        tau = (BUDGET_TEMPERATURE * s.std(unbiased=False) + BUDGET_REACH * s.abs().min()).clamp_min(1e-6)
        terms.append((torch.sigmoid(r.gate.score_BT / tau).mean() - full_fraction) ** 2)
    return torch.stack(terms).mean()


# --------------------------------------------------------------------------------------------------
# the recipe


@dataclass
class LossTerms:
    """total: the weighted scalar to backprop; parts: each term's value (floats, unweighted);
    labels: oracle labels computed this step {layer: (B, T)}; out: the routed forward."""

    total: Tensor
    parts: dict[str, float]
    out: DecoderOutput
    labels: dict[int, Tensor] = field(default_factory=dict)


def sample_label_layers(spec: RunSpec, generator: torch.Generator | None = None) -> list[int]:
    """Controlled layers that get oracle labels this step: ``layers_per_step`` drawn uniformly
    without replacement (all of them if null or larger than their number), in layer order."""
    layers = list(spec.routing.controlled_layers)
    k = spec.loss.oracle.layers_per_step
    if k is None or k >= len(layers):
        return layers
    pick = torch.randperm(len(layers), generator=generator)[:k].sort().values
    return [layers[i] for i in pick.tolist()]


def compute_losses(
    model: Decoder,
    idx_BT: Tensor,
    targets_BT: Tensor,
    spec: RunSpec,
    generator: torch.Generator | None = None,
) -> LossTerms:
    """One routed forward plus every term of the recipe whose weight is non-zero.

    Args: token ids and next-token targets, (B, T) each. ``generator`` drives layer and pair sampling.
    Returns: :class:`LossTerms`; ``parts['lm']`` is the LM loss in nats/token.
    """
    w: LossSpec = spec.loss
    out = model(idx_BT)
    lm = lm_loss(out.logits_BTV, targets_BT)
    total = w.lm * lm
    parts = {"lm": lm.item()}
    labels: dict[int, Tensor] = {}
    if w.uses_oracle:
        layers = sample_label_layers(spec, generator)
        labels = oracle_labels(model, out, targets_BT, layers, w.oracle.labeling)
        scores = {r.layer: r.gate.score_BT for r in out.routing}
        if w.util > 0:
            util = torch.stack([util_loss(scores[l], u, w.oracle) for l, u in labels.items()]).mean()
            total = total + w.util * util
            parts["util"] = util.item()
        if w.rank > 0:
            rank = torch.stack([rank_loss(scores[l], u, w.oracle, generator) for l, u in labels.items()]).mean()
            total = total + w.rank * rank
            parts["rank"] = rank.item()
    if w.jepa > 0:
        jepa = jepa_loss(model, out.routing)
        total = total + w.jepa * jepa
        parts["jepa"] = jepa.item()
    if w.budget > 0:
        budget = budget_loss(out.routing, spec.routing.budget.full_fraction)
        total = total + w.budget * budget
        parts["budget"] = budget.item()
    return LossTerms(total, parts, out, labels)
