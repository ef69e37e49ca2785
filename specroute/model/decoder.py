"""The routed decoder: a GPT-style model whose controlled layers route each token's FFN step.

Reads top to bottom: norm, attention, FFNs, gates, budget decision, routed FFN step, block, decoder.

Shape legend: B batch, T tokens, D width (d_model), F FFN hidden, V vocab, K latent (G3), N selected
tokens (gather), L layers.

In a controlled layer (docs/DESIGN.md, "The model") attention runs for every token; then per token t

    full : h <- h + FFN_full(LN(h))
    cheap: h <- h + FFN_cheap(LN(h))      (FFN_cheap = 0, a skip, when its width is 0)

The gate reads the hidden state entering the FFN step and gives a score (a logit) per token; the budget
turns scores into decisions; the gradient estimator puts the decision's gradient on the score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specroute.spec.models import BudgetSpec, G1Spec, G3Spec, ModelSpec, RunSpec, ceil_budget

#: A forced decision for a controlled layer: a bool tensor (B, T), or True / False for every token.
Force = Mapping[int, "Tensor | bool"]

CHEAP, FULL = 0, 1  # action indices of the G3 predictor


class NonCausalRoutingError(RuntimeError):
    """Raised when a causal path (generation) is asked of a top-k budget, which looks ahead."""


# --------------------------------------------------------------------------------------------------
# backbone pieces


class CausalSelfAttention(nn.Module):
    def __init__(self, m: ModelSpec):
        super().__init__()
        self.n_heads = m.n_heads
        self.qkv = nn.Linear(m.d_model, 3 * m.d_model, bias=m.bias)
        self.proj = nn.Linear(m.d_model, m.d_model, bias=m.bias)

    def forward(self, x_BTD: Tensor) -> Tensor:
        """Causal multi-head self-attention, (B, T, D) -> (B, T, D); H heads of width E = D / H."""
        B, T, D = x_BTD.shape
        q, k, v = self.qkv(x_BTD).split(D, dim=2)  # 3 x (B, T, D)
        q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, T, E)
        y_BHTE = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y_BHTE.transpose(1, 2).reshape(B, T, D))  # heads concatenated: (B, T, D)


class FFN(nn.Module):
    """Two-layer GELU MLP, D -> hidden -> D (GPT-2's tanh GELU)."""

    def __init__(self, d_model: int, hidden: int, bias: bool):
        super().__init__()
        self.fc = nn.Linear(d_model, hidden, bias=bias)
        self.proj = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


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

    Like G3's, the layer that outputs the score is ``score_head`` (its bias starts at ``init_bias``).
    """

    def __init__(self, m: ModelSpec, g: G1Spec):
        super().__init__()
        self.ln = nn.LayerNorm(m.d_model, bias=m.bias)
        self.fc = nn.Linear(m.d_model, g.hidden)
        self.score_head = nn.Linear(g.hidden, 1)
        self.init_bias = g.init_bias

    def forward(self, h_BTD: Tensor) -> GateOut:
        """(B, T, D) -> GateOut(score_BT (B, T))."""
        return GateOut(self.score_head(F.gelu(self.fc(self.ln(h_BTD)))).squeeze(-1))


class G3Gate(nn.Module):
    """G3: JEPA-guided gate (docs/CLAIMS.md G3, docs/DESIGN.md "Gates").

    z = E(LN(h)) in R^K; the action-conditional predictor P(z, a) = MLP([z, onehot(a)]) forecasts the
    latent of the outcome of each action; score = w . (P(z, full) - P(z, cheap)) + bias. The fixed target
    head T (random, seeded by ``target_seed``, never trained) maps an executed outcome's hidden state to
    the latent that P is aligned to (loss ``jepa``).

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
        self.target_seed = g.target_seed

    def predict(self, z_BTK: Tensor, action: int) -> Tensor:
        onehot = z_BTK.new_zeros(*z_BTK.shape[:-1], 2)
        onehot[..., action] = 1.0
        return self.predictor(torch.cat([z_BTK, onehot], dim=-1))

    def forward(self, h_BTD: Tensor) -> GateOut:
        """(B, T, D) -> GateOut(score_BT (B, T), predicted outcome latents (B, T, K) for full and cheap)."""
        z = self.encoder(self.ln(h_BTD))
        pred_full, pred_cheap = self.predict(z, FULL), self.predict(z, CHEAP)
        score = self.score_head(pred_full - pred_cheap).squeeze(-1)
        return GateOut(score, pred_full, pred_cheap)

    def target_latent(self, h_after_BTD: Tensor) -> Tensor:
        """T(sg(h)): the fixed target latent of an executed outcome, (B, T, D) -> (B, T, K)."""
        return self.target(h_after_BTD.detach())


def build_gate(m: ModelSpec, g: G1Spec | G3Spec) -> G1Gate | G3Gate:
    """The gate of the spec's kind; either has a ``score_head`` (the layer whose output is the score)."""
    return G1Gate(m, g) if isinstance(g, G1Spec) else G3Gate(m, g)


# --------------------------------------------------------------------------------------------------
# budget


def decide(score_BT: Tensor, budget: BudgetSpec) -> Tensor:
    """Turn gate scores into full / cheap decisions under the budget (docs/DESIGN.md, "Budget").

    Args:
        score_BT: gate logits, (B, T).
    Returns:
        full_BT: bool (B, T). topk_sequence: exactly ceil(b*T) True per row; topk_batch: exactly
        ceil(b*B*T) True in all; threshold: score > 0 (causal). Ties are broken by ``torch.topk``.
    """
    B, T = score_BT.shape
    b = budget.full_fraction
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

    Holds the gate, the cheap FFN (``None`` when its width is 0: the cheap action is a skip), the budget,
    the gradient estimator and the execution mode. The block runs it in two steps, :meth:`decide` (score,
    decide) and :meth:`execute` (run full or cheap); the full FFN is the block's own (a backbone weight,
    the same as the dense model's) and is passed in.
    """

    def __init__(self, spec: RunSpec):
        super().__init__()
        m, r = spec.model, spec.routing
        self.cheap = FFN(m.d_model, r.cheap_ffn_hidden, m.bias) if r.cheap_ffn_hidden else None
        self.gate = build_gate(m, spec.gate)
        self.budget = r.budget
        self.execution = r.execution
        self.estimator = r.estimator

    def decide(self, h_BTD: Tensor, force: Tensor | bool | None = None) -> tuple[Tensor, GateOut | None]:
        """Score and decide. h_BTD: hidden state entering the FFN step (the gate reads it), (B, T, D);
        ``force``: decisions to use instead of the gate's (bool (B, T), or one bool for every token; with
        a bool the gate does not run).

        Returns (full_BT: bool (B, T), the gate's output or None).
        """
        gate = self.gate(h_BTD) if force is None or isinstance(force, Tensor) else None
        if force is None:
            full_BT = decide(gate.score_BT, self.budget)
        elif isinstance(force, Tensor):
            full_BT = force.to(torch.bool)
        else:
            full_BT = torch.full(h_BTD.shape[:2], bool(force), dtype=torch.bool, device=h_BTD.device)
        return full_BT, gate

    def execute(self, x_BTD: Tensor, full_ffn: FFN, full_BT: Tensor, gate: GateOut | None) -> Tensor:
        """Run full or cheap per token: x_BTD = LN(h), (B, T, D) -> the executed branch's output (B, T, D),
        with the estimator's gradient path to the gate's score. ``full_ffn`` is the block's full FFN."""
        p_BT = torch.sigmoid(gate.score_BT) if gate is not None else None
        run = self._masked if self.execution == "masked" else self._gather
        return run(x_BTD, full_ffn, full_BT, p_BT)

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

    def _masked(self, x_BTD: Tensor, full_ffn: FFN, full_BT: Tensor, p_BT: Tensor | None) -> Tensor:
        """Both branches on every token, then select."""
        full, cheap = full_ffn(x_BTD), self.cheap_branch(x_BTD)
        if self.estimator == "straight_through" and p_BT is not None:
            m = (full_BT.to(p_BT.dtype) + (p_BT - p_BT.detach())).unsqueeze(-1)  # value exactly 0/1
            return m * full + (1 - m) * cheap
        w_full, w_cheap = self._scales(p_BT)
        return torch.where(full_BT.unsqueeze(-1), full * w_full, cheap * w_cheap)

    def _gather(self, x_BTD: Tensor, full_ffn: FFN, full_BT: Tensor, p_BT: Tensor | None) -> Tensor:
        """Each branch on its own tokens only (gather, run, scatter back)."""
        B, T, D = x_BTD.shape
        x_ND = x_BTD.reshape(B * T, D)
        flat = full_BT.reshape(B * T)
        sel, rest = flat.nonzero().squeeze(1), (~flat).nonzero().squeeze(1)
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


def _rows(w: Tensor | float, idx: Tensor) -> Tensor | float:
    return w[idx] if isinstance(w, Tensor) else w


class Block(nn.Module):
    """Pre-LN transformer block; if ``controlled``, its FFN step is routed per token (``routed_ffn``)."""

    def __init__(self, spec: RunSpec, index: int, controlled: bool):
        super().__init__()
        m = spec.model
        self.index = index
        self.ln1 = nn.LayerNorm(m.d_model, bias=m.bias)
        self.attn = CausalSelfAttention(m)
        self.ln2 = nn.LayerNorm(m.d_model, bias=m.bias)
        self.ffn = FFN(m.d_model, m.ffn_hidden, m.bias)
        self.routed_ffn = RoutedFFN(spec) if controlled else None

    @property
    def controlled(self) -> bool:
        """Whether this block's FFN step is routed."""
        return self.routed_ffn is not None

    def forward(self, h_BTD: Tensor, force: Tensor | bool | None = None) -> tuple[Tensor, LayerRouting | None]:
        """(B, T, D) -> (B, T, D) and, for a controlled block, its routing record. ``force`` overrides the
        gate's decisions (see :meth:`RoutedFFN.decide`)."""
        h_BTD = h_BTD + self.attn(self.ln1(h_BTD))
        if self.routed_ffn is None:
            return h_BTD + self.ffn(self.ln2(h_BTD)), None
        full_BT, gate = self.routed_ffn.decide(h_BTD, force)  # score, decide
        h_out = h_BTD + self.routed_ffn.execute(self.ln2(h_BTD), self.ffn, full_BT, gate)  # run full or cheap
        return h_out, LayerRouting(self.index, full_BT, gate, h_BTD, h_out)


# --------------------------------------------------------------------------------------------------
# decoder


@dataclass
class DecoderOutput:
    """logits_BTV: next-token logits; routing: one record per controlled layer, in layer order."""

    logits_BTV: Tensor
    routing: list[LayerRouting]


class Decoder(nn.Module):
    """GPT decoder compiled from a :class:`RunSpec`; ``routed=False`` builds the dense backbone only."""

    def __init__(self, spec: RunSpec, routed: bool = True):
        super().__init__()
        m = spec.model
        self.spec = spec
        self.routed = routed
        controlled = set(spec.routing.controlled_layers) if routed else set()
        self.wte = nn.Embedding(m.vocab_size, m.d_model)
        self.wpe = nn.Embedding(m.context_length, m.d_model)
        self.blocks = nn.ModuleList(Block(spec, i, i in controlled) for i in range(m.n_layers))
        self.ln_f = nn.LayerNorm(m.d_model, bias=m.bias)
        self.lm_head = nn.Linear(m.d_model, m.vocab_size, bias=False)
        if m.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self._init_weights()

    # -- initialisation: the one place --------------------------------------------------------------
    def _init_weights(self) -> None:
        """Normal(0, init_std) weights, zero biases; residual projections scaled by 1/sqrt(2L)
        (GPT-2); gate output bias = spec ``init_bias``; the G3 target head from its own seed."""
        m = self.spec.model
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, 0.0, m.init_std)
                if getattr(mod, "bias", None) is not None:
                    nn.init.zeros_(mod.bias)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, 0.0, m.init_std / math.sqrt(2 * m.n_layers))
        for block in self.controlled_blocks():
            gate = block.routed_ffn.gate
            nn.init.constant_(gate.score_head.bias, gate.init_bias)
            if isinstance(gate, G3Gate):
                g = torch.Generator().manual_seed(gate.target_seed + block.index)
                w = torch.randn(gate.target.weight.shape, generator=g) / math.sqrt(m.d_model)
                with torch.no_grad():
                    gate.target.weight.copy_(w)

    # -- structure ---------------------------------------------------------------------------------
    def controlled_blocks(self) -> list[Block]:
        return [b for b in self.blocks if b.controlled]

    def param_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Named parameters by group: ``gate`` (trainable gate parts), ``target_head`` (G3's fixed T),
        ``cheap_ffn``, ``backbone`` (everything else)."""
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {
            "gate": [], "target_head": [], "cheap_ffn": [], "backbone": []
        }
        for name, p in self.named_parameters():
            if ".gate.target." in name:
                groups["target_head"].append((name, p))
            elif ".gate." in name:
                groups["gate"].append((name, p))
            elif ".cheap." in name:
                groups["cheap_ffn"].append((name, p))
            else:
                groups["backbone"].append((name, p))
        return groups

    def set_trainable(self, trainable: list[str]) -> list[nn.Parameter]:
        """Freeze everything except the named groups (the target head is always frozen).

        Returns the trainable parameters (the optimiser's set). Raises ValueError on an unknown group.
        """
        groups = self.param_groups()
        unknown = set(trainable) - {"gate", "cheap_ffn", "backbone"}
        if unknown:
            raise ValueError(f"unknown trainable group(s) {sorted(unknown)}")
        out = []
        for group, params in groups.items():
            on = group in trainable
            for _, p in params:
                p.requires_grad_(on)
                if on:
                    out.append(p)
        return out

    def backbone_state_dict(self) -> dict[str, Tensor]:
        """The dense backbone's weights (shared by every arm and seed of a study)."""
        names = {n for n, _ in self.param_groups()["backbone"]}
        return {k: v for k, v in self.state_dict().items() if k in names}

    def load_backbone(self, state: Mapping[str, Tensor]) -> None:
        """Load a backbone state dict; every backbone key must be present and nothing else given.

        Raises RuntimeError naming missing or unexpected keys (strict loading of the backbone part).
        """
        expected = set(self.backbone_state_dict())
        given = set(state)
        if expected != given:
            raise RuntimeError(
                f"backbone keys differ: missing {sorted(expected - given)[:5]}, "
                f"unexpected {sorted(given - expected)[:5]}"
            )
        self.load_state_dict(dict(state), strict=False)

    # -- forward -----------------------------------------------------------------------------------
    def embed(self, idx_BT: Tensor) -> Tensor:
        T = idx_BT.shape[1]
        if T > self.spec.model.context_length:
            raise ValueError(f"sequence of {T} tokens exceeds context_length={self.spec.model.context_length}")
        pos = torch.arange(T, device=idx_BT.device)
        return self.wte(idx_BT) + self.wpe(pos)

    def run_blocks(
        self, h_BTD: Tensor, start: int = 0, force: Force | None = None, all_full: bool = False
    ) -> tuple[Tensor, list[LayerRouting]]:
        """Run blocks ``start..L-1``. ``force`` fixes decisions per controlled layer; ``all_full``
        forces every controlled layer from ``start`` on to full (the off-policy continuation)."""
        routing = []
        for block in self.blocks[start:]:
            f = True if (all_full and block.controlled) else (force or {}).get(block.index)
            h_BTD, rec = block(h_BTD, f)
            if rec is not None:
                routing.append(rec)
        return h_BTD, routing

    def head(self, h_BTD: Tensor) -> Tensor:
        return self.lm_head(self.ln_f(h_BTD))

    def forward(self, idx_BT: Tensor, force: Force | None = None, all_full: bool = False) -> DecoderOutput:
        """idx_BT: token ids (B, T) -> DecoderOutput(logits (B, T, V), routing per controlled layer).

        Raises ValueError if T exceeds the context length.
        """
        h, routing = self.run_blocks(self.embed(idx_BT), 0, force, all_full)
        return DecoderOutput(self.head(h), routing)

    @torch.no_grad()
    def generate(self, idx_BT: Tensor, max_new_tokens: int, temperature: float = 1.0) -> Tensor:
        """Sample ``max_new_tokens`` tokens autoregressively, (B, T) -> (B, T + max_new_tokens).

        Raises NonCausalRoutingError for top-k budgets: their decision for token t depends on tokens
        after t, so a model trained with them cannot be run causally without changing its decisions.
        """
        if self.routed and not self.spec.routing.budget.causal:
            raise NonCausalRoutingError(
                f"routing.budget.enforcement={self.spec.routing.budget.enforcement} looks at future "
                "tokens (top-k is not causal); generation needs enforcement=threshold"
            )
        ctx = self.spec.model.context_length
        for _ in range(max_new_tokens):
            logits = self(idx_BT[:, -ctx:]).logits_BTV[:, -1] / max(temperature, 1e-6)
            nxt = torch.multinomial(torch.softmax(logits, -1), 1)
            idx_BT = torch.cat([idx_BT, nxt], dim=1)
        return idx_BT


def build_model(spec: RunSpec, routed: bool = True) -> Decoder:
    """Compile a spec into a model: the routed decoder, with the spec's trainable set applied."""
    model = Decoder(spec, routed=routed)
    if routed:
        model.set_trainable(list(spec.train.trainable))
    return model
