"""The analytic cost model: closed-form parameter count and multiply-adds (MACs) per training step of a
spec, no model built. Tested against ``sum(p.numel())`` and, through :mod:`specroute.flops.counters`,
against fvcore and FlopCounterMode (``specroute verify``, :mod:`specroute.verify.flops`).

Parameter groups (the names of ``train.trainable``): ``backbone``, ``cheap_ffn``, ``gate`` (the controller: G1's
MLP; G3's encoder, predictor and score head) and ``target_head`` (G3's fixed projection, never trained).
Which parameters make "the model" is a documented choice: ``routed_model`` = backbone + cheap FFNs, the
network that computes the logits; the gate and the target head are counted apart. ``trained`` is what
controller training updates: the groups named in ``train.trainable`` (default gate + cheap FFN).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from specroute.spec.controller import G1Spec
from specroute.spec.models import ModelSpec, RunSpec


@dataclass(frozen=True)
class ParamCount:
    """Parameter counts by group (numbers of scalars); ``trained`` = the groups in ``train.trainable``."""

    backbone: int
    cheap_ffn: int
    gate: int
    target_head: int
    trained: int

    @property
    def routed_model(self) -> int:
        """Backbone + cheap FFNs: the parameters that compute the logits."""
        return self.backbone + self.cheap_ffn

    @property
    def total(self) -> int:
        return self.backbone + self.cheap_ffn + self.gate + self.target_head

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "routed_model": self.routed_model, "total": self.total}


def count_params(spec: RunSpec) -> ParamCount:
    """Count parameters from the spec alone (no model is built)."""
    m, r, g = spec.model, spec.routing, spec.gate
    D, F, V, C, b = m.d_model, m.ffn_hidden, m.vocab_size, m.context_length, int(m.bias)
    ln = D * (1 + b)  # a LayerNorm (the gates' own)
    norm = D if m.norm == "rmsnorm" else ln  # a backbone norm
    qkv = D + 2 * m.kv_dim  # query, key and value widths (grouped-query attention: smaller k and v)
    attn = (D * qkv + qkv * int(m.attn_bias)) + (D * D + D * b)
    block = 2 * norm + attn + ffn_params(m, F)
    positions = C * D if m.position == "learned" else 0
    backbone = V * D + positions + m.n_layers * block + norm + (0 if m.tie_embeddings else V * D)
    n = len(r.controlled_layers)
    Fc = r.cheap_ffn_hidden
    cheap = n * ffn_params(m, Fc) if Fc else 0
    if isinstance(g, G1Spec):
        gate = ln + D * g.hidden + g.hidden + g.hidden + 1
        target = 0
    else:
        K, P = g.latent_dim, g.predictor_hidden
        gate = ln + (D * K + K) + ((K + 2) * P + P) + P * K + (K + 1)  # predictor output: no bias
        target = D * K
    groups = {"backbone": backbone, "cheap_ffn": cheap, "gate": n * gate}
    return ParamCount(backbone, cheap, n * gate, n * target, sum(groups[g] for g in set(spec.train.trainable)))


def ffn_params(m: ModelSpec, hidden: int) -> int:
    """Parameters of one FFN of the model's kind and ``hidden`` width: ``ffn_matrices`` D x hidden matrices
    (mlp 2, swiglu 3) and, with biases, one per hidden unit of each input-side matrix plus D."""
    inputs = m.ffn_matrices - 1  # matrices reading x: mlp fc; swiglu fc and fc_up
    return m.ffn_matrices * m.d_model * hidden + (inputs * hidden + m.d_model) * int(m.bias)


# --------------------------------------------------------------------------------------------------
# multiply-adds (MACs). Convention: one MAC per multiply-add of a matmul (fvcore's unit); FLOPs = 2 MACs
# (FlopCounterMode's). Only matmul-like work is counted (linear layers, attention's batched matmuls over
# the full T x T square as dense kernels compute them, the LM head); norms, activations, softmax and
# elementwise ops are left out. Every figure is per training step of B sequences of T tokens.
#
# Backward (what autograd actually runs; checked against FlopCounterMode in specroute.verify.flops):
# - a linear layer's input gradient (dX) costs its forward MACs, its weight gradient (dW) as much again;
# - attention's backward runs 5 T x T matmuls (the scores are recomputed, as flash kernels do and as
#   FlopCounterMode counts them): 2.5x the forward's 2;
# - in controller-only training nothing below the lowest controlled layer's FFN step needs a gradient;
#   in that layer only the controller does: the frozen full FFN (whose input needs no gradient) gets no
#   backward, the cheap FFN its weight gradients plus the dX of its output projection, the gate its
#   weight gradients plus its internal dX (its LayerNorm is trainable);
# - every layer above it needs dX through attention and through every FFN branch that ran (masked: both
#   on every token; gather: each on its own tokens), plus the gates' dX.

Denominator = str  # "forward_only" | "controller_only" | "full_training"
DENOMINATORS: tuple[Denominator, ...] = ("forward_only", "controller_only", "full_training")

#: Attention backward / forward MACs (5 vs 2 T x T matmuls; FlopCounterMode's SDPA convention).
ATTN_BACKWARD_RATIO = 2.5


def attn_proj_macs_per_token(m: ModelSpec) -> int:
    """MACs per token of attention's projections: q and the output (D x D each), k and v (D x kv_dim each,
    smaller under grouped-query attention). Rotary positions and norms do no matmul work (left out)."""
    return m.d_model * (2 * m.d_model + 2 * m.kv_dim)


def gate_macs_per_token(spec: RunSpec) -> int:
    """MACs per token of one controlled layer's gate (G1 MLP; G3 encoder + predictor x2 + score head)."""
    D, g = spec.model.d_model, spec.gate
    if isinstance(g, G1Spec):
        return D * g.hidden + g.hidden
    K, P = g.latent_dim, g.predictor_hidden
    return D * K + 2 * ((K + 2) * P + P * K) + K


def oracle_copies(spec: RunSpec, seq_len: int | None = None) -> int:
    """How many copies of the batch one labelled layer's continuations run (each from the layer after l
    through the LM head; layer l's two FFN branches run once on the batch). ``all_flip``: 2 (layer l all
    full, all cheap). ``per_token``: 1 + S, S = min(tokens_per_sequence, T): per sequence one row with the
    gate's decisions and one per labelled token (whole rows: the positions before the flipped token are
    recomputed, see :func:`specroute.losses.per_token_labels`)."""
    o = spec.loss.oracle
    if o.counterfactual == "all_flip":
        return 2
    return 1 + min(o.tokens_per_sequence, seq_len or spec.train.seq_len)


def step_macs(
    spec: RunSpec,
    full_fraction: float | None = None,
    execution: str | None = None,
    batch_size: int | None = None,
    seq_len: int | None = None,
) -> dict[str, float]:
    """Analytic MACs of one training step of ``spec``, by component.

    Args:
        full_fraction: realised share of full tokens per controlled layer (default: the budget).
        execution: ``masked`` or ``gather`` (default: the spec's).
        batch_size, seq_len: default to ``spec.train``.
    Returns:
        {component: MACs}: ``routed_forward`` (backbone + routed FFNs + head), ``gate`` (gates, G3
        predictor), ``jepa_target`` (the fixed head on executed outcomes, when jepa > 0), ``oracle``
        (the no-grad counterfactual continuations, expected over the sampled layers; the copies of the
        batch they run: :func:`oracle_copies`), ``backward_act``
        (input gradients: head, attention, FFN branches and gates inside the gradient path),
        ``backward_weight`` (weight gradients of the trainable set), and ``total``.
    """
    m, r, w = spec.model, spec.routing, spec.loss
    B = batch_size or spec.train.batch_size
    T = seq_len or spec.train.seq_len
    f = r.budget.full_fraction if full_fraction is None else full_fraction
    execution = execution or r.execution
    D, F, V, L, Fc = m.d_model, m.ffn_hidden, m.vocab_size, m.n_layers, r.cheap_ffn_hidden
    N = B * T
    controlled = list(r.controlled_layers)
    n_ctrl = len(controlled)
    attn_proj = attn_proj_macs_per_token(m) * N
    attn_scores = 2 * B * T * T * D
    ffn_full, ffn_cheap = m.ffn_matrices * D * F * N, m.ffn_matrices * D * Fc * N
    head = D * V * N
    gate_N = gate_macs_per_token(spec) * N
    masked = execution == "masked"
    # FFN work of a controlled layer by branch: masked runs both on every token, gather each on its own
    full_run = ffn_full if masked else f * ffn_full
    cheap_run = ffn_cheap if masked else (1 - f) * ffn_cheap

    def ffn_step(layer: int) -> float:
        return full_run + cheap_run if layer in controlled else ffn_full

    per_layer_fwd = [attn_proj + attn_scores + ffn_step(i) for i in range(L)]
    routed_forward = sum(per_layer_fwd) + head
    gate = n_ctrl * gate_N
    jepa_target = n_ctrl * D * spec.gate.latent_dim * N if w.jepa > 0 and not isinstance(spec.gate, G1Spec) else 0

    oracle = 0.0
    if w.uses_oracle and controlled:
        k = min(w.oracle.layers_per_step or n_ctrl, n_ctrl)
        copies = oracle_copies(spec, T)
        on_policy = w.oracle.labeling == "on_policy"
        # a later controlled layer forced full still runs the cheap branch under masked execution
        forced_full = ffn_full + (ffn_cheap if masked else 0)
        per_layer = []
        for l in controlled:
            cost = ffn_full + ffn_cheap  # layer l, both actions, once each
            for i in range(l + 1, L):
                later = attn_proj + attn_scores
                if i not in controlled:
                    later += ffn_full
                elif on_policy:
                    later += ffn_step(i) + gate_N
                else:
                    later += forced_full
                cost += copies * later  # all_flip: layer l full, layer l cheap; per_token: 1 + S rows
            per_layer.append(cost + copies * head)
        oracle = k * sum(per_layer) / len(per_layer)

    trainable = set(spec.train.trainable)
    gate_on, cheap_on, backbone_on = "gate" in trainable, "cheap_ffn" in trainable and Fc > 0, "backbone" in trainable
    backward_act = backward_weight = 0.0
    if gate_on:
        backward_weight += gate
    if cheap_on:
        backward_weight += n_ctrl * cheap_run
    # compute_losses keeps the LM term in the graph even at weight 0, so its backward always runs
    if controlled or backbone_on:
        lowest = 0 if backbone_on else min(controlled)
        backward_act += head
        for i in range(lowest, L):
            inside = backbone_on or i > lowest  # the whole layer is in the gradient path
            if inside:
                backward_act += attn_proj + ATTN_BACKWARD_RATIO * attn_scores + ffn_step(i)
            elif i in controlled and cheap_on:
                backward_act += cheap_run / m.ffn_matrices  # dX of the cheap FFN's output projection only
            if i in controlled and (gate_on or inside):
                backward_act += gate_N
        if backbone_on:
            backward_weight += head + sum(attn_proj + (full_run if i in controlled else ffn_full)
                                          for i in range(L))
    parts = {
        "routed_forward": routed_forward, "gate": gate, "jepa_target": jepa_target, "oracle": oracle,
        "backward_act": backward_act, "backward_weight": backward_weight,
    }
    parts["total"] = sum(parts.values())
    return parts


def dense_step_macs(spec: RunSpec, denominator: Denominator = "controller_only",
                    batch_size: int | None = None, seq_len: int | None = None) -> float:
    """MACs of one step of the full-only (dense) model under the same accounting.

    ``forward_only``: the dense forward. ``controller_only``: the dense forward plus the input-gradient
    backward that a controller at the controlled layers would need (from the head down to the lowest
    controlled layer's FFN step, no weight gradients) — docs/DESIGN.md's reading that matches the paper's
    figures (our inference). ``full_training``: forward plus the full backward (input and weight
    gradients of every layer), ~3x the forward.
    """
    if denominator not in DENOMINATORS:
        raise ValueError(f"unknown denominator {denominator!r}; choose one of {DENOMINATORS}")
    m, r = spec.model, spec.routing
    B = batch_size or spec.train.batch_size
    T = seq_len or spec.train.seq_len
    D, F, V, L = m.d_model, m.ffn_hidden, m.vocab_size, m.n_layers
    N = B * T
    attn_proj, attn_scores, ffn = attn_proj_macs_per_token(m) * N, 2 * B * T * T * D, m.ffn_matrices * D * F * N
    head = D * V * N
    forward = L * (attn_proj + attn_scores + ffn) + head
    layer_dx = attn_proj + ATTN_BACKWARD_RATIO * attn_scores + ffn
    if denominator == "forward_only":
        return float(forward)
    if denominator == "full_training":
        return float(forward + head + L * layer_dx + head + L * (attn_proj + ffn))
    lowest = min(r.controlled_layers) if r.controlled_layers else L
    return float(forward + head + (L - 1 - lowest) * layer_dx) if lowest < L else float(forward)


def flops_proxy(spec: RunSpec, denominator: Denominator = "controller_only", **kwargs) -> float:
    """Training FLOPs proxy (docs/DESIGN.md): one step of the recipe / one step of the full-only model."""
    num = step_macs(spec, **kwargs)["total"]
    den = dense_step_macs(spec, denominator, kwargs.get("batch_size"), kwargs.get("seq_len"))
    return num / den
