"""Stage 1: the dense backbone, pretrained once per study and cached, or loaded from a checkpoint.

Cache: ``<cache>/backbones/<key>/`` with ``backbone.safetensors`` (the dense model's state dict),
``spec.json`` (the resolved run spec it was trained under), ``info.json`` (held-out LM, steps, wall time;
written last, so its presence means the backbone is complete), ``metrics.jsonl`` and resumable
checkpoints in ``ckpt/`` while it trains. The key hashes exactly what determines the weights: the model
spec (its architecture options left out where they keep their defaults, so GPT-2 keys predate them),
``backbone.train``, the data spec, the corpus and tokenizer hashes and :data:`BACKBONE_SEED`. Every
arm and seed of a study (and every study with the same backbone) shares it; routing, gate, loss and the
controller stage are not part of it. A process trains a backbone holding the lock of its folder
(:func:`specroute.locks.hold_lock`); another study that needs the same backbone meanwhile waits for it and
then reads the cache.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from safetensors.torch import load_file, save_file
from torch import Tensor

from specroute.data.sampler import WindowSampler
from specroute.data.shards import TokenData
from specroute.flops.analytic import dense_step_macs
from specroute.spec.loader import dump_run
from specroute.spec.models import ARCHITECTURE_DEFAULTS, RunSpec
from specroute.locks import hold_lock
from specroute.model.pretrained import Checkpoint, load_backbone_state, resolve_checkpoint
from specroute.store import UserError, atomic_write_json, atomic_write_with, cache_dir, sha256_json
from specroute.train.device import Device
from specroute.train.progress import StudyProgress
from specroute.train.stages import DenseStage, build_seeded, dense_heldout_lm, derive_seed, eval_batches
from specroute.train.trainer import MetricsSink, StepBudget, Trainer, checkpoint_step

#: Seed of the backbone's initialisation and data order (one backbone per study, whatever the seeds).
BACKBONE_SEED = 0
#: Version of the backbone cache layout; part of the key.
FORMAT = 1
#: How long a study waits for another process that trains the same backbone into the cache (s).
TRAINING_LOCK_WAIT_S = 7 * 24 * 3600.0


@dataclass
class Backbone:
    """Backbone weights (CPU) and the facts the report states about them.

    ``info``: heldout_lm (nats/token), initial_lm, steps (None for a loaded checkpoint), cache_key,
    wall_s (training time; 0 when it came from the cache or a checkpoint), source
    (``trained`` | ``cache`` | ``checkpoint`` | ``pretrained``), path; for ``pretrained``, ``checkpoint``:
    the checkpoint's identity (source, repo_id, revision, weights file and sha256).
    """

    state: dict[str, Tensor]
    info: dict[str, Any]


def backbone_key(spec: RunSpec, data: TokenData) -> str:
    d = dump_run(spec)
    # the architecture options at their defaults (GPT-2's) are left out: a key made before they existed holds
    model = {k: v for k, v in d["model"].items() if k not in ARCHITECTURE_DEFAULTS or v != ARCHITECTURE_DEFAULTS[k]}
    # micro-batches change the memory a step takes, not the training (equal within float tolerance)
    train = {k: v for k, v in d["backbone"]["train"].items() if k != "grad_accum_steps"}
    return sha256_json({
        "format": FORMAT, "model": model, "train": train, "data": d["data"],
        "corpus_sha256": data.meta["corpus_sha256"], "tokenizer_sha256": data.meta["tokenizer_sha256"],
        "seed": BACKBONE_SEED,
    })[:20]


def backbone_steps_left(spec: RunSpec, data: TokenData, cache: str | Path | None) -> int:
    """Optimiser steps stage 1 still needs (0 if cached or loaded from a checkpoint)."""
    if spec.backbone.checkpoint or spec.backbone.pretrained:
        return 0
    folder = cache_dir(cache) / "backbones" / backbone_key(spec, data)
    if (folder / "info.json").is_file():
        return 0
    return spec.backbone.train.steps - checkpoint_step(folder / "ckpt")


def get_backbone(spec: RunSpec, data: TokenData, device: Device, cache: str | Path | None = None,
                 spec_dir: Path | None = None, progress: StudyProgress | None = None,
                 budget: StepBudget | None = None) -> Backbone:
    """The study's backbone: loaded from ``backbone.checkpoint`` or ``backbone.pretrained``, from the cache,
    or trained (resuming an interrupted training from its last checkpoint) and cached.

    Raises UserError for a checkpoint path that does not exist or does not fit the model spec, a pretrained
    checkpoint that is not here and cannot be downloaded (CheckpointUnavailable), or data whose vocabulary
    is not the pretrained model's.
    """
    heldout = WindowSampler(data.heldout, spec.backbone.train.seq_len, "held-out")
    if spec.backbone.checkpoint:
        return _load_checkpoint(spec, spec_dir, heldout, device)
    if spec.backbone.pretrained:
        return _load_pretrained(spec, data, spec_dir, cache, heldout, device)
    key = backbone_key(spec, data)
    folder = cache_dir(cache) / "backbones" / key
    if (folder / "info.json").is_file():
        return _cached(folder)
    # One process trains a backbone; another study that needs the same one waits, then reads the cache.
    waiting = (lambda message: progress.note(escape(message))) if progress else None
    with hold_lock(folder, "the backbone cache", TRAINING_LOCK_WAIT_S, waiting):
        if (folder / "info.json").is_file():
            return _cached(folder)
        return _train(spec, data, device, folder, key, heldout, progress, budget)


def _cached(folder: Path) -> Backbone:
    weights = folder / "backbone.safetensors"
    info = json.loads((folder / "info.json").read_text())
    return Backbone(load_file(str(weights)), {**info, "source": "cache", "wall_s_trained": info["wall_s"],
                                               "wall_s": 0.0, "path": str(weights)})


def _train(spec: RunSpec, data: TokenData, device: Device, folder: Path, key: str, heldout: WindowSampler,
           progress: StudyProgress | None, budget: StepBudget | None) -> Backbone:
    """Train the backbone into ``folder`` (resuming its checkpoint) and cache it; the caller holds its lock."""
    weights = folder / "backbone.safetensors"
    stage = DenseStage.seeded(spec, BACKBONE_SEED, heldout, device)
    sink = MetricsSink(folder / "metrics.jsonl")
    on_step = functools.partial(progress.update, "backbone") if progress else None
    trainer = Trainer(stage, WindowSampler(data.train, spec.backbone.train.seq_len, "train"),
                      {"data": derive_seed(BACKBONE_SEED, "data"), "loss": derive_seed(BACKBONE_SEED, "loss")},
                      device, folder / "ckpt", sink, on_step, budget, "backbone",
                      step_flops=2 * dense_step_macs(spec, "full_training", spec.backbone.train.batch_size,
                                                     spec.backbone.train.seq_len))
    trainer.restore()
    if progress:
        progress.start_run("backbone", spec.backbone.train.steps, trainer.step)
    try:
        history = trainer.run()
    finally:
        sink.close()
        if progress:
            progress.end_run("backbone")
    state = {k: v.detach().cpu().clone().contiguous() for k, v in stage.model.backbone_state_dict().items()}
    atomic_write_with(weights, lambda tmp: save_file(state, str(tmp)))
    atomic_write_json(folder / "spec.json", dump_run(spec))
    info = {
        "heldout_lm": history["eval"][-1]["lm"], "initial_lm": history["initial"]["lm"],
        "steps": spec.backbone.train.steps, "cache_key": key, "wall_s": trainer.wall_s,
        "lm": [[e["step"], e["lm"]] for e in history["eval"]], "speed": trainer.speed(),
    }
    atomic_write_json(folder / "info.json", info)
    return Backbone(state, {**info, "source": "trained", "path": str(weights)})


def checkpoint_of(spec: RunSpec, spec_dir: Path | None, cache: str | Path | None) -> Checkpoint | None:
    """The pretrained checkpoint of ``backbone.pretrained`` on this machine (downloaded if need be), or None
    when the spec names none. Raises CheckpointUnavailable (a UserError) when it cannot be had."""
    if not spec.backbone.pretrained:
        return None
    return resolve_checkpoint(spec.backbone.pretrained, spec.backbone.revision, spec_dir, cache)


def _load_pretrained(spec: RunSpec, data: TokenData, spec_dir: Path | None, cache: str | Path | None,
                     heldout: WindowSampler, device: Device) -> Backbone:
    """The frozen pretrained backbone, converted to the decoder, with its held-out LM on the study's data;
    ``info["checkpoint"]`` is the checkpoint's identity (:meth:`Checkpoint.identity`)."""
    checkpoint = checkpoint_of(spec, spec_dir, cache)
    assert checkpoint is not None
    if data.vocab_size > spec.model.vocab_size:
        raise UserError(f"data.tokenizer: the data's vocabulary ({data.vocab_size:,} ids, tokenizer "
                        f"{data.meta['tokenizer']}) exceeds the pretrained model's vocab_size={spec.model.vocab_size:,} "
                        f"({checkpoint.source}); tokenize with the checkpoint's own tokenizer (data.tokenizer: "
                        "pretrained)")
    model = build_seeded(spec, BACKBONE_SEED, routed=False)
    state = load_backbone_state(checkpoint, spec.model)
    try:
        model.load_backbone(state)
    except RuntimeError as e:
        raise UserError(f"backbone.pretrained: {checkpoint.source} does not fit the spec's model: {e}") from None
    model = model.to(device.torch).eval()
    lm = dense_heldout_lm(model, eval_batches(heldout, spec.backbone.train, device), device)
    info = {"heldout_lm": lm, "initial_lm": None, "steps": None, "cache_key": None, "wall_s": 0.0, "lm": [],
            "source": "pretrained", "path": str(checkpoint.folder), "checkpoint": checkpoint.identity()}
    return Backbone({k: v.detach().cpu().clone() for k, v in model.backbone_state_dict().items()}, info)


def _load_checkpoint(spec: RunSpec, spec_dir: Path | None, heldout: WindowSampler, device: Device) -> Backbone:
    path = Path(spec.backbone.checkpoint).expanduser()
    if not path.is_absolute() and spec_dir is not None:
        path = spec_dir / path
    if not path.is_file():
        raise UserError(f"backbone.checkpoint: {path} not found")
    state = load_file(str(path))
    model = build_seeded(spec, BACKBONE_SEED, routed=False)
    if spec.model.tie_embeddings and "lm_head.weight" not in state and "wte.weight" in state:
        state["lm_head.weight"] = state["wte.weight"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"backbone.checkpoint: {path} does not fit the spec's model: {e}") from None
    model = model.to(device.torch).eval()
    lm = dense_heldout_lm(model, eval_batches(heldout, spec.backbone.train, device), device)
    info = {"heldout_lm": lm, "initial_lm": None, "steps": None, "cache_key": None, "wall_s": 0.0,
            "lm": [], "source": "checkpoint", "path": str(path)}
    return Backbone({k: v.detach().cpu().clone() for k, v in model.backbone_state_dict().items()}, info)

