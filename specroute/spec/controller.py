"""The controller's part of the spec language: the gates (G1, G3) and the loss recipe with its oracle
labels (docs/DESIGN.md, "Gates" and "Losses"). :class:`specroute.spec.models.RunSpec` holds them as its
``gate``, ``gates`` and ``loss`` fields."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, computed_field, model_validator

from specroute.spec.base import MAX_HIDDEN, MAX_LAYERS, MAX_POSITIONS, MAX_SEED, MAX_WIDTH, Strict

__all__ = ["G1Spec", "G3Spec", "GateSpec", "LossSpec", "OracleSpec"]

# --------------------------------------------------------------------------------------------------
# gates


class G1Spec(Strict):
    """G1 — MLP gate: s_t = MLP(LN(h_t)), a scalar utility score per token."""

    kind: Literal["G1"] = Field("G1", description="Gate variant tag: G1 (MLP gate).")
    hidden: int = Field(64, ge=1, le=MAX_HIDDEN, description="Hidden width of the gate MLP.")
    init_bias: float = Field(0.0, description="Initial bias of the score output (logit).")
    score_init_std: float | None = Field(
        None,
        gt=0,
        description="Std of the normal init of the score head's weight; null: model.init_std (the paper reading). "
        "The score's initial spread over tokens scales with it: a small value gives G1 the tiny initial spread "
        "of G3 (docs/DESIGN.md, \"Gates\": score scale).",
    )


class G3Spec(Strict):
    """G3 — JEPA-guided gate with an action-conditional latent predictor and a fixed target head."""

    kind: Literal["G3"] = Field("G3", description="Gate variant tag: G3 (JEPA-guided gate).")
    latent_dim: int = Field(16, ge=1, le=MAX_WIDTH, description="Latent size K of the encoder and target head.")
    predictor_hidden: int = Field(64, ge=1, le=MAX_HIDDEN, description="Hidden width of the predictor P(z, a).")
    init_bias: float = Field(0.0, description="Initial bias of the score head (logit).")
    target_seed: int = Field(
        1234, ge=0, le=MAX_SEED, description="Seed of the fixed (never trained) target projection head T."
    )
    score_init_std: float | None = Field(
        None,
        gt=0,
        description="Std of the normal init of the score head's weight w; null: model.init_std (the paper reading).",
    )
    score_norm: Literal["none", "layernorm"] = Field(
        "none",
        description="none: score = w . d + b with d = P(z, full) - P(z, cheap) (the paper reading: its spread "
        "over tokens is a product of small weights); layernorm: score = w . LN(d) + b, LN over the K latent "
        "dims without affine parameters, so that the score's scale no longer rides on the predictor's weights "
        "(needs latent_dim >= 2; docs/DESIGN.md, \"Gates\": score scale).",
    )
    target: Literal["h_after", "ffn_effect", "normalized"] = Field(
        "h_after",
        description="What the fixed head T maps to the JEPA target of executed action a, with h the hidden "
        "state entering the FFN step and h_after = h + FFN_a(LN(h)): h_after: T(sg(h_after)) (the paper "
        "reading; = T(h) + T(FFN_a(LN(h))), mostly action-independent); ffn_effect: T(sg(FFN_a(LN(h)))), the "
        "action's own effect; normalized: T(LN(sg(h_after))), LN without affine parameters "
        "(docs/DESIGN.md, \"Gates\").",
    )

    @model_validator(mode="after")
    def _norm_needs_latents(self) -> G3Spec:
        if self.score_norm == "layernorm" and self.latent_dim < 2:
            raise ValueError(
                f"score_norm: layernorm over latent_dim={self.latent_dim} dimension makes every score equal "
                "to the bias; set latent_dim >= 2 or score_norm: none"
            )
        return self


GateSpec = Annotated[G1Spec | G3Spec, Field(discriminator="kind")]


# --------------------------------------------------------------------------------------------------
# losses


class OracleSpec(Strict):
    """How oracle utility labels u_{l,t} are made (docs/DESIGN.md, "Losses")."""

    labeling: Literal["off_policy", "on_policy"] = Field(
        "off_policy",
        description="off_policy: every layer after l runs full (the paper's); "
        "on_policy: later layers follow the current gate decisions.",
    )
    layers_per_step: int | None = Field(
        1,
        ge=1,
        le=MAX_LAYERS,
        description="Controlled layers that get labels each step, sampled uniformly; null = all.",
    )
    counterfactual: Literal["all_flip", "per_token"] = Field(
        "all_flip",
        description="all_flip: layer l runs all-full vs all-cheap for every token at once and each token "
        "reads its own loss (the paper's); per_token: one token at a time flips at layer l (the others keep "
        "the gate's decisions there) and its label is the change of its sequence's summed loss, for "
        "tokens_per_sequence sampled tokens (docs/DESIGN.md, \"Losses\").",
    )
    tokens_per_sequence: int = Field(
        8,
        ge=1,
        description="per_token only: tokens S of each sequence that get exact labels each step, sampled "
        "uniformly without replacement (every token if S >= T); only they enter util and rank.",
    )
    util_target: Literal["raw", "standardized"] = Field(
        "standardized",
        description="raw: regress the score on u (nats); standardized: on (u - mean) / std over "
        "the labelled tokens of the layer in the batch.",
    )
    util_loss: Literal["mse", "huber"] = Field("mse", description="Regression loss of UTIL.")
    huber_delta: float = Field(1.0, gt=0, description="Huber transition point (target units).")
    rank_margin: float = Field(
        0.0, ge=0, description="Pairs enter RANK only if their labels differ by more (nats)."
    )
    rank_pairs_per_token: int | None = Field(
        8,
        ge=1,
        le=MAX_POSITIONS,
        description="Pairs sampled per token within its sequence for RANK; null = all pairs.",
    )


class LossSpec(Strict):
    """The recipe L = lm*LM + util*UTIL + rank*RANK + jepa*JEPA + budget*BUDGET."""

    lm: float = Field(1.0, ge=0, description="Weight of next-token cross-entropy (nats/token).")
    util: float = Field(0.0, ge=0, description="Weight of oracle-utility regression.")
    rank: float = Field(0.0, ge=0, description="Weight of the pairwise rank loss.")
    jepa: float = Field(0.0, ge=0, description="Weight of JEPA alignment (G3 only).")
    budget: float = Field(0.0, ge=0, description="Weight of the budget penalty (threshold mode).")
    oracle: OracleSpec = Field(
        default_factory=OracleSpec, description="Oracle labels for util and rank: labeling, layers, pairing."
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def uses_oracle(self) -> bool:
        """Whether a step must compute oracle labels (util or rank on)."""
        return self.util > 0 or self.rank > 0
