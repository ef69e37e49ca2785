"""The spec language: strict, immutable Pydantic v2 models.

A *run spec* (:class:`RunSpec`) fully determines one training run: the decoder, the routing, the gate,
the loss recipe, the data, the two training stages and the seed. A *study spec* (:class:`specroute.spec.study.StudySpec`)
is a run spec plus the study's arms (named overrides), its seeds and its profiles; every (arm, seed) pair
resolves to one :class:`RunSpec` (see :mod:`specroute.spec.loader`).

Terms follow docs/DESIGN.md: controlled layer, budget (``full_fraction``), full / cheap FFN, oracle label,
off-policy / on-policy, straight-through, top-k, controller-only.

Training has two stages (docs/DESIGN.md, "Training stages"), each a field of :class:`RunSpec` rather than a
``stage`` tag: ``backbone`` is stage 1 (dense pretraining, or a checkpoint to load) and ``train`` is stage 2
(controller-only training: the backbone frozen, the ``train.trainable`` groups trained).

A discriminated union (``gate``, ``data``) whose ``kind`` is left out takes the kind of the field's default
(``G1``, ``embedded``); entries of ``gates`` take the kind of their key.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, computed_field, field_validator, model_validator

from specroute.spec.base import (MAX_BATCH, MAX_DATA_TOKENS, MAX_HIDDEN, MAX_LAYERS, MAX_POSITIONS, MAX_VOCAB,
                                 MAX_WIDTH, Strict, folder_name)
from specroute.spec.controller import G1Spec, GateSpec, LossSpec
from specroute.spec.training import BackboneSpec, ControllerTrainSpec

#: Kind a discriminated-union field takes when its mapping leaves ``kind`` out (the field's default).
DEFAULT_KINDS = {"gate": "G1", "data": "embedded"}


def with_default_kinds(data: Any) -> Any:
    """A copy of ``data`` whose ``gate`` and ``data`` mappings without ``kind`` have the default kind
    (G1, embedded); anything that is not a dict is returned as it is, for validation to report."""
    if isinstance(data, dict):
        data = dict(data)
        for key, kind in DEFAULT_KINDS.items():
            value = data.get(key)
            if isinstance(value, dict) and "kind" not in value:
                data[key] = {"kind": kind, **value}
    return data


# --------------------------------------------------------------------------------------------------
# model


#: GPT-2's values of the architecture options (ModelSpec's defaults): see ModelSpec.architecture_changes.
GPT2_ARCHITECTURE: dict[str, Any] = {"norm": "layernorm", "norm_eps": 1e-5, "position": "learned", "ffn": "mlp"}
#: Every architecture option's default, those above and the ones that only matter beside another option.
ARCHITECTURE_DEFAULTS: dict[str, Any] = {**GPT2_ARCHITECTURE, "n_kv_heads": None, "qkv_bias": None,
                                         "rope_theta": 10000.0}


class ModelSpec(Strict):
    """The dense decoder: pre-norm blocks, causal self-attention, the full FFN.

    The defaults are GPT-2's architecture (LayerNorm, learned positions, tanh-GELU MLP, one key/value head per
    query head, biases, tied head). The architecture options give the Llama family (Llama, SmolLM, TinyLlama,
    Qwen2): ``norm: rmsnorm``, ``position: rope``, ``ffn: swiglu``, ``n_kv_heads`` < ``n_heads`` (grouped-query
    attention), ``bias: false``, ``tie_embeddings: false`` (docs/DESIGN.md, "The model").
    """

    n_layers: int = Field(4, ge=1, le=MAX_LAYERS, description="Number of transformer blocks.")
    d_model: int = Field(128, ge=1, le=MAX_WIDTH, description="Width of the hidden state (D).")
    n_heads: int = Field(4, ge=1, le=MAX_WIDTH, description="Attention (query) heads; must divide d_model.")
    n_kv_heads: int | None = Field(
        None, ge=1, le=MAX_WIDTH,
        description="Key/value heads (grouped-query attention: each serves n_heads / n_kv_heads query heads); "
        "must divide n_heads. null means n_heads (multi-head attention); 1 is multi-query attention.",
    )
    context_length: int = Field(128, ge=1, le=MAX_POSITIONS, description="Maximum sequence length (positions).")
    vocab_size: int = Field(256, ge=2, le=MAX_VOCAB, description="Vocabulary size (V) of the tokenizer.")
    d_ff: int | None = Field(
        None, ge=1, le=MAX_HIDDEN, description="Hidden width of the full FFN; null means 4 * d_model."
    )
    ffn: Literal["mlp", "swiglu"] = Field(
        "mlp",
        description="Kind of the full FFN (and of the cheap FFN): mlp: proj(GELU_tanh(fc(x))), GPT-2's two "
        "matrices; swiglu: proj(SiLU(fc(x)) * fc_up(x)), Llama's three matrices (gate, up, down projections).",
    )
    norm: Literal["layernorm", "rmsnorm"] = Field(
        "layernorm",
        description="The backbone's norms (before attention, before the FFN, before the LM head): layernorm "
        "(GPT-2's, a bias when bias is true) or rmsnorm (x / sqrt(mean(x^2) + eps) * gain, Llama's; no bias).",
    )
    norm_eps: float = Field(1e-5, gt=0, le=1, description="Epsilon added to the variance (or mean square) in every "
                            "backbone norm.")
    position: Literal["learned", "rope"] = Field(
        "learned",
        description="Position information: learned: a position embedding added to the token embedding "
        "(GPT-2's, context_length x D parameters); rope: rotary embeddings of queries and keys in every "
        "attention layer (no parameters; the rotate-half convention of Llama's Hugging Face implementation).",
    )
    rope_theta: float = Field(10000.0, gt=1, description="Base of the rotary frequencies: pair i of a head "
                              "turns by position * rope_theta^(-2i / head_dim) (position: rope only).")
    tie_embeddings: bool = Field(True, description="Share the token embedding with the LM head.")
    bias: bool = Field(True, description="Biases in linear layers and LayerNorms (for the query, key and value "
                       "projections see qkv_bias).")
    qkv_bias: bool | None = Field(
        None, description="Biases of the query, key and value projections; null means as bias (Qwen2: true "
        "with bias false)."
    )
    init_std: float = Field(0.02, gt=0, description="Std of the normal init of weight matrices.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def head_dim(self) -> int:
        """Width of one attention head: d_model / n_heads."""
        return self.d_model // self.n_heads

    @computed_field  # type: ignore[prop-decorator]
    @property
    def kv_heads(self) -> int:
        """Resolved number of key/value heads (n_kv_heads, or n_heads when null)."""
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @computed_field  # type: ignore[prop-decorator]
    @property
    def kv_dim(self) -> int:
        """Width of the key (and of the value) projection: kv_heads * head_dim."""
        return self.kv_heads * self.head_dim

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ffn_hidden(self) -> int:
        """Resolved hidden width of the full FFN."""
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ffn_matrices(self) -> int:
        """Weight matrices of one FFN of this kind (mlp 2, swiglu 3), each D x hidden."""
        return 3 if self.ffn == "swiglu" else 2

    @property
    def attn_bias(self) -> bool:
        """Whether the query, key and value projections have biases (qkv_bias, or bias when null)."""
        return self.bias if self.qkv_bias is None else self.qkv_bias

    @property
    def architecture_changes(self) -> list[str]:
        """The architecture options that make this model differ from GPT-2's decoder, as ``field=value``
        (norm, norm_eps, position, ffn, n_kv_heads, qkv_bias); empty for GPT-2's architecture."""
        out = [f"{k}={getattr(self, k)}" for k, v in GPT2_ARCHITECTURE.items() if getattr(self, k) != v]
        if self.kv_heads != self.n_heads:
            out.append(f"n_kv_heads={self.n_kv_heads}")
        if self.attn_bias != self.bias:
            out.append(f"qkv_bias={self.qkv_bias}")
        return out

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelSpec:
        if self.d_model % self.n_heads:
            raise ValueError(
                f"n_heads: n_heads={self.n_heads} does not divide d_model={self.d_model}; "
                "pick n_heads so that d_model / n_heads is an integer"
            )
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_kv_heads: n_kv_heads={self.n_kv_heads} does not divide n_heads={self.n_heads}; pick a divisor "
                "of n_heads (n_heads or null for multi-head attention, 1 for multi-query attention)"
            )
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(
                f"position: rope rotates pairs of dimensions and needs an even head width (d_model / n_heads = "
                f"{self.d_model} / {self.n_heads} = {self.head_dim}); pick n_heads so that it is even, or "
                "position: learned"
            )
        return self


# --------------------------------------------------------------------------------------------------
# routing


class BudgetSpec(Strict):
    """The compute budget at each controlled layer (docs/DESIGN.md, "Budget")."""

    full_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="Share b of tokens that take the full FFN per layer."
    )
    enforcement: Literal["topk_sequence", "topk_batch", "threshold"] = Field(
        "topk_sequence",
        description=(
            "topk_sequence: exactly ceil(b*T) tokens of each sequence take full (not causal); "
            "topk_batch: exactly ceil(b*B*T) tokens of the batch (not causal); "
            "threshold: full iff the gate score > 0 (causal), steered toward b by the budget loss."
        ),
    )
    tolerance: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Allowed |realised full share - b| for threshold mode once trained (verify), and for a "
        "top-k gate's calibrated threshold on its calibration data.",
    )
    calibration_batches: int = Field(
        4,
        ge=0,
        le=MAX_BATCH,
        description=(
            "Top-k only: fixed training batches (train.batch_size windows each) on which each controlled "
            "layer's causal threshold tau_l (the (1 - b) quantile of its scores, layers calibrated in order) is "
            "fitted after training; held-out LM and full share are then also reported under the causal rule "
            "full iff score > tau_l, and generation uses it. 0: no causal evaluation. Ignored by threshold."
        ),
    )
    calibrate_every_eval: bool = Field(
        False,
        description=(
            "Top-k only: calibrate and evaluate under the causal rule at every held-out evaluation too (a causal "
            "LM curve, so best_lm and avg_lm under the rule); costs calibration_batches x controlled layers + "
            "eval_batches no-grad forwards per evaluation (about +50% run time at the smoke profile). False: "
            "once, after training."
        ),
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def causal(self) -> bool:
        """Whether the decision for token t depends only on positions <= t."""
        return self.enforcement == "threshold"


class RoutingSpec(Strict):
    """Which layers are routed, and how (docs/DESIGN.md, "The model")."""

    controlled_layers: list[int] = Field(
        default_factory=lambda: [1, 3],
        description="0-based block indices whose FFN step is routed per token.",
    )
    budget: BudgetSpec = Field(
        default_factory=BudgetSpec, description="Share of tokens that take full, and how it is enforced."
    )
    cheap_ffn_hidden: int = Field(
        32, ge=0, le=MAX_HIDDEN, description="Hidden width of the cheap FFN; 0 means the cheap action is a skip."
    )
    execution: Literal["masked", "gather"] = Field(
        "masked",
        description="masked: both branches for every token, then select (no saving); "
        "gather: full FFN only on the selected tokens (real saving). Same outputs.",
    )
    estimator: Literal["score_scaling", "straight_through"] = Field(
        "score_scaling",
        description=(
            "Gradient path into the gate. score_scaling: the executed branch is multiplied by "
            "1 + p - sg(p) (full) or 1 - p + sg(p) (cheap), p = sigmoid(score): forward values "
            "unchanged, d/dp = +-branch output (Mixture-of-Depths style, works with gather). "
            "straight_through: forward uses the hard decision d, backward treats it as p, "
            "i.e. d/dp = FFN_full - FFN_cheap (needs both branches, so execution=masked)."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> RoutingSpec:
        layers = self.controlled_layers
        if len(set(layers)) != len(layers):
            raise ValueError(f"controlled_layers: {layers} has duplicates")
        if any(i < 0 for i in layers):
            raise ValueError(f"controlled_layers: {layers} has a negative index")
        if list(layers) != sorted(layers):
            raise ValueError(f"controlled_layers: {layers} must be sorted ascending")
        if self.estimator == "straight_through" and self.execution == "gather":
            raise ValueError(
                "estimator: straight_through needs both branches for every token; "
                "use execution=masked or estimator=score_scaling"
            )
        return self


# --------------------------------------------------------------------------------------------------
# data


class EmbeddedData(Strict):
    """The embedded corpus: real documentation prose shipped with Python; no network."""

    kind: Literal["embedded"] = Field("embedded", description="Data source tag.")
    tokenizer: Literal["bytes", "pretrained"] = Field(
        "bytes", description="bytes: UTF-8 bytes (vocab 256), no training, no download; pretrained: the "
        "tokenizer.json of backbone.pretrained (the default when that is set)."
    )
    heldout_fraction: float = Field(0.1, gt=0, lt=1, description="Share held out for eval.")


class FinewebEduData(Strict):
    """fineweb-edu through ``datasets`` (streaming a named sample config), GPT-2 BPE."""

    kind: Literal["fineweb_edu"] = Field("fineweb_edu", description="Data source tag.")
    dataset: str = Field("HuggingFaceFW/fineweb-edu", description="Hub dataset id.")
    config: str = Field("sample-10BT", description="Named sample config to stream.")
    max_tokens: int = Field(
        50_000_000, ge=1000, le=MAX_DATA_TOKENS, description="Tokens to cache (train + held-out)."
    )
    tokenizer: Literal["gpt2", "pretrained"] = Field(
        "gpt2", description="gpt2: GPT-2 BPE (vocab 50257); pretrained: the tokenizer.json of backbone.pretrained "
        "(the default when that is set)."
    )
    heldout_fraction: float = Field(0.01, gt=0, lt=1, description="Share held out for eval.")


class LocalData(Strict):
    """Local jsonl / parquet / csv files with a ``text`` column, same code path as fineweb-edu."""

    kind: Literal["local"] = Field("local", description="Data source tag.")
    paths: list[str] = Field(..., min_length=1, description="Files (relative to the spec file).")
    text_column: str = Field("text", description="Column holding the documents.")
    tokenizer: Literal["bytes", "gpt2", "pretrained"] = Field(
        "bytes", description="bytes: UTF-8 bytes (vocab 256); gpt2: GPT-2 BPE (vocab 50257); pretrained: the "
        "tokenizer.json of backbone.pretrained (the default when that is set)."
    )
    max_tokens: int | None = Field(None, ge=1000, le=MAX_DATA_TOKENS, description="Cap on tokens; null = all.")
    heldout_fraction: float = Field(0.1, gt=0, lt=1, description="Share held out for eval.")


DataSpec = Annotated[EmbeddedData | FinewebEduData | LocalData, Field(discriminator="kind")]


# --------------------------------------------------------------------------------------------------
# run and study


class RunSpec(Strict):
    """Everything that determines one run (one arm, one seed)."""

    name: str = Field("run", description="Name of the study (or run); the default output folder is "
                      "reports/<name>/<profile> (letters, digits, _, . and -).")
    description: str = Field("", description="One line on what the study tests (shown in reports).")

    model: ModelSpec = Field(default_factory=ModelSpec, description="The dense decoder.")
    routing: RoutingSpec = Field(
        default_factory=RoutingSpec, description="Controlled layers, budget, cheap FFN, execution, estimator."
    )
    gate: GateSpec = Field(
        default_factory=G1Spec, description="The gate, by kind: G1 (MLP) or G3 (JEPA-guided)."
    )
    loss: LossSpec = Field(default_factory=LossSpec, description="The loss recipe: weights and oracle.")
    data: DataSpec = Field(
        default_factory=EmbeddedData, description="Corpus by kind: embedded, fineweb_edu or local."
    )
    backbone: BackboneSpec = Field(
        default_factory=BackboneSpec, description="Stage 1: dense backbone pretraining or checkpoint."
    )
    train: ControllerTrainSpec = Field(
        default_factory=ControllerTrainSpec, description="Stage 2: controller training (backbone frozen)."
    )
    seed: int = Field(0, description="Controller init and data order seed.")

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        return folder_name(name, "name")

    @model_validator(mode="before")
    @classmethod
    def _default_kinds(cls, data: Any) -> Any:
        """Give ``gate`` and ``data`` mappings without ``kind`` the default kind (G1, embedded)."""
        return with_default_kinds(data)

    @model_validator(mode="after")
    def _cross_field(self) -> RunSpec:
        m, r = self.model, self.routing
        bad = [i for i in r.controlled_layers if i >= m.n_layers]
        if bad:
            raise ValueError(
                f"routing.controlled_layers: layer {bad[0]} is beyond model.n_layers={m.n_layers} "
                f"(valid indices 0..{m.n_layers - 1})"
            )
        o = self.loss.oracle
        if o.counterfactual == "per_token" and o.labeling == "on_policy" and r.budget.enforcement == "topk_batch":
            raise ValueError(
                "loss.oracle.counterfactual: per_token with labeling=on_policy needs a per-sequence budget: "
                "under routing.budget.enforcement=topk_batch one token's flip moves the later layers' decisions "
                "of every sequence in the batch; use topk_sequence or threshold, or labeling=off_policy"
            )
        if self.train.grad_accum_steps > 1 and r.budget.enforcement == "topk_batch":
            raise ValueError(
                f"train.grad_accum_steps: {self.train.grad_accum_steps} micro-batches cannot keep "
                "routing.budget.enforcement=topk_batch (its top-k ranks the whole batch's tokens, a micro-batch's is "
                "another rule); use topk_sequence or threshold, or grad_accum_steps: 1"
            )
        if self.loss.jepa > 0 and self.gate.kind != "G3":
            raise ValueError(
                f"loss.jepa: jepa={self.loss.jepa} needs gate.kind=G3 (gate is {self.gate.kind}); "
                "set loss.jepa: 0"
            )
        for stage, t in (("train", self.train), ("backbone.train", self.backbone.train)):
            if t.seq_len > m.context_length:
                raise ValueError(
                    f"{stage}.seq_len: seq_len={t.seq_len} exceeds model.context_length={m.context_length}"
                )
        if (self.data.tokenizer == "pretrained") != bool(self.backbone.pretrained):
            raise ValueError(
                f"data.tokenizer: tokenizer={self.data.tokenizer!r} with backbone.pretrained="
                f"{self.backbone.pretrained!r}: a pretrained backbone reads text through its own tokenizer "
                "(data.tokenizer: pretrained, the default then), and only it"
            )
        if self.data.tokenizer == "bytes" and m.vocab_size < 256:
            raise ValueError(f"model.vocab_size: tokenizer 'bytes' needs vocab_size >= 256 (is {m.vocab_size})")
        if self.data.tokenizer == "gpt2" and m.vocab_size < 50257:
            raise ValueError(f"model.vocab_size: tokenizer 'gpt2' needs vocab_size >= 50257 (is {m.vocab_size})")
        return self

    @computed_field  # type: ignore[prop-decorator]
    @property
    def n_controlled(self) -> int:
        """Number of controlled layers."""
        return len(self.routing.controlled_layers)


def ceil_budget(full_fraction: float, n: int) -> int:
    """Tokens that take full among ``n`` under top-k: ceil(b * n), robust to float error.

    Documented choice (docs/DESIGN.md asks for ceil or floor): ceil, so any b > 0 routes at least one token.
    """
    return min(n, max(0, math.ceil(full_fraction * n - 1e-9)))
