"""The routed FFN step of a controlled layer: the gates (G1, G3), the budget decision and
:class:`RoutedFFN`, which scores, decides and runs full or cheap per token (docs/DESIGN.md, "The model").

Reads top to bottom: gates, budget decision, routing record, routed FFN.

Shape legend: B batch, T tokens, D width (d_model), K latent (G3), N selected tokens (gather).

    full : h <- h + FFN_full(LN(h))
    cheap: h <- h + FFN_cheap(LN(h))      (FFN_cheap = 0, a skip, when its width is 0)

The gate reads the hidden state entering the FFN step and gives a score (a logit) per token; the budget
turns scores into decisions; the gradient estimator puts the decision's gradient on the score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specroute.model.layers import FFN, SwiGLU, build_ffn
from specroute.spec.controller import G1Spec, G3Spec
from specroute.spec.models import BudgetSpec, ModelSpec, RunSpec, ceil_budget

CHEAP, FULL = 0, 1  # action indices of the G3 predictor
#: Epsilon of G3's ``score_norm: layernorm``. Far below LayerNorm's usual 1e-5: at init the predictor's action
#: difference has a per-dimension variance of ~1e-7 (smoke profile), which 1e-5 would swamp (no normalisation).
SCORE_NORM_EPS = 1e-12


# --------------------------------------------------------------------------------------------------
# gates


@dataclass
class GateOut:
    """What a gate computes for one controlled layer.

    score_BT: the routing logit; higher means "more useful to run full".
    pred_full_BTK / pred_cheap_BTK: G3's predicted outcome latents for each action (None for G1).
    """

    score_BT: Tensor
    pred_full_BTK: Tensor | None = None
    pred_cheap_BTK: Tensor | None = None


class G1Gate(nn.Module):
    """G1: s_t = MLP(LN(h_t)) (docs/CLAIMS.md G1).

    Like G3's, the layer that outputs the score is ``score_head`` (its bias starts at ``init_bias``, its
    weight's std is ``score_init_std`` when set).
    """

    def __init__(self, m: ModelSpec, g: G1Spec):
        super().__init__()
        self.ln = nn.LayerNorm(m.d_model, bias=m.bias)
        self.fc = nn.Linear(m.d_model, g.hidden)
        self.score_head = nn.Linear(g.hidden, 1)
        self.init_bias = g.init_bias
        self.score_init_std = g.score_init_std

    def forward(self, h_BTD: Tensor) -> GateOut:
        """(B, T, D) -> GateOut(score_BT (B, T), float32 even under autocast: :func:`fp32_gate`)."""
        with fp32_gate(h_BTD):
            return GateOut(self.score_head(F.gelu(self.fc(self.ln(h_BTD.float())))).squeeze(-1))


class G3Gate(nn.Module):
    """G3: JEPA-guided gate (docs/CLAIMS.md G3, docs/DESIGN.md "Gates").

    z = E(LN(h)) in R^K; the action-conditional predictor P(z, a) = MLP([z, onehot(a)]) forecasts the
    latent of the outcome of each action; with d = P(z, full) - P(z, cheap), score = w . d + bias
    (``score_norm: none``) or w . LN(d) + bias (``layernorm``, no affine parameters). The fixed target head
    T (random, seeded by ``target_seed``, never trained) maps an executed outcome to the latent that P is
    aligned to (loss ``jepa``; what it maps is ``target``, see :meth:`target_latent`).

    P's output layer has no bias: a bias shared by both actions cancels in P(z, full) - P(z, cheap), so the
    LM loss could never reach it (every gate parameter must get a gradient from the LM loss alone).
    """

    def __init__(self, m: ModelSpec, g: G3Spec):
        super().__init__()
        self.ln = nn.LayerNorm(m.d_model, bias=m.bias)
        self.encoder = nn.Linear(m.d_model, g.latent_dim)
        self.predictor = nn.Sequential(
            nn.Linear(g.latent_dim + 2, g.predictor_hidden),
            nn.GELU(),
            nn.Linear(g.predictor_hidden, g.latent_dim, bias=False),
        )
        self.score_head = nn.Linear(g.latent_dim, 1)
        self.target = nn.Linear(m.d_model, g.latent_dim, bias=False)
        self.target.requires_grad_(False)
        self.init_bias = g.init_bias
        self.score_init_std = g.score_init_std
        self.score_norm = g.score_norm
        self.target_kind = g.target
        self.target_seed = g.target_seed

    def predict(self, z_BTK: Tensor, action: int) -> Tensor:
        onehot = z_BTK.new_zeros(*z_BTK.shape[:-1], 2)
        onehot[..., action] = 1.0
        return self.predictor(torch.cat([z_BTK, onehot], dim=-1))

    def forward(self, h_BTD: Tensor) -> GateOut:
        """(B, T, D) -> GateOut(score_BT (B, T), predicted outcome latents (B, T, K) for full and cheap),
        all float32 even under autocast (:func:`fp32_gate`): the score is built from the small difference
        P(z, full) - P(z, cheap), which bf16 would round to ties."""
        with fp32_gate(h_BTD):
            z = self.encoder(self.ln(h_BTD.float()))
            pred_full, pred_cheap = self.predict(z, FULL), self.predict(z, CHEAP)
            d_BTK = pred_full - pred_cheap
            if self.score_norm == "layernorm":
                d_BTK = F.layer_norm(d_BTK, d_BTK.shape[-1:], eps=SCORE_NORM_EPS)
            score = self.score_head(d_BTK).squeeze(-1)
        return GateOut(score, pred_full, pred_cheap)

    def target_latent(self, h_in_BTD: Tensor, h_after_BTD: Tensor) -> Tensor:
        """The fixed target latent of an executed outcome (stop-gradient), (B, T, D) x 2 -> (B, T, K).

        h_in_BTD: the hidden state h entering the FFN step; h_after_BTD = h + FFN_a(LN(h)), the state after
        the executed action a. By ``target``: ``h_after`` T(sg(h_after)); ``ffn_effect``
        T(sg(h_after - h)) = T(sg(FFN_a(LN(h)))); ``normalized`` T(LN(sg(h_after))), LN without affine.
        """
        h_after = h_after_BTD.detach()
        if self.target_kind == "ffn_effect":
            return self.target(h_after - h_in_BTD.detach())
        if self.target_kind == "normalized":
            return self.target(F.layer_norm(h_after, h_after.shape[-1:]))
        return self.target(h_after)


def fp32_gate(h_BTD: Tensor) -> torch.autocast:
    """The block a gate computes in: autocast off, so that with the hidden state as float32
    (``h_BTD.float()``) the scores (and G3's latents) are float32 under bf16 autocast too and top-k is not
    decided by bf16 ties. The gate is a few small matmuls beside the block's, so full precision costs
    little. (A plain autocast context, not a generator: torch.compile traces it without a graph break.)"""
    return torch.autocast(h_BTD.device.type, enabled=False)


def build_gate(m: ModelSpec, g: G1Spec | G3Spec) -> G1Gate | G3Gate:
    """The gate of the spec's kind; either has a ``score_head`` (the layer whose output is the score)."""
    return G1Gate(m, g) if isinstance(g, G1Spec) else G3Gate(m, g)


# --------------------------------------------------------------------------------------------------
# budget


def decide(score_BT: Tensor, budget: BudgetSpec, threshold: float | None = None) -> Tensor:
    """Turn gate scores into full / cheap decisions under the budget (docs/DESIGN.md, "Budget").

    Args:
        score_BT: gate logits, (B, T).
        threshold: a calibrated score threshold tau (the causal rule of a top-k gate,
            :mod:`specroute.train.calibration`): full iff score > tau, whatever the enforcement.
    Returns:
        full_BT: bool (B, T). topk_sequence: exactly ceil(b*T) True per row; topk_batch: exactly
        ceil(b*B*T) True in all; threshold: score > 0 (causal). Ties are broken by ``torch.topk``.
    """
    B, T = score_BT.shape
    b = budget.full_fraction
    if threshold is not None:
        return score_BT > threshold
    if budget.enforcement == "threshold":
        return score_BT > 0
    if budget.enforcement == "topk_sequence":
        k = ceil_budget(b, T)
        idx = score_BT.detach().topk(k, dim=1).indices
        return torch.zeros_like(score_BT, dtype=torch.bool).scatter_(1, idx, 1)
    k = ceil_budget(b, B * T)
    idx = score_BT.detach().reshape(-1).topk(k).indices
    return torch.zeros(B * T, dtype=torch.bool, device=score_BT.device).scatter_(0, idx, 1).view(B, T)


# --------------------------------------------------------------------------------------------------
# the routed FFN step, and the block


@dataclass
class LayerRouting:
    """Routing record of one controlled layer in one forward pass.

    full_BT: bool decisions (B, T); gate: the gate's output, with the scores ``gate.score_BT`` (None when
    the layer was forced without its gate); h_in_BTD: hidden state entering the FFN step (after
    attention), used by the oracle; h_out_BTD: hidden state after the executed action (the JEPA target's
    input).
    """

    layer: int
    full_BT: Tensor
    gate: GateOut | None
    h_in_BTD: Tensor
    h_out_BTD: Tensor

    @property
    def full_fraction(self) -> float:
        """Realised share of full tokens in this layer (0..1)."""
        return self.full_BT.float().mean().item()


class RoutedFFN(nn.Module):
    """The routed FFN step of a controlled layer: score, decide, run full or cheap.

    Holds the gate, the cheap FFN (of the model's FFN kind, ``model.ffn``: a narrow SwiGLU for a SwiGLU model;
    ``None`` when its width is 0: the cheap action is a skip), the budget,
    the gradient estimator and the execution mode. The block runs it in two steps, :meth:`decide` (score,
    decide) and :meth:`execute` (run full or cheap); the full FFN is the block's own (a backbone weight,
    the same as the dense model's) and is passed in.
    """

    def __init__(self, spec: RunSpec):
        super().__init__()
        m, r = spec.model, spec.routing
        self.cheap = build_ffn(m, r.cheap_ffn_hidden) if r.cheap_ffn_hidden else None
        self.gate = build_gate(m, spec.gate)
        self.budget = r.budget
        self.execution = r.execution
        self.estimator = r.estimator

    def decide(self, h_BTD: Tensor, force: Tensor | bool | None = None,
               threshold: float | None = None) -> tuple[Tensor, GateOut | None]:
        """Score and decide. h_BTD: hidden state entering the FFN step (the gate reads it), (B, T, D);
        ``force``: decisions to use instead of the gate's (bool (B, T), or one bool for every token; with
        a bool the gate does not run); ``threshold``: decide by score > threshold instead of the budget's
        rule (:func:`decide`; ignored under ``force``).

        Returns (full_BT: bool (B, T), the gate's output or None).
        """
        gate = self.gate(h_BTD) if force is None or isinstance(force, Tensor) else None
        if force is None:
            full_BT = decide(gate.score_BT, self.budget, threshold)
        elif isinstance(force, Tensor):
            full_BT = force.to(torch.bool)
        else:
            full_BT = torch.full(h_BTD.shape[:2], bool(force), dtype=torch.bool, device=h_BTD.device)
        return full_BT, gate

    def full_count(self, B: int, T: int) -> int | None:
        """How many tokens of a (B, T) batch the budget makes full, when that is fixed: B x ceil(bT)
        (``topk_sequence``), ceil(bBT) (``topk_batch``); None under threshold routing (data-dependent)."""
        if self.budget.enforcement == "topk_sequence":
            return B * ceil_budget(self.budget.full_fraction, T)
        if self.budget.enforcement == "topk_batch":
            return ceil_budget(self.budget.full_fraction, B * T)
        return None

    def execute(self, x_BTD: Tensor, full_ffn: FFN | SwiGLU, full_BT: Tensor, gate: GateOut | None,
                n_full: int | None = None) -> Tensor:
        """Run full or cheap per token: x_BTD = LN(h), (B, T, D) -> the executed branch's output (B, T, D),
        with the estimator's gradient path to the gate's score. ``full_ffn`` is the block's full FFN;
        ``n_full``: the number of True in ``full_BT`` when the budget fixes it (:meth:`full_count`), which
        gives gather static shapes (torch.compile); None: counted from ``full_BT``."""
        p_BT = torch.sigmoid(gate.score_BT) if gate is not None else None
        if self.execution == "masked":
            return self._masked(x_BTD, full_ffn, full_BT, p_BT)
        if n_full is None:
            return eager_gather(self, x_BTD, full_ffn, full_BT, p_BT)
        return self._gather(x_BTD, full_ffn, full_BT, p_BT, n_full)

    def cheap_branch(self, x_BTD: Tensor) -> Tensor:
        """FFN_cheap(x), or zeros when the cheap action is a skip; (B, T, D) -> (B, T, D)."""
        return self.cheap(x_BTD) if self.cheap is not None else torch.zeros_like(x_BTD)

    @staticmethod
    def _scales(p_BT: Tensor | None) -> tuple[Tensor | float, Tensor | float]:
        """score_scaling weights: value exactly 1 (p - sg(p) is exactly 0), gradient +dp on full,
        -dp on cheap."""
        if p_BT is None:
            return 1.0, 1.0
        zero = p_BT - p_BT.detach()
        return (1 + zero).unsqueeze(-1), (1 - zero).unsqueeze(-1)

    def _masked(self, x_BTD: Tensor, full_ffn: FFN | SwiGLU, full_BT: Tensor, p_BT: Tensor | None) -> Tensor:
        """Both branches on every token, then select."""
        full, cheap = full_ffn(x_BTD), self.cheap_branch(x_BTD)
        if self.estimator == "straight_through" and p_BT is not None:
            m = (full_BT.to(p_BT.dtype) + (p_BT - p_BT.detach())).unsqueeze(-1)  # value exactly 0/1
            return m * full + (1 - m) * cheap
        w_full, w_cheap = self._scales(p_BT)
        return torch.where(full_BT.unsqueeze(-1), full * w_full, cheap * w_cheap)

    def _gather(self, x_BTD: Tensor, full_ffn: FFN | SwiGLU, full_BT: Tensor, p_BT: Tensor | None,
                n_full: int | None = None) -> Tensor:
        """Each branch on its own tokens only (gather, run, scatter back). ``n_full``: the number of full
        tokens when it is known (the full tokens' indices then come from a stable sort, static shapes; the
        same indices in the same ascending order as ``nonzero``)."""
        B, T, D = x_BTD.shape
        x_ND = x_BTD.reshape(B * T, D)
        flat = full_BT.reshape(B * T)
        if n_full is None:
            sel, rest = flat.nonzero().squeeze(1), (~flat).nonzero().squeeze(1)
        else:
            order = torch.argsort((~flat).to(torch.uint8), stable=True)  # full tokens first, each part ascending
            sel, rest = order[:n_full], order[n_full:]
        w_full, w_cheap = self._scales(p_BT)
        if isinstance(w_full, Tensor):
            w_full, w_cheap = w_full.reshape(B * T, 1), w_cheap.reshape(B * T, 1)
        full_ND = full_ffn(x_ND[sel]) * _rows(w_full, sel)
        # the buffer takes the branch outputs' dtype (bf16 under autocast, where x is float32)
        out = full_ND.new_zeros(B * T, D).index_copy(0, sel, full_ND)
        if self.cheap is not None:
            cheap_ND = self.cheap(x_ND[rest]) * _rows(w_cheap, rest)
            out = out.index_copy(0, rest, cheap_ND.to(out.dtype))
        return out.view(B, T, D)


def _eager_gather(routed: RoutedFFN, x_BTD: Tensor, full_ffn: FFN, full_BT: Tensor, p_BT: Tensor | None) -> Tensor:
    """:meth:`RoutedFFN._gather` with a data-dependent token count (threshold routing, forced decisions)."""
    return routed._gather(x_BTD, full_ffn, full_BT, p_BT)


#: What runs the gather step of a data-dependent token count. :func:`specroute.train.compiled.compile_model`
#: replaces it with a ``torch.compiler.disable`` copy, which keeps it out of a compiled graph (torch.compile
#: would recompile for every count); set there, not here, because ``torch.compiler.disable`` imports the
#: compiler (about 1.5 s of start-up in every process that never compiles).
eager_gather = _eager_gather


def _rows(w: Tensor | float, idx: Tensor) -> Tensor | float:
    return w[idx] if isinstance(w, Tensor) else w
