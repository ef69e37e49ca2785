"""The recipe's losses (docs/DESIGN.md, "Losses"):

    L = lm*LM + util*UTIL + rank*RANK + jepa*JEPA + budget*BUDGET

Shape legend: B batch, T tokens, V vocab, K latent.

Oracle utility label u_{l,t} (nats): how much token t's next-token loss rises when controlled layer l runs
``cheap`` instead of ``full`` for it. It is measured with two no-grad counterfactual continuations from the
hidden state entering layer l's FFN step, with layer l all-full and all-cheap:

    u_{l,t} = CE_t(layer l cheap, continuation) - CE_t(layer l full, continuation)

Layers before l keep the decisions of the routed forward. Later layers run ``full`` (off-policy, the
paper's labeling) or follow the current gates (on-policy). That is the ``all_flip`` counterfactual: every
token of layer l flips at once, so through attention in the later layers token t's label also carries the
other tokens' flips.

The ``per_token`` counterfactual (``loss.oracle.counterfactual``) flips one token at a time. With d the
gate's decisions at layer l for a sequence and d[t <- a] the same with token t set to action a (every
other token keeps the gate's decision at l; earlier and later layers as above):

    u_{l,t} = sum_s [ CE_s(d[t <- cheap]) - CE_s(d[t <- full]) ]            (per_token)

the change of the sequence's summed next-token loss, over every position s. One of the two decision sets
is d itself, so a sequence needs one continuation with the gate's decisions plus one per labelled token.
With causal attention positions s < t cannot see the flip, so their terms are 0 and the sum runs over
s >= t, except under on-policy top-k: a later layer's top-k ranks the whole row, so the flip can change
decisions (and losses) before t. The sum, rather than token t's own loss, is the decision's whole effect
on the LM objective (the flip reaches every later token through attention), and it is what top-k should
rank by: to first order the loss of a set of decisions is the sum of these labels. The own-loss part is
returned beside it (:class:`TokenLabels`), which is what the all-flip label measures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from specroute.model.decoder import Decoder, DecoderOutput
from specroute.model.routing import G3Gate, LayerRouting
from specroute.spec.controller import LossSpec, OracleSpec
from specroute.spec.models import RunSpec


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
    """Batched ``all_flip`` oracle labels u_{l,t} for each controlled layer l in ``layers``.

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
    records = _records(out, layers, labeling)
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


@dataclass
class TokenLabels:
    """Exact one-token labels of one controlled layer (``per_token``, see the module docstring).

    pos_BS: the labelled positions, (B, S) long, ascending in each row; u_BS: their labels, (B, S) float32,
    nats summed over the sequence's positions; own_BS: the flipped token's own next-token part of u_BS,
    (B, S) float32 nats (what an all-flip label measures, without the other tokens' flips).
    """

    pos_BS: Tensor
    u_BS: Tensor
    own_BS: Tensor


def sample_label_tokens(
    B: int, T: int, tokens_per_sequence: int, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Positions that get ``per_token`` labels: S = min(tokens_per_sequence, T) per sequence, uniform
    without replacement, ascending, (B, S) long on ``device``. Every position (no draw) when S >= T.
    Drawn on the CPU, where the run's generator lives, then moved: the same positions on any device."""
    if tokens_per_sequence >= T:
        return torch.arange(T, device=device).expand(B, T).clone()
    pos = torch.rand(B, T, generator=generator).argsort(dim=1)[:, :tokens_per_sequence]
    return pos.sort(dim=1).values.to(device)


@torch.no_grad()
def per_token_labels(
    model: Decoder,
    out: DecoderOutput,
    targets_BT: Tensor,
    layers: list[int],
    labeling: str,
    tokens_per_sequence: int,
    generator: torch.Generator | None = None,
    positions: dict[int, Tensor] | None = None,
) -> dict[int, TokenLabels]:
    """Batched exact one-token labels u_{l,t} (``per_token``, the module docstring's equation).

    For each layer the batch is expanded to B * (S + 1) rows: per sequence one row with the gate's
    decisions at layer l and S rows each with one sampled token flipped; all rows continue from layer l
    in one batch (no loop over tokens). Whole rows run: under causal attention positions before the
    flipped token are recomputed unchanged (their terms are left out of the sum).

    Args:
        model, out, targets_BT, labeling: as :func:`oracle_labels`.
        tokens_per_sequence: S, labelled tokens per sequence (every token if S >= T).
        generator: draws the positions (:func:`sample_label_tokens`), one draw per layer in layer order.
        positions: {layer: (B, S) positions} to label instead of drawing them.
    Returns:
        {layer: :class:`TokenLabels`}.
    Raises:
        ValueError: a layer that is not controlled, an unknown labeling, or on-policy labels under a
            ``topk_batch`` budget (one token's flip moves every sequence's later decisions).
    """
    records = _records(out, layers, labeling)
    off = labeling == "off_policy"
    enforcement = model.spec.routing.budget.enforcement
    if not off and enforcement == "topk_batch":
        raise ValueError("per_token on-policy labels need a per-sequence budget (topk_sequence or threshold), "
                         "not topk_batch")
    causal = off or enforcement == "threshold"  # else a later top-k can change decisions before t
    B, T = targets_BT.shape
    device = targets_BT.device
    labels = {}
    for layer in layers:
        rec = records[layer]
        pos_BS = (positions[layer].to(device) if positions is not None
                  else sample_label_tokens(B, T, tokens_per_sequence, generator, device))
        S = pos_BS.shape[1]
        block = model.blocks[layer]
        h_in = rec.h_in_BTD.detach()
        x = block.ln2(h_in)
        h_full, h_cheap = h_in + block.ffn(x), h_in + block.routed_ffn.cheap_branch(x)
        flip_BST = torch.arange(T, device=device) == pos_BS[..., None]
        full_BRT = torch.cat([rec.full_BT[:, None], rec.full_BT[:, None] != flip_BST], dim=1)  # R = 1 + S rows
        h_rows = torch.where(full_BRT[..., None], h_full[:, None], h_cheap[:, None]).flatten(0, 1)
        h_end, _ = model.run_blocks(h_rows, layer + 1, all_full=off)
        # the head in chunks of B rows: the logits never take more memory than one forward's
        rows = zip(h_end.split(B), targets_BT.repeat_interleave(S + 1, dim=0).split(B))
        ce_BRT = torch.cat([token_ce(model.head(h), t) for h, t in rows]).view(B, S + 1, T)
        delta_BST = ce_BRT[:, 1:] - ce_BRT[:, :1]  # CE_s(one token flipped) - CE_s(the gate's decisions)
        if causal:
            after_BST = torch.arange(T, device=device) >= pos_BS[..., None]
            delta_BST = torch.where(after_BST, delta_BST, torch.zeros_like(delta_BST))
        # a full token flipped to cheap gives +(cheap - full); a cheap one flipped to full, -(full - cheap)
        sign_BS = torch.where(rec.full_BT.gather(1, pos_BS), 1.0, -1.0)
        own_BS = delta_BST.gather(2, pos_BS[..., None]).squeeze(-1)
        labels[layer] = TokenLabels(pos_BS, sign_BS * delta_BST.sum(-1), sign_BS * own_BS)
    return labels


def _records(out: DecoderOutput, layers: list[int], labeling: str) -> dict[int, LayerRouting]:
    """The routing records of ``layers``; ValueError on an unknown labeling or a layer not controlled."""
    if labeling not in ("off_policy", "on_policy"):
        raise ValueError(f"unknown labeling {labeling!r}")
    records = {rec.layer: rec for rec in out.routing}
    missing = [l for l in layers if l not in records]
    if missing:
        raise ValueError(f"layers {missing} are not controlled layers {sorted(records)}")
    return records


# --------------------------------------------------------------------------------------------------
# auxiliary losses


def util_loss(score_BT: Tensor, u_BT: Tensor, oracle: OracleSpec) -> Tensor:
    """UTIL: regression of the gate score on the oracle label (docs/DESIGN.md). Scalar, target units^2.

    ``standardized`` targets are (u - mean) / std over the labelled tokens (scale-free); ``raw`` are nats.
    Shapes (B, T), or under ``per_token`` labels (B, S): the labelled tokens only.
    """
    return util_error(score_BT, util_target(u_BT, oracle), oracle, "mean")


def util_target(u_BT: Tensor, oracle: OracleSpec) -> Tensor:
    """UTIL's regression target, same shape as ``u_BT``: the labels standardised over every token of ``u_BT``
    (``standardized``) or as they are (``raw``, nats)."""
    if oracle.util_target == "standardized":
        return (u_BT - u_BT.mean()) / (u_BT.std(unbiased=False) + 1e-6)
    return u_BT


def util_error(score_BT: Tensor, target_BT: Tensor, oracle: OracleSpec, reduction: str) -> Tensor:
    """The squared (``mse``) or Huber error of the scores on the targets, ``mean`` or ``sum`` over tokens."""
    if oracle.util_loss == "huber":
        return F.huber_loss(score_BT, target_BT, delta=oracle.huber_delta, reduction=reduction)
    return F.mse_loss(score_BT, target_BT, reduction=reduction)


def rank_loss(
    score_BT: Tensor, u_BT: Tensor, oracle: OracleSpec, generator: torch.Generator | None = None
) -> Tensor:
    """RANK: pairwise logistic loss within each sequence (docs/DESIGN.md), a scalar in nats/pair.

    ``score_BT`` and ``u_BT`` are (B, T), or under ``per_token`` labels (B, S): the labelled tokens only.

    For pairs (i, j) with u_i - u_j > ``rank_margin``: softplus(-(s_i - s_j)), averaged over pairs. Pairs
    are all (i, j) of a sequence, or ``rank_pairs_per_token`` partners j drawn uniformly per token i.
    Returns 0 (with a graph) when no pair qualifies.
    """
    partners = rank_partners(*score_BT.shape, oracle, generator)
    ds, mask = rank_pairs(score_BT, u_BT, oracle, partners)
    if not mask.any():
        return score_BT.sum() * 0.0
    return F.softplus(-ds[mask]).mean()


def rank_partners(B: int, T: int, oracle: OracleSpec, generator: torch.Generator | None = None) -> Tensor | None:
    """RANK's sampled partners: (B, T, P) long positions j, ``P = rank_pairs_per_token`` uniform draws per
    token, on the CPU (where the run's generator lives: the same pairs on any device); None under all pairs."""
    if oracle.rank_pairs_per_token is None:
        return None
    return torch.randint(0, T, (B, T, oracle.rank_pairs_per_token), generator=generator)


def rank_pairs(score_BT: Tensor, u_BT: Tensor, oracle: OracleSpec, partners_BTP: Tensor | None
               ) -> tuple[Tensor, Tensor]:
    """The score differences s_i - s_j of RANK's pairs and which pairs qualify (u_i - u_j > ``rank_margin``):
    (B, T, T) each under all pairs (``partners_BTP`` None), else (B, T, P) for the partners given."""
    if partners_BTP is None:
        du = u_BT[:, :, None] - u_BT[:, None, :]
        ds = score_BT[:, :, None] - score_BT[:, None, :]
    else:
        B = score_BT.shape[0]
        j = partners_BTP.to(score_BT.device)
        du = u_BT[:, :, None] - torch.gather(u_BT, 1, j.view(B, -1)).view(j.shape)
        ds = score_BT[:, :, None] - torch.gather(score_BT, 1, j.view(B, -1)).view(j.shape)
    return ds, du > oracle.rank_margin


def executed_latent(rec: LayerRouting) -> Tensor | None:
    """G3's predicted latent of the action each token executed: ``pred_full`` where the token ran full,
    ``pred_cheap`` where it ran cheap, (B, T, K); None for a layer without predicted latents (G1)."""
    if rec.gate is None or rec.gate.pred_full_BTK is None:
        return None
    return torch.where(rec.full_BT.unsqueeze(-1), rec.gate.pred_full_BTK, rec.gate.pred_cheap_BTK)


def jepa_loss(model: Decoder, routing: list[LayerRouting]) -> Tensor:
    """JEPA: MSE between the predicted latent of the executed action and the fixed target latent of its
    outcome (T(sg(h_after)) by default; the gate's ``target``, :meth:`G3Gate.target_latent`), averaged over
    G3 layers, tokens and latent dims (docs/DESIGN.md, "Gates")."""
    terms = []
    for rec in routing:
        gate = model.blocks[rec.layer].routed_ffn.gate
        pred = executed_latent(rec)
        if not isinstance(gate, G3Gate) or pred is None:
            continue
        terms.append(F.mse_loss(pred, gate.target_latent(rec.h_in_BTD, rec.h_out_BTD)))
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
        tau = budget_temperature(r.gate.score_BT)
        terms.append((torch.sigmoid(r.gate.score_BT / tau).mean() - full_fraction) ** 2)
    return torch.stack(terms).mean()


def budget_temperature(score_BT: Tensor) -> Tensor:
    """BUDGET's tau over the scores given (no gradient): BUDGET_TEMPERATURE * std + BUDGET_REACH * min |score|."""
    s = score_BT.detach().float()
    return (BUDGET_TEMPERATURE * s.std(unbiased=False) + BUDGET_REACH * s.abs().min()).clamp_min(1e-6)


# --------------------------------------------------------------------------------------------------
# the recipe


#: The recipe's terms, in the order of the equation (the names of ``LossSpec``'s weights and of every record).
LOSS_TERMS = ("lm", "util", "rank", "jepa", "budget")


@dataclass
class LossTerms:
    """total: the weighted scalar to backprop; parts: each term's value (floats, unweighted);
    labels: oracle labels computed this step, {layer: (B, T)} (all_flip) or {layer: (B, S)} (per_token);
    label_positions: per_token only, {layer: the labelled positions (B, S)}; out: the routed forward;
    weighted: each term as it enters the total, weight x term (scalar tensors with their graphs), for the
    terms of non-zero weight (``lm``, ``util``, ``rank``, ``jepa``, ``budget``): ``total`` is their sum."""

    total: Tensor
    parts: dict[str, float]
    out: DecoderOutput
    labels: dict[int, Tensor] = field(default_factory=dict)
    label_positions: dict[int, Tensor] = field(default_factory=dict)
    weighted: dict[str, Tensor] = field(default_factory=dict)


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
    Returns: :class:`LossTerms`; ``parts['lm']`` is the LM loss in nats/token, ``weighted`` each term of
    non-zero weight as it enters ``total``.
    """
    w: LossSpec = spec.loss
    out = model(idx_BT)
    lm = lm_loss(out.logits_BTV, targets_BT)
    total = w.lm * lm
    parts = {"lm": lm.item()}
    weighted = {"lm": total} if w.lm > 0 else {}
    labels: dict[int, Tensor] = {}
    positions: dict[int, Tensor] = {}
    if w.uses_oracle:
        layers = sample_label_layers(spec, generator)
        scores = {r.layer: r.gate.score_BT for r in out.routing}
        if w.oracle.counterfactual == "per_token":
            exact = per_token_labels(model, out, targets_BT, layers, w.oracle.labeling,
                                     w.oracle.tokens_per_sequence, generator)
            labels = {l: e.u_BS for l, e in exact.items()}
            positions = {l: e.pos_BS for l, e in exact.items()}
            scores = {l: scores[l].gather(1, p) for l, p in positions.items()}  # only labelled tokens enter
        else:
            labels = oracle_labels(model, out, targets_BT, layers, w.oracle.labeling)
        if w.util > 0:
            util = torch.stack([util_loss(scores[l], u, w.oracle) for l, u in labels.items()]).mean()
            weighted["util"] = w.util * util
            total = total + weighted["util"]
            parts["util"] = util.item()
        if w.rank > 0:
            rank = torch.stack([rank_loss(scores[l], u, w.oracle, generator) for l, u in labels.items()]).mean()
            weighted["rank"] = w.rank * rank
            total = total + weighted["rank"]
            parts["rank"] = rank.item()
    if w.jepa > 0:
        jepa = jepa_loss(model, out.routing)
        weighted["jepa"] = w.jepa * jepa
        total = total + weighted["jepa"]
        parts["jepa"] = jepa.item()
    if w.budget > 0:
        budget = budget_loss(out.routing, spec.routing.budget.full_fraction)
        weighted["budget"] = w.budget * budget
        total = total + weighted["budget"]
        parts["budget"] = budget.item()
    return LossTerms(total, parts, out, labels, positions, weighted)
