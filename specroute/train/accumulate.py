"""One optimiser step's gradient from micro-batches (``train.grad_accum_steps``) and processes (data
parallel, :mod:`specroute.train.distributed`), equal to the whole batch's within float tolerance.

Shape legend: B the global batch, b a micro-batch, T tokens, L labelled tokens per sequence (T, or S under
``per_token`` labels), P rank partners per token.

The recipe's terms (:func:`specroute.losses.compute_losses`) are means over the whole batch, and some hold
batch-level statistics. Each micro-batch's backward carries its share of the whole-batch loss:

- LM and JEPA are means over tokens (and latent dims): micro-batch mean x b / B.
- UTIL regresses on targets standardised over the labelled tokens of the batch: the targets are computed
  from the whole batch's labels, and each micro-batch adds its summed error / the batch's token count.
- RANK averages over the qualifying pairs of the batch: each micro-batch adds its pairs' summed loss / the
  batch's qualifying-pair count (the pairs lie within a sequence, so a micro-batch holds all of its own).
- BUDGET is (share - b)^2 of the batch's smoothed full share, its temperature from the batch's scores:
  each micro-batch adds 2 (share - b) x its summed sigmoid(score / tau) / the batch's token count, whose
  gradients sum to the whole term's (the chain rule through the share); the logged value is the batch's.

So the step first runs every micro-batch without a gradient: the oracle labels (which depend only on the
sequence under a per-sequence budget) and the scores, gathered over the processes, give the batch's
statistics; then it runs each micro-batch again with its gradient. The random draws (labelled layers,
``per_token`` positions, rank partners) are made once for the whole batch, in the order
``compute_losses`` makes them, and sliced. Not under ``topk_batch`` enforcement, whose top-k over a
micro-batch is a different rule (the spec refuses it).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specroute.losses import (budget_temperature, jepa_loss, lm_loss, oracle_labels, per_token_labels, rank_pairs,
                              rank_partners, sample_label_layers, sample_label_tokens, util_error, util_target)
from specroute.model.decoder import Decoder
from specroute.spec.models import RunSpec
from specroute.train.device import Device
from specroute.train.distributed import BatchSplit
from specroute.train.step import group_norms, term_grad


def micro_batches(x_bT: Tensor, split: BatchSplit) -> list[Tensor]:
    """This process's rows cut into ``split.micro_batches`` micro-batches."""
    return list(x_bT.split(split.rows_per_micro))


def dense_backward(loss_of: Any, idx_BT: Tensor, targets_BT: Tensor, split: BatchSplit,
                   device: Device) -> dict[str, Any]:
    """Backward of the LM loss of this process's rows (``loss_of(idx, targets)``, nats/token), micro-batch by
    micro-batch, each weighted b / B; returns the whole batch's ``loss`` and ``lm``."""
    share = split.rows_per_micro / split.batch_size
    lm = torch.zeros((), device=idx_BT.device)
    for idx, targets in zip(micro_batches(idx_BT, split), micro_batches(targets_BT, split)):
        with device.autocast():
            part = loss_of(idx, targets) * share
        part.backward()
        lm += part.detach().float()
    value = split.world.sum(lm).item()
    return {"loss": value, "lm": value}


def controller_backward(model: Decoder, idx_BT: Tensor, targets_BT: Tensor, spec: RunSpec,
                        generator: torch.Generator, split: BatchSplit, device: Device,
                        term_groups: dict[str, list[nn.Parameter]] | None = None) -> dict[str, Any]:
    """Backward of the recipe's total loss on this process's rows (b-row micro-batches of ``idx_BT`` /
    ``targets_BT``, this process's (B / world, T) rows of the global batch), as the whole batch's
    (the module docstring). Returns the step's record as :meth:`ControllerStage.loss` does: ``loss``, each
    term (unweighted), ``full_fraction`` per controlled layer and, given ``term_groups`` ({group: params}),
    ``loss_grad_norm`` ({group: {term: norm, "total": norm}} of the weighted terms' gradients)."""
    w, world = spec.loss, split.world
    B, T = split.batch_size, idx_BT.shape[1]
    idx_m, targets_m = micro_batches(idx_BT, split), micro_batches(targets_BT, split)
    # the whole batch's draws, in the order compute_losses makes them
    layers = sample_label_layers(spec, generator) if w.uses_oracle else []
    per_token = w.oracle.counterfactual == "per_token"
    positions = {l: sample_label_tokens(B, T, w.oracle.tokens_per_sequence, generator) for l in layers} \
        if per_token else {}
    L = min(w.oracle.tokens_per_sequence, T) if per_token else T
    partners = {l: rank_partners(B, L, w.oracle, generator) for l in layers} if w.rank > 0 else {}

    # pass 1, no gradient: the batch's labels and scores
    labels_parts: dict[int, list[Tensor]] = {l: [] for l in layers}
    score_parts: dict[int, list[Tensor]] = {}
    if layers or w.budget > 0:
        with torch.no_grad(), device.autocast():
            for i, (idx, targets) in enumerate(zip(idx_m, targets_m)):
                out = model(idx)
                rows = split.micro_rows(i)
                if per_token:
                    exact = per_token_labels(model, out, targets, layers, w.oracle.labeling,
                                             w.oracle.tokens_per_sequence, positions={l: p[rows] for l, p in positions.items()})
                    for l, e in exact.items():
                        labels_parts[l].append(e.u_BS)
                elif layers:
                    for l, u in oracle_labels(model, out, targets, layers, w.oracle.labeling).items():
                        labels_parts[l].append(u)
                if w.budget > 0:
                    for r in out.routing:
                        if r.gate is not None:
                            score_parts.setdefault(r.layer, []).append(r.gate.score_BT.float())
    u_BL = {l: world.gather_rows(torch.cat(ps)) for l, ps in labels_parts.items()}
    target_BL = {l: util_target(u, w.oracle) for l, u in u_BL.items()} if w.util > 0 else {}
    pairs = {l: rank_pairs(u, u, w.oracle, partners[l])[1].sum().item() for l, u in u_BL.items()} if w.rank > 0 else {}
    tau, share_coef, budget_value = {}, {}, None
    if w.budget > 0:
        b, sq = spec.routing.budget.full_fraction, []
        for l, ps in score_parts.items():
            s_BT = world.gather_rows(torch.cat(ps))
            tau[l] = budget_temperature(s_BT)
            share = torch.sigmoid(s_BT / tau[l]).mean()
            share_coef[l] = (2 * (share - b) / s_BT.numel()).item()
            sq.append((share - b) ** 2)
        budget_value = torch.stack(sq).mean()

    # pass 2: each micro-batch's share of the whole-batch loss, backward
    sums = {name: torch.zeros((), device=idx_BT.device) for name in ("lm", "util", "rank", "jepa")}
    full = {l: torch.zeros((), device=idx_BT.device) for l in spec.routing.controlled_layers}
    params = [p for ps in (term_groups or {}).values() for p in ps]
    term_grads: dict[str, list[Tensor]] = {}
    for i, (idx, targets) in enumerate(zip(idx_m, targets_m)):
        rows = split.micro_rows(i)
        with device.autocast():
            out = model(idx)
            parts = {"lm": lm_loss(out.logits_BTV, targets) * (split.rows_per_micro / B)}
            gate_scores = {r.layer: r.gate.score_BT for r in out.routing if r.gate is not None}
            scores = gate_scores
            if per_token:
                scores = {l: gate_scores[l].gather(1, positions[l][rows].to(idx.device)) for l in layers}
            if w.util > 0:
                parts["util"] = torch.stack([util_error(scores[l].float(), target_BL[l][rows], w.oracle, "sum")
                                             / target_BL[l].numel() for l in layers]).mean()
            if w.rank > 0:
                parts["rank"] = torch.stack([_rank_share(scores[l], u_BL[l][rows], partners[l], rows, w.oracle,
                                                         pairs[l]) for l in layers]).mean()
            if w.jepa > 0:
                parts["jepa"] = jepa_loss(model, out.routing) * (split.rows_per_micro / B)
            if w.budget > 0:
                parts["budget"] = torch.stack([share_coef[l] * torch.sigmoid(gate_scores[l] / tau[l]).sum()
                                               for l in tau]).mean()
        weighted = {name: getattr(w, name) * v for name, v in parts.items() if getattr(w, name) > 0}
        if params:
            for name, term in weighted.items():
                grads = term_grad(term, params)
                acc = term_grads.setdefault(name, [torch.zeros_like(p) for p in params])
                for a, g in zip(acc, grads):
                    a.add_(g)
        # the LM term enters even at weight 0, as in compute_losses (a zero gradient is not a missing one)
        (w.lm * parts["lm"] + sum(v for n, v in weighted.items() if n != "lm")).backward()
        for name in sums:
            if name in parts:
                sums[name] += parts[name].detach().float()
        for r in out.routing:
            full[r.layer] += r.full_BT.float().mean() / (split.micro_batches * world.size)
    names = [n for n in sums if n in parts]
    values = world.sum(torch.stack([sums[n] for n in names] + list(full.values()))).tolist()
    record_parts = dict(zip(names, values[:len(names)]))
    if budget_value is not None:
        record_parts["budget"] = budget_value.item()
    total = sum(getattr(w, n) * v for n, v in record_parts.items())
    record: dict[str, Any] = {"loss": total, **record_parts,
                              "full_fraction": {str(l): v for l, v in zip(full, values[len(names):])}}
    if params:
        summed = {name: [world.sum(g) for g in grads] for name, grads in term_grads.items()}
        record["loss_grad_norm"] = group_norms(summed, term_groups)
    return record


def _rank_share(score_bL: Tensor, u_bL: Tensor, partners_BLP: Tensor | None, rows: slice, oracle: Any,
                pairs: float) -> Tensor:
    """A micro-batch's share of RANK: its qualifying pairs' summed softplus(-(s_i - s_j)) / the batch's count
    (0 with a graph when the batch has none, as :func:`specroute.losses.rank_loss`)."""
    ds, mask = rank_pairs(score_bL, u_bL, oracle, None if partners_BLP is None else partners_BLP[rows])
    if pairs == 0:
        return score_bL.sum() * 0.0
    return F.softplus(-ds[mask]).sum() / pairs
