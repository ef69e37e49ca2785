"""Stage 2 for one (arm, seed): train the controller on the frozen backbone and summarise the run.

Files in the run's folder (``runs/<arm>/seed<k>/``): ``metrics.jsonl`` (every step and evaluation),
``ckpt/`` (resumable checkpoints), and once the run is complete ``controller.safetensors`` (every trained
parameter by name: the controller, and in a joint run, ``train.trainable`` with ``backbone``, the trained
backbone too, so that the cached backbone with this file loaded over it is the model that was evaluated), ``spec.json`` (the resolved run spec) and ``result.json`` (the run's summary, written last:
its presence means the run is done and a resumed study skips it). While it trains, the run holds its
folder's lock (:func:`specroute.locks.hold_lock`), so that no other process (a worker of a killed study
still ending, say) writes into it too.

A run whose loss, gradient norm or held-out LM stops being finite (:class:`specroute.train.trainer.Diverged`)
is a **failed** run: its ``result.json`` is ``{"status": "failed", "failure": {...}, "wall_s",
"concurrent_runs"}`` (no ``controller.safetensors``; ``metrics.jsonl`` ends with a ``failed`` event), the
study's other runs go on, and ``--resume`` keeps it as it is (on the same spec it would fail the same way;
delete its folder to try it again). A finished run's result has no ``status``: see :func:`is_failed`.

Metrics (docs/DESIGN.md, "Metrics"): ``lm`` is evaluated every ``eval_every`` steps and at the last step;
``best_lm`` / ``avg_lm`` / ``final_lm`` are over those evaluations (the evaluation before the first step,
``initial_lm``, is reported apart and enters none of them); ``grad_norm`` is the controller's global norm
before clipping at every step; ``full_fraction.train`` is the mean realised share per layer over the
steps, ``full_fraction.eval`` the share at the last evaluation; ``flops_proxy`` is the analytic proxy
of :func:`specroute.flops.analytic.flops_proxy` (denominator ``controller_only``) at the realised train
full fraction; ``score_quantiles`` are the gate's score quantiles per layer at the last evaluation
(:data:`specroute.train.stages.SCORE_QUANTILES`; None for an older history); ``gate_diagnostics`` are the
score spread per layer and G3's action dependence of predictor and target
(:func:`specroute.train.stages.gate_diagnostics`) before training (``initial``) and at the last evaluation
(``final``; each None for an older history); ``loss_grad_norm``, only
when the spec logs them (``train.loss_grad_norm_every``), is the mean over the logged steps of each loss
term's gradient norm (weighted as it enters the total) per trained group, {group: {term: x, "total": x}};
``speed`` (beside ``wall_s``: timings, not metrics) is the run's training throughput this session, tokens/s,
analytic FLOP/s and MFU (:meth:`specroute.train.trainer.Trainer.speed`).
"""

from __future__ import annotations

import functools
import json
import math
import multiprocessing
import os
import signal
import statistics
import threading
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

from specroute.data.sampler import WindowSampler
from specroute.data.shards import TokenData, load_shards
from specroute.flops.analytic import flops_proxy, step_macs
from specroute.spec.loader import dump_run
from specroute.spec.models import RunSpec
from specroute.locks import hold_lock
from specroute.store import ANY, FILE, UserError, atomic_write_json, atomic_write_with, json_kind
from specroute.train.device import Device, deterministic, pick_device
from specroute.train.distributed import SINGLE, World, main_only, on_main
from specroute.train.progress import QueueProgress, StudyProgress
from specroute.train.calibration import THRESHOLDS_FILE, thresholds_record
from specroute.train.stages import ControllerStage, derive_seed
from specroute.train.tracking import TrackingFlags, TrackingSink, tracking_on
from specroute.train.trainer import Diverged, MetricsSink, NoSink, StepBudget, Trainer, checkpoint_step

#: ``status`` of a failed run's result (a finished run's result has none).
FAILED = "failed"


#: What a run writes into its folder (:data:`specroute.store.Layout`; what a study's ``--overwrite`` may delete).
RUN_LAYOUT = {"metrics.jsonl": FILE, "result.json": FILE, "controller.safetensors": FILE, "spec.json": FILE,
              "thresholds.json": FILE,
              "ckpt": {"latest": FILE, "step_[0-9][0-9][0-9][0-9][0-9][0-9]": ANY}}
#: Seconds a run waits for another holder of its folder's lock: the worker of a killed study ends by
#: itself within a second or so (:func:`init_worker`), a live one does not.
RUN_LOCK_WAIT_S = 10.0


def run_dir(out: Path, arm: str, seed: int) -> Path:
    return out / "runs" / arm / f"seed{seed}"


#: What every finished run's result holds (the report reads them; a failed run's holds ``failure``).
RESULT_KEYS = ("lm", "best_lm", "avg_lm", "final_lm", "grad_norm", "full_fraction", "flops_proxy", "wall_s")


def read_result(path: Path) -> dict[str, Any]:
    """A run's ``result.json`` (a finished or failed run's result). Raises UserError naming ``path`` and what is
    wrong when it cannot be read, is not JSON (a damaged or truncated file) or holds something other than a
    JSON object."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable result ({e})") from None
    if not isinstance(result, dict):
        raise UserError(f"{path}: holds a JSON {json_kind(result)}, not a run's result (a JSON object)")
    missing = [k for k in (("failure",) if is_failed(result) else RESULT_KEYS) if k not in result]
    if missing:
        raise UserError(f"{path}: not a complete run's result (no {', '.join(missing)})")
    return result


def is_failed(result: dict[str, Any]) -> bool:
    """Whether a run's result (result.json, or the summary of one seed) is a failed run's."""
    return result.get("status") == FAILED


def run_steps_left(folder: Path, spec: RunSpec) -> int:
    """Steps this run still needs (0 if complete), judged from its folder."""
    if (folder / "result.json").is_file():
        return 0
    return spec.train.steps - checkpoint_step(folder / "ckpt")


def run_controller(arm: str, spec: RunSpec, data: TokenData, backbone: dict[str, Tensor], device: Device,
                   folder: Path, progress: StudyProgress | QueueProgress | None = None,
                   budget: StepBudget | None = None, concurrent_runs: int = 1, world: World = SINGLE,
                   tracking: TrackingFlags | None = None) -> dict[str, Any]:
    """Train (or resume, or reuse) one run; return its per-seed summary (summary.json's ``seeds`` entry), or
    a failed run's result (see the module docstring; :func:`is_failed`) when its training diverged.
    ``concurrent_runs``: how many runs train at once beside this one (recorded: C12 trusts only the wall
    time of runs timed one at a time). ``world``: the data-parallel processes that train it together
    (:mod:`specroute.train.distributed`; only the main one writes and holds the lock; all return when the
    run's files are written). ``tracking``: the study's tracking flags (TensorBoard / W&B beside
    metrics.jsonl, :mod:`specroute.train.tracking`; None: none). Raises UserError when another process holds the run folder's lock for
    longer than :data:`RUN_LOCK_WAIT_S`."""
    result = folder / "result.json"
    if result.is_file():
        return read_result(result)
    with main_only(world, hold_lock(folder, "the run folder", wait_s=RUN_LOCK_WAIT_S)):
        summary = _train_run(arm, spec, data, backbone, device, folder, progress, budget, concurrent_runs, world,
                             tracking)
    world.barrier()
    return summary


def _train_run(arm: str, spec: RunSpec, data: TokenData, backbone: dict[str, Tensor], device: Device,
               folder: Path, progress: StudyProgress | QueueProgress | None, budget: StepBudget | None,
               concurrent_runs: int, world: World = SINGLE, tracking: TrackingFlags | None = None) -> dict[str, Any]:
    """The training of :func:`run_controller` (which holds the run folder's lock)."""
    heldout = WindowSampler(data.heldout, spec.train.seq_len, "held-out")
    train_windows = WindowSampler(data.train, spec.train.seq_len, "train")
    stage = ControllerStage.on_backbone(spec, backbone, heldout, device, train_windows)
    sink: MetricsSink | NoSink | TrackingSink = MetricsSink(folder / "metrics.jsonl") if world.is_main else NoSink()
    if world.is_main and tracking_on(tracking, spec.train.tracking):
        sink = TrackingSink(sink, tracking, spec.train.tracking, arm, spec.seed, dump_run(spec))
    name = f"{arm} seed {spec.seed}"
    trainer = Trainer(stage, train_windows,
                      {"data": derive_seed(spec.seed, "data"), "loss": derive_seed(spec.seed, "loss")},
                      device, folder / "ckpt", sink, functools.partial(progress.update, name) if progress else None,
                      budget, name, world, step_flops=2 * step_macs(spec)["total"])
    trainer.restore()
    if progress:
        progress.start_run(name, spec.train.steps, trainer.step)
    causal = None
    try:
        history = trainer.run()
        causal = final_causal(stage, history)
        if causal is not None:
            sink.write({"event": "causal", "step": trainer.step, **causal})
        summary = {**seed_summary(spec, history, trainer.wall_s, causal), "speed": trainer.speed(),
                   "concurrent_runs": concurrent_runs}
        sink.write({"event": "end", **{k: v for k, v in summary.items() if k != "lm"}})
    except Diverged as e:
        summary = {"status": FAILED, "failure": e.as_dict(), "wall_s": trainer.wall_s,
                   "concurrent_runs": concurrent_runs}
        sink.write({"event": FAILED, **e.as_dict()})
    finally:
        sink.close()
        if progress:
            progress.end_run(name)
    on_main(world, lambda: _write_run(folder, spec, summary, trainer, causal))
    return summary


def _write_run(folder: Path, spec: RunSpec, summary: dict[str, Any], trainer: Trainer,
               causal: dict[str, Any] | None = None) -> None:
    """A run's files (a failed run's: no controller), result.json last; ``causal``: the trained model's causal
    evaluation (:func:`final_causal`), whose thresholds go to thresholds.json."""
    if not is_failed(summary):
        controller = {k: p.detach().cpu().contiguous() for k, p in trainer.params.items()}
        atomic_write_with(folder / "controller.safetensors", lambda tmp: save_file(controller, str(tmp)))
        if causal is not None:
            atomic_write_json(folder / THRESHOLDS_FILE, thresholds_record(spec, causal))
    atomic_write_json(folder / "spec.json", dump_run(spec))
    atomic_write_json(folder / "result.json", summary)


# --------------------------------------------------------------------------------------------------
# worker processes (CPU): several runs at once, one intra-op thread each

_QUEUE: Any = None
#: The backbones of the study, by id, as :func:`init_worker` received them.
_BACKBONES: dict[int, dict[str, Tensor]] = {}


def init_worker(q: Any, threads: int, watch_parent: bool = False, cuda_index: int | None = None,
                backbones: dict[int, dict[str, Tensor]] | None = None, environ: dict[str, str] | None = None) -> None:
    """Initialiser of a worker process: its progress queue, its intra-op thread count, (``watch_parent``)
    a watch that ends the worker as soon as the study process is gone, (``cuda_index``) the CUDA device it
    trains on for its whole life, the study's ``backbones`` by id (:func:`run_in_worker` names one) and
    (``environ``) the study process's environment variables, which a fork server's worker would otherwise
    take from the server, as they were when it started.
    The backbones come with the process's start, not with each run: tensors sent later would be fetched
    from the study process's fd server, which a Ctrl-C can cut mid-transfer (a traceback from its thread)."""
    global _QUEUE, _BACKBONES
    import torch

    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    _QUEUE = q
    _BACKBONES = backbones or {}
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the study ends us
    torch.set_num_threads(threads)
    if cuda_index is not None:
        torch.cuda.set_device(cuda_index)
    if watch_parent:
        threading.Thread(target=_exit_without_parent, daemon=True, name="parent-watch").start()


def _exit_without_parent() -> None:
    """End this worker once the process that asked for it (the study process, under spawn and under the
    fork server alike: ``multiprocessing.parent_process()``'s sentinel) is gone, killed by SIGKILL or out of
    memory: otherwise it would train on unseen into the output folder, racing a ``--resume``, and then
    hang."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    parent.join()
    os._exit(1)


def run_in_worker(arm: str, spec: RunSpec, data_path: str, backbone: int, folder: str,
                  concurrent_runs: int, tracking: TrackingFlags | None = None,
                  device_type: str = "cpu") -> dict[str, Any]:
    """:func:`run_controller` in a worker process (CPU, or the CUDA device :func:`init_worker` pinned) on
    backbone ``backbone`` (an id of :func:`init_worker`'s ``backbones``), reporting progress through the
    queue."""
    import torch

    device = Device("cpu", None) if device_type == "cpu" else pick_device(device_type)
    data = load_shards(Path(data_path))
    with deterministic(device, threads=torch.get_num_threads()):  # init_worker's share of the cores
        return run_controller(arm, spec, data, _BACKBONES[backbone], device, Path(folder), QueueProgress(_QUEUE),
                              concurrent_runs=concurrent_runs, tracking=tracking)


def tau_key(tau: float) -> str:
    """How a threshold is written as a key (summary.json, reports): ``f"{tau:g}"``."""
    return f"{tau:g}"


def final_causal(stage: ControllerStage, history: dict[str, Any]) -> dict[str, Any] | None:
    """The causal evaluation of the trained model (a top-k gate with calibration batches; None otherwise):
    the last evaluation's when every evaluation had one, else run now (no-grad; no random stream touched)."""
    if not stage.calibration or not stage.batches:
        return None
    last = history["eval"][-1].get("causal") if history["eval"] else None
    if last is not None:
        return last
    stage.model.eval()
    try:
        return stage.evaluate_causal()
    finally:
        stage.model.train()


def seed_summary(spec: RunSpec, history: dict[str, Any], wall_s: float,
                 causal: dict[str, Any] | None = None) -> dict[str, Any]:
    """The per-seed metrics of one run from its trainer history; ``causal``: the trained model's causal
    evaluation (:func:`final_causal`)."""
    evals = history["eval"]
    lm = [[e["step"], e["lm"]] for e in evals]
    values = [v for _, v in lm]
    hits = {tau_key(t): next((s for s, v in lm if v <= t), None) for t in spec.train.lm_thresholds}
    norms = [r["grad_norm"] for r in history["train"]]
    layers = [str(l) for l in spec.routing.controlled_layers]
    train_ff = {l: statistics.fmean(r["full_fraction"][l] for r in history["train"]) for l in layers}
    realised = statistics.fmean(train_ff.values()) if train_ff else None
    summary = {
        "lm": lm,
        "initial_lm": history["initial"]["lm"],
        "best_lm": min(values),
        "avg_lm": statistics.fmean(values),
        "final_lm": values[-1],
        "threshold_hits": hits,
        "grad_norm": {"mean": statistics.fmean(norms), "median": statistics.median(norms)},
        "full_fraction": {"train": train_ff, "eval": dict(evals[-1].get("full_fraction", {}))},
        "flops_proxy": flops_proxy(spec, "controller_only", full_fraction=realised),
        "wall_s": wall_s,
        "latent": evals[-1].get("latent"),
        "score_quantiles": evals[-1].get("score_quantiles"),
        "gate_diagnostics": {"initial": history["initial"].get("gate_diagnostics"),
                             "final": evals[-1].get("gate_diagnostics")},
        "lm_by_batch": _lm_by_batch(evals, values),
    }
    logged = [r["loss_grad_norm"] for r in history["train"] if r.get("loss_grad_norm")]
    if logged:
        summary["loss_grad_norm"] = _mean_term_grads(logged)
    if causal is not None:
        summary["causal"] = causal_summary([e.get("causal") for e in evals], causal)
    return summary


def causal_summary(curve: list[dict[str, Any] | None], last: dict[str, Any]) -> dict[str, Any]:
    """A top-k run's causal evaluation (:meth:`ControllerStage.evaluate_causal` records) in the shape of the
    seed summary's LM metrics: ``final_lm`` and ``lm_by_batch`` under the calibrated threshold rule, and
    ``best_lm``, ``avg_lm`` when every evaluation had one (``curve``; ``routing.budget.calibrate_every_eval``),
    with the trained model's (``last``) ``full_fraction`` (held-out share per layer),
    ``calibration_full_fraction``, ``thresholds`` (tau per layer) and ``tokens``."""
    out = {"final_lm": last["lm"], "full_fraction": last["full_fraction"],
           "calibration_full_fraction": last["calibration_full_fraction"], "thresholds": last["thresholds"],
           "tokens": last["tokens"]}
    if curve and all(curve):
        values = [c["lm"] for c in curve]
        out.update(best_lm=min(values), avg_lm=statistics.fmean(values), lm_by_batch=_lm_by_batch(curve, values))
    else:
        out["lm_by_batch"] = {"final_lm": list(last["lm_batches"])}
    return out


def _mean_term_grads(logged: list[dict[str, dict[str, float | None]]]) -> dict[str, dict[str, float | None]]:
    """{group: {term: mean over the logged steps}} of the steps' ``loss_grad_norm`` records (non-finite
    values, null in the log, left out; None when a term has none)."""
    groups: dict[str, dict[str, list[float]]] = {}
    for record in logged:
        for group, terms in record.items():
            for term, v in terms.items():
                groups.setdefault(group, {}).setdefault(term, [])
                if v is not None and math.isfinite(v):
                    groups[group][term].append(v)
    return {g: {t: statistics.fmean(vs) if vs else None for t, vs in terms.items()} for g, terms in groups.items()}


def _lm_by_batch(evals: list[dict[str, Any]], values: list[float]) -> dict[str, list[float]] | None:
    """``avg_lm``, ``best_lm`` and ``final_lm`` per fixed held-out batch (each metric is the mean of its
    list), so that two runs' difference has a standard error over batches; None for an older history."""
    batches = [e.get("lm_batches") for e in evals]
    if not batches or any(b is None for b in batches):
        return None
    best = values.index(min(values))
    return {"avg_lm": [statistics.fmean(col) for col in zip(*batches)], "best_lm": list(batches[best]),
            "final_lm": list(batches[-1])}
