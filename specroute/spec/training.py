"""The two training stages' settings: optimiser and schedule, steps and batches, evaluation and
checkpoints (:class:`TrainSpec`), stage 1's backbone (:class:`BackboneSpec`) and stage 2's trained groups
(:class:`ControllerTrainSpec`; docs/DESIGN.md, "Training stages")."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, computed_field, model_validator

from specroute.spec.base import MAX_BATCH, MAX_POSITIONS, MAX_STEPS, MAX_THRESHOLDS, Strict

#: An AdamW beta: in [0, 1), as torch requires.
Beta = Annotated[float, Field(ge=0, lt=1)]


class OptimizerSpec(Strict):
    """AdamW with a warmup + decay schedule."""

    lr_peak: float = Field(1e-3, gt=0, description="Peak learning rate.")
    betas: tuple[Beta, Beta] = Field(
        (0.9, 0.95), strict=False, description="AdamW betas (a YAML list of two numbers, each in [0, 1))."
    )
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    warmup_steps: int = Field(10, ge=0, le=MAX_STEPS, description="Linear warmup from 0 to lr_peak.")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Decay after warmup, down to lr_peak * min_lr_ratio."
    )
    min_lr_ratio: float = Field(
        0.1, ge=0, le=1, description="Final learning rate as a share of lr_peak (cosine, linear)."
    )


class TrainSpec(Strict):
    """One training stage: steps, batch, optimiser and schedule, clipping, eval and checkpoint cadence.

    The stage is the field that holds it: ``backbone.train`` (stage 1) or ``train`` (stage 2).
    """

    steps: int = Field(100, ge=1, le=MAX_STEPS, description="Optimiser steps.")
    batch_size: int = Field(8, ge=1, le=MAX_BATCH, description="Sequences per step (B).")
    seq_len: int = Field(64, ge=1, le=MAX_POSITIONS, description="Tokens per sequence (T).")
    optimizer: OptimizerSpec = Field(
        default_factory=OptimizerSpec, description="AdamW settings and the learning-rate schedule."
    )
    grad_clip: float | None = Field(1.0, gt=0, description="Global-norm clip; null = none.")
    eval_every: int = Field(20, ge=1, le=MAX_STEPS, description="Steps between held-out evaluations.")
    eval_batches: int = Field(4, ge=1, le=MAX_BATCH, description="Held-out batches per evaluation.")
    checkpoint_every: int = Field(50, ge=1, le=MAX_STEPS, description="Steps between resumable checkpoints.")
    compile: bool = Field(False, description=(
        "Run the model's forward (training and evaluation steps) through torch.compile (inductor, static "
        "shapes; specroute.train.compiled). Outputs equal eager within float tolerance; the first step of a "
        "session pays the compile time, reported apart (a run's speed.compile_s). Under threshold routing "
        "with gather execution the routed FFN step stays eager (its token count is data-dependent)."))
    grad_accum_steps: int = Field(
        1, ge=1, le=MAX_BATCH,
        description="Micro-batches one optimiser step is accumulated over (each batch_size / grad_accum_steps "
        "sequences; must divide batch_size). The step equals the whole-batch step within float tolerance: "
        "batch-level statistics (standardised oracle labels, rank pair counts, the budget's realised share) are "
        "those of the whole batch. Not with routing.budget.enforcement=topk_batch. 1 = the whole batch at once.",
    )

    @model_validator(mode="after")
    def _micro_batches(self) -> TrainSpec:
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(
                f"grad_accum_steps: {self.grad_accum_steps} does not divide batch_size={self.batch_size}; "
                "use a divisor of batch_size (each micro-batch holds batch_size / grad_accum_steps sequences)"
            )
        return self

    @computed_field  # type: ignore[prop-decorator]
    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimiser step: batch_size * seq_len."""
        return self.batch_size * self.seq_len


class BackboneSpec(Strict):
    """Stage 1: dense pretraining of the backbone, or a checkpoint to load instead (specroute's own
    safetensors file, ``checkpoint``, or a pretrained Hugging Face model, ``pretrained``)."""

    checkpoint: str | None = Field(
        None, description="Path of a safetensors backbone to load; null = pretrain (cached)."
    )
    pretrained: str | None = Field(
        None, min_length=1,
        description="A pretrained checkpoint loaded frozen instead of pretraining (stage 1 is skipped): a local "
        "folder (config.json, model.safetensors or pytorch_model.bin, tokenizer.json; relative to the spec file), a "
        "Hugging Face repo id (openai-community/gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2; the hub cache, "
        "then a download), or specroute/tiny-random-gpt2 (a tiny random GPT-2 written on the fly). The model "
        "section comes from its config.json and the data's tokenizer from its tokenizer.json; null = none.",
    )
    revision: str | None = Field(
        None, min_length=1,
        description="Hub revision (branch, tag or commit hash) of a repo id in pretrained; null = the default "
        "branch. Every report records the commit it resolved to.",
    )
    train: TrainSpec = Field(
        default_factory=TrainSpec, description="Stage 1 schedule (unused when a checkpoint is given; with one, "
        "seq_len, batch_size and eval_batches set its held-out evaluation)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> BackboneSpec:
        if self.checkpoint and self.pretrained:
            raise ValueError(f"backbone.pretrained: both checkpoint={self.checkpoint!r} and pretrained="
                             f"{self.pretrained!r} are set; keep one")
        if self.revision and not self.pretrained:
            raise ValueError(f"backbone.revision: revision={self.revision!r} needs backbone.pretrained (a repo id)")
        return self


class TrackingSpec(Strict):
    """Where a run's metrics go besides ``metrics.jsonl`` (the ``tracking`` extra: TensorBoard, W&B)."""

    tensorboard: bool = Field(
        False, description="Write every metrics.jsonl record to TensorBoard event files, one run folder per "
        "(arm, seed): <out>/tensorboard/<arm>/seed<k> (the --tensorboard flag does the same)."
    )
    wandb: Literal["off", "offline", "online"] = Field(
        "off", description="Log every metrics.jsonl record to Weights & Biases, one W&B run per (arm, seed) named "
        "<arm>/seed<k> in the group of the study's name; offline: files under <out>/wandb, synced later with "
        "`wandb sync`; off = none (the --wandb flag overrides)."
    )
    wandb_project: str = Field("specroute", min_length=1, description="The W&B project the runs go to.")


class ControllerTrainSpec(TrainSpec):
    """Stage 2: controller training on the stage-1 backbone; controller-only unless ``trainable``
    names ``backbone``."""

    trainable: list[Literal["gate", "cheap_ffn", "backbone"]] = Field(
        default_factory=lambda: ["gate", "cheap_ffn"],
        description="Parameter groups trained: gate (G1 MLP; G3 encoder, predictor, score head — "
        "never the target head), cheap_ffn, backbone (everything else; not controller-only).",
    )
    lm_thresholds: list[float] = Field(
        default_factory=list, max_length=MAX_THRESHOLDS, description="LM levels tau (nats/token) for threshold_hits."
    )
    loss_grad_norm_every: int | None = Field(
        None, ge=1, le=MAX_STEPS,
        description="Every this many steps (the steps whose 1-based number is a multiple of it), log the L2 "
        "norm of each loss term's gradient (weighted as it enters the total) on each trained parameter group; "
        "null = never. One extra backward pass per term at a logged step; the training is the same either way.",
    )

    tracking: TrackingSpec = Field(
        default_factory=TrackingSpec, description="TensorBoard / W&B logging of the run's metrics (none by default)."
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def controller_only(self) -> bool:
        """Whether the backbone is frozen in this stage (``backbone`` not in ``trainable``)."""
        return "backbone" not in self.trainable
