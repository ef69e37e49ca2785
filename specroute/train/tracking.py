"""Every record of a run's ``metrics.jsonl`` also to TensorBoard and / or Weights & Biases (the
``tracking`` extra), switched on in the spec (``train.tracking``) or by the ``run`` command's flags.

One TensorBoard run folder per (arm, seed), ``<root>/<study>/<arm>/seed<k>`` (root: ``--tensorboard DIR``,
else ``<out>/tensorboard``); one W&B run per (arm, seed), named ``<arm>/seed<k>`` in the group of the
study's name, its files under ``<out>/wandb`` (offline: ``wandb sync`` them later). A record's numbers
are logged flat under its event: ``train/loss``, ``train/full_fraction/1``, ``eval/lm``,
``eval/score_quantiles/1/0`` (list items by index), at the record's step (the evaluation before the
first step at step 0; the end-of-run summary at the last step); text, null and booleans are left out.

A resumed run continues where its checkpoint left off: TensorBoard drops the events at and after the
resumed step (``purge_step``), W&B resumes the same run (its id is derived from the output folder, arm
and seed) and ignores steps it already has.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from specroute.spec.training import TrackingSpec
from specroute.store import UserError, make_dir

INSTALL = "pip install 'specroute[tracking]'"


@dataclass(frozen=True)
class TrackingFlags:
    """The ``run`` command's tracking flags, over the spec's ``train.tracking``: ``tensorboard`` (the root
    folder; None: as the spec says) and ``wandb`` (``off`` | ``offline`` | ``online``; None: as the spec
    says). ``study``: the study's name (the W&B group, the TensorBoard folder); ``out``: the output folder."""

    study: str
    out: Path
    tensorboard: Path | None = None
    wandb: str | None = None

    def tensorboard_root(self, spec: TrackingSpec) -> Path | None:
        if self.tensorboard is not None:
            return self.tensorboard
        return self.out / "tensorboard" if spec.tensorboard else None

    def wandb_mode(self, spec: TrackingSpec) -> str:
        return self.wandb if self.wandb is not None else spec.wandb


class Tracker(Protocol):
    def log(self, values: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def flat_numbers(record: dict[str, Any], prefix: str) -> dict[str, float]:
    """The finite numbers of a (nested) record, keys joined with ``/`` under ``prefix`` (list items by index)."""
    out: dict[str, float] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}/{k}")
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(v, f"{key}/{i}")
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)

    for k, v in record.items():
        if k not in ("event", "step"):
            walk(v, f"{prefix}/{k}")
    return out


class TrackingSink:
    """A run's metrics sink that also sends every record to its trackers (opened at the first record, so
    that a resumed run's TensorBoard folder drops what follows its checkpoint). ``inner``: the JSONL sink
    (:class:`specroute.train.trainer.MetricsSink`), which keeps the offsets a checkpoint records."""

    def __init__(self, inner: Any, flags: TrackingFlags, spec: TrackingSpec, arm: str, seed: int,
                 config: dict[str, Any]):
        self.inner, self.flags, self.spec, self.arm, self.seed, self.config = inner, flags, spec, arm, seed, config
        self.trackers: list[Tracker] | None = None
        self.step = 0

    def write(self, record: dict[str, Any]) -> None:
        self.inner.write(record)
        self.step = int(record.get("step", self.step))
        if self.trackers is None:
            self.trackers = open_trackers(self.flags, self.spec, self.arm, self.seed, self.config, self.step)
        event = "eval" if record.get("event") == "eval_initial" else str(record.get("event", "metrics"))
        values = flat_numbers(record, event)
        for t in self.trackers:
            t.log(values, self.step)

    def offset(self) -> int:
        return self.inner.offset()

    def truncate(self, n: int) -> None:
        self.inner.truncate(n)

    def close(self) -> None:
        try:
            for t in self.trackers or []:
                t.close()
        finally:
            self.inner.close()


def tracking_on(flags: TrackingFlags | None, spec: TrackingSpec) -> bool:
    return flags is not None and (flags.tensorboard_root(spec) is not None or flags.wandb_mode(spec) != "off")


def check_available(flags: TrackingFlags, specs: list[TrackingSpec]) -> None:
    """Raise UserError, before anything trains or is written, when a tracker that is switched on is not
    installed, its TensorBoard folder cannot be created (the folder is made here), or W&B online has no
    login (:func:`wandb_logged_in`)."""
    roots = {root for s in specs if (root := flags.tensorboard_root(s)) is not None}
    if roots:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise UserError(f"TensorBoard tracking needs the tensorboard package: {INSTALL}") from None
        for root in sorted(roots):
            try:
                make_dir(root)
            except UserError as e:
                raise UserError(f"--tensorboard / train.tracking.tensorboard: {e}") from None
    modes = {flags.wandb_mode(s) for s in specs}
    if modes - {"off"}:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UserError(f"Weights & Biases tracking needs the wandb package: {INSTALL}") from None
    if "online" in modes and not wandb_logged_in():
        what = "--wandb online" if flags.wandb == "online" else "train.tracking.wandb: online"
        raise UserError(f"{what} needs a W&B login (`wandb login` or WANDB_API_KEY); or use --wandb offline")


def wandb_logged_in() -> bool:
    """Whether W&B has credentials on this machine (``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``, the
    .netrc entry ``wandb login`` writes, a settings file's key), as wandb itself reads them
    (``wandb.api.api_key``): local files and the environment only, never the network. Whether the key is
    valid only the server can say; wandb.init does."""
    import wandb

    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    with contextlib.redirect_stderr(io.StringIO()):  # its deprecation notice (wandb >= 0.2x), not for our users
        return bool(wandb.api.api_key)


def open_trackers(flags: TrackingFlags, spec: TrackingSpec, arm: str, seed: int, config: dict[str, Any],
                  first_step: int) -> list[Tracker]:
    trackers: list[Tracker] = []
    root = flags.tensorboard_root(spec)
    if root is not None:
        from torch.utils.tensorboard import SummaryWriter

        trackers.append(_TensorBoard(SummaryWriter(str(root / flags.study / arm / f"seed{seed}"),
                                                   purge_step=first_step)))
    mode = flags.wandb_mode(spec)
    if mode != "off":
        import wandb

        folder = flags.out / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        run_id = hashlib.sha256(f"{flags.out.resolve()}/{arm}/{seed}".encode()).hexdigest()[:16]
        trackers.append(_WandB(wandb.init(project=spec.wandb_project, group=flags.study, name=f"{arm}/seed{seed}",
                                          id=run_id, resume="allow", mode=mode, dir=str(folder), config=config)))
    return trackers


class _TensorBoard:
    def __init__(self, writer: Any):
        self.writer = writer

    def log(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, run: Any):
        self.run = run

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()
