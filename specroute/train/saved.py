"""A finished run loaded back from its folder, and text generated with it (``specroute generate``).

A run folder (``<out>/runs/<arm>/seed<k>/``, :mod:`specroute.train.runs`) holds the resolved run spec
(``spec.json``), the trained parameters (``controller.safetensors``) and, for a top-k gate, its calibrated
causal thresholds (``thresholds.json``, :mod:`specroute.train.calibration`). The backbone is the study's:
``<out>/summary.json`` names its cache key (``<cache>/backbones/<key>/backbone.safetensors``), or the spec's
``backbone.checkpoint`` names the file, or ``backbone.pretrained`` the checkpoint (the folder the summary
recorded, else looked up again). The routed model is that backbone with the run's parameters loaded
over it, which is the model the run evaluated.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file

from specroute.data.tokenizer import Tokenizer, load_tokenizer
from specroute.model.decoder import Decoder, NonCausalRoutingError, Thresholds, build_model
from specroute.model.pretrained import Checkpoint, load_backbone_state
from specroute.spec.models import RunSpec
from specroute.store import UserError, cache_dir
from specroute.train.backbone import checkpoint_of
from specroute.train.calibration import THRESHOLDS_FILE, load_thresholds


@dataclass
class SavedRun:
    """A run's routed model (eval mode, CPU), its spec, its causal thresholds (None: a threshold budget, or a
    top-k run without ``thresholds.json``) and its tokenizer."""

    spec: RunSpec
    model: Decoder
    thresholds: Thresholds | None
    tokenizer: Tokenizer


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path.parent}: not a finished run folder (no {path.name}; {what})") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot be read ({e})") from None


def backbone_file(folder: Path, spec: RunSpec, cache: str | Path | None = None) -> Path:
    """The backbone weights of the run in ``folder``: the study's cached backbone (its key from
    ``<out>/summary.json``) or the spec's ``backbone.checkpoint``. Raises UserError when neither is found."""
    folder = folder.resolve()
    summary = folder.parent.parent.parent / "summary.json"
    key = None
    if summary.is_file():
        key = (_read_json(summary, "the study's summary").get("backbone") or {}).get("cache_key")
    if key:
        path = cache_dir(cache) / "backbones" / key / "backbone.safetensors"
        if path.is_file():
            return path
        raise UserError(f"{folder}: its backbone {key} is not in the cache {cache_dir(cache)} "
                        "(pass the cache it was trained into with --cache-dir, or rerun the study)")
    if spec.backbone.checkpoint and Path(spec.backbone.checkpoint).expanduser().is_file():
        return Path(spec.backbone.checkpoint).expanduser()
    raise UserError(f"{folder}: cannot find its backbone: the run is not in a study's output folder whose "
                    f"summary.json names a cached backbone (looked for {summary}) and its spec names no "
                    "backbone.checkpoint file (a run folder is <out>/runs/<arm>/seed<k>, beside <out>/summary.json)")


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors. Raises UserError naming the file when it cannot be read."""
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise UserError(f"{path}: cannot be read as safetensors ({e}); rerun the run to write it again") from None


def pretrained_checkpoint(folder: Path, spec: RunSpec, cache: str | Path | None = None) -> Checkpoint | None:
    """The pretrained checkpoint of a run on ``backbone.pretrained`` (None for a run on a trained or loaded
    backbone): the folder its study recorded in ``<out>/summary.json`` if it is still there, else the
    spec's source looked up again (:func:`specroute.train.backbone.checkpoint_of`; a relative
    local folder is read from the study's spec folder). Raises CheckpointUnavailable when it cannot be had."""
    if not spec.backbone.pretrained:
        return None
    summary = folder.parent.parent.parent / "summary.json"
    recorded = ((_read_json(summary, "the study's summary").get("backbone") or {}).get("checkpoint") or {}
                if summary.is_file() else {})
    path = recorded.get("path")
    if path and (Path(path) / "config.json").is_file():
        return Checkpoint(spec.backbone.pretrained, Path(path), recorded.get("repo_id"), recorded.get("revision"))
    return checkpoint_of(spec, None, cache)


def load_run(folder: Path, cache: str | Path | None = None) -> SavedRun:
    """Load the finished run in ``folder`` (see the module docstring). Raises UserError for a folder that is
    not a finished run's, a failed run, a missing backbone or weights that do not fit the spec."""
    result = _read_json(folder / "result.json", "a run folder is <out>/runs/<arm>/seed<k>")
    if result.get("status") == "failed":
        raise UserError(f"{folder}: this run failed ({(result.get('failure') or {}).get('message', '?')}); "
                        "it saved no model")
    try:
        spec = RunSpec.model_validate(_read_json(folder / "spec.json", "the run's spec"))
    except ValidationError as e:
        raise UserError(f"{folder / 'spec.json'}: not a run spec of this version ({e.error_count()} errors)") from None
    if not (folder / "controller.safetensors").is_file():
        raise UserError(f"{folder}: no controller.safetensors (the run is not finished)")
    model = build_model(spec)
    trained = _load_weights(folder / "controller.safetensors")
    checkpoint = pretrained_checkpoint(folder, spec, cache)
    backbone = (load_backbone_state(checkpoint, spec.model) if checkpoint is not None
                else _load_weights(backbone_file(folder, spec, cache)))
    try:
        model.load_backbone(backbone)
        unexpected = set(trained) - set(model.state_dict())
        if unexpected:
            raise RuntimeError(f"unexpected keys {sorted(unexpected)[:5]}")
        model.load_state_dict(trained, strict=False)
    except RuntimeError as e:
        raise UserError(f"{folder}: its weights do not fit its spec's model ({e})") from None
    path = folder / THRESHOLDS_FILE
    thresholds = load_thresholds(path) if path.is_file() and not spec.routing.budget.causal else None
    pretrained = checkpoint.tokenizer_file if checkpoint and spec.data.tokenizer == "pretrained" else None
    tokenizer = load_tokenizer(spec.data.tokenizer, cache, pretrained)
    return SavedRun(spec, model.eval(), thresholds, tokenizer)


def check_temperature(temperature: float) -> None:
    """Raise UserError for a sampling temperature ``generate`` cannot use: not a finite number (``nan``,
    ``inf``, a number beyond a float's range such as ``1e400``) or negative. 0 is greedy."""
    if not math.isfinite(temperature):
        note = " (a number beyond a float's range, such as 1e400, reads as inf)" if math.isinf(temperature) else ""
        raise UserError(f"--temperature {temperature}: not a finite number{note}; give 0 (greedy) or a positive "
                        "number such as 0.8 (sampling)")
    if temperature < 0:
        raise UserError(f"--temperature {temperature}: must be >= 0 (0: greedy; > 0: sampling)")


def generate_text(run: SavedRun, prompt: str, max_new_tokens: int, temperature: float = 0.0,
                  seed: int = 0) -> str:
    """The run's continuation of ``prompt`` (its tokenizer; :meth:`Decoder.generate` with the KV cache and
    the causal rule: a threshold budget's own, a top-k budget's calibrated thresholds). ``temperature`` 0:
    greedy; otherwise sampled with a generator seeded by ``seed``. Raises UserError for an empty prompt or a
    top-k run without thresholds."""
    ids = [int(i) for i in run.tokenizer.encode_batch([prompt])[0]]
    if not ids:
        raise UserError("--prompt: empty (give at least one character of text)")
    try:
        out = run.model.generate(torch.tensor([ids]), max_new_tokens, temperature, run.thresholds,
                                 generator=torch.Generator().manual_seed(seed))
    except NonCausalRoutingError as e:
        raise UserError(f"{e}. This run has no {THRESHOLDS_FILE} (routing.budget.calibration_batches: 0, or a "
                        "run from before causal evaluation); rerun it with calibration_batches > 0") from None
    return run.tokenizer.decode(out[0, len(ids):].tolist())
