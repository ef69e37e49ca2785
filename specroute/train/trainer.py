"""The training loop both stages share, with its state saved and restored as one object.

The loop reads as verbs: next batch, step, log, maybe evaluate, maybe checkpoint. What differs between
the stages (the model, which parameters train, the loss, the evaluation) is a :class:`Stage`.

State (a checkpoint) = the trainable parameters (``trainable.safetensors``) + ``state.pt``: step,
optimiser state, the data and loss generators' states, the metric history, the byte length of
``metrics.jsonl`` at that step and the wall time so far. A resumed run truncates ``metrics.jsonl`` to that
length and continues; on CPU its metrics equal an uninterrupted run's.

A NaN guard: a step whose total loss or gradient norm is not finite, or an evaluation whose held-out LM is
not, stops the training with :class:`Diverged` (naming the step, the non-finite terms and their last finite
values). It reads the floats the step already logs, so it adds no device synchronisation.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from specroute.flops.mfu import Peak, device_peak, speed
from specroute.spec.training import TrainSpec
from specroute.train.compiled import is_compiled
from specroute.store import (UserError, atomic_write_text, json_kind, json_text, make_dir, nonfinite_paths,
                             replace_dir, temp_dir_beside, writing)
from specroute.train.device import Device
from specroute.train.distributed import SINGLE, BatchSplit, World
from specroute.train.step import lr_at, make_optimizer, optimizer_step


class Interrupted(Exception):
    """The session's step budget ran out (a simulated crash: nothing is saved at that point)."""


class Diverged(UserError):
    """A training stopped because a value it must keep finite was not: a step's total loss or gradient norm,
    or an evaluation's held-out LM. A UserError: the spec's values (learning rate, clip, ...) caused it.

    Attributes:
        run: the training's name (``backbone``, ``G1_lm seed 0``).
        step: the step (1-based, as logged) whose values were not finite; 0: the evaluation before the first.
        steps: the training's length. during: ``train`` (a step) or ``eval`` (an evaluation).
        lr: that step's learning rate (None for an evaluation).
        nonfinite: {field: ``"nan"`` | ``"inf"`` | ``"-inf"``} for every non-finite float of the record (the
            total ``loss``, each loss term of the stage, ``grad_norm``; or ``lm``).
        last_finite: {field: {"step", "value"} or None}: each such field's last finite value before.
    """

    def __init__(self, run: str, step: int, steps: int, during: str, lr: float | None, nonfinite: dict[str, str],
                 last_finite: dict[str, dict[str, float] | None]):
        self.run, self.step, self.steps, self.during, self.lr = run, step, steps, during, lr
        self.nonfinite, self.last_finite = nonfinite, last_finite
        super().__init__(self.describe())

    def describe(self) -> str:
        what = "training loss or gradient norm" if self.during == "train" else "held-out LM"
        bad = ", ".join(f"{k} {v}" for k, v in self.nonfinite.items())
        lr = f"; learning rate {self.lr:.3g}" if self.lr is not None else ""
        return (f"{self.run}: non-finite {what} at step {self.step} of {self.steps} ({bad}{lr}); last finite "
                f"{last_finite_text(self.last_finite)}")

    def as_dict(self) -> dict[str, Any]:
        """The failure as standard JSON (a failed run's ``failure`` in result.json and summary.json)."""
        return {"run": self.run, "step": self.step, "steps": self.steps, "during": self.during, "lr": self.lr,
                "nonfinite": self.nonfinite, "last_finite": self.last_finite, "message": self.describe()}


def last_finite_text(last: dict[str, dict[str, float] | None]) -> str:
    """``{"loss": {"step": 1, "value": 5.4}, "lm": None}`` -> ``"at step 1: loss 5.4; lm: none"``."""
    steps = {v["step"] for v in last.values() if v}
    if len(steps) == 1 and all(last.values()):
        return f"at step {steps.pop()}: " + ", ".join(f"{k} {v['value']:.4g}" for k, v in last.items())
    return "; ".join(f"{k} {v['value']:.4g} at step {v['step']}" if v else f"{k}: none" for k, v in last.items())


#: Steps the progress line's tokens/s and MFU are averaged over.
PROGRESS_STEPS = 10
#: The values the NaN guard checks, per record kind (the other non-finite floats are named in its message).
GUARDED = {"train": ("loss", "grad_norm"), "eval": ("lm",)}


def _nonfinite(record: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in record.items()
            if isinstance(v, float) and not math.isfinite(v) and k not in ("lr", "step")}


class StepBudget:
    """Optional cap on optimiser steps in this session, across every stage (for interruption tests)."""

    def __init__(self, steps: int | None = None):
        self.left = steps

    def spend(self) -> None:
        if self.left is None:
            return
        self.left -= 1
        if self.left <= 0:
            raise Interrupted("step budget of this session used up")


class Stage(Protocol):
    """What the loop trains: a model, its trainable parameters (by name), a loss and an evaluation."""

    model: nn.Module
    train: TrainSpec

    def trainable(self) -> dict[str, nn.Parameter]: ...

    def loss(self, idx_BT: Tensor, targets_BT: Tensor, generator: torch.Generator,
             step: int) -> tuple[Tensor, dict[str, Any]]:
        """The scalar to backpropagate and the step's metrics (floats, or dicts of floats); ``step``: the
        1-based step it is for (a stage may record more at some steps)."""

    def backward(self, idx_BT: Tensor, targets_BT: Tensor, generator: torch.Generator, step: int,
                 split: BatchSplit) -> dict[str, Any]:
        """:meth:`loss`'s gradient from this process's rows of the batch, in ``split``'s micro-batches, the
        backward passes run (``.grad`` filled, not yet summed over processes); returns the record
        :meth:`loss` gives for the whole batch."""

    def evaluate(self) -> dict[str, Any]:
        """Held-out metrics; must hold ``lm`` (nats/token)."""


class Sampler(Protocol):
    """Where training windows come from (:class:`specroute.data.sampler.WindowSampler`, a fixed batch...)."""

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``batch_size`` windows: token ids and next-token targets, (B, T) each."""


class FixedBatch:
    """A :class:`Sampler` that returns the same batch every time (timing a step, as the probe and the
    benchmark do): ``idx_BT`` and ``targets_BT``, whatever batch size is asked."""

    def __init__(self, idx_BT: Tensor, targets_BT: Tensor):
        self.idx_BT, self.targets_BT = idx_BT, targets_BT

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return self.idx_BT, self.targets_BT


class MetricsSink:
    """Append-only JSONL log of one run (one record per line, flushed as written; standard JSON: a
    non-finite value is written as null and the record's ``nonfinite`` lists the fields that were). A write
    the user can fix (disk full, read-only) raises UserError naming the file (:func:`specroute.store.writing`)."""

    def __init__(self, path: Path):
        self.path = path
        make_dir(path.parent)
        with writing(path):
            self._f = open(path, "ab")

    def write(self, record: dict[str, Any]) -> None:
        bad = nonfinite_paths(record)
        with writing(self.path):
            self._f.write((json_text({**record, "nonfinite": bad} if bad else record) + "\n").encode())
            self._f.flush()

    def offset(self) -> int:
        return self._f.tell()

    def truncate(self, n: int) -> None:
        self._f.truncate(n)
        self._f.seek(n)

    def close(self) -> None:
        with writing(self.path):
            self._f.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a :class:`MetricsSink`'s file, in order ([] when there is none). A last line that is not
    JSON and lacks its newline (a write cut off by a kill: every record is written whole, with its newline)
    is left out, so a run killed mid-write stays readable. Raises UserError naming the file (and line) when
    it cannot be read, is not UTF-8 text, or a line is not JSON or not a JSON object."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable metrics log ({e})") from None
    lines = text.split("\n")  # the last item: "" after a whole last record, else a cut-off line
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):
                break
            raise UserError(f"{path}:{i}: not a JSON record ({e})") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{i}: a JSON {json_kind(record)}, not a metrics record (a JSON object)")
        records.append(record)
    return records


class NoSink:
    """The sink of a trainer that writes no file: records stay in its history only."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def offset(self) -> int:
        return 0

    def truncate(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def step_name(step: int) -> str:
    """A checkpoint's folder name: ``step_NNNNNN``."""
    return f"step_{step:06d}"


def checkpoint_step(ckpt_dir: Path) -> int:
    """The step of the newest checkpoint in ``ckpt_dir`` (what ``latest`` names), 0 if there is none."""
    latest = ckpt_dir / "latest"
    return int(latest.read_text().strip().removeprefix("step_")) if latest.is_file() else 0


class Trainer:
    """Runs one stage for ``stage.train.steps`` steps, resumable from ``ckpt_dir``.

    Without ``ckpt_dir`` and ``sink`` it touches no file (the throughput probe, the verifiers' tiny
    trainings, the benchmark): :meth:`advance` takes one step of the loop, :meth:`train_step` one step on
    a given batch; :meth:`save` / :meth:`restore` need ``ckpt_dir``.

    Args:
        stage: what to train.
        sampler: training windows.
        seeds: ``data`` (window order) and ``loss`` (oracle layer / rank pair sampling) generator seeds,
            or one generator that both draw from.
        device: where the batches go.
        ckpt_dir: checkpoints folder (``latest`` names the newest ``step_NNNNNN``); None: no checkpoints.
        sink: the run's metrics log; None: records are kept in the history only.
        on_step: called after every step with (step, record) (progress display).
        budget: this session's step cap across stages.
        name: the training's name in messages (:class:`Diverged`).
        step_flops: analytic FLOPs of one optimiser step (2 x :mod:`specroute.flops.analytic`'s MACs), for
            the MFU of :meth:`speed` and of the progress line; None: tokens/s only.
        world: the data-parallel processes training this run (:mod:`specroute.train.distributed`): each
            samples the global batch and trains on its rows; only the main one saves checkpoints (pass the
            others no sink). Default one process.

    Raises:
        UserError: ``batch_size`` is not a multiple of the processes x ``grad_accum_steps``.
    """

    def __init__(self, stage: Stage, sampler: Sampler, seeds: Mapping[str, int] | torch.Generator, device: Device,
                 ckpt_dir: Path | None = None, sink: MetricsSink | None = None,
                 on_step: Callable[[int, dict[str, Any]], None] | None = None, budget: StepBudget | None = None,
                 name: str = "training", world: World = SINGLE, step_flops: float | None = None):
        self.stage, self.sampler, self.device, self.name = stage, sampler, device, name
        self.step_flops = step_flops
        self.step_s: list[float] = []  # wall seconds of each step this session (batch, step, log)
        self._peak: Peak | None = None
        self.spec = stage.train
        self.world = world
        self.split = BatchSplit(self.spec.batch_size, self.spec.grad_accum_steps, world)
        self.params = stage.trainable()
        self.optimizer = make_optimizer(self.params, self.spec.optimizer)
        if isinstance(seeds, torch.Generator):
            self.data_gen = self.loss_gen = seeds
        else:
            self.data_gen = torch.Generator().manual_seed(seeds["data"])
            self.loss_gen = torch.Generator().manual_seed(seeds["loss"])
        self.ckpt_dir, self.sink = ckpt_dir, sink if sink is not None else NoSink()
        self.on_step, self.budget = on_step, budget or StepBudget()
        self.step = 0
        self.history: dict[str, Any] = {"initial": None, "train": [], "eval": []}
        self.wall_before = 0.0
        self._t0 = time.perf_counter()

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to the last step (from a restored state, if any); return the history.

        Raises:
            Diverged: a step's total loss or gradient norm, or an evaluation's held-out LM, is not finite
                (that step is logged; no checkpoint is written after it).
        """
        self._t0 = time.perf_counter()
        if self.step == 0:
            self.sink.truncate(0)
            self.history["initial"] = self.evaluate(log=False)
            self.sink.write({"event": "eval_initial", **self.history["initial"]})
            self.guard("eval", self.history["initial"], [])
        while self.step < self.spec.steps:
            self.advance()
            self.guard("train", self.history["train"][-1], self.history["train"][:-1])
            if self.step % self.spec.eval_every == 0 or self.step == self.spec.steps:
                self.guard("eval", self.evaluate(), [self.history["initial"], *self.history["eval"][:-1]])
            if self.ckpt_dir is not None and self.world.is_main and self.step % self.spec.checkpoint_every == 0 \
                    and self.step < self.spec.steps:
                self.save()
            self.budget.spend()
        return self.history

    def advance(self) -> dict[str, Any]:
        """One step of the loop: next batch, train step, log; returns the step's record."""
        t0 = time.perf_counter()
        idx, targets = self.next_batch()
        record = self.train_step(idx, targets)
        self.step += 1
        self.step_s.append(time.perf_counter() - t0)
        self.log(record)
        return record

    def guard(self, event: str, record: dict[str, Any], earlier: list[dict[str, Any] | None]) -> None:
        """The NaN guard: raise :class:`Diverged` if one of ``record``'s :data:`GUARDED` values is not finite;
        ``earlier`` (oldest first) gives the last finite values its message names."""
        if all(math.isfinite(record[k]) for k in GUARDED[event] if isinstance(record.get(k), float)):
            return
        bad = _nonfinite(record)
        last: dict[str, dict[str, float] | None] = {}
        for k in bad:
            seen = (r for r in reversed(earlier) if r and isinstance(r.get(k), float) and math.isfinite(r[k]))
            hit = next(seen, None)
            last[k] = {"step": hit["step"], "value": hit[k]} if hit else None
        raise Diverged(self.name, record["step"], self.spec.steps, event,
                       record.get("lr") if event == "train" else None, bad, last)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        """The next global batch's rows of this process (all of it for one process), on the device."""
        idx, targets = (self.split.local(x) for x in self.sampler.sample(self.spec.batch_size, self.data_gen))
        return idx.to(self.device.torch, non_blocking=True), targets.to(self.device.torch, non_blocking=True)

    def train_step(self, idx: Tensor, targets: Tensor) -> dict[str, Any]:
        """One optimiser step on (B, T) ids and targets (this process's rows of the global batch under data
        parallel) at the current step's learning rate (the step counter is not advanced); returns the
        stage's metrics plus ``grad_norm`` and ``lr``. In micro-batches (``train.grad_accum_steps``) or over
        processes, the gradient and the metrics are the whole batch's (:mod:`specroute.train.accumulate`)."""
        lr = lr_at(self.step, self.spec.steps, self.spec.optimizer)
        params = list(self.params.values())
        split = self.split
        if idx.shape[0] != split.rows_per_rank and self.world.size == 1:  # a caller's own batch (the probe)
            split = BatchSplit(idx.shape[0], math.gcd(idx.shape[0], split.micro_batches))
        if split.whole:
            return optimizer_step(self.optimizer, params,
                                  lambda: self.stage.loss(idx, targets, self.loss_gen, self.step + 1),
                                  lr, self.spec.grad_clip)
        return optimizer_step(self.optimizer, params,
                              lambda: (None, self.stage.backward(idx, targets, self.loss_gen, self.step + 1, split)),
                              lr, self.spec.grad_clip, self.world.sum_grads)

    def log(self, record: dict[str, Any]) -> None:
        record = {"event": "train", "step": self.step, **record}
        self.history["train"].append(record)
        self.sink.write(record)
        if self.on_step is not None:
            self.on_step(self.step, {**record, **self.speed(last=PROGRESS_STEPS)})

    def speed(self, last: int | None = None) -> dict[str, Any]:
        """Training throughput of this session's steps (the ``last`` ones; None: all): tokens/s, analytic
        FLOP/s and MFU against the device's peak (:func:`specroute.flops.mfu.speed`); evaluations and
        checkpoints are not in the step times. With a compiled model (``train.compile``) the session's first
        step, which compiles, is left out and given as ``compile_s`` (compile time plus one step). Not part
        of the metrics (timings differ between equal runs)."""
        compiled = is_compiled(self.stage.model)
        times = self.step_s[1:] if compiled and len(self.step_s) > 1 else self.step_s  # the 1st: compile
        times = times[-last:] if last else times
        if self._peak is None:
            self._peak = device_peak(self.device)
        tokens = len(times) * self.spec.batch_size * self.spec.seq_len
        flops = None if self.step_flops is None else len(times) * self.step_flops
        return {**speed(tokens, flops, sum(times), self._peak), "compiled": compiled,
                "compile_s": self.step_s[0] if compiled and self.step_s else None}

    def evaluate(self, log: bool = True) -> dict[str, Any]:
        self.stage.model.eval()
        with torch.no_grad():
            result = {"step": self.step, **self.stage.evaluate()}
        self.stage.model.train()
        if log:
            self.history["eval"].append(result)
            self.sink.write({"event": "eval", **result})
        return result

    @property
    def wall_s(self) -> float:
        return self.wall_before + time.perf_counter() - self._t0

    # -- state -------------------------------------------------------------------------------------
    def save(self) -> Path:
        """Write a checkpoint of the current step (atomically) and point ``latest`` at it. Raises UserError
        for a write the user can fix (disk full, read-only: :func:`specroute.store.writing`), leaving the
        previous checkpoint in place and no temporary behind."""
        if self.ckpt_dir is None:
            raise RuntimeError("this trainer has no checkpoint folder")
        name = step_name(self.step)
        target = self.ckpt_dir / name
        tmp = temp_dir_beside(target)
        try:
            with writing(target):
                save_file({k: p.detach().cpu().contiguous() for k, p in self.params.items()},
                          str(tmp / "trainable.safetensors"))
                with open(tmp / "state.pt", "wb") as f:  # a file, not a path: a full disk is then an OSError
                    torch.save({
                        "step": self.step,
                        "optimizer": self.optimizer.state_dict(),
                        "rng": {"data": self.data_gen.get_state(), "loss": self.loss_gen.get_state()},
                        "history": self.history,
                        "metrics_offset": self.sink.offset(),
                        "wall_s": self.wall_s,
                    }, f)
            replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        atomic_write_text(self.ckpt_dir / "latest", name)
        for old in self.ckpt_dir.glob("step_*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        return target

    def restore(self) -> bool:
        """Load the newest checkpoint, if there is one; return whether one was loaded."""
        if self.ckpt_dir is None or (step := checkpoint_step(self.ckpt_dir)) == 0:
            return False
        folder = self.ckpt_dir / step_name(step)
        weights = load_file(str(folder / "trainable.safetensors"))
        if set(weights) != set(self.params):
            raise RuntimeError(f"checkpoint {folder} holds other parameters than this run trains")
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(weights[k].to(p.device))
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.data_gen.set_state(state["rng"]["data"])
        self.loss_gen.set_state(state["rng"]["loss"])
        self.history = state["history"]
        self.step = state["step"]
        self.wall_before = state["wall_s"]
        self.sink.truncate(state["metrics_offset"])
        return True
