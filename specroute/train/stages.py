"""The two stages as :class:`specroute.train.trainer.Stage` objects.

- :class:`DenseStage` (stage 1): the dense backbone, every parameter trained on the LM loss.
- :class:`ControllerStage` (stage 2): the routed model on the stage-1 backbone; the spec's ``trainable``
  groups are trained on the recipe of :func:`specroute.losses.compute_losses` (the backbone stays frozen
  unless ``backbone`` is one of them: joint training).

Both take a built model (and held-out batches to evaluate on, none for a training that is only stepped:
the throughput probe, the verifiers, the benchmark); :meth:`DenseStage.seeded` and
:meth:`ControllerStage.on_backbone` build a study's.

Both evaluate the held-out LM loss (nats/token) on fixed windows; the controller stage adds the realised
full fraction per controlled layer, the gate's score distribution and spread and, for G3, the predictor's
latent collapse metrics and the action dependence of predictor and target (:func:`gate_diagnostics`), and,
for a top-k gate, the causal evaluation: thresholds calibrated on fixed training batches, then held-out LM
and full share under the rule full iff score > tau_l (:mod:`specroute.train.calibration`).

Seeds: a run's seed is split into independent streams with :func:`derive_seed` — ``init`` (parameter
initialisation), ``data`` (window order), ``loss`` (oracle layer and rank pair sampling).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from specroute.data.sampler import WindowSampler
from specroute.losses import compute_losses, executed_latent, head_token_ce
from specroute.metrics import effective_rank, latent_variance
from specroute.model.decoder import Decoder, DecoderOutput, build_model
from specroute.model.routing import G3Gate, LayerRouting
from specroute.spec.models import RunSpec
from specroute.spec.training import TrainSpec
from specroute.train.compiled import compile_model, is_compiled
from specroute.train.accumulate import controller_backward, dense_backward
from specroute.train.calibration import calibrate, calibrates
from specroute.train.device import Device
from specroute.train.distributed import BatchSplit
from specroute.train.step import term_grad_norms

#: Tokens (rows) of predicted latents used for the collapse metrics at each evaluation.
LATENT_TOKENS = 8192
#: The most hidden-state memory :class:`FrozenPrefix` keeps (bytes; beyond it every forward runs whole).
PREFIX_MAX_BYTES = 64 << 20


def derive_seed(seed: int, purpose: str) -> int:
    """An independent 63-bit seed for one purpose (``init``, ``data``, ``loss``) of a run's seed."""
    digest = hashlib.sha256(f"specroute/{seed}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def build_seeded(spec: RunSpec, seed: int, routed: bool) -> Decoder:
    """Build the model on the CPU with its initialisation drawn from ``derive_seed(seed, "init")``,
    leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        return build_model(spec, routed=routed)


def seeded_model(spec: RunSpec, seed: int, routed: bool = True) -> Decoder:
    """Build the model on the CPU after ``torch.manual_seed(seed)`` (the global RNG: the verifiers' and the
    benchmark's models; a study's come from :func:`build_seeded`)."""
    torch.manual_seed(seed)
    return build_model(spec, routed=routed)


def eval_batches(heldout: WindowSampler, train: TrainSpec, device: Device) -> list[tuple[Tensor, Tensor]]:
    return [(i.to(device.torch), t.to(device.torch)) for i, t in heldout.fixed(train.eval_batches, train.batch_size)]


class DenseStage:
    """Every parameter trained on the LM loss (stage 1; also the benchmark's full-parameter steps).

    Args:
        model: the model to train, on ``device``. train: the stage's settings (steps, optimiser, clip).
        batches: held-out (idx_BT, targets_BT) batches for :meth:`evaluate`.
        loss_of: ``(idx_BT, targets_BT) -> LM loss`` (nats/token); default the decoder's
            LM loss through its chunked head (:func:`specroute.losses.head_token_ce`).
    """

    def __init__(self, model: nn.Module, train: TrainSpec, device: Device,
                 batches: list[tuple[Tensor, Tensor]] | None = None,
                 loss_of: Callable[[Tensor, Tensor], Tensor] | None = None):
        self.model, self.train, self.device = model, train, device
        self.batches = batches or []
        self.loss_of = loss_of or (lambda idx_BT, targets_BT: head_token_ce(
            self.model, self.model(idx_BT).h_BTD, targets_BT).mean())

    @classmethod
    def seeded(cls, spec: RunSpec, seed: int, heldout: WindowSampler, device: Device) -> DenseStage:
        """A study's stage 1: the dense model of ``spec`` initialised from ``seed``, ``backbone.train``."""
        model = build_seeded(spec, seed, routed=False).to(device.torch)
        if spec.backbone.train.compile:
            compile_model(model)
        return cls(model, spec.backbone.train, device, eval_batches(heldout, spec.backbone.train, device))

    def trainable(self) -> dict[str, nn.Parameter]:
        return dict(self.model.named_parameters())

    def loss(self, idx_BT: Tensor, targets_BT: Tensor, generator: torch.Generator,
             step: int = 1) -> tuple[Tensor, dict[str, Any]]:
        with self.device.autocast():
            lm = self.loss_of(idx_BT, targets_BT)
        return lm, {"loss": lm.item(), "lm": lm.item()}

    def backward(self, idx_BT: Tensor, targets_BT: Tensor, generator: torch.Generator, step: int,
                 split: BatchSplit) -> dict[str, Any]:
        """:meth:`loss`'s backward on this process's rows in micro-batches (:mod:`specroute.train.accumulate`)."""
        return dense_backward(self.loss_of, idx_BT, targets_BT, split, self.device)

    def evaluate(self) -> dict[str, Any]:
        return {"lm": dense_heldout_lm(self.model, self.batches, self.device)}


def dense_heldout_lm(model: Decoder, batches: list[tuple[Tensor, Tensor]], device: Device) -> float:
    """Mean held-out LM loss (nats/token) of a model over fixed batches (routing as the model does)."""
    total = 0.0
    with torch.no_grad(), device.autocast():
        for idx, targets in batches:
            total += head_token_ce(model, model(idx).h_BTD, targets).mean().item()
    return total / len(batches)


def trainable_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """What stage 2 optimises: every parameter that requires a gradient, by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


class FrozenPrefix:
    """The hidden state entering the first controlled layer, kept for fixed token batches (the held-out
    and calibration batches, evaluated again and again): when nothing before that layer trains (the
    embeddings and the blocks before it are frozen, as in controller-only training), every evaluation
    would compute the same tensors. :meth:`forward` is the model's forward (no grad, the model in eval
    mode), bitwise: the same blocks on the same tensors, only not recomputed.

    Off (every forward runs whole) for a compiled model, when a parameter before the first controlled layer
    requires a gradient (joint training), or when the batches' hidden states would take more than
    :data:`PREFIX_MAX_BYTES`."""

    def __init__(self, model: Decoder, batches: list[Tensor]):
        self.model = model
        controlled = model.controlled_blocks()
        self.start = controlled[0].index if controlled else len(model.blocks)
        before = [model.wte, *([model.wpe] if model.wpe is not None else []), *model.blocks[:self.start]]
        frozen = not any(p.requires_grad for m in before for p in m.parameters())
        size = sum(idx.numel() for idx in batches) * model.spec.model.d_model * 4
        self.on = self.start > 0 and frozen and not is_compiled(model) and size <= PREFIX_MAX_BYTES
        self._h: dict[int, Tensor] = {}  # by id() of the batch tensors, which the stage keeps

    def forward(self, idx_BT: Tensor, thresholds: dict[int, float] | None = None) -> DecoderOutput:
        """The routed forward of token ids (B, T) (``thresholds``: as :meth:`Decoder.forward`'s)."""
        if not self.on:
            return self.model(idx_BT, thresholds=thresholds)
        h_BTD = self._h.get(id(idx_BT))
        if h_BTD is None:
            h_BTD, _ = self.model.run_blocks(self.model.embed(idx_BT), 0, stop=self.start)
            self._h[id(idx_BT)] = h_BTD
        h_BTD, routing = self.model.run_blocks(h_BTD, self.start, thresholds=thresholds)
        return DecoderOutput(h_BTD, routing, self.model.head)


class ControllerStage:
    """Stage 2: controller training on the backbone (the parameters that require a gradient, as
    ``train.trainable`` set them: frozen backbone by default, trained with the controller when ``backbone``
    is listed), on the recipe of ``spec.loss``.

    Args:
        spec: the run spec (loss recipe, routing). model: the routed model, on ``device``.
        batches: held-out (idx_BT, targets_BT) batches for :meth:`evaluate`.
        train: the stage's settings; default ``spec.train``.
        calibration: training token ids (B, T) on which a top-k gate's causal thresholds are calibrated
            (:func:`specroute.train.calibration.calibrate`) by :meth:`evaluate_causal`, and at every
            evaluation when ``routing.budget.calibrate_every_eval``; none: no causal evaluation.
    """

    def __init__(self, spec: RunSpec, model: Decoder, device: Device,
                 batches: list[tuple[Tensor, Tensor]] | None = None, train: TrainSpec | None = None,
                 calibration: list[Tensor] | None = None):
        self.spec, self.model, self.device = spec, model, device
        self.train = train or spec.train
        self.batches = batches or []
        self.calibration = calibration or []
        self.prefix = FrozenPrefix(model, [idx for idx, _ in self.batches] + self.calibration)

    @classmethod
    def on_backbone(cls, spec: RunSpec, backbone: Mapping[str, Tensor], heldout: WindowSampler,
                    device: Device, train_windows: WindowSampler | None = None) -> ControllerStage:
        """A study's stage 2: the routed model of ``spec`` (initialised from ``spec.seed``) on ``backbone``;
        with ``train_windows`` and a top-k budget (:func:`calibrates`), its causal evaluation calibrates on
        ``routing.budget.calibration_batches`` fixed batches of them."""
        model = build_seeded(spec, spec.seed, routed=True)
        model.load_backbone(backbone)
        model = model.to(device.torch)
        calibration = None
        if train_windows is not None and calibrates(spec):
            fixed = train_windows.fixed(spec.routing.budget.calibration_batches, spec.train.batch_size)
            calibration = [idx.to(device.torch) for idx, _ in fixed]
        if spec.train.compile:
            compile_model(model)
        return cls(spec, model, device, eval_batches(heldout, spec.train, device), calibration=calibration)

    def trainable(self) -> dict[str, nn.Parameter]:
        return trainable_params(self.model)

    def loss(self, idx_BT: Tensor, targets_BT: Tensor, generator: torch.Generator,
             step: int = 1) -> tuple[Tensor, dict[str, Any]]:
        """The recipe's total loss and the step's record: the total and each term (unweighted), the realised
        full fraction per controlled layer and, at the steps :meth:`logs_term_grads` names,
        ``loss_grad_norm`` ({group: {term: norm, "total": norm}}, :func:`specroute.train.step.term_grad_norms`
        of the weighted terms on the trained groups). ``step``: the 1-based step this loss is for."""
        with self.device.autocast():
            terms = compute_losses(self.model, idx_BT, targets_BT, self.spec, generator)
        record: dict[str, Any] = {"loss": terms.total.item(), **terms.parts}
        record["full_fraction"] = {str(r.layer): r.full_fraction for r in terms.out.routing}
        if self.logs_term_grads(step):
            record["loss_grad_norm"] = term_grad_norms(terms.weighted, self.trained_groups())
        return terms.total, record

    def backward(self, idx_BT: Tensor, targets_BT: Tensor, generator: torch.Generator, step: int,
                 split: BatchSplit) -> dict[str, Any]:
        """:meth:`loss`'s backward on this process's rows in micro-batches, equal to the whole batch's
        (:func:`specroute.train.accumulate.controller_backward`); returns the record :meth:`loss` would."""
        groups = self.trained_groups() if self.logs_term_grads(step) else None
        return controller_backward(self.model, idx_BT, targets_BT, self.spec, generator, split, self.device, groups)

    def logs_term_grads(self, step: int) -> bool:
        """Whether step ``step`` (1-based) logs each loss term's gradient norm: every
        ``spec.train.loss_grad_norm_every``-th step; never when that is null. (Not step 1 as such: the
        throughput probe and ``specroute bench`` time a first step, which should be the study's usual one.)"""
        every = self.spec.train.loss_grad_norm_every
        return every is not None and step % every == 0

    def trained_groups(self) -> dict[str, list[nn.Parameter]]:
        """The trained parameters by ``train.trainable`` group (``gate``, ``cheap_ffn``, ``backbone``), the
        groups with none left out."""
        groups = {g: [p for _, p in ps if p.requires_grad] for g, ps in self.model.param_groups().items()}
        return {g: ps for g, ps in groups.items() if ps}

    def evaluate(self) -> dict[str, Any]:
        """Held-out LM (nats/token; ``lm_batches`` per fixed evaluation batch, the noise the claims' per-seed
        ties rest on), realised full fraction per controlled layer, the quantiles of the gate's scores per
        controlled layer (:data:`SCORE_QUANTILES`), G3's latent statistics and ``gate_diagnostics``
        (:func:`gate_diagnostics`)."""
        lm_batches, full = [], {str(l): 0.0 for l in self.spec.routing.controlled_layers}
        latents: dict[int, list[Tensor]] = {}
        scores: dict[str, list[Tensor]] = {}
        gaps: dict[str, list[Tensor]] = {}
        with torch.no_grad(), self.device.autocast():
            for idx, targets in self.batches:
                out = self.prefix.forward(idx)
                lm_batches.append(head_token_ce(self.model, out.h_BTD, targets).mean().item())
                for rec in out.routing:
                    full[str(rec.layer)] += rec.full_fraction
                    if rec.gate is not None:
                        scores.setdefault(str(rec.layer), []).append(rec.gate.score_BT.reshape(-1).float())
                    pred = executed_latent(rec)
                    if pred is not None:
                        latents.setdefault(rec.layer, []).append(pred.reshape(-1, pred.shape[-1]).float())
                        gaps.setdefault(str(rec.layer), []).append(action_gaps(self.model, rec))
        n = len(self.batches)
        result: dict[str, Any] = {"lm": sum(lm_batches) / n, "lm_batches": lm_batches,
                                  "full_fraction": {k: v / n for k, v in full.items()}}
        result["latent"] = latent_metrics(latents) if latents else None
        q = torch.tensor(SCORE_QUANTILES)
        result["score_quantiles"] = {l: torch.quantile(torch.cat(v)[:1 << 24].cpu(), q).tolist()
                                     for l, v in scores.items()}
        result["gate_diagnostics"] = gate_diagnostics(scores, gaps)
        if self.calibration and self.batches and self.spec.routing.budget.calibrate_every_eval:
            result["causal"] = self.evaluate_causal()
        return result

    def evaluate_causal(self) -> dict[str, Any]:
        """The causal evaluation of a top-k gate: thresholds calibrated on the calibration batches, then on
        the held-out batches under full iff score > tau_l: ``lm`` (nats/token), ``lm_batches`` (per batch),
        ``full_fraction`` (realised share per controlled layer), with ``thresholds`` and
        ``calibration_full_fraction`` (the share on the calibration data) and ``tokens`` (calibration
        tokens). Layer keys are strings. Needs calibration and held-out batches."""
        with torch.no_grad(), self.device.autocast():
            cal = calibrate(self.model, self.calibration, self.spec.routing.budget.full_fraction,
                            self.prefix.forward)
            lm_batches, full = [], {str(l): 0.0 for l in cal.thresholds}
            for idx, targets in self.batches:
                out = self.prefix.forward(idx, thresholds=cal.thresholds)
                lm_batches.append(head_token_ce(self.model, out.h_BTD, targets).mean().item())
                for rec in out.routing:
                    full[str(rec.layer)] += rec.full_fraction
        n = len(self.batches)
        return {"lm": sum(lm_batches) / n, "lm_batches": lm_batches,
                "full_fraction": {k: v / n for k, v in full.items()}, **cal.as_dict()}


#: Quantiles of the gate's scores per controlled layer recorded at every evaluation (the routing logit;
#: under top-k routing the full fraction is fixed by construction, the score distribution is not).
SCORE_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def action_gaps(model: Decoder, rec: LayerRouting) -> Tensor:
    """Per token of a G3 layer's record, how much the predictor's and the target's latents depend on the
    action: (N, 3) float32 rows [||P(z, full) - P(z, cheap)||, ||T(full) - T(cheap)||, ||T(executed)||]
    (L2 norms over the K latent dims; T(a) is the gate's JEPA target of action a's outcome,
    :meth:`G3Gate.target_latent`, both outcomes run from the record's h_in). No gradient."""
    block = model.blocks[rec.layer]
    gate: G3Gate = block.routed_ffn.gate
    h_in = rec.h_in_BTD
    x = block.ln2(h_in)
    t_full = gate.target_latent(h_in, h_in + block.ffn(x))
    t_cheap = gate.target_latent(h_in, h_in + block.routed_ffn.cheap_branch(x))
    t_exec = gate.target_latent(h_in, rec.h_out_BTD)
    rows = [rec.gate.pred_full_BTK - rec.gate.pred_cheap_BTK, t_full - t_cheap, t_exec]
    return torch.stack([r.float().norm(dim=-1).reshape(-1) for r in rows], dim=1)


def gate_diagnostics(scores: dict[str, list[Tensor]], gaps: dict[str, list[Tensor]]) -> dict[str, Any]:
    """The score-scale and action-dependence diagnostics of one evaluation, per controlled layer (keys are
    layer indices as strings): ``score_std`` (std of the gate's score over the evaluated tokens, every
    gate), and for G3 layers (else None) the means over tokens of ``pred_gap`` ||P(z, full) - P(z, cheap)||,
    ``target_gap`` ||T(full) - T(cheap)|| and ``target_norm`` ||T(executed)|| (latent units; the score is
    built from ``pred_gap``'s vector, and ``target_gap / target_norm`` is the share of the target that the
    action moves: the collapse that matters for C5)."""
    out: dict[str, Any] = {"score_std": {l: torch.cat(v).std(unbiased=False).item() for l, v in scores.items()}}
    means = {l: torch.cat(v).mean(dim=0).tolist() for l, v in gaps.items()}
    for i, name in enumerate(GAP_FIELDS):
        out[name] = {l: m[i] for l, m in means.items()} if means else None
    return out


#: The G3 fields of :func:`gate_diagnostics`, in the column order of :func:`action_gaps`.
GAP_FIELDS = ("pred_gap", "target_gap", "target_norm")


def latent_metrics(latents: dict[int, list[Tensor]]) -> dict[str, float]:
    """Collapse metrics of G3's predicted latents (of the executed action), averaged over layers:
    ``variance`` (mean per-dimension variance) and ``effective_rank`` (see specroute.metrics)."""
    var, rank = [], []
    for chunks in latents.values():
        z = torch.cat(chunks)[:LATENT_TOKENS].cpu()
        var.append(latent_variance(z))
        rank.append(effective_rank(z))
    return {"variance": sum(var) / len(var), "effective_rank": sum(rank) / len(rank)}

