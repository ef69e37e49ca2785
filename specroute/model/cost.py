"""Closed-form parameter count of a compiled spec (tested against ``sum(p.numel())``).

Which parameters make "the model" is a documented choice: ``routed_model`` = backbone + cheap FFNs, the
network that computes the logits; the gate (and G3's fixed target head) is the *controller*, counted apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from specroute.spec.models import G1Spec, RunSpec


@dataclass(frozen=True)
class ParamCount:
    """Parameter counts by group (numbers of scalars)."""

    backbone: int
    cheap_ffn: int
    gate: int
    target_head: int

    @property
    def routed_model(self) -> int:
        """Backbone + cheap FFNs: the parameters that compute the logits."""
        return self.backbone + self.cheap_ffn

    @property
    def controller(self) -> int:
        """Trainable controller parameters in controller-only training (gate + cheap FFN)."""
        return self.gate + self.cheap_ffn

    @property
    def total(self) -> int:
        return self.backbone + self.cheap_ffn + self.gate + self.target_head

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "routed_model": self.routed_model, "controller": self.controller,
                "total": self.total}


def count_params(spec: RunSpec) -> ParamCount:
    """Count parameters from the spec alone (no model is built)."""
    m, r, g = spec.model, spec.routing, spec.gate
    D, F, V, C, b = m.d_model, m.ffn_hidden, m.vocab_size, m.context_length, int(m.bias)
    ln = D * (1 + b)
    block = 2 * ln + (3 * D * D + 3 * D * b) + (D * D + D * b) + (2 * D * F + (F + D) * b)
    backbone = V * D + C * D + m.n_layers * block + ln + (0 if m.tie_embeddings else V * D)
    n = len(r.controlled_layers)
    Fc = r.cheap_ffn_hidden
    cheap = n * (2 * D * Fc + (Fc + D) * b) if Fc else 0
    if isinstance(g, G1Spec):
        gate = ln + D * g.hidden + g.hidden + g.hidden + 1
        target = 0
    else:
        K, P = g.latent_dim, g.predictor_hidden
        gate = ln + (D * K + K) + ((K + 2) * P + P) + (P * K + K) + (K + 1)
        target = D * K
    return ParamCount(backbone, cheap, n * gate, n * target)


# --------------------------------------------------------------------------------------------------
# multiply-adds (MACs). Convention: one MAC per multiply-add of a matmul (fvcore's unit); FLOPs = 2 MACs
# (FlopCounterMode's). Only matmul-like work is counted (linear layers, attention's two batched matmuls
# over the full T x T square as dense kernels compute it, the LM head); norms, activations and softmax
# are left out. Every figure is per training step of B sequences of T tokens.

Denominator = str  # "forward_only" | "controller_only" | "full_training"
DENOMINATORS: tuple[Denominator, ...] = ("forward_only", "controller_only", "full_training")


def _block_linear_macs(D: int, F: int) -> int:
    """Per-token MACs of a dense block's linear layers: qkv + out proj (4 D^2) and the full FFN (2 D F)."""
    return 4 * D * D + 2 * D * F


def gate_macs_per_token(spec: RunSpec) -> int:
    """MACs per token of one controlled layer's gate (G1 MLP; G3 encoder + predictor x2 + score head)."""
    D, g = spec.model.d_model, spec.gate
    if isinstance(g, G1Spec):
        return D * g.hidden + g.hidden
    K, P = g.latent_dim, g.predictor_hidden
    return D * K + 2 * ((K + 2) * P + P * K) + K


def step_macs(
    spec: RunSpec,
    full_fraction: float | None = None,
    execution: str | None = None,
    batch_size: int | None = None,
    seq_len: int | None = None,
) -> dict[str, float]:
    """Analytic MACs of one controller-only training step of ``spec``, by component.

    Args:
        full_fraction: realised share of full tokens per controlled layer (default: the budget).
        execution: ``masked`` or ``gather`` (default: the spec's).
        batch_size, seq_len: default to ``spec.train``.
    Returns:
        {component: MACs}: ``routed_forward`` (backbone + routed FFNs + head), ``gate`` (gates, G3
        predictor), ``jepa_target`` (the fixed head on executed outcomes, when jepa > 0), ``oracle``
        (the no-grad counterfactual continuations, expected over the sampled layer), ``backward_act``
        (activation gradients from the head down to the lowest controlled layer), ``backward_weight``
        (weight gradients of the trainable set), and ``total``.
    """
    m, r, w = spec.model, spec.routing, spec.loss
    B = batch_size or spec.train.batch_size
    T = seq_len or spec.train.seq_len
    f = r.budget.full_fraction if full_fraction is None else full_fraction
    execution = execution or r.execution
    D, F, V, L, Fc = m.d_model, m.ffn_hidden, m.vocab_size, m.n_layers, r.cheap_ffn_hidden
    N = B * T
    controlled = list(r.controlled_layers)
    attn_proj = 4 * D * D * N
    attn_scores = 2 * B * T * T * D
    ffn_full, ffn_cheap = 2 * D * F * N, 2 * D * Fc * N
    head = D * V * N

    def ffn_step(layer: int, share_full: float) -> float:
        if layer not in controlled:
            return ffn_full
        if execution == "masked":
            return ffn_full + ffn_cheap
        return share_full * ffn_full + (1 - share_full) * ffn_cheap

    per_layer_fwd = [attn_proj + attn_scores + ffn_step(i, f) for i in range(L)]
    routed_forward = sum(per_layer_fwd) + head
    gate = len(controlled) * gate_macs_per_token(spec) * N
    jepa_target = (len(controlled) * D * spec.gate.latent_dim * N
                   if w.jepa > 0 and not isinstance(spec.gate, G1Spec) else 0)

    oracle = 0.0
    if w.uses_oracle and controlled:
        k = w.oracle.layers_per_step or len(controlled)
        k = min(k, len(controlled))
        on_policy = w.oracle.labeling == "on_policy"
        per_layer = []
        for l in controlled:
            cost = ffn_full + ffn_cheap  # layer l, both actions, once each
            for i in range(l + 1, L):
                later = attn_proj + attn_scores + (ffn_step(i, f) if on_policy else ffn_full)
                if on_policy and i in controlled:
                    later += gate_macs_per_token(spec) * N
                cost += 2 * later
            per_layer.append(cost + 2 * head)
        oracle = k * sum(per_layer) / len(per_layer)

    lowest = min(controlled) if controlled else L
    # activation backward: linear layers 1x, attention matmuls 2x (dQ, dK, dV), from the head down to
    # the FFN step of the lowest controlled layer (nothing below it is trainable in controller-only).
    backward_act = head + sum(
        per_layer_fwd[i] + attn_scores for i in range(lowest + 1, L)
    ) + ffn_step(lowest, f) if controlled else 0.0
    trainable = set(spec.train.trainable)
    backward_weight = 0.0
    if "gate" in trainable:
        backward_weight += gate
    if "cheap_ffn" in trainable:
        share = 1.0 if execution == "masked" else 1 - f
        backward_weight += len(controlled) * share * ffn_cheap
    if "backbone" in trainable:
        backward_weight += sum(per_layer_fwd) + head
        backward_act = routed_forward + L * attn_scores
    parts = {
        "routed_forward": routed_forward, "gate": gate, "jepa_target": jepa_target, "oracle": oracle,
        "backward_act": backward_act, "backward_weight": backward_weight,
    }
    parts["total"] = sum(parts.values())
    return parts


def dense_step_macs(spec: RunSpec, denominator: Denominator = "controller_only",
                    batch_size: int | None = None, seq_len: int | None = None) -> float:
    """MACs of one step of the full-only (dense) model under the same accounting.

    ``forward_only``: the dense forward. ``controller_only``: the dense forward plus the activation
    backward a frozen backbone still needs down to the lowest controlled layer (DESIGN.md's reading that
    matches the paper's figures — our inference). ``full_training``: forward plus the full backward
    (activations and every weight), i.e. ~3x the forward.
    """
    m, r = spec.model, spec.routing
    B = batch_size or spec.train.batch_size
    T = seq_len or spec.train.seq_len
    D, F, V, L = m.d_model, m.ffn_hidden, m.vocab_size, m.n_layers
    N = B * T
    layer = 4 * D * D * N + 2 * B * T * T * D + 2 * D * F * N
    attn_scores = 2 * B * T * T * D
    head = D * V * N
    forward = L * layer + head
    if denominator == "forward_only":
        return float(forward)
    if denominator == "full_training":
        return float(forward + (forward + L * attn_scores) + forward)
    lowest = min(r.controlled_layers) if r.controlled_layers else L
    act = head + sum(layer + attn_scores for _ in range(lowest + 1, L)) + 2 * D * F * N
    return float(forward + act)


def flops_proxy(spec: RunSpec, denominator: Denominator = "controller_only", **kwargs) -> float:
    """Training FLOPs proxy (DESIGN.md): one step of the recipe / one step of the full-only model."""
    num = step_macs(spec, **kwargs)["total"]
    den = dense_step_macs(spec, denominator, kwargs.get("batch_size"), kwargs.get("seq_len"))
    return num / den
